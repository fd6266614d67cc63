"""Downloads into a local cache: hash-checked, resumable, and explicit about what to do offline.

Files go to ``$EFFNET_HOME/weights`` or, without ``EFFNET_HOME``, to the user cache directory
(``platformdirs.user_cache_dir("effnet")/weights``). A download is written to ``<name>.part``
and renamed only once complete and verified; an interrupted one resumes with an HTTP
``Range`` request (within the same call, and in a later call from the ``.part`` left behind).
A file whose hash differs from the published one is deleted with an explanation. Without a
network, the error names the file to fetch and the exact path to put it at.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..files import publish
from .errors import ChecksumError, WeightsUnavailableError

ENV_HOME = "EFFNET_HOME"
CHUNK_BYTES = 1 << 20
ATTEMPTS = 3
TIMEOUT_S = 30.0


def cache_home() -> Path:
    """effnet's cache folder: ``$EFFNET_HOME``, else the user cache folder of the platform."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("effnet"))


def cache_dir() -> Path:
    """Where downloaded weights are kept."""
    return cache_home() / "weights"


def url_filename(url: str) -> str:
    """A cache file name for ``url``: its last path component, prefixed by a short hash of the
    whole URL so that two hubs' ``model.safetensors`` never collide."""
    name = Path(unquote(urlparse(url).path)).name or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{name}"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None) -> None:
    """Check ``path`` against a published sha256 (full or a prefix of at least 8 digits, as in
    torchvision's file names) or md5; a mismatch raises :class:`~effnet.weights.errors.ChecksumError`."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if not expected:
            continue
        actual = file_digest(path, algorithm)
        if not actual.startswith(expected.lower()):
            raise ChecksumError(f"{path} has {algorithm} {actual}, but {expected} was published for it")


def _local_source(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return None


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append to ``part`` from its current size to the end of ``url``."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "effnet"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:
            return  # the part already holds everything: verification decides
        raise
    with response:
        if start and response.status != 206:
            start = 0  # the server ignored the range: start over
        total = response.headers.get("Content-Length")
        total = int(total) + start if total is not None else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5], leave=False)
        try:
            with open(part, "ab" if start else "wb") as handle:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download(url: str, sha256: str | None = None, md5: str | None = None, filename: str | None = None,
             directory: str | Path | None = None, progress: bool = True) -> Path:
    """The local path of ``url``'s file, downloading it into the cache when absent (a file
    already in the cache is used as it is).

    ``file://`` URLs are copied. A published ``sha256``/``md5`` is checked on every new
    download; a corrupt result is deleted and :class:`~effnet.weights.errors.ChecksumError` says so. Offline or
    unreachable, :class:`~effnet.weights.errors.WeightsUnavailableError` says which file to put where.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / (filename or url_filename(url))
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    local = _local_source(url)
    last_error: Exception | None = None
    for _ in range(ATTEMPTS if local is None else 1):
        try:
            if local is not None:
                shutil.copyfile(local, part)
            else:
                _fetch(url, part, progress)
            last_error = None
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as error:
            last_error = error
            if isinstance(error, urllib.error.HTTPError) and error.code < 500:
                break
    if last_error is not None:
        kept = f" ({part.stat().st_size} bytes kept in {part}; the next try resumes)" if part.exists() else ""
        raise WeightsUnavailableError(
            f"could not download {url}: {last_error}{kept}. If this machine is offline, fetch that file "
            f"elsewhere and put it at {target} (or set {ENV_HOME} to a directory whose weights/ folder "
            f"holds it){_published_hash(sha256, md5)}") from None
    try:
        verify(part, sha256, md5)
    except ChecksumError as error:
        part.unlink()
        raise ChecksumError(f"download of {url} is corrupt: {error}. The partial file was deleted; run again to "
                            "download it anew (if it keeps failing, the file changed upstream)") from None
    return publish(part, target)


def _published_hash(sha256: str | None, md5: str | None) -> str:
    if sha256:
        return f"; its sha256 starts with {sha256}"
    if md5:
        return f"; its md5 is {md5}"
    return ""
