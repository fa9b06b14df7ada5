"""Builds in the loop: what merged rollouts need and the store lacks is built, signed and published, and the
rollout waits for it (``WaitingForArtifacts (1/2 built)``) or stops at a refusal with the build's report.

Who calls it: the controller, each cycle, when the Fleet's trust says ``release: builder``. The jobs live on
disk (:mod:`reconciler.artifact.jobs`); a runner starts their workers: :class:`LocalRunner` as child processes
of the controller (``edgectl build-job``), at most ``workers`` at once; on Kubernetes, a Job per build. A
worker outlives a controller that is killed: the next controller finds its lock held (Running) or its result,
and starts again only a job that ended with neither.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from reconciler.api import FleetTree
from reconciler.artifact.jobs import (
    BuildJob,
    BuildRequest,
    BuildResult,
    JobDirectory,
    JobState,
    take_lock,
    wanted_builds,
)
from reconciler.controller.publish import ArtifactKey

log = logging.getLogger("edge_reconciler.controller")


@dataclass(frozen=True)
class BuildProgress:
    """Where the builds of one (model, version) stand: what a waiting rollout says."""

    total: int
    built: int
    refused: str | None = None
    """The first refusal's report (``coral-npu: accuracy drop 0.031 > 0.02``): the rollout stops on it."""

    def sentence(self) -> str:
        return f"{self.built}/{self.total} built"


@dataclass
class BuildsView:
    jobs: list[BuildJob] = field(default_factory=list)
    artifacts: dict[ArtifactKey, str] = field(default_factory=dict)
    """(model, version, profile) -> the artifact built from the current recipe."""
    progress: dict[tuple[str, str], BuildProgress] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    wanted: set[ArtifactKey] = field(default_factory=set)
    """What the builds manage: no other artifact of these keys is handed out (an older recipe's, say)."""


class Runner(Protocol):
    workers: int
    """Builds that may run at once."""

    def active(self) -> set[str]:
        """Keys of the jobs whose worker this runner started and that have not ended (a worker may not hold the
        job's lock yet)."""
        ...

    def start(self, job: BuildJob) -> None: ...

    def failures(self) -> dict[str, str]:
        """Keys of jobs whose worker ended without a result and will not be tried again, with why."""
        ...


class LocalRunner:
    """Build workers as child processes (their own session: a controller's SIGTERM does not end a build)."""

    def __init__(self, git_dir: Path, store: Path, workers: int = 1, builder_key: Path | None = None,
                 releases: Path | None = None, on_done: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.git_dir, self.store, self.workers = git_dir, store, max(workers, 1)
        self.builder_key, self.releases, self.on_done = builder_key, releases, on_done
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def active(self) -> set[str]:
        with self._lock:
            self._children = {k: p for k, p in self._children.items() if p.poll() is None}
            return set(self._children)

    def command(self, job: BuildJob) -> list[str]:
        command = [sys.executable, "-m", "reconciler.cli.main", "build-job", "--job", str(job.directory),
                   "--git-dir", str(self.git_dir), "--store", str(self.store)]  # fmt: skip
        if self.builder_key is not None and self.releases is not None:
            command += ["--builder-key", str(self.builder_key), "--releases", str(self.releases)]
        return command

    def start(self, job: BuildJob) -> None:
        lock = take_lock(job.directory)  # held from before the worker starts: never two workers for one job
        if lock is None:
            return
        try:
            with (job.directory / "log").open("ab") as out:
                process = subprocess.Popen([*self.command(job), "--lock-fd", str(lock)], stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock,),
                                           start_new_session=True)  # fmt: skip
        finally:
            os.close(lock)
        with self._lock:
            self._children[job.key] = process
        threading.Thread(target=self._watch, args=(process,), daemon=True, name="build-watch").start()

    def failures(self) -> dict[str, str]:
        return {}  # a local worker that ends without a result is started again (up to MAX_ATTEMPTS)

    def _watch(self, process: subprocess.Popen) -> None:
        process.wait()
        if self.on_done is not None:
            self.on_done()  # the next cycle reads the result now, not after the interval


class Builds:
    def __init__(self, root: Path, runner: Runner) -> None:
        self.jobs = JobDirectory(root)
        self.runner = runner

    def sync(self, tree: FleetTree, commit: str, now: datetime, stable: Mapping[str, str | None] | None = None,
             released: Collection[ArtifactKey] = ()) -> BuildsView:  # fmt: skip
        """Make the jobs the active rollouts need (their version, and the stable version of ``stable``: rollout ->
        version) but for what an owner ``released``, start queued ones while workers are free, and say where the
        builds of each version stand."""
        view = BuildsView()
        queued: list[BuildJob] = []
        active = self.runner.active()
        failures = self.runner.failures()
        running = set(active)
        for request in wanted_builds(tree, commit, stable):
            if (request.model, request.version, request.profile) in released:
                continue
            job = self._job(request, now)
            if job is None:
                continue
            if job.state is JobState.QUEUED and job.key in active:
                job = replace(job, state=JobState.RUNNING)
            elif job.state in (JobState.QUEUED, JobState.FAILED) and job.key in failures:
                job = replace(job, state=JobState.FAILED, result=BuildResult(JobState.FAILED, report=failures[job.key]))
            view.jobs.append(job)
            view.wanted.add((request.model, request.version, request.profile))
            if job.state is JobState.RUNNING:
                running.add(job.key)
            elif job.state is JobState.QUEUED:
                queued.append(job)
            elif job.state is JobState.SUCCEEDED and job.result is not None and job.result.artifact:
                view.artifacts[(request.model, request.version, request.profile)] = job.result.artifact
        for job in queued[: max(self.runner.workers - len(running), 0)]:
            self.jobs.count_start(job.key)
            self.runner.start(job)
            view.started.append(job.request.name)
            log.info("build started", extra={"build": job.request.name, "key": job.key[:12],
                                             "attempt": job.attempts + 1})  # fmt: skip
        for (model, version), jobs in _by_version(view.jobs).items():
            built = sum(1 for j in jobs if j.state is JobState.SUCCEEDED)
            refused = next((_refusal(j) for j in jobs if j.state in (JobState.REFUSED, JobState.FAILED)), None)
            view.progress[(model, version)] = BuildProgress(len(jobs), built, refused)
        return view

    def _job(self, request: BuildRequest, now: datetime) -> BuildJob | None:
        job = self.jobs.read(request.key)
        if job is None:
            self.jobs.create(request, now)
            job = self.jobs.read(request.key)
        return job


def _by_version(jobs: list[BuildJob]) -> Mapping[tuple[str, str], list[BuildJob]]:
    grouped: dict[tuple[str, str], list[BuildJob]] = {}
    for job in jobs:
        grouped.setdefault((job.request.model, job.request.version), []).append(job)
    return grouped


def _refusal(job: BuildJob) -> str:
    if job.state is JobState.FAILED:
        log_file = job.directory / "log"
        why = job.result.report if job.result is not None and job.result.report else (
            f"the build worker ended {job.attempts} times without a result (its log: {log_file})")  # fmt: skip
        return f"build of {job.request.name} failed: {why}"
    report = job.result.report if job.result is not None else ""
    return f"build of {job.request.name} refused: {report}"
