"""`wsgate.Client` against a real node: what a publish delivers to real
sockets, the other calls, and the API's refusals as exceptions."""

from __future__ import annotations

import traceback

import pytest
from websockets.exceptions import ConnectionClosed
from conftest import (
    CountingTransport,
    DownNode,
    Node,
    Silent,
    Subscribers,
    unique_group,
)

import wsgate


@pytest.fixture
def client(node: Node) -> wsgate.Client:
    with wsgate.Client(node.api, node.key) as c:
        yield c


PAYLOAD = {
    "symbol": "AAPL",
    "price": 189.25,
    "big": 1_099_511_627_776,
    "neg": -42,
    "ok": True,
    "none": None,
    "tags": ["a", "b"],
    "nested": {"bid": 189.2, "ask": [1, 2.5], "empty": {}},
    "text": 'été – 株 "quoted"',
}


def test_publish_reaches_the_subscribed_socket(
    client: wsgate.Client, subscriber: Subscribers, group: str
) -> None:
    member = subscriber("py-1", group)
    other = subscriber("py-2", unique_group())
    assert client.publish(group, PAYLOAD) is None  # no history for t.*
    assert member.message() == {"type": "message", "group": group, "data": PAYLOAD}
    other.expect_silence(0.2)


@pytest.mark.parametrize("data", [None, 0, "text", [1, "two"], False])
def test_any_json_value_is_data(
    client: wsgate.Client, subscriber: Subscribers, group: str, data: object
) -> None:
    member = subscriber("py-1", group)
    client.publish(group, data)
    assert member.message()["data"] == data


def test_a_publish_repeated_with_its_idempotency_key_is_delivered_once(
    client: wsgate.Client, subscriber: Subscribers, group: str
) -> None:
    member = subscriber("py-1", group)
    key = "py-" + unique_group().replace(".", "-")
    assert client.publish(group, {"n": 1}, idempotency_key=key) is None
    assert client.publish(group, {"n": 1}, idempotency_key=key) is None
    assert member.message()["data"] == {"n": 1}
    member.expect_silence(0.3)
    assert client.publish_many([(group, 2), (group, 3)], idempotency_key=key + "-b") == [
        None,
        None,
    ]
    assert client.publish_many([(group, 2), (group, 3)], idempotency_key=key + "-b") == [
        None,
        None,
    ]
    assert [member.message()["data"], member.message()["data"]] == [2, 3]
    member.expect_silence(0.3)
    with pytest.raises(wsgate.BadRequest) as e:
        client.publish(group, 1, idempotency_key="not a key")
    assert "idempotency_key" in e.value.message


def test_publish_to_a_user_group_reaches_only_that_user(
    client: wsgate.Client, subscriber: Subscribers
) -> None:
    alice = subscriber("py-1")
    bob = subscriber("py-2")
    assert "user.py-1" in alice.welcome["groups"]
    client.publish("user.py-1", {"notice": "order filled"})
    assert alice.message() == {
        "type": "message",
        "group": "user.py-1",
        "data": {"notice": "order filled"},
    }
    bob.expect_silence(0.2)


def test_publish_to_a_group_without_members_is_not_an_error(client: wsgate.Client) -> None:
    assert client.publish(unique_group(), {"nobody": "listens"}) is None


def test_history_groups_answer_offsets(client: wsgate.Client, subscriber: Subscribers) -> None:
    hist = unique_group("hist")
    member = subscriber("py-1", hist)
    assert client.publish(hist, "a") == 1
    assert client.publish(hist, "b") == 2
    assert member.message()["offset"] == 1
    assert member.message()["offset"] == 2


def test_publish_many_delivers_in_order_with_offsets(
    client: wsgate.Client, subscriber: Subscribers
) -> None:
    plain, hist = unique_group(), unique_group("hist")
    member = subscriber("py-1", plain, hist)
    offsets = client.publish_many(
        [(plain, 1), wsgate.Message(hist, 2), (plain, {"n": 3}), (hist, 4)]
    )
    assert offsets == [None, 1, None, 2]
    got = [(m["group"], m["data"]) for m in (member.message() for _ in range(4))]
    assert got == [(plain, 1), (hist, 2), (plain, {"n": 3}), (hist, 4)]


def test_publish_many_of_nothing_sends_nothing(node: Node) -> None:
    transport = CountingTransport()
    with wsgate.Client(node.api, node.key, transport=transport) as client:
        assert client.publish_many([]) == []
        assert client.publish_many(iter(())) == []
    assert transport.requests == 0


