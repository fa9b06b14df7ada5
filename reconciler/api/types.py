"""Field types shared by every kind of the fleet spec: names, durations, quantities, label selectors.

Pure (no I/O). The rules follow Kubernetes where Kubernetes has one (label keys and values, resource
names, quantities like ``512Mi``, Go-style durations like ``1h30m``), so people who write manifests
for kubectl meet no surprises here.

Values that YAML would silently turn into numbers or booleans (versions like ``1.10``, label values like
``true``) are refused with a hint to quote them, because the conversion loses information.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

API_VERSION = "edgereconciler.io/v1alpha1"


class SpecModel(BaseModel):
    """Base of every spec model: camelCase keys as in Kubernetes, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        # A spec is a contract: never coerce "5" into 5 or "yes" into True behind the author's back.
        strict=True,
    )


def _require_str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        kind = "a boolean" if isinstance(value, bool) else "a number"
        raise PydanticCustomError(
            "quote_it",
            'must be a string; YAML read this as {kind}, quote it: "{text}"',
            {"kind": kind, "text": _yaml_text(value)},
        )
    raise PydanticCustomError("string_type", "must be a string")


def _yaml_text(value: bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


QuotedStr = Annotated[str, BeforeValidator(_require_str)]
"""A string that YAML might have read as a number or boolean: the author must quote it."""

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_name(value: str) -> str:
    if len(value) > 63 or not _NAME_RE.match(value):
        raise PydanticCustomError(
            "invalid_name",
            "invalid name '{value}': use at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
            {"value": value},
        )
    return value


Name = Annotated[
    QuotedStr,
    BeforeValidator(lambda v: _check_name(v) if isinstance(v, str) else v),
    WithJsonSchema({"type": "string", "pattern": _NAME_RE.pattern, "maxLength": 63}),
]
"""A resource name (RFC 1123 label): it ends up in Kubernetes object names and label values."""

_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key, or None when it is."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return f"invalid label key {key!r}: empty prefix before '/'"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        return f"invalid label key {key!r}: prefix must be a DNS subdomain (e.g. example.com)"
    if not name or len(name) > 63 or not _LABEL_NAME_RE.match(name):
        return (
            f"invalid label key {key!r}: name part must be 1-63 characters of letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes label value, or None when it is."""
    if value and (len(value) > 63 or not _LABEL_NAME_RE.match(value)):
        return (
            f"invalid label value '{value}': at most 63 characters of letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit"
        )
    return None


def _check_label_key(value: Any) -> Any:
    if isinstance(value, str) and (problem := label_key_problem(value)):
        raise PydanticCustomError("invalid_label_key", "{problem}", {"problem": problem})
    return value


def _check_label_value(value: Any) -> Any:
    if isinstance(value, str) and (problem := label_value_problem(value)):
        raise PydanticCustomError("invalid_label_value", "{problem}", {"problem": problem})
    return value


LabelKey = Annotated[QuotedStr, BeforeValidator(_check_label_key)]
LabelValue = Annotated[QuotedStr, BeforeValidator(_check_label_value)]

# --- durations -------------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> Any:
    """``"1h30m"`` → ``timedelta``; a bare number is refused because its unit would be a guess."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PydanticCustomError("duration", "must be a duration such as 30s, 10m or 1h30m")
    text = str(value).strip()
    if not _DURATION_RE.match(text):
        raise PydanticCustomError(
            "duration",
            "invalid duration '{value}': use a number with a unit (ms, s, m, h, d), e.g. 30s, 10m, 1h30m",
            {"value": value},
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))
    return timedelta(seconds=seconds)


def parse_moment(value: object) -> datetime | None:
    """An RFC 3339 time as status files, reports and assignments write it (``Z`` or an offset; without one, UTC);
    None for anything else: these are read back from files people can edit, never trusted to parse."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_duration(value: timedelta) -> str:
    """The shortest Go-style spelling of ``value``, so exported specs read like hand-written ones."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, total_ms = divmod(total_ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _DURATION_RE.pattern,
            "description": "A duration with units: ms, s, m, h, d (e.g. 30s, 10m, 1h30m).",
        }
    ),
]

# --- quantities ------------------------------------------------------------------------------------

_QUANTITY_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY_RE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")


def parse_quantity(value: Any) -> Any:
    """``"512Mi"`` → bytes as int, with Kubernetes' suffixes (binary Ki/Mi/Gi, decimal k/M/G)."""
    if isinstance(value, bool):
        raise PydanticCustomError("quantity", "must be a size such as 8Mi or 500k")
    if isinstance(value, int):
        if value < 0:
            raise PydanticCustomError("quantity", "must not be negative")
        return value
    match = _QUANTITY_RE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise PydanticCustomError(
            "quantity",
            "invalid size '{value}': use bytes or a number with Ki, Mi, Gi, k, M or G (e.g. 8Mi)",
            {"value": value},
        )
    number, suffix = match.groups()
    return round(float(number) * _QUANTITY_SUFFIXES[suffix or ""])


Quantity = Annotated[
    int,
    BeforeValidator(parse_quantity),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": _QUANTITY_RE.pattern},
            ],
            "description": "Bytes, or a Kubernetes quantity such as 8Mi, 512Mi, 2Gi or 500k.",
        }
    ),
]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A share between 0 and 1 (0.05 = 5 %)."""

_REPO_PATH_RE = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[^\0\\]+$")


def _check_repo_path(value: Any) -> Any:
    if isinstance(value, str) and not _REPO_PATH_RE.match(value):
        raise PydanticCustomError(
            "repo_path",
            "invalid path '{value}': must be relative to the fleet repo, without '..' or backslashes",
            {"value": value},
        )
    return value


RepoPath = Annotated[
    QuotedStr,
    BeforeValidator(_check_repo_path),
    WithJsonSchema({"type": "string", "pattern": _REPO_PATH_RE.pattern}),
]
"""A path inside the fleet repo: relative, never escaping it (it is resolved against a checkout)."""

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_sha256(value: Any) -> Any:
    if isinstance(value, str) and not _SHA256_RE.match(value):
        raise PydanticCustomError("sha256", "must be 64 lowercase hex digits (a sha256 digest)")
    return value


Sha256 = Annotated[
    QuotedStr,
    BeforeValidator(_check_sha256),
    WithJsonSchema({"type": "string", "pattern": _SHA256_RE.pattern}),
]

# --- metadata and selectors ------------------------------------------------------------------------


class ObjectMeta(SpecModel):
    """Kubernetes-style metadata: a name unique per kind, free labels and annotations."""

    name: Name
    """Unique among documents of the same kind."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Free labels, with Kubernetes label syntax."""
    annotations: dict[LabelKey, QuotedStr] = Field(default_factory=dict)
    """Free annotations; tools use them to record manual actions."""


SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


_SELECTOR_PART = re.compile(r"(?:[^,(]|\([^)]*\))+")
_SET_TERM = re.compile(r"\s*([^\s!=]+)\s+(in|notin)\s*\(([^)]*)\)\s*")


class LabelSelectorRequirement(SpecModel):
    """One requirement of a label selector, as in Kubernetes."""

    key: LabelKey
    operator: SelectorOperator
    values: list[LabelValue] = Field(default_factory=list)
    """Required (non-empty) for In and NotIn; must be empty for Exists and DoesNotExist."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with ``labels`` satisfies this requirement."""
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


class LabelSelector(SpecModel):
    """A Kubernetes label selector over node labels. An empty selector matches every node."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Labels a node must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    """Set-based requirements; all must hold."""

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """kubectl's ``-l`` syntax: ``k=v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``,
        comma-separated. Raises ValueError naming the part it cannot read."""
        labels: dict[str, str] = {}
        expressions: list[dict] = []
        for part in _SELECTOR_PART.findall(text):
            part = part.strip()
            if not part:
                continue
            if match := _SET_TERM.fullmatch(part):
                key, operator, values = match.groups()
                items = [v.strip() for v in values.split(",") if v.strip()]
                expressions.append({"key": key, "operator": "In" if operator == "in" else "NotIn", "values": items})
            elif "!=" in part:
                key, value = (x.strip() for x in part.split("!=", 1))
                expressions.append({"key": key, "operator": "NotIn", "values": [value]})
            elif "=" in part:
                key, value = (x.strip() for x in part.replace("==", "=").split("=", 1))
                labels[key] = value
            elif part.startswith("!"):
                expressions.append({"key": part[1:].strip(), "operator": "DoesNotExist"})
            else:
                expressions.append({"key": part, "operator": "Exists"})
        try:
            return cls.model_validate({"matchLabels": labels, "matchExpressions": expressions})
        except ValueError as exc:
            reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise ValueError(f"label selector {text!r}: {reason}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with ``labels`` is selected."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            req.matches(labels) for req in self.match_expressions
        )

    def keys(self) -> set[str]:
        """The label keys the selector reads: its answer for a node depends on these labels' values alone."""
        return set(self.match_labels) | {req.key for req in self.match_expressions}

    def matcher(self) -> Callable[[Mapping[str, str]], bool]:
        """:meth:`matches` for many nodes: answered once per distinct value of the labels it reads (a fleet of
        100,000 devices has a few dozen; a cycle asked every group about every device)."""
        keys, answers = tuple(sorted(self.keys())), {}

        def matches(labels: Mapping[str, str]) -> bool:
            signature = tuple(map(labels.get, keys))
            answer = answers.get(signature)
            if answer is None:
                answer = answers[signature] = self.matches(labels)
            return answer

        return matches

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Rules a schema cannot express: (location below the selector, message) pairs."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        for i, req in enumerate(self.match_expressions):
            loc: tuple[str | int, ...] = ("matchExpressions", i, "values")
            if req.operator in ("In", "NotIn") and not req.values:
                found.append((loc, f"operator {req.operator} needs at least one value"))
            if req.operator in ("Exists", "DoesNotExist") and req.values:
                found.append((loc, f"operator {req.operator} takes no values"))
        return found
