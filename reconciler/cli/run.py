"""``edgectl run``: the controller process.

Thin: it builds the backend, the Git source and the HTTP endpoint from options, installs signal handlers
for a graceful stop (finish the cycle in progress, then exit), and logs one JSON line per cycle. ``--once``
runs a single reconcile and exits 0, or 1 when the cycle stalled (spec errors, unsigned head, Git down).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path

import click


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's extra fields."""

    _plain: frozenset[str] = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        body = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}  # fmt: skip
        body.update({k: v for k, v in vars(record).items() if k not in self._plain and not k.startswith("_")})
        return json.dumps(body, default=str)


def _device_api(address: str, hosts: tuple[str, ...], ca_dir: Path, lifetime: str, state_dir: Path,
                store: Path | None, target, backend: str, registry, agent_service_account: str | None,
                telemetry, on_join=None, fleet_upstream=None, helper: bool = False,
                reuse_port: bool = False):  # fmt: skip
    """The device API on its own port with its own certificate, issued by the fleet CA at every start.
    ``helper``: one of the controller's other device API processes, which serves the certificate the controller
    issued (``reuse_port``: for all of them)."""
    import socket
    from datetime import UTC, datetime, timedelta

    from reconciler.api.types import parse_duration
    from reconciler.artifact.store import ArtifactStore
    from reconciler.cluster import LocalBackend
    from reconciler.deviceapi.ca import FleetCA
    from reconciler.deviceapi.identity import SERVICE_ACCOUNT_AUDIENCE, Identity
    from reconciler.deviceapi.registry import REGISTRY_FILE
    from reconciler.deviceapi.server import DeviceAPIServer
    from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
    from reconciler.durable import write_atomic
    from reconciler.errors import PermanentError
    from reconciler.telemetry.captures import capture_recorder
    from reconciler.telemetry.summaries import log_recorder, recorder

    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    try:
        ca = FleetCA.load_or_create(ca_dir)
    except PermanentError as exc:  # a half or foreign CA folder: say so, never overwrite it
        raise click.ClickException(f"fleet CA in {ca_dir}: {exc}") from None
    tls = state_dir / "device-api"
    if not helper:
        now = datetime.now(UTC)
        # A wildcard address is no name a device can check: the machine's name and loopback stand in for it.
        names = {"localhost", *hosts} | ({"127.0.0.1", socket.gethostname()} if host in ("0.0.0.0", "::") else {host})
        cert, key = ca.issue_server(sorted(names), timedelta(days=365), now)
        tls.mkdir(parents=True, exist_ok=True)
        # Certificate and key in one file, replaced at once: replicas sharing the state directory never load one
        # replica's certificate with another's key.
        write_atomic(tls / "tls.pem", cert + key, mode=0o600)
    # Identity lives in the backend, so that every replica serves every device.
    if backend == "kubernetes":
        from reconciler.deviceapi.kube_registry import KubernetesRegistry

        registry_store = KubernetesRegistry(target.api, target.namespace)
    else:
        registry_store = SQLiteRegistry(state_dir / REGISTRY_FILE)
    identity = Identity(ca, registry_store, parse_duration(lifetime))
    artifacts = ArtifactStore(store) if store else None
    # The local backend is a SQLite file: each thread of the device API opens its own connection to it.
    factory = (lambda: LocalBackend(state_dir)) if backend == "local" else (lambda: target)
    return DeviceAPIServer(
        (host, int(port)), identity, factory, ca.server_context(tls / "tls.pem", tls / "tls.pem"),
        blobs=store / "blobs" / "sha256" if store else None, tuf=state_dir / "tuf",
        deltas=artifacts.delta if artifacts else None,
        on_telemetry=recorder(telemetry, lambda: datetime.now(UTC)), registry=registry,
        on_logs=log_recorder(telemetry, lambda: datetime.now(UTC)),
        on_capture=capture_recorder(artifacts) if artifacts else None,
        clock=lambda: datetime.now(UTC), register_enrolled=backend == "local",
        node_of_token=(lambda token: target.node_of_token(token, SERVICE_ACCOUNT_AUDIENCE, agent_service_account))
        if agent_service_account else None, on_join=on_join, fleet_upstream=fleet_upstream, reuse_port=reuse_port,
    ).start()  # fmt: skip


