"""Load a fleet repo's documents into a checked :class:`FleetTree`, or fail with every error at once.

Pure (no I/O): callers pass :class:`SourceFile` values (read from a directory by
``reconciler.gitops.files``, or from a Git tree at a commit). The steps, each of which only adds
errors and never stops the others:

1. parse each file (``source.parse_documents``: limits first, then PyYAML's C loader);
2. dispatch each document on ``kind`` and validate it with its pydantic model;
3. check rules inside each document (``Document.problems``) and duplicate YAML keys;
4. check references between documents (``crosscheck``).

Documents under the fleet's status path are ignored: the controller writes them, people do not.
"""

from __future__ import annotations

import difflib
import gc
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from .crosscheck import crosscheck
from .debug import DebugSession
from .device import DeviceGroup, DeviceProfile
from .document import API_VERSION, Document
from .errors import SpecError, SpecErrors, format_field_path
from .fleet import Fleet, default_fleet
from .kinds import KINDS
from .model import Model
from .retraining import RetrainingRequest
from .rollout import Rollout
from .source import Limits, RawDocument, duplicate_keys, parse_documents
from .training import FederatedTraining


@dataclass(frozen=True)
class SourceFile:
    """One file of the fleet repo: its repo-relative path and bytes, or why it could not be read."""

    path: str
    content: bytes | None = None
    read_error: str | None = None


@dataclass(frozen=True)
class Located:
    """A validated document and the YAML it came from (to point later errors at a line)."""

    document: Document
    source: RawDocument


@dataclass(frozen=True)
class FleetTree:
    """Every document of a fleet repo, validated and cross-checked, by kind and name."""

    fleet: Fleet
    profiles: Mapping[str, DeviceProfile] = field(default_factory=dict)
    groups: Mapping[str, DeviceGroup] = field(default_factory=dict)
    models: Mapping[str, Model] = field(default_factory=dict)
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)
    retraining: Mapping[str, RetrainingRequest] = field(default_factory=dict)
    """Requests to retrain a drifted model (the controller writes them on branches; they change nothing)."""
    debug: Mapping[str, DebugSession] = field(default_factory=dict)
    """Temporary log levels for some devices (``edgectl debug``)."""
    trainings: Mapping[str, FederatedTraining] = field(default_factory=dict)
    """Federated trainings: merged, they run; the result comes back as a branch."""
    sources: Mapping[tuple[str, str], RawDocument] = field(default_factory=dict)
    """Where each (kind, name) was defined."""

    def counts(self) -> dict[str, int]:
        """Documents per kind, in the registry's order (the Fleet counts only when written)."""
        written_fleet = sum(1 for kind, _ in self.sources if kind == "Fleet")
        return {
            "Fleet": written_fleet,
            "DeviceProfile": len(self.profiles),
            "DeviceGroup": len(self.groups),
            "Model": len(self.models),
            "Rollout": len(self.rollouts),
            **({"RetrainingRequest": len(self.retraining)} if self.retraining else {}),
            **({"DebugSession": len(self.debug)} if self.debug else {}),
            **({"FederatedTraining": len(self.trainings)} if self.trainings else {}),
        }


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Parsing allocates many long-lived node objects, and each automatic GC pass rescans all of them:
    measured at 3x the parse time on a 4,000-document repo. Reference counting still frees memory."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_fleet(files: Iterable[SourceFile], limits: Limits | None = None) -> FleetTree:
    """Validate a fleet repo's files; raise :class:`SpecErrors` listing every problem found."""
    with _cyclic_gc_paused():
        return _load_fleet(files, limits or Limits())


