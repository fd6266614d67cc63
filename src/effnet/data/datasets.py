"""Image classification datasets: class folders, CSV listings, train/val splits.

Bad files are dealt with before training: every file is checked when the dataset is built
(header and, for PNG, every chunk checksum; ``validate="full"`` decodes the pixels too).
Unusable files are left out, each reported by a warning on the ``effnet.data`` logger
that names it, and listed in ``dataset.skipped`` as ``(path, reason)``; ``strict=True``
turns them into a ``ValueError`` naming them. A file that only fails later, while
training, is replaced by the next readable sample, warned about once and added to
``skipped``: a long run does not stop for one bad picture. Those load-time failures are
shared with DataLoader worker processes through a shared-memory flag per sample, so the
main process sees them in ``skipped`` too.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, EffnetError, InputFileError
from ..files import input_file, printable_path
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageReadError, has_image_extension, load_image, verify_image

logger = logging.getLogger("effnet.data")

VALIDATION_LEVELS = ("none", "header", "full")
VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")
VAL_CSV_NAMES = tuple(f"{name}.csv" for name in VAL_FOLDER_NAMES)
MAX_CONSECUTIVE_LOAD_FAILURES = 32
LOAD_FAILURE_REASON = "could not be read while training (the reason is in the log)"
_FOLDER_LAYOUT = ("expected DATA/<class name>/<images> (one folder per class), or DATA/train/<class name>/... "
                  "with DATA/val/<class name>/..., or a CSV file with a 'path,label' header")


TRAINING_CLASSES = "training data"
"""Where the classes a folder must hold come from: a training split ..."""
MODEL_CLASSES = "model's classes"
"""... or the model it is evaluated with."""
_SAME_CLASSES_REMEDY = {
    TRAINING_CLASSES: "Every split needs the same class names",
    MODEL_CLASSES: "The folder needs one class folder per class of the model, named as the model names them "
                   "(a model trained on other classes is fine-tuned on yours first: effnet finetune)",
}


def _format_paths(paths: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" ... and {len(paths) - limit} more" if len(paths) > limit else "")


class ImageDataset(Dataset):
    """Labelled image files: ``dataset[i]`` is ``(transform(rgb_pil_image), class_index)``.

    ``samples`` are ``(path, class_index)`` pairs indexing into ``classes``. Files are checked
    on construction (``validate``: ``"none"``, ``"header"`` (default) or ``"full"``) and the
    bad ones go to ``skipped``. ``transform`` may be replaced at any time (progressive
    resizing); DataLoader workers that already hold a copy of the dataset (persistent
    workers) keep the old one until the loader is rebuilt.
    """

    def __init__(self, samples: Sequence[tuple[str | Path, int]], classes: Sequence[str],
                 transform: Callable[[Any], Any] | None = None, strict: bool = False, *,
                 validate: str = "header", max_pixels: int = DEFAULT_MAX_PIXELS,
                 skipped: Sequence[tuple[Path, str]] = ()) -> None:
        if validate not in VALIDATION_LEVELS:
            raise ConfigError(f"unknown validate={validate!r}; choose one of {VALIDATION_LEVELS}")
        self.classes = list(classes)
        self.transform = transform
        self.strict = strict
        self.max_pixels = max_pixels
        samples = [(Path(path), int(label)) for path, label in samples]
        for path, label in samples:
            if not 0 <= label < len(self.classes):
                raise ConfigError(f"{path}: label index {label} is outside the {len(self.classes)} classes")
        self._scan_skipped: list[tuple[Path, str]] = list(skipped)
        if validate != "none":
            samples = self._validated(samples, decode=validate == "full")
        if self._scan_skipped:
            logger.warning("skipped %d unusable file(s), kept %d images; they are listed in dataset.skipped",
                           len(self._scan_skipped), len(samples))
        self.samples: list[tuple[Path, int]] = samples
        self.targets: list[int] = [label for _, label in samples]
        self._load_failed = torch.zeros(len(samples), dtype=torch.uint8).share_memory_()
        self._load_reasons: dict[int, str] = {}

    def _validated(self, samples: list[tuple[Path, int]], decode: bool) -> list[tuple[Path, int]]:
        good, bad = [], []
        for path, label in samples:
            try:
                verify_image(path, self.max_pixels, decode=decode)
            except ImageReadError as error:
                bad.append((path, error.reason))
                continue
            good.append((path, label))
        if bad and self.strict:
            raise ConfigError(f"{len(bad)} unusable image file(s) (strict mode): "
                              + "; ".join(f"{path}: {reason}" for path, reason in bad[:10])
                              + (f" ... and {len(bad) - 10} more" if len(bad) > 10 else "")
                              + ". Remove or replace them, or run without strict to skip them.")
        for path, reason in bad:
            logger.warning("skipping %s: %s", path, reason)
        self._scan_skipped.extend(bad)
        return good

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        """Every file left out, as ``(path, reason)``: found bad when scanned or when loaded."""
        failed = torch.nonzero(self._load_failed).flatten().tolist()
        return self._scan_skipped + [(self.samples[i][0], self._load_reasons.get(i, LOAD_FAILURE_REASON))
                                     for i in failed]

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def class_counts(self) -> list[int]:
        """Number of samples per class, in ``classes`` order."""
        counts = Counter(self.targets)
        return [counts.get(index, 0) for index in range(len(self.classes))]

    def subset(self, indices: Sequence[int], skipped: Sequence[tuple[Path, str]] = ()) -> ImageDataset:
        """A dataset of some of these (already validated) samples, with the same classes and transform."""
        subset = ImageDataset([self.samples[i] for i in indices], self.classes, self.transform, self.strict,
                              validate="none", max_pixels=self.max_pixels)
        subset._scan_skipped = list(skipped)
        return subset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self._read(index, transformed=True)

    def load(self, index: int) -> tuple[Any, int]:
        """Sample ``index`` as ``(RGB PIL image, label)``, untransformed; an unreadable file is
        recorded in :attr:`skipped` and the next readable sample is returned in its place
        (in strict mode it is an error)."""
        return self._read(index, transformed=False)

    def _read(self, index: int, transformed: bool) -> tuple[Any, int]:
        """:meth:`load`, and with ``transformed`` the transform applied; a file the transform
        refuses (an image too thin to resize, see :class:`~effnet.data.transforms.BoundedResize`)
        is skipped like an unreadable one."""
        first_error = None
        for attempt in range(min(MAX_CONSECUTIVE_LOAD_FAILURES, len(self.samples))):
            current = (index + attempt) % len(self.samples)
            if self._load_failed[current]:
                continue
            path, label = self.samples[current]
            try:
                image = load_image(path, self.max_pixels)
                if transformed and self.transform is not None:
                    image = self.transform(image)
                return image, label
            except ImageReadError as error:
                error = ImageReadError(path, error.reason, error.kind)  # the transform does not know the path
                if self.strict:
                    raise ConfigError(f"unusable image file (strict mode): {error}") from None
                self._record_load_failure(current, error)
                first_error = first_error or error
        raise EffnetError(f"could not read any of the {MAX_CONSECUTIVE_LOAD_FAILURES} samples from index {index} "
                          f"on (first: {first_error}); is the data folder still reachable?")

    def _record_load_failure(self, index: int, error: ImageReadError) -> None:
        self._load_failed[index] = 1
        self._load_reasons[index] = error.reason
        logger.warning("skipping %s: %s; using another sample in its place", error.path, error.reason)


def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


FOLLOW_LINKS_HINT = "not followed; --follow-links (follow_links=True) follows links that leave the data folder"


def _inside(path: str | Path, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def outside_link_reason(path: Path, root: Path) -> str:
    """Why the link ``path`` is not followed: where it points, outside ``root``."""
    return (f"a link to {printable_path(os.path.realpath(path))}, outside {printable_path(root)}: "
            f"{FOLLOW_LINKS_HINT}")


def files_under(folder: Path, on_error: Callable[[Path, str], None] | None = None, *, root: Path | None = None,
                follow_links: bool = False) -> list[Path]:
    """Every non-hidden file under ``folder`` (any depth, links followed), in path order.

    Links are followed only where they stay inside ``root`` (by default ``folder``): a link to
    ``/`` inside a class folder would otherwise pull in every image on the machine. A link
    that leaves it is passed to ``on_error`` as ``(path, reason)`` and not followed, unless
    ``follow_links``. Each real folder is read once: a link back to a folder already read (a
    symbolic link loop, or two links to one folder) is not followed again. A folder that
    cannot be listed is passed to ``on_error`` too; by default each is logged as a warning.
    """
    found: list[Path] = []
    seen: set[str] = set()
    root = Path(root) if root is not None else folder
    real_root = os.path.realpath(root)
    report = on_error or (lambda path, reason: logger.warning("skipping %s: %s", path, reason))

    def unreadable(error: OSError) -> None:
        reason = "permission denied" if isinstance(error, PermissionError) else (error.strerror or str(error))
        report(Path(error.filename or folder), f"folder cannot be read: {reason}")

    def followed(path: Path) -> bool:
        if follow_links or not os.path.islink(path) or _inside(path, real_root):
            return True
        report(path, outside_link_reason(path, root))
        return False

    if not follow_links and not _inside(folder, real_root):
        report(folder, outside_link_reason(folder, root))
        return []
    for directory, subdirs, names in os.walk(folder, followlinks=True, onerror=unreadable):
        real = os.path.realpath(directory)
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and followed(Path(directory, d)))
        found.extend(path for path in (Path(directory, n) for n in names if not n.startswith(".")) if followed(path))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def image_files_under(folder: Path, on_error: Callable[[Path, str], None] | None = None, *,
                      follow_links: bool = False) -> list[Path]:
    """The files of :func:`files_under` (links followed within ``folder``) with an image extension."""
    return [path for path in files_under(folder, on_error, follow_links=follow_links) if has_image_extension(path)]


def scan_folder(root: str | Path, strict: bool = False, *, classes: Sequence[str] | None = None,
                transform: Callable[[Any], Any] | None = None, validate: str = "header",
                max_pixels: int = DEFAULT_MAX_PIXELS, classes_from: str = TRAINING_CLASSES,
                follow_links: bool = False, data_root: str | Path | None = None) -> ImageDataset:
    """Images under ``root/<class name>/`` (any depth), classes in sorted folder-name order.

    Extensions (any case): jpg, jpeg, png, bmp, gif, tif, tiff, webp. Hidden files and folders
    are ignored; other files are skipped with a warning. ``classes`` fixes the class list
    (for a validation folder that must match the training classes); ``classes_from`` says
    where that list comes from in the error when the folders differ (:data:`TRAINING_CLASSES`
    or :data:`MODEL_CLASSES`). Links are followed within ``data_root`` (default ``root``)
    only; those that leave it are skipped, each with a warning and in ``skipped``, unless
    ``follow_links`` (see :func:`files_under`).
    """
    root = Path(root)
    if not root.exists():
        raise InputFileError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; {_FOLDER_LAYOUT}")
    folders = _class_folders(root)
    if not folders:
        loose = [p.name for p in root.iterdir() if p.is_file() and has_image_extension(p)]
        hint = f"; found {len(loose)} images directly in it, move them into class folders" if loose else ""
        raise ConfigError(f"no class folders in {root}{hint}; {_FOLDER_LAYOUT}")
    names = [folder.name for folder in folders]
    if classes is not None:
        _check_same_classes(list(classes), names, classes_from, str(root))
        names = list(classes)
    samples, other_files, left_out = [], [], []
    link_root = Path(data_root) if data_root is not None else root
    for label, name in enumerate(names):
        files = files_under(root / name, lambda path, reason: left_out.append((path, reason)), root=link_root,
                            follow_links=follow_links)
        images = [path for path in files if has_image_extension(path)]
        other_files += [path for path in files if not has_image_extension(path)]
        if left_out and left_out[-1][0] == root / name:
            raise ConfigError(f"class folder {root / name} is {left_out[-1][1]}")
        if not images:
            raise ConfigError(f"class folder {root / name} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                              "add images or remove the folder")
        samples += [(path, label) for path in images]
    skipped = [(path, f"extension {path.suffix or '(none)'!r} is not an image type") for path in other_files]
    if skipped and strict:
        raise ConfigError(f"files that are not images in {root} (strict mode): {_format_paths(other_files)}; "
                          "remove them or run without strict")
    if skipped:
        logger.warning("skipping %d file(s) without an image extension (%s): %s", len(skipped),
                       ", ".join(IMAGE_EXTENSIONS), _format_paths(other_files, limit=20))
    for path, reason in left_out:
        logger.warning("skipping %s: %s", printable_path(path), reason)
    dataset = ImageDataset(samples, names, transform, strict, validate=validate, max_pixels=max_pixels,
                           skipped=left_out + skipped)
    _check_every_class_usable(dataset, str(root))
    return dataset


def _check_same_classes(expected: list[str], found: list[str], expected_from: str, where: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = ([f"missing {_format_paths(missing)}"] if missing else []) + (
            [f"not in the {expected_from}: {_format_paths(extra)}"] if extra else [])
        raise ConfigError(f"classes in {where} differ from the {expected_from} ({len(expected)} classes): "
                          f"{'; '.join(parts)}. {_same_classes_remedy(expected_from)}")


def _same_classes_remedy(expected_from: str) -> str:
    """What to do when a folder's classes differ: those of a model, or of a training split (named by its path)."""
    return _SAME_CLASSES_REMEDY[MODEL_CLASSES if expected_from == MODEL_CLASSES else TRAINING_CLASSES]


