"""Decoding and augmenting on the training device: loader workers only read JPEG bytes.

On a GPU, decoding and augmenting thousands of JPEGs a second on the CPU starves the model.
With ``data.decode=gpu`` the loader workers read each JPEG file's bytes and nothing more;
the main process decodes a whole batch at once with ``torchvision.io.decode_jpeg`` on the
device (nvJPEG on CUDA) and runs the preset there on the whole batch
(:mod:`effnet.data.batch_augment`: the same random resized crop, flips, auto-augment policies
and normalization as the CPU path's v2 preset, drawn per sample from a generator seeded
from the loader's seed, epoch and rank, so a resumed run replays the same augmentation).
A preset that module does not batch runs image by image. Files that are not
JPEG are decoded by the worker as before; a JPEG the device cannot decode is decoded on the
CPU instead, and one that cannot be decoded at all is replaced by another image of the batch
(with its label), with a warning naming the file, as the CPU path does.

The path runs on the CPU too (``decode_jpeg`` on the CPU), which is how it is tested.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import pil_to_tensor

from ..errors import ConfigError
from .batch_augment import batch_preset
from .datasets import ImageDataset
from .images import ImageReadError, decode_image
from .loaders import build_loader

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "cpu", "gpu")
JPEG_MAGIC = b"\xff\xd8\xff"


def decodes_on_device(mode: str, device: torch.device) -> bool:
    """Whether ``data.decode=mode`` decodes on ``device`` (``auto``: on CUDA devices)."""
    if mode not in DECODE_MODES:
        raise ConfigError(f"data.decode={mode!r} is not one of {', '.join(DECODE_MODES)}")
    return mode == "gpu" or (mode == "auto" and device.type == "cuda")


def read_jpeg_bytes(path: Path) -> torch.Tensor | None:
    """The file's bytes as a 1-D uint8 tensor if it is a readable JPEG, else ``None``."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data.startswith(JPEG_MAGIC) else None


class EncodedImages(Dataset):
    """``dataset``'s images as they are on disk: ``(bytes, label)`` for a JPEG (a 1-D uint8
    tensor), ``(uint8 CHW image, label)`` for any other format (decoded here, with the
    dataset's own handling of unreadable files). Item ``i`` also carries its file name."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path, label = self.dataset.samples[index]
        payload = read_jpeg_bytes(path)
        if payload is not None:
            return payload, label, str(path)
        image, label = self.dataset.load(index)
        return pil_to_tensor(image), label, str(path)


def collate_encoded(items: list[tuple[torch.Tensor, int, str]]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """A batch of :class:`EncodedImages` items: the payloads as a list (they differ in size)."""
    payloads, labels, names = zip(*items, strict=True)
    return list(payloads), torch.tensor(labels), list(names)


class DeviceBatchTransform:
    """Decode a batch of :class:`EncodedImages` payloads on ``device`` and apply ``transform``
    (a v2 preset from :mod:`effnet.data.transforms`) there: as one batched preset when
    :func:`~effnet.data.batch_augment.batch_preset` knows it (its randomness from
    :attr:`generator`, see :meth:`seed`), else to each image; returns the stacked batch in
    ``memory_format`` and the labels, both on ``device``."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.transform = transform
        self.batched = batch_preset(transform)
        self.device = device
        self.memory_format = memory_format
        self.generator = torch.Generator()  # the batched preset draws its parameters on the host

    def seed(self, seed: int, epoch: int = 0, rank: int = 0) -> None:
        """Start the augmentation's random stream for ``epoch`` of a run seeded ``seed`` on ``rank``."""
        key = hashlib.blake2b(f"{seed}/{epoch}/{rank}".encode(), digest_size=8).digest()
        self.generator.manual_seed(int.from_bytes(key, "little") >> 1)

    def decode(self, payloads: list[torch.Tensor], names: list[str]) -> list[torch.Tensor | str]:
        """Each payload as a uint8 CHW image on the device, or the reason it cannot be read."""
        images: list[torch.Tensor | str] = [p.to(self.device) if p.dim() == 3 else "" for p in payloads]
        encoded = [i for i, p in enumerate(payloads) if p.dim() == 1]
        if not encoded:
            return images
        try:
            decoded = decode_jpeg([payloads[i] for i in encoded], mode=ImageReadMode.RGB, device=self.device,
                                  apply_exif_orientation=True)
        except RuntimeError:  # one bad file fails the whole batch: decode them one by one
            decoded = [self._decode_one(payloads[i], names[i]) for i in encoded]
        for i, image in zip(encoded, decoded, strict=True):
            images[i] = image
        return images

    def _decode_one(self, payload: torch.Tensor, name: str) -> torch.Tensor | str:
        try:
            return decode_jpeg(payload, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        except RuntimeError:
            pass
        try:  # what the device cannot decode, the CPU path may (e.g. CMYK or progressive quirks)
            return pil_to_tensor(decode_image(payload.numpy().tobytes(), name)).to(self.device)
        except ImageReadError as error:
            return error.reason

    def __call__(self, payloads: list[torch.Tensor], labels: torch.Tensor,
                 names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.decode(payloads, names)
        for name, image in zip(names, images, strict=True):
            if isinstance(image, str):
                logger.warning("skipping %s: %s; using another image of the batch in its place", name, image)
        usable = [i for i, image in enumerate(images) if not isinstance(image, str)]
        if not usable:
            raise ConfigError(f"none of the {len(names)} images of a batch could be decoded (first: {names[0]}); "
                              "check the data folder")
        order = [i if not isinstance(images[i], str) else usable[i % len(usable)] for i in range(len(images))]
        chosen = [images[i] for i in order]
        if self.batched is not None:
            batch = self.batched(chosen, self.generator)  # type: ignore[arg-type]
        else:
            batch = torch.stack([self.transform(image) for image in chosen])
        labels = labels[order]
        if self.device.type == "cuda":  # a plain copy would wait for the work queued on the device
            labels = labels.pin_memory()
        return batch.contiguous(memory_format=self.memory_format), labels.to(self.device, non_blocking=True)


class DeviceDecodeLoader:
    """A :class:`DataLoader` over :class:`EncodedImages` whose batches come out decoded and
    transformed on the device. Everything else (``sampler``, ``generator``, ``num_workers``)
    is the wrapped loader's, so epoch seeding and resuming work as with the CPU path; each
    pass seeds the augmentation from the sampler's seed, epoch and rank (a replayed epoch
    draws the same augmentation)."""

    def __init__(self, loader: DataLoader, transform: DeviceBatchTransform) -> None:
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self.loader.sampler
        self.transform.seed(getattr(sampler, "seed", 0), getattr(sampler, "epoch", 0), getattr(sampler, "rank", 0))
        for payloads, labels, names in self.loader:
            yield self.transform(payloads, labels, names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def device_decode_loader(dataset: ImageDataset, batch_size: int, train: bool, device: torch.device,
                         memory_format: torch.memory_format = torch.contiguous_format,
                         **options: Any) -> DeviceDecodeLoader:
    """:func:`~effnet.data.loaders.build_loader` over ``dataset``'s encoded images (``options``
    go to it), whose batches come out decoded and transformed with ``dataset.transform`` on
    ``device``."""
    loader = build_loader(EncodedImages(dataset), batch_size, train, collate_fn=collate_encoded, **options)
    return DeviceDecodeLoader(loader, DeviceBatchTransform(dataset.transform, device, memory_format))
