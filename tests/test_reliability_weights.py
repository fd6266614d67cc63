"""Weights that would give silently wrong results, or tracebacks, are refused in one line
(issue 16, items 5, 10 and 15)."""

from __future__ import annotations

import pytest
import torch

from _train_helpers import make_image_folder
from effnet import create_model
from effnet.cli import main
from effnet.errors import EffnetError
from effnet.weights.errors import CheckpointError, StateDictError
from effnet.weights.io import load_model, model_metadata, save_model
from effnet.weights.trained import load_trained_model

TINY = {"width": 0.25, "depth": 0.25, "resolution": 32}


def _tiny(name: str = "efficientnet_b0", **overrides) -> torch.nn.Module:
    model = create_model(name, num_classes=3, **{**TINY, **overrides})
    model.describe(class_names=["a", "b", "c"])
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = _tiny()
    broken = model.state_dict()
    broken["stages.1.0.project.conv.weight"][0, 0, 0, 0] = float("inf")
    other = _tiny("efficientnet_b1", depth=0.5).state_dict()
    torch.save({"model": broken, "model_meta": model_metadata(model)}, folder / "nan.pt")
    torch.save({"model": other, "model_meta": model_metadata(model)}, folder / "other.pt")
    model.load_state_dict(broken)
    save_model(model, folder / "nan.safetensors")
    data = make_image_folder(folder / "data", classes=3, train_per_class=2, val_per_class=1, size=32)
    return folder, data


def test_non_finite_weights_are_refused_at_load_naming_the_first_bad_tensor(files):
    folder, _ = files
    for load in (lambda: load_model(folder / "nan.safetensors"), lambda: load_trained_model(folder / "nan.pt")):
        with pytest.raises(StateDictError, match=r"'stages\.1\.0\.project\.conv\.weight' holds NaN or infinite "
                                                 r"values \(1 of \d+\)"):
            load()


@pytest.mark.parametrize("command", ["predict", "eval", "export", "finetune"])
@pytest.mark.parametrize("name", ["nan.pt", "nan.safetensors", "other.pt"])
def test_every_command_refuses_broken_or_foreign_weights_in_one_line(files, tmp_path, capsys, command, name):
    folder, data = files
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


def test_a_wrong_model_or_class_count_names_the_cli_flags(files, capsys):
    folder, data = files
    image = str(next((data / "val").rglob("*.png")))
    good = folder / "good.pt"
    torch.save({"model": _tiny().state_dict(), "model_meta": model_metadata(_tiny())}, good)
    assert main(["predict", image, "--model", "efficientnet_b0", "--checkpoint", str(good), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "does not fit efficientnet_b0 (the --model architecture)" in err
    assert main(["predict", image, "--model", "efficientnet_b0", "--checkpoint", str(good), "--num-classes", "5"]) == 2
    err = capsys.readouterr().err
    assert "has a 3-class classifier" in err and "give --num-classes 3" in err
    assert "{classes}" not in err and "strict_head" not in err


def test_checkpoint_errors_are_effnet_errors():
    assert issubclass(StateDictError, CheckpointError) and issubclass(CheckpointError, EffnetError)
    assert issubclass(CheckpointError, ValueError)