def _helper_device_api(address: str, hosts: tuple[str, ...], ca_dir: Path, lifetime: str, state_dir: Path,
                       store: Path | None, telemetry_path: Path, retention, log_format: str, link):  # fmt: skip
    """In a device API helper process (:mod:`reconciler.deviceapi.processes`): the controller's device API but for
    its metrics registry, and with joins and the SuperLink's address asked of the controller through ``link``."""
    from reconciler.telemetry.store import TelemetryStore

    _log_to_stderr(log_format)
    return _device_api(address, hosts, ca_dir, lifetime, state_dir, store, None, "local", None, None,
                       TelemetryStore(telemetry_path, retention), link.join, link.upstream, helper=True,
                       reuse_port=True)  # fmt: skip


def _log_to_stderr(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _fleet_store(source) -> Path | None:
    """The Fleet's ``spec.artifactStore.path`` when that directory exists here (``--store`` not given); None when
    it does not, or the repo cannot be read yet (the controller then runs without a store, as before)."""
    from reconciler.api import SpecErrors
    from reconciler.api.status import load_with_status
    from reconciler.gitops.source import GitError

    try:
        try:
            head = source.head()  # the clone's last fetch: the first cycle fetches anyway
        except GitError:
            head = source.fetch()  # a new clone has nothing yet
        fleet = load_with_status(source.files_at(head)).tree.fleet
    except (GitError, SpecErrors):
        return None
    path = Path(fleet.spec.artifact_store.path)
    if fleet.spec.artifact_store.type == "filesystem" and path.is_dir():
        logging.getLogger("edge_reconciler.controller").info("artifact store from the Fleet", extra={"path": str(path)})
        return path
    return None


def _repo_url(repo: str) -> str:
    return str(Path(repo).resolve()) if "://" not in repo and "@" not in repo else repo


@click.command()
@click.option("--repo", required=True, help="Fleet repo: URL (https, ssh, git, file) or a local path.")
@click.option("--branch", default="main", show_default=True)
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True)
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Kubeconfig (default: in-cluster credentials).")  # fmt: skip
@click.option("--namespace", default="edge-system", show_default=True, help="Namespace of ModelAssignments.")
@click.option("--node-selector", help="Label selector of the Nodes that are edge devices (default: all).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edge-reconciler"),
              show_default=True, help="Git clone, local backend database.")  # fmt: skip
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), help="Artifact store to serve and assign.")
@click.option("--releases", type=click.Path(file_okay=False, path_type=Path),
              help="Owner-signed release folders to verify and publish to agents (needs --tuf-keys).")  # fmt: skip
@click.option("--tuf-keys", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Online TUF keys: targets.key, snapshot.key, timestamp.key (edgectl tuf init).")  # fmt: skip
@click.option("--once", is_flag=True, help="Reconcile once and exit.")
@click.option("--interval", type=float,
              help="Seconds between cycles and between fetches (default: the Fleet's spec.intervals, reconcile "
                   "30s and gitPoll 60s).")  # fmt: skip
@click.option("--listen", default="127.0.0.1:8080", show_default=True,
              help="Operator HTTP address: metrics, health, readiness, Git webhook ('' to disable).")  # fmt: skip
@click.option("--device-api", default="127.0.0.1:8443", show_default=True,
              help="Device API address (TLS; devices enrol, poll, report, download) ('' to disable).")  # fmt: skip
@click.option("--device-api-processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes serving the device API on its one port, the controller's among them (local backend; "
                   "on Kubernetes, run more replicas): beyond one, devices' requests no longer wait for the "
                   "controller's cycle.")  # fmt: skip
@click.option("--device-api-host", "device_api_hosts", multiple=True,
              help="A name or address devices use for the device API, for its certificate (repeatable).")  # fmt: skip
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The fleet CA (ca.crt/ca.key or tls.crt/tls.key); default: STATE_DIR/ca, made at first start.",
)
@click.option(
    "--agent-service-account",
    metavar="NAMESPACE:NAME",
    help="Kubernetes: agent pods of this ServiceAccount enrol with their projected token (TokenReview).",
)
@click.option("--certificate-lifetime", default="30d", show_default=True,
              help="Lifetime of device certificates; agents renew at two thirds of it.")  # fmt: skip
