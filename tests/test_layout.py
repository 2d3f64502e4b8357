"""The house layout: one concern per module, each short enough to read whole, and layered (no import cycles)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "dify_repack"
MAX_LINES = 500


def _module(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    path = SOURCE / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports_at_load(path: Path) -> set[str]:
    """The package's modules that ``path`` imports when it is loaded (not inside functions or TYPE_CHECKING)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ImportFrom):
            continue  # a lazy import in a function is how a lower layer may reach up
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
        elif node.module and node.module.split(".")[0] == "dify_repack":
            target = node.module
        else:
            continue
        found |= {f"{target}.{a.name}" if _exists(f"{target}.{a.name}") else target for a in node.names}
    return found - {module}


def test_no_module_grows_past_the_house_limit() -> None:
    long = {
        str(path.relative_to(SOURCE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these by concern: {long}"


def test_the_modules_are_layered_without_import_cycles() -> None:
    graph = {_module(path): _imports_at_load(path) for path in PACKAGE.rglob("*.py")}
    assert graph["dify_repack.verify"] >= {"dify_repack.replay", "dify_repack.static_check"}  # the graph is read
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError names the cycle
    assert order.index("dify_repack.replay") < order.index("dify_repack.static_check")
    assert order.index("dify_repack.verdicts") < order.index("dify_repack.inspect")
