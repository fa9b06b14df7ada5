"""The agent converges a device through download, verify, A/B install and health check, and refuses bad
artifacts and bad metadata without ever changing the model it serves."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from reconciler.agent.slots import ModelSlots
from reconciler.signing import Expectation, verify_artifact
from reconciler.signing.tuf_repo import utcnow

from ..device_fleet import MODEL, PROFILE, Fleet, skew_golden


def serving(fleet: Fleet, data_dir: Path) -> str | None:
    """The version the device's active slot holds, after verifying that slot like a fresh boot would."""
    active = ModelSlots(data_dir, MODEL).active_dir()
    if active is None:
        return None
    policy = fleet.agent().config.policy
    return verify_artifact(active, policy, Expectation(MODEL, None, PROFILE)).version


def test_install_upgrade_and_keep_the_previous_slot(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("Healthy", "1.0.0")
    assert fleet.backend.statuses()[("factory-1", MODEL)].phase == "Healthy"
    assert serving(fleet, agent.data_dir) == "1.0.0"

    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version, status.previous_version) == ("Healthy", "2.0.0", "1.0.0")
    assert serving(fleet, agent.data_dir) == "2.0.0"
    assert status.extra["bytesTransferred"] > 0
    reported = fleet.backend.statuses()[("factory-1", MODEL)]
    assert reported.installed_version == "2.0.0" and reported.observed_generation == 2

    # Back to 1.0.0 (a rollback by the controller): allowed, the release is not revoked.
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].installed_version == "1.0.0"


def test_a_download_left_half_done_resumes_where_it_stopped(fleet: Fleet):
    released = fleet.release("1.0.0", 1)
    fleet.publish(released)
    model = released / "model.onnx"
    data, digest = model.read_bytes(), hashlib.sha256(model.read_bytes()).hexdigest()
    agent = fleet.agent()
    (agent.data_dir / "partial").mkdir(parents=True, exist_ok=True)
    (agent.data_dir / "partial" / f"{digest}.part").write_bytes(data[: len(data) // 2])  # a cut, a reboot
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("Healthy", "1.0.0")
    others = sum(f.stat().st_size for f in released.iterdir()) - len(data)
    assert agent.bytes_transferred <= len(data) - len(data) // 2 + others  # the first half was not fetched again


def test_golden_outputs_that_differ_fail_before_the_switch(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, edit=skew_golden))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert status.phase == "Failed" and status.reason == "HealthCheckFailed"
    assert "golden outputs differ" in status.message and "still serving 1.0.0" in status.message
    assert serving(fleet, agent.data_dir) == "1.0.0"
    # The same spec is not retried (no download, no second install) until the controller changes it.
    before = fleet.server.bytes_served
    assert agent.cycle()[MODEL].phase == "Failed"
    assert fleet.server.bytes_served == before


def test_an_artifact_signed_by_an_untrusted_key_is_never_loaded(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, key=fleet.stranger))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason) == ("Failed", "UntrustedSigner")
    assert serving(fleet, agent.data_dir) == "1.0.0"


def test_a_corrupted_file_on_the_server_is_refused(fleet: Fleet):
    fleet.publish(fleet.release("2.0.0", 2))
    served = next((fleet.root / "tuf" / "targets" / MODEL / "2.0.0" / PROFILE).glob("*.model.onnx"))
    data = bytearray(served.read_bytes())
    served.unlink()
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    agent = fleet.agent()
    agent.downloader.config = type(agent.downloader.config)(attempts=2, backoff_seconds=0.01)
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    # Transient: the server may be fixed. Retried after a backoff, never loaded meanwhile.
    assert status.phase == "Retrying" and "sha256" in status.message and status.extra["attempts"] == 1
    assert serving(fleet, agent.data_dir) is None
    assert not list((agent.data_dir / "partial").iterdir())
    before = fleet.server.bytes_served
    assert agent.cycle()[MODEL].phase == "Retrying" and fleet.server.bytes_served == before  # not due yet


def test_frozen_metadata_is_refused_and_the_device_keeps_its_model(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    fleet.publish(fleet.release("1.0.0", 1, name="again"), fleet.release("2.0.0", 2), now=utcnow() - timedelta(days=2))
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason) == ("Retrying", "Frozen")  # an outage or a skewed clock: not forever
    assert serving(fleet, agent.data_dir) == "1.0.0"


