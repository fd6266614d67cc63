"""Classify images with the model shipped in this folder (written by ``effnet ship``).

    python predict.py IMAGE_OR_FOLDER [...] [--top-k 5] [--format csv|json] [--batch-size 32]

Prints CSV (``path,rank,class_index,class_name,probability,error``, one row per image and rank,
plus ``label``, the old name of ``class_name``, kept for one release) or, with ``--format json``,
one JSON record per image (``schema_version``, ``path``, ``model``, ``top_k``, ``error``), the
same as ``effnet predict``. Needs only numpy, Pillow and the runtime named in ``manifest.json``
(onnxruntime, openvino, or torch for TorchScript), never effnet: ``effnet_portable.py`` beside
this script is effnet's own decoding and eval preprocessing, so the top-1 equals
``effnet predict``. A file that cannot be classified gets its error and the others go on (exit
code 1); a closed pipe (``| head``) ends the output quietly.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import effnet_portable as portable  # noqa: E402  (beside this script)


def image_files(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files named, and every image under the folders named (sorted, hidden entries skipped);
    and ``(argument, reason)`` for each argument that gave nothing."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and portable.has_image_extension(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            files += found
            if not found:
                problems.append((name, "folder with no images"))
        elif path.exists() or path.is_symlink():
            files.append(path)  # checked when read: a FIFO or a device is refused there
        else:
            problems.append((name, "no such file or folder"))
    return files, problems


def prepare(path: Path, preprocessing: dict) -> np.ndarray:
    """One file as the model's input, or :class:`~effnet_runtime.portable.ImageReadError`: a FIFO
    or a device is refused unopened, a header of too many pixels or an image too thin to resize
    before decoding (the rules of ``effnet predict``)."""
    return portable.preprocess(portable.load_image(path), preprocessing, name=str(path))


def classify(paths: list[Path], model: portable.ShippedModel, top_k: int = 1, batch_size: int = 32):
    """Yield one :func:`~effnet_runtime.portable.prediction_record` per path, in the order given."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        inputs, errors = [], {}
        for path in chunk:
            try:
                inputs.append(prepare(path, model.preprocessing))
            except portable.ImageReadError as error:
                errors[path] = error.reason
        probabilities = iter(portable.softmax(model(np.stack(inputs)))) if inputs else iter(())
        for path in chunk:
            if path in errors:
                yield portable.prediction_record(str(path), model.name, error=errors[path])
            else:
                ranked = portable.top_classes(next(probabilities), model.labels, top_k)
                yield portable.prediction_record(str(path), model.name, ranked)


def bounded(high: int):
    """An argparse type: a whole number from 1 to ``high``."""
    def parse(text: str) -> int:
        try:
            value = int(text) if text.strip().isascii() and len(text) <= 20 else 0
        except ValueError:
            value = 0
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number from 1 to {high:,}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with the model shipped beside this script.")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=bounded(1_000_000), default=1, help="classes per image (default 1)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    parser.add_argument("--batch-size", type=bounded(65_536), default=32)
    parser.add_argument("--threads", type=bounded(1_024), default=None,
                        help="CPU threads of the runtime (default: all)")
    args = parser.parse_args(argv)
    files, problems = image_files(args.paths)
    for name, reason in problems:
        print(f"predict.py: {name}: {reason}", file=sys.stderr)
    if not files:
        parser.error("no images found")
    model = portable.ShippedModel(HERE, args.threads)
    failed = 0
    try:
        if args.format == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow([*portable.CSV_COLUMNS, "label"])
        else:
            sys.stdout.write("[")
        for count, record in enumerate(classify(files, model, args.top_k, args.batch_size)):
            if record["error"] is not None:
                failed += 1
                print(f"predict.py: {record['path']}: {record['error']}", file=sys.stderr)
            if args.format == "csv":
                writer.writerows(row + [row[3]] for row in portable.csv_rows(record))
            else:
                sys.stdout.write(("," if count else "") + "\n  " + json.dumps(record))
        if args.format == "json":
            sys.stdout.write("\n]\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped (e.g. `| head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
