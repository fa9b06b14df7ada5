"""Rules between documents: names unique per kind, references resolve, rollouts do not collide.

Pure (no I/O). Each error points at the referencing field (``Rollout/x: spec.groups[1]``), since that is
the line a person edits. Later duplicates are the ones reported, with where the first one lives.
What can only be known with the device inventory (a device in two groups claimed by two rollouts) is
a plan-time error, not checked here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .device import DeviceProfile
from .errors import SpecError, format_field_path
from .model import ONNX_QUANTIZE_MODES, TFLITE_QUANTIZE_MODES, Model, Recipe
from .rollout import Rollout
from .training import FederatedTraining

if TYPE_CHECKING:
    from .loader import Located
    from .source import RawDocument

Finder = Callable[[str, str], "Located | None"]

_QUANTIZE_PRECISION = {"static": "int8", "dynamic": "int8", "int8": "int8", "int8-only": "int8", "float16": "fp16"}
_FORMAT_QUANTIZE_MODES = {"onnx": ONNX_QUANTIZE_MODES, "tflite": TFLITE_QUANTIZE_MODES}


def crosscheck(located: Sequence[Located], broken: Sequence[RawDocument] = ()) -> list[SpecError]:
    """Every cross-document problem among ``located`` (documents that validated on their own). ``broken``:
    documents that did not validate (their own errors are reported already): they still exist for references
    (a Rollout naming a broken Model gets no "unknown Model"), and their references that parsed are checked in
    the same run, so one round of ``edgectl validate`` shows both kinds of mistake."""
    errors: list[SpecError] = []
    names: dict[tuple[str, str], Located] = {}
    for item in sorted(located, key=lambda i: (i.source.path, i.source.line)):
        key = (item.document.kind, item.document.name)
        first = names.get(key)
        if first is None:
            names[key] = item
        else:
            where = f"{first.source.path}:{first.source.line}"
            errors.append(_error(item, ("metadata", "name"), f"duplicate {key[0]} name (first defined at {where})"))
    fleets = [item for (kind, _), item in names.items() if kind == "Fleet"]
    for item in fleets[1:]:
        where = f"{fleets[0].source.path}:{fleets[0].source.line}"
        errors.append(_error(item, ("kind",), f"a fleet repo has at most one Fleet document (first at {where})"))

    present = {(_text(raw.data.get("kind")), _text((raw.data.get("metadata") or {}).get("name"))) for raw in broken
               if isinstance(raw.data, dict) and isinstance(raw.data.get("metadata"), dict)}  # fmt: skip

    def find(kind: str, name: str) -> Located | None:
        return names.get((kind, name))

    def exists(kind: str, name: str) -> bool:
        return (kind, name) in names or (kind, name) in present

    for (kind, _), item in names.items():
        if kind == "Model":
            errors.extend(_check_model(item, find, exists))
        elif kind == "Rollout":
            errors.extend(_check_rollout(item, find, exists))
        elif kind == "FederatedTraining":
            errors.extend(_check_training(item, find, exists))
    for raw in broken:
        errors.extend(_check_raw_references(raw, exists))
    errors.extend(_check_overlaps([i for (k, _), i in names.items() if k == "Rollout"]))
    return errors


def _check_raw_references(raw: RawDocument, exists: Callable[[str, str], bool]) -> list[SpecError]:
    """The references of a document that failed validation, as far as they parsed as names."""
    data = raw.data
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        return []
    spec, kind = data["spec"], _text(data.get("kind"))
    name = _text((data.get("metadata") or {}).get("name")) if isinstance(data.get("metadata"), dict) else None
    found: list[tuple[tuple[str | int, ...], str]] = []
    if kind == "Rollout":
        model = spec.get("model")
        if isinstance(model, str) and not exists("Model", model):
            found.append((("spec", "model"), f"unknown Model {model!r}"))
        for i, group in enumerate(spec.get("groups") if isinstance(spec.get("groups"), list) else []):
            if isinstance(group, str) and not exists("DeviceGroup", group):
                found.append((("spec", "groups", i), f"unknown DeviceGroup {group!r}"))
    elif kind == "Model":
        for i, recipe in enumerate(spec.get("recipes") if isinstance(spec.get("recipes"), list) else []):
            profile = recipe.get("profile") if isinstance(recipe, dict) else None
            if isinstance(profile, str) and not exists("DeviceProfile", profile):
                found.append((("spec", "recipes", i, "profile"), f"unknown DeviceProfile {profile!r}"))
    return [
        SpecError(raw.path, raw.line_of(loc), message, kind, name, format_field_path(loc)) for loc, message in found
    ]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _check_model(item: Located, find: Finder, exists: Callable[[str, str], bool]) -> list[SpecError]:
    model = item.document
    assert isinstance(model, Model)
    errors: list[SpecError] = []
    for i, recipe in enumerate(model.spec.recipes):
        loc = ("spec", "recipes", i)
        found = find("DeviceProfile", recipe.profile)
        if found is None:
            if not exists("DeviceProfile", recipe.profile):
                errors.append(_error(item, (*loc, "profile"), f"unknown DeviceProfile {recipe.profile!r}"))
            continue
        profile = found.document
        assert isinstance(profile, DeviceProfile)
        fmt, precisions = profile.spec.format, profile.spec.precisions
        modes = []
        for j, step in enumerate(recipe.passes):
            if step.convert and step.convert.to != fmt:
                errors.append(
                    _error(
                        item,
                        (*loc, "passes", j, "convert", "to"),
                        f"profile {profile.name} loads {fmt}, not {step.convert.to}",
                    )
                )
            if step.quantize:
                mode = step.quantize.mode
                modes.append(mode)
                mode_loc = (*loc, "passes", j, "quantize", "mode")
                if mode not in _FORMAT_QUANTIZE_MODES[fmt]:
                    allowed = ", ".join(_FORMAT_QUANTIZE_MODES[fmt])
                    errors.append(_error(item, mode_loc, f"{fmt} profiles quantize with {allowed}, not {mode}"))
                elif _QUANTIZE_PRECISION[mode] not in precisions:
                    errors.append(
                        _error(
                            item,
                            mode_loc,
                            f"{mode} produces {_QUANTIZE_PRECISION[mode]}, which profile {profile.name} "
                            f"does not run (precisions: {', '.join(precisions)})",
                        )
                    )
        if profile.spec.integer_only and "int8-only" not in modes:
            errors.append(
                _error(
                    item,
                    (*loc, "passes"),
                    f"profile {profile.name} is integerOnly: the recipe needs a quantize pass with mode int8-only",
                )
            )
        errors.extend(_check_source_formats(item, model, i, recipe, fmt))
    return errors


def _check_source_formats(item: Located, model: Model, index: int, recipe: Recipe, fmt: str) -> list[SpecError]:
    """What only a Keras source can go through: training passes (prune, distill) and TFLite conversion."""
    errors = []
    others = [(v.version, v.source.resolved_format) for v in model.spec.versions]
    others = [(version, found) for version, found in others if found not in (None, "keras")]
    if not others:
        return errors
    version, found = others[0]
    if fmt == "tflite":
        errors.append(_error(item, ("spec", "recipes", index, "profile"),
                             f"profile {recipe.profile} loads tflite, which is converted from Keras sources; version "
                             f"{version} is {found} (use an onnx profile)"))  # fmt: skip
    for j, step in enumerate(recipe.passes):
        if step.prune or step.distill:
            errors.append(_error(item, ("spec", "recipes", index, "passes", j, step.kind),
                                 f"{step.kind} trains the model and needs a Keras source; version {version} is "
                                 f"{found}"))  # fmt: skip
    return errors


def _check_rollout(item: Located, find: Finder, exists: Callable[[str, str], bool]) -> list[SpecError]:
    rollout = item.document
    assert isinstance(rollout, Rollout)
    errors: list[SpecError] = []
    model_item = find("Model", rollout.spec.model)
    if model_item is None:
        if not exists("Model", rollout.spec.model):  # a broken Model's own errors say what is wrong with it
            errors.append(_error(item, ("spec", "model"), f"unknown Model {rollout.spec.model!r}"))
    else:
        model = model_item.document
        assert isinstance(model, Model)
        if model.version(rollout.spec.version) is None:
            known = ", ".join(v.version for v in model.spec.versions)
            errors.append(
                _error(
                    item,
                    ("spec", "version"),
                    f"model {model.name} has no version {rollout.spec.version!r} (known: {known})",
                )
            )
    for i, group in enumerate(rollout.spec.groups):
        if not exists("DeviceGroup", group):
            errors.append(_error(item, ("spec", "groups", i), f"unknown DeviceGroup {group!r}"))
        elif (found := find("DeviceGroup", group)) is not None and found.document.spec.role == "lab":
            errors.append(
                _error(
                    item,
                    ("spec", "groups", i),
                    f"DeviceGroup {group} is a lab (role: lab): its devices "
                    "benchmark every rollout of their profile and are never rolled out to",
                )
            )
    return errors


def _check_training(item: Located, find: Finder, exists: Callable[[str, str], bool]) -> list[SpecError]:
    """A training names a classifier's ONNX base version and fleet groups, and proposes a version not taken."""
    training = item.document
    assert isinstance(training, FederatedTraining)
    spec, errors = training.spec, []
    model_item = find("Model", spec.model)
    if model_item is None:
        if not exists("Model", spec.model):
            errors.append(_error(item, ("spec", "model"), f"unknown Model {spec.model!r}"))
    else:
        model = model_item.document
        assert isinstance(model, Model)
        base = model.version(spec.base_version)
        if base is None:
            known = ", ".join(v.version for v in model.spec.versions)
            message = f"model {model.name} has no version {spec.base_version!r} (known: {known})"
            errors.append(_error(item, ("spec", "baseVersion"), message))
        elif spec.trainer == "head" and base.source.resolved_format != "onnx":
            message = (f"the head trainer fine-tunes an ONNX source's last layer; version {base.version} is "
                       f"{base.source.resolved_format} (export it to ONNX as a version first)")  # fmt: skip
            errors.append(_error(item, ("spec", "baseVersion"), message))
        if model.spec.task != "classification":
            errors.append(_error(item, ("spec", "model"),
                                 f"model {model.name} is a {model.spec.task} model; federated training fine-tunes "
                                 "classifiers"))  # fmt: skip
    for i, group in enumerate(spec.groups):
        if not exists("DeviceGroup", group):
            errors.append(_error(item, ("spec", "groups", i), f"unknown DeviceGroup {group!r}"))
        elif (found := find("DeviceGroup", group)) is not None and found.document.spec.role == "lab":
            errors.append(_error(item, ("spec", "groups", i),
                                 f"DeviceGroup {group} is a lab (role: lab): lab devices benchmark, they do not "
                                 "train"))  # fmt: skip
    return errors


def _check_overlaps(rollouts: Sequence[Located]) -> list[SpecError]:
    """Two active rollouts of one model on one group would fight over the same devices."""
    errors: list[SpecError] = []
    claimed: dict[tuple[str, str], Located] = {}
    for item in rollouts:
        rollout = item.document
        assert isinstance(rollout, Rollout)
        if not rollout.active:
            continue
        for i, group in enumerate(rollout.spec.groups):
            key = (rollout.spec.model, group)
            other = claimed.setdefault(key, item)
            if other is not item:
                errors.append(
                    _error(
                        item,
                        ("spec", "groups", i),
                        f"Rollout {other.document.name} already delivers model {rollout.spec.model} to group "
                        f"{group} ({other.source.path}:{other.source.line}); suspend or remove one of them",
                    )
                )
    return errors


def _error(item: Located, loc: tuple[str | int, ...], message: str) -> SpecError:
    source = item.source
    return SpecError(
        source.path, source.line_of(loc), message, item.document.kind, item.document.name, format_field_path(loc)
    )
