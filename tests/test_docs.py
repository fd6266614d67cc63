"""The documentation: the Sphinx site builds without a single warning (a broken link, a page
left out of the table of contents, or a docstring reference to a name that no longer exists
fails here), and the README stays a short entry point whose links land."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _slug(heading: str) -> str:
    """The anchor GitHub (and MyST's heading anchors) give a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_is_short_and_its_links_land() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "the README is the entry point: details belong in docs/"
    assert "./run.sh demo" in text.splitlines()[5] and "./run.sh test" in text.splitlines()[6]
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" in link:
            continue
        path, _, anchor = link.partition("#")
        page = (ROOT / path) if path else README
        assert page.exists(), f"README links to {link}, which does not exist"
        if anchor:
            assert anchor in _anchors(page), f"README links to {link}: no such heading in {page.name}"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    for module in ("sphinx", "furo", "myst_parser"):
        pytest.importorskip(module, reason="pip install -e '.[docs]'")
    # A copy, so that the generated API pages never land in the checkout; this checkout's packages.
    source = shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("api", "_build"))
    sources = [str(ROOT / "src"), str(ROOT / "packages" / "effnet-runtime" / "src"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sources))}
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html",
                             "-d", str(tmp_path / "doctrees"), str(source), str(tmp_path / "html")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api" / "effnet.html").is_file()
