"""Decoding and augmenting on the training device: loader workers only read JPEG bytes.

On a GPU, decoding and augmenting thousands of JPEGs a second on the CPU starves the model.
With ``data.decode=gpu`` the loader workers read each JPEG file's bytes and nothing more;
the main process decodes a whole batch at once on the device (:func:`effnet.data.jpeg.decode_jpegs`:
one nvJPEG call on CUDA) and runs the preset there on the whole batch
(:mod:`effnet.data.batch_augment`: the same random resized crop, flips, auto-augment policies
and normalization as the CPU path's v2 preset, drawn per sample from a generator seeded
from the loader's seed, epoch and rank, so a resumed run replays the same augmentation).
A preset that module does not batch runs image by image. Files that are not
JPEG are decoded by the worker as before; a JPEG the device cannot decode is decoded on the
CPU instead, and one that cannot be decoded at all is replaced by another image of the batch
(with its label), with a warning naming the file, as the CPU path does.

On CUDA the next batch is decoded and augmented while the model trains on this one: a thread
of the main process does it on a CUDA stream of its own (:class:`DeviceDecodeLoader`'s
``prefetch``), so that the decoder's host-side work and the model's kernel launches overlap.

The path runs on the CPU too (decoding on the CPU), which is how it is tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from effnet_runtime.portable import special_file

from ..errors import ConfigError
from .batch_augment import batch_preset, host_to_device
from .datasets import ImageDataset
from .images import ImageReadError, decode_image
from .jpeg import JPEG_MAGIC, decode_jpegs
from .loaders import build_loader
from .transforms import size_bound

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "cpu", "gpu")


def decodes_on_device(mode: str, device: torch.device) -> bool:
    """Whether ``data.decode=mode`` decodes on ``device``. ``auto`` is the measured default: the
    CPU, on every device, until GPU decoding has been measured ahead on a GPU (see docs/speed.md);
    ``gpu`` decodes on ``device``."""
    if mode not in DECODE_MODES:
        raise ConfigError(f"data.decode={mode!r} is not one of {', '.join(DECODE_MODES)}")
    return mode == "gpu"


def read_jpeg_bytes(path: Path) -> torch.Tensor | None:
    """The file's bytes as a 1-D uint8 tensor if it is a readable JPEG, else ``None`` (also for
    a FIFO or a device, which are never opened)."""
    if special_file(path) is not None:
        return None
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
    ``generator``, see :meth:`seed`), else to each image; returns the stacked batch in
    ``memory_format`` and the labels, both on ``device``."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.transform = transform
        self.batched = batch_preset(transform)
        self.size_bound = size_bound(transform)
        self.device = device
        self.memory_format = memory_format
        self.generator = torch.Generator()  # the batched preset draws its parameters on the host

    def seed(self, seed: int, epoch: int = 0, rank: int = 0) -> None:
        """Start the augmentation's random stream for ``epoch`` of a run seeded ``seed`` on ``rank``."""
        key = hashlib.blake2b(f"{seed}/{epoch}/{rank}".encode(), digest_size=8).digest()
        self.generator.manual_seed(int.from_bytes(key, "little") >> 1)

    def decode(self, payloads: list[torch.Tensor], names: list[str]) -> list[torch.Tensor | str]:
        """Each payload as a uint8 CHW image on the device, or the reason it cannot be read
        (or, for the eval preset, resized: see :class:`~effnet.data.transforms.BoundedResize`)."""
        images: list[torch.Tensor | str] = [host_to_device(p, self.device) if p.dim() == 3 else "" for p in payloads]
        encoded = [i for i, p in enumerate(payloads) if p.dim() == 1]
        if encoded:
            try:
                decoded = decode_jpegs([payloads[i] for i in encoded], self.device)
            except RuntimeError:  # one bad file fails the whole batch: decode them one by one
                decoded = [self._decode_one(payloads[i], names[i]) for i in encoded]
            for i, image in zip(encoded, decoded, strict=True):
                images[i] = image
        return [self._refused_size(image, name) for image, name in zip(images, names, strict=True)]

    def _refused_size(self, image: torch.Tensor | str, name: str) -> torch.Tensor | str:
        """``image``, or why the eval preset refuses to resize it."""
        if self.size_bound is None or isinstance(image, str):
            return image
        try:
            self.size_bound.check(image.shape[-1], image.shape[-2], name)
        except ImageReadError as error:
            return error.reason
        return image

    def _decode_one(self, payload: torch.Tensor, name: str) -> torch.Tensor | str:
        try:
            return decode_jpegs([payload], self.device)[0]
        except RuntimeError:
            pass
        try:  # what the device cannot decode, the CPU path may (e.g. CMYK or progressive quirks)
            return host_to_device(pil_to_tensor(decode_image(payload.numpy().tobytes(), name)), self.device)
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
        return batch.contiguous(memory_format=self.memory_format), host_to_device(labels[order], self.device)


