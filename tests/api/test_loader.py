"""Loading whole trees: what is read, what is ignored, where errors point, and the example fleet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from reconciler.api import Limits, SourceFile, SpecErrors, load_fleet
from reconciler.api.schema import export_schemas, schema_file_name
from reconciler.gitops.files import FleetPathError, read_fleet_dir

GROUP = """apiVersion: edgereconciler.io/v1alpha1
kind: DeviceGroup
metadata: {name: %s}
spec:
  selector: {matchLabels: {site: store}}
"""


def test_example_fleet_is_valid_and_complete(fleet_example: Path):
    tree = load_fleet(read_fleet_dir(fleet_example))
    assert tree.counts() == {"Fleet": 1, "DeviceProfile": 3, "DeviceGroup": 3, "Model": 2, "Rollout": 2}
    assert {p.spec.format for p in tree.profiles.values()} == {"onnx", "tflite"}
    assert {p.spec.accelerator for p in tree.profiles.values()} >= {"none", "gpu", "tpu"}
    assert {n: len(m.spec.versions) for n, m in tree.models.items()} == {"digits-cnn": 3, "vibration-anomaly": 2}
    assert tree.fleet.name == "acme-edge"


def test_example_fleet_documents_validate_against_exported_schemas(fleet_example: Path):
    """The JSON Schemas are what editors check with: they must accept every real document."""
    schemas = {name: json.loads(text) for name, text in export_schemas().items()}
    checked = 0
    for path in fleet_example.rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            jsonschema.validate(document, schemas[schema_file_name(document["kind"])])
            checked += 1
    assert checked == 11


def test_schemas_refuse_what_the_loader_refuses():
    schema = json.loads(export_schemas()["rollout.json"])
    document = {
        "apiVersion": "edgereconciler.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "r"},
        "spec": {"model": "m", "version": "1", "groups": ["g"], "steps": [{"percent": 100}], "maxUnavailble": 1},
    }
    with pytest.raises(jsonschema.ValidationError, match="maxUnavailble"):
        jsonschema.validate(document, schema)


def test_status_folder_and_hidden_folders_are_ignored(tmp_path: Path):
    (tmp_path / "groups.yaml").write_text(GROUP % "stores")
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "rollouts.yaml").write_text("this: [is not: a fleet document")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "plan.yml").write_text("on: [pull_request]\njobs: {}\n")
    (tmp_path / "notes.txt").write_text("not yaml at all: [")
    tree = load_fleet(read_fleet_dir(tmp_path))
    assert list(tree.groups) == ["stores"]


def test_custom_status_path_is_ignored_too(tmp_path: Path):
    fleet = "apiVersion: edgereconciler.io/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nspec: {statusPath: state}\n"
    (tmp_path / "fleet.yaml").write_text(fleet)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "x.yaml").write_text("kind: Whatever\n")
    assert load_fleet(read_fleet_dir(tmp_path)).fleet.spec.status_path == "state"


def test_multi_document_files_and_empty_documents(tmp_path: Path):
    (tmp_path / "groups.yml").write_text("---\n# only a comment\n---\n" + GROUP % "a" + "---\n" + GROUP % "b")
    assert sorted(load_fleet(read_fleet_dir(tmp_path)).groups) == ["a", "b"]


def test_errors_of_all_files_come_together_sorted(tmp_path: Path):
    (tmp_path / "b.yaml").write_text("kind: [\n")
    (tmp_path / "a.yaml").write_text(GROUP % "Bad_Name")
    with pytest.raises(SpecErrors) as raised:
        load_fleet(read_fleet_dir(tmp_path))
    assert [(e.path, e.line) for e in raised.value.errors] == [("a.yaml", 3), ("b.yaml", 2)]


def test_unreadable_and_oversized_files_are_errors_not_crashes(tmp_path: Path):
    (tmp_path / "ok.yaml").write_text(GROUP % "ok")
    os.symlink(tmp_path / "missing-target.yaml", tmp_path / "dangling.yaml")
    (tmp_path / "huge.yaml").write_bytes(b"a: " + b"x" * 2048)
    with pytest.raises(SpecErrors) as raised:
        load_fleet(read_fleet_dir(tmp_path, Limits(max_file_bytes=1024)), Limits(max_file_bytes=1024))
    messages = {e.path: e.message for e in raised.value.errors}
    assert messages["dangling.yaml"].startswith("cannot read file: No such file or directory")
    assert messages["huge.yaml"] == "file is 2051 bytes, over the limit of 1024"
    assert "ok.yaml" not in messages


def test_missing_root_is_a_path_error(tmp_path: Path):
    with pytest.raises(FleetPathError, match="no such file or directory"):
        read_fleet_dir(tmp_path / "nope")


def test_a_single_file_can_be_loaded(tmp_path: Path):
    path = tmp_path / "one.yaml"
    path.write_text(GROUP % "solo")
    assert list(load_fleet(read_fleet_dir(path)).groups) == ["solo"]


def test_suspended_rollouts_do_not_overlap(tmp_path: Path):
    base = (Path(__file__).parent / "corpus" / "base" / "fleet.yaml").read_bytes()
    suspended = b"""apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata: {name: digits-1}
