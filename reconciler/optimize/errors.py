"""Build errors. Each names what was being built (model, version, profile) and the pass that failed,
because a person reading a CI log needs to know which of many variants broke and where.

    BuildError            a variant could not be built (bad source, pass failure, conversion failure)
    └── SourceError       the model source is missing, corrupt or does not match its pinned digest
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuildContext:
    """What is being built; attached to every error raised inside it."""

    model: str
    version: str
    profile: str | None = None
    step: str | None = None

    def describe(self) -> str:
        text = f"{self.model}@{self.version}"
        if self.profile:
            text += f" for {self.profile}"
        if self.step:
            text += f", {self.step}"
        return text


class BuildError(Exception):
    """A variant could not be built; ``str()`` says which one and why."""

    def __init__(self, message: str, context: BuildContext | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def with_context(self, context: BuildContext) -> BuildError:
        """The same error, located (keeps the innermost location when one is already set)."""
        if self.context is None:
            self.context = context
        return self

    def __str__(self) -> str:
        return f"{self.context.describe()}: {self.message}" if self.context else self.message


class SourceError(BuildError):
    """The model source is missing, unreadable, corrupt, or its sha256 differs from the spec."""


MAX_MESSAGE = 300


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, capped: libraries put the useful part first and may follow
    it with a dump (onnxruntime lists every missing input on one line)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE] + "..."
