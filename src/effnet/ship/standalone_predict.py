"""Classify images with the model shipped in this folder (written by ``effnet ship``).

    python predict.py IMAGE_OR_FOLDER [...] [--top-k 5] [--batch-size 32]

Prints ``path,label,probability`` (CSV, the top-1 class) or, with ``--top-k N``, N ranked
``label:probability`` pairs per image. Needs only numpy, Pillow and the runtime named in
``manifest.json`` (onnxruntime, openvino, or torch for TorchScript), never effnet: the
preprocessing below repeats effnet's evaluation transform (decode to 8-bit RGB with EXIF
orientation and transparency on white, resize the short side to ``resolution / crop_pct``,
center-crop ``resolution``, scale to [0, 1], normalize), so the top-1 equals ``effnet predict``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16/32-bit and float greyscale scaled, transparency composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image).astype(np.float64) * (255.0 if mode == "F" else 255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def preprocess(image: Image.Image, settings: dict) -> np.ndarray:
    """One image as a float32 (3, H, W) array, exactly as effnet's evaluation transform makes it."""
    resolution = settings["resolution"]
    short_target = int(math.floor(resolution / settings["crop_pct"]))
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_target, int(short_target * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), resample=RESAMPLE[settings["interpolation"]])
    top = int(round((new_height - resolution) / 2.0))
    left = int(round((new_width - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(settings["mean"], dtype=np.float32)
    std = np.asarray(settings["std"], dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


class Model:
    """The network of a ship folder in its runtime: float32 (N, 3, H, W) in, logits out."""

    def __init__(self, folder: Path = HERE, threads: int | None = None) -> None:
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.labels = json.loads((folder / "labels.json").read_text())
        self.preprocessing = json.loads((folder / "preprocessing.json").read_text())
        path = folder / self.manifest["model_file"]
        runtime = self.manifest["runtime"]
        if runtime == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda batch: session.run(None, {name: batch})[0]
        elif runtime == "openvino":
            import openvino

            config = {"INFERENCE_PRECISION_HINT": self.manifest["inference_precision"]}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            request = openvino.Core().compile_model(str(path), "CPU", config).create_infer_request()
            self._run = lambda batch: request.infer({0: batch})[0].copy()
        elif runtime == "torchscript":
            import torch

            module = torch.jit.load(str(path), map_location="cpu").eval()

            def run(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return module(torch.from_numpy(batch)).float().numpy()

            self._run = run
        else:
            raise SystemExit(f"unknown runtime {runtime!r} in manifest.json")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and every image under the folders named (sorted, hidden entries skipped)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            files.append(path)
    return files


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classify(paths: list[Path], model: Model, top_k: int = 1,
             batch_size: int = 32) -> list[tuple[Path, list[tuple[str, float]]]]:
    """The ``top_k`` (label, probability) pairs of every image, in the order given."""
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = np.stack([preprocess(load_image(p), model.preprocessing) for p in chunk])
        probabilities = softmax(model(batch))
        for path, row in zip(chunk, probabilities, strict=True):
            ranked = np.argsort(-row, kind="stable")[:top_k]
            results.append((path, [(model.labels[i], float(row[i])) for i in ranked]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with the model shipped beside this script.")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=int, default=1, help="classes per image (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the runtime (default: all)")
    args = parser.parse_args(argv)
    files = image_files(args.paths)
    if not files:
        parser.error("no images found")
    model = Model(HERE, args.threads)
    print("path,label,probability" if args.top_k == 1 else "path,ranked")
    for path, ranked in classify(files, model, args.top_k, args.batch_size):
        if args.top_k == 1:
            print(f"{path},{ranked[0][0]},{ranked[0][1]:.6f}")
        else:
            print(f"{path}," + " ".join(f"{label}:{p:.6f}" for label, p in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
