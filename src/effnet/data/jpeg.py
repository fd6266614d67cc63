"""JPEG files decoded in batches on the CPU or a CUDA device (nvJPEG), oriented as displayed.

The decoder is TorchCodec's ``decode_jpeg`` when TorchCodec is installed (``pip install
effnet[gpu]``), else torchvision's (deprecated since torchvision 0.29 in TorchCodec's favour;
the same nvJPEG batch decode). Both apply the EXIF orientation, so a phone photo comes out as
:func:`effnet.data.images.load_image` gives it on the CPU path.
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
                return torchvision_decode(payloads, mode=ImageReadMode.RGB, device=device,
                                          apply_exif_orientation=True)
        return "torchvision", decode_with_torchvision

    def decode_with_torchcodec(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return torchcodec_decode(payloads, mode="RGB", device=device)  # applies the EXIF orientation
    return "torchcodec", decode_with_torchcodec


def decoder_name() -> str:
    """Which library decodes: ``"torchcodec"`` or ``"torchvision"``."""
    return _decoder()[0]


def decode_jpegs(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode 1-D uint8 CPU tensors holding JPEG files to uint8 RGB ``CxHxW`` images on
    ``device``, oriented by their EXIF tags, all in one call (one nvJPEG batch on CUDA).
    Raises ``RuntimeError`` when any of them fails: decode them one by one to find which."""
    return list(_decoder()[1](payloads, device))
