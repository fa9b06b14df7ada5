"""The checked-in schemas/ must equal a fresh export: regenerate with `make schemas` after changing a model."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.api import KINDS
from reconciler.api.schema import SCHEMA_BASE_URL, export_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_match_a_fresh_export():
    fresh = export_schemas()
    on_disk = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    assert sorted(on_disk) == sorted(fresh), "schemas/ has missing or extra files: run `make schemas`"
    stale = [name for name, text in fresh.items() if on_disk[name] != text]
    assert not stale, f"schemas/ drifted from the models: {stale}; run `make schemas`"


def test_schemas_carry_ids_titles_and_descriptions():
    for name, text in export_schemas().items():
        schema = json.loads(text)
        assert schema["$id"] == f"{SCHEMA_BASE_URL}/{name}"
        assert schema["title"] in KINDS
        assert schema["description"]
        assert schema["properties"]["kind"]["const"] == schema["title"]
        described = [d for d in schema.get("$defs", {}).values() if d.get("description")]
        assert len(described) == len(schema.get("$defs", {})), f"{name}: every definition needs a description"
