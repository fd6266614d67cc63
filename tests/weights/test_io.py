"""Our checkpoint format round-trips exactly; bad files are refused, each with its own message,
and a failed load changes nothing."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import effnet
from effnet.registry import Preprocessing
from effnet.testing import randomize_statistics
from effnet.weights import CheckpointError, load_model, read_metadata, read_tensors, save_model
from effnet.weights.convert import EFFNET
from effnet.weights.errors import StateDictError
from effnet.weights.io import model_metadata
from effnet.weights.pretrained import Checkpoint, load_weights
from effnet.weights.trained import load_trained_model


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
