"""`wsgate.AsyncClient` against a real node (each test runs its own event
loop with asyncio.run; the subscribers are the blocking ones of conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from conftest import AsyncCountingTransport, DownNode, Node, Silent, Subscribers, unique_group

import wsgate

T = TypeVar("T")


def run(node: Node, body: Callable[[wsgate.AsyncClient], Awaitable[T]], **options: object) -> T:
    async def main() -> T:
        async with wsgate.AsyncClient(node.api, node.key, **options) as client:  # type: ignore[arg-type]
            return await body(client)

    return asyncio.run(main())


def test_publish_and_publish_many(node: Node, subscriber: Subscribers) -> None:
    plain, hist = unique_group(), unique_group("hist")
    member = subscriber("py-1", plain, hist)

    async def body(client: wsgate.AsyncClient) -> tuple[object, ...]:
        one = await client.publish(plain, {"p": 1.5})
        two = await client.publish(hist, "h1")
        many = await client.publish_many([(hist, "h2"), wsgate.Message(plain, [2])])
        none = await client.publish_many([])
        return one, two, many, none

    assert run(node, body) == (None, 1, [2, None], [])
    got = [(m["group"], m["data"]) for m in (member.message() for _ in range(4))]
    assert got == [(plain, {"p": 1.5}), (hist, "h1"), (hist, "h2"), (plain, [2])]


def test_concurrent_publishes_all_arrive(node: Node, subscriber: Subscribers, group: str) -> None:
    member = subscriber("py-2", group)

    async def body(client: wsgate.AsyncClient) -> None:
        await asyncio.gather(*(client.publish(group, i) for i in range(20)))

    run(node, body)
    assert sorted(member.message()["data"] for _ in range(20)) == list(range(20))


def test_disconnect_revoke_presence_cluster(node: Node, subscriber: Subscribers) -> None:
    group = unique_group()
    to_disconnect = subscriber("py-4", group)
    to_revoke = subscriber("py-6", group)

    async def body(client: wsgate.AsyncClient) -> tuple[wsgate.Presence, list[wsgate.ClusterNode]]:
        presence = await client.presence(group)
        nodes = await client.cluster()
        await client.disconnect("py-4")
        await client.revoke(node.tokens["py-6"])
        return presence, nodes

    presence, nodes = run(node, body)
    assert presence["count"] == 2
    assert sorted(m["user_id"] for m in presence["members"]) == ["py-4", "py-6"]
    assert [n["node"] for n in nodes] == [node.node_id]
    assert to_disconnect.close_code() == 4003
    assert to_revoke.close_code() == 4003


def test_errors_are_the_same_exceptions(node: Node) -> None:
    async def main() -> None:
        async with wsgate.AsyncClient(node.api, "wrong-key-0123456789") as client:
            with pytest.raises(wsgate.Unauthorized) as e:
                await client.publish("t.x", 1)
            assert "wrong-key-0123456789" not in repr(e.value) + str(e.value)
        async with wsgate.AsyncClient(node.api, node.key) as client:
            with pytest.raises(wsgate.BadRequest):
                await client.publish("bad group!", 1)
            with pytest.raises(wsgate.PayloadTooLarge):
                await client.publish("t.x", "x" * wsgate.MAX_BODY_BYTES)

    asyncio.run(main())


def test_503_is_retried_as_the_sync_client_does(down_node: DownNode) -> None:
    async def publish(publish_retry: wsgate.PublishRetry) -> None:
        async with wsgate.AsyncClient(
            down_node.api, down_node.key, backoff=0.01, publish_retry=publish_retry
        ) as client:
            with pytest.raises(wsgate.Unavailable):
                await client.publish("t.x", 1)

    before = down_node.unavailable()
    asyncio.run(publish("at_most_once"))
    assert down_node.unavailable() == before + 1
    asyncio.run(publish("at_least_once"))
    assert down_node.unavailable() == before + 4


def test_connection_failures_are_retried(closed_port_url: str, silent_server: Silent) -> None:
    transport = AsyncCountingTransport()

    async def main() -> None:
        async with wsgate.AsyncClient(
            closed_port_url, "some-key-0123456789", backoff=0.01, transport=transport
        ) as client:
            with pytest.raises(wsgate.ConnectionFailed) as e:
                await client.publish("t.x", 1)
            assert e.value.request_sent is False
        async with wsgate.AsyncClient(
            silent_server.url, "some-key-0123456789", timeout=0.3, backoff=0.01
        ) as client:
            with pytest.raises(wsgate.ConnectionFailed) as e:
                await client.publish("t.x", 1)
            assert e.value.request_sent is True

    asyncio.run(main())
    assert transport.requests == 3
    assert silent_server.accepted == 1
