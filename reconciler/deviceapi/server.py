"""The device API server: TLS, the device's name from its client certificate, and the endpoints of the package
docstring, on aiohttp in a background thread with its own event loop.

Who calls it: ``edgectl run`` (every replica) and tests, through :class:`DeviceAPIServer`. It keeps no state of
its own: identities are :class:`.identity.Identity`'s, assignments and reports the backend's, files the store's
and the TUF repository's. It must not block its event loop: backend, registry, CA, ``on_telemetry`` and file
reads run in thread pools.

Why aiohttp: TLS with client certificates comes straight from an ``ssl.SSLContext`` and the peer's certificate
from ``transport.get_extra_info("ssl_object")``; one event loop holds thousands of idle keep-alive connections and
long-polls without a thread each; it bounds request lines, headers and bodies (``client_max_size``), closes slow
and idle connections (``keepalive_timeout``, which trickled header bytes do not restart) and cancels a handler
whose client went away; responses can be streamed, which Range needs; and the same library is an async client
for the fleet simulator.

Every request, in this order (nothing is read that a refusal makes useless):

1. TLS: a client certificate, when sent, must chain to the fleet CA, else the handshake fails (the ssl module);
2. the HTTP parser: request line and headers within :class:`.limits.Limits`, a well-formed ``Content-Length``;
3. authentication (all but enrolment): :meth:`.identity.Identity.authenticate` names the device, or refuses;
4. limits before the body: the telemetry rate (429), ``Content-Length`` present (411) and within the endpoint's
   ``protocol.MAX_*`` (413), no ``Content-Encoding`` (415), the body read within a deadline (408);
5. the body validated against :mod:`.protocol` (400), then checked against the device's name (403);
6. the backend (``TemporaryError``: 503 with Retry-After).

Enrolment takes a bootstrap token (:meth:`.identity.Identity.enrol`) or, when ``node_of_token`` is given, an agent
pod's ServiceAccount token: its CSR is checked first, then the cluster names the Node (``enrol_node``).

Every 4xx is a :class:`.protocol.Refusal`, counted by reason and logged with the certificate's name and the name
asked for. Only the HTTP parser's own 400s (a malformed request line, header or ``Content-Length``) are plain
text; they are counted too (reason ``malformed-request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import ssl
import stat
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from reconciler.cluster.backend import AssignmentStatus, Backend, PermanentClusterError, spec_to_json
from reconciler.errors import PermanentError, TemporaryError

from . import protocol
from .ca import device_of, peer_certificate
from .identity import Identity, IdentityError, Reason
from .limits import Limits, TokenBucket, retry_after

__all__ = ["DeviceAPIServer"]

log = logging.getLogger("edge_reconciler.deviceapi.server")

_TARGET_DIGEST = re.compile(r"^([0-9a-f]{64})\.")
_TUF = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._+-]*/)*[A-Za-z0-9][A-Za-z0-9._+-]*$")
_RANGE = re.compile(r"^bytes=(\d{1,18})-(\d{0,18})$")
_NAME = re.compile(protocol.NAME_PATTERN)
_VERSION = re.compile(protocol.VERSION_PATTERN)

LISTINGS_KEPT = 200_000
"""Most devices whose last listing is kept; past it the set starts over."""
_IDENTITY_STATUS = {Reason.NO_CERTIFICATE: 401, Reason.BAD_CSR: 400, Reason.BAD_NAME: 400, Reason.CA_UNUSABLE: 503}
"""How an IdentityError is answered; any reason not here is 403."""
_HTTP_REASONS = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}
_DEVICE = web.RequestKey("device", str)
"""The authenticated device's name."""
_CERTIFICATE = web.RequestKey("certificate", str)
"""The name in the client certificate, verified or not (for logs)."""
_ASKED = web.RequestKey("asked", str)
"""What the request asked for (a model, a token's id, a delta), for logs."""
_COUNTED = web.RequestKey("counted", bool)
"""The refusal was counted already (by the middleware, not aiohttp's parser)."""
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class _Refused(Exception):
    def __init__(
        self, status: int, reason: str, message: str, asked: str | None = None, close: bool = False, **headers: str
    ) -> None:
        """``close``: end the connection after the answer (a body that will not arrive is not waited for)."""
        super().__init__(message)
        self.status, self.reason, self.message, self.asked, self.close = status, reason, message, asked, close
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}


