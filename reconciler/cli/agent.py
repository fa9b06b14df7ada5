"""``edgectl agent``: the process on each device.

Thin: options to an ``AgentConfig``, a backend, and the loop. ``--once`` converges once and exits 0 when
every assignment is Healthy, 1 otherwise (for scripts and tests). The trust policy comes from release keys
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
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edge-reconciler"),
              show_default=True, help="Local backend: the controller's state directory.")  # fmt: skip
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--namespace", default="edge-system", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Slots, partial downloads and trusted metadata.")  # fmt: skip
@click.option("--repository", required=True, help="The controller's TUF repository URL (http://host:8080/tuf).")
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
@click.option("--serve", default="", help="Serve inference on HOST:PORT (e.g. 127.0.0.1:8501); '' disables.")
@click.option("--telemetry-url", help="Where summaries go (default: the repository's host, /telemetry).")
@click.option("--telemetry-budget", type=int, default=4 * 1024 * 1024, show_default=True,
              help="Bytes of summaries kept on disk while the controller is unreachable.")  # fmt: skip
@click.option("--once", is_flag=True)
def agent(
    device: str,
    profile: str,
    backend: str,
    state_dir: Path,
    kubeconfig: Path | None,
    namespace: str,
    data_dir: Path,
    repository: str,
    trusted_root: Path | None,
    release_keys: tuple[Path, ...],
    fleet: str | None,
    threads: int,
    max_latency_ms: float | None,
    max_memory: int | None,
    interval: float,
    serve: str,
    telemetry_url: str | None,
    telemetry_budget: int,
    once: bool,
) -> None:
    """Download, verify, install (A/B), health-check and report this device's models."""
    from reconciler.agent.agent import Agent, AgentConfig
    from reconciler.cluster import LocalBackend, kubernetes_backend
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
    target = LocalBackend(state_dir) if backend == "local" else kubernetes_backend(kubeconfig, namespace, device=device)
    root = trusted_root.read_bytes() if trusted_root else None
    from reconciler.agent.telemetry import TelemetryQueue, TelemetryRecorder

    recorder = TelemetryRecorder(device)
    queue = TelemetryQueue(data_dir / "telemetry", telemetry_budget)
    telemetry_url = telemetry_url or repository.rstrip("/").removesuffix("/tuf") + "/telemetry"
    server = None
    if serve:
        from reconciler.agent.serving import ModelServer

        host, _, port = serve.rpartition(":")
        server = ModelServer(data_dir, (host or "127.0.0.1", int(port)), threads, recorder).start()
    on_switch = server.reload if server is not None else None
    config = AgentConfig(device, profile, data_dir, repository, policy, root, threads, max_latency_ms, max_memory)
    worker = Agent(config, target, on_switch)
    if once:
        reports = worker.cycle()
        for model, status in sorted(reports.items()):
            click.echo(f"{model}: {status.phase} {status.installed_version or '-'} {status.message}".rstrip())
        sys.exit(0 if all(s.phase == "Healthy" for s in reports.values()) else 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def upload_telemetry() -> None:
        for summary in recorder.flush():
            queue.put(summary)
        queue.upload(telemetry_url)

    try:
        worker.run(stop, interval, after_cycle=upload_telemetry)
    finally:
        if server is not None:
            server.close()
