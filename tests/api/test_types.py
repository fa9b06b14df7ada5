"""Field types: durations, quantities, label selectors, as Kubernetes people expect them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from reconciler.api.types import Duration, LabelSelector, Quantity, format_duration, label_key_problem

DURATION = TypeAdapter(Duration)
QUANTITY = TypeAdapter(Quantity)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", timedelta(seconds=30)), ("1h30m", timedelta(minutes=90)), ("250ms", timedelta(milliseconds=250)),
     ("2d", timedelta(days=2)), ("1.5h", timedelta(minutes=90))],
)  # fmt: skip
def test_durations_parse_go_style(text, expected):
    assert DURATION.validate_python(text) == expected


@pytest.mark.parametrize("text", ["10", 10, "", "1x", "m5", "-5s", True])
def test_durations_without_units_are_refused(text):
    with pytest.raises(ValidationError):
        DURATION.validate_python(text)


def test_duration_round_trips_to_its_shortest_spelling():
    for text in ["30s", "1h30m", "250ms", "48h", "1h0m1s"]:
        value = DURATION.validate_python(text)
        assert DURATION.validate_python(format_duration(value)) == value
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert DURATION.dump_python(timedelta(seconds=45), mode="json") == "45s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16Mi", 16 * 2**20), ("1Gi", 2**30), ("500k", 500_000), ("2M", 2_000_000), (4096, 4096), ("1.5Ki", 1536)],
)
def test_quantities_use_kubernetes_suffixes(text, expected):
    assert QUANTITY.validate_python(text) == expected


@pytest.mark.parametrize("text", ["16MB", "-1", -1, "Mi", True, 1.5])
def test_bad_quantities_are_refused(text):
    with pytest.raises(ValidationError):
        QUANTITY.validate_python(text)


@pytest.mark.parametrize(
    ("key", "valid"),
    [("app", True), ("example.com/app", True), ("a.b-c_d", True), ("Example.com/app", False), ("/app", False),
     ("app/", False), ("-app", False), ("a" * 64, False), ("a/b/c", False)],
)  # fmt: skip
def test_label_keys_follow_kubernetes(key, valid):
    assert (label_key_problem(key) is None) == valid


def test_selector_matches_labels_and_expressions():
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"site": "store"},
            "matchExpressions": [
                {"key": "region", "operator": "In", "values": ["eu-west", "eu-central"]},
                {"key": "ring", "operator": "NotIn", "values": ["canary"]},
                {"key": "decommissioned", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches({"site": "store", "region": "eu-west"})
    assert selector.matches({"site": "store", "region": "eu-central", "ring": "main"})
    assert not selector.matches({"site": "store", "region": "us-east"})
    assert not selector.matches({"site": "store", "region": "eu-west", "ring": "canary"})
    assert not selector.matches({"site": "store", "region": "eu-west", "decommissioned": "yes"})
    assert not selector.matches({"region": "eu-west"})
    assert LabelSelector().matches({"anything": "at-all"})
