"""The package's shape: no import cycles between its parts, one atomic-write helper, no
identity patched onto models from outside."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import effnet

PACKAGE = Path(effnet.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _import_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of a module except the body of a module-level ``__getattr__``: the deprecated
    aliases there import their new home on first use, never while the module loads."""
    skipped = {id(node) for top in tree.body if isinstance(top, ast.FunctionDef) and top.name == "__getattr__"
               for node in ast.walk(top)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _imports(name: str, path: Path) -> set[str]:
    """The ``effnet`` modules ``name`` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "effnet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "effnet":
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def _unit(module: str) -> str:
    """The part of the package a module belongs to: ``effnet.<top-level module or subpackage>``."""
    return ".".join(module.split(".")[:2])


def _unit_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "effnet":  # the package's public re-exports sit above every part
            continue
        source = _unit(name)
        targets = {_unit(t) for t in _imports(name, path) if t in modules or _unit(t) in modules}
        graph.setdefault(source, set()).update(t for t in targets if t not in (source, "effnet"))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_the_parts_of_the_package() -> None:
    graph = _unit_graph()
    assert {"effnet.model", "effnet.train", "effnet.weights", "effnet.cli"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_cli_sits_above_the_library() -> None:
    graph = _unit_graph()
    users = {source for source, targets in graph.items() if "effnet.cli" in targets}
    assert users == {"effnet.__main__"}  # `python -m effnet` is the command line


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for path in _modules().values()}


def test_one_atomic_replace_helper() -> None:
    users = [path.name for path, text in _sources().items() if re.search(r"\bos\.replace\(", text)]
    assert users == ["files.py"]


def test_no_model_identity_patched_on_or_guessed() -> None:
    pattern = re.compile(r"getattr\(\s*\w*model\w*,\s*[\"'](preprocessing|class_names|model_name)[\"']"
                         r"|\bmodel\.(preprocessing|class_names|model_name)\s*=[^=]")
    offenders = [f"{path.name}: {m.group(0)}" for path, text in _sources().items() for m in pattern.finditer(text)]
    assert offenders == []


def test_library_errors_derive_from_effnet_error() -> None:
    # portable.py runs outside effnet too (copied into shipped folders): it defines its own errors.
    bare = [f"{path.name}: {m.group(0)}" for path, text in _sources().items() if path.name != "portable.py"
            for m in re.finditer(r"raise (ValueError|FileNotFoundError)\(", text)]
    assert bare == []


def test_first_line_quotes_one_line_of_any_error():
    from effnet.errors import first_line
    assert first_line(RuntimeError("  CUDA error: out of memory\nCUDA kernel errors might be ...")) == \
        "CUDA error: out of memory"
    assert first_line(RuntimeError()) == "" and first_line(ValueError("x" * 500), limit=10) == "x" * 10


def _file_graph() -> dict[str, set[str]]:
    """Module -> the effnet modules it imports (a package's ``__init__`` counts as its own file)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "effnet":
            continue
        # A module's own parent packages are being imported already when it runs (``from . import x``).
        ancestors = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
        graph[name] = {t for t in _imports(name, path) if t in modules and t != name and t not in ancestors}
    return graph


def test_no_import_cycle_between_files() -> None:
    graph = _file_graph()
    assert "effnet.train.trainer" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_source_file_over_600_lines() -> None:
    long = {path.relative_to(PACKAGE).as_posix(): n for path, text in _sources().items()
            if (n := text.count("\n")) > 600}
    assert long == {}


def test_the_variant_facts_live_in_the_catalogue() -> None:
    """Stage tables and per-variant coefficients are defined in effnet/variants.py only."""
    facts = re.compile(r"^\s*(StageSpec\(\d|_v1\(|_lite\(\d|_v2\(\"|[A-Z0-9_]*STAGES\b.*=)", re.M)
    where = sorted({path.name for path, text in _sources().items() if facts.search(text)})
    assert where == ["variants.py"]


def _top_level_imports(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            imported.add((node.module or "").split(".")[0])
    return imported


def test_the_runtime_distribution_needs_neither_pytorch_nor_effnet() -> None:
    """effnet_runtime (packages/effnet-runtime) runs where PyTorch is not installed; its portable
    module is also copied into shipped folders."""
    import effnet_runtime

    runtime = Path(effnet_runtime.__file__).resolve().parent
    found = {path.name: _top_level_imports(path) for path in runtime.rglob("*.py")}
    assert "portable.py" in found
    for name, imported in found.items():
        assert "effnet" not in imported, name
        # torch only where a shipped TorchScript file is run
        assert "torch" not in imported or name == "portable.py", name
        assert "torchvision" not in imported, name


def test_effnet_and_effnet_runtime_have_one_version() -> None:
    import effnet_runtime

    assert effnet.__version__ == effnet_runtime.__version__
