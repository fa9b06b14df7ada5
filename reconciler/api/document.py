"""The envelope every fleet document shares: ``apiVersion``, ``kind``, ``metadata``, ``spec``.

Pure (no I/O). Each kind module subclasses :class:`Document`; ``KINDS`` (built in ``kinds.py``) maps a
``kind`` string to its class so the loader can dispatch before validating.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from .types import API_VERSION, ObjectMeta, SpecModel

Loc = tuple[str | int, ...]
"""A location inside a document, as keys and list indexes from its root (e.g. ``("spec", "steps", 2)``)."""

Problem = tuple[Loc, str]
"""A rule broken inside one document: where (from the document root) and what."""


class Document(SpecModel):
    """A fleet document. Subclasses narrow ``kind`` to a literal and give ``spec`` its type."""

    KIND: ClassVar[str]

    api_version: Literal["edgereconciler.io/v1alpha1"]
    """Always ``edgereconciler.io/v1alpha1`` for this version of the format."""
    kind: str
    metadata: ObjectMeta
    spec: Any

    @property
    def name(self) -> str:
        return self.metadata.name

    def problems(self) -> list[Problem]:
        """Rules inside this document that the schema cannot express; the default finds none."""
        return []


__all__ = ["API_VERSION", "Document", "Loc", "Problem"]
