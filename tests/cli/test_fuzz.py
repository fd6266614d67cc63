"""Every command on generated bad inputs: random bytes, truncated files, random ``--set``
values and bad numbers. None may show a traceback or an internal error: each ends with a
non-zero exit code and, for a refusal (exit 2), a one-line ``effnet CMD: error: ...``
message. Seeded, so a failure reproduces; about a minute on two cores."""

from __future__ import annotations

import random
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effnet import create_model
from effnet.cli import main
from effnet.train.config import SECTIONS
from effnet.weights.io import model_metadata, save_model

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


def _commands(inputs: dict[str, Path], rng: random.Random) -> list[list[str]]:
    root, data, out = inputs["root"], str(inputs["data"]), str(inputs["root"] / "out")
    empty = str(inputs["empty"])
    cases: list[list[str]] = []
    for bad in map(str, _bad_files(inputs, rng)):
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
    never_valid = ["nan", "inf", "-inf", "1e308"]  # for integer flags, and for phi
    not_positive = ["0", "-0", "-1", "nan", "inf", "-inf"]  # for positive finite numbers
    png, weights = str(inputs["png"]), str(inputs["safetensors"])
    numeric = [
        (["scale", "--phi"], never_valid),
        (["scale", "--phi", "1", "--alpha"], not_positive),
        (["scale", "--phi", "1", "--gamma"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--top-k"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--batch-size"], not_positive),
        (["predict", png, "--checkpoint", weights, "--device", "cpu", "--workers"], ["-1", *never_valid]),
        (["export", "--checkpoint", weights, "--format", "onnx", "--out", str(root / "out.onnx"), "--tolerance"],
         not_positive),
        (["export", "--checkpoint", weights, "--format", "onnx", "--out", str(root / "out.onnx"), "--opset"],
         ["0", "-1", "99", *never_valid]),
        (["train", "--data", data, "--out", out, "--no-progress", "--epochs"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--img-size"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--batch-size"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--lr"], not_positive),
        (["train", "--data", data, "--out", out, "--no-progress", "--workers"], ["-1", *never_valid]),
        (["eval", "--checkpoint", str(inputs["pt"]), "--data", data, "--workers", "0", "--batch-size"], not_positive),
        (["serve", "--checkpoint", weights, "--port"], ["-1", "65536", "99999", *never_valid]),
        (["serve", "--checkpoint", weights, "--workers"], ["0", "-1", *never_valid]),
        (["demo", "--out", out, "--epochs"], ["0", "-1", *never_valid]),
    ]
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


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse refusing an argument
        code = exited.code if isinstance(exited.code, int) else 2
    return code, capsys.readouterr().err


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
        elif code == 2 and not (lines and lines[-1].startswith(f"effnet {argv[0]}: error: ")):
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
