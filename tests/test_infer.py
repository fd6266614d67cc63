"""The Classifier on a tiny network: every input kind, batches, failures, TTA, AMP, class names,
and the file collection and writers behind ``effnet predict``."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from effnet import Classifier, create_model
from effnet.data import ImageReadError
from effnet.infer import MissingClassNamesWarning, Prediction, resolve_device
from effnet.predict import collect_images, format_for, open_writer, predict_files
from effnet.registry import Preprocessing
from effnet.weights.io import save_model
from effnet_runtime.portable import PREDICTION_SCHEMA

CLASSES = ["cat", "dog", "fish", "bird"]
SIZE = 32


def tiny_model(num_classes: int = len(CLASSES)):
    """A small B0 whose BatchNorm statistics come from one random batch, so that different pictures
    get clearly different probabilities (a fresh model's are all about uniform)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("efficientnet_b0", num_classes=num_classes, width=0.25, depth=0.25, resolution=SIZE,
                             bn_momentum=1.0, drop_path_rate=0.0)
        with torch.no_grad():
            model.train()(torch.randn(16, 3, SIZE, SIZE))
    return model.eval()


def assert_same(got, expected, abs=1e-6):
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=abs)


def picture(seed: int = 0, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def classifier(tiny) -> Classifier:
    return Classifier(tiny, class_names=CLASSES)


@pytest.fixture
def files(tmp_path):
    paths = []
    for seed in range(5):
        path = tmp_path / f"img{seed}.png"
        Image.fromarray(picture(seed)).save(path)
        paths.append(path)
    return paths


def test_every_input_kind_gives_the_same_prediction(classifier, tmp_path):
    pixels = picture()
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    expected = classifier.predict(path, top_k=4)
    assert [name for name, _ in expected] != [] and sorted(n for n, _ in expected) == sorted(CLASSES)
    assert sum(p for _, p in expected) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p in expected] == sorted((p for _, p in expected), reverse=True)
    same = [str(path), Image.fromarray(pixels), pixels, pixels.astype(np.float64) / 255,
            torch.from_numpy(pixels).permute(2, 0, 1), Image.fromarray(pixels).convert("RGBA")]
    for image in same:
        assert_same(classifier.predict(image, top_k=4), expected)
    prepared = classifier.preprocess(path)
    assert prepared.shape == (3, SIZE, SIZE)
    for tensor in (prepared, prepared.unsqueeze(0)):  # float tensors are taken as already preprocessed
        assert_same(classifier.predict(tensor, top_k=4), expected)
    assert classifier.predict(picture(1), top_k=4) != expected


def test_greyscale_arrays_become_rgb(classifier):
    grey = picture()[:, :, 0]
    expected = classifier.predict(np.stack([grey] * 3, axis=-1))
    assert_same(classifier.predict(grey), expected)
    assert_same(classifier.predict(grey[:, :, None]), expected)


@pytest.mark.parametrize("image, message", [
    (np.full((8, 8, 3), 2.0), "float image array must hold values in 0..1, found 2..2"),
    (np.zeros((8, 8, 5), dtype=np.uint8), "HxW or HxWxC with C = 1, 3 or 4, got shape (8, 8, 5)"),
    (np.zeros((8, 8, 3), dtype=np.int32), "must be uint8 (0..255) or float (0..1), got int32"),
    (torch.zeros(2, 3, 8, 8), "preprocessed tensor must be CxHxW or 1xCxHxW, got [2, 3, 8, 8]"),
    (torch.zeros(8, 8, 3, dtype=torch.int64), "pixel tensor must be uint8 CxHxW, got torch.int64"),
])
def test_bad_inputs_are_refused_with_what_was_wrong(classifier, image, message):
    with pytest.raises(ValueError) as error:
        classifier.predict(image)
    assert message in str(error.value)


def test_unreadable_file_raises_for_a_single_prediction(classifier, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="bad.png: not an image file"):
        classifier.predict(bad)


def test_top_k_is_clipped_to_the_classes_and_must_be_positive(classifier):
    assert len(classifier.predict(picture(), top_k=10)) == len(CLASSES)
    assert len(classifier.predict(picture(), top_k=1)) == 1
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        classifier.predict(picture(), top_k=0)


def test_predict_batch_streams_in_order_and_keeps_going_after_failures(classifier, files, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(files[0].read_bytes()[:60])
    missing = tmp_path / "missing.png"
    inputs = [files[0], corrupt, files[1], files[2], missing, files[3], files[4]]
    stream = classifier.predict_batch(inputs, batch_size=3, top_k=2)
    first = next(stream)  # a generator: results come as batches finish
    results = [first, *stream]
    assert [r.source for r in results] == [str(p) for p in inputs]
    assert [r.ok for r in results] == [True, False, True, True, False, True, True]
    assert "truncated" in results[1].error and results[4].error == "file not found"
    for result, path in zip(results, inputs, strict=True):
        if result.ok:
            single = classifier.predict(path, top_k=2)
            assert_same(result.top_k, single, abs=1e-5)
            assert [CLASSES[i] for i in result.indices] == [n for n, _ in single]
            assert result.label == single[0][0] and result.probability == pytest.approx(single[0][1], abs=1e-5)


def test_predict_batch_with_worker_processes_matches_in_process(classifier, files):
    here = list(classifier.predict_batch(files, batch_size=2))
    workers = list(classifier.predict_batch([*files, "nowhere.png"], batch_size=2, num_workers=2))
    assert [r.top_k for r in workers[:-1]] == [r.top_k for r in here]
    assert workers[-1] == Prediction("nowhere.png", error="file not found")


def test_predict_batch_mixes_inputs_and_refuses_bad_settings_at_once(classifier, files):
    prepared = classifier.preprocess(files[1])
    results = list(classifier.predict_batch([files[0], picture(1), prepared, np.zeros((4, 4, 7), np.uint8)]))
    assert [r.source for r in results] == [str(files[0]), "<image 1>", "<image 2>", "<image 3>"]
    assert_same(results[1].top_k, results[2].top_k, abs=1e-5)
    assert "got shape (4, 4, 7)" in results[3].error
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        classifier.predict_batch(files, batch_size=0)


def test_flip_tta_averages_image_and_mirror(tiny, files):
    model = tiny
    plain = Classifier(model, CLASSES)
    tta = Classifier(model, CLASSES, tta_flip=True)
    x = plain.preprocess(files[0]).unsqueeze(0)
    expected = (plain.probabilities(x) + plain.probabilities(x.flip(3))) / 2
    assert torch.allclose(tta.probabilities(x), expected, atol=1e-6)
    assert not torch.allclose(plain.probabilities(x), expected, atol=1e-4)


@pytest.mark.cpu_kinds
@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_autocasts_the_model_and_stays_close(tiny, files, amp, dtype):
    model = tiny
    full = Classifier(model, CLASSES).probabilities(Classifier(model, CLASSES).preprocess(files[0])[None])
    mixed = Classifier(model, CLASSES, amp=amp)
    seen = []
    handle = model.stem.conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    probabilities = mixed.probabilities(mixed.preprocess(files[0])[None])
    handle.remove()
    assert seen == [dtype]
    assert probabilities.dtype == torch.float32 and probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert probabilities.argmax() == full.argmax()  # the real weights' answers under bf16: test_infer_pretrained


def test_settings_are_checked(tiny):
    with pytest.raises(ValueError, match="unknown amp 'int8'"):
        Classifier(tiny, CLASSES, amp="int8")
    with pytest.raises(ValueError, match="3 class names for a model with 4 classes"):
        Classifier(tiny, CLASSES[:3])
    with pytest.raises(ValueError, match="no classifier"):
        Classifier(create_model("efficientnet_b0", num_classes=0, width=0.25, depth=0.25))
    with pytest.raises(ValueError, match="carries no preprocessing"):
        Classifier(torch.nn.Conv2d(3, 4, 1), CLASSES)
    with pytest.raises(ValueError, match="device 'warp-drive' cannot be used here"):
        resolve_device("warp-drive")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' cannot be used here"):
            resolve_device("cuda")


def test_a_plain_module_works_with_explicit_preprocessing_and_names(files):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    classifier = Classifier(net, ["yes", "no"], preprocessing=Preprocessing(16), device="cpu")
    assert {name for name, _ in classifier.predict(files[0])} == {"yes", "no"}


def test_checkpoint_carries_names_and_preprocessing(tiny, tmp_path, files):
    model = copy.deepcopy(tiny)  # the fixture is shared: describe a copy
    preprocessing = Preprocessing(SIZE, crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)
    model.describe(class_names=CLASSES, preprocessing=preprocessing)
    path = save_model(model, tmp_path / "tiny.safetensors")
    loaded = Classifier.from_checkpoint(path)
    assert loaded.class_names == CLASSES and loaded.preprocessing == preprocessing
    reference = Classifier(model, CLASSES, preprocessing=preprocessing)
    assert_same(loaded.predict(files[0]), reference.predict(files[0]))
    default = Classifier(tiny, CLASSES).predict(files[0])  # the preprocessing the model had before
    assert [p for _, p in loaded.predict(files[0])] != pytest.approx([p for _, p in default], abs=1e-3)


def test_checkpoint_without_class_names_names_classes_by_index_and_says_so_once(tiny, tmp_path, files):
    path = save_model(tiny, tmp_path / "nameless.safetensors")
    with pytest.warns(MissingClassNamesWarning, match="no class names: predictions name classes by index"):
        classifier = Classifier.from_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = list(classifier.predict_batch(files, top_k=4))
        single = classifier.predict(files[0], top_k=4)
    assert {name for name, _ in single} == {f"class_{i}" for i in range(4)}
    assert all(name == f"class_{index}" for r in results for (name, _), index in zip(r.top_k, r.indices,
                                                                                      strict=True))


def test_foreign_or_broken_checkpoint_without_a_model_name_says_what_to_do(tiny, tmp_path):
    foreign = tmp_path / "weights.pth"
    torch.save(tiny.state_dict(), foreign)
    with pytest.raises(ValueError, match="give its architecture too: .*model_name="):
        Classifier.from_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Classifier.from_checkpoint(tmp_path / "nothing.safetensors")


# ------------------------------------------------------------ effnet predict's pieces
def test_collect_images_expands_files_folders_and_globs(tmp_path):
    for relative in ("a/1.png", "a/sub/2.JPG", "a/.hidden/3.png", "a/notes.txt", "b/4.png", "c/5.webp"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "readme.md").write_text("hi")
    found = collect_images([tmp_path / "a", str(tmp_path / "b" / "*.png"), str(tmp_path / "**" / "*.webp"),
                            tmp_path / "a" / "1.png", tmp_path / "a" / "notes.txt", tmp_path / "missing.png",
                            tmp_path / "empty", str(tmp_path / "only_text"), str(tmp_path / "z*"),
                            str(tmp_path / "only_text" / "*")])
    assert [p.relative_to(tmp_path).as_posix() for p in found.files] == [
        "a/1.png", "a/sub/2.JPG", "b/4.png", "c/5.webp", "a/notes.txt"]
    reasons = {arg.replace(str(tmp_path), "T"): reason for arg, reason in found.problems}
    assert reasons["T/missing.png"] == "no such file or folder"
    assert reasons["T/empty"].startswith("folder with no images (looked for .jpg")
    assert reasons["T/only_text"].startswith("folder with no images")
    assert reasons["T/z*"] == "matches no files"
    assert reasons["T/only_text/*"].startswith("matches no image files")


def test_format_follows_the_output_suffix_unless_given():
    assert format_for(None) == "table" and format_for("x.CSV") == "csv" and format_for("x.json") == "json"
    assert format_for("x.txt") == "table" and format_for("x.json", "csv") == "csv"
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        format_for(None, "xml")


PREDICTIONS = [Prediction("a.png", (("cat", 0.75), ("dog", 0.25)), (0, 1)),
               Prediction("b.png", error="not an image file")]


def written(format_name: str) -> str:
    stream = io.StringIO()
    writer = open_writer(format_name, stream, "tiny_b0")
    for prediction in PREDICTIONS:
        writer.write(prediction)
    writer.close()
    return stream.getvalue()


def test_writers_keep_predictions_and_errors():
    rows = list(csv.DictReader(io.StringIO(written("csv"))))
    assert [(r["path"], r["rank"], r["class_index"], r["class_name"], r["probability"], r["error"]) for r in rows] == [
        ("a.png", "1", "0", "cat", "0.750000", ""), ("a.png", "2", "1", "dog", "0.250000", ""),
        ("b.png", "", "", "", "", "not an image file")]
    ranked = [{"rank": 1, "class_index": 0, "class_name": "cat", "probability": 0.75},
              {"rank": 2, "class_index": 1, "class_name": "dog", "probability": 0.25}]
    records = json.loads(written("json"))
    assert records == [
        {"schema_version": 1, "path": "a.png", "model": "tiny_b0", "top_k": ranked, "error": None,
         "predictions": ranked},  # the field's name before the schema, kept one release
        {"schema_version": 1, "path": "b.png", "model": "tiny_b0", "top_k": [], "error": "not an image file",
         "predictions": []}]
    for record in records:
        jsonschema.validate(record, PREDICTION_SCHEMA)
    table = written("table").splitlines()
    assert table[0].split() == ["image", "rank", "class", "probability"]
    assert table[2].split() == ["a.png", "1", "cat", "75.00%"] and table[3].split() == ["2", "dog", "25.00%"]
    assert table[4].split()[:2] == ["b.png", "error:"]


def test_interrupted_json_output_is_still_valid(classifier, files):
    stream = io.StringIO()
    writer = open_writer("json", stream)

    def interrupt(prediction):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        try:
            predict_files(classifier, [files[0], "missing.png", files[1]], writer, batch_size=1, progress=False,
                          on_failure=interrupt)
        finally:
            writer.close()
    assert [entry["path"] for entry in json.loads(stream.getvalue())] == [str(files[0]), "missing.png"]


def test_a_model_name_with_our_checkpoint_reads_it_through_the_converters(tiny, tmp_path, files):
    lite = create_model("efficientnet_lite0", num_classes=3)
    lite.describe(class_names=["a", "b", "c"])
    path = save_model(lite, tmp_path / "lite.safetensors")
    named = Classifier.from_checkpoint(path, "efficientnet_lite0")  # the head size comes from the file
    assert named.class_names == ["a", "b", "c"] and named.preprocessing == lite.preprocessing
    assert_same(named.predict(files[0]), Classifier.from_checkpoint(path).predict(files[0]), abs=1e-5)
    named_tiny = copy.deepcopy(tiny)
    named_tiny.describe(class_names=CLASSES)
    tiny_path = save_model(named_tiny, tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="width=0.25 \\(requested 1.0\\)"):
        Classifier.from_checkpoint(tiny_path, "efficientnet_b0")
    with pytest.raises(ValueError, match="is a run directory, which records its architecture"):
        Classifier.from_checkpoint(tmp_path, "efficientnet_b0")


@pytest.mark.timeout(120)  # a FIFO that were opened would block here
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_a_thin_image_a_fifo_and_a_device_each_fail_alone_and_the_rest_go_on(tiny, files, tmp_path, decode):
    thin_png, thin_jpg, fifo = tmp_path / "thin.png", tmp_path / "thin.jpg", tmp_path / "fifo.png"
    Image.new("RGB", (1, 2_000)).save(thin_png)  # 256 x 512,000 pixels once resized at 224 px
    Image.new("RGB", (2_000, 1)).save(thin_jpg)  # decoded on the device with decode="gpu"
    os.mkfifo(fifo)
    inputs = [files[0], thin_png, thin_jpg, fifo, Path("/dev/zero"), files[1]]
    classifier = Classifier(tiny, CLASSES, preprocessing=Preprocessing(224, 0.875), device="cpu", decode=decode)
    for workers in (0, 2):
        results = list(classifier.predict_batch(inputs, batch_size=4, num_workers=workers))
        assert [r.ok for r in results] == [True, False, False, False, False, True]
        assert "1x2000 pixels would be resized to 256x512000" in results[1].error
        assert "2000x1 pixels" in results[2].error and "too thin" in results[2].error
        assert "not a regular file but a FIFO" in results[3].error
        assert "not a regular file but a character device" in results[4].error
    with pytest.raises(ImageReadError, match="thin.png: .*too thin to classify"):
        classifier.preprocess(thin_png)
