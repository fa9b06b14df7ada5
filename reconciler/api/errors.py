"""Spec errors: one problem found in a fleet repo, located to file, line, document and field.

Pure (no I/O). Errors are values, collected for the whole tree and raised together as
:class:`SpecErrors`, because a person fixing a repo wants every problem in one run (as ``kubectl
apply --dry-run`` and compilers do), not one per try. The text form is
``path:line: Kind/name: field.path: message``, which editors and CI annotators turn into links.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ONE_LINE = {c: repr(chr(c))[1:-1] for c in (*range(32), 127, 0x85, 0x2028, 0x2029) if c != 9}


def format_field_path(loc: Sequence[str | int]) -> str:
    """``("spec", "steps", 2, "percent")`` → ``spec.steps[2].percent`` (kubectl's spelling)."""
    text = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the key itself", not a path element
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER_RE.match(part):
            text += f".{part}" if text else part
        elif part.isprintable():
            text += f"[{part}]"
        else:
            text += f"[{part!r}]"
    return text


@dataclass(frozen=True, order=True)
class SpecError:
    """One problem in a fleet repo. Sorting orders by file, then line."""

    path: str
    line: int
    message: str
    kind: str | None = None
    name: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        text = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        if self.kind:
            text += f"{self.kind}/{self.name or '<unnamed>'}: "
        if self.field:
            text += f"{self.field}: "
        # One error, one line: values quoted into messages may hold newlines or control characters.
        return (text + self.message).translate(_ONE_LINE)


class SpecErrors(Exception):
    """Every problem found in a fleet repo, sorted by file and line."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        self.errors = sorted(set(errors))
        super().__init__("\n".join(str(e) for e in self.errors))
