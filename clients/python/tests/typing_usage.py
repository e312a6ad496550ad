"""Not a test module: `test_typing.py` type-checks it with mypy --strict, as
a user's code would be checked against the package's hints (py.typed)."""

from __future__ import annotations

from decimal import Decimal
from typing import assert_type

import wsgate
from wsgate.django import async_client, get_client, publish_many_on_commit, publish_on_commit


def sync_use(client: wsgate.Client) -> None:
    assert_type(client.publish("market.AAPL", {"p": 1.5}), int | None)
    offsets = client.publish_many([("a", 1), wsgate.Message("b", [1, 2])])
    assert_type(offsets, list[int | None])
    presence = client.presence("market.AAPL")
    assert_type(presence["count"], int)
    member: wsgate.Member = presence["members"][0]
    assert_type(member["user_id"], str)
    node: wsgate.ClusterNode = client.cluster()[0]
    assert_type(node["last_seen_ms"], int)
    client.disconnect(42)
    client.disconnect("42")
    client.revoke("wsg_token")
    client.unsubscribe(42, "doc.17")


async def async_use() -> None:
    async with wsgate.AsyncClient("http://127.0.0.1:8081", "key", publish_retry="at_least_once") as c:
        assert_type(await c.publish("g", None), int | None)
        assert_type(await c.publish_many([]), list[int | None])
        assert_type(await c.presence("g"), wsgate.Presence)
    async with async_client() as c2:
        await c2.revoke("t")


def django_use() -> None:
    publish_on_commit("user.42", {"price": Decimal("1.5")}, using="default", robust=False)
    publish_many_on_commit([("a", 1)])
    assert_type(get_client(), wsgate.Client)


def errors(e: wsgate.WsgateError) -> None:
    assert_type(e.code, str)
    assert_type(e.status, int | None)
    assert_type(e.request_id, str | None)
    if isinstance(e, wsgate.ConnectionFailed):
        assert_type(e.request_sent, bool)
