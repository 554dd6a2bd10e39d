"""What a client can make the status server spend is bounded: request bodies are read only with a
valid ``Content-Length`` of at most ``MAX_FORM_BYTES`` (RFC 9112 6), idle connections hold no
thread, at most ``status.max_connections`` requests are handled at once (503 beyond), every
connection ends ``status.request_timeout`` seconds after it was accepted, and only requests
naming one of the server's hosts are answered (DNS rebinding). Real sockets on 127.0.0.1; the only
times are generous limits on waiting for an answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from pydantic import ValidationError

from node.config import NodeConfig
from node.ops.health import Check, Health
from node.ops.status import StatusServer
from node.state import Index

WAIT = 10.0
"""Seconds a test waits for an answer, or for the server to close a connection."""


@contextmanager
def serving(tmp_path: Path, **settings: object) -> Iterator[int]:
    """A StatusServer on a free port of 127.0.0.1 with ``status`` settings; yields the port."""
    config = NodeConfig(state_dir=tmp_path / "state", status={"port": 0, **settings})
    index = Index(config.index_path)
    server = StatusServer(config, index, lambda: Health((Check("test", True, "up"),)))
    _, port = server.start()
    try:
        yield port
    finally:
        server.stop()
        index.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def _answer(sock: socket.socket) -> int:
    """The status code of the answer read from ``sock`` up to the server's close."""
    data = b""
    with suppress(ConnectionResetError):  # a close with unread request bytes sends RST
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _request(port: int, head: str, body: bytes = b"") -> int:
    """Send ``head`` (request line and header lines, ``\\r\\n`` added) and ``body`` without
    closing the sending side; the answer's status code."""
    with _connect(port) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        return _answer(sock)


def _get(port: int, path: str = "/healthz", host: str | None = None) -> int:
    return _request(port, f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}")


def test_request_bodies_need_a_valid_small_content_length(tmp_path: Path) -> None:
    with serving(tmp_path) as port:
        head = (f"POST /deliveries/retry HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Origin: http://127.0.0.1:{port}")
        # not read: a server that read "up to the end" would wait for this body to end
        assert _request(port, head + "\r\nContent-Length: -1", b"csrf=x&id=1") == 400
        for fields, code in [("Content-Length: +5", 400), ("Content-Length: 5x", 400),
                             ("Content-Length: 0x10", 400), ("Content-Length: \u0665", 400),
                             ("Content-Length: 5\r\nContent-Length: 5", 400),
                             ("Transfer-Encoding: chunked", 411),
                             ("Transfer-Encoding: chunked\r\nContent-Length: 5", 411),
                             (f"Content-Length: {2**40}", 413)]:
            assert _request(port, f"{head}\r\n{fields}") == code, fields
        assert _request(port, head) == 411  # no Content-Length
        # a valid length is read: the form then fails only for its token
        assert _request(port, head + "\r\nContent-Length: 6", b"csrf=x") == 403
        assert _get(port) == 200  # and the server serves on


def test_idle_connections_hold_no_thread(tmp_path: Path) -> None:
    with serving(tmp_path) as port:
        assert _get(port) == 200  # the workers have started
        threads = threading.active_count()
        idle = [_connect(port) for _ in range(200)]
        try:
            # accepted in order: once this is answered, all 200 have been accepted
            assert _get(port) == 200
            assert threading.active_count() <= threads
        finally:
            for sock in idle:
                sock.close()


def test_requests_beyond_max_connections_are_answered_503(tmp_path: Path) -> None:
    with serving(tmp_path, max_connections=2, request_timeout=60) as port:
        stalled = [_connect(port) for _ in range(2)]
        for sock in stalled:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n")  # the headers never end: a worker waits
        give_up = time.monotonic() + WAIT
        while (code := _get(port)) != 503 and time.monotonic() < give_up:
            time.sleep(0.05)
        assert code == 503
        stalled[0].sendall(f"Host: 127.0.0.1:{port}\r\n\r\n".encode())
        assert _answer(stalled[0]) == 200
        while (code := _get(port)) != 200 and time.monotonic() < give_up:
            time.sleep(0.05)
        assert code == 200  # a worker is free again
        for sock in stalled:
            sock.close()


def test_connections_end_after_request_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, request_timeout=1) as port:
        idle, slow = _connect(port), _connect(port)
        slow.sendall(b"GET /healthz HTTP/1.0\r\n")
        give_up = time.monotonic() + WAIT
        with pytest.raises(OSError):  # reset once the server has closed it
            while time.monotonic() < give_up:
                slow.sendall(b"X-Slow: a header line every 0.1 s\r\n")
                time.sleep(0.1)
        assert idle.recv(1) == b""  # closed by the server, having sent nothing
        idle.close()
        slow.close()
        assert _get(port) == 200


def test_only_requests_naming_a_served_host_are_answered(tmp_path: Path) -> None:
    with serving(tmp_path, allowed_hosts=["Status.Example.org"]) as port:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}",
                     "status.example.org", "status.example.org:8443"):
            assert _get(port, "/", host) == 200, host
        for host in (f"attacker.example:{port}", "127.0.0.1.attacker.example", "status.example"):
            assert _get(port, "/", host) == 421, host
            assert _get(port, "/healthz", host) == 421, host
        assert _request(port, "GET /healthz HTTP/1.0") == 400  # no Host
        assert _request(port, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                              "Host: attacker.example") == 400
        assert _get(port, "/", "127.0.0.1:80:80") == 400


def test_allowed_hosts_are_names_without_a_port() -> None:
    status = NodeConfig(status={"host": "0.0.0.0", "token": "t",
                                "allowed_hosts": ["Node.Example.org", "[2001:DB8::1]", "::2",
                                                  "10.0.0.5"]}).status
    assert status.served_hosts == {"node.example.org", "2001:db8::1", "::2", "10.0.0.5",
                                   "0.0.0.0", "127.0.0.1", "::1", "localhost"}
    for entry in ("node.example.org:8080", "[::1]:8080", "", "a b", "http://node"):
        with pytest.raises(ValidationError, match="not a host name or address without a port"):
            NodeConfig(status={"allowed_hosts": [entry]})