def _check_every_class_usable(dataset: ImageDataset, where: str) -> None:
    empty = [name for name, count in zip(dataset.classes, dataset.class_counts(), strict=True) if count == 0]
    if empty:
        raise ConfigError(f"no readable images left for class(es) {_format_paths(empty)} in {where} "
                          f"after skipping {len(dataset.skipped)} bad file(s); see the warnings above")


def read_csv(path: str | Path, root: str | Path | None = None, classes: Sequence[str] | None = None,
             strict: bool = False, *, transform: Callable[[Any], Any] | None = None, validate: str = "header",
             max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """Images listed in a CSV file with a ``path,label`` header (other columns are ignored).

    ``label`` is a class name. Relative paths are taken relative to ``root``, by default the
    CSV's folder. Classes are the sorted distinct labels unless ``classes`` is given, in which
    case every label must be one of them. Listed files that do not exist are skipped (an
    error in strict mode); rows without a path or label are an error.
    """
    path = input_file(path, "CSV listing")
    base = Path(root) if root is not None else path.parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            if "path" not in header or "label" not in header:
                raise ConfigError(f"{path}: the first line must be a header with 'path' and 'label' columns, "
                                  f"found {header or 'an empty file'}")
            reader.fieldnames = header
            rows = [(line, (row.get("path") or "").strip(), (row.get("label") or "").strip())
                    for line, row in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path} is not a readable CSV listing ({error}); save it as UTF-8 text with a "
                          "'path,label' header") from None
    incomplete = [line for line, file, label in rows if not file or not label]
    if incomplete:
        raise ConfigError(f"{path}: rows without a path or a label on line(s) {_format_paths(incomplete)}")
    if not rows:
        raise ConfigError(f"{path} lists no images; add 'path,label' rows")
    labels = sorted({label for _, _, label in rows})
    if classes is None:
        classes = labels
    else:
        classes = list(classes)
        unknown = [f"{label!r} (line {line})" for line, _, label in rows if label not in classes]
        if unknown:
            raise ConfigError(f"{path}: labels that are not among the {len(classes)} training classes: "
                              f"{_format_paths(unknown)}")
    index = {name: i for i, name in enumerate(classes)}
    samples, missing = [], []
    for _, file, label in rows:
        file_path = Path(file) if Path(file).is_absolute() else base / file
        (samples if file_path.exists() else missing).append((file_path, index[label]))  # others refused when read
    if missing and (strict or not samples):
        origin = "the root argument" if root is not None else "the CSV's folder; pass root= to change it"
        raise (ValueError if samples else FileNotFoundError)(
            f"{path}: {len(missing)} of {len(rows)} listed files do not exist, for example {missing[0][0]}; "
            f"relative paths are read from {base} ({origin})")
    skipped = [(file_path, "file not found (listed in the CSV)") for file_path, _ in missing]
    for file_path, reason in skipped:
        logger.warning("skipping %s: %s", file_path, reason)
    dataset = ImageDataset(samples, classes, transform, strict, validate=validate, max_pixels=max_pixels,
                           skipped=skipped)
    if not dataset.samples:
        raise ConfigError(f"{path}: none of the {len(rows)} listed files is a readable image; see the warnings above")
    return dataset


