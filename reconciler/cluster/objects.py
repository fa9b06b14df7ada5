"""Custom objects of one kind in one namespace: read from a watched cache, written by compare-and-swap.

Who calls it: state that every replica of the device API must see alike (``reconciler.deviceapi``'s registry on
Kubernetes: devices and bootstrap tokens). Reads come from a cache that a WATCH keeps current, so authenticating a
request costs no API call; ``get(name, fresh=True)`` asks the API server, for the moment a cached answer would be
wrong to act on (a certificate another replica has just issued). Every write carries the resourceVersion it was
based on: of two replicas changing one object from the same read, the second gets :class:`ConflictError` and reads
again. The cache takes each write's answer at once, so a replica sees its own writes before the watch brings them.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .backend import ConflictError
from .crd import GROUP, VERSION
from .kubernetes import _wrapped, cluster_error, watch_forever


class CustomObjects:
    def __init__(self, api: client.ApiClient, namespace: str, plural: str, kind: str) -> None:
        self.namespace, self.plural, self.kind = namespace, plural, kind
        self.custom = client.CustomObjectsApi(api)
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watching(self) -> bool:
        return self._thread is not None

    def start(self) -> CustomObjects:
        """List, then keep the cache current from a WATCH (a daemon thread) until :meth:`stop`."""
        version = self._relist()
        args = {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": self.plural}
        self._thread = threading.Thread(
            target=watch_forever, args=(self._stop, version, self._relist, self.custom.list_namespaced_custom_object,
                                        args, self._apply_event, self.plural), daemon=True, name=f"watch-{self.plural}",
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # --- reads -------------------------------------------------------------------------------------

    def get(self, name: str, fresh: bool = False) -> dict[str, Any] | None:
        """The object, or None. Without a watch every read is fresh."""
        if self.watching and not fresh:
            with self._lock:
                return self._cache.get(name)
        try:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                with self._lock:
                    self._cache.pop(name, None)
                return None
            raise cluster_error(f"read {self.kind} {name}", exc) from exc
        except OSError as exc:
            raise cluster_error(f"read {self.kind} {name}", exc) from exc
        self._remember(obj)
        return obj

    def list(self) -> list[dict[str, Any]]:
        if not self.watching:
            self._relist()
        with self._lock:
            return [self._cache[name] for name in sorted(self._cache)]

    # --- writes ------------------------------------------------------------------------------------

    def create(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create ``name``; :class:`ConflictError` when it exists."""
        manifest = {**body, "apiVersion": f"{GROUP}/{VERSION}", "kind": self.kind,
                    "metadata": {**body.get("metadata", {}), "name": name}}  # fmt: skip
        return self._write(f"create {self.kind} {name}", lambda: self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, manifest, _preload_content=False))  # fmt: skip

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Write ``obj`` over the version it was read at (``metadata.resourceVersion``); :class:`ConflictError` when
        another write came in between, or the object is gone."""
        name = obj["metadata"]["name"]
        if not obj["metadata"].get("resourceVersion"):
            raise ValueError(f"{self.kind} {name}: a replace needs the resourceVersion it was read at")
        return self._write(f"update {self.kind} {name}", lambda: self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, name, obj, _preload_content=False))  # fmt: skip

    def _write(self, action: str, call) -> dict[str, Any]:
        try:
            response = call()
        except ApiException as exc:
            if exc.status in (404, 409):  # replaced meanwhile, or deleted: the caller reads again
                raise ConflictError(f"{action}: {exc.status} {exc.reason}", retry_after=0.0) from exc
            raise cluster_error(action, exc) from exc
        with _wrapped(action):
            obj = json.loads(response.data)
        self._remember(obj)
        return obj

    # --- the cache ---------------------------------------------------------------------------------

    def _remember(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._cache[obj["metadata"]["name"]] = obj

    def _relist(self) -> str:
        with _wrapped(f"list {self.plural}"):
            listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural)
        with self._lock:
            self._cache = {obj["metadata"]["name"]: obj for obj in listing["items"]}
        return listing["metadata"]["resourceVersion"]

    def _apply_event(self, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            if kind == "DELETED":
                self._cache.pop(obj["metadata"]["name"], None)
            else:
                self._cache[obj["metadata"]["name"]] = obj
