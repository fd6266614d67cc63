"""Fixtures shared by every test folder.

Session fixtures are built once and shared: tests read them and never change them (copy what a
test must modify); each one checks at the end of the session that its files are as it left them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers.files import unchanged
from helpers.predict import BAD_NAME, CLASSES, write_images
from helpers.train import STRAIGHT_RUN, make_image_folder, tiny_config


@pytest.fixture(autouse=True)
def _isolated_test() -> None:
    """Each test starts from the same seed and with no compiled code or recompile history
    left by an earlier test (which would turn on dynamic shapes)."""
    torch.manual_seed(0)
    torch._dynamo.reset()


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and do not stall when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton kernels on the CPU, with their eager fallback made to fail: a test passing here ran them."""
    pytest.importorskip("triton")
    from effnet.kernels import dwconv

    def no_fallback(*args: object, **kwargs: object) -> None:
        raise AssertionError("the eager fallback ran instead of the kernel")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dwconv, "dwconv_act_squeeze_reference", no_fallback)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``train/`` and ``val/`` of three easy classes, 8 and 4 images each at 24 px
    (:func:`helpers.train.make_image_folder`'s defaults)."""
    yield from unchanged(make_image_folder(tmp_path_factory.mktemp("image_folder")))


@pytest.fixture(scope="session")
def small_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same classes, 4 and 2 images each at 24 px."""
    yield from unchanged(make_image_folder(tmp_path_factory.mktemp("small_image_folder"), train_per_class=4,
                                           val_per_class=2))


@pytest.fixture(scope="session")
def straight_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two epochs on ``image_folder`` in one go, on one thread, with every output on
    (:data:`helpers.train.STRAIGHT_RUN`): the run that resumed and interrupted runs must equal."""
    from effnet.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(tiny_config(image_folder, **STRAIGHT_RUN), run_dir=tmp_path_factory.mktemp("runs") / "straight")
    finally:
        torch.set_num_threads(threads)
    for _ in unchanged(result.run_dir):
        yield result


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny B0 (width and depth 0.25, 32 px) with untrained weights, saved as ``.safetensors``;
    its classes (:data:`helpers.predict.CLASSES`) hold a comma and quotes."""
    from effnet import create_model
    from effnet.weights.io import save_model

    model = create_model("efficientnet_b0", num_classes=3, width=0.25, depth=0.25, resolution=32)
    model.describe(class_names=CLASSES)
    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    save_model(model, folder / "tiny.safetensors")
    for _ in unchanged(folder):
        yield folder / "tiny.safetensors"


@pytest.fixture
def odd_images(tmp_path: Path) -> Path:
    """``tmp_path/images``: a.png, z.png and between them a file named in bytes that are not UTF-8
    (:data:`helpers.predict.BAD_NAME`)."""
    return write_images(tmp_path / "images", [b"a.png", BAD_NAME, b"z.png"])


@pytest.fixture(scope="session")
def broken_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """``(folder, data)``: in ``folder``, a tiny B0 with an infinite weight as ``nan.pt`` (a
    training checkpoint) and ``nan.safetensors``, and ``other.pt`` holding a B1's weights under the
    B0's description; ``data``, an image folder of the same three classes."""
    from effnet import create_model
    from effnet.weights.io import model_metadata, save_model

    def tiny(name: str = "efficientnet_b0", **overrides):
        model = create_model(name, num_classes=3, **{"width": 0.25, "depth": 0.25, "resolution": 32, **overrides})
        model.describe(class_names=["a", "b", "c"])
        return model

    folder = tmp_path_factory.mktemp("weights")
    model = tiny()
    broken = model.state_dict()
    broken["stages.1.0.project.conv.weight"][0, 0, 0, 0] = float("inf")
    other = tiny("efficientnet_b1", depth=0.5).state_dict()
    torch.save({"model": broken, "model_meta": model_metadata(model)}, folder / "nan.pt")
    torch.save({"model": other, "model_meta": model_metadata(model)}, folder / "other.pt")
    model.load_state_dict(broken)
    save_model(model, folder / "nan.safetensors")
    data = make_image_folder(folder / "data", classes=3, train_per_class=2, val_per_class=1, size=32)
    for _ in unchanged(folder):
        yield folder, data
