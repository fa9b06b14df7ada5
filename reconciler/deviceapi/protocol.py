"""The device API's messages: what a request body may hold and what a response says, one pydantic model each.

Pure (no I/O). The server validates every body against these models before it acts (a bad body is 400 and is
never stored); the client builds its requests from them, so both sides agree on field names by construction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from reconciler.artifact.sketches import MAX_ENCODED, decode
from reconciler.cluster.crd import PHASES

PHASE_PATTERN = f"^({'|'.join(PHASES)})$"

ENROL = "/v1/enrol"
RENEW = "/v1/renew"
ASSIGNMENTS = "/v1/assignments"
STATUS = "/v1/status/{model}"
TELEMETRY = "/v1/telemetry"
LOGS = "/v1/logs"
CAPTURES = "/v1/captures/{model}/{version}"
TRAINING_JOIN = "/v1/trainings/{name}/join"
"""A device called to a federated training asks for its identity key to be let into the SuperLink."""
FLEET_PREFIX = "/v1/fleet/"
"""Flower's Fleet API (a SuperNode's calls), passed through to the controller's SuperLink."""
MAX_FLEET_BODY = 64 * 1024 * 1024
MAX_CAPTURE_BODY = 4 * 1024 * 1024

MAX_ENROL_BODY = 16 * 1024
MAX_STATUS_BODY = 64 * 1024
MAX_TELEMETRY_BODY = 1024 * 1024
MAX_LOG_LINES = 500
MAX_WAIT_SECONDS = 60.0
"""Longest long-poll a device may ask for (``GET /v1/assignments?wait=S``)."""

NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
"""Device and model names: DNS subdomain names, as Kubernetes Node names are."""
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$"
"""Model versions, as agents name their slots: never a path."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EnrolRequest(_Message):
    """Exactly one proof: a bootstrap token, or (an agent pod on Kubernetes) its projected ServiceAccount token."""

    token: str | None = Field(default=None, min_length=8, max_length=128, pattern=r"^[a-z0-9]{6}\.[a-z0-9]{16,64}$")
    """A one-time bootstrap token ``ID.SECRET`` (``edgectl device token create``)."""
    service_account_token: str | None = Field(default=None, alias="serviceAccountToken", min_length=16,
                                              max_length=16384)  # fmt: skip
    """An audience-bound ServiceAccount token of the agent's pod, checked with a TokenReview and tied to its Node."""
    csr: str = Field(min_length=64, max_length=8192)
    """PEM certificate signing request; its subject's common name is the device's name."""

    @model_validator(mode="after")
    def _one_proof(self) -> EnrolRequest:
        if (self.token is None) == (self.service_account_token is None):
            raise ValueError("give exactly one of token and serviceAccountToken")
        return self


class RenewRequest(_Message):
    csr: str = Field(min_length=64, max_length=8192)


class Certificate(_Message):
    device: str
    certificate: str
    """PEM client certificate for ``device``, issued by the fleet CA."""
    ca: str
    """PEM certificate of the fleet CA (the device's trust anchor for the server)."""
    not_after: str = Field(alias="notAfter")
    """RFC 3339: when the certificate expires (the agent renews at two thirds of its lifetime)."""


class Assignment(_Message):
    model: str
    generation: int
    spec: dict[str, Any]
    """The ModelAssignment spec (``reconciler.cluster.backend.spec_to_json``)."""


class Assignments(_Message):
    device: str
    assignments: list[Assignment]


class StatusReport(_Message):
    """An AssignmentStatus as the agent reports it (``AssignmentStatus.to_json``); unknown keys are figures the
    agent adds (bytes transferred, health check numbers) and must be small scalars."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    phase: str = Field(pattern=PHASE_PATTERN)
    installed_version: str | None = Field(default=None, alias="installedVersion", max_length=64)
    previous_version: str | None = Field(default=None, alias="previousVersion", max_length=64)
    message: str = Field(default="", max_length=2048)
    reason: str = Field(default="", max_length=128)
    last_seen: str | None = Field(default=None, alias="lastSeen", max_length=64)
    observed_generation: int = Field(default=0, alias="observedGeneration", ge=0)
    target_version: str | None = Field(default=None, alias="targetVersion", max_length=64)


class Refusal(_Message):
    """Every 4xx answer: a machine-readable reason and a sentence for a person."""

    reason: str
    message: str


TELEMETRY_API_VERSION = "edgereconciler.io/v1alpha1"
MAX_HISTOGRAM_BINS = 4096
"""Longest list in a summary (latency buckets, predicted classes, one input histogram's edges or counts)."""
MAX_INPUT_HISTOGRAMS = 64
MAX_SKETCHES = 160
"""Sketches in one summary: a few models' inputs of ``MAX_FEATURES`` features each, outputs and latency."""
_SKETCH_NAME = r"^[A-Za-z0-9_.:\[\]-]{1,80}$"


class Histogram(_Message):
    """Counts on fixed edges: ``counts`` has one more entry than ``edges`` (below the first, above the last)."""

    edges: list[float] = Field(max_length=MAX_HISTOGRAM_BINS)
    counts: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_HISTOGRAM_BINS + 1)


