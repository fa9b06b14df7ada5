"""Every field of the fleet spec means something: each one is read somewhere outside the module that defines
it (the controller, the planner, the build, a validation), so a field that validates but changes nothing fails
here. Fields read by name (datasets looked up by their key) are listed with where."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from reconciler.api import device, fleet, model, rollout

ROOT = Path(__file__).resolve().parents[2] / "reconciler"
DEFINING = {Path(m.__file__).resolve() for m in (device, fleet, model, rollout)}
READ_BY_NAME = {
    "ModelSpec.data.calibration": "optimize/pipeline.py: data.get('calibration'), the datasets by their key",
}


def spec_fields() -> list[str]:
    seen: set[type] = set()
    found: list[str] = []

    def walk(cls: type[BaseModel], path: str) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for name, info in cls.model_fields.items():
            found.append(f"{path}.{name}")
            annotation = info.annotation
            for candidate in (annotation, *getattr(annotation, "__args__", ())):
                for inner in (candidate, *getattr(candidate, "__args__", ())):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        walk(inner, f"{path}.{name}")

    for module in (device, fleet, model, rollout):
        for name, value in sorted(vars(module).items()):
            if isinstance(value, type) and issubclass(value, BaseModel) and name.endswith("Spec"):
                walk(value, name)
    return found


def test_every_spec_field_is_read():
    code = "\n".join(p.read_text() for p in ROOT.rglob("*.py") if p.resolve() not in DEFINING)
    unread = [path for path in spec_fields()
              if path not in READ_BY_NAME and not re.search(rf"\.{path.rsplit('.', 1)[1]}\b", code)]  # fmt: skip
    assert not unread, f"fields nothing reads (use them or remove them from the spec): {unread}"
    assert len(spec_fields()) > 60  # the walk reached the nested models
