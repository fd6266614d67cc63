"""End to end from JPEG files: does the input path keep the GPU fed?

    PYTHONPATH=src python3 benchmarks/gpu_input.py [--out gpu_input.json] [--images 20000] [--steps 60]
    python3 benchmarks/gpu_input.py --smoke        # tiny, on the CPU, a minute
    PYTHONPATH=src python3 benchmarks/gpu_input.py --augment [--batch 64] [--steps 10]

Writes a folder of realistic JPEGs (random crops of 350-500 px cut from scikit-image's photos,
quality 90, 10 classes), then trains B0 at 224 px, bf16 autocast, channels_last, SGD, batch 256
for a fixed number of steps, feeding it four ways in the same run:

- ``model_alone``: tensors already on the GPU (the ceiling);
- ``cpu_decode``: effnet's CPU path (PIL decode + the v2 preset in every core's loader worker);
- ``gpu_decode``: effnet's ``data.decode=gpu`` (workers read bytes; batched decode_jpeg and the
  preset on the GPU);
- ``timm_loader``: ``timm.data.create_loader`` on the same folder (its prefetcher normalizes on
  the GPU), with as many workers.

Each prints images/s (after warm-up steps); the ratios ``gpu_decode / model_alone`` (aim >= 0.9)
and ``gpu_decode / timm_loader`` (aim >= 2) are measured in this one run. The CPU's vector
extensions are printed beside the figures.

``--augment`` times the training preset alone (RandAugment, on decoded photos already on the
device, GPU if there is one): the batched form (:mod:`effnet.data.batch_augment`) against the
v2 preset applied image by image, ms per batch and the ratio; once on 350-500 px photos to
``--size``, once on 20-28 px ones to 16 px, where the time is the per-call overhead that
bounds the per-image loop on a GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as photos  # noqa: E402

import effnet  # noqa: E402
from effnet.data.batch_augment import batch_preset  # noqa: E402
from effnet.data.datasets import scan_folder  # noqa: E402
from effnet.data.device_decode import device_decode_loader  # noqa: E402
from effnet.data.loaders import build_loader  # noqa: E402
from effnet.data.transforms import train_transforms  # noqa: E402
from effnet.device import autocast_context  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
CLASSES = 10


def write_jpegs(folder: Path, count: int, sizes: tuple[int, int], seed: int = 0, processes: int = 0) -> Path:
    """``count`` JPEGs (quality 90) in ``CLASSES`` class folders, each a random crop of a photo
    resized to a random side in ``sizes``; written by ``processes`` processes (default: every core)."""
    processes = processes or os.cpu_count() or 1
    shares = [(folder, range(start, count, processes), sizes, seed + start) for start in range(processes)]
    if processes == 1:
        _write_share(*shares[0])
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.starmap(_write_share, shares)
    return folder


def _write_share(folder: Path, indices: range, sizes: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    sources = [getattr(photos, name)() for name in PHOTOS]
    for index in indices:
        source = sources[index % len(sources)]
        height, width = source.shape[:2]
        side = int(rng.integers(min(height, width) // 2, min(height, width)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(source[top:top + side, left:left + side]).convert("RGB")
        target = int(rng.integers(*sizes))
        aspect = rng.uniform(0.75, 1.33)
        crop = crop.resize((target, max(1, int(target / aspect))), Image.BILINEAR)
        out = folder / f"class_{index % CLASSES}" / f"{index:06d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        crop.save(out, quality=90)


def repeat(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def time_training(batches: Iterator, steps: int, warmup: int, device: torch.device, batch: int) -> float:
    """Images/s of B0 training steps fed from ``batches`` (pairs of images and labels)."""
    model = effnet.create_model("efficientnet_b0", num_classes=CLASSES).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast_context(device, "bf16"):
            loss = F.cross_entropy(model(images).float(), labels.to(device, non_blocking=True))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return steps * batch / timed(step, steps, warmup, device)


def timed(run: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``run`` after ``warmup`` untimed ones, synchronized on CUDA."""
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def feeds(folder: Path, device: torch.device, size: int, batch: int, workers: int) -> dict[str, Iterator]:
    """The four ways of feeding the model, each an endless iterator of (images, labels)."""
    preprocessing = effnet.create_model("efficientnet_b0").preprocessing
    options = {"resolution": size, "auto_augment": "randaugment", "color_jitter": None}
    dataset = scan_folder(folder, transform=train_transforms(preprocessing, **options))
    cpu = build_loader(dataset, batch, train=True, num_workers=workers)
    tensors = scan_folder(folder, transform=train_transforms(preprocessing, **options, for_tensors=True))
    gpu = device_decode_loader(tensors, batch, True, device, torch.channels_last, num_workers=workers)
    fixed = (torch.randn(batch, 3, size, size, device=device), torch.randint(0, CLASSES, (batch,), device=device))
    result = {"model_alone": repeat([fixed]), "cpu_decode": repeat(cpu), "gpu_decode": repeat(gpu)}
    try:
        from timm.data import create_dataset, create_loader
    except ImportError:
        return result
    timm_set = create_dataset("", root=str(folder), is_training=True)
    timm_loader = create_loader(timm_set, input_size=(3, size, size), batch_size=batch, is_training=True,
                                auto_augment="rand-m9-mstd0.5", num_workers=workers, device=device,
                                use_prefetcher=device.type == "cuda", pin_memory=device.type == "cuda",
                                mean=preprocessing.mean, std=preprocessing.std)
    result["timm_loader"] = repeat(timm_loader)
    return result


