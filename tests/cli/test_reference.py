"""The generated reference pages in docs/ are what the code says now (regenerate: edgectl docs generate docs/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.cli.reference import CLI_PAGE, SPEC_PAGE, cli_reference, spec_reference

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(("page", "render"), [(SPEC_PAGE, spec_reference), (CLI_PAGE, lambda: cli_reference(main))])
def test_reference_pages_are_current(page: str, render):
    assert (DOCS / page).read_text() == render(), f"docs/{page} is stale: run `edgectl docs generate docs/`"


def test_the_spec_reference_covers_every_field_of_a_rollout():
    text = spec_reference()
    for field in ("maxFailureRate", "maxDriftPSI", "maintenanceWindow", "groupStrategy", "percent", "pause"):
        assert f"| `{field}` |" in text
