"""JSON Schemas of the fleet documents, one per kind, generated from the pydantic models.

Pure (no I/O): returns file names and text; ``edgectl schema export`` writes them. The schemas carry
``$id``, titles and descriptions (from the models' docstrings) so yaml-language-server can validate
and document fleet files in an editor. The checked-in copies under ``schemas/`` are tested against a
fresh export, so they never drift from the code.
"""

from __future__ import annotations

import json

from .document import API_VERSION
from .kinds import KINDS

SCHEMA_BASE_URL = "https://edgereconciler.io/schemas/" + API_VERSION.split("/")[1]
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_file_name(kind: str) -> str:
    return f"{kind.lower()}.json"


def kind_schema(kind: str) -> dict:
    """The JSON Schema of one document kind."""
    cls = KINDS[kind]
    generated = cls.model_json_schema(by_alias=True, mode="validation")
    schema = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE_URL}/{schema_file_name(kind)}",
        "title": kind,
        "description": (cls.__doc__ or "").strip(),
    }
    schema.update({k: v for k, v in generated.items() if k not in ("title", "description")})
    return schema


def export_schemas() -> dict[str, str]:
    """File name → JSON text for every kind, formatted stably so diffs stay readable."""
    return {schema_file_name(kind): json.dumps(kind_schema(kind), indent=2, sort_keys=True) + "\n" for kind in KINDS}
