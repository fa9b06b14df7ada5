"""The HTTP server the controller's endpoint and the device's model server share: quiet, threaded, run in a
background thread.

Outside the layered packages on purpose: the controller and the agent both serve HTTP, and neither may
import the other.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that goes away mid-response (an agent killed or cut off) is normal at the edge: no traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


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