def test_a_bad_message_refuses_the_whole_batch(
    client: wsgate.Client, subscriber: Subscribers, group: str
) -> None:
    member = subscriber("py-1", group)
    with pytest.raises(wsgate.BadRequest) as e:
        client.publish_many([(group, 1), ("bad group!", 2)])
    assert 'invalid group name "bad group!"' in e.value.message
    member.expect_silence(0.2)


def test_disconnect_closes_every_socket_of_the_user(
    client: wsgate.Client, subscriber: Subscribers
) -> None:
    first, second = subscriber("py-3"), subscriber("py-3")
    bystander = subscriber("py-1")
    client.disconnect("py-3")
    assert first.close_code() == 4003
    assert second.close_code() == 4003
    # The token still works: disconnect is not revoke.
    subscriber("py-3")
    bystander.ws.ping().wait(5)


def test_disconnect_takes_a_numeric_user_id(client: wsgate.Client) -> None:
    client.disconnect(424242)  # nobody connected: still ok


def test_disconnect_refuses_an_empty_user_id(client: wsgate.Client) -> None:
    with pytest.raises(wsgate.BadRequest, match="user_id must not be empty"):
        client.disconnect("")


def test_revoke_closes_the_sockets_and_refuses_the_token(
    node: Node, client: wsgate.Client, subscriber: Subscribers
) -> None:
    token = node.tokens["py-5"]
    s = subscriber("py-5")
    client.revoke(token)
    assert s.close_code() == 4003
    with pytest.raises(ConnectionClosed) as closed:
        subscriber(token=token)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    # Revoking again is fine (retries may repeat it).
    client.revoke(token)


def test_unsubscribe_ends_the_users_subscription(
    client: wsgate.Client, subscriber: Subscribers, group: str
) -> None:
    s = subscriber("py-2", group)
    other = subscriber("py-1", group)
    client.unsubscribe("py-2", group)
    assert s.recv() == {"type": "unsubscribed", "group": group}
    client.publish(group, 1)
    assert other.message()["data"] == 1
    # Retries may repeat it; nobody subscribed is fine too.
    client.unsubscribe("py-2", group)
    with pytest.raises(wsgate.BadRequest):
        client.unsubscribe("py-2", "not a group")


def test_presence_lists_the_members(
    node: Node, client: wsgate.Client, subscriber: Subscribers, group: str
) -> None:
    assert client.presence(group) == {"group": group, "count": 0, "members": []}
    s = subscriber("py-2", group)
    presence = client.presence(group)
    assert presence["group"] == group
    assert presence["count"] == 1
    assert presence["members"] == [
        {"user_id": "py-2", "session": s.welcome["session"], "node": node.node_id}
    ]


def test_presence_escapes_the_group_name(client: wsgate.Client) -> None:
    # "/" would be another path: escaped, it reaches wsgate as a name it refuses.
    with pytest.raises(wsgate.BadRequest, match="invalid group name"):
        client.presence("a/b")
    with pytest.raises(wsgate.BadRequest, match="invalid group name"):
        client.presence("a?b")
    # ".." is a valid group name, not a dot segment.
    assert client.presence("..")["group"] == ".."


def test_cluster_lists_the_node(node: Node, client: wsgate.Client, subscriber: Subscribers) -> None:
    subscriber("py-1")
    nodes = client.cluster()
    assert [n["node"] for n in nodes] == [node.node_id]
    assert nodes[0]["connections"] >= 1
    assert nodes[0]["last_seen_ms"] > 0


def _assert_no_key(error: BaseException, key: str) -> None:
    text = "".join(traceback.format_exception(error))
    assert key not in text
    assert key not in repr(error)
    assert key not in str(error)


def test_a_wrong_key_raises_unauthorized_once_and_never_shows_the_key(node: Node) -> None:
    wrong = "not-the-key-but-secret-1234567"
    before = node.errors("unauthorized")
    with wsgate.Client(node.api, wrong) as client:
        assert wrong not in repr(client)
        with pytest.raises(wsgate.Unauthorized) as e:
            client.publish("t.x", 1)
    assert isinstance(e.value, wsgate.ApiError)
    assert (e.value.code, e.value.status) == ("unauthorized", 401)
    assert e.value.message == "missing or invalid API key"
    assert e.value.request_id
    _assert_no_key(e.value, wrong)
    assert node.errors("unauthorized") == before + 1, "a 401 is not retried"


def test_the_right_key_never_shows_in_errors(node: Node, client: wsgate.Client) -> None:
    with pytest.raises(wsgate.BadRequest) as e:
        client.publish("bad group!", 1)
    _assert_no_key(e.value, node.key)
    assert node.key not in repr(client)