@click.option("--webhook-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--allowed-signers", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Apply only commits signed by these SSH keys (ssh-keygen allowed_signers format): every "
                   "commit since the last applied one.")  # fmt: skip
@click.option("--leader-elect", is_flag=True,
              help="Kubernetes: run cycles only while holding the Lease (several replicas, one writer).")  # fmt: skip
@click.option("--leader-election-id", default="edge-reconciler-controller", show_default=True,
              help="Name of the Lease (in --namespace).")  # fmt: skip
@click.option("--install-crds/--no-install-crds", default=True, show_default=True,
              help="Apply the CRDs at start (off when the Helm chart installs them: less RBAC).")  # fmt: skip
@click.option("--signing-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="EDGE_RECONCILER_SIGNING_KEY",
              help="SSH private key that signs the controller's status commits (publish its allowed-signers "
                   "line).")  # fmt: skip
@click.option(
    "--accept-rewrite", is_flag=True, help="Go on after the branch was rewritten past the last applied commit (once)."
)
@click.option(
    "--reset-state",
    is_flag=True,
    help="Start the state directory's clone over (when it was made for another repo or branch).",
)
@click.option("--telemetry-retention", default="30d", show_default=True,
              help="How long device telemetry is kept (STATE_DIR/telemetry.sqlite: hourly for two days, then "
                   "daily); at least 1d.")  # fmt: skip
@click.option("--operator-tokens", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="'TOKEN NAME' per line: who may pause, resume, promote, abort or retry rollouts through the "
                   "operator port (edgectl rollout ... --controller URL); without it that API is off.")  # fmt: skip
@click.option("--build-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Builds at once when the Fleet's trust says release: builder (the controller builds what merged "
                   "rollouts need).")  # fmt: skip
@click.option("--builder-key", type=click.Path(dir_okay=False, path_type=Path), envvar="EDGE_RECONCILER_BUILDER_KEY",
              help="The builder's signing key as build workers find it (the controller passes the path on, never "
                   "reads it).")  # fmt: skip
@click.option("--gc-interval", default="1h", show_default=True,
              help="Between garbage collections of the store (0: never); each keeps what devices run, are assigned "
                   "or may roll back to.")  # fmt: skip
@click.option(
    "--gc-keep-versions",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Newest versions of each model kept in the store beyond what devices run or are assigned.",
)
@click.option("--build-job-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --backend kubernetes: run builds as Jobs made from this batch/v1 Job manifest (the "
                   "build image, resources, deadline, backoff, TTL, state volume, builder key Secret).")  # fmt: skip
@click.option("--operator-kubernetes-auth", is_flag=True,
              help="With --backend kubernetes: also accept a bearer token the API server knows (TokenReview) whose "
                   "user may patch the FleetRollout acted on (RBAC).")  # fmt: skip
