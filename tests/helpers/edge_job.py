"""The conversions of tests/deploy/test_edge.py, run in the edge venv (the converters' own
environment, see run.sh): ``python edge_job.py ROOT`` with ``ROOT`` holding ``calib/``,
``eval/`` and ``odd/`` image folders.

Ships a tiny Lite0 to the four edge targets and a tiny B0 to tflite-int8 with ``effnet ship``,
saves for each folder the logits of the shipped model (in its runtime, through effnet's
preprocessing) and of eager PyTorch on the eval and odd images (``ROOT/<target>.npz``), and
tries to ship a network with an activation XNNPACK lacks (``ROOT/refusal.json``), and runs
``effnet pick`` with edge candidates (``ROOT/pick/pick.csv``).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import effnet
from effnet.cli import main
from effnet.data.transforms import eval_transforms
from effnet.layers import ACTIVATIONS
from effnet.weights.io import save_model
from effnet_runtime import portable
from helpers.deploy import RESOLUTION, tiny_model

CLASSES = ["0", "1", "2"]
LITE_TARGETS = ("executorch", "executorch-int8", "tflite", "tflite-int8")
MAX_DROP = "10"  # points: one image of the 12 may flip
GATE = ("--max-drop", MAX_DROP, "--min-agreement", "90",  # one answer of the 12 may change
        "--min-top1", "0")  # the tiny network is untrained: at chance level


def images(root: Path) -> list[Path]:
    return sorted(p for folder in ("eval", "odd") for p in (root / folder).rglob("*") if p.is_file())


def ship(root: Path, checkpoint: Path, target: str, out: Path) -> int:
    return main(["ship", "--checkpoint", str(checkpoint), "--target", target, "--calib", str(root / "calib"),
                 "--eval", str(root / "eval"), "--out", str(out), *GATE, "--no-speed",
                 "--threads", "1"])


def record_logits(root: Path, model: effnet.EfficientNet, folder: Path) -> None:
    transform = eval_transforms(model.preprocessing)
    batch = torch.stack([transform(portable.load_image(p)) for p in images(root)])
    with torch.inference_mode():
        eager = model.eval()(batch).numpy()
    shipped = portable.ShippedModel(folder, threads=1)(batch.numpy())
    np.savez(root / f"{folder.name}.npz", eager=eager, shipped=shipped,
             files=np.array([str(p) for p in images(root)]))


def refusal(root: Path) -> None:
    ACTIVATIONS.setdefault("mish", nn.Mish)  # in this process only: XNNPACK has no Mish
    model = effnet.create_model("efficientnet_lite0", num_classes=3, width=0.25, depth=0.25, resolution=RESOLUTION,
                                activation="mish")
    model.describe(class_names=CLASSES)
    checkpoint = save_model(model, root / "mish.safetensors")
    out = root / "mish-executorch"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = ship(root, checkpoint, "executorch", out)
    (root / "refusal.json").write_text(json.dumps({"code": code, "stderr": errors.getvalue(),
                                                   "written": out.exists()}))


def run(root: Path) -> None:
    torch.manual_seed(0)
    for name, targets in (("efficientnet_lite0", LITE_TARGETS), ("efficientnet_b0", ("tflite-int8",))):
        model = tiny_model(name=name)
        model.describe(class_names=CLASSES)
        checkpoint = save_model(model, root / f"{name}.safetensors")
        for target in targets:
            out = root / f"{name}-{target}"
            if ship(root, checkpoint, target, out) != 0:
                raise SystemExit(f"shipping {name} to {target} failed")
            record_logits(root, model, out)
    refusal(root)
    pick_edge(root)


def pick_edge(root: Path) -> None:
    """``effnet pick`` with an edge candidate beside ONNX Runtime, on the tiny Lite0 checkpoint."""
    code = main(["pick", "--checkpoint", str(root / "efficientnet_lite0.safetensors"), "--eval", str(root / "eval"),
                 "--calib", str(root / "calib"), "--runtimes", "onnxruntime,executorch",
                 "--max-latency-ratio", "1000", "--max-seconds", "1", "--threads", "1",
                 "--cache-dir", str(root / "pick-cache"), "--out", str(root / "pick")])
    if code != 0:
        raise SystemExit("effnet pick failed")


if __name__ == "__main__":
    run(Path(sys.argv[1]))