class DeviceAPIServer:
    def __init__(
        self,
        address: tuple[str, int],
        identity: Identity,
        backend_factory: Callable[[], Backend],
        ssl_context: ssl.SSLContext,
        blobs: Path | None = None,
        tuf: Path | None = None,
        deltas: Callable[[str, str], Path] | None = None,
        on_telemetry: Callable[[Backend, str, dict], bool | str] | None = None,
        on_logs: Callable[[Backend, str, list[dict]], bool] | None = None,
        on_capture: Callable[[Backend, str, str, str, bytes], bool | str] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        register_enrolled: bool = False,
        limits: Limits | None = None,
        node_of_token: Callable[[str], str] | None = None,
        on_join: Callable[[Backend, str, str, Any], bool | str] | None = None,
        fleet_upstream: Callable[[], tuple[str, ssl.SSLContext] | None] | None = None,
        reuse_port: bool = False,
    ) -> None:
        """``backend_factory`` is called once in each worker thread (the first time it needs a backend): return
        one shared thread-safe backend (LocalBackend, a watching KubernetesBackend) or a new one per call; the
        caller owns and closes what it returns. ``blobs``: the store's ``blobs/sha256`` folder. ``deltas(a, b)``:
        the path of a delta (made on first request; any exception is 404). ``on_telemetry(backend, device,
        summary)`` stores validated summaries whose ``device`` is the certificate's, with the worker thread's
        backend (``reconciler.telemetry.summaries.recorder``); False: nothing was stored (no such assignment); a
        string: nothing was stored, for that reason (``duplicate``, ``expired``).
        ``register_enrolled``: after an enrolment, ``backend.register_device(name, token's labels)`` (the local
        backend's inventory).
        ``node_of_token(token)``: the Node an agent pod's ServiceAccount token proves
        (``KubernetesBackend.node_of_token`` with the audience and the agents' ServiceAccount bound); None:
        enrolments with such a token are refused (``service-account-enrolment-disabled``).
        ``reuse_port``: listen with SO_REUSEPORT, beside other processes serving the same address
        (:mod:`reconciler.deviceapi.processes`)."""
        self.address, self.identity, self.backend_factory = address, identity, backend_factory
        self.ssl_context, self.blobs, self.tuf, self.deltas = ssl_context, blobs, tuf, deltas
        self.on_telemetry, self.clock, self.register_enrolled = on_telemetry, clock, register_enrolled
        self.on_logs = on_logs
        self.on_capture = on_capture
        """``on_capture(backend, device, model, version, data)``: keep a batch of sampled inputs; False when the
        device's assignment of the model asks for no capture (refused), a string when the batch is unusable."""
        """``on_logs(backend, device, lines)``: keep an agent's recent log lines; False when its assignments ask
        for none (no ``edgectl debug`` names it now): refused, so nothing leaves a device unasked."""
        self.limits, self.node_of_token = limits or Limits(), node_of_token
        self.on_join = on_join
        self.fleet_upstream, self.reuse_port = fleet_upstream, reuse_port
        """The SuperLink's own address (``https://127.0.0.1:PORT``, a context trusting it) while one runs: devices'
        SuperNodes reach its Fleet routes, and only those, through this port (its Control API stays on loopback)."""
        self._upstream_session: Any = None
        """``on_join(backend, device, training, public_key)``: let the key of the device's current certificate into
        the training's SuperLink; False when no assignment of the device calls it to that training (refused), a
        string when the training cannot take it now (503, tried again)."""
        self.refusals = Counter("edge_reconciler_device_api_refusals", "Device API requests refused, by reason.",
                                ["reason"], registry=registry)  # fmt: skip
        self.sent = Counter("edge_reconciler_device_api_sent_bytes", "Bytes of files sent to devices, by kind "
                            "(artifact, delta, metadata).", ["kind"], registry=registry)  # fmt: skip
        self.bytes_served = 0
        self.telemetry_bucket = TokenBucket(self.limits.telemetry_per_second, self.limits.telemetry_burst)
        self._local = threading.local()
        self._work = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="device-api")
        self._files = ThreadPoolExecutor(self.limits.file_workers, thread_name_prefix="device-api-files")
        self._deltas_in_flight: dict[tuple[str, str], asyncio.Future[Path]] = {}
        self._listings: dict[str, tuple[list[tuple[str, Any, int]], str]] = {}
        """Each device's last listing (its specs and generations, and the listing's ETag): a poll whose specs are
        unchanged is answered (a 304, most often) without building and hashing the listing again. The specs are
        the backend's own objects; the body is not kept (a 200 is rare, and bodies for 100,000 devices are not)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._bound: tuple[str, int] = address

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> DeviceAPIServer:
        """Listen (port 0: a free one) and serve in a background thread; returns once listening."""
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="device-api", daemon=True)
        self._thread.start()
        ready.result(timeout=60)
        return self

    @property
    def bound(self) -> tuple[str, int]:
        """The address listened on (the port chosen, where 0 was asked)."""
        return self._bound[0], self._bound[1]

    @property
    def url(self) -> str:
        host, port = self._bound[:2]
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    def close(self) -> None:
        """Stop listening, give requests in flight ``limits.shutdown_seconds``, stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        self._work.shutdown(wait=False, cancel_futures=True)
        self._files.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> DeviceAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, ready: Future[None]) -> None:
        import asyncio.sslproto

        asyncio.sslproto.SSLProtocol.max_size = self.limits.tls_read_buffer  # see Limits.tls_read_buffer
        sys.setswitchinterval(min(sys.getswitchinterval(), self.limits.switch_seconds))  # see Limits.switch_seconds
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # the address in use, say
            ready.set_exception(exc)
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._stop())
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        app = web.Application(client_max_size=protocol.MAX_TELEMETRY_BODY, middlewares=[self._guard])
        app.router.add_post(protocol.ENROL, self._enrol)
        app.router.add_post(protocol.RENEW, self._renew)
        app.router.add_get(protocol.ASSIGNMENTS, self._assignments, allow_head=False)
        app.router.add_put(protocol.STATUS, self._status)
        if self.on_telemetry is not None:
            app.router.add_post(protocol.TELEMETRY, self._telemetry)
        if self.on_logs is not None:
            app.router.add_post(protocol.LOGS, self._logs)
        if self.on_capture is not None:
            app.router.add_post(protocol.CAPTURES, self._capture)
        if self.on_join is not None:
            app.router.add_post(protocol.TRAINING_JOIN, self._join)
        if self.fleet_upstream is not None:
            app.router.add_route("*", protocol.FLEET_PREFIX + "{tail:[A-Za-z0-9/_-]+}", self._fleet)
        if self.blobs is not None:
            app.router.add_get("/artifacts/sha256/{digest:[0-9a-f]{64}}", self._blob)
        if self.deltas is not None:
            app.router.add_get("/artifacts/delta/{base:[0-9a-f]{64}}/{target:[0-9a-f]{64}}", self._delta)
        if self.tuf is not None:
            app.router.add_get("/tuf/{path:.+}", self._tuf)
        counted = type("_CountedAccessLog", (_CountParserRefusals,), {"owner": self})
        self._runner = web.AppRunner(
            app, handler_cancellation=True, keepalive_timeout=self.limits.idle_seconds,
            lingering_time=self.limits.lingering_seconds, shutdown_timeout=self.limits.shutdown_seconds,
            max_line_size=self.limits.max_line, max_field_size=self.limits.max_line,
            max_headers=self.limits.max_headers, auto_decompress=False, access_log_class=counted,
            access_log=logging.getLogger("edge_reconciler.deviceapi.access"),
        )  # fmt: skip
        await self._runner.setup()
        # Our own listener rather than web.TCPSite: TCPSite cannot bound the TLS handshake (asyncio's 60 s).
        self._listener = await asyncio.get_running_loop().create_server(
            self._runner.server, self.address[0], self.address[1], ssl=self.ssl_context, backlog=512,
            reuse_address=True, reuse_port=self.reuse_port or None, ssl_handshake_timeout=self.limits.handshake_seconds,
            ssl_shutdown_timeout=self.limits.shutdown_seconds,
        )  # fmt: skip
        self._bound = self._listener.sockets[0].getsockname()[:2]

    async def _stop(self) -> None:
        if self._upstream_session is not None:
            await self._upstream_session.close()
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- plumbing ----------------------------------------------------------------------------------

    async def _call(self, function: Callable[..., T], *args: Any, files: bool = False) -> T:
        pool = self._files if files else self._work
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args))

    def _backend(self) -> Backend:
        """This worker thread's backend (see ``backend_factory``)."""
        backend = getattr(self._local, "backend", None)
        if backend is None:
            backend = self._local.backend = self.backend_factory()
        return backend

    def _peer(self, request: web.Request) -> x509.Certificate | None:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        return peer_certificate(ssl_object.getpeercert(binary_form=True) if ssl_object else None)

    async def _authenticate(self, request: web.Request, current_only: bool = False) -> str:
        device = await self._call(self.identity.authenticate, self._certificate(request), self.clock(), current_only)
        request[_DEVICE] = device
        return device

    def _certificate(self, request: web.Request) -> x509.Certificate | None:
        """The peer's certificate, its name noted for the logs (verified or not)."""
        certificate = self._peer(request)
        if certificate is not None:
            try:
                request[_CERTIFICATE] = device_of(certificate)
            except IdentityError:
                request[_CERTIFICATE] = f"serial:{certificate.serial_number:x}"
        return certificate

    async def _body(self, request: web.Request, limit: int, model: type[M]) -> M:
        """The body as ``model``, after the limits: a length given (411), numeric (400), within ``limit`` (413),
        not compressed (415: a small gzip body could grow past the limit), JSON (415), arrived in time (408), valid
        (400)."""
        length = request.headers.get("Content-Length")
        if length is None or "Transfer-Encoding" in request.headers:
            raise _Refused(411, "length-required", "a body needs a Content-Length (chunked bodies are not read)")
        if not length.isdigit():
            raise _Refused(400, "bad-length", "Content-Length must be a non-negative integer")
        if int(length) > limit:
            raise _Refused(413, "too-large", f"this endpoint takes at most {limit} bytes, not {int(length)}")
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise _Refused(415, "encoded-body", "bodies are sent as they are (no Content-Encoding)")
        if "Content-Type" in request.headers and request.content_type != "application/json":
            raise _Refused(415, "not-json", f"bodies are application/json, not {request.content_type}")
        try:
            async with asyncio.timeout(self.limits.body_seconds):
                raw = await request.read()
        except TimeoutError:
            message = f"the body did not arrive in {self.limits.body_seconds:g} s"
            raise _Refused(408, "body-timeout", message, close=True) from None
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False, include_context=False)[:3]
            )
            raise _Refused(400, "invalid-body", f"not a valid {model.__name__}: {problems}"[:1024]) from None

    def _refuse(self, request: web.BaseRequest, refused: _Refused) -> web.Response:
        request[_COUNTED] = True
        self.refusals.labels(refused.reason).inc()
        level = logging.WARNING if refused.status in (401, 403, 413) else logging.INFO
        log.log(level, "refused", extra={
            "status": refused.status, "reason": refused.reason, "path": request.path,
            "certificate": request.get(_DEVICE) or request.get(_CERTIFICATE) or "-",
            "asked": refused.asked or request.get(_ASKED) or "-", "detail": refused.message,
        })  # fmt: skip
        body = protocol.Refusal(reason=refused.reason, message=refused.message).model_dump_json().encode()
        response = web.Response(status=refused.status, body=body, content_type="application/json",
                                headers=refused.headers)  # fmt: skip
        if refused.close:
            response.force_close()
        return response

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as refused:
            return self._refuse(request, refused)
        except IdentityError as exc:
            status = _IDENTITY_STATUS.get(exc.reason, 403)  # type: ignore[call-overload]
            return self._refuse(request, _Refused(status, str(exc.reason), exc.message))
        except TemporaryError as exc:
            log.warning("device API: temporary failure", extra={"path": request.path, "error": str(exc)})
            refused = _Refused(503, "unavailable", "try again later", Retry_After=retry_after(exc.retry_after))
            return self._refuse(request, refused)
        except PermanentError as exc:
            log.error("device API: cannot serve", extra={"path": request.path, "error": str(exc)})
            return self._refuse(request, _Refused(503, "unavailable", "the device API cannot serve this now"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = _HTTP_REASONS.get(exc.status, f"http-{exc.status}")
            return self._refuse(request, _Refused(exc.status, reason, exc.reason))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("device API: unexpected error", extra={"path": request.path})
            return self._refuse(request, _Refused(500, "internal", "internal error"))

    # --- identity ----------------------------------------------------------------------------------

    async def _enrol(self, request: web.Request) -> web.Response:
        body = await self._body(request, protocol.MAX_ENROL_BODY, protocol.EnrolRequest)
        if body.token is not None:
            request[_ASKED] = "token " + body.token.split(".", 1)[0]  # the token's id, never its secret
            issued = await self._call(self.identity.enrol, body.token, body.csr, self.clock())
        else:
            assert body.service_account_token is not None  # the model asks for exactly one proof
            issued = await self._enrol_node(request, body.service_account_token, body.csr)
        if self.register_enrolled and body.token is not None:
            try:
                await self._call(self._register, issued.device)
            except (TemporaryError, PermanentError) as exc:  # the token is spent: the device gets its certificate
                log.error("enrolled but not in the backend's inventory; register it by hand",
                          extra={"device": issued.device, "error": str(exc)})  # fmt: skip
        log.info("enrolled", extra={"device": issued.device, "notAfter": issued.not_after})
        return _json(200, issued)

    async def _enrol_node(self, request: web.Request, token: str, csr: str) -> protocol.Certificate:
        """An agent pod's enrolment: the CSR is checked first (no cluster call for a bad one), then the cluster
        names the Node its ServiceAccount token proves."""
        request[_ASKED] = "serviceAccountToken"
        if self.node_of_token is None:
            raise IdentityError(Reason.SERVICE_ACCOUNT_DISABLED, "this device API takes bootstrap tokens only")
        request[_ASKED] = "node " + await self._call(self.identity.ca.requested_name, csr)
        try:
            node = await self._call(self.node_of_token, token)
        except PermanentClusterError as exc:
            raise IdentityError(Reason.SERVICE_ACCOUNT_REFUSED, str(exc)) from exc
        return await self._call(self.identity.enrol_node, node, csr, self.clock())

    def _register(self, device: str) -> None:
        """Put a device enrolled with a labels token into the inventory. A token that named the device carries no
        labels: the device is in the inventory already (or is added by a person), and its labels stay as they are."""
        record = self.identity.registry.device(device)
        if record is not None and record.labels:
            self._backend().register_device(device, dict(record.labels))  # type: ignore[attr-defined]

    async def _renew(self, request: web.Request) -> web.Response:
        device = await self._authenticate(request, current_only=True)
        body = await self._body(request, protocol.MAX_ENROL_BODY, protocol.RenewRequest)
        issued = await self._call(self.identity.renew, device, body.csr, self.clock())
        log.info("renewed", extra={"device": device, "notAfter": issued.not_after})
        return _json(200, issued)

    # --- assignments and status --------------------------------------------------------------------

    async def _assignments(self, request: web.Request) -> web.Response:
        # Authenticated and read in one trip to a worker thread: a poll is most of what a fleet sends, and each trip
        # costs the event loop (which serves every device) about as much as the registry read itself.
        device, found, etag = await self._call(self._authenticated_listing, self._certificate(request), self.clock())
        request[_DEVICE] = device
        wait = _wait_seconds(request.query.get("wait"))
        known = request.headers.get("If-None-Match")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while _etag_matches(known, etag) and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(self.limits.poll_seconds, left))
            found, etag = await self._call(self._read_assignments, device)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if _etag_matches(known, etag):
            return web.Response(status=304, headers=headers)
        return web.Response(status=200, body=_listing(device, found), content_type="application/json",
                            headers=headers)  # fmt: skip

    def _authenticated_listing(self, certificate: x509.Certificate | None, now: datetime) -> tuple[str, list, str]:
        device = self.identity.authenticate(certificate, now)
        return device, *self._read_assignments(device)

    def _read_assignments(self, device: str) -> tuple[list[tuple[str, Any, int]], str]:
        """The device's (model, spec, generation), and the ETag of their listing."""
        backend = self._backend()
        backend.sync(inventory=False)
        found = sorted((model, spec, generation) for model, (spec, generation) in
                       backend.assignments_for(device).items() if spec.device == device)  # fmt: skip
        known = self._listings.get(device)
        if known is not None and known[0] == found:  # most polls: what this device was last sent
            return found, known[1]
        etag = f'"{hashlib.sha256(_listing(device, found)).hexdigest()}"'
        if len(self._listings) >= LISTINGS_KEPT:
            self._listings.clear()
        self._listings[device] = found, etag
        return found, etag

    async def _status(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        device = await self._authenticate(request)
        request[_ASKED] = f"model {model[:253]}"
        if not _NAME.fullmatch(model):
            raise _Refused(400, "bad-name", "a model name is a DNS subdomain name")
        report = await self._body(request, protocol.MAX_STATUS_BODY, protocol.StatusReport)
        if problem := protocol.extras_problem(report.model_extra or {}):
            raise _Refused(400, "invalid-body", problem)
        body = report.model_dump(by_alias=True, exclude_unset=True)
        body["lastSeen"] = self.clock().astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if not await self._call(self._store_status, device, model, AssignmentStatus.from_json(body)):
            raise _Refused(403, "not-assigned", f"device {device} has no assignment for model {model}")
        return web.Response(status=204)

    def _store_status(self, device: str, model: str, status: AssignmentStatus) -> bool:
        backend = self._backend()
        backend.sync(inventory=False)
        if model not in backend.assignments_for(device):
            return False
        backend.report_status(device, model, status)
        return True

    # --- telemetry ---------------------------------------------------------------------------------

    async def _telemetry(self, request: web.Request) -> web.Response:
        device = await self._authenticate(request)
        wait = self.telemetry_bucket.take(device, time.monotonic())
        if wait > 0:
            raise _Refused(429, "rate-limited", f"at most {self.limits.telemetry_per_second:g} summaries a second "
                           f"(bursts of {self.limits.telemetry_burst})", Retry_After=retry_after(wait))  # fmt: skip
        summary = await self._body(request, protocol.MAX_TELEMETRY_BODY, protocol.TelemetrySummary)
        if summary.device != device:
            raise _Refused(403, "wrong-device", f"a summary from {device} must name {device}", asked=summary.device)
        assert self.on_telemetry is not None
        unnamed = {field for field in ("stream", "sequence", "ended") if getattr(summary, field) is None}
        body = summary.model_dump(mode="json", by_alias=True, exclude=unnamed)
        stored = await self._call(self._store_telemetry, device, body)
        # Acknowledged either way: a summary of a model this device is no longer assigned, one counted already
        # (sent again) or one older than the store keeps is worth no retry.
        if stored is True:
            return web.json_response({"accepted": 1}, status=202)
        return web.json_response({"accepted": 0, "reason": stored or "not-assigned"}, status=202)

    async def _logs(self, request: web.Request) -> web.Response:
        device = await self._authenticate(request)
        wait = self.telemetry_bucket.take(device, time.monotonic())
        if wait > 0:
            raise _Refused(429, "rate-limited", "uploads come at the telemetry rate",
                           Retry_After=retry_after(wait))  # fmt: skip
        upload = await self._body(request, protocol.MAX_TELEMETRY_BODY, protocol.LogUpload)
        lines = [line.model_dump(mode="json") for line in upload.lines]
        if not await self._call(self._store_logs, device, lines):
            raise _Refused(403, "not-debugging", f"no debug session names {device} now: its log lines stay on it")
        return web.json_response({"accepted": len(lines)}, status=202)

    async def _capture(self, request: web.Request) -> web.Response:
        device = await self._authenticate(request)
        model, version = request.match_info["model"], request.match_info["version"]
        if not _NAME.fullmatch(model) or not _VERSION.fullmatch(version):
            raise _Refused(400, "bad-name", "a model name is a DNS subdomain name; a version letters, digits, . + _ -")
        wait = self.telemetry_bucket.take(device, time.monotonic())
        if wait > 0:
            raise _Refused(429, "rate-limited", "uploads come at the telemetry rate",
                           Retry_After=retry_after(wait))  # fmt: skip
        if (request.content_length or 0) > protocol.MAX_CAPTURE_BODY:
            raise _Refused(413, "too-large", f"a batch is at most {protocol.MAX_CAPTURE_BODY} bytes")
        data = await request.content.read(protocol.MAX_CAPTURE_BODY + 1)
        if len(data) > protocol.MAX_CAPTURE_BODY:
            raise _Refused(413, "too-large", f"a batch is at most {protocol.MAX_CAPTURE_BODY} bytes")
        stored = await self._call(self._store_capture, device, model, version, data)
        if stored is False:
            raise _Refused(403, "not-capturing", f"model {model} captures no inputs on {device}")
        if isinstance(stored, str):
            raise _Refused(400, "invalid-body", stored)
        return web.json_response({"accepted": 1}, status=202)

    async def _join(self, request: web.Request) -> web.Response:
        device = await self._authenticate(request, current_only=True)
        name = request.match_info["name"]
        request[_ASKED] = f"training {name[:253]}"
        if not _NAME.fullmatch(name):
            raise _Refused(400, "bad-name", "a training name is a DNS subdomain name")
        certificate = self._peer(request)
        assert certificate is not None  # authenticated above
        joined = await self._call(self._store_join, device, name, certificate.public_key())
        if joined is False:
            raise _Refused(403, "not-called", f"no assignment of {device} calls it to training {name}")
        if isinstance(joined, str):
            raise _Refused(503, "training-unavailable", joined, Retry_After="10")
        return web.Response(status=204)

    async def _fleet(self, request: web.Request) -> web.StreamResponse:
        """Flower's Fleet API, passed through to the SuperLink. Flower authenticates the SuperNode itself (a signature
        by a key the controller registered when the device joined); nothing but the Fleet routes is reachable."""
        import aiohttp

        assert self.fleet_upstream is not None
        upstream = self.fleet_upstream()
        if upstream is None:
            raise _Refused(503, "no-training", "no federated training runs now", Retry_After="10")
        base, context = upstream
        if (request.content_length or 0) > protocol.MAX_FLEET_BODY:
            raise _Refused(413, "too-large", f"a Fleet message is at most {protocol.MAX_FLEET_BODY} bytes")
        body = await request.content.read(protocol.MAX_FLEET_BODY + 1)
        if len(body) > protocol.MAX_FLEET_BODY:
            raise _Refused(413, "too-large", f"a Fleet message is at most {protocol.MAX_FLEET_BODY} bytes")
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("flwr-") or k.lower() in
                   ("content-type", "accept", "user-agent")}  # fmt: skip
        if self._upstream_session is None:
            self._upstream_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        try:
            async with self._upstream_session.request(request.method, base + request.rel_url.path_qs, data=body,
                                                      headers=headers, ssl=context) as answer:  # fmt: skip
                data = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower().startswith("flwr-") or k.lower() ==
                        "content-type"}  # fmt: skip
                return web.Response(status=answer.status, body=data, headers=kept)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Refused(503, "training-unavailable", f"the SuperLink did not answer: {type(exc).__name__}",
                           Retry_After="5") from None  # fmt: skip

    def _store_join(self, device: str, name: str, public_key: Any) -> bool | str:
        assert self.on_join is not None
        return self.on_join(self._backend(), device, name, public_key)

    def _store_capture(self, device: str, model: str, version: str, data: bytes) -> bool | str:
        assert self.on_capture is not None
        return self.on_capture(self._backend(), device, model, version, data)

    def _store_logs(self, device: str, lines: list[dict]) -> bool:
        assert self.on_logs is not None
        return self.on_logs(self._backend(), device, lines)

    def add_counted_elsewhere(self, refusals: dict[str, float], sent: dict[str, float], served: int) -> None:
        """Add what another process serving this address counted (:mod:`reconciler.deviceapi.processes`), so that
        ``/metrics`` tells about the whole device API. ``bytes_served`` is changed on the event loop, which alone
        changes it otherwise."""
        for reason, value in refusals.items():
            self.refusals.labels(reason).inc(value)
        for kind, value in sent.items():
            self.sent.labels(kind).inc(value)
        if served:
            loop = self._loop

            def add() -> None:
                self.bytes_served += served

            if loop is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(_call_soon(add), loop).result(timeout=10)
            else:
                add()

    def bytes_sent(self, kind: str) -> int:
        """Bytes of ``kind`` (artifact, delta, metadata) sent since the start."""
        return int(_totals(self.sent, "kind").get(kind, 0))

    def counted(self) -> tuple[dict[str, float], dict[str, float], int]:
        """Refusals by reason, bytes sent by kind, bytes served: this process's counts since the start."""
        return _totals(self.refusals, "reason"), _totals(self.sent, "kind"), self.bytes_served

    def _store_telemetry(self, device: str, summary: dict) -> bool | str:
        assert self.on_telemetry is not None
        stored = self.on_telemetry(self._backend(), device, summary)
        return stored if isinstance(stored, str) else bool(stored)

    # --- files -------------------------------------------------------------------------------------

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        await self._authenticate(request)
        digest = request.match_info["digest"]
        assert self.blobs is not None
        return await self._file(request, self.blobs / digest, digest, "artifact")

    async def _delta(self, request: web.Request) -> web.StreamResponse:
        await self._authenticate(request)
        key = request.match_info["base"], request.match_info["target"]
        request[_ASKED] = f"delta {key[0][:12]}..{key[1][:12]}"
        making = self._deltas_in_flight.get(key)
        if making is None:  # one thread makes a delta however many devices ask for it at once
            assert self.deltas is not None
            making = self._deltas_in_flight[key] = asyncio.ensure_future(self._call(self.deltas, *key, files=True))
            making.add_done_callback(lambda _: self._deltas_in_flight.pop(key, None))
        try:
            path = await asyncio.shield(making)
        except asyncio.CancelledError:
            raise
        except Exception:  # a base or target the store does not hold: the agent downloads in full
            raise _Refused(404, "no-delta", "no delta between these blobs") from None
        return await self._file(request, path, None, "delta")

    async def _tuf(self, request: web.Request) -> web.StreamResponse:
        await self._authenticate(request)
        path = request.match_info["path"]
        if not _TUF.fullmatch(path) or ".." in path.split("/"):
            raise _Refused(404, "not-found", "no such file")
        assert self.tuf is not None
        if path.startswith("targets/"):  # the signed files themselves, named <sha256>.<name> (consistent snapshot)
            named = _TARGET_DIGEST.match(path.rsplit("/", 1)[-1])
            # Their ETag is that sha256, which is what an agent resuming a download names in If-Range.
            return await self._file(request, self.tuf / path, named[1] if named else None, "artifact")
        return await self._file(request, self.tuf / path, None, "metadata")

    async def _file(self, request: web.Request, file: Path, digest: str | None, kind: str) -> web.StreamResponse:
        """A file with Range (``bytes=N-`` and ``bytes=N-M``), If-Range against the strong ETag (the sha256 for
        blobs and TUF targets, else modification time and size), Repr-Digest with it, HEAD."""
        try:
            fd, size, mtime = await self._call(_open_regular, file, files=True)
        except OSError:
            raise _Refused(404, "not-found", "no such file") from None
        try:
            etag = f'"{digest}"' if digest else f'"{mtime:x}-{size:x}"'
            start, end, status = 0, size - 1, 200
            wanted, if_range = request.headers.get("Range"), request.headers.get("If-Range")
            if wanted and (if_range is None or if_range.strip() == etag):
                match = _RANGE.match(wanted.strip())
                if not match or int(match[1]) >= size or (match[2] and int(match[2]) < int(match[1])):
                    raise _Refused(416, "range-not-satisfiable", f"the file has {size} bytes",
                                   Content_Range=f"bytes */{size}")  # fmt: skip
                start, end = int(match[1]), min(int(match[2]), size - 1) if match[2] else size - 1
                status = 206
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": etag}
            if digest:
                headers["Repr-Digest"] = f"sha-256=:{b64encode(bytes.fromhex(digest)).decode()}:"
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = end - start + 1
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            offset = start
            while offset <= end:
                chunk = await self._call(os.pread, fd, min(self.limits.chunk_bytes, end - offset + 1), offset,
                                         files=True)  # fmt: skip
                if not chunk:
                    break
                try:
                    async with asyncio.timeout(self.limits.write_seconds):
                        await response.write(chunk)
                except TimeoutError:
                    if request.transport is not None:
                        request.transport.abort()
                    raise ConnectionResetError("the client stopped reading") from None
                offset += len(chunk)
                self.bytes_served += len(chunk)
                self.sent.labels(kind).inc(len(chunk))
            await response.write_eof()
            return response
        finally:
            os.close(fd)


