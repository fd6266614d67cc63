"""Every command on generated bad inputs: random bytes, truncated files, FIFOs and device
files, checkpoints whose metadata lies about their shapes, random ``--set`` values, and bad
numbers for every numeric flag (non-finite, huge, too many digits, Unicode digits). None may
show a traceback or an internal error or hang: each ends with a non-zero exit code and, for a
refusal (exit 2), a one-line ``effnet CMD: error: ...`` message. Seeded, so a failure
reproduces; about two minutes on two cores."""

from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from effnet import create_model
from effnet.cli import main
from effnet.train.config import SECTIONS
from effnet.weights.io import model_metadata, read_metadata, read_tensors, save_model

SEED = 16
CASES_PER_KIND = 24
YAML_VALUES = ["", "[", "]", "{", "}", "[1", "{a: 1", "nan", ".nan", ".inf", "-.inf", "-1", "0", "1e309", "null",
               "~", "'", '"', "[1, 2, 3]", "{a: 1}", "true", "!!python/object:os.system", "&a *a", "- -", ": :",
               "\t", "100000000000000000000", "-0.0", "@", "%", "`", "é", "\U0001f600", "a:b", "[[[]]]"]


def _settings() -> list[str]:
    keys = [f"{section}.{name}" for section, kind in SECTIONS.items() for name in kind.__dataclass_fields__]
    return keys + ["nosection.key", "optimizer.", ".lr", "optimizer.lr.deeper", "model"]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 12)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Good files to truncate and use, and a folder of bad ones."""
    root = tmp_path_factory.mktemp("fuzz")
    model = create_model("efficientnet_b0", num_classes=2, width=0.25, depth=0.25, resolution=32)
    model.describe(class_names=["a", "b"])
    weights = save_model(model, root / "good.safetensors")
    torch.save({"model": model.state_dict(), "model_meta": model_metadata(model)}, root / "good.pt")
    rng = np.random.default_rng(SEED)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / "data" / split / label
            folder.mkdir(parents=True)
            for index in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (root / "recipe.yaml").write_text("optimizer:\n  lr: 0.01\nrun:\n  epochs: 2\n")
    (root / "empty").mkdir()
    return {"root": root, "safetensors": weights, "pt": root / "good.pt", "png": root / "data" / "val" / "a" / "0.png",
            "yaml": root / "recipe.yaml", "data": root / "data", "empty": root / "empty"}


def _bad_files(inputs: dict[str, Path], rng: random.Random) -> list[Path]:
    """Random bytes under each suffix, and random truncations of each good file."""
    folder = inputs["root"] / "bad"
    folder.mkdir(exist_ok=True)
    made = []
    for index in range(CASES_PER_KIND):
        suffix = rng.choice([".safetensors", ".pt", ".png", ".jpg", ".yaml", ".onnx", ".csv", ""])
        path = folder / f"random{index}{suffix}"
        path.write_bytes(rng.randbytes(rng.choice([0, 1, 7, 64, 4096])))
        made.append(path)
        source = inputs[rng.choice(["safetensors", "pt", "png", "yaml"])]
        data = source.read_bytes()
        cut = folder / f"cut{index}{source.suffix}"
        cut.write_bytes(data[: rng.randrange(len(data))])
        made.append(cut)
    return made


METADATA_LIES = [
    (None, "num_classes", [0, -1, 3, 10**6, 10**9, "2", 2.5, None, [2]]),
    (None, "class_names", [["a"], ["a", 1], "ab", [["a"], ["b"]], {"a": 1}]),
    ("preprocessing", "resolution", [0, -32, 10**5, 32.5, "32", None]),
    ("preprocessing", "crop_pct", [0, -1, 1e-4, 2, float("nan"), "x"]),
    ("preprocessing", "mean", [[], [0.5], ["a", "b", "c"], [float("inf")] * 3]),
    ("config", "depth", [0, -1, 1e6, float("inf"), "x"]),
    ("config", "width", [0, -1, 1e6, float("nan")]),
    ("config", "stages", [[], [[1]], "x", None]),
]
"""Fields of a checkpoint's metadata and the lies put in them: shapes, ranges and types."""


def _special_files(inputs: dict[str, Path]) -> list[Path]:
    """FIFOs under each input suffix (opening one would block) and device files."""
    folder = inputs["root"] / "special"
    folder.mkdir(exist_ok=True)
    fifos = []
    for suffix in (".safetensors", ".pt", ".png", ".yaml", ".csv", ".onnx"):
        fifo = folder / f"fifo{suffix}"
        if not fifo.exists():
            os.mkfifo(fifo)
        fifos.append(fifo)
    return fifos + [Path("/dev/zero"), Path("/dev/urandom"), Path("/dev/null")]


