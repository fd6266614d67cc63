"""``effnet predict``: real Lite0 weights on real photos, and the tiny-model cases (formats,
folders, globs, failures, exit codes, messages)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from effnet import create_model
from effnet.cli import main
from effnet.weights.io import model_metadata, save_model

CATS = {"tiger cat", "tabby", "Egyptian cat"}
CLASSES = ["circle", "square", "stripes"]


def test_real_weights_predict_cat_and_espresso_and_report_bad_files(tmp_path, capsys):
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).save(tmp_path / f"{name}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    paths = [str(tmp_path / n) for n in ("chelsea.png", "broken.png", "coffee.png", "missing.jpg")]
    code = main(["predict", *paths, "--model", "efficientnet_lite0", "--format", "csv", "--top-k", "3",
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    top = {row["path"].rsplit("/", 1)[-1]: row["class_name"] for row in rows if row["rank"] == "1"}
    assert top["chelsea.png"] in CATS and top["coffee.png"] == "espresso"
    assert [row["path"].rsplit("/", 1)[-1] for row in rows] == ["chelsea.png"] * 3 + ["broken.png"] + \
        ["coffee.png"] * 3
    assert "missing.jpg: no such file or folder" in err
    assert f"{tmp_path / 'broken.png'}: " in err and "1 of 3 files failed" in err
    assert "3/3" in err  # the progress bar


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    model = create_model("efficientnet_b0", num_classes=3, width=0.25, depth=0.25, resolution=32)
    nameless = save_model(model, folder / "nameless.safetensors")
    model.describe(class_names=CLASSES)
    return save_model(model, folder / "tiny.safetensors"), nameless


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for relative in ("one.png", "album/a.png", "album/deeper/b.jpg", "album/c.PNG"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(path)
    (tmp_path / "album" / "notes.txt").write_text("not a picture")
    return tmp_path


def test_single_file_prints_a_table_without_progress_bar(checkpoints, images, capsys):
    assert main(["predict", str(images / "one.png"), "--checkpoint", str(checkpoints[0]), "--top-k", "2"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["image", "rank", "class", "probability"]
    assert lines[2].split()[:2] == [str(images / "one.png"), "1"] and lines[2].split()[2] in CLASSES
    assert lines[3].split()[0] == "2" and len(lines) == 4
    assert err == ""


def test_folders_are_searched_recursively_and_json_goes_to_the_out_file(checkpoints, images, capsys):
    out_file = images / "results.json"
    assert main(["predict", str(images / "album"), "--checkpoint", str(checkpoints[0]), "--out",
                 str(out_file), "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    entries = json.loads(out_file.read_text())
    assert [e["path"].replace(str(images), "T") for e in entries] == ["T/album/a.png", "T/album/c.PNG",
                                                                       "T/album/deeper/b.jpg"]
    assert all(len(e["predictions"]) == 3 and e["error"] is None for e in entries)
    assert sum(p["probability"] for p in entries[0]["predictions"]) == pytest.approx(1.0, abs=1e-5)
    assert f"wrote 3 prediction(s) to {out_file}" in out
    assert "3/3" in err


def test_fast_path_gives_the_eager_probabilities(checkpoints, images, capsys):
    """--fast on the CPU: BatchNorm folded, fused blocks (eager kernels here), the same results."""
    results = {}
    for flag in ("--fast", "--no-fast"):
        out_file = images / f"{flag}.json"
        assert main(["predict", str(images / "album"), "--checkpoint", str(checkpoints[0]), "--out", str(out_file),
                     "--device", "cpu", "--no-progress", flag]) == 0
        results[flag] = json.loads(out_file.read_text())
    capsys.readouterr()
    for fast, eager in zip(results["--fast"], results["--no-fast"], strict=True):
        assert [p["class_index"] for p in fast["predictions"]] == [p["class_index"] for p in eager["predictions"]]
        assert [p["probability"] for p in fast["predictions"]] == pytest.approx(
            [p["probability"] for p in eager["predictions"]], abs=1e-5)


def test_globs_are_expanded_and_a_named_non_image_file_fails_alone(checkpoints, images, capsys):
    code = main(["predict", str(images / "album" / "*.png"), str(images / "album" / "notes.txt"),
                 "--checkpoint", str(checkpoints[0]), "--format", "csv", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted({r["path"].rsplit("/", 1)[-1] for r in rows if r["rank"] == "1"}) == ["a.png"]
    assert f"{images / 'album' / 'notes.txt'}: not an image file" in err
    assert "1 of 2 files failed" in err and "%|" not in err


def test_checkpoint_without_class_names_warns_once_and_names_classes_by_index(checkpoints, images, capsys):
    assert main(["predict", str(images), "--checkpoint", str(checkpoints[1]), "--format", "csv",
                 "--no-progress"]) == 0  # folders are searched for image files only: notes.txt is not tried
    out, err = capsys.readouterr()
    assert {r["class_name"] for r in csv.DictReader(io.StringIO(out))} == {"class_0", "class_1", "class_2"}
    assert err.count("warning:") == 1 and "no class names: predictions name classes by index" in err


@pytest.mark.parametrize("arguments, message", [
    (["{tmp}/nowhere.png"], "nowhere.png: no such file or folder"),
    (["{tmp}/empty"], "empty: folder with no images"),
    (["{tmp}/*.gif"], "*.gif: matches no files"),
])
def test_nothing_to_classify_is_a_usage_error(checkpoints, tmp_path, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    paths = [a.format(tmp=tmp_path) for a in arguments]
    assert main(["predict", *paths, "--checkpoint", str(checkpoints[0])]) == 2
    err = capsys.readouterr().err
    assert message in err and "effnet predict: error: no images to classify" in err


def test_model_choice_errors(images, tmp_path, capsys):
    assert main(["predict", str(images / "one.png")]) == 2
    assert "no model: give a model name" in capsys.readouterr().err
    assert main(["predict", str(images / "one.png"), "--model", "resnet50"]) == 2
    assert "no pretrained weights are published for resnet50; models with weights: efficientnet_lite0" in \
        capsys.readouterr().err
    weights = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    assert main(["predict", str(images / "one.png"), "--checkpoint", str(weights)]) == 2
    assert "give its architecture too" in capsys.readouterr().err


def test_a_wrong_model_or_class_count_names_the_cli_flags(broken_weights, tmp_path, capsys):
    _, data = broken_weights
    image = str(next((data / "val").rglob("*.png")))
    model = create_model("efficientnet_b0", num_classes=3, width=0.25, depth=0.25, resolution=32)
    model.describe(class_names=["a", "b", "c"])
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict(), "model_meta": model_metadata(model)}, good)
    assert main(["predict", image, "--model", "efficientnet_b0", "--checkpoint", str(good), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "does not fit efficientnet_b0 (the --model architecture)" in err
    assert main(["predict", image, "--model", "efficientnet_b0", "--checkpoint", str(good), "--num-classes", "5"]) == 2
    err = capsys.readouterr().err
    assert "has a 3-class classifier" in err and "give --num-classes 3" in err
    assert "{classes}" not in err and "strict_head" not in err