class _CountParserRefusals(AbstractAccessLogger):
    """aiohttp answers requests its parser rejects (a malformed line, header or Content-Length) itself, before
    any middleware: count those too. No access log otherwise (a fleet polling every few seconds would drown it)."""

    owner: DeviceAPIServer

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.status >= 400 and not request.get(_COUNTED):
            reason = "malformed-request" if response.status == 400 else f"http-{response.status}"
            self.owner.refusals.labels(reason).inc()
            log.info("refused by the HTTP parser", extra={"status": response.status, "remote": request.remote})


def _totals(counter: Counter, label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for metric in counter.collect() for sample in metric.samples
            if sample.name.endswith("_total")}  # fmt: skip


async def _call_soon(function: Callable[[], None]) -> None:
    function()


def _open_regular(file: Path) -> tuple[int, int, int]:
    """(fd, size, mtime_ns) of a regular file; OSError for anything else (a folder, a missing file)."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise IsADirectoryError(str(file))
    return fd, info.st_size, info.st_mtime_ns


def _listing(device: str, found: list[tuple[str, Any, int]]) -> bytes:
    return protocol.Assignments(device=device, assignments=[
        protocol.Assignment(model=model, generation=generation, spec=spec_to_json(spec))
        for model, spec, generation in found
    ]).model_dump_json(by_alias=True).encode()  # fmt: skip


def _json(status: int, message: BaseModel) -> web.Response:
    return web.Response(status=status, body=message.model_dump_json(by_alias=True).encode(),
                        content_type="application/json")  # fmt: skip


def _wait_seconds(value: str | None) -> float:
    """``?wait=S``: seconds, clamped to ``protocol.MAX_WAIT_SECONDS``; 400 when not a number >= 0."""
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise _Refused(400, "bad-wait", f"wait is seconds, 0 to {protocol.MAX_WAIT_SECONDS:g}")
    return min(seconds, protocol.MAX_WAIT_SECONDS)


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: ``*`` or a list of entity tags (weak comparison, as RFC 9110 asks for this header)."""
    if not header:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags
