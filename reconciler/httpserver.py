"""The HTTP server class that the controller's endpoint and the device's model server share.

Outside the layered packages on purpose: both the controller and the agent serve HTTP, and neither may
import the other.
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that goes away mid-response (an agent killed or cut off) is normal at the edge: no traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)
