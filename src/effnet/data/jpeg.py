"""JPEG files decoded in batches on the CPU or a CUDA device (nvJPEG), oriented as displayed.

The decoder is TorchCodec's ``decode_jpeg`` when TorchCodec is installed (``pip install
effnet[gpu]``), else torchvision's (deprecated since torchvision 0.29 in TorchCodec's favour;
the same nvJPEG batch decode). The EXIF orientation is applied (TorchCodec does it; with
torchvision, whose CUDA decoder ignores it, it is read here from the file's bytes), so a phone
photo comes out as :func:`effnet.data.images.load_image` gives it on the CPU path.

On CUDA the decoder runs on a stream of this module's, which the caller's stream then waits
for: torchvision's decoder writes the images (memory from the current stream's pool) from a
stream of its own without waiting for the current stream's queued work, which may still be
using that memory, and TorchCodec's blocks the host until the current stream has run all it
has queued (the training step, when called from the training loop).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

JPEG_MAGIC = b"\xff\xd8\xff"

Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@functools.cache
def _decoder() -> tuple[str, Decoder]:
    try:
        from torchcodec.decoders import decode_jpeg as torchcodec_decode
    except Exception:  # noqa: BLE001 - not installed, or built for another torch: torchvision's then
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as torchvision_decode

        def decode_with_torchvision(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
            with warnings.catch_warnings():  # its deprecation notice would come with every batch
                warnings.simplefilter("ignore", DeprecationWarning)
                images = torchvision_decode(payloads, mode=ImageReadMode.RGB, device=device)
            # oriented here on every device, so that the CPU tests run the CUDA path's code
            return [orient(image, exif_orientation(payload)) for image, payload in zip(images, payloads, strict=True)]
        return "torchvision", decode_with_torchvision

    def decode_with_torchcodec(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return torchcodec_decode(payloads, mode="RGB", device=device)  # applies the EXIF orientation
    return "torchcodec", decode_with_torchcodec


def decoder_name() -> str:
    """Which library decodes: ``"torchcodec"`` or ``"torchvision"``."""
    return _decoder()[0]


def exif_orientation(data: torch.Tensor) -> int:
    """The EXIF orientation tag (1-8) of a JPEG file (a 1-D uint8 CPU tensor of its bytes); 1
    when it has none or it cannot be read."""
    view = memoryview(data.numpy())
    position = 2
    while position + 4 <= len(view) and view[position] == 0xFF:
        marker = view[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata follows
            break
        length = int.from_bytes(view[position + 2:position + 4], "big")
        if marker == 0xE1 and view[position + 4:position + 10] == b"Exif\0\0":
            return _tiff_orientation(view[position + 10:position + 2 + length])
        position += 2 + length
    return 1


def _tiff_orientation(tiff: memoryview) -> int:
    """The orientation entry of an EXIF block's first IFD."""
    order = {b"II": "little", b"MM": "big"}.get(bytes(tiff[:2]))
    if order is None:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    entries = int.from_bytes(tiff[ifd:ifd + 2], order)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * entries, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            value = int.from_bytes(tiff[entry + 8:entry + 10], order)  # a SHORT, first in the value field
            return value if 1 <= value <= 8 else 1
    return 1


_TURNS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda image: image.flip(-1),
    3: lambda image: image.flip(-2, -1),
    4: lambda image: image.flip(-2),
    5: lambda image: image.transpose(-2, -1).contiguous(),
    6: lambda image: image.transpose(-2, -1).flip(-1),
    7: lambda image: image.transpose(-2, -1).flip(-2, -1),
    8: lambda image: image.transpose(-2, -1).flip(-2),
}


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A ``CxHxW`` image as displayed, given its EXIF ``orientation`` (PIL's ``exif_transpose``)."""
    turn = _TURNS.get(orientation)
    return image if turn is None else turn(image)


@functools.cache
def _decode_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(torch.device("cuda", index))


def decode_jpegs(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode 1-D uint8 CPU tensors holding JPEG files to uint8 RGB ``CxHxW`` images on
    ``device``, oriented by their EXIF tags, all in one call (one nvJPEG batch on CUDA).
    Raises ``RuntimeError`` when any of them fails: decode them one by one to find which."""
    decode = _decoder()[1]
    if device.type != "cuda":
        return list(decode(payloads, device))
    consumer = torch.cuda.current_stream(device)
    stream = _decode_stream(consumer.device.index)
    # The images are allocated on this stream: what its pool hands out must be idle (the
    # stream comes from torch's pool and may be shared: wait for whatever it has queued).
    stream.synchronize()
    with torch.cuda.stream(stream):
        images = list(decode(payloads, device))
    consumer.wait_stream(stream)
    for image in images:  # freed images go back to the pool once the caller's work on them is done
        image.record_stream(consumer)
    return images
