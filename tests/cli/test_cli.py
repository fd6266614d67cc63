"""The command line itself: a quick --help and --version, examples in every command's help, one
table of exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from effnet import create_model
from effnet.cli import COMMANDS, build_parser, main
from effnet.errors import ConfigError, EffnetError, ExitCode
from effnet.weights.io import save_model

PROBE = ("import sys; from effnet.cli import main\n"
         "try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
         "print('TORCH', 'torch' in sys.modules)")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_pytorch(argv: list[str]) -> None:
    result = _run(argv)
    assert result.stdout.strip().endswith("TORCH False")  # importing torch is what made --help take seconds


def test_version_names_effnet_and_the_installed_runtimes() -> None:
    lines = _run(["--version"]).stdout.splitlines()
    assert lines[0].startswith("effnet ") and any(line.startswith("torch ") for line in lines)


def test_top_level_help_lists_every_command_and_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)
    assert all(f"  {int(code):<4} {code.meaning}" in text for code in ExitCode)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_an_example_in_its_help(name: str) -> None:
    parser = build_parser([name])  # the command's own parser is loaded in full
    command = next(a for a in parser._actions if a.dest == "command").choices[name]
    assert command.format_help().rstrip().endswith(COMMANDS[name].example)
    assert COMMANDS[name].example.startswith(f"effnet {name}")


def test_errors_map_to_the_table() -> None:
    assert EffnetError.exit_code == ExitCode.REFUSED == 2 and ConfigError("x").exit_code == 2
    assert main(["scale", "--phi", "inf"]) == ExitCode.REFUSED


@pytest.mark.timeout(300)  # a reader that opened a FIFO would block, one that read /dev/zero never end
def test_a_fifo_or_a_device_named_as_any_input_is_not_a_regular_file(tmp_path, capsys) -> None:
    for name in ("model.pt", "model.safetensors", "recipe.yaml", "listing.csv"):
        os.mkfifo(tmp_path / name)
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "0.png")
    image, data, out = str(folder / "0.png"), str(tmp_path / "data"), str(tmp_path / "out")
    fifo = "a FIFO (named pipe)"
    cases = [
        (["predict", image, "--checkpoint", str(tmp_path / "model.safetensors")], "checkpoint", fifo),
        (["predict", image, "--checkpoint", "/dev/zero"], "checkpoint", "a character device"),
        (["eval", "--checkpoint", str(tmp_path / "model.pt"), "--data", data], "checkpoint", fifo),
        (["eval", "--checkpoint", "/dev/urandom", "--data", data], "checkpoint", "a character device"),
        (["export", "--checkpoint", str(tmp_path / "model.pt"), "--format", "onnx", "--out",
          str(tmp_path / "m.onnx")], "checkpoint", fifo),
        (["train", "--data", data, "--recipe", str(tmp_path / "recipe.yaml"), "--out", out], "recipe file", fifo),
        (["train", "--resume", str(tmp_path / "model.pt")], "checkpoint", fifo),
        (["train", "--data", str(tmp_path / "listing.csv"), "--out", out], "data path", fifo),
        (["eval", "--checkpoint", "/dev/zero", "--data", "/dev/zero"], "checkpoint", "a character device"),
        (["finetune", "--from", "/dev/zero", "--data", data, "--out", out], "--from", "a character device"),
        (["ship", "--checkpoint", str(tmp_path / "model.pt"), "--target", "onnxruntime", "--eval", data,
          "--out", out], "checkpoint", fifo),
    ]
    for argv, what, kind in cases:
        assert main(argv) == ExitCode.REFUSED, argv
        err = capsys.readouterr().err
        assert f"{what} " in err and f"is not a regular file but {kind}; give a file" in err, (argv, err)
    model = create_model("efficientnet_b0", num_classes=1, width=0.25, depth=0.25, resolution=32)
    checkpoint = str(save_model(model, tmp_path / "tiny.safetensors"))
    fifo_image = tmp_path / "fifo.png"
    os.mkfifo(fifo_image)
    assert main(["predict", str(fifo_image), "/dev/zero", image, "--checkpoint", checkpoint, "--format", "csv",
                 "--device", "cpu", "--no-progress"]) == ExitCode.PARTLY_DONE
    out, err = capsys.readouterr()
    assert f"{fifo_image}: not a regular file but a FIFO (named pipe)" in err and "/dev/zero: not a regular" in err
    assert out.count(image) == 1


def test_follow_links_reaches_every_command_that_reads_image_folders(tmp_path, capsys) -> None:
    for folder in ("data/train/a", "data/train/b", "data/val/a", "data/val/b", "elsewhere"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "0.png")
    os.symlink(tmp_path / "elsewhere" / "0.png", tmp_path / "data" / "train" / "a" / "outside.png")
    data = str(tmp_path / "data")
    def totals(out: str) -> list[str]:
        return next(line.split()[1:] for line in out.splitlines() if line.startswith("total"))

    assert main(["data", "info", data]) == 0
    out = capsys.readouterr().out
    assert totals(out) == ["2", "2"] and "outside.png: a link to" in out and "--follow-links" in out
    assert main(["data", "info", data, "--follow-links"]) == 0
    out = capsys.readouterr().out
    assert totals(out) == ["3", "2"] and "outside.png" not in out
    for command in (["train", "--data", data], ["finetune", "--from", "x", "--data", data],
                    ["eval", "--checkpoint", "x", "--data", data], ["predict", data]):
        assert build_parser().parse_args([*command, "--follow-links"]).follow_links is True
