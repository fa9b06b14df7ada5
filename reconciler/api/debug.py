"""DebugSession: some devices log at another level, and upload their recent lines, until a moment.

Pure (no I/O). ``edgectl debug -l SELECTOR --level debug --for 30m`` commits one as ``debug/NAME.yaml``, a file of
its own (nobody's file is rewritten), like the other manual actions. The plan hands the level to every
assignment of the devices it names; each agent goes back to its own level at ``until`` by its own clock, offline
or not, and the device API takes their log lines only until then. A session past its ``until`` does nothing; the
next ``edgectl debug`` removes the files of expired ones.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field

from .document import Document
from .types import LabelSelector, QuotedStr, SpecModel


class DebugSessionSpec(SpecModel):
    """Which devices, at which level, until when, and who asked why."""

    selector: LabelSelector
    """The devices, by node labels."""
    level: Literal["debug", "info", "warning"] = "debug"
    until: Annotated[AwareDatetime, Field(strict=False)]
    """RFC 3339 with its offset (``2026-12-05T10:30:00Z``): the agents drop the level then, by their own clocks."""
    reason: QuotedStr = ""
    by: QuotedStr = ""
    """Who asked (``edgectl debug`` writes the committer's name)."""


class DebugSession(Document):
    """A temporary log level for the agents of some devices, and the upload of their recent log lines."""

    KIND: ClassVar[str] = "DebugSession"
    kind: Literal["DebugSession"]
    spec: DebugSessionSpec