class DeviceDecodeLoader:
    """A :class:`~torch.utils.data.DataLoader` over :class:`EncodedImages` whose batches come out decoded and
    transformed on the device. Everything else (``sampler``, ``generator``, ``num_workers``)
    is the wrapped loader's, so epoch seeding and resuming work as with the CPU path; each
    pass seeds the augmentation from the sampler's seed, epoch and rank (a replayed epoch
    draws the same augmentation).

    ``prefetch`` (default: on CUDA devices, for a batched preset): prepare the next batch in a
    background thread, on its own CUDA stream, while the caller uses the current one. The
    batches and their order are the same either way: the thread is the only user of the
    loader's iterator and of the transform's generator while it runs (a preset run image by
    image draws from torch's global generator, shared with the training loop, so it is not
    prefetched by default).
    """

    def __init__(self, loader: DataLoader, transform: DeviceBatchTransform, prefetch: bool | None = None) -> None:
        self.loader = loader
        self.transform = transform
        if prefetch is None:
            prefetch = transform.device.type == "cuda" and transform.batched is not None
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self.loader.sampler
        self.transform.seed(getattr(sampler, "seed", 0), getattr(sampler, "epoch", 0), getattr(sampler, "rank", 0))
        if not self.prefetch:
            for payloads, labels, names in self.loader:
                yield self.transform(payloads, labels, names)
            return
        yield from _prefetched(iter(self.loader), self.transform)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _prefetched(batches: Iterator, transform: DeviceBatchTransform) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``transform`` of each of ``batches``, one batch ahead, in a thread (on a side CUDA stream on CUDA)."""
    device = transform.device
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def prepare_next() -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None] | None:
        item = next(batches, None)
        if item is None:
            return None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            images, labels = transform(*item)
        ready = None
        if stream is not None:
            ready = torch.cuda.Event()
            ready.record(stream)
        return images, labels, ready

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="effnet-device-decode") as pool:
        pending = pool.submit(prepare_next)
        while (prepared := pending.result()) is not None:
            pending = pool.submit(prepare_next)
            images, labels, ready = prepared
            if ready is not None:  # the consumer's stream waits for the batch; the allocator learns who uses it
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(ready)
                images.record_stream(consumer)
                labels.record_stream(consumer)
            yield images, labels


def device_decode_loader(dataset: ImageDataset, batch_size: int, train: bool, device: torch.device,
                         memory_format: torch.memory_format = torch.contiguous_format,
                         **options: Any) -> DeviceDecodeLoader:
    """:func:`~effnet.data.loaders.build_loader` over ``dataset``'s encoded images (``options``
    go to it), whose batches come out decoded and transformed with ``dataset.transform`` on
    ``device``."""
    loader = build_loader(EncodedImages(dataset), batch_size, train, collate_fn=collate_encoded, **options)
    return DeviceDecodeLoader(loader, DeviceBatchTransform(dataset.transform, device, memory_format))
