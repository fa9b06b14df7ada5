"""YAML bytes → documents that remember where every value came from.

Pure (no I/O): callers hand in bytes (from a directory or a Git tree). PyYAML's C loader does the
parsing, but its composer recurses in C and crashes the process on deeply nested input, and an alias
"bomb" expands exponentially once validated. So every file is first scanned at the event level (which
is iterative) and refused, before composing, when it is too big, too deep, expands to too many nodes,
or holds a recursive alias. The limits live in :class:`Limits`.

The composed node tree is kept next to the constructed data so errors can be pinned to a line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import SpecError


@dataclass(frozen=True)
class Limits:
    """Caps on untrusted input. Real fleet documents are far below every one of them."""

    max_file_bytes: int = 1 << 20
    max_depth: int = 64
    max_nodes_per_document: int = 100_000
    max_documents_per_file: int = 1_000


@dataclass
class RawDocument:
    """One YAML document of a file: its data, and its node tree for locating values."""

    path: str
    node: yaml.Node
    data: Any
    index: int = 0

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def line_of(self, loc: Sequence[str | int]) -> int:
        """The line of the value at ``loc``; for a missing value, the line of its nearest parent."""
        node, line = self.node, self.line
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                if part == "[key]":  # pydantic's marker for a bad mapping key: the key itself is here
                    continue
                match = next(((k, v) for k, v in node.value if _scalar(k) == str(part)), None)
                if match is None:
                    return line
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def scalar_at(self, loc: Sequence[str | int]) -> str | None:
        """The text of the scalar at ``loc`` as written (``1.10``, not the float YAML made of it)."""
        node = self._node_at(loc)
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def _node_at(self, loc: Sequence[str | int]) -> yaml.Node | None:
        node: yaml.Node | None = self.node
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if _scalar(k) == str(part)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
            else:
                return None
        return node


def _scalar(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def parse_documents(path: str, content: bytes, limits: Limits) -> tuple[list[RawDocument], list[SpecError]]:
    """Parse every document of one file; on any problem return no documents and the error."""
    if len(content) > limits.max_file_bytes:
        return [], [SpecError(path, 0, f"file is {len(content)} bytes, over the limit of {limits.max_file_bytes}")]
    try:
        problem = _scan(content, limits)
        if problem:
            return [], [SpecError(path, problem[0], problem[1])]
        return _compose(path, content), []
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        return [], [SpecError(path, line, f"invalid YAML: {_one_line(message)}")]
    except Exception as exc:  # libyaml and the constructors raise several types (ValueError for bad dates, ...)
        return [], [SpecError(path, 0, f"invalid YAML: {_one_line(str(exc))}")]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _scan(content: bytes, limits: Limits) -> tuple[int, str] | None:
    """Event-level checks that must pass before the recursive composer may see the input."""
    loader = yaml.CSafeLoader(content)
    try:
        documents = total = 0  # total: values of the current document with every alias expanded
        sizes: list[int] = []  # expanded size of each open collection
        anchors: dict[str, int | None] = {}  # anchor → expanded size; None while still open
        open_anchors: list[str | None] = []
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1 if event.start_mark else 0
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                total = 0
                anchors.clear()
                if documents > limits.max_documents_per_file:
                    return line, f"more than {limits.max_documents_per_file} documents in one file"
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                size = sizes.pop()
                anchor = open_anchors.pop()
                if anchor:
                    anchors[anchor] = size
                if sizes:
                    sizes[-1] += size
                continue
            if isinstance(event, yaml.CollectionStartEvent):
                if len(sizes) >= limits.max_depth:
                    return line, f"nested deeper than {limits.max_depth} levels"
                sizes.append(1)
                open_anchors.append(event.anchor)
                if event.anchor:
                    anchors[event.anchor] = None
                added = 1
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    anchors[event.anchor] = 1
                added = 1
            elif isinstance(event, yaml.AliasEvent):
                size = anchors.get(event.anchor, 1)
                if size is None:
                    return line, f"recursive alias *{event.anchor}"
                added = size
            else:
                continue
            if sizes and not isinstance(event, yaml.CollectionStartEvent):
                sizes[-1] += added
            total += added
            if total > limits.max_nodes_per_document:
                return line, f"document expands to more than {limits.max_nodes_per_document} values (alias bomb?)"
        return None
    finally:
        loader.dispose()


def _compose(path: str, content: bytes) -> list[RawDocument]:
    loader = yaml.CSafeLoader(content)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            documents.append(RawDocument(path, node, loader.construct_document(node), len(documents)))
        return documents
    finally:
        loader.dispose()


def duplicate_keys(document: RawDocument) -> Iterator[tuple[list[str | int], int, str]]:
    """Keys written twice in one mapping: YAML keeps the last silently, Kubernetes refuses them."""
    stack: list[tuple[yaml.Node, list[str | int]]] = [(document.node, [])]
    seen_nodes: set[int] = set()
    while stack:
        node, loc = stack.pop()
        if id(node) in seen_nodes:  # an alias: already checked where it was anchored
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                text = _scalar(key)
                if text is not None and text in keys:
                    yield loc, key.start_mark.line + 1, text
                if text is not None:
                    keys.add(text)
                    stack.append((value, [*loc, text]))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, [*loc, i]) for i, item in enumerate(node.value))
