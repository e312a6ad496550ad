"""What the sync and the asyncio clients share: the client's settings,
encoding requests, reading answers, and which failures are retried."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ._types import PublishRetry
from ._version import __version__
from .errors import (
    BY_CODE,
    BY_STATUS,
    ConnectionFailed,
    PayloadTooLarge,
    UnexpectedResponse,
    Unavailable,
    WsgateError,
)

#: The API refuses bodies over 1 MiB (docs/protocol.md, "Backend API").
MAX_BODY_BYTES = 1024 * 1024

#: Failures where the request certainly never reached wsgate.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)
#: Failures that are mistakes on this side: never retried.
_NOT_RETRIED: tuple[type[Exception], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)

_PUBLISH_RETRY = ("at_most_once", "at_least_once")


@dataclass(frozen=True)
class Settings:
    """A client's settings, checked once."""

    api_url: str
    headers: Mapping[str, str]
    timeout: httpx.Timeout
    max_attempts: int
    backoff: float
    max_backoff: float
    publish_retry: PublishRetry
    json_encoder: type[json.JSONEncoder] | None

    @classmethod
    def make(
        cls,
        api_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        publish_retry: PublishRetry,
        json_encoder: type[json.JSONEncoder] | None,
    ) -> Settings:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"api_url must be an http:// or https:// URL, like http://127.0.0.1:8081 "
                f"(got scheme {parts.scheme!r})"
            )
        if parts.query or parts.fragment:
            raise ValueError("api_url must not have a query or a fragment")
        # Never echo the key, not even in this message.
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key is empty")
        if any(c.isspace() for c in api_key.strip()) or not api_key.isprintable():
            raise ValueError("api_key contains whitespace or control characters")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")
        if publish_retry not in _PUBLISH_RETRY:
            raise ValueError(f"publish_retry must be one of {_PUBLISH_RETRY}")
        return cls(
            api_url=api_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {api_key.strip()}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"wsgate-python/{__version__} httpx/{httpx.__version__}",
            },
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            publish_retry=publish_retry,
            json_encoder=json_encoder,
        )

    def url(self, path: str) -> str:
        return self.api_url + path

    def encode(self, body: object) -> bytes:
        """Compact JSON; raises TypeError/ValueError for data JSON cannot hold
        (NaN and infinities included), before anything is sent."""
        text = json.dumps(
            body,
            cls=self.json_encoder,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        data = text.encode("utf-8")
        if len(data) > MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"the request body is {len(data)} bytes, over the API's limit of "
                f"{MAX_BODY_BYTES} bytes; nothing was sent"
            )
        return data

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based):
        exponential, capped, with jitter (half fixed, half random)."""
        step = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)


def publish_body(group: str, data: object, key: str | None = None) -> dict[str, object]:
    return with_key({"group": group, "data": data}, key)


def with_key(body: dict[str, object], key: str | None) -> dict[str, object]:
    """Adds ``idempotency_key`` when given (wsgate checks its form)."""
    if key is not None:
        body["idempotency_key"] = key
    return body


def publish_many_body(messages: Iterable[tuple[str, object]]) -> list[dict[str, object]]:
    items = []
    for message in messages:
        if isinstance(message, (Mapping, str, bytes)):
            # A dict would unpack into its keys: refuse it rather than send
            # {"group": "group", "data": "data"}.
            raise TypeError(
                f"publish_many takes (group, data) pairs or wsgate.Message, "
                f"not {type(message).__name__}"
            )
        group, data = message
        items.append({"group": group, "data": data})
    return items


def presence_path(group: str) -> str:
    # Everything but unreserved characters is escaped, so a group name can
    # never change the path ("a/b" stays one segment, and wsgate refuses it);
    # "." and ".." would be dot segments, so their dots are escaped too.
    segment = quote(group, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return f"/api/v1/groups/{segment}/presence"


def from_transport_error(error: httpx.TransportError) -> ConnectionFailed:
    """The ConnectionFailed for an httpx failure (its text names no header)."""
    sent = not isinstance(error, _NOT_SENT + _NOT_RETRIED)
    kind = type(error).__name__
    detail = str(error) or kind
    if sent:
        what = "no answer after the request was sent, it may have been acted on"
    else:
        what = "the request did not reach wsgate"
    return ConnectionFailed(f"{what}: {kind}: {detail}", request_sent=sent)


def retryable_transport_error(error: httpx.TransportError) -> bool:
    return not isinstance(error, _NOT_RETRIED)


def read_answer(response: httpx.Response) -> Any:
    """The JSON of a successful answer; raises the error of a refusal."""
    request_id = response.headers.get("x-request-id")
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise UnexpectedResponse(
                "the answer is not a JSON object", status=status, request_id=request_id
            )
        return body
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    cls = BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = BY_STATUS.get(status, UnexpectedResponse)
    if not isinstance(message, str):
        # Not the API's error body (a proxy's page, say): its content is not
        # repeated here.
        message = f"HTTP {status} {response.reason_phrase}".strip()
    raise cls(
        message,
        code=code if isinstance(code, str) else None,
        status=status,
        request_id=request_id,
    )


def retryable_answer(error: WsgateError) -> bool:
    return isinstance(error, Unavailable) and error.status == 503


def offsets(answer: Any, n: int) -> list[int | None]:
    """The offsets of a publish answer: one per message, None where a group
    keeps no history (all None when history is off)."""
    got = answer.get("offsets")
    if got is None:
        return [None] * n
    if not isinstance(got, list) or len(got) != n:
        raise UnexpectedResponse(f"expected {n} offsets in the answer, got {got!r}")
    return [o if isinstance(o, int) else None for o in got]