def _load_fleet(files: Iterable[SourceFile], limits: Limits) -> FleetTree:
    errors: list[SpecError] = []
    raw: list[RawDocument] = []
    for source_file in files:
        if source_file.read_error is not None or source_file.content is None:
            errors.append(SpecError(source_file.path, 0, source_file.read_error or "cannot read file"))
            continue
        documents, file_errors = parse_documents(source_file.path, source_file.content, limits)
        raw.extend(documents)
        errors.extend(file_errors)

    located: list[Located] = []
    broken: list[RawDocument] = []
    for document in raw:
        if document.data is None:  # an empty document (a lone `---`, or only comments)
            continue
        result, document_errors = validate_document(document)
        errors.extend(document_errors)
        if result is not None:
            located.append(result)
        else:
            broken.append(document)

    fleets = [item for item in located if isinstance(item.document, Fleet)]
    fleet = fleets[0].document if fleets else default_fleet()
    assert isinstance(fleet, Fleet)
    status_prefix = fleet.spec.status_path.rstrip("/") + "/"
    errors = [e for e in errors if not e.path.startswith(status_prefix)]
    located = [item for item in located if not item.source.path.startswith(status_prefix)]

    broken = [item for item in broken if not item.path.startswith(status_prefix)]
    errors.extend(crosscheck(located, broken))
    if errors:
        raise SpecErrors(errors)
    by_kind: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    for item in located:
        by_kind[item.document.kind].setdefault(item.document.name, item.document)
    return FleetTree(
        fleet=fleet,
        profiles=by_kind["DeviceProfile"],
        groups=by_kind["DeviceGroup"],
        models=by_kind["Model"],
        rollouts=by_kind["Rollout"],
        retraining=by_kind["RetrainingRequest"],
        debug=by_kind["DebugSession"],
        trainings=by_kind["FederatedTraining"],
        sources={(item.document.kind, item.document.name): item.source for item in located},
    )


def validate_document(raw: RawDocument) -> tuple[Located | None, list[SpecError]]:
    """Validate one YAML document against the model of its kind."""
    data = raw.data
    if not isinstance(data, dict):
        return None, [SpecError(raw.path, raw.line, f"a document must be a mapping, not {_type_name(data)}")]
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = name if isinstance(name, str) else None
    kind_text = kind if isinstance(kind, str) else None

    def error(loc: tuple[str | int, ...], message: str) -> SpecError:
        return SpecError(raw.path, raw.line_of(loc), message, kind_text, name, format_field_path(loc) or None)

    errors = [
        SpecError(raw.path, line, f"duplicate key {key!r}", kind_text, name, format_field_path(loc) or None)
        for loc, line, key in duplicate_keys(raw)
    ]
    if data.get("apiVersion") != API_VERSION:
        got = data.get("apiVersion")
        message = "required field is missing" if got is None else f"unsupported apiVersion {got!r}"
        errors.append(error(("apiVersion",), f"{message} (use {API_VERSION})"))
        return None, errors
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(KINDS)
        message = "required field is missing" if kind is None else f"unknown kind {kind!r}"
        kind_text = None
        errors.append(error(("kind",), f"{message} (one of {known})"))
        return None, errors
    try:
        document = cls.model_validate(data)
    except ValidationError as exc:
        errors.extend(error(tuple(e["loc"]), _message(cls, e, raw)) for e in exc.errors())
        return None, errors
    errors.extend(error(loc, message) for loc, message in document.problems())
    return Located(document, raw), errors


def _message(cls: type[BaseModel], error: Any, raw: RawDocument) -> str:
    """Pydantic's message, reworded the way kubectl and people say it."""
    kind, message, value = error["type"], error["msg"], error.get("input")
    if kind == "quote_it":  # show the text as written: YAML already turned 1.10 into 1.1
        written = raw.scalar_at(tuple(error["loc"]))
        return (
            message
            if written is None
            else f'must be a string; YAML read {written} as {error["ctx"]["kind"]}, quote it: "{written}"'
        )
    if kind == "too_short":
        return f"must have at least {error['ctx']['min_length']} item(s)"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        loc = tuple(error["loc"])
        allowed = _fields_at(cls, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if hint:
            return f"unknown field {loc[-1]!r}; did you mean {hint[0]!r}?"
        return f"unknown field {loc[-1]!r} (allowed: {', '.join(allowed)})" if allowed else "unknown field"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, not {_type_name(value)}"
    if kind == "list_type":
        return f"must be a list, not {_type_name(value)}"
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']}, not {value!r}"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message.replace('Input should be', 'must be')}, not {_type_name(value)}"
    return message.replace("Input should be", "must be")


def _type_name(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _fields_at(cls: Any, loc: tuple[str | int, ...]) -> list[str]:
    """The field names (aliases) allowed at ``loc`` below ``cls``, for "did you mean" hints."""
    annotation: Any = cls
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found = next((f.annotation for n, f in annotation.model_fields.items() if (f.alias or n) == part), None)
            if found is None:
                return []
            annotation = found
        elif typing.get_origin(annotation) in (list, tuple) and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or n for n, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional to reach the model or container type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation
