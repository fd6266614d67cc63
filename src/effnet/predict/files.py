"""The files ``effnet predict`` classifies: files, folders (recursively) and glob patterns, and
(for the Ray engine) lists of paths in a column of a CSV or Parquet file."""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.datasets import image_files_under
from ..data.images import IMAGE_EXTENSIONS, has_image_extension
from ..errors import ConfigError, InputFileError
from ..files import printable_path

_GLOB_CHARS = frozenset("*?[")
PATH_LIST_SUFFIXES = (".csv", ".parquet")
"""Files read as lists of inputs (one path or URI per row) rather than as images."""


@dataclass
class ImageList:
    """The files found for a list of paths, folders and globs, and the arguments that gave none."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def collect_images(paths: Iterable[str | Path], follow_links: bool = False) -> ImageList:
    """Expand files, folders (recursively, image extensions only, hidden files skipped) and glob
    patterns (``*``, ``?``, ``[...]``, ``**``; expanded here, for shells that do not) into a list
    of files in argument order, without duplicates.

    A file named explicitly is kept whatever its extension (it fails later if it is no image).
    A missing path, a folder without images and a pattern matching nothing are listed in
    ``problems`` as ``(argument, reason)``, and so are a folder that cannot be read and a link
    inside a folder that leads out of it (not followed unless ``follow_links``: a link to ``/``
    would classify every image on the machine).
    """
    found = ImageList()
    seen: set[Path] = set()
    extensions = ", ".join(IMAGE_EXTENSIONS)

    def unreadable(path: Path, reason: str) -> None:
        found.problems.append((printable_path(path), reason))

    def add(files: Iterable[Path]) -> None:
        for file in files:
            if file not in seen:
                seen.add(file)
                found.files.append(file)

    for argument in paths:
        text = str(argument)
        path = Path(text)
        if path.is_file() or (path.exists() and not path.is_dir()):
            add([path])  # a FIFO or a device is refused, unopened, when it is read
        elif path.is_dir():
            images = image_files_under(path, unreadable, follow_links=follow_links)
            if not images:
                found.problems.append((text, f"folder with no images (looked for {extensions}, in subfolders too)"))
            add(images)
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            images = []
            for match in map(Path, matches):
                if match.is_dir():
                    images += image_files_under(match, unreadable, follow_links=follow_links)
                elif has_image_extension(match):
                    images.append(match)
            if not images:
                reason = (f"matches no image files (looked for {extensions})" if matches
                          else "matches no files")
                found.problems.append((text, reason))
            add(images)
        else:
            found.problems.append((text, "no such file or folder"))
    return found


def is_path_list(argument: str | Path) -> bool:
    """Whether ``argument`` names a CSV or Parquet file (:data:`PATH_LIST_SUFFIXES`)."""
    return Path(argument).suffix.lower() in PATH_LIST_SUFFIXES


def read_path_list(path: str | Path, column: str = "path") -> list[str]:
    """The non-empty entries of ``column`` in a CSV file (with a header row) or a Parquet file:
    paths, or URIs that pyarrow's file systems open (``s3://``, ``gs://``, ``file://``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"list of inputs {printable_path(path)} does not exist")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        values = pq.read_table(path, columns=[column]).column(column).to_pylist() if column in names else None
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            names = list(reader.fieldnames or [])
            values = [row[column] for row in reader] if column in names else None
    if values is None:
        raise ConfigError(f"{printable_path(path)} has no column {column!r} (its columns: {', '.join(names) or 'none'}"
                          "): name the column of paths with --path-column")
    return [str(value).strip() for value in values if value is not None and str(value).strip()]
