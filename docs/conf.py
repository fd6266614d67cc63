"""Sphinx configuration for effnet's documentation.

Build (``tests/test_docs.py`` runs the same): ``python -m sphinx -W -n --keep-going -b html docs build/docs``.
The API reference, ``api/``, is written at the start of every build from the packages as they
are (one page per module, found by walking ``effnet`` and ``effnet_runtime``), so it follows
modules as they move; it is not committed.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import shutil
import sys
from pathlib import Path

from sphinx.ext.autodoc.mock import mock

HERE = Path(__file__).resolve().parent
# Document this checkout's packages, installed or not: effnet and its torch-free runtime.
for source in (HERE.parent / "packages" / "effnet-runtime" / "src", HERE.parent / "src"):
    if source.is_dir():
        sys.path.insert(0, str(source))
PACKAGES = ("effnet", "effnet_runtime")

project = "effnet"
author = "effnet contributors"
copyright = "effnet contributors, Apache-2.0"

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "effnet"
myst_heading_anchors = 3

# Every object is documented once, in the module that defines it; a package's page links the
# names it re-exports (its ``__all__``) to there.
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # torch.nn.Module's docstrings are not effnet's to document

# The serve and grpc extras are imported at module level by effnet_runtime.serve, the ray extra
# by effnet.predict's Ray engine: mocked where they are not installed. The other optional
# runtimes (onnxruntime, openvino, torchao, triton, ...) are imported inside functions, and must
# not be mocked: torch itself probes for some of them.
SERVE_EXTRA = ("starlette", "uvicorn", "prometheus_client", "multipart", "grpc", "tritonclient", "google")
RAY_EXTRA = ("ray", "pyarrow")
autodoc_mock_imports = [name for name in (*SERVE_EXTRA, *RAY_EXTRA) if importlib.util.find_spec(name) is None]
# A shipped folder's predict.py (effnet.ship.standalone_predict) imports the copy of
# effnet_runtime.portable that lies beside it as effnet_portable: here, the original.
sys.modules.setdefault("effnet_portable", importlib.import_module("effnet_runtime.portable"))

# The build runs offline (no intersphinx), so names from other packages cannot be linked:
# references into the standard library and the packages effnet builds on are not warned about.
# Our own names never are: a reference to one that does not exist fails the build.
EXTERNAL = sorted(set(sys.stdlib_module_names) | {
    "torch", "torchvision", "numpy", "PIL", "safetensors", "yaml", "tqdm", "matplotlib", "platformdirs",
    *SERVE_EXTRA, *RAY_EXTRA, "onnx", "onnxruntime", "onnxscript", "openvino", "torchao", "h5py", "torchcodec",
    "timm", "triton", "grpc_service_pb2"})  # grpc_service_pb2: tritonclient's generated gRPC messages
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(EXTERNAL)})(\..+)?")]
# pathlib.Path as written: a signature whose hints cannot be evaluated (one of them imported
# only under TYPE_CHECKING) keeps the annotations' text.
nitpick_ignore = [("py:class", "Path")]


# --- the API reference -------------------------------------------------------------------------

def _public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def _modules() -> dict[str, list[str]]:
    """Every public module of our packages -> its public direct submodules (packages are imported
    to look inside)."""
    names = []
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names += [package] + [info.name for info in pkgutil.walk_packages(path, f"{package}.") if _public(info.name)]
    return {name: [sub for sub in names if sub.rpartition(".")[0] == name] for name in names}


def _reexports(module: object) -> dict[str, str]:
    """A package's ``__all__`` -> where each name is documented: in the module that defines it, or
    on the package's own page when that module is private (``effnet.kernels._triton``)."""
    from sphinx.pycode import ModuleAnalyzer

    found = {}
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name)
        owner, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
        if isinstance(owner, str) and isinstance(qualname, str):
            if owner.partition(".")[0] in PACKAGES:
                found[name] = f"{owner}.{qualname}" if _public(owner) else f"{module.__name__}.{name}"
            continue
        # A constant has no __module__: the submodule that documents it (a docstring after it).
        for modname, candidate in sorted(sys.modules.items()):
            if modname.startswith(f"{module.__name__}.") and getattr(candidate, name, None) is value:
                if ("", name) in ModuleAnalyzer.for_module(modname).find_attr_docs():
                    found[name] = f"{modname}.{name}"
                    break
    return found


def _summary(module: object) -> str:
    """The first sentence of a module's docstring, its references shown as code (they would be
    resolved against the wrong module on the parent's page)."""
    text = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
    text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return re.sub(r":[a-z]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"``\1``", text)


def _page(name: str, children: list[str]) -> str:
    module = importlib.import_module(name)
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", ""]
    exported = _reexports(module)
    for export, target in exported.items():  # defined in a private module: documented here
        value = getattr(module, export)
        if not _public(getattr(value, "__module__", name)):
            kind = "class" if isinstance(value, type) else "function"
            lines += [f".. auto{kind}:: {target}", ""]
    if children and exported:
        lines += [".. rubric:: Public names", "", f"``from {name} import ...`` gives, documented where defined:", ""]
        lines += [f"- :py:obj:`{export} <{target}>`" for export, target in exported.items()] + [""]
    if children:
        lines += [".. rubric:: Modules", ""]
        lines += [f"- :doc:`{child}`: {_summary(importlib.import_module(child))}" for child in children] + [""]
        lines += [".. toctree::", "   :hidden:", ""] + [f"   {child}" for child in children] + [""]
    return "\n".join(lines)


def write_api_pages(app) -> None:
    """Write ``api/<module>.rst`` for every module, removing the pages of modules gone since."""
    folder = Path(app.srcdir) / "api"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    with mock(autodoc_mock_imports):  # importing a package imports its runtimes
        for name, children in _modules().items():
            (folder / f"{name}.rst").write_text(_page(name, children), encoding="utf-8")


def _plain_defaults(app, what, name, obj, options, signature, return_annotation):
    """A dataclass field's ``default_factory`` shows as ``<factory>``, which no signature parser
    reads (the arguments after it would be split at every comma): show ``...`` instead."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def _resolve_reexport(app, env, node, contnode):
    """A name a package re-exports (its ``__all__``) links to where it is documented: ``effnet.X``,
    ``effnet.data.X``, ``effnet.X.method``, or plain ``X`` in the docstrings of the package that
    re-exports it. The public spelling keeps working when the defining module moves; a name that
    does not exist stays unresolved and fails the build."""
    target = node.get("reftarget", "").removeprefix("~")
    if node.get("refdomain") != "py":
        return None
    if target.partition(".")[0] not in PACKAGES:
        if not node.get("py:module"):
            return None
        target = f"{node['py:module']}.{target}"
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:cut])
        try:
            with mock(autodoc_mock_imports):
                documented = _reexports(importlib.import_module(package)).get(parts[cut])
        except ImportError:
            continue
        if documented is not None:
            resolved = ".".join([documented, *parts[cut + 1:]])
            if resolved != target:
                return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                                         resolved, node, contnode)
        return None
    return None


def setup(app):
    app.connect("builder-inited", write_api_pages)
    app.connect("autodoc-process-signature", _plain_defaults)
    app.connect("missing-reference", _resolve_reexport)