def _lying_checkpoints(inputs: dict[str, Path], rng: random.Random) -> list[Path]:
    """The good model's tensors under metadata that claims other shapes, ranges or types."""
    folder = inputs["root"] / "lies"
    folder.mkdir(exist_ok=True)
    tensors = read_tensors(inputs["safetensors"])
    metadata = read_metadata(inputs["safetensors"])
    made = []
    for index in range(CASES_PER_KIND // 2):
        section, field, values = rng.choice(METADATA_LIES)
        edited = json.loads(json.dumps(metadata))
        (edited if section is None else edited[section])[field] = rng.choice(values)
        path = folder / f"lie{index}.safetensors"
        save_file(tensors, str(path), metadata={"effnet": json.dumps(edited)})
        made.append(path)
    return made


def _commands(inputs: dict[str, Path], rng: random.Random) -> list[list[str]]:
    root, data, out = inputs["root"], str(inputs["data"]), str(inputs["root"] / "out")
    empty = str(inputs["empty"])
    cases: list[list[str]] = []
    bad_files = _bad_files(inputs, rng) + _special_files(inputs) + _lying_checkpoints(inputs, rng)
    for bad in map(str, bad_files):
        cases += [
            ["predict", str(inputs["png"]), "--checkpoint", bad, "--device", "cpu", "--no-progress"],
            ["predict", bad, "--checkpoint", str(inputs["safetensors"]), "--device", "cpu", "--no-progress"],
            ["eval", "--checkpoint", bad, "--data", data, "--workers", "0"],
            ["export", "--checkpoint", bad, "--format", "onnx", "--out", str(root / "out.onnx")],
            ["finetune", "--from", bad, "--data", data, "--out", out, "--epochs", "1", "--no-progress"],
            ["train", "--resume", bad, "--no-progress"],
            ["train", "--data", empty, "--recipe", bad, "--out", out, "--no-progress"],
            ["train", "--data", bad, "--out", out, "--no-progress"],
            ["quantize", "--checkpoint", bad, "--calib", data, "--eval", data, "--out", out],
            ["ship", "--checkpoint", bad, "--target", "onnxruntime", "--eval", data, "--out", out],
            ["serve", "--checkpoint", bad, "--port", "0"],
        ]
    settings = _settings()
    for _ in range(4 * CASES_PER_KIND):
        value = rng.choice(YAML_VALUES + [_random_text(rng)])
        cases.append(["train", "--data", empty, "--out", out, "--no-progress",
                      "--set", f"{rng.choice(settings)}={value}"])
    huge = ["1e30", "1e308", "1" + "0" * 5000, "99999999999999999999", "\u00b2", "\u0663", " ", "0x10"]
    never_valid = ["nan", "inf", "-inf", "1e308"]  # for integer flags, and for phi
    not_positive = ["0", "-0", "-1", "nan", "inf", "-inf", *huge]  # for positive finite numbers
    not_count = ["-1", *never_valid, *huge]  # for counts that may be 0
    not_fraction = ["0", "1", "-0.5", "2", "nan", "inf", *huge]
    png, weights, pt = str(inputs["png"]), str(inputs["safetensors"]), str(inputs["pt"])
    train = ["train", "--data", data, "--out", out, "--no-progress"]
    finetune = ["finetune", "--from", pt, "--data", data, "--out", out, "--no-progress"]
    evaluate = ["eval", "--checkpoint", pt, "--data", data, "--workers", "0"]
    quantize = ["quantize", "--checkpoint", weights, "--calib", data, "--eval", data, "--out", str(root / "q.onnx")]
    ship = ["ship", "--checkpoint", weights, "--target", "onnxruntime", "--eval", data, "--out", out]
    bench = ["bench", "--models", "efficientnet_b0", "--device", "cpu", "--out", out]
    numeric = [
        *[([*train, flag], not_positive) for flag in ("--epochs", "--img-size", "--eval-img-size", "--lr")],
        ([*train, "--seed"], not_count), ([*train, "--val-split"], not_fraction),
        ([*finetune, "--epochs-per-group"], not_positive), ([*finetune, "--layer-decay"], [*not_positive, "1.5"]),
        ([*finetune, "--batch-size"], not_positive), ([*finetune, "--workers"], not_count),
        ([*evaluate, "--seed"], not_count), ([*evaluate, "--val-split"], not_fraction),
        ([*evaluate, "--workers"], not_count),
        ([*quantize, "--calib-images"], not_positive), ([*quantize, "--batch-size"], not_positive),
        ([*quantize, "--threads"], not_positive), ([*quantize, "--method", "qat", "--epochs"], not_positive),
        ([*quantize, "--method", "qat", "--lr"], not_positive),
        ([*ship, "--max-drop"], ["-1", "101", *never_valid, *huge]), ([*ship, "--calib-images"], not_positive),
        ([*ship, "--qat-epochs"], not_positive), ([*ship, "--batch-size"], not_positive),
        ([*ship, "--threads"], not_positive),
        *[([*bench, flag], not_positive) for flag in ("--resolution", "--iterations", "--min-iterations",
                                                      "--max-seconds", "--batch")],
        ([*bench, "--warmup"], not_count),
        (["data", "info", data, "--val-split"], not_fraction), (["data", "info", data, "--seed"], not_count),
        (["demo", "--out", out, "--img-size"], not_positive),
        (["scale", "--phi", "1", "--beta"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--num-classes"], not_positive),
        (["export", "--checkpoint", weights, "--format", "onnx", "--out", str(root / "out.onnx"), "--opset"], huge),
        (["scale", "--phi"], never_valid),
        (["scale", "--phi", "1", "--alpha"], not_positive),
        (["scale", "--phi", "1", "--gamma"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--top-k"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--batch-size"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--workers"], not_count),
        (["export", "--checkpoint", weights, "--format", "onnx", "--out", str(root / "out.onnx"), "--tolerance"],
         not_positive),
        (["export", "--checkpoint", weights, "--format", "onnx", "--out", str(root / "out.onnx"), "--opset"],
         ["0", "-1", "99", *never_valid]),
        (["train", "--data", data, "--out", out, "--no-progress", "--epochs"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--img-size"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--batch-size"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--lr"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--workers"], not_count),
        (["eval", "--checkpoint", str(inputs["pt"]), "--data", data, "--workers", "0", "--batch-size"], not_positive),
        (["serve", "--checkpoint", weights, "--port"], ["-1", "65536", "99999", *never_valid]),
        (["serve", "--checkpoint", weights, "--workers"], ["0", "-1", *never_valid]),
        *[(["serve", "--checkpoint", weights, flag], not_positive) for flag in (
            "--max-batch", "--max-queue", "--max-files", "--max-upload-mb", "--max-pixels", "--decode-threads",
            "--threads")],
        *[(["serve", "--checkpoint", weights, flag], ["-1", *never_valid, *huge]) for flag in (
            "--max-wait-ms", "--poll-s")],  # 0 is a valid wait
        *[(["pick", "--max-latency-ratio", "1", flag], not_positive) for flag in (
            "--batch", "--max-memory-mb", "--max-file-mb", "--max-seconds", "--threads", "--resolution")],
        (["pick", "--max-latency-ms"], not_positive), (["pick", "--max-latency-ratio"], not_positive),
        (["demo", "--out", out, "--epochs"], ["0", "-1", *never_valid, *huge]),
    ]
    for prefix, pool in numeric:  # every flag at least once, then random ones
        cases.append([*prefix, rng.choice(pool)])
    for _ in range(2 * CASES_PER_KIND):
        prefix, pool = rng.choice(numeric)
        cases.append([*prefix, rng.choice(pool)])
    cases += [["bench", "--models", ""], ["bench", "--models", ",", "--batch", "0"],
              ["predict", str(root / "missing.png"), "--checkpoint", str(inputs["safetensors"])],
              ["predict", str(inputs["png"]), "--checkpoint", str(inputs["safetensors"]), "--out", str(root)],
              ["eval", "--checkpoint", str(inputs["pt"]), "--data", str(inputs["png"])],
              ["train", "--data", data, "--out", str(inputs["png"])],
              ["models", "--filter", _random_text(rng) + "\udcff"]]
    return cases


def command_name(argv: list[str]) -> str:
    """How argparse names the command of ``argv`` in its messages (``effnet data info``)."""
    return "effnet " + " ".join(argv[:2] if argv[0] == "data" else argv[:1])


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse refusing an argument
        code = exited.code if isinstance(exited.code, int) else 2
    return code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a command that opened a FIFO would block here
def test_no_command_shows_a_traceback_on_bad_inputs(inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs["root"])
    torch.set_num_threads(1)
    rng = random.Random(SEED)
    failures = []
    cases = _commands(inputs, rng)
    for argv in cases:
        code, err = _run(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        problem = None
        if "Traceback" in err or "internal error" in err:
            problem = "traceback or internal error"
        elif code == 0:
            problem = "exit code 0 on a bad input"
        elif code == 2 and not (lines and lines[-1].startswith(f"{command_name(argv)}: error: ")):
            problem = "no one-line error message last"
        if problem:
            failures.append(f"{problem}: effnet {' '.join(argv)} -> {code}\n{err[-600:]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n\n" + "\n\n".join(failures[:8])


@pytest.mark.parametrize("command", ["predict", "eval", "export", "finetune"])
@pytest.mark.parametrize("name", ["nan.pt", "nan.safetensors", "other.pt"])
def test_every_command_refuses_broken_or_foreign_weights_in_one_line(broken_weights, tmp_path, capsys, command, name):
    folder, data = broken_weights
    checkpoint = str(folder / name)
    argv = {
        "predict": ["predict", str(data / "val"), "--checkpoint", checkpoint, "--device", "cpu"],
        "eval": ["eval", "--checkpoint", checkpoint, "--data", str(data), "--workers", "0"],
        "export": ["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        "finetune": ["finetune", "--from", checkpoint, "--data", str(data), "--out", str(tmp_path / "run"),
                     "--epochs", "1", "--workers", "0", "--no-progress"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert name in err
    if name == "other.pt":
        assert "weights do not exist in the model" in err and "another architecture" in err
    else:
        assert "holds NaN or infinite values" in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "run").exists()
