"""YAML from untrusted packages, with bounds: a few KiB of aliases must not become gigabytes or a hang.

PyYAML's safe loader shares one object per anchor, so loading a "billion laughs" document is quick; whoever
then walks or prints the result (``str(value)``) expands it. Here the node graph is measured before anything
is built: too many nodes once aliases are expanded, a cycle, nesting too deep or a file too large is refused
with one line, in milliseconds.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import DifyRepackError

# Manifests are ~1 KiB and app DSL exports rarely reach 1 MiB (icons are inlined there).
MAX_YAML_CHARS = 8 * 1024 * 1024
# Real documents nest about ten levels; the composer recurses per level, so this also keeps clear of
# Python's recursion limit.
MAX_DEPTH = 64
# Nodes counted with every alias expanded: far above real documents, far below what takes a second to walk.
MAX_NODES = 1_000_000


class _Refused(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_BRACKETS = re.compile(r"[\[\]{}]")


def _check_flow_depth(text: str) -> None:
    # PyYAML's scanner tracks a possible key per open bracket and rescans them all per token: thousands of
    # nested [ take seconds before the composer ever sees a node. Counting brackets first costs one pass; a
    # bracket inside a quoted string counts too, which only matters for 64 unbalanced ones.
    depth = 0
    for match in _BRACKETS.finditer(text):
        depth = depth + 1 if match.group() in "[{" else max(depth - 1, 0)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")


def _expanded_size(root: yaml.Node) -> int:
    """The number of nodes with every alias expanded, computed once per node (no expansion happens here)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            on_path.discard(key)
            if sizes[key] > MAX_NODES:
                raise _Refused(f"expands to more than {MAX_NODES} nodes through aliases (an alias bomb?)")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused("an alias refers to a node that contains it (a recursive document)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_yaml(text: str, *, where: str, error: type[DifyRepackError]) -> object:
    """Parse one YAML document with the safe loader, within bounds; ``error(...)`` names ``where`` otherwise.

    ``where`` is the file as the user knows it (``plugin.difypkg: manifest.yaml``), never a temp path.
    """
    if len(text) > MAX_YAML_CHARS:
        raise error(f"{where}: {len(text)} characters, above the {MAX_YAML_CHARS} safety limit for a YAML file")
    try:
        # The reader refuses control characters (a NUL) as soon as it is made.
        loader = _BoundedLoader(text)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {str(exc).strip().splitlines()[0]}") from None
    try:
        _check_flow_depth(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as refused:
        raise error(f"{where}: refused: the YAML {refused}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        lines = str(exc).strip().splitlines()
        raise error(f"{where}: not valid YAML: {lines[0] if lines else type(exc).__name__}") from None
    finally:
        loader.dispose()
