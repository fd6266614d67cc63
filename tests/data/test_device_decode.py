"""Decoding on the training device (data.decode=gpu), exercised on the CPU: the same pixels as
the CPU path, bad files replaced with a warning, and a training run that uses it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.cli import main
from effnet.data.batch_augment import BatchEvalPreset, BatchTrainPreset
from effnet.data.datasets import scan_folder
from effnet.data.device_decode import (
    DeviceBatchTransform,
    DeviceDecodeLoader,
    EncodedImages,
    decodes_on_device,
    device_decode_loader,
)
from effnet.data.loaders import build_loader
from effnet.data.transforms import eval_transforms, train_transforms
from effnet.description import Preprocessing
from effnet.errors import ConfigError
from effnet.evaluation import evaluate_checkpoint
from effnet.infer import Classifier
from effnet.testing import randomize_statistics
from effnet.train import Trainer
from effnet.train.recipes import build_config
from effnet.weights.io import save_model
from helpers.train import assert_same_tensors, load, make_image_folder, tiny_config

PREPROCESSING = Preprocessing(resolution=32, crop_pct=0.875)
CPU = torch.device("cpu")


def _photos(root: Path, count: int = 6) -> Path:
    """Two class folders of photo-like pictures: JPEGs of several sizes, and one PNG."""
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / f"class_{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = 40 + 7 * index, 52 - 3 * index
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) % 256 + rng.integers(0, 30, (height, width, 3))
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        if index == count - 1:
            image.save(folder / f"{index}.png")
        else:
            image.save(folder / f"{index}.jpg", quality=95)
    return root


def _device_loader(dataset, batch_size: int = 4) -> DeviceDecodeLoader:
    return device_decode_loader(dataset, batch_size, False, CPU, num_workers=0)


def test_the_device_path_gives_the_cpu_path_pixels(tmp_path) -> None:
    dataset = scan_folder(_photos(tmp_path), transform=eval_transforms(PREPROCESSING))
    cpu_batches = list(build_loader(dataset, 4, train=False, num_workers=0))
    device_batches = list(_device_loader(dataset))
    assert len(device_batches) == len(cpu_batches) == 2
    for (cpu_images, cpu_labels), (images, labels) in zip(cpu_batches, device_batches, strict=True):
        assert images.shape == cpu_images.shape and torch.equal(labels, cpu_labels)
        # the same libjpeg-turbo decode, then the same v2 preset on a tensor instead of a PIL image
        assert (images - cpu_images).abs().max() < 0.1
        assert (images - cpu_images).abs().mean() < 0.01


def test_payloads_are_bytes_for_jpegs_and_pixels_for_the_rest(tmp_path) -> None:
    dataset = scan_folder(_photos(tmp_path))
    kinds = {Path(name).suffix: payload.dim() for payload, _, name in EncodedImages(dataset)}
    assert kinds == {".jpg": 1, ".png": 3}


def test_an_undecodable_jpeg_is_replaced_by_another_image_of_the_batch(tmp_path, caplog) -> None:
    root = _photos(tmp_path)
    broken = root / "class_1" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:200] + b"\x00" * 50)  # header intact, image data gone
    dataset = scan_folder(root, transform=eval_transforms(PREPROCESSING))
    with caplog.at_level(logging.WARNING):
        images, labels = next(iter(_device_loader(dataset, batch_size=6)))
    assert "1.jpg" in caplog.text and "using another image of the batch" in caplog.text
    assert images.shape[0] == 6 and torch.isfinite(images).all()
    position = [p.name for p, _ in dataset.samples].index("1.jpg")
    substitute = [i for i in range(6) if i != position and torch.equal(images[i], images[position])]
    assert substitute and labels[position] == labels[substitute[0]]


def test_prefetching_gives_the_same_batches_in_the_same_order(tmp_path) -> None:
    dataset = scan_folder(_photos(tmp_path, count=9), transform=eval_transforms(PREPROCESSING))
    plain = device_decode_loader(dataset, 2, False, CPU, num_workers=0)
    assert not plain.prefetch  # the default off CUDA
    ahead = DeviceDecodeLoader(plain.loader, plain.transform, prefetch=True)
    expected, got = list(plain), list(ahead)
    assert len(got) == len(expected) == 5
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_prefetching_passes_errors_on_and_stops_when_the_caller_does(tmp_path) -> None:
    dataset = scan_folder(_photos(tmp_path, count=9), transform=eval_transforms(PREPROCESSING))
    plain = device_decode_loader(dataset, 2, False, CPU, num_workers=0)
    calls = []

    class Counted(DeviceBatchTransform):
        fail_at = 0  # the call that raises (0: none)

        def __call__(self, payloads, labels, names):
            calls.append(names)
            if len(calls) == self.fail_at:
                raise ConfigError("none of the 2 images of a batch could be decoded")
            return super().__call__(payloads, labels, names)

    batches = iter(DeviceDecodeLoader(plain.loader, Counted(plain.transform.transform, CPU), prefetch=True))
    next(batches)
    batches.close()  # the caller stops early: the thread finishes the batch it was preparing, no more
    assert len(calls) == 2
    time.sleep(0.05)
    assert len(calls) == 2
    assert len(list(DeviceDecodeLoader(plain.loader, plain.transform, prefetch=True))) == 5
    calls.clear()
    raising = Counted(plain.transform.transform, CPU)
    raising.fail_at = 3
    with pytest.raises(ConfigError, match="could be decoded"):
        list(DeviceDecodeLoader(plain.loader, raising, prefetch=True))
    assert len(calls) == 3  # the error surfaced where the third batch was asked for, nothing after it


def _epoch(loader: DeviceDecodeLoader, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    batches = iter(loader)
    for _ in range(skip):  # as a resumed epoch replays the batches already trained
        next(batches)
    return list(batches)


def test_training_batches_are_augmented_as_one_batch_and_replay_per_epoch(tmp_path) -> None:
    transform = train_transforms(PREPROCESSING, auto_augment="randaugment", re_prob=0.25, for_tensors=True)
    dataset = scan_folder(_photos(tmp_path, count=12), transform=transform)

    def loader() -> DeviceDecodeLoader:
        return device_decode_loader(dataset, 4, True, CPU, torch.channels_last, num_workers=0, seed=7)

    first = loader()
    assert isinstance(first.transform.batched, BatchTrainPreset)
    rng = torch.get_rng_state()
    epoch_one = _epoch(first, 1)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is left to the model
    images, labels = epoch_one[0]
    assert images.shape == (4, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
    # a fresh loader (a resumed run) replays epoch 1, from its start or from the middle
    again, replayed = _epoch(loader(), 1), _epoch(loader(), 1, skip=2)
    for (a, la), (b, lb) in zip(epoch_one, again, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, _), (b, _) in zip(epoch_one[2:], replayed, strict=True):
        assert torch.equal(a, b)
    ahead = loader()
    ahead.prefetch = True  # prepared in a thread, one batch ahead: the same draws
    for (a, _), (b, _) in zip(epoch_one, _epoch(ahead, 1), strict=True):
        assert torch.equal(a, b)
    epoch_two = _epoch(first, 2)
    assert not any(torch.equal(a, b) for (a, _), (b, _) in zip(epoch_one, epoch_two, strict=True))


def test_the_evaluation_preset_is_batched_too(tmp_path) -> None:
    dataset = scan_folder(_photos(tmp_path), transform=eval_transforms(PREPROCESSING))
    assert isinstance(_device_loader(dataset).transform.batched, BatchEvalPreset)


def test_decode_setting() -> None:
    assert decodes_on_device("auto", torch.device("cuda", 0)) and not decodes_on_device("auto", CPU)
    assert decodes_on_device("gpu", CPU) and not decodes_on_device("cpu", torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="data.decode='nvjpeg' is not one of auto, cpu, gpu"):
        build_config("seed", assignments=["data.decode=nvjpeg"])


@pytest.mark.slow
def test_a_run_decodes_on_the_device(tmp_path) -> None:
    data = make_image_folder(tmp_path / "data")
    for png in data.rglob("*.png"):  # the pictures as JPEGs, read as bytes by the loader
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    # B0's bicubic preprocessing with RandAugment and rotation: the tensor preset must accept it
    settings = {"data.decode": "gpu", "run.epochs": 1, "schedule.warmup_epochs": 0,
                "augment.auto_augment": "randaugment", "augment.degrees": 10}
    trainer = Trainer(tiny_config(data, **settings), run_dir=tmp_path / "run")
    assert trainer.raw_model.preprocessing.interpolation == "bicubic"
    assert isinstance(trainer.val_loader, DeviceDecodeLoader)
    result = trainer.fit()
    assert result.status == "completed" and result.final.count == 12
    assert isinstance(trainer.loaders.train, DeviceDecodeLoader)


@pytest.mark.slow
def test_a_run_decoding_on_the_device_resumes_bit_for_bit(tmp_path) -> None:
    data = make_image_folder(tmp_path / "data")
    for png in data.rglob("*.png"):
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    settings = {"data.decode": "gpu", "schedule.warmup_epochs": 0, "augment.auto_augment": "trivialaugment",
                "augment.degrees": 10, "augment.re_prob": 0.25}
    straight = Trainer(tiny_config(data, **settings), run_dir=tmp_path / "straight").fit()
    Trainer(tiny_config(data, **settings), run_dir=tmp_path / "split").fit(stop_after=1)
    resumed = Trainer(tiny_config(data, **settings), resume=tmp_path / "split").fit()
    assert straight.status == resumed.status == "completed"
    assert_same_tensors(load(tmp_path / "straight" / "last.pt")["model"], load(tmp_path / "split" / "last.pt")["model"])


def test_effnet_eval_decoding_on_the_device_matches_the_cpu_path(tmp_path) -> None:
    data = _photos(tmp_path / "data", count=8)
    model = effnet.create_model("efficientnet_b0", num_classes=2, width=0.25, depth=0.25, resolution=32)
    model.describe(class_names=["class_0", "class_1"])
    save_model(randomize_statistics(model), tmp_path / "model.safetensors")
    results = {decode: evaluate_checkpoint(tmp_path / "model.safetensors", data, num_workers=0, decode=decode)[0]
               for decode in ("cpu", "gpu")}
    cpu, gpu = results["cpu"].predictions, results["gpu"].predictions
    assert torch.equal(cpu.targets, gpu.targets) and torch.equal(cpu.predicted, gpu.predicted)
    torch.testing.assert_close(gpu.confidence, cpu.confidence, atol=2e-3, rtol=0)
    assert main(["eval", "--checkpoint", str(tmp_path / "model.safetensors"), "--data", str(data),
                 "--decode", "gpu", "--workers", "0"]) == 0


def test_predict_decoding_on_the_device_matches_the_cpu_path(tmp_path) -> None:
    data = _photos(tmp_path / "data", count=6)
    (data / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files = sorted(data.rglob("*.*"))
    model = randomize_statistics(effnet.create_model("efficientnet_b0", num_classes=3, width=0.25, depth=0.25,
                                                     resolution=32))
    model.describe(class_names=["a", "b", "c"])
    runs = {decode: list(Classifier(model, device="cpu", decode=decode).predict_batch(files, batch_size=4))
            for decode in ("cpu", "gpu")}
    assert [p.source for p in runs["gpu"]] == [p.source for p in runs["cpu"]]
    for cpu, gpu in zip(runs["cpu"], runs["gpu"], strict=True):
        assert gpu.ok == cpu.ok, (gpu.source, gpu.error, cpu.error)
        if cpu.ok:
            assert gpu.indices == cpu.indices
            assert [p for _, p in gpu.top_k] == pytest.approx([p for _, p in cpu.top_k], abs=2e-3)
    broken = next(p for p in runs["gpu"] if p.source.endswith("broken.jpg"))
    assert not broken.ok and broken.error