def test_bad_request_carries_the_api_message_and_is_not_retried(
    node: Node, client: wsgate.Client
) -> None:
    before = node.errors("bad_request")
    with pytest.raises(wsgate.BadRequest) as e:
        client.publish("bad group!", 1)
    assert (e.value.code, e.value.status) == ("bad_request", 400)
    assert e.value.message.startswith('invalid group name "bad group!"')
    assert str(e.value).startswith('bad_request: invalid group name "bad group!"')
    assert node.errors("bad_request") == before + 1


def test_a_body_over_1_mib_is_refused_before_sending(node: Node, client: wsgate.Client) -> None:
    before = node.published()
    with pytest.raises(wsgate.PayloadTooLarge) as e:
        client.publish("t.big", "x" * wsgate.MAX_BODY_BYTES)
    assert (e.value.code, e.value.status) == ("payload_too_large", None)
    assert node.published() == before


def test_the_api_s_own_413_is_payload_too_large(node: Node, client: wsgate.Client) -> None:
    # Past the client's own check, as a client with an older limit would send it.
    body = b'{"group":"t.big","data":"' + b"x" * wsgate.MAX_BODY_BYTES + b'"}'
    with pytest.raises(wsgate.PayloadTooLarge) as e:
        client._publish_encoded(body, 1)
    assert (e.value.code, e.value.status) == ("payload_too_large", 413)


def test_a_wrong_api_url_raises_not_found(node: Node) -> None:
    with wsgate.Client(node.api + "/gateway", node.key) as client:
        with pytest.raises(wsgate.NotFound) as e:
            client.publish("t.x", 1)
    assert (e.value.code, e.value.status) == ("not_found", 404)


def test_503_is_retried_then_raised(down_node: DownNode) -> None:
    for publish_retry, attempts in (("at_least_once", 3), ("at_most_once", 1)):
        before = down_node.unavailable()
        with wsgate.Client(
            down_node.api, down_node.key, backoff=0.01, publish_retry=publish_retry
        ) as client:
            with pytest.raises(wsgate.Unavailable) as e:
                client.publish("t.x", 1)
        assert (e.value.code, e.value.status) == ("unavailable", 503)
        assert down_node.unavailable() == before + attempts, publish_retry


def test_calls_that_may_repeat_are_retried_on_503(down_node: DownNode) -> None:
    before = down_node.unavailable()
    with wsgate.Client(down_node.api, down_node.key, backoff=0.01, max_attempts=4) as client:
        with pytest.raises(wsgate.Unavailable):
            client.presence("t.x")
        with pytest.raises(wsgate.Unavailable):
            client.disconnect("py-1")
    assert down_node.unavailable() == before + 8


def test_a_refused_connection_is_retried_for_every_call(closed_port_url: str) -> None:
    transport = CountingTransport()
    with wsgate.Client(closed_port_url, "some-key-0123456789", backoff=0.01, transport=transport) as c:
        with pytest.raises(wsgate.ConnectionFailed) as e:
            c.publish("t.x", 1)
        assert transport.requests == 3
        assert e.value.request_sent is False
        assert e.value.status is None
        assert e.value.code == "connection_failed"
        with pytest.raises(wsgate.ConnectionFailed):
            c.revoke("tok")
        assert transport.requests == 6


def test_a_lost_answer_is_retried_for_a_publish_only_when_asked(silent_server: Silent) -> None:
    with wsgate.Client(silent_server.url, "some-key-0123456789", timeout=0.3, backoff=0.01) as c:
        with pytest.raises(wsgate.ConnectionFailed) as e:
            c.publish("t.x", 1)
        assert e.value.request_sent is True
        assert silent_server.accepted == 1, "may have been delivered: not repeated"
        with pytest.raises(wsgate.ConnectionFailed):
            c.disconnect("py-1")
        assert silent_server.accepted == 4, "disconnect may repeat"
    with wsgate.Client(
        silent_server.url,
        "some-key-0123456789",
        timeout=0.3,
        backoff=0.01,
        publish_retry="at_least_once",
    ) as c:
        with pytest.raises(wsgate.ConnectionFailed):
            c.publish("t.x", 1)
        assert silent_server.accepted == 7


def test_max_attempts_bounds_the_tries(closed_port_url: str) -> None:
    transport = CountingTransport()
    with wsgate.Client(
        closed_port_url, "some-key-0123456789", max_attempts=1, transport=transport
    ) as c:
        with pytest.raises(wsgate.ConnectionFailed):
            c.cluster()
    assert transport.requests == 1


def test_one_client_is_shared_between_threads(
    client: wsgate.Client, subscriber: Subscribers, group: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    member = subscriber("py-2", group)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: client.publish(group, i), range(40)))
    assert sorted(member.message()["data"] for _ in range(40)) == list(range(40))
