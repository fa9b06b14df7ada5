"""RetrainingRequest: drift that held long enough, written down for a person to act on.

Pure (no I/O). The controller never retrains on its own: when a model version's traffic has drifted from its
build's reference for ``monitoring.drift.retrainAfter``, it pushes a branch holding one of these documents (what
drifted, where, since when, the sample sets captured), and a person opens the pull request, trains the next
version and adds it to the Model. Merged, the document stays in the repo as the record of why that version was
made; nothing in the fleet changes because of it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .document import Document
from .types import Duration, Name, QuotedStr, SpecModel


class DriftedFigure(SpecModel):
    """A figure (an input feature, ``score``, ``margin``, ``output``) past its threshold, fleet-wide or on devices."""

    name: QuotedStr
    ks: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0)
    psi: float = Field(default=0.0, ge=0)
    js: float = Field(default=0.0, ge=0, le=1)
    values: int = Field(default=0, ge=0)


class RetrainingRequestSpec(SpecModel):
    """What drifted, where and since when: the figures a person reads before training the next version."""

    model: Name
    version: QuotedStr
    since: QuotedStr
    """When the drift was first seen (it held from then until the request)."""
    window: Duration
    """The telemetry each comparison read."""
    false_alarm_rate: float = Field(gt=0, le=0.2)
    figures: list[DriftedFigure] = Field(default_factory=list)
    """Fleet-wide figures past their threshold, the farthest first (empty when only some devices drifted)."""
    devices: list[QuotedStr] = Field(default_factory=list)
    """Devices whose own traffic drifted (at most 50, the farthest first)."""
    drifted_devices: int = Field(default=0, ge=0)
    samples: list[QuotedStr] = Field(default_factory=list)
    """Sample sets captured from the model's traffic (artifact store folders), when the model captures any."""


class RetrainingRequest(Document):
    """A request, made by the controller, to train a new version of a model whose traffic drifted."""

    KIND: ClassVar[str] = "RetrainingRequest"
    kind: Literal["RetrainingRequest"]
    spec: RetrainingRequestSpec
