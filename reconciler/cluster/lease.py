"""Leader election through a ``coordination.k8s.io/v1`` Lease, the way client-go's leaderelection does it,
so that of several controller replicas exactly one writes to Git and the cluster.

Who calls it: ``edgectl run --leader-elect``. A candidate takes the Lease when it is free or its holder let it
expire (``renewTime + leaseDurationSeconds`` in the past), and keeps it by renewing every ``retry_period``.
Every write is an update with the Lease's ``resourceVersion``: of two candidates racing for an expired Lease,
the API server accepts one update and answers the other 409 Conflict, so they can never both hold it.

A leader that cannot renew within ``renew_deadline`` (API server unreachable, or its update lost a race) stops
being the leader at once, before the Lease expires for the others: the gap between ``renew_deadline`` and
``lease_duration`` is the margin that keeps two leaders from overlapping. On a graceful stop the leader
releases the Lease (empty holder), so a standby takes over in one retry period instead of a lease duration.

Standbys serve devices too, so a Git push's webhook may reach one: it pokes (:meth:`~LeaderElector.poke`) a second
Lease (``NAME-wake``), which the leader reads after each renewal and answers with ``on_poke`` (a reconcile now).
Standbys never write the election's Lease: a burst of webhooks cannot make the leader miss a renewal.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.rest import ApiException

from .backend import PermanentClusterError

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_poke=None,
    ) -> None:
        """``on_poke()``: called on the leader when a standby was poked since the last renewal."""
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._renewed_at: float | None = None
        """Monotonic time of the last successful acquire or renew (None: not the leader)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_poke = on_poke
        self._poked_seen: datetime | None = None

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._renewed_at is not None and time.monotonic() - self._renewed_at < self.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards."""
        now = datetime.now(UTC)
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return self._failed(f"read: {exc.status} {exc.reason}")
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, acquired=now, transitions=0),
            )
            try:
                self.coordination.create_namespaced_lease(self.namespace, body)
            except ApiException as create_error:  # 409: another candidate created it first
                return self._failed(f"create: {create_error.status} {create_error.reason}")
            return self._succeeded(acquired=True)
        except Exception as exc:  # unreachable server: not the leader any more once the deadline passes
            return self._failed(f"read: {exc}")
        spec = lease.spec or client.V1LeaseSpec()
        mine = spec.holder_identity == self.identity
        if not mine and spec.holder_identity and not self._expired(spec, now):
            with self._lock:
                self._renewed_at = None
            return False
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        lease.spec = self._spec(now, acquired=spec.acquire_time if mine else now, transitions=transitions)
        try:
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)  # carries resourceVersion
        except ApiException as exc:
            return self._failed(f"update: {exc.status} {exc.reason}")
        except Exception as exc:
            return self._failed(f"update: {exc}")
        self._check_poke()
        return self._succeeded(acquired=not mine)

    def poke(self) -> bool:
        """Ask the leader to act now (a standby got the webhook); False when the wake Lease could not be written."""
        now = datetime.now(UTC)
        name = f"{self.name}-wake"
        spec = client.V1LeaseSpec(holder_identity=self.identity, renew_time=now)
        try:
            try:
                lease = self.coordination.read_namespaced_lease(name, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = client.V1Lease(metadata=client.V1ObjectMeta(name=name, namespace=self.namespace), spec=spec)
                self.coordination.create_namespaced_lease(self.namespace, body)
                return True
            lease.spec = spec
            self.coordination.replace_namespaced_lease(name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # another poke just landed: the leader wakes all the same
                return True
            log.warning("could not poke the leader", extra={"lease": name, "error": f"{exc.status} {exc.reason}"})
            return False
        except Exception as exc:
            log.warning("could not poke the leader", extra={"lease": name, "error": str(exc)})
            return False
        return True

    def _check_poke(self) -> None:
        """On the leader, after a renewal: a poke newer than the last one seen calls ``on_poke``."""
        if self.on_poke is None:
            return
        try:
            wake = self.coordination.read_namespaced_lease(f"{self.name}-wake", self.namespace)
        except Exception:  # none yet (404) or unreachable: nothing to wake for
            return
        poked = wake.spec.renew_time if wake.spec else None
        if poked is None or poked == self._poked_seen:
            return
        just_acquired = self._renewed_at is None  # its first cycle comes anyway and answers the poke
        self._poked_seen = poked
        if not just_acquired:
            self.on_poke()

    def run(self) -> LeaderElector:
        """Keep trying and renewing in a background thread until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.is_set():
                self.try_acquire_or_renew()
                self._stop.wait(self.retry_period)

        self._thread = threading.Thread(target=loop, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_period * 2)
        if release and self.is_leader:
            self._release()
        with self._lock:
            self._renewed_at = None

    def _release(self) -> None:
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("released leadership", extra={"lease": self.name, "identity": self.identity})
        except Exception as exc:  # it expires by itself: releasing only shortens the wait
            log.warning("could not release the lease", extra={"lease": self.name, "error": str(exc)})

    def _spec(self, now: datetime, acquired: datetime | None, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.lease_duration),
            acquire_time=acquired,
            renew_time=now,
            lease_transitions=transitions,
        )

    def _expired(self, spec: client.V1LeaseSpec, now: datetime) -> bool:
        renewed = spec.renew_time or spec.acquire_time
        if renewed is None:
            return True
        if renewed.tzinfo is None:
            renewed = renewed.replace(tzinfo=UTC)
        return renewed + timedelta(seconds=spec.lease_duration_seconds or self.lease_duration) < now

    def _succeeded(self, acquired: bool) -> bool:
        with self._lock:
            was = self._renewed_at is not None
            self._renewed_at = time.monotonic()
        if acquired or not was:
            log.info("became the leader", extra={"lease": self.name, "identity": self.identity})
        return True

    def _failed(self, why: str) -> bool:
        log.debug("leader election attempt failed", extra={"lease": self.name, "why": why})
        return self.is_leader


def leader_elector(
    kubeconfig, namespace: str, name: str, identity: str, on_poke=None, **timing: float
) -> LeaderElector:
    from .kubernetes import api_client

    try:
        return LeaderElector(api_client(kubeconfig), namespace, name, identity, on_poke=on_poke, **timing)
    except ValueError as exc:
        raise PermanentClusterError(str(exc)) from exc
