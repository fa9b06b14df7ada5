"""The chart's alert rules and Grafana dashboard: the rules pass ``promtool check rules`` and fire as their unit
tests say (``promtool test rules``), the chart renders them into a PrometheusRule and a dashboard ConfigMap, and
every metric they read is one the controller exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from reconciler.controller.metrics import ControllerMetrics

from .test_chart import render

CHART = Path(__file__).resolve().parents[2] / "charts" / "edge-reconciler"
RULES = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
HERE = Path(__file__).resolve().parent


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/bootstrap --test installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=HERE)


def test_the_alert_rules_pass_promtool_and_fire_as_their_unit_tests_say():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def exported_metrics() -> set[str]:
    """Every series name the controller's registry exposes (counters with ``_total``, histograms' ``_bucket``)."""
    metrics = ControllerMetrics()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update({f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count", "_created")})
    return names


def series_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(edge_reconciler_[a-z_]+)", expr))


def test_every_metric_the_rules_and_the_dashboard_read_is_exported():
    exported = exported_metrics()
    rules = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [rule["expr"] for group in rules for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    read = set().union(*(series_names(e) for e in exprs))
    assert read and read <= exported, f"not exported: {sorted(read - exported)}"
    # The dashboard shows what the issue of watching a fleet asks for: gates, versions, latency, drift, lag.
    for needed in ("edge_reconciler_rollout_gate_value", "edge_reconciler_version_devices",
                   "edge_reconciler_inference_latency_ms", "edge_reconciler_drift_ks",
                   "edge_reconciler_telemetry_last_received_timestamp_seconds"):  # fmt: skip
        assert needed in read


def test_the_chart_renders_the_rules_and_the_dashboard_when_asked():
    values = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                          "grafanaDashboard": {"enabled": True}}}  # fmt: skip
    documents = render(values, "fleet", "edge")
    [rule] = [d for d in documents if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    [dashboard] = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["edge-reconciler.json"]) == json.loads(DASHBOARD.read_text())
    kinds = {d["kind"] for d in render({}, "fleet", "edge")}
    assert "PrometheusRule" not in kinds  # off by default: a cluster without the operator's CRDs installs cleanly
