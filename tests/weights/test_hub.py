"""Downloads, against local files only: file:// URLs and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from effnet.weights import ChecksumError, WeightsUnavailableError, cache_dir, download
from effnet.weights.hub import url_filename

CONTENT = bytes(range(256)) * 4096  # 1 MiB
SHA256 = hashlib.sha256(CONTENT).hexdigest()


class Server:
    """Serves CONTENT with Range support; can cut the body of its first responses short."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.cut_first = 0
        self.content = CONTENT

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(dict(self.headers))
                body, status = server.content, 200
                requested = self.headers.get("Range")
                if requested:
                    start = int(requested.split("=")[1].rstrip("-"))
                    body, status = server.content[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first > 0:
                    server.cut_first -= 1
                    body = body[: len(body) // 3]
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    state = Server()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}/weights/tf_efficientnet_b0.pth"
    httpd.shutdown()
    httpd.server_close()


def test_file_url_is_copied_checked_and_cached(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(CONTENT)
    cache = tmp_path / "cache"
    path = download(source.as_uri(), sha256=SHA256[:8], directory=cache, progress=False)
    assert path.read_bytes() == CONTENT and path.parent == cache
    source.unlink()
    assert download(source.as_uri(), sha256=SHA256, directory=cache, progress=False) == path


def test_interrupted_download_resumes_with_a_range_request(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    state.cut_first = 1
    path = download(url, sha256=SHA256, directory=tmp_path, progress=False)
    assert path.read_bytes() == CONTENT
    assert len(state.requests) == 2
    assert state.requests[1]["Range"] == f"bytes={len(CONTENT) // 3}-"


def test_partial_file_from_an_earlier_run_is_resumed(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    part = tmp_path / (url_filename(url) + ".part")
    part.write_bytes(CONTENT[:1000])
    path = download(url, sha256=SHA256, directory=tmp_path, progress=False)
    assert path.read_bytes() == CONTENT and not part.exists()
    assert [r.get("Range") for r in state.requests] == ["bytes=1000-"]


def test_hash_mismatch_deletes_the_partial_and_explains(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    state.content = CONTENT[:-1] + b"X"
    with pytest.raises(ChecksumError, match=r"corrupt: .* has sha256 [0-9a-f]{64}, but deadbeef was published.*"
                                            r"partial file was deleted"):
        download(url, sha256="deadbeef", directory=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_error_names_the_file_and_where_to_put_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/efficientnet_b0_rwightman-7f5810bc.pth"
    with pytest.raises(WeightsUnavailableError) as raised:
        download(url, sha256="7f5810bc", filename="efficientnet_b0_rwightman-7f5810bc.pth", directory=tmp_path,
                 progress=False)
    message = str(raised.value)
    assert url in message and str(tmp_path / "efficientnet_b0_rwightman-7f5810bc.pth") in message
    assert "EFFNET_HOME" in message and "7f5810bc" in message


def test_cache_dir_follows_effnet_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "weights"
    monkeypatch.delenv("EFFNET_HOME")
    assert cache_dir().name == "weights" and "effnet" in str(cache_dir())


def test_registry_tag_offline_says_which_file_to_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import effnet

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"download\.pytorch\.org/models/efficientnet_b0_rwightman-"
                                                      r"7f5810bc\.pth: .*put it at .*weights/efficientnet_b0_"
                                                      r"rwightman-7f5810bc\.pth"):
        effnet.create_model("efficientnet_b0", pretrained="torchvision")
