"""max |logit difference| between every peer checkpoint family and ours after conversion.

    python benchmarks/weights_parity.py [--families torchvision timm timm_tf lite lukemelas]
                                        [--variants 0 1 2] [--size 224] [--odd 231 257]

Each peer is built with random weights (BatchNorm statistics and biases randomized too),
converted through ``effnet.create_model(name, pretrained=peer.state_dict())`` and run in fp32
eval mode on scikit-image's cat photo (eval preprocessing at ``--size``) and on the photo
resized to the odd size ``--odd``. The tests assert the same within 1e-4
(tests/weights/test_convert.py); this prints the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402
from torch import nn  # noqa: E402

import effnet  # noqa: E402
from effnet.data.transforms import eval_transforms  # noqa: E402
from effnet.registry import Preprocessing  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.testing import randomize_statistics  # noqa: E402


def lukemelas(index: int) -> nn.Module:
    from efficientnet_pytorch import EfficientNet  # a test dependency (efficientnet-pytorch)

    model = EfficientNet.from_name(f"efficientnet-b{index}", image_size=None)  # dynamic TF 'SAME' padding
    model.set_swish(memory_efficient=False)
    return model


FAMILIES = {  # family: (variant indices, peer builder, our name, layout)
    "torchvision": (range(8), lambda i: getattr(torchvision.models, f"efficientnet_b{i}")(weights=None),
                    "efficientnet_b{}", "torchvision"),
    "timm": (range(8), lambda i: timm.create_model(f"efficientnet_b{i}"), "efficientnet_b{}", "timm"),
    "timm_tf": (range(9), lambda i: timm.create_model(f"tf_efficientnet_b{i}"), "efficientnet_b{}", "timm_tf"),
    "lite": (range(5), lambda i: timm.create_model(f"tf_efficientnet_lite{i}"), "efficientnet_lite{}", "timm_tf"),
    "lukemelas": (range(9), lukemelas, "efficientnet_b{}", "lukemelas"),
}


def photos(size: int, odd: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    image = Image.fromarray(data.chelsea())
    square = eval_transforms(Preprocessing(size))(image).unsqueeze(0)
    pixels = np.asarray(image.resize((odd[1], odd[0]), Image.BICUBIC)).astype(np.float32) / 255
    mean, std = np.array(Preprocessing(size).mean), np.array(Preprocessing(size).std)
    odd_image = torch.from_numpy(((pixels - mean) / std).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    return square, odd_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--variants", nargs="+", type=int, help="variant indices (default: all of each family)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--odd", nargs=2, type=int, default=(231, 257))
    args = parser.parse_args()
    square, odd = photos(args.size, tuple(args.odd))
    headers = ["family", "model", "padding", "bn_eps", f"max|diff| {args.size}px",
               f"max|diff| {args.odd[0]}x{args.odd[1]}", "s"]
    rows = []
    for family in args.families:
        indices, build, name_format, layout = FAMILIES[family]
        for index in indices:
            if args.variants is not None and index not in args.variants:
                continue
            start = time.perf_counter()
            peer = randomize_statistics(build(index))
            ours = effnet.create_model(name_format.format(index), pretrained=peer.state_dict(),
                                       pretrained_layout=layout).eval()
            with torch.no_grad():
                diffs = [(ours(x) - peer(x)).abs().max().item() for x in (square, odd)]
            rows.append([family, name_format.format(index), ours.config.padding, ours.config.bn_eps,
                         f"{diffs[0]:.2e}", f"{diffs[1]:.2e}", f"{time.perf_counter() - start:.1f}"])
            print(" ".join(str(v) for v in rows[-1]), flush=True)
    print()
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
