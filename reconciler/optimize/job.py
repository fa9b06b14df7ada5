"""The build worker: one job of ``BUILDS/<key>/`` (see :mod:`reconciler.artifact.jobs`), built and, in the
``builder`` trust mode, signed.

Who calls it: ``edgectl build-job``, the command line of a local build worker and of a Kubernetes build Job
alike. It reads the recipe from the fleet commit the job names (exported from the controller's clone, so a
later merge cannot change what is being built), builds through :func:`build_profile` (the same entry point
``edgectl build`` uses), and writes ``result.json`` last: a worker killed at any point leaves no result, and the
next start builds again (the store's build cache makes finished work a hit).

Signing happens here, not in the controller: the builder key is a file only the worker reads (a Secret that
only the build Job mounts). The release counter is the version's place in the Model's list of versions (1 for
the first), so a later version always outranks an earlier one; the Fleet's ``trust.builder.maxCounter`` bounds
it, and the controller refuses to publish above it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from reconciler.api import load_fleet
from reconciler.api.errors import SpecErrors
from reconciler.artifact.jobs import BuildResult, JobDirectory, JobState, holding, read_result, write_result
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.gitops.source import GitError, export_tree
from reconciler.signing import Release, sign_with_key, write_release

from .metrics import headline
from .pipeline import BuildInputs, ProfileBuild, build_profile

BUILT = "built"
"""Under the releases directory: the folders the builder signed, one per (model, version, profile)."""


def run_job(directory: Path, git_dir: Path, store: ArtifactStore, builder_key: Path | None = None,
            releases: Path | None = None, say=print, lock_fd: int | None = None) -> BuildResult | None:  # fmt: skip
    """Build the job in ``directory``; None when another worker holds it. ``say``: progress lines (the log).
    ``lock_fd``: the job's lock, taken by the process that started this one."""
    directory = Path(directory)
    job = JobDirectory(directory.parent).read(directory.name)
    if job is None:
        raise FileNotFoundError(f"{directory}: no job.json")
    with holding(directory, lock_fd) as mine:
        if not mine:
            say(f"{job.request.name}: another worker is building it")
            return None
        done = read_result(directory)
        if done is not None:
            say(f"{job.request.name}: already {done.state}")
            return done
        started, clock = datetime.now(UTC), time.monotonic()
        say(f"{job.request.name}: building from fleet commit {job.request.commit[:12]}")
        state, artifact, report, counter = _build(job.request, git_dir, store, say)
        released = None
        if state is JobState.SUCCEEDED and builder_key is not None and releases is not None:
            assert artifact is not None
            try:
                released = str(_release(store, artifact, job.request, counter, builder_key, Path(releases), say))
            except (OSError, ValueError) as exc:
                state, report = JobState.REFUSED, f"built {artifact[:12]} but could not sign it: {exc}"
        finished = datetime.now(UTC).isoformat(timespec="seconds")
        result = BuildResult(state, artifact, report, started.isoformat(timespec="seconds"), finished,
                             time.monotonic() - clock, released)  # fmt: skip
        write_result(directory, result)
        say(f"{job.request.name}: {state}: {report}")
        return result


def _build(request, git_dir: Path, store: ArtifactStore, say) -> tuple[JobState, str | None, str, int]:
    """(state, artifact id, report, release counter: the version's place in the Model's versions)."""
    with tempfile.TemporaryDirectory(prefix="edge-build-job-") as tmp:
        try:
            checkout = export_tree(git_dir, request.commit, Path(tmp) / "fleet")
            tree = load_fleet(read_fleet_dir(checkout))
        except (GitError, SpecErrors) as exc:
            return JobState.REFUSED, None, f"the fleet at {request.commit[:12]} cannot be read: {exc}", 0
        model = tree.models.get(request.model)
        version = next((v for v in model.spec.versions if v.version == request.version), None) if model else None
        recipe = next((r for r in model.spec.recipes if r.profile == request.profile), None) if model else None
        if model is None or version is None or recipe is None or request.profile not in tree.profiles:
            return JobState.REFUSED, None, f"{request.name} is not in the fleet at {request.commit[:12]}", 0
        counter = model.spec.versions.index(version) + 1
        inputs = BuildInputs(checkout, model, version, tree.profiles[request.profile], recipe, request.commit)
        built = build_profile(inputs, store, progress=lambda message: say(f"  {message}"))
    if built.error or built.artifact is None:
        return JobState.REFUSED, None, built.error or "no variant was selected", counter
    return JobState.SUCCEEDED, built.artifact.id, _summary(built), counter


def _summary(built: ProfileBuild) -> str:
    chosen = built.selected
    if chosen is None or chosen.measurement is None:
        return f"artifact {built.artifact.id[:12] if built.artifact else '?'}" + (" (cached)" if built.cached else "")
    m = chosen.measurement
    figure, delta = headline(m.metrics or {"accuracy": m.accuracy}, built.reference_metrics or
                             {"accuracy": built.reference_accuracy or 0.0})  # fmt: skip
    metric = figure if figure.startswith(("mae", "auroc")) else f"accuracy {figure}"
    unit = "" if delta.endswith("%") or delta == "-" else " points"
    return f"{chosen.name}, {m.size_bytes} bytes, {metric} ({delta}{unit})" + (" (cached)" if built.cached else "")


def _release(store: ArtifactStore, artifact: str, request, counter: int, key: Path, releases: Path, say) -> Path:
    """Export, state the release and sign, in a hidden folder; then swap it in for the previous build of the
    same (model, version, profile), so the controller never sees half a release."""
    target = releases / BUILT / f"{request.model}-{request.version}-{request.profile}"
    staging = releases / BUILT / f".staging-{request.key[:16]}"
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    store.export(artifact, staging)
    write_release(staging, Release(request.model, request.version, (request.profile,), counter))
    sign_with_key(staging, key)
    previous = releases / BUILT / f".previous-{request.key[:16]}"
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    say(f"  signed {target} (release counter {counter})")
    return target
