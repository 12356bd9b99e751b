"""An idle keep-alive connection outlives the clients' own idle expiry, so that the server never
closes a connection at the moment a client picks it from its pool to send the next request (httpx
keeps idle connections 5 s, uvicorn's own default; when both are 5 s the client sometimes writes
on a connection the server is closing and gets a ReadError: a soak run in CI did)."""

from __future__ import annotations

import socket
import time

from tests.reliability.service_process import ServiceProcess, service_env

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: qsim\r\nConnection: keep-alive\r\n\r\n"


def _response_status(connection: socket.socket) -> bytes:
    """The status line of the next response on `connection`, or b'' when the server closed it."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += connection.recv(65536)
    return head.split(b"\r\n")[0]


def _idle_then_request(service: ServiceProcess, idle_seconds: float) -> bytes:
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as connection:
        connection.sendall(REQUEST)
        assert _response_status(connection).endswith(b"200 OK")
        time.sleep(idle_seconds)
        try:
            connection.sendall(REQUEST)
            return _response_status(connection)
        except (BrokenPipeError, ConnectionResetError):
            return b""


def test_an_idle_connection_is_still_served_after_the_clients_five_second_expiry(tiny_model_dir, tmp_path):
    service = ServiceProcess(service_env(tmp_path, tiny_model_dir), tmp_path / "service.log").start()
    try:
        assert _idle_then_request(service, idle_seconds=6.5).endswith(b"200 OK")
    finally:
        service.stop()


def test_the_keep_alive_setting_decides_when_the_server_closes_an_idle_connection(tiny_model_dir, tmp_path):
    service = ServiceProcess(service_env(tmp_path, tiny_model_dir, keep_alive_seconds="1"), tmp_path / "service.log")
    service.start()
    try:
        assert _idle_then_request(service, idle_seconds=2.5) == b""
    finally:
        service.stop()