class LatencyHistogram(_Message):
    """Request latency in milliseconds on the agent's fixed buckets (the last is ``"+Inf"``); p50/p95/p99 are the
    upper edges of the buckets holding them, None without requests."""

    buckets: list[float | Literal["+Inf"]] = Field(max_length=MAX_HISTOGRAM_BINS)
    counts: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_HISTOGRAM_BINS)
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class TelemetrySummary(_Message):
    """One interval's counts for one model version on one device (``reconciler.agent.telemetry.Summary.to_json``).
    ``device`` must be the name in the sender's certificate."""

    api_version: Literal["edgereconciler.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TelemetrySummary"]
    device: str = Field(pattern=NAME_PATTERN, max_length=253)
    model: str = Field(pattern=NAME_PATTERN, max_length=253)
    version: str = Field(min_length=1, max_length=64)
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    latency_ms: LatencyHistogram = Field(alias="latencyMs")
    predictions: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_HISTOGRAM_BINS)
    inputs: dict[str, Histogram] = Field(max_length=MAX_INPUT_HISTOGRAMS)
    sketches: dict[Annotated[str, Field(pattern=_SKETCH_NAME)], Annotated[str, Field(max_length=MAX_ENCODED)]] = Field(
        default_factory=dict, max_length=MAX_SKETCHES)  # fmt: skip
    """name -> base64 KLL sketch (``reconciler.artifact.sketches``): input features, outputs, latency."""
    errors_by_kind: dict[Literal["input", "inference"], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, alias="errorsByKind")  # fmt: skip
    dropped_before: int = Field(default=0, alias="droppedBefore", ge=0)
    """Summaries the device's queue dropped (over its disk budget) before this one."""
    stream: str | None = Field(default=None, pattern=r"^[0-9a-f]{16,64}$")
    """The device's telemetry stream (its queue's id: a wiped device starts a new one)."""
    sequence: int | None = Field(default=None, ge=1)
    """Rising within ``stream``: a summary sent again (an upload answered but not recorded as sent on the
    device) is known by it and counted once."""
    ended: AwareDatetime | None = None
    """When the summary's interval ended, by the device's clock: the controller files it under that hour (never
    later than its arrival), so a summary uploaded after a day offline counts where it was measured."""

    @model_validator(mode="after")
    def _sketches_decode(self) -> TelemetrySummary:
        for name, text in self.sketches.items():
            try:
                decode(text, strict=True)
            except ValueError:
                raise ValueError(f"sketches.{name}: not an encoded KLL sketch") from None
        return self


MAX_EXTRAS = 32
"""Most figures a status report may add to AssignmentStatus's fields."""
MAX_EXTRA_STRING = 256
_EXTRA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def extras_problem(extra: Mapping[str, Any]) -> str | None:
    """What is wrong with a StatusReport's extra figures (``model_extra``), or None: at most ``MAX_EXTRAS``, plain
    names, and small scalars only (no nesting, finite numbers within 64 bits, short strings), so that any backend
    can store them."""
    if len(extra) > MAX_EXTRAS:
        return f"at most {MAX_EXTRAS} extra figures in a report"
    for key, value in extra.items():
        small = (
            value is None
            or isinstance(value, bool)
            or (isinstance(value, int) and -(2**63) <= value < 2**63)
            or (isinstance(value, float) and math.isfinite(value))
            or (isinstance(value, str) and len(value) <= MAX_EXTRA_STRING)
        )
        if not _EXTRA_KEY.fullmatch(key) or not small:
            return f"extra figure {key[:64]!r} must be a small scalar with a plain name"
    return None


class LogLine(_Message):
    time: AwareDatetime
    level: Literal["debug", "info", "warning", "error", "critical"]
    logger: str = Field(max_length=200)
    message: str = Field(max_length=2000)


class LogUpload(_Message):
    """Recent log lines of an agent whose assignment asks for them (``edgectl debug``)."""

    lines: list[LogLine] = Field(min_length=1, max_length=MAX_LOG_LINES)
