"""The Kubernetes backend: devices are Nodes (their labels are the inventory), assignments are
``ModelAssignment`` objects in one namespace.

Who calls it: the controller (``edgectl run --backend kubernetes``), and its device API, which writes the
status agents report and asks :meth:`KubernetesBackend.node_of_token` which Node an agent pod's token proves
(agents themselves hold no rights on the cluster). Reads come from a cache that watches keep current (one
LIST, then a WATCH per kind, re-listed when the server says the resource version is gone), so a reconcile
costs no requests; without watches ``sync()`` LISTs once. Specs are written with server-side apply under
field manager ``edge-reconciler``, only for assignments that changed, several at a time. Client errors are
wrapped in :class:`ClusterError` with the cause chained.

A note on this API server generation: a server-side apply that breaks the CRD schema is answered 500
("failed to create typed patch object") where a create gets 422; both are permanent errors.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from reconciler.api.status import RolloutStatus
from reconciler.errors import DEFAULT_RETRY_AFTER
from reconciler.plan import Desired, Device

from .backend import (
    FIELD_MANAGER,
    AssignmentStatus,
    ClusterError,
    Event,
    PermanentClusterError,
    StoredRollout,
    TemporaryClusterError,
    spec_from_json,
    spec_to_json,
)
from .crd import (
    ALL_CRDS,
    GROUP,
    KIND,
    PLURAL,
    ROLLOUT_KIND,
    ROLLOUT_PLURAL,
    VERSION,
    assignment_name,
)

log = logging.getLogger(__name__)
APPLY_WORKERS = 8
EVENT_LABEL = "app.kubernetes.io/managed-by"
EVENT_MESSAGE = 1024
"""Characters of an event's message sent (the API server refuses more than 1 KiB in events.k8s.io)."""
CONFLICT_RETRY_SECONDS = 1.0
"""A 409 means another writer got there first: the next attempt reads its version and wins or merges."""
SCHEMA_REFUSED = "failed to create typed patch object"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
"""What a TokenReview of a pod-bound ServiceAccount token says about the pod (``status.user.extra``)."""


def api_client(kubeconfig: Path | None, context: str | None = None) -> client.ApiClient:
    """From a kubeconfig file (at ``context``, else its current one); without one, from ``$KUBECONFIG`` (a list
    of files merged, as kubectl does) or ``~/.kube/config`` when a context is named or ``$KUBECONFIG`` is set, and
    from the in-cluster service account otherwise."""
    try:
        if kubeconfig is not None or context is not None or os.environ.get("KUBECONFIG"):
            path = str(kubeconfig) if kubeconfig is not None else None
            return config.new_client_from_config(path, context=context)
        config.load_incluster_config()
        return client.ApiClient()
    except (config.ConfigException, OSError, TypeError, ValueError, AttributeError) as exc:
        # The client raises whatever its parse of a file that is no kubeconfig meets (TypeError on a bare string).
        where = f" from {kubeconfig}" if kubeconfig is not None else ""
        raise PermanentClusterError(f"no Kubernetes credentials{where}: {exc or type(exc).__name__}") from exc


