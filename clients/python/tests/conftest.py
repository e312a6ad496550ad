"""Fixtures: the real nodes `tests/python_client.rs` starts (their addresses
and tokens come in WSGATE_TEST_* variables), and WebSocket subscribers that
watch what reaches a browser.

Run them with `cargo test --test python_client`. Run alone, the tests that
need a node fail (they never skip) naming that command.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

WAIT = 5.0


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: these tests run against the nodes that "
            "`cargo test --test python_client` starts",
            pytrace=False,
        )
    return value


def metric(url: str, series: str) -> float:
    """One sample of a node's /metrics, e.g.
    `wsgate_api_errors_total{error="unavailable"}`."""
    text = httpx.get(url, timeout=WAIT).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {series} not found")


@dataclass
class Node:
    api: str
    ws: str
    metrics: str
    node_id: str
    key: str
    tokens: dict[str, str]

    def errors(self, code: str) -> float:
        return metric(self.metrics, f'wsgate_api_errors_total{{error="{code}"}}')

    def published(self) -> float:
        return metric(self.metrics, "wsgate_messages_published_total")


@dataclass
class DownNode:
    """A node whose Redis is gone: publishes and presence answer 503."""

    api: str
    metrics: str
    key: str

    def unavailable(self) -> float:
        return metric(self.metrics, 'wsgate_api_errors_total{error="unavailable"}')


@pytest.fixture(scope="session")
def node() -> Node:
    return Node(
        api=_env("WSGATE_TEST_API"),
        ws=_env("WSGATE_TEST_WS"),
        metrics=_env("WSGATE_TEST_METRICS"),
        node_id=_env("WSGATE_TEST_NODE_ID"),
        key=_env("WSGATE_TEST_API_KEY"),
        tokens=json.loads(_env("WSGATE_TEST_TOKENS")),
    )


@pytest.fixture(scope="session")
def down_node() -> DownNode:
    return DownNode(
        api=_env("WSGATE_TEST_DOWN_API"),
        metrics=_env("WSGATE_TEST_DOWN_METRICS"),
        key=_env("WSGATE_TEST_API_KEY"),
    )


def unique_group(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return unique_group()


class Subscriber:
    """A real WebSocket client, authenticated with a token."""

    def __init__(self, ws_url: str, token: str) -> None:
        self._connecting = connect(ws_url, proxy=None, open_timeout=WAIT)
        self.ws: ClientConnection = self._connecting.__enter__()
        self.ws.send(json.dumps({"type": "auth", "token": token}))
        self.welcome = self.recv()
        assert self.welcome["type"] == "welcome", self.welcome

    def recv(self, timeout: float = WAIT) -> Any:
        return json.loads(self.ws.recv(timeout=timeout))

    def subscribe(self, group: str) -> None:
        self.ws.send(json.dumps({"type": "subscribe", "group": group, "id": group}))
        reply = self.recv()
        assert reply["type"] == "subscribed" and reply["group"] == group, reply

    def message(self, timeout: float = WAIT) -> Any:
        """The next frame, which must be a group message; returns it whole."""
        frame = self.recv(timeout)
        assert frame["type"] == "message", frame
        return frame

    def expect_silence(self, seconds: float) -> None:
        try:
            frame = self.ws.recv(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {frame!r}")

    def close_code(self, timeout: float = WAIT) -> int | None:
        """Waits for the server to close the socket; returns its close code."""
        try:
            while True:
                self.ws.recv(timeout=timeout)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    def close(self) -> None:
        self.ws.close()


@dataclass
class Subscribers:
    node: Node
    opened: list[Subscriber] = field(default_factory=list)

    def __call__(self, user: str = "py-1", *groups: str, token: str | None = None) -> Subscriber:
        s = Subscriber(self.node.ws, token or self.node.tokens[user])
        self.opened.append(s)
        for g in groups:
            s.subscribe(g)
        return s


@pytest.fixture
def subscriber(node: Node) -> Iterator[Subscribers]:
    """`subscriber(user, *groups)` opens a subscribed, authenticated socket."""
    subs = Subscribers(node)
    yield subs
    for s in subs.opened:
        s.close()


@dataclass
class Silent:
    """A TCP server on loopback that accepts connections, reads, and never
    answers: every request to it times out after it was sent."""

    url: str
    accepted: int = 0


@pytest.fixture
def silent_server() -> Iterator[Silent]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    server = Silent(url=f"http://127.0.0.1:{port}")
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            server.accepted += 1
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def closed_port_url() -> str:
    """An address where nothing listens: connections are refused."""
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class CountingTransport(httpx.HTTPTransport):
    """A real transport that counts the requests it is asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await super().handle_async_request(request)