def measure(folder: Path, device: torch.device, size: int = 224, batch: int = 256, workers: int = 0,
            steps: int = 60, warmup: int = 10) -> tuple[dict[str, float], dict[str, float]]:
    """Images/s of each feed on the JPEGs under ``folder``, and the ratios the issue names."""
    workers = workers or os.cpu_count() or 1
    rates = {name: time_training(batches, steps, warmup, device, batch)
             for name, batches in feeds(folder, device, size, batch, workers).items()}
    ratios = {"gpu_decode/model_alone": rates["gpu_decode"] / rates["model_alone"],
              "gpu_decode/cpu_decode": rates["gpu_decode"] / rates["cpu_decode"]}
    if "timm_loader" in rates:
        ratios["gpu_decode/timm_loader"] = rates["gpu_decode"] / rates["timm_loader"]
    return rates, ratios


def time_augment(device: torch.device, batch: int, size: int, steps: int, warmup: int = 2,
                 sides: tuple[int, int] = (350, 500)) -> dict[str, float]:
    """Milliseconds per batch of the RandAugment training preset to ``size`` on decoded photos
    with sides in ``sides`` on ``device``: batched (``batched_ms``) and image by image with the
    v2 preset (``per_image_ms``)."""
    rng = np.random.default_rng(0)
    sources = [torch.from_numpy(np.ascontiguousarray(getattr(photos, name)())) for name in PHOTOS[:4]]
    images = []
    for index in range(batch):
        source = sources[index % len(sources)].permute(2, 0, 1)[None].float()
        height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        images.append(F.interpolate(source, size=(height, width), mode="bilinear")[0].round().to(torch.uint8)
                      .to(device))
    preprocessing = effnet.create_model("efficientnet_b0").preprocessing
    preset = train_transforms(preprocessing, resolution=size, auto_augment="randaugment", for_tensors=True)
    batched = batch_preset(preset)
    generator = torch.Generator().manual_seed(0)  # the batched preset draws on the host, whatever the device
    ways = {"batched_ms": lambda: batched(images, generator),
            "per_image_ms": lambda: torch.stack([preset(image) for image in images])}
    result = {name: 1000 * timed(run, steps, warmup, device) / steps for name, run in ways.items()}
    result["speedup"] = result["per_image_ms"] / result["batched_ms"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_input.json")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--folder", help="reuse a folder of JPEGs (default: a new temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--augment", action="store_true", help="time the training preset alone, batched vs per image")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.images, args.steps, args.warmup, args.batch, args.size, args.workers = 40, 2, 1, 8, 32, 1
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.augment:
        timings = {"photos": time_augment(device, args.batch, args.size, args.steps, args.warmup),
                   "overhead": time_augment(device, args.batch, 16, args.steps, args.warmup, sides=(20, 28))}
        for name, timing in timings.items():
            print(f"RandAugment preset, {name}, batch {args.batch} on {device}: batched {timing['batched_ms']:.1f} ms, "
                  f"per image {timing['per_image_ms']:.1f} ms ({timing['speedup']:.1f}x)")
        Path(args.out).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                              "batch": args.batch, "size": args.size, "augment": timings}, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="effnet-jpegs-") as scratch:
        folder = Path(args.folder) if args.folder else write_jpegs(
            Path(scratch), args.images, (350, 500) if not args.smoke else (40, 64), processes=args.workers)
        rates, ratios = measure(folder, device, args.size, args.batch, args.workers, args.steps, args.warmup)
    environment = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
                   "workers": args.workers, "torch": torch.__version__, "images": args.images, "steps": args.steps,
                   "batch": args.batch, "size": args.size}
    print(f"B0 training @{args.size}px, batch {args.batch}, bf16, channels_last on {environment['device']} "
          f"(CPU {environment['cpu_capability']}, {args.workers} workers)")
    for name, rate in rates.items():
        print(f"  {name:<12} {rate:10.1f} img/s")
    for name, ratio in ratios.items():
        print(f"  {name:<24} {ratio:6.2f}x")
    Path(args.out).write_text(json.dumps({"environment": environment, "img_s": rates, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