class KubernetesBackend:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str = "edge-system",
        node_selector: str | None = None,
        device: str | None = None,
    ) -> None:
        """``node_selector``: the Nodes that are edge devices (default: every Node). ``device``: an agent's own
        Node; it then reads only its own assignments."""
        self.api = api
        self.namespace = namespace
        self.node_selector = node_selector
        self.assignment_selector = f"{GROUP}/device={device}" if device else None
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.writes = 0
        self._lock = threading.Lock()
        self._nodes: dict[str, Device] = {}
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._watching = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._mirrored: dict[str, dict[str, Any]] = {}

    # --- setup -------------------------------------------------------------------------------------

    def install(self) -> None:
        """Create (or update) the CRD and the namespace; wait until the CRD serves."""
        extensions = client.ApiextensionsV1Api(self.api)
        with _wrapped("install the CRDs"):
            for crd in ALL_CRDS:
                name = crd["metadata"]["name"]
                extensions.patch_custom_resource_definition(
                    name, crd, field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml",
                )  # fmt: skip
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
            self.core.patch_namespace(
                self.namespace, namespace, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip
        deadline = time.monotonic() + 30
        for name in (crd["metadata"]["name"] for crd in ALL_CRDS):
            while True:
                with _wrapped(f"read the CRD {name}"):
                    crd = extensions.read_custom_resource_definition(name)
                if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
                    break
                if time.monotonic() > deadline:
                    raise TemporaryClusterError(f"CRD {name} did not become Established in 30 s")
                time.sleep(0.1)

    def create_nodes(self, nodes: Mapping[str, Mapping[str, str]]) -> None:
        """Node objects named and labelled so (``kubernetes.io/hostname`` added): what the API server holds once
        K3s devices joined, with no kubelet behind them (kwok's way of simulating a fleet). For the fleet
        simulator and tests; a real fleet's Nodes are made by their kubelets."""

        def create(name: str) -> None:
            labels = {**nodes[name], "kubernetes.io/hostname": name}
            self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))

        with _wrapped(f"create {len(nodes)} nodes"), ThreadPoolExecutor(APPLY_WORKERS) as pool:
            list(pool.map(create, nodes))

    def delete_nodes(self, selector: str) -> None:
        """Every Node ``selector`` picks (what :meth:`create_nodes` made)."""
        with _wrapped(f"delete nodes {selector}"):
            self.core.delete_collection_node(label_selector=selector)

    def namespace_objects(self) -> dict[str, int]:
        """How many objects of each of the controller's kinds the namespace holds (plural -> count, none left out)."""
        counts = {}
        for crd in ALL_CRDS:
            plural = crd["spec"]["names"]["plural"]
            with _wrapped(f"list {plural}"):
                counts[plural] = len(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                               plural)["items"])  # fmt: skip
        return counts

    def delete_namespace_objects(self) -> None:
        """Every object of the controller's kinds in the namespace (a simulated fleet's, at its end); the namespace
        itself stays."""
        for crd in ALL_CRDS:
            plural = crd["spec"]["names"]["plural"]
            with _wrapped(f"delete {plural}"):
                self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)

    # --- reads -------------------------------------------------------------------------------------

    def sync(self, inventory: bool = True) -> None:
        """``inventory=False`` for agents: they read assignments only (and may not list Nodes)."""
        if self._watching.is_set():
            return
        if inventory:
            self._list_nodes()
        self._list_assignments()

    def devices(self) -> list[Device]:
        with self._lock:
            return sorted(self._nodes.values(), key=lambda d: d.name)

    def assignments(self) -> dict[tuple[str, str], Desired]:
        with self._lock:
            return {key: spec_from_json(obj["spec"]) for key, obj in self._objects.items()}

    def assignments_for(self, device: str) -> dict[str, tuple[Desired, int]]:
        """model -> (spec, generation) of one device's assignments (for its agent)."""
        with self._lock:
            return {
                model: (spec_from_json(obj["spec"]), int(obj["metadata"].get("generation", 0)))
                for (owner, model), obj in self._objects.items()
                if owner == device
            }

    def statuses(self) -> dict[tuple[str, str], AssignmentStatus]:
        with self._lock:
            return {key: AssignmentStatus.from_json(obj.get("status")) for key, obj in self._objects.items()}

    def _list_nodes(self) -> str:
        with _wrapped("list nodes"):
            nodes = self.core.list_node(label_selector=self.node_selector)
        with self._lock:
            self._nodes = {n.metadata.name: Device(n.metadata.name, dict(n.metadata.labels or {})) for n in nodes.items}
        return nodes.metadata.resource_version

    def _list_assignments(self) -> str:
        with _wrapped("list ModelAssignments"):
            listing = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, label_selector=self.assignment_selector
            )
        with self._lock:
            self._objects = {_key(obj): obj for obj in listing["items"]}
        return listing["metadata"]["resourceVersion"]

    # --- watches -----------------------------------------------------------------------------------

    def start_watches(self) -> None:
        """Keep the cache current from WATCH streams (threads); ``sync()`` becomes free."""
        self._stop.clear()
        # List first, here: when this returns, the cache is complete and the watches continue from it.
        versions = (self._list_nodes(), self._list_assignments())
        for target, version in zip((self._watch_nodes, self._watch_assignments), versions, strict=True):
            thread = threading.Thread(target=target, args=(version,), daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)
        self._watching.set()

    def stop_watches(self) -> None:
        self._stop.set()
        self._watching.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def _watch_nodes(self, version: str) -> None:
        def apply_event(kind: str, node: Any) -> None:
            with self._lock:
                if kind == "DELETED":
                    self._nodes.pop(node.metadata.name, None)
                else:
                    self._nodes[node.metadata.name] = Device(node.metadata.name, dict(node.metadata.labels or {}))

        args = {"label_selector": self.node_selector} if self.node_selector else {}
        self._watch_loop(version, self._list_nodes, self.core.list_node, args, apply_event, "nodes")

    def _watch_assignments(self, version: str) -> None:
        def apply_event(kind: str, obj: dict[str, Any]) -> None:
            with self._lock:
                if kind == "DELETED":
                    self._objects.pop(_key(obj), None)
                else:
                    self._objects[_key(obj)] = obj

        args = {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}
        if self.assignment_selector:
            args["label_selector"] = self.assignment_selector
        self._watch_loop(
            version, self._list_assignments, self.custom.list_namespaced_custom_object, args, apply_event, "assignments"
        )

    def _watch_loop(self, version: str | None, relist, list_call, args: dict, apply_event, what: str) -> None:
        watch_forever(self._stop, version, relist, list_call, args, apply_event, what)

    # --- agent pods --------------------------------------------------------------------------------

    def node_of_token(self, token: str, audience: str, service_account: str) -> str:
        """The Node an agent pod runs on, as the pod's own projected ServiceAccount token proves it: the device
        name an agent may enrol under without a bootstrap token. ``service_account``: ``NAMESPACE:NAME`` of the
        agents' ServiceAccount, the only one whose pods are devices.

        The API server checks signature, expiry, audience and that the bound pod still exists; it caches a
        success for a few seconds, so the pod is read here again and its uid compared: a token of a deleted pod
        must not enrol a new pod's Node. The Node comes from the pod's ``spec.nodeName`` (the scheduler's or
        the DaemonSet's choice), never from what the caller says. Refusals are :class:`PermanentClusterError`;
        an unreachable API server is a :class:`TemporaryClusterError`."""
        namespace, _, name = service_account.partition(":")
        if not namespace or not name or ":" in name:
            raise ValueError(f"{service_account!r}: the agents' ServiceAccount is NAMESPACE:NAME")
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[audience]))
        with _wrapped("review a ServiceAccount token"):
            status = client.AuthenticationV1Api(self.api).create_token_review(review).status
        if not status.authenticated:
            error = status.error or "not authenticated"
            if "audience" in error:
                raise PermanentClusterError(f"the ServiceAccount token is not for audience {audience}: {error}")
            raise PermanentClusterError(f"the ServiceAccount token is not valid: {error}")
        if audience not in (status.audiences or []):
            # An empty list means "valid for the API server itself": a token meant for Kubernetes, not for us.
            raise PermanentClusterError(f"the ServiceAccount token is not for audience {audience} (it is for "
                                        f"{', '.join(status.audiences or ['the API server'])})")  # fmt: skip
        user = status.user
        expected = f"system:serviceaccount:{namespace}:{name}"
        if user is None or user.username != expected:
            who = user.username if user is not None else "nobody"
            raise PermanentClusterError(f"the token is {who}'s, not the agents' ServiceAccount's ({expected})")
        extra = user.extra or {}
        pod_name, pod_uid = _single(extra.get(POD_NAME_EXTRA)), _single(extra.get(POD_UID_EXTRA))
        if not pod_name or not pod_uid:
            raise PermanentClusterError(f"the token of {expected} is not bound to a pod: mount a projected "
                                        "ServiceAccount token, not a Secret's")  # fmt: skip
        try:
            pod = self.core.read_namespaced_pod(pod_name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise PermanentClusterError(f"pod {namespace}/{pod_name} of the token is gone") from exc
            raise cluster_error(f"read pod {namespace}/{pod_name}", exc) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise cluster_error(f"read pod {namespace}/{pod_name}", exc) from exc
        if pod.metadata.uid != pod_uid:
            raise PermanentClusterError(f"pod {namespace}/{pod_name} has uid {pod.metadata.uid}, the token's pod had "
                                        f"uid {pod_uid}: that pod was deleted")  # fmt: skip
        if not pod.spec.node_name:
            raise PermanentClusterError(f"pod {namespace}/{pod_name} is not scheduled to a Node yet")
        return str(pod.spec.node_name)

    # --- writes ------------------------------------------------------------------------------------

    def apply(self, desired: Iterable[Desired]) -> int:
        specs = list(desired)
        if not specs:
            return 0
        with ThreadPoolExecutor(max_workers=min(APPLY_WORKERS, len(specs))) as pool:
            results = list(pool.map(self._apply_one, specs))
        with self._lock:
            for obj in results:
                self._objects[_key(obj)] = obj
        return len(results)

    def _apply_one(self, spec: Desired) -> dict[str, Any]:
        name = assignment_name(spec.device, spec.model)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {
                "name": name,
                "labels": {
                    f"{GROUP}/device": spec.device, f"{GROUP}/model": spec.model, f"{GROUP}/rollout": spec.rollout,
                },
            },
            "spec": spec_to_json(spec),
        }  # fmt: skip
        with _wrapped(f"apply ModelAssignment {name}"):
            # Raw response: this client deserializes 200 only, and an apply that creates answers 201.
            response = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, body, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml", _preload_content=False,
            )  # fmt: skip
        with self._lock:
            self.writes += 1
        return json.loads(response.data)

    def delete(self, keys: Iterable[tuple[str, str]]) -> int:
        removed = 0
        for device, model in keys:
            name = assignment_name(device, model)
            try:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise cluster_error(f"delete ModelAssignment {name}", exc) from exc
            with self._lock:
                self.writes += 1
                self._objects.pop((device, model), None)
            removed += 1
        return removed

    def _assignment(self, device: str, model: str, fresh: bool) -> dict[str, Any] | None:
        """From the cache, or (``fresh``, or no watch keeps the cache) from the API server."""
        if not fresh and self._watching.is_set():
            with self._lock:
                return self._objects.get((device, model))
        name = assignment_name(device, model)
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise cluster_error(f"read ModelAssignment {name}", exc) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise cluster_error(f"read ModelAssignment {name}", exc) from exc

    def save_rollouts(self, records: Mapping[str, StoredRollout]) -> int:
        """Each rollout's record in its FleetRollout's status subresource (what ``kubectl get edge`` shows; the spec
        names the model and version); only changes are written."""
        written = 0
        for name, record in sorted(records.items()):
            healthy, targeted = record.status.ready
            body = {**record.to_json(), "ready": f"{healthy}/{targeted}"}  # a printer column of its own
            if self._mirrored.get(name) == body:
                continue
            spec = {"model": record.status.model, "version": record.status.version}
            manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": ROLLOUT_KIND, "metadata": {"name": name},
                        "spec": spec}  # fmt: skip
            with _wrapped(f"save rollout {name}"):
                response = self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, ROLLOUT_PLURAL, name, manifest, field_manager=FIELD_MANAGER,
                    force=True, _content_type="application/apply-patch+yaml", _preload_content=False,
                )  # fmt: skip
                generation = int(json.loads(response.data).get("metadata", {}).get("generation", 0))
                # Server-side apply here too: a field the record no longer has is removed, not left behind.
                status = {"apiVersion": manifest["apiVersion"], "kind": ROLLOUT_KIND, "metadata": {"name": name},
                          "status": {**body, "observedGeneration": generation}}  # fmt: skip
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, self.namespace, ROLLOUT_PLURAL, name, status, field_manager=FIELD_MANAGER,
                    force=True, _content_type="application/apply-patch+yaml", _preload_content=False,
                )  # fmt: skip
            self._mirrored[name] = body
            with self._lock:
                self.writes += 2
            written += 1
        return written

    def rollouts(self) -> dict[str, StoredRollout]:
        with _wrapped("list FleetRollouts"):
            listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, ROLLOUT_PLURAL)
        found = {}
        for item in listing.get("items", []):
            name = item["metadata"]["name"]
            body = item.get("status") if isinstance(item.get("status"), Mapping) else None
            if body is None and isinstance(item.get("spec"), Mapping) and "phase" in item["spec"]:
                body = item["spec"]  # written by an older controller, before the status subresource
            if body is not None:
                found[name] = StoredRollout.from_json(body, name)
                # What the server holds: a changed object is written again.
                self._mirrored[name] = {k: v for k, v in body.items() if k != "observedGeneration"}
        return found

    def mirrored_rollouts(self) -> dict[str, RolloutStatus]:
        """The rollouts' status as the controller last saved them."""
        return {name: record.status for name, record in self.rollouts().items()}

    def record_event(self, event: Event, now: datetime, again: bool = True) -> None:
        """A core/v1 Event on the FleetRollout or the ModelAssignment, named after the event's key so that the
        same event again is counted on one object (as the kubelet's event aggregation does). Not counted in
        ``writes``."""
        involved = assignment_name(event.name, event.model or "") if event.kind == "Device" else event.name
        name, stamp = f"{involved}.{event.key[:16]}", now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {EVENT_LABEL: FIELD_MANAGER},
                         "annotations": {f"{GROUP}/kind": event.kind, f"{GROUP}/name": event.name,
                                         f"{GROUP}/model": event.model or ""}},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "namespace": self.namespace, "name": involved,
                               "kind": KIND if event.kind == "Device" else ROLLOUT_KIND},
            "reason": event.reason, "message": event.message[:EVENT_MESSAGE], "type": event.type,
            "count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": FIELD_MANAGER},
        }  # fmt: skip
        with _wrapped(f"record event {name}"):
            try:
                self.core.create_namespaced_event(self.namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                if again:
                    count = (self.core.read_namespaced_event(name, self.namespace).count or 1) + 1
                    self.core.patch_namespaced_event(name, self.namespace, {"count": count, "lastTimestamp": stamp})

    def events(self, kind: str | None = None, name: str | None = None) -> list[Event]:
        with _wrapped("list events"):
            items = self.core.list_namespaced_event(
                self.namespace, label_selector=f"{EVENT_LABEL}={FIELD_MANAGER}"
            ).items
        found = []
        for item in items:
            notes = item.metadata.annotations or {}
            event = Event(notes.get(f"{GROUP}/kind", ""), notes.get(f"{GROUP}/name", ""), item.reason or "",
                          item.message or "", item.type or "Normal", notes.get(f"{GROUP}/model") or None,
                          item.count or 1, _stamp(item.first_timestamp), _stamp(item.last_timestamp))  # fmt: skip
            if (kind is None or event.kind == kind) and (name is None or event.name == name):
                found.append(event)
        return sorted(found, key=lambda e: (e.last_seen or "", e.first_seen or ""))

    def report_status(self, device: str, model: str, status: AssignmentStatus) -> None:
        body = status.to_json()
        body.setdefault("lastSeen", datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
        name = assignment_name(device, model)
        with _wrapped(f"update the status of ModelAssignment {name}"):
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, {"status": body}
            )
        with self._lock:
            self.writes += 1


def watch_forever(
    stop: threading.Event, version: str | None, relist, list_call, args: dict, apply_event, what: str
) -> None:
    """Apply ``list_call``'s WATCH events until ``stop``: resume from the last version seen after a dropped
    connection, ``relist()`` (which refills the caller's cache and returns its version) when the server says that
    version is gone (410)."""
    while not stop.is_set():
        try:
            version = version or relist()
            stream = watch.Watch()
            for event in stream.stream(list_call, resource_version=version, timeout_seconds=5, **args):
                if stop.is_set():
                    stream.stop()
                    return
                obj = event["object"]
                meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
                version = meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
                apply_event(event["type"], obj)
        except ApiException as exc:
            if exc.status == 410:  # resource version too old: list again
                version = None
                continue
            log.warning("watch %s: %s; retrying", what, exc.reason)
            stop.wait(1)
        except Exception as exc:  # connection drops: the stream ends, the loop resumes from `version`
            log.warning("watch %s: %s; retrying", what, exc)
            stop.wait(1)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["spec"]["device"], obj["spec"]["model"]


def _single(values: Any) -> str | None:
    """One value of a user's ``extra`` entry (a list by the API's type); anything else counts as none."""
    return values[0] if isinstance(values, list) and len(values) == 1 and values[0] else None


def _stamp(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    """The client's exceptions become ClusterError, with the cause chained."""
    try:
        yield
    except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
        raise cluster_error(action, exc) from exc


def cluster_error(action: str, exc: ApiException | OSError | urllib3.exceptions.HTTPError) -> ClusterError:
    """The kind of a client failure. An answer in 4xx other than 409/429 is permanent (RBAC, validation, a
    missing CRD or namespace): the same request gets the same answer. So is a schema refusal sent as 500.
    No answer at all (connection refused, timeout, DNS) is temporary, except a TLS certificate the client
    does not trust: that is configuration."""
    if isinstance(exc, ApiException):
        message = f"{action}: {exc.status} {exc.reason}"
        status = exc.status or 0
        if status == 429:
            return TemporaryClusterError(message, retry_after=_retry_after(exc.headers))
        if status == 409:
            return TemporaryClusterError(message, retry_after=CONFLICT_RETRY_SECONDS)
        if (status >= 500 or status == 0) and SCHEMA_REFUSED not in str(exc.body or ""):
            return TemporaryClusterError(message, retry_after=_retry_after(exc.headers))
        return PermanentClusterError(message)
    if isinstance(getattr(exc, "reason", None) or exc, urllib3.exceptions.SSLError):
        return PermanentClusterError(f"{action}: {exc}")
    return TemporaryClusterError(f"{action}: {exc}")


def _retry_after(headers: Any) -> float:
    """Seconds from a Retry-After header (the form in seconds; a date falls back to the default)."""
    value = (headers or {}).get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return DEFAULT_RETRY_AFTER