@click.option(
    "--telemetry-store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The telemetry store's SQLite file, shared by replicas (default: STATE_DIR/telemetry.sqlite).",
)
@click.option(
    "--superlink",
    metavar="PORT",
    help="Run the SuperLink of federated trainings on this loopback port; devices reach its Fleet API through the "
    "device API.",
)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
def run(
    repo: str,
    branch: str,
    backend: str,
    kubeconfig: Path | None,
    namespace: str,
    node_selector: str | None,
    state_dir: Path,
    store: Path | None,
    releases: Path | None,
    tuf_keys: Path | None,
    once: bool,
    interval: float | None,
    listen: str,
    device_api: str,
    device_api_processes: int,
    device_api_hosts: tuple[str, ...],
    ca_dir: Path | None,
    certificate_lifetime: str,
    agent_service_account: str | None,
    webhook_secret_file: Path | None,
    allowed_signers: Path | None,
    leader_elect: bool,
    leader_election_id: str,
    install_crds: bool,
    signing_key: Path | None,
    accept_rewrite: bool,
    reset_state: bool,
    telemetry_retention: str,
    operator_tokens: Path | None,
    operator_kubernetes_auth: bool,
    build_workers: int,
    builder_key: Path | None,
    build_job_template: Path | None,
    gc_interval: str,
    gc_keep_versions: int,
    telemetry_store: Path | None,
    superlink: str | None,
    log_format: str,
) -> None:
    """Reconcile devices toward the fleet repo, and write status back to it."""
    from datetime import timedelta

    from reconciler.api.types import parse_duration
    from reconciler.cluster import ClusterError, LocalBackend, kubernetes_backend, leader_elector
    from reconciler.controller.actions import ActionKind
    from reconciler.controller.dashboard import render
    from reconciler.controller.loop import Controller, ControllerConfig
    from reconciler.controller.server import ControllerServer, authorizer, read_tokens
    from reconciler.gitops.source import Credentials, GitError, GitSource
    from reconciler.telemetry.store import TelemetryStore

    _log_to_stderr(log_format)

    if leader_elect and (backend != "kubernetes" or once):
        raise click.UsageError("--leader-elect needs --backend kubernetes and a long-running controller")
    if operator_kubernetes_auth and backend != "kubernetes":
        raise click.UsageError("--operator-kubernetes-auth needs --backend kubernetes")
    if device_api_processes > 1 and (backend != "local" or not device_api):
        raise click.UsageError("--device-api-processes needs --backend local and a --device-api address (on "
                               "Kubernetes, run more replicas)")  # fmt: skip
    if releases is not None and tuf_keys is None:
        raise click.UsageError("--releases needs --tuf-keys (the keys that sign what agents may fetch)")
    try:
        tokens = read_tokens(operator_tokens) if operator_tokens is not None else {}
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"--operator-tokens: {exc}") from None
    try:
        retention = parse_duration(telemetry_retention)
    except ValueError as exc:
        raise click.UsageError(f"--telemetry-retention: {exc}") from None
    if retention < timedelta(days=1):
        raise click.UsageError("--telemetry-retention must be at least 1d")
    try:
        collect_every = timedelta(0) if gc_interval.strip() == "0" else parse_duration(gc_interval)
    except ValueError as exc:
        raise click.UsageError(f"--gc-interval: {exc}") from None
    config = ControllerConfig(_repo_url(repo), state_dir, branch, interval, allowed_signers, store, releases, tuf_keys,
                              signing_key, accept_rewrite, retention, telemetry_store, build_workers,
                              builder_key, collect_every, gc_keep_versions, superlink,
                              ca_dir or state_dir / "ca")  # fmt: skip
    try:
        if backend == "kubernetes":
            target = kubernetes_backend(kubeconfig, namespace, node_selector)
            if install_crds:
                target.install()
            if not once:
                target.start_watches()
        else:
            target = LocalBackend(state_dir)
    except ClusterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    kubernetes_access = None
    if operator_kubernetes_auth:
        from reconciler.cluster.access import KubernetesAccess

        kubernetes_access = KubernetesAccess(target.api, namespace)
    if reset_state:
        shutil.rmtree(state_dir / "git", ignore_errors=True)
        if isinstance(target, LocalBackend):
            target.forget_rollouts()  # the other repository's rollouts are not this one's
    source = GitSource(config.repo_url, state_dir / "git", branch, Credentials.from_env())
    try:
        source.open()  # a clone of another repo or branch is refused before anything is pushed to it
    except GitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if store is None:
        store = _fleet_store(source)
        config = replace(config, store=store)
    build_runner = None
    if build_job_template is not None:
        if backend != "kubernetes":
            raise click.UsageError("--build-job-template needs --backend kubernetes")
        build_runner = _job_runner(target, namespace, build_job_template, config, state_dir)
    controller = Controller(config, target, source, build_runner=build_runner)

    if once:
        try:
            outcome = controller.cycle()
        finally:
            controller.trainings.close()  # a one-shot run leaves no SuperLink behind
        if outcome.stalled:
            click.echo(f"stalled: {outcome.stalled}", err=True)
            sys.exit(1)
        click.echo(
            f"reconciled {outcome.commit}: {outcome.applied} applied, {outcome.deleted} deleted, "
            f"status {'commit ' + outcome.status_commit if outcome.status_commit else 'unchanged'}"
        )
        return

    elector = None
    if leader_elect:
        import os
        import socket

        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = leader_elector(kubeconfig, namespace, leader_election_id, identity, on_poke=controller.wake.set)
        elector.run()

    def ready() -> bool:
        """Standbys serve devices (the device API keeps no state of its own), so they are ready too; the leader
        once its first cycle is done."""
        if elector is not None and not elector.is_leader:
            return True
        return controller.cycles_done > 0

    def on_webhook() -> None:
        if elector is None or elector.is_leader:
            controller.wake.set()
        else:  # the push reached a standby: the leader hears of it at its next renewal
            elector.poke()

    def act(rollout: str, action: str, by: str, reason: str) -> tuple[int, str]:
        if elector is not None and not elector.is_leader:
            return 503, "this replica is a standby: the leader takes actions (try again)"
        if action == "suspend":
            result = controller.suspend(by, reason)
        elif action == "resume" and not rollout:
            result = controller.resume(by)
        else:
            result = controller.request(rollout, ActionKind(action), by, reason)
        return result.status, result.message

    servers: list = []
    if listen:
        host, _, port = listen.rpartition(":")
        secret = webhook_secret_file.read_bytes().strip() if webhook_secret_file else None
        server = ControllerServer((host or "127.0.0.1", int(port)), registry=controller.metrics.registry,
                                  webhook_secret=secret, on_webhook=on_webhook, ready=ready,
                                  authorize=authorizer(tokens, kubernetes_access),
                                  act=act, page=lambda: render(controller.snapshot))  # fmt: skip
        server.start()
        servers.append(server)
        logging.getLogger("edge_reconciler.controller").info("listening", extra={"url": server.url})
    if device_api:
        if agent_service_account and backend != "kubernetes":
            raise click.UsageError("--agent-service-account needs --backend kubernetes")

        def join(backend, device: str, name: str, key) -> bool | str:
            """A device's join of a federated training, wherever the device API process that took it runs."""
            return controller.trainings.admit(backend.assignments_for(device), device, name, key)

        api = _device_api(device_api, device_api_hosts, ca_dir or state_dir / "ca", certificate_lifetime, state_dir,
                          store, target, backend, controller.metrics.registry, agent_service_account,
                          TelemetryStore(config.telemetry_path, config.telemetry_retention), join,
                          controller.trainings.upstream, reuse_port=device_api_processes > 1)  # fmt: skip
        servers.append(api)
        logging.getLogger("edge_reconciler.controller").info("device API", extra={"url": api.url})
        if device_api_processes > 1:
            import functools

            from reconciler.deviceapi.processes import DeviceAPIHelpers

            host, port = api.bound
            build = functools.partial(_helper_device_api, f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                                      device_api_hosts, ca_dir or state_dir / "ca", certificate_lifetime, state_dir,
                                      store, config.telemetry_path, config.telemetry_retention, log_format)  # fmt: skip
            helpers = DeviceAPIHelpers(device_api_processes - 1, api, build, lambda: LocalBackend(state_dir), join,
                                       controller.trainings.upstream_address).start()  # fmt: skip
            servers.append(helpers)
            logging.getLogger("edge_reconciler.controller").info("device API processes", extra={
                "processes": device_api_processes, "pids": helpers.pids})  # fmt: skip

    def stop(signum: int, _frame: object) -> None:
        controller.stop.set()
        controller.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        controller.run(is_leader=lambda: elector is None or elector.is_leader)
    finally:
        controller.trainings.close()
        if elector is not None:
            elector.stop()
        for server in servers:
            server.close()


def _job_runner(target, namespace: str, template_file: Path, config, state_dir: Path):
    """Builds as Kubernetes Jobs: the template's pod mounts the volume of the state directory and the store at
    the same paths as the controller, so the job's directory and the store mean the same there."""
    import yaml

    from reconciler.cluster.buildjobs import KubernetesJobRunner

    try:
        template = yaml.safe_load(template_file.read_text())
        command = ["edgectl", "build-job", "--git-dir", str(state_dir / "git"), "--store", str(config.store)]
        if config.releases is not None:
            command += ["--releases", str(config.releases)]
        return KubernetesJobRunner(target.api, namespace, template, command, config.build_workers)
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as exc:
        raise click.UsageError(f"--build-job-template {template_file}: {exc}") from None
