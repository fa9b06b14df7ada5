"""The HTTP server the controller's endpoint and the device's model server share: quiet, threaded, run in a
background thread, with one handler base that never reads a request body without a limit.

Outside the layered packages on purpose: the controller and the agent both serve HTTP, and neither may
import the other.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_LENGTH = re.compile(r"[0-9]{1,18}")


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that goes away mid-response (an agent killed or cut off) is normal at the edge: no traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class JSONHandler(BaseHTTPRequestHandler):
    """Base of both servers' handlers: HTTP/1.1 keep-alive, no access log (a fleet polling every few seconds
    would drown stderr), and bodies read only up to a limit the handler names."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_bytes(
        self, status: HTTPStatus, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: HTTPStatus, body: Any) -> None:
        self.send_bytes(status, json.dumps(body).encode(), "application/json")

    def read_body(self, limit: int) -> bytes | None:
        """The request body, or None after answering 411 (no Content-Length: a chunked body is not read),
        400 (a malformed or conflicting length, or a body cut short) or 413 (over ``limit``). A body left
        unread would be taken for the next request on this connection, so a refusal also closes it."""
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if len(set(lengths)) != 1 or not _LENGTH.fullmatch(lengths[0].strip()):
            return self._refuse(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        length = int(lengths[0])
        if length > limit:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {limit} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            return self._refuse(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        return body

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self.send_bytes(status, json.dumps({"error": message}).encode(), "application/json", {"Connection": "close"})


class BackgroundServer:
    """Serves ``handler`` (a handler class whose ``owner`` attribute is set to this object) in a thread."""

    thread_name = "http"

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        bound = type(handler.__name__, (handler,), {"owner": self})
        self.httpd = QuietHTTPServer(address, bound)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name=self.thread_name)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, which never ran otherwise
            self.httpd.shutdown()
            self._thread = None
        self.httpd.server_close()
