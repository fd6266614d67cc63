"""Our checkpoint format round-trips exactly; bad files are refused, each with its own message,
and a failed load changes nothing."""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import effnet
from effnet.registry import Preprocessing
from effnet.testing import randomize_statistics
from effnet.weights import CheckpointError, load_model, read_metadata, read_tensors, save_model
from effnet.weights.convert import EFFNET
from effnet.weights.errors import StateDictError
from effnet.weights.io import model_metadata
from effnet.weights.pretrained import Checkpoint, load_weights
from effnet.weights.trained import load_trained_model, model_from_checkpoint
from helpers.process import GB, run_effnet


def small_model(name: str = "efficientnet_b0", num_classes: int = 5) -> effnet.EfficientNet:
    return randomize_statistics(effnet.create_model(name, num_classes=num_classes))


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[effnet.EfficientNet, Path]:
    model = small_model()
    preprocessing = Preprocessing(200, 0.9, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model.describe(class_names=list("abcde"), preprocessing=preprocessing)
    path = save_model(model, tmp_path / "model.safetensors", extra={"epoch": 7})
    return model, path


def test_safetensors_round_trip_is_exact(saved: tuple[effnet.EfficientNet, Path]) -> None:
    model, path = saved
    loaded = load_model(path)
    assert states_equal(model, loaded)
    assert loaded.config == model.config and loaded.num_classes == 5
    assert loaded.class_names == list("abcde")
    assert loaded.preprocessing == Preprocessing(200, 0.9, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert read_metadata(path)["extra"] == {"epoch": 7}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_our_file_loads_through_create_model(saved: tuple[effnet.EfficientNet, Path]) -> None:
    model, path = saved
    loaded = effnet.create_model("efficientnet_b0", num_classes=5, pretrained=path)
    assert states_equal(model, loaded)
    assert loaded.class_names == list("abcde") and loaded.preprocessing.resolution == 200


def test_file_for_another_config_is_refused(saved: tuple[effnet.EfficientNet, Path]) -> None:
    _, path = saved
    with pytest.raises(CheckpointError, match=r"holds a efficientnet_b0 network, not efficientnet_b1: "
                                              r"depth=1\.0 \(requested 1\.1\)"):
        effnet.create_model("efficientnet_b1", num_classes=5, pretrained=path)


def test_file_whose_tensors_do_not_fit_its_config_is_refused(tmp_path: Path) -> None:
    lite = small_model("efficientnet_lite0")
    b0_metadata = model_metadata(small_model("efficientnet_b0"))
    path = tmp_path / "mislabelled.safetensors"
    save_file(dict(lite.state_dict()), str(path), metadata={"effnet": json.dumps(b0_metadata)})
    with pytest.raises(CheckpointError, match="missing from the checkpoint.*another architecture"):
        load_model(path)


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(CheckpointError, match=r"noise\.safetensors is not a safetensors file \(corrupt\)"):
        load_model(noise)
    bad_header = tmp_path / "bad_header.safetensors"
    bad_header.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="header is not valid"):
        read_tensors(bad_header)
    pickle_noise = tmp_path / "noise.pth"
    # Seeds whose noise makes the unpickler raise UnpicklingError, IndexError, KeyError and
    # UnicodeDecodeError: each must become the same readable refusal.
    for seed in (0, 2, 20, 195):
        noise_bytes = random.Random(seed).randbytes(512)
        pickle_noise.write_bytes(b"\x80\x02" + noise_bytes)
        with pytest.raises(CheckpointError, match=r"noise\.pth is a corrupt PyTorch checkpoint"):
            read_tensors(pickle_noise)


def test_truncated_file_is_refused(saved: tuple[effnet.EfficientNet, Path], tmp_path: Path) -> None:
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated: its header describes \d+ bytes, "
                                              r"the file has \d+"):
        load_model(cut)
    torch.save(small_model().state_dict(), tmp_path / "whole.pth")
    whole = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth is truncated: its zip archive has no end"):
        read_tensors(tmp_path / "cut.pth")


