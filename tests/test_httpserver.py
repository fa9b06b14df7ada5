"""JSONHandler.read_body: a body is read only when its length is given, sane and under the limit."""

from __future__ import annotations

import http.client
import json
import socket
from http import HTTPStatus

import pytest

from reconciler.httpserver import BackgroundServer, JSONHandler


class _Echo(JSONHandler):
    def do_POST(self) -> None:
        body = self.read_body(limit=16)
        if body is not None:
            self.send_json(HTTPStatus.OK, {"got": body.decode()})


@pytest.fixture
def server():
    running = BackgroundServer(("127.0.0.1", 0), _Echo)
    running.serve()
    yield running
    running.close()


def _raw(server: BackgroundServer, request: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are (http.client would fix the headers) and read the one response."""
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def test_a_body_within_the_limit_is_read_and_the_connection_kept(server: BackgroundServer):
    host, port = server.httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=5)
    for text in ("hello", ""):
        connection.request("POST", "/", body=text.encode())
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"got": text}
    connection.close()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Transfer-Encoding: chunked\r\n", HTTPStatus.LENGTH_REQUIRED),
        (b"Content-Length: -1\r\n", HTTPStatus.BAD_REQUEST),
        (b"Content-Length: 1_0\r\n", HTTPStatus.BAD_REQUEST),
        (b"Content-Length: 3\r\nContent-Length: 4\r\n", HTTPStatus.BAD_REQUEST),
        (b"Content-Length: 17\r\n", HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        (b"Content-Length: 99999999999999999999999\r\n", HTTPStatus.BAD_REQUEST),
    ],
)
def test_a_body_without_a_sane_length_is_refused_unread(server: BackgroundServer, headers: bytes, status: int):
    code, response_headers, body = _raw(server, b"POST / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nabc")
    assert code == status and "error" in json.loads(body)
    assert response_headers.get("Connection") == "close"


def test_a_body_cut_short_is_refused(server: BackgroundServer):
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        sock.shutdown(socket.SHUT_WR)  # the client went away mid-body
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == HTTPStatus.BAD_REQUEST and b"shorter" in response.read()