spec: {model: digits, version: "1.0.0", groups: [lab], steps: [{percent: 100}], suspend: true}
"""
    tree = load_fleet([SourceFile("base.yaml", base), SourceFile("old.yaml", suspended)])
    assert [r.active for r in tree.rollouts.values()] == [True, False]


def test_documents_keep_their_source_for_later_errors(fleet_example: Path):
    tree = load_fleet(read_fleet_dir(fleet_example))
    source = tree.sources[("Rollout", "digits-cnn-1-1")]
    assert source.path == "rollouts/digits-cnn-1-1.yaml"
    assert source.line_of(("spec", "steps", 2, "pause")) == 17


def test_regression_newline_in_key_keeps_each_error_on_one_line():
    """Found by the fuzz test: a key holding a newline split one error over two lines."""
    document = b'apiVersion: edgereconciler.io/v1alpha1\nkind: Fleet\nmetadata: {"na\\nme": x, name: "a\\nb"}\n'
    with pytest.raises(SpecErrors) as raised:
        load_fleet([SourceFile("f.yaml", document)])
    assert [str(e) for e in raised.value.errors] == [
        r"f.yaml:3: Fleet/a\nb: metadata.name: invalid name 'a\nb': use at most 63 lowercase letters, digits and "
        "'-', starting and ending with a letter or digit",
        r"f.yaml:3: Fleet/a\nb: metadata['na\nme']: unknown field 'na\nme'; did you mean 'name'?",
    ]


def test_reference_errors_come_in_the_same_run_as_type_errors(tmp_path: Path, fleet_example: Path):
    """One round of validate shows everything: a Rollout with a type error still has its unknown group
    reported, and a Rollout naming a Model that has a type error gets no false "unknown Model"."""
    import shutil

    repo = Path(shutil.copytree(fleet_example, tmp_path / "fleet", ignore=shutil.ignore_patterns("*.keras", "*.npz")))
    rollout = repo / "rollouts" / "vibration-anomaly-2.yaml"
    rollout.write_text(rollout.read_text().replace("maxUnavailable: 2", "maxUnavailable: lots")
                       .replace("groups: [us-factories]", "groups: [us-factories, moon-bases]"))  # fmt: skip
    model = repo / "models" / "digits-cnn.yaml"
    model.write_text(model.read_text().replace("  task: classification", "  task: telepathy", 1))
    with pytest.raises(SpecErrors) as refused:
        load_fleet(read_fleet_dir(repo))
    messages = [f"{e.kind}/{e.name}: {e.field}: {e.message}" for e in refused.value.errors]
    assert any(m.startswith("Rollout/vibration-anomaly-2: spec.maxUnavailable:") for m in messages), messages
    assert "Rollout/vibration-anomaly-2: spec.groups[1]: unknown DeviceGroup 'moon-bases'" in messages
    assert any(m.startswith("Model/digits-cnn: spec.task:") for m in messages), messages
    assert not any("unknown Model" in m for m in messages), messages  # digits-cnn exists, it is only broken