@dataclass
class DatasetSplits:
    """The training and validation datasets of one data source, sharing ``classes``."""

    train: ImageDataset
    val: ImageDataset
    classes: list[str]

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        return self.train.skipped + self.val.skipped


def stratified_split(targets: Sequence[int], val_split: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` holding out ``round(n * val_split)`` of each class's n samples.

    Every class with at least two samples keeps one in each part. The choice depends only on
    the targets' order, ``val_split`` and ``seed``.
    """
    if not 0 < val_split < 1:
        raise ConfigError(f"val_split must be between 0 and 1 (exclusive), got {val_split}")
    generator = torch.Generator().manual_seed(seed)
    targets_array = np.asarray(targets)
    train, val = [], []
    for label in sorted(set(targets_array.tolist())):
        members = np.flatnonzero(targets_array == label)
        order = members[torch.randperm(len(members), generator=generator).numpy()]
        count = min(max(round(len(members) * val_split), 1), len(members) - 1) if len(members) > 1 else 0
        val += order[:count].tolist()
        train += order[count:].tolist()
    return sorted(train), sorted(val)


def build_datasets(data: str | Path, val_split: float | None = None, seed: int = 0, strict: bool = False, *,
                   validate: str = "header", max_pixels: int = DEFAULT_MAX_PIXELS,
                   follow_links: bool = False) -> DatasetSplits:
    """Training and validation datasets from one of these layouts (checked before any training):

    - ``DATA/train/<class>/...`` with ``DATA/val/`` (or ``valid/``, ``validation/``, ``test/``);
    - ``DATA/<class>/...`` or ``DATA/train/<class>/...`` alone, split by ``val_split``
      (stratified per class, reproducible with ``seed``);
    - a CSV file ``path,label`` split by ``val_split``, or ``DATA/train.csv`` with
      ``DATA/val.csv`` (or ``valid.csv``, ``validation.csv``, ``test.csv``).

    Links in class folders are followed within ``data`` only, unless ``follow_links``.
    """
    data = Path(data)
    if not data.exists():
        raise InputFileError(f"data path {data} does not exist; {_FOLDER_LAYOUT}")
    options: dict[str, Any] = {"strict": strict, "validate": validate, "max_pixels": max_pixels}
    if not data.is_dir():
        input_file(data, "data path")  # a FIFO or a device is refused without being opened
        if data.suffix.lower() != ".csv":
            raise ConfigError(f"{data} is a file but not a .csv listing; {_FOLDER_LAYOUT}")
        return _split(read_csv(data, **options), val_split, seed, str(data))
    if (data / "train.csv").is_file():
        train = read_csv(data / "train.csv", **options)
        val_csv = next((data / name for name in VAL_CSV_NAMES if (data / name).is_file()), None)
        if val_csv is None:
            return _split(train, val_split, seed, str(data / "train.csv"))
        _refuse_split(val_split, val_csv)
        return DatasetSplits(train, read_csv(val_csv, classes=train.classes, **options), train.classes)
    folders = {**options, "follow_links": follow_links, "data_root": data}
    if (data / "train").is_dir():
        train = scan_folder(data / "train", **folders)
        val_dir = next((data / name for name in VAL_FOLDER_NAMES if (data / name).is_dir()), None)
        if val_dir is None:
            return _split(train, val_split, seed, str(data / "train"))
        _refuse_split(val_split, val_dir)
        val_classes = [folder.name for folder in _class_folders(val_dir)]
        _check_same_classes(train.classes, val_classes, f"training classes in {data / 'train'}", str(val_dir))
        return DatasetSplits(train, scan_folder(val_dir, classes=train.classes, **folders), train.classes)
    return _split(scan_folder(data, **folders), val_split, seed, str(data))


def _refuse_split(val_split: float | None, val_source: Path) -> None:
    if val_split is not None:
        raise ConfigError(f"{val_source} already holds the validation set; leave val_split unset "
                          "(no --val-split) or remove that split")


def _split(dataset: ImageDataset, val_split: float | None, seed: int, where: str) -> DatasetSplits:
    if val_split is None:
        raise ConfigError(f"{where} has no separate validation set: pass val_split (--val-split, e.g. 0.1) to hold "
                          "out a fraction of each class, or add a val/ folder (val.csv) beside train/ (train.csv)")
    train_indices, val_indices = stratified_split(dataset.targets, val_split, seed)
    if not val_indices:
        raise ConfigError(f"val_split={val_split} leaves no validation images in {where}: "
                          "every class has a single image; add images")
    train = dataset.subset(train_indices, skipped=dataset.skipped)
    return DatasetSplits(train, dataset.subset(val_indices), dataset.classes)
