"""Arbitrary input never crashes the loader: only SpecErrors (or a valid tree) come out."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.api import KINDS, SourceFile, SpecErrors, load_fleet

KEYS = ["apiVersion", "kind", "metadata", "name", "spec", "selector", "matchLabels", "matchExpressions", "key",
        "operator", "values", "versions", "version", "source", "uri", "sha256", "steps", "percent", "pause",
        "duration", "groups", "model", "recipes", "profile", "passes", "quantize", "mode", "runtime", "format",
        "precisions", "limits", "maxModelSize", "analysis", "maxUnavailable", "[key]", "", "0"]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["edgereconciler.io/v1alpha1", *KINDS, "In", "Exists", "10%", "16Mi", "30s", "1.0.0", "onnx"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()), children, max_size=5)
    ),
    max_leaves=25,
)
DOCUMENTS = st.fixed_dictionaries(
    {"apiVersion": st.sampled_from(["edgereconciler.io/v1alpha1", "v1", None]), "kind": st.sampled_from([*KINDS, 7])},
    optional={"metadata": VALUES, "spec": VALUES},
)


def _load(content: bytes) -> None:
    try:
        load_fleet([SourceFile("fuzz.yaml", content)])
    except SpecErrors as exc:
        assert exc.errors
        assert all(str(e).startswith("fuzz.yaml:") and "\n" not in str(e) for e in exc.errors)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(DOCUMENTS, VALUES), min_size=1, max_size=3))
def test_structured_yaml_gives_only_spec_errors(documents):
    _load(yaml.safe_dump_all(documents).encode())


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#%@`,?\n\t 0.\\")), max_size=120))
def test_yaml_like_text_gives_only_spec_errors(text):
    _load(text.encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_only_spec_errors(content):
    _load(content)