def test_a_revoked_release_is_refused(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 3))
    agent = fleet.agent()
    fleet.assign("factory-1", "2.0.0")
    agent.cycle()
    # The owner revokes everything below counter 3: e.g. 1.0.0 had a flaw.
    slots = ModelSlots(agent.data_dir, MODEL)
    slots.activate(slots.active_dir(), minimum_counter=3)
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason) == ("Failed", "Revoked")
    assert serving(fleet, agent.data_dir) == "2.0.0"


def test_an_assignment_for_another_profile_is_refused(fleet: Fleet):
    fleet.publish(fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "2.0.0", profile="coral-npu")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason) == ("Failed", "WrongProfile")
    assert serving(fleet, agent.data_dir) is None and fleet.server.bytes_served == 0


def test_a_truncated_file_on_the_server_is_refused(fleet: Fleet):
    fleet.publish(fleet.release("2.0.0", 2))
    served = next((fleet.root / "tuf" / "targets" / MODEL / "2.0.0" / PROFILE).glob("*.model.onnx"))
    data = served.read_bytes()
    served.unlink()
    served.write_bytes(data[: len(data) // 2])
    agent = fleet.agent()
    agent.downloader.config = type(agent.downloader.config)(attempts=2, backoff_seconds=0.01, reserve_bytes=0)
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    # The first attempt ends halfway; the second asks for the rest, which the server's copy does not have.
    assert (status.phase, status.reason) == ("Retrying", "DownloadFailed")
    assert "the server's copy ends before the signed" in status.message
    assert serving(fleet, agent.data_dir) is None


def test_replayed_older_metadata_is_refused_and_the_device_keeps_its_model(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1))
    old_timestamp = (fleet.root / "tuf" / "metadata" / "timestamp.json").read_bytes()
    fleet.publish(fleet.release("1.0.0", 1, name="again"), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()  # the device now trusts the second version of the metadata
    (fleet.root / "tuf" / "metadata" / "timestamp.json").write_bytes(old_timestamp)  # a replay
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason) == ("Retrying", "Rollback")
    assert serving(fleet, agent.data_dir) == "1.0.0"


def test_a_model_over_the_profiles_limits_fails_its_health_check(fleet: Fleet):
    from dataclasses import replace

    fleet.publish(fleet.release("2.0.0", 2))
    agent = fleet.agent()
    agent.config = replace(agent.config, max_latency_ms=0.000001)
    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason) == ("Failed", "HealthCheckFailed") and "latency p95" in status.message
    assert serving(fleet, agent.data_dir) is None


def test_benchmark_mode_measures_once_never_installs_and_retries_a_transient_failure(fleet: Fleet):
    from dataclasses import replace

    from reconciler.plan import Desired

    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()  # serving 1.0.0
    fleet.backend.apply([Desired("factory-1", MODEL, "2.0.0", PROFILE, "vibration-anomaly-2", None, False,
                                 benchmark=True)])  # fmt: skip
    [(spec, generation)] = fleet.backend.assignments_for("factory-1").values()
    measured = agent.cycle()[MODEL]
    assert (measured.phase, measured.target_version, measured.installed_version) == ("Benchmarked", "2.0.0", "1.0.0")
    assert measured.extra["labP95Ms"] > 0 and measured.extra["labMemoryBytes"] > 0
    # Measured once: the same answer again without the network (the record, not a second benchmark).
    agent.config = replace(agent.config, repository_url="https://127.0.0.1:9/tuf")
    assert agent.converge(spec, generation) == measured
    # A new generation measures again; the repository unreachable is a retry, never a verdict, nothing installed.
    retrying = agent.converge(spec, generation + 1)
    assert (retrying.phase, retrying.reason, retrying.installed_version) == ("Retrying", "DownloadFailed", "1.0.0")
    assert retrying.extra["attempts"] == 1
    assert ModelSlots(agent.data_dir, MODEL).state().active_version == "1.0.0"
    assert not (agent.data_dir / "benchmark" / MODEL).exists()  # its download folder is cleaned up


def test_nothing_published_yet_is_a_retry_and_the_report_still_reaches_the_controller(fleet: Fleet):
    # The repository answers 404 for metadata it does not have yet; that answer's body must not stay on the pooled
    # connection the status report uses next (it did: "Connection aborted", and the report was lost).
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    first = agent.cycle()[MODEL]
    assert first.phase == "Retrying" and "404" in first.message
    for _ in range(2):  # waiting for the next attempt, reporting so each cycle
        assert agent.cycle()[MODEL].phase == "Retrying"
    assert fleet.backend.statuses()[("factory-1", MODEL)].phase == "Retrying"
