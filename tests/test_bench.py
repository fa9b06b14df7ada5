"""The benchmarks, run as a person runs them (``python bench/X.py --quick``): each must finish, print its figure
lines, and refuse to print figures of empty work.

A benchmark that times nothing still exits 0 and prints figures (bench/apply_kube.py printed "first apply 0
assignments" once the example rollout's conditions asked for a network label its Nodes lacked), so every script
checks its own workload through bench/_check.py; the last tests here show that check failing the run, through
the scripts' own code.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.api import load_fleet
from reconciler.gitops.files import read_fleet_dir

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
NUMBER = r"\d+(\.\d+)?"


def run_bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def quick(script: str, *args: str, timeout: float = 300) -> str:
    """stdout of a ``--quick`` run that exited 0."""
    result = run_bench(script, "--quick", *args, timeout=timeout)
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def assert_lines(output: str, *patterns: str) -> None:
    """Every pattern matches one whole line of ``output``."""
    for pattern in patterns:
        assert re.search(f"^{pattern}$", output, re.MULTILINE), f"no line matches {pattern!r} in:\n{output}"


def test_plan_fleet_quick():
    output = quick("plan_fleet.py", timeout=60)
    assert_lines(
        output,
        r"1000 devices, 20 groups, 10 rollouts, 3 profiles",
        rf"  plan +{NUMBER} s  \([1-9]\d* assignments, [1-9]\d* on the new version\)",
        rf"  naive selector pass +{NUMBER} s  \([1-9]\d* group matches\)",
        rf"  ratio naive/plan +{NUMBER}x",
    )


def test_plan_inventory_quick():
    output = quick("plan_inventory.py", timeout=300)
    assert_lines(
        output,
        rf"edgectl plan, kubectl node list of 200 nodes \({NUMBER} MiB\)",
        rf"  plan \(whole process\) +{NUMBER} s  \(best of 3\)",
        rf"  pure-Python YAML parse alone +{NUMBER} s  \(baseline: how the inventory was read\)",
        rf"  ratio +{NUMBER}x",
    )


def test_load_fleet_quick():
    output = quick("load_fleet.py", timeout=60)
    assert_lines(
        output,
        r"documents: 83  files: 21  bytes: \d+",
        r"load_fleet \(scan \+ C parse \+ validate \+ cross-check\): \d+ ms  \(\d+ documents/s\)",
        r"baseline yaml.safe_load_all \(pure-Python parse only\):  \d+ ms",
        rf"ratio baseline / load_fleet: {NUMBER}x",
    )


@pytest.mark.kube
def test_apply_kube_quick(kubeconfig: Path):
    output = quick("apply_kube.py", "--kubeconfig", str(kubeconfig), timeout=180)
    assert_lines(
        output,
        rf"20 Nodes registered in {NUMBER} s",
        rf"first apply +20 assignments +{NUMBER} s  \d+ requests .*",
        rf"sequential apply +20 assignments +{NUMBER} s  \(baseline, one at a time\)",
        rf"ratio sequential/first  {NUMBER}x",
        rf"no-op reconcile +0 writes +{NUMBER} s  \d+ requests",
        rf"commit -> [1-9]\d* assignments written and status committed: {NUMBER} s \(stalled: None\)",
    )


def test_publish_releases_quick():
    output = quick("publish_releases.py", timeout=240)
    assert_lines(
        output,
        r"5 releases of a \d+ KiB artifact",
        rf"  verify alone \(baseline\): +{NUMBER} s  \({NUMBER} ms each\)",
        rf"  first sync: +{NUMBER} s  \({NUMBER}x the baseline: verify \+ publish\)",
        rf"  idle sync: +{NUMBER} ms \({NUMBER}x the baseline\)",
        rf"  sync after one release: +{NUMBER} ms \(one verification, one new targets version\)",
        r"  targets metadata: 24 files listed in the newest version; all versions together \d+ KiB",
    )


def test_sign_verify_quick():
    output = quick("sign_verify.py", timeout=300)
    timed = rf" +{NUMBER} ms \( *{NUMBER}x\)"
    measured = rf" +{NUMBER} MB  sha256 +{NUMBER} ms  sign{timed}  verify{timed}"
    assert_lines(
        output,
        r"fleet-example: 2 artifacts \(best of 1 runs\)",
        rf"  vibration-anomaly@1\.0\.0 arm-cortex-a-cpu{measured}  release.sig\+json \d+ B",
        rf"  vibration-anomaly@2\.0\.0 arm-cortex-a-cpu{measured}  release.sig\+json \d+ B",
        rf"  resnet50@1\.0\.0 arm-cortex-a-cpu{measured}  release.sig\+json \d+ B",
        r"  TUF targets entries +\d+ B \(\d+ B for 2\)",
        rf"  publish 8 targets +{NUMBER} ms",
    )


def test_agent_transfer_quick():
    output = quick("agent_transfer.py", timeout=300)
    assert_lines(
        output,
        r"interrupted download of 67108864 bytes, killed at [1-9]\d* bytes on disk:",
        r"  bytes transferred twice +\d+ \(\d+\.\d+% of the file; chunk size 262144\)",
        rf"  vibration-anomaly 1\.0\.0->2\.0\.0 arm-cortex-a-cpu +[1-9]\d* +[1-9]\d* +[1-9]\d* +{NUMBER}",
        r"serving vibration-anomaly 1\.0\.0 \(arm-cortex-a-cpu\), 1 thread, one sample per request, 100 requests",
        rf"  HTTP predict p50 / p95 +{NUMBER} / {NUMBER} ms",
        rf"  RSS serving over HTTP +{NUMBER} MiB",
    )


def test_build_matrix_quick():
    output = quick("build_matrix.py", timeout=600)
    for model in (r"digits-cnn 1\.0\.0", r"resnet50-light \(folded, placeholder weights\)"):
        section = re.search(rf"^{model} \(1 thread, .*?(?=^\S|\Z)", output, re.MULTILINE | re.DOTALL)
        assert section, f"no {model} section in:\n{output}"
        assert_lines(section.group(), rf"  size int8/fp32 +{NUMBER}", rf"  latency fp32/int8 +{NUMBER}")
    assert_lines(
        output,
        rf"resnet50: static quantization with 2 calibration images took {NUMBER} s",
        r"fleet-example: 1 builds \(one version x one recipe profile\), 0 refused",
        rf"  cold build \(empty store\) +{NUMBER} s",
        rf"  warm build \(cache hits\) +{NUMBER} s   \(1/1 cached\)",
        r"  ratio cold/warm +\d+x",
        r"search: digits-cnn 1\.0\.0 \(1 thread, 20 runs; fp32 accuracy [\d.]+; ranked by accuracy, then output "
        r"error\)",
        rf"  percentile +{NUMBER} +{NUMBER} +[+-]\S+ +{NUMBER} +{NUMBER}",
        r"search: mobilenetv2 alpha 0\.35 96x96 \(trained \d+ s, logits\) .*",
        r"search beat plain static INT8 \(minmax\) on \d of 2 models: .*",
    )


def test_a_benchmark_of_empty_work_fails_and_says_why():
    result = run_bench("plan_fleet.py", "0", timeout=60)
    assert result.returncode == 1
    assert "not measured: the plan for 0 devices holds no assignment" in result.stderr
    assert "ratio" not in result.stdout


def test_apply_kube_refuses_nodes_the_example_rollout_does_not_reach(monkeypatch, capsys):
    """The regression: Nodes without the network label of the rollout's conditions got nothing, and the
    benchmark timed an apply of 0 assignments. The check names the missing label before any Node exists."""
    monkeypatch.syspath_prepend(str(BENCH))
    apply_kube = importlib.import_module("apply_kube")
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    apply_kube.check_labels(tree, apply_kube.LABELS)

    unlinked = {k: v for k, v in apply_kube.LABELS.items() if k != "acme.example/network"}
    with pytest.raises(SystemExit) as ended:
        apply_kube.check_labels(tree, unlinked)
    assert ended.value.code == 1
    message = capsys.readouterr().err
    assert "not measured: Nodes labelled" in message
    assert "vibration-anomaly-2's conditions need acme.example/network In ['ethernet', 'wifi']" in message


def test_device_api_quick():
    output = quick("device_api.py", timeout=120)
    assert_lines(
        output,
        rf"50 devices with one assignment each, certificates issued by the fleet CA directly \({NUMBER} s to prepare\)",
        r"  requests +250  \(50 x 200, 200 x 304, 0 errors\)",
        rf"  requests/s +{NUMBER}  \(offered: 25\.0\)",
        rf"  latency p50 / p99 / max +{NUMBER} / {NUMBER} / {NUMBER} ms",
        r"  TLS connections opened +[1-9]\d* for 250 requests",
        rf"  server CPU +{NUMBER} s  \({NUMBER} s per 1,000 requests, {NUMBER}% of one core\)",
        rf"  server RSS +{NUMBER} MiB  \(before the window: {NUMBER} MiB\)",
        rf"  device API \(mTLS, aiohttp\) +{NUMBER} MB/s  p50 {NUMBER} s per download  server CPU .*",
        rf"  http\.server \(HTTP, curl\) +{NUMBER} MB/s  p50 {NUMBER} s per download  server CPU .*",
        rf"  ratio device API / baseline {NUMBER}x",
    )


def test_device_api_busy_quick():
    output = quick("device_api.py", "--busy", timeout=120)
    assert_lines(
        output,
        r"busy server, Python's default switch interval \(5 ms\):",
        r"busy server, the device API's switch interval:",
        rf"  ratio device API / default: p50 {NUMBER}x, p99 {NUMBER}x",
    )
    assert output.count("  requests                  250  (50 x 200, 200 x 304, 0 errors)") == 2


def test_agent_faults_quick():
    output = quick("agent_faults.py", timeout=600)
    assert re.search(r"rounds: 40; killed \d+", output)
    assert "unverified or missing active model after a kill: 0 of 40 (goal 0)" in output
    assert "converged after the restart: 40 of 40" in output


def test_agent_serve_quick():
    output = quick("agent_serve.py", timeout=600)
    assert_lines(
        output,
        rf"edgectl agent --serve, vibration-anomaly 1\.0\.0 \(arm-cortex-a-cpu\), 100 requests "
        rf"\({NUMBER}/s, one client\)",
        rf"  RSS agent process +{NUMBER} MiB",
        rf"  RSS model server process +{NUMBER} MiB",
        rf"  RSS both +{NUMBER} MiB",
        rf"  RSS bare onnxruntime +{NUMBER} MiB  \(baseline: the model in a session, nothing else\)",
        rf"  ratio both / baseline +{NUMBER}x",
    )


def test_agent_link_quick():
    output = quick("agent_link.py", timeout=600)
    assert_lines(
        output,
        r"4,\d{3},\d{3} bytes over 1,000,000 B/s with 3 cuts \(agent -> TCP proxy -> device API, mutual TLS\)",
        rf"  time to Healthy +{NUMBER} s  \(the bytes alone at that rate: {NUMBER} s; {NUMBER}x; unthrottled and "
        rf"uncut: {NUMBER} s\)",
        rf"  bytes the agent fetched twice +\d+    \({NUMBER} per cut, {NUMBER} of a 256 KiB chunk\)",
        rf"  bytes on the wire +\d+    \({NUMBER}x the uncut install's \d+; {NUMBER} more per cut: "
        r"what was in flight\)",
    )
    refetched = int(re.search(r"bytes the agent fetched twice +(\d+)", output)[1])
    assert refetched <= 3 * 256 * 1024  # a resume repeats at most the chunk in flight, never the file


def test_controller_cycle_quick():
    output = quick("controller_cycle.py", timeout=600)
    assert_lines(
        output,
        r"controller cycle, 300 devices Healthy, 30 days of hourly telemetry in the store",
        rf"  cycle time with telemetry +{NUMBER} s  \(median of 5; gate window 1 h; nothing to apply\)",
        rf"  cycle time without telemetry +{NUMBER} s  \(baseline\)",
        rf"  ratio +{NUMBER}x",
        rf"  controller peak RSS +{NUMBER} MiB  \(a controller process started on the month's state\)",
        rf"  controller peak RSS, baseline +{NUMBER} MiB  \({NUMBER}x\)",
        r"  store writes +\d+ /s  \(one transaction per summary\)",
        rf"  compaction +{NUMBER} s  \(a month's hours into days, 20,000 rows a call\)",
        rf"  gate window 1 h +{NUMBER} s  \([\d,]+ rows\)",
        rf"  gate window 7 d +{NUMBER} s  \([\d,]+ rows\)",
        rf"  gate window 30 d +{NUMBER} s  \(22,800 rows\)",
        rf"  telemetry in the store +{NUMBER} MiB  \(22,800 rows, \d+ bytes of summary each; {NUMBER} KiB per "
        r"device\)",
    )


def test_target_check_quick():
    output = quick("target_check.py", timeout=900)
    assert_lines(
        output,
        rf"environment: first call {NUMBER} s \({NUMBER} MB\), cached {NUMBER} ms",
        r"vibration-anomaly   1\.0\.0    arm-cortex-a-cpu  fp32 +\S+",
        rf"one check \(vibration-anomaly 1\.0\.0, \w+, 8 rows\): {NUMBER} s emulated .* x{NUMBER}; outputs within \S+",
    )


def test_drift_quick():
    output = quick("drift.py", timeout=300)
    assert_lines(
        output,
        rf"  1 request/s  sketches every 600 s {NUMBER} KiB  \(sketches at every hand-over {NUMBER} KiB, ratio "
        rf"{NUMBER}x; counts alone {NUMBER} KiB\)",
        r"drift evaluation, 500 devices \(fleet, 2 profiles, 10 groups, every device; 34 figures\)",
        rf"  sketches merged and compared  {NUMBER} s  \({NUMBER} ms/device; \d+ device\(s\) flagged on "
        r"reference-like data\)",
        rf"  ratio                         {NUMBER}x",
        r"  100 devices, 6 h window  flagged after \d+ min of shifted data  \(0 other input feature\(s\) flagged on "
        r"the way\)",
    )


@pytest.mark.timeout(900)
def test_scale_quick(tmp_path: Path):
    """A real rollout to 40 simulated devices through the scale benchmark's own path, its figures kept in a results
    file that the next run compares with."""
    kept = tmp_path / "scale.json"
    output = quick("scale.py", "--record", "--results", str(kept), timeout=900)
    assert_lines(
        output,
        r"40 devices \(40 enrolled, \d+ s wall\)",
        rf"  converged 50/90/99 %: {NUMBER} / {NUMBER} / ({NUMBER}|None) s after the commit; rollout Succeeded in "
        rf"{NUMBER} s",
        rf"  controller: \d+ cycles, p50 {NUMBER} s, p99 {NUMBER} s, peak RSS {NUMBER} MiB \(\+ {NUMBER} MiB in device "
        r"API helpers\), 0 errors logged",
        rf"  device API: [\d,]+ requests, p50 {NUMBER} ms, p99 {NUMBER} ms, \d+ unanswered, 0 5xx, 0 429",
        rf"  defective 2\.1\.0: Aborted in {NUMBER} s, given to \d+ devices \({NUMBER}% of the fleet\)",
        r"  against 0 earlier runs: no regression",
    )
    [run] = json.loads(kept.read_text())["runs"]
    assert run["sizes"]["40"]["converged50Seconds"] > 0 and run["sizes"]["40"]["cycleP99Seconds"] > 0