class RunsCode:
    """A pickle payload that would create a file if unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"stem.conv.weight": torch.zeros(1), "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth: it is a pickle that would run code "
                                              r"when loaded \(it calls \w+\.system\).*weights_only=True"):
        effnet.create_model("efficientnet_b0", pretrained=path)
    assert not marker.exists()


def test_failed_load_leaves_the_model_untouched() -> None:
    model = small_model(num_classes=1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = small_model(num_classes=1000).state_dict()
    last_key = list(source)[-3]  # a late key: a naive loader would already have copied the others
    source[last_key] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=f"shape mismatch for '{last_key}'"):
        load_weights(model, Checkpoint(source, EFFNET, "test"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_head_of_another_size_is_dropped_with_a_warning_or_refused(tmp_path: Path) -> None:
    imagenet = small_model(num_classes=1000)
    path = save_model(imagenet, tmp_path / "imagenet.safetensors")
    with pytest.warns(UserWarning, match="1000-class classifier, the model was asked for 10 classes: its head was "
                                         "dropped"):
        tuned = effnet.create_model("efficientnet_b0", num_classes=10, pretrained=path)
    body = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in body.items())
    assert tuned.classifier.weight.shape == (10, 1280) and tuned.class_names is None
    with pytest.raises(CheckpointError, match="1000-class classifier.*give --num-classes 1000 \\(num_classes=1000 "):
        effnet.create_model("efficientnet_b0", num_classes=10, pretrained=path, strict_head=True)
    with pytest.warns(UserWarning, match="asked for 0 classes"):
        backbone = effnet.create_model("efficientnet_b0", num_classes=0, pretrained=path)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_metadata_errors_say_what_to_do(saved: tuple[effnet.EfficientNet, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="without effnet metadata.*pretrained=path"):
        read_metadata(plain)
    model, _ = saved
    newer = dict(model_metadata(model), format_version=99)
    future = tmp_path / "future.safetensors"
    save_file(dict(model.state_dict()), str(future), metadata={"effnet": json.dumps(newer)})
    with pytest.raises(CheckpointError, match="newer effnet.*upgrade"):
        load_model(future)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_plain_state_dict_of_ours_loads_from_pth(tmp_path: Path) -> None:
    model = small_model()
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    loaded = effnet.create_model("efficientnet_b0", num_classes=5, pretrained=tmp_path / "ours.pth")
    assert states_equal(model, loaded)


def test_non_finite_weights_are_refused_at_load_naming_the_first_bad_tensor(broken_weights):
    folder, _ = broken_weights
    for load in (lambda: load_model(folder / "nan.safetensors"), lambda: load_trained_model(folder / "nan.pt")):
        with pytest.raises(StateDictError, match=r"'stages\.1\.0\.project\.conv\.weight' holds NaN or infinite "
                                                 r"values \(1 of \d+\)"):
            load()


def _edited(metadata: dict, section: str | None, **changes: object) -> dict:
    if section is None:
        return {**metadata, **changes}
    return {**metadata, section: {**metadata[section], **changes}}


@pytest.mark.parametrize(("section", "changes", "message"), [
    (None, {"num_classes": 100_000, "class_names": None},  # 1,000,000: the slow test below, in a bounded process
     r"metadata does not match its tensors \(shape mismatch for 'classifier.weight': checkpoint \(5, 1280\), "
     r"model \(100000, 1280\)"),
    (None, {"num_classes": 10**9, "class_names": None}, r"num_classes=1000000000 \(a whole number from 0 to"),
    (None, {"num_classes": "5"}, "num_classes='5'"),
    (None, {"class_names": [["a"]] * 5}, r"class_names=\[\['a'\]"),
    (None, {"class_names": list("abc")}, "a list of 5 names"),
    ("preprocessing", {"resolution": 100_000}, "resolution=100000, crop_pct=0.9 .*from 1 to 4096"),
    ("preprocessing", {"crop_pct": 1e-4}, "resizes images to 2,000,000 px before the crop"),
    ("preprocessing", {"std": [0, 1, 1]}, r"std=\[0, 1, 1\]"),
    ("config", {"depth": 70.0}, "1120 blocks, up to 1280 channels"),
    ("config", {"width": float("inf")}, "config: cannot convert float infinity"),
    ("config", {"divisor": 0}, "config: integer division"),
    ("config", {"bn_eps": -1.0}, "invalid bn_eps=-1.0"),
])
def test_metadata_is_checked_against_the_tensors_and_sane_ranges_before_anything_is_built(
        saved: tuple[effnet.EfficientNet, Path], tmp_path: Path, monkeypatch, section, changes, message) -> None:
    model, _ = saved
    tensors = dict(model.state_dict())
    metadata = _edited(model_metadata(model), section, **changes)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={"effnet": json.dumps(metadata)})
    built = []
    monkeypatch.setattr(effnet.EfficientNet, "_init_weights", lambda self: built.append(self.classifier))
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    with pytest.raises(CheckpointError, match=message):  # a training checkpoint's metadata, the same
        model_from_checkpoint({"model": tensors, "model_meta": metadata})
    assert all(layer.weight.is_meta for layer in built if hasattr(layer, "weight"))  # nothing allocated


def test_deeply_nested_metadata_and_integer_weights_are_refused(saved: tuple[effnet.EfficientNet, Path],
                                                                tmp_path: Path) -> None:
    model, _ = saved
    deep = tmp_path / "deep.safetensors"
    save_file(dict(model.state_dict()), str(deep), metadata={"effnet": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match="corrupt effnet metadata .*nested too deeply"):
        load_model(deep)
    nested_names = {**model_metadata(model), "class_names": functools.reduce(lambda inner, _: [inner], range(10**5),
                                                                             [])}
    with pytest.raises(CheckpointError, match="class_names=<a deeply nested list>"):
        model_from_checkpoint({"model": dict(model.state_dict()), "model_meta": nested_names})
    integers = {k: (v * 100).to(torch.int8) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    cast = tmp_path / "int8.safetensors"
    save_file(integers, str(cast), metadata={"effnet": json.dumps(model_metadata(model))})
    for load in (lambda: load_model(cast),
                 lambda: model_from_checkpoint({"model": integers, "model_meta": model_metadata(model)}),
                 lambda: effnet.create_model("efficientnet_b0", num_classes=5, pretrained=cast)):
        with pytest.raises(CheckpointError, match="'stem.conv.weight' is int8, not floating point"):
            load()


@pytest.mark.slow
def test_a_million_classes_claimed_by_the_metadata_cost_no_memory(saved: tuple[effnet.EfficientNet, Path],
                                                                   tmp_path: Path) -> None:
    model, _ = saved
    metadata = {**model_metadata(model), "num_classes": 1_000_000, "class_names": None}  # a 5 GB head
    path = tmp_path / "claims.safetensors"
    save_file(dict(model.state_dict()), str(path), metadata={"effnet": json.dumps(metadata)})
    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32)).save(image)
    done = run_effnet(["predict", str(image), "--checkpoint", str(path), "--device", "cpu", "--no-progress"])
    assert done.returncode == 2 and "its metadata does not match its tensors" in done.stderr, done.stderr
    assert done.peak_rss < 2.5 * GB, f"peak resident memory {done.peak_rss / GB:.2f} GB"
