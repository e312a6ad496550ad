"""What the clients send and how they read answers they cannot get from a
healthy node (a 503 that heals, a proxy's page, odd bodies), with httpx's
MockTransport standing in for wsgate. The real node's answers are in
test_client.py."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import traceback
from collections.abc import Callable

import httpx
import pytest

import wsgate
from wsgate import _core

KEY = "mock-secret-key-0123456789"
URL = "http://wsgate.test:8081"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Answers from a list, in turn (the last one repeats); records requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **options: object) -> wsgate.Client:
        options.setdefault("backoff", 0)
        return wsgate.Client(URL, KEY, transport=httpx.MockTransport(self), **options)  # type: ignore[arg-type]

    def async_client(self, **options: object) -> wsgate.AsyncClient:
        options.setdefault("backoff", 0)
        return wsgate.AsyncClient(URL, KEY, transport=httpx.MockTransport(self), **options)  # type: ignore[arg-type]


def ok(body: object = None) -> httpx.Response:
    return httpx.Response(200, json={"ok": True} if body is None else body)


def refusal(status: int, code: str, message: str = "no") -> httpx.Response:
    return httpx.Response(
        status, json={"error": code, "message": message}, headers={"x-request-id": "rid-1"}
    )


def test_each_call_sends_what_the_api_documents() -> None:
    rec = Recorder(
        ok(),
        ok({"ok": True, "offsets": [7, None]}),
        ok(),
        ok(),
        ok({"group": "a/b", "count": 0, "members": []}),
        ok({"nodes": []}),
    )
    with rec.client() as c:
        assert c.publish("market.AAPL", {"p": 1}) is None
        assert c.publish_many([("a", 1), wsgate.Message("b", None)]) == [7, None]
        c.disconnect(42)
        c.revoke("wsg_tok")
        c.presence("a/b")
        assert c.cluster() == []
    sent = [(r.method, r.url.raw_path.decode(), r.content) for r in rec.requests]
    assert sent == [
        ("POST", "/api/v1/publish", b'{"group":"market.AAPL","data":{"p":1}}'),
        (
            "POST",
            "/api/v1/publish",
            b'{"messages":[{"group":"a","data":1},{"group":"b","data":null}]}',
        ),
        ("POST", "/api/v1/disconnect", b'{"user_id":42}'),
        ("POST", "/api/v1/revoke", b'{"token":"wsg_tok"}'),
        ("GET", "/api/v1/groups/a%2Fb/presence", b""),
        ("GET", "/api/v1/cluster", b""),
    ]
    for r in rec.requests:
        assert r.headers["authorization"] == f"Bearer {KEY}"
        assert r.headers["accept"] == "application/json"
        assert r.headers["user-agent"].startswith(f"wsgate-python/{wsgate.__version__}")
    assert rec.requests[0].headers["content-type"] == "application/json"


def test_a_path_in_the_api_url_is_kept() -> None:
    rec = Recorder(ok())
    c = wsgate.Client(URL + "/gw/", KEY, transport=httpx.MockTransport(rec))
    c.publish("g", 1)
    assert rec.requests[0].url.path == "/gw/api/v1/publish"


def test_non_ascii_data_is_sent_as_utf8() -> None:
    rec = Recorder(ok())
    rec.client().publish("g", {"t": "été 株"})
    assert json.loads(rec.requests[0].content.decode("utf-8")) == {
        "group": "g",
        "data": {"t": "été 株"},
    }


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthorized", wsgate.Unauthorized),
        (400, "bad_request", wsgate.BadRequest),
        (413, "payload_too_large", wsgate.PayloadTooLarge),
        (404, "not_found", wsgate.NotFound),
        (405, "method_not_allowed", wsgate.MethodNotAllowed),
        (503, "unavailable", wsgate.Unavailable),
    ],
)
def test_each_error_code_is_its_exception(
    status: int, code: str, cls: type[wsgate.ApiError]
) -> None:
    rec = Recorder(refusal(status, code, "the reason"))
    with pytest.raises(cls) as e:
        rec.client(max_attempts=1).publish("g", 1)
    assert type(e.value) is cls
    assert (e.value.code, e.value.status, e.value.message) == (code, status, "the reason")
    assert e.value.request_id == "rid-1"
    assert str(e.value) == f"{code}: the reason (HTTP {status}, request rid-1)"
    assert repr(e.value) == f"{cls.__name__}(code={code!r}, status={status}, message='the reason')"


@pytest.mark.parametrize("status", [400, 401, 404, 405, 413])
def test_4xx_is_never_retried(status: int) -> None:
    rec = Recorder(refusal(status, "x"), ok())
    with pytest.raises(wsgate.ApiError):
        rec.client(publish_retry="at_least_once").disconnect("u")
    assert len(rec.requests) == 1


def test_an_unknown_code_is_read_by_its_status() -> None:
    rec = Recorder(httpx.Response(503, json={"error": "overloaded", "message": "later"}))
    with pytest.raises(wsgate.Unavailable) as e:
        rec.client().presence("g")
    assert e.value.code == "overloaded"
    assert len(rec.requests) == 3, "a 503 is retried whatever its code"


def test_a_proxy_page_is_an_unexpected_response_without_its_body() -> None:
    page = httpx.Response(502, text="<html>upstream secret-ish details</html>")
    rec = Recorder(page)
    with pytest.raises(wsgate.UnexpectedResponse) as e:
        rec.client().presence("g")
    assert (e.value.code, e.value.status) == ("unexpected_response", 502)
    assert e.value.message == "HTTP 502 Bad Gateway"
    assert "upstream" not in str(e.value)
    assert len(rec.requests) == 1, "only 503 is retried"


def test_a_proxy_503_page_is_unavailable_and_retried() -> None:
    rec = Recorder(httpx.Response(503, text="busy"), ok())
    assert rec.client(publish_retry="at_least_once").publish("g", 1) is None
    assert len(rec.requests) == 2


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"ok": True, "offsets": [1, 2]}),  # one message sent
    ],
)
def test_an_odd_success_body_is_an_unexpected_response(answer: httpx.Response) -> None:
    with pytest.raises(wsgate.UnexpectedResponse):
        Recorder(answer).client().publish("g", 1)


def test_a_503_that_heals_is_retried_for_repeatable_calls() -> None:
    rec = Recorder(refusal(503, "unavailable"), refusal(503, "unavailable"), ok())
    rec.client().revoke("tok")
    assert len(rec.requests) == 3


def test_a_publish_is_retried_on_503_only_at_least_once() -> None:
    answers = (refusal(503, "unavailable"), ok({"ok": True, "offsets": [5]}))
    rec = Recorder(*answers)
    with pytest.raises(wsgate.Unavailable):
        rec.client().publish("g", 1)
    assert len(rec.requests) == 1
    rec = Recorder(*answers)
    assert rec.client(publish_retry="at_least_once").publish("g", 1) == 5
    assert len(rec.requests) == 2


def test_a_publish_that_never_left_is_retried_by_default() -> None:
    refused = httpx.ConnectError("connection refused")
    rec = Recorder(refused, httpx.ConnectTimeout("slow"), ok())
    assert rec.client().publish("g", 1) is None
    assert len(rec.requests) == 3


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("t"), httpx.RemoteProtocolError("gone"), httpx.ReadError("reset")],
)
def test_a_publish_that_may_have_arrived_is_not_repeated_by_default(
    failure: httpx.TransportError,
) -> None:
    rec = Recorder(failure, ok())
    with pytest.raises(wsgate.ConnectionFailed) as e:
        rec.client().publish("g", 1)
    assert e.value.request_sent is True
    assert len(rec.requests) == 1
    rec = Recorder(failure, ok())
    assert rec.client(publish_retry="at_least_once").publish("g", 1) is None
    assert len(rec.requests) == 2


def test_retries_stop_at_max_attempts() -> None:
    rec = Recorder(refusal(503, "unavailable"))
    with pytest.raises(wsgate.Unavailable):
        rec.client(max_attempts=5).cluster()
    assert len(rec.requests) == 5


def test_backoff_doubles_with_jitter_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("wsgate._client.time.sleep", slept.append)
    rec = Recorder(refusal(503, "unavailable"))
    with pytest.raises(wsgate.Unavailable):
        rec.client(max_attempts=6, backoff=0.1, max_backoff=0.5).cluster()
    assert len(slept) == 5
    for delay, step in zip(slept, [0.1, 0.2, 0.4, 0.5, 0.5]):
        assert step / 2 <= delay <= step


def test_the_async_client_retries_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("wsgate._client.asyncio.sleep", fake_sleep)
    heals = Recorder(refusal(503, "unavailable"), httpx.ConnectError("refused"), ok())
    stays = Recorder(refusal(503, "unavailable"))

    async def main() -> None:
        async with heals.async_client(backoff=0.1) as c:
            await c.disconnect("u")
        async with stays.async_client() as c:
            with pytest.raises(wsgate.Unavailable):
                await c.publish("g", 1)

    asyncio.run(main())
    assert len(heals.requests) == 3
    assert len(slept) == 2 and 0.05 <= slept[0] <= 0.1 and 0.1 <= slept[1] <= 0.2
    assert len(stays.requests) == 1, "a publish is not repeated after a 503 by default"


def test_data_json_cannot_hold_raises_before_sending() -> None:
    rec = Recorder(ok())
    c = rec.client()
    with pytest.raises(ValueError):
        c.publish("g", float("nan"))
    with pytest.raises(TypeError):
        c.publish("g", {"when": datetime.date(2026, 1, 1)})
    with pytest.raises(TypeError):
        c.publish_many([("g", b"bytes")])
    assert rec.requests == []


def test_publish_many_takes_pairs_not_dicts() -> None:
    rec = Recorder(ok())
    with pytest.raises(TypeError, match="pairs"):
        rec.client().publish_many([{"group": "g", "data": 1}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="pairs"):
        rec.client().publish_many(["gd"])  # type: ignore[list-item]
    assert rec.requests == []


def test_a_json_encoder_extends_what_data_can_be() -> None:
    class Encoder(json.JSONEncoder):
        def default(self, o: object) -> object:
            if isinstance(o, decimal.Decimal):
                return str(o)
            return super().default(o)

    rec = Recorder(ok())
    rec.client(json_encoder=Encoder).publish("g", {"price": decimal.Decimal("189.50")})
    assert rec.requests[0].content == b'{"group":"g","data":{"price":"189.50"}}'


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("127.0.0.1:8081", KEY),
        ("ftp://x", KEY),
        ("http://x/?a=1", KEY),
        (URL, ""),
        (URL, "   "),
        (URL, "two words-0123456789"),
        (URL, "line\nbreak-0123456789"),
    ],
)
def test_bad_settings_are_refused_without_showing_the_key(url: str, key: str) -> None:
    with pytest.raises(ValueError) as e:
        wsgate.Client(url, key)
    if key.strip():
        assert key not in str(e.value)


def test_other_bad_settings() -> None:
    with pytest.raises(ValueError):
        wsgate.Client(URL, KEY, max_attempts=0)
    with pytest.raises(ValueError):
        wsgate.Client(URL, KEY, backoff=-1)
    with pytest.raises(ValueError):
        wsgate.Client(URL, KEY, publish_retry="exactly_once")  # type: ignore[arg-type]


def test_the_key_is_in_no_error_of_any_kind() -> None:
    failures: list[httpx.Response | Exception] = [
        refusal(401, "unauthorized"),
        refusal(503, "unavailable"),
        httpx.Response(502, text="bad gateway"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("timed out"),
    ]
    for failure in failures:
        c = Recorder(failure).client(max_attempts=2)
        with pytest.raises(wsgate.WsgateError) as e:
            c.publish("g", 1)
        text = "".join(traceback.format_exception(e.value))
        assert KEY not in text and KEY not in repr(e.value), failure
        assert KEY not in repr(c)
        assert KEY not in repr(c._http.headers)


def test_group_names_cannot_escape_the_presence_path() -> None:
    assert _core.presence_path("market.AAPL") == "/api/v1/groups/market.AAPL/presence"
    assert _core.presence_path("a:b@c-d_e") == "/api/v1/groups/a%3Ab%40c-d_e/presence"
    assert _core.presence_path("../x") == "/api/v1/groups/..%2Fx/presence"
    assert _core.presence_path("..") == "/api/v1/groups/%2E%2E/presence"
    assert _core.presence_path(".") == "/api/v1/groups/%2E/presence"
    assert _core.presence_path("a b?#") == "/api/v1/groups/a%20b%3F%23/presence"
