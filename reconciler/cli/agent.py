"""``edgectl agent``: the process on each device.

Thin: options to an ``AgentConfig``, a device API client, and the loop. The device talks to the fleet only
through the controller's device API (mutual TLS): it enrols once with a bootstrap token (an agent pod on
Kubernetes: with its projected ServiceAccount token), keeps its key in ``DATA_DIR/identity`` and renews its
certificate by itself. ``--once`` converges once and exits 0 when every
assignment is Healthy, 1 otherwise (for scripts and tests). The trust policy comes from release keys
on the command line or a fleet checkout's ``Fleet`` document; the TUF root is pinned from a file and only
needed on the first run.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from .common import load_or_exit


@click.command()
@click.option("--device", required=True, help="This device's name (the Node name on Kubernetes).")
@click.option("--profile", required=True, help="This device's hardware profile.")
@click.option("--device-api", required=True, help="The controller's device API (https://host:8443).")
@click.option("--ca", "ca_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The fleet CA's certificate, to check the device API at enrolment.")  # fmt: skip
@click.option("--token", envvar="EDGE_RECONCILER_BOOTSTRAP_TOKEN",
              help="One-time bootstrap token for enrolment (edgectl device token create).")  # fmt: skip
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the bootstrap token from this file, when it exists (a mounted Secret).")  # fmt: skip
@click.option("--service-account-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Kubernetes: enrol with this projected ServiceAccount token (audience edge-reconciler) instead "
                   "of a bootstrap token; read at each enrolment, as the kubelet rotates it.")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Slots, partial downloads and trusted metadata.")  # fmt: skip
@click.option("--trusted-root", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Pinned TUF root.json (first run).")  # fmt: skip
@click.option("--release-key", "release_keys", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Trust this model owner's release key, or every *.pub in a folder (repeatable).")  # fmt: skip
@click.option(
    "--fleet", type=click.Path(exists=True, file_okay=False), help="Take the trust policy from this checkout."
)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--max-latency-ms", type=float, help="The profile's p95 latency limit for the health check.")
@click.option("--max-memory", type=int, help="The profile's memory limit in bytes for the health check.")
@click.option("--interval", type=float, default=30.0, show_default=True)
@click.option("--serve", default="",
              help="Serve inference on HOST:PORT (e.g. 127.0.0.1:8501), in a process of its own that the agent "
                   "restarts when it ends; '' disables.")  # fmt: skip
@click.option("--telemetry-budget", type=int, default=4 * 1024 * 1024, show_default=True,
              help="Bytes of summaries kept on disk while the controller is unreachable.")  # fmt: skip
@click.option("--trial-period", default="10m", show_default=True,
              help="How long a new version stays on trial when its rollout names no trial (then rolled back by "
                   "itself on a crash or too many errors, else marked good).")  # fmt: skip
@click.option("--health-timeout", type=float, default=120.0, show_default=True,
              help="CPU seconds a health check may use before it counts as hung (the wall clock allows five "
                   "times that: a device busy serving gives the check part of a core).")  # fmt: skip
@click.option("--keep-versions", type=click.IntRange(min=2), default=3, show_default=True,
              help="Versions that passed their trial kept on the device, the active one included, for a rollback "
                   "without a download (2: the two slots only).")  # fmt: skip
@click.option(
    "--keep-budget",
    default="1Gi",
    show_default=True,
    help="Disk for kept versions outside the two slots (the oldest go first), e.g. 500Mi.",
)
@click.option("--benchmark-runs", type=click.IntRange(min=10), default=200, show_default=True,
              help="A lab device (benchmark mode): single-sample inferences timed for p50 and p95.")  # fmt: skip
@click.option("--hwmon", type=click.Path(file_okay=False, path_type=Path), default="/sys/class/hwmon",
              show_default=True, help="A lab device: where power (INA2xx) and temperature sensors are read while it "
                                      "benchmarks.")  # fmt: skip
@click.option("--redact-hook", type=click.Path(dir_okay=False, path_type=Path),
              help="An executable that redacts sampled inputs (an .npz on stdin, the redacted one on stdout) before "
                   "a model's input capture keeps them.")  # fmt: skip
@click.option("--once", is_flag=True)
def agent(
    device: str,
    profile: str,
    device_api: str,
    ca_file: Path | None,
    token: str | None,
    token_file: Path | None,
    service_account_token_file: Path | None,
    data_dir: Path,
    trusted_root: Path | None,
    release_keys: tuple[Path, ...],
    fleet: str | None,
    threads: int,
    max_latency_ms: float | None,
    max_memory: int | None,
    interval: float,
    serve: str,
    telemetry_budget: int,
    trial_period: str,
    health_timeout: float,
    keep_versions: int,
    keep_budget: str,
    benchmark_runs: int,
    hwmon: Path,
    redact_hook: Path | None,
    once: bool,
) -> None:
    """Download, verify, install (A/B), health-check and report this device's models."""
    from reconciler.agent.agent import Agent, AgentConfig
    from reconciler.deviceapi.client import DeviceAPIBackend, DeviceClient
    from reconciler.signing import ReleaseSigner, TrustPolicy, policy_from_fleet

    if fleet:
        policy = policy_from_fleet(load_or_exit(fleet).fleet, Path(fleet))
    elif release_keys:
        # A folder stands for every NAME.pub in it (a mounted ConfigMap of release keys).
        files = [f for p in release_keys for f in (sorted(p.glob("*.pub")) if p.is_dir() else [p])]
        if not files:
            raise click.UsageError("--release-key: no *.pub key in the given folder(s)")
        policy = TrustPolicy(tuple(ReleaseSigner(p.stem, public_key=p) for p in files))
    else:
        raise click.UsageError("say whom to trust: --release-key or --fleet")
    if token_file is not None and token_file.exists():  # gone after enrolment is fine: the device has its identity
        token = token_file.read_text().strip()
    client = DeviceClient(device_api, device, data_dir / "identity", ca_file, token,
                          service_account_token_file=service_account_token_file)  # fmt: skip
    root = trusted_root.read_bytes() if trusted_root else None
    from reconciler.agent.capture import upload_captures
    from reconciler.agent.telemetry import TelemetryQueue
    from reconciler.agent.verbosity import upload_logs

    queue = TelemetryQueue(data_dir / "telemetry", telemetry_budget)
    server = None
    if serve and not once:
        from reconciler.agent.supervisor import ServingProcess

        host, _, port = serve.rpartition(":")
        server = ServingProcess(data_dir, (host or "127.0.0.1", int(port)), threads, device, telemetry_budget).start()
    on_switch = server.reload if server is not None else None
    from reconciler.agent.phases import TrialStats
    from reconciler.agent.slots import KeepPolicy
    from reconciler.api.types import parse_duration, parse_quantity

    try:
        period = parse_duration(trial_period)
    except ValueError as exc:
        raise click.UsageError(f"--trial-period: {exc}") from None
    try:
        budget = parse_quantity(keep_budget)
    except ValueError as exc:
        raise click.UsageError(f"--keep-budget: {exc}") from None
    config = AgentConfig(device, profile, data_dir, client.repository_url, policy, root, threads, max_latency_ms,
                         max_memory, trial_period=period, health_timeout_seconds=health_timeout,
                         keep=KeepPolicy(keep_versions, budget), benchmark_runs=benchmark_runs,
                         hwmon=hwmon, redact_hook=redact_hook)  # fmt: skip

    def trial_stats(model: str, version: str) -> TrialStats:
        if server is None:
            return TrialStats()
        requests, errors = server.totals(model, version)
        return TrialStats(requests, errors, server.crashes(model, version))

    from reconciler.agent.training import Participation

    training = None if once else Participation(data_dir, device, client)  # a one-shot run leaves no process behind
    worker = Agent(config, DeviceAPIBackend(client), on_switch, http=lambda: client.pool, trial_stats=trial_stats,
                   training=training)  # fmt: skip
    if once:
        from reconciler.errors import EdgeReconcilerError

        try:
            reports = worker.cycle()
        except EdgeReconcilerError as exc:  # unreachable, refused, not enrolled: said plainly, no traceback
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        for model, status in sorted(reports.items()):
            click.echo(f"{model}: {status.phase} {status.installed_version or '-'} {status.message}".rstrip())
        sys.exit(0 if all(s.phase == "Healthy" for s in reports.values()) else 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def upload_telemetry() -> None:  # the model server's process puts its summaries in the queue
        queue.upload(client.telemetry_url, client.pool)
        upload_logs(worker.verbosity, client)
        upload_captures(data_dir / "capture", client)

    try:
        worker.run(stop, interval, after_cycle=upload_telemetry)
    finally:
        if training is not None:
            training.stop()
        if server is not None:
            server.close()
