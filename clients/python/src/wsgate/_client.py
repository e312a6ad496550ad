"""`Client` (blocking) and `AsyncClient` (asyncio) for wsgate's backend API."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import httpx

from . import _core
from ._types import ClusterNode, Presence, PublishRetry
from .errors import ConnectionFailed, UnexpectedResponse, WsgateError

__all__ = ["AsyncClient", "Client"]

logger = logging.getLogger("wsgate")

_DOC = """
    ``api_url`` is where wsgate's API listens (``api.listen``, say
    ``http://127.0.0.1:8081``); ``api_key`` is one of its ``api.keys``. The
    key goes in the ``Authorization`` header only; no exception, log line or
    ``repr`` of this package shows it.

    **Retries.** A call is tried at most ``max_attempts`` times (default 3),
    waiting ``backoff * 2**n`` seconds between attempts (capped at
    ``max_backoff``, half of it random). Only these are retried: a
    connection that could not be made or timed out, an answer that never
    came, and 503 ``unavailable``. A 4xx never is. ``disconnect``,
    ``revoke``, ``presence`` and ``cluster`` do the same thing when repeated,
    so they are retried on all of these.

    **Publishing twice.** The API has no idempotency key yet, so a publish
    that wsgate may already have acted on cannot be repeated without the risk
    of delivering it twice. ``publish_retry`` chooses:

    - ``"at_most_once"`` (default): a publish is retried only when the
      request certainly never reached wsgate (connection refused, connect
      timeout). A 503 or a lost answer raises at once (``Unavailable``, or
      ``ConnectionFailed`` with ``request_sent=True``): the message may or
      may not have been delivered (a 503 usually means it was not, but a
      batch can fail half-way).
    - ``"at_least_once"``: a publish is also retried on 503 and on a lost
      answer; a subscriber may then receive a message twice.

    ``timeout`` (seconds or an ``httpx.Timeout``) bounds each attempt.
    ``json_encoder`` is a ``json.JSONEncoder`` subclass for values ``json``
    cannot encode (``wsgate.django`` uses Django's, for ``Decimal``,
    ``datetime``, ``UUID``). ``transport`` and ``verify`` go to httpx.
"""


def _messages(messages: Iterable[tuple[str, object]]) -> list[dict[str, object]]:
    return _core.publish_many_body(messages)


class _Base:
    _settings: _core.Settings

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 5.0,
        max_attempts: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        publish_retry: PublishRetry = "at_most_once",
        json_encoder: type[json.JSONEncoder] | None = None,
    ) -> None:
        self._settings = _core.Settings.make(
            api_url,
            api_key,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            publish_retry=publish_retry,
            json_encoder=json_encoder,
        )

    @property
    def api_url(self) -> str:
        return self._settings.api_url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._settings.api_url}>"

    def _publish_repeatable(self) -> bool:
        return self._settings.publish_retry == "at_least_once"

    def _next_attempt(
        self, attempt: int, repeatable: bool, method: str, path: str, error: WsgateError
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt >= self._settings.max_attempts:
            return None
        if isinstance(error, ConnectionFailed):
            if error.request_sent and not repeatable:
                return None
        elif not (_core.retryable_answer(error) and repeatable):
            return None
        delay = self._settings.delay(attempt)
        logger.info(
            "wsgate: %s %s failed (%s), attempt %d of %d in %.2fs",
            method,
            path,
            error.code,
            attempt + 1,
            self._settings.max_attempts,
            delay,
        )
        return delay

    @staticmethod
    def _transport_failure(error: httpx.TransportError) -> ConnectionFailed:
        return _core.from_transport_error(error)


class Client(_Base):
    __doc__ = "A blocking client for wsgate's backend API.\n" + _DOC

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 5.0,
        max_attempts: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        publish_retry: PublishRetry = "at_most_once",
        json_encoder: type[json.JSONEncoder] | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        super().__init__(
            api_url,
            api_key,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            publish_retry=publish_retry,
            json_encoder=json_encoder,
        )
        self._http = httpx.Client(
            headers=dict(self._settings.headers),
            timeout=self._settings.timeout,
            transport=transport,
            verify=verify,
        )

    def publish(
        self, group: str, data: object, *, idempotency_key: str | None = None
    ) -> int | None:
        """Publishes ``data`` (anything JSON can hold) to ``group``; every
        member socket, on every node, receives
        ``{"type":"message","group":group,"data":data}``. Returns the
        message's offset in the group's history, or None when the group keeps
        none (or when ``idempotency_key`` was already used: wsgate delivered
        it the first time). A group without members is not an error.

        With ``idempotency_key`` (1-128 of ``A-Z a-z 0-9 . _ : -``), a
        request repeated within wsgate's ``api.idempotency_window`` is not
        delivered again, so the publish is retried after a lost answer
        whatever ``publish_retry`` says."""
        body = self._settings.encode(_core.publish_body(group, data, idempotency_key))
        return self._publish_encoded(body, 1, idempotency_key)[0]

    def publish_many(
        self, messages: Iterable[tuple[str, object]], *, idempotency_key: str | None = None
    ) -> list[int | None]:
        """Publishes ``(group, data)`` pairs (or ``wsgate.Message``) in one
        request, delivered in order; returns their offsets (None where a group
        keeps no history). Nothing is sent for no messages.
        ``idempotency_key`` covers the whole request (see ``publish``)."""
        items = _messages(messages)
        if not items:
            return []
        body = self._settings.encode(_core.with_key({"messages": items}, idempotency_key))
        return self._publish_encoded(body, len(items), idempotency_key)

    def _publish_encoded(
        self, body: bytes, n: int, key: str | None = None
    ) -> list[int | None]:
        repeatable = key is not None or self._publish_repeatable()
        answer = self._call("POST", "/api/v1/publish", body, repeatable)
        return _core.offsets(answer, n)

    def disconnect(self, user_id: str | int) -> None:
        """Closes every connection of ``user_id``, on every node, with 4003."""
        self._call("POST", "/api/v1/disconnect", self._settings.encode({"user_id": user_id}), True)

    def revoke(self, token: str) -> None:
        """Refuses ``token`` from now on and closes every connection that
        authenticated with it, on every node, with 4003."""
        self._call("POST", "/api/v1/revoke", self._settings.encode({"token": token}), True)

    def unsubscribe(self, user_id: str | int, group: str) -> None:
        """Takes ``user_id`` out of ``group`` on every node (each socket gets
        an unsolicited ``unsubscribed``), forgets wsgate's cached hook allow
        for the pair and refuses grants for it issued until now."""
        body = self._settings.encode({"user_id": user_id, "group": group})
        self._call("POST", "/api/v1/unsubscribe", body, True)

    def presence(self, group: str) -> Presence:
        """Who is in ``group``: ``{"group", "count", "members": [{"user_id",
        "session", "node"}]}``."""
        answer: Presence = self._call("GET", _core.presence_path(group), None, True)
        return answer

    def cluster(self) -> list[ClusterNode]:
        """The live nodes: ``[{"node", "connections", "last_seen_ms"}]``."""
        answer = self._call("GET", "/api/v1/cluster", None, True)
        nodes = answer.get("nodes")
        if not isinstance(nodes, list):
            raise UnexpectedResponse("the answer has no list of nodes")
        return nodes

    def _call(self, method: str, path: str, body: bytes | None, repeatable: bool) -> Any:
        attempt = 1
        while True:
            try:
                response = self._http.request(method, self._settings.url(path), content=body)
                return _core.read_answer(response)
            except httpx.TransportError as e:
                failure = self._transport_failure(e)
                if not _core.retryable_transport_error(e):
                    raise failure from e
                delay = self._next_attempt(attempt, repeatable, method, path, failure)
                if delay is None:
                    raise failure from e
            except WsgateError as e:
                delay = self._next_attempt(attempt, repeatable, method, path, e)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Base):
    __doc__ = (
        "An asyncio client for wsgate's backend API: the methods of ``Client``, "
        "as coroutines. Use it as ``async with``, or call ``aclose()``.\n" + _DOC
    )

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 5.0,
        max_attempts: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        publish_retry: PublishRetry = "at_most_once",
        json_encoder: type[json.JSONEncoder] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        super().__init__(
            api_url,
            api_key,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            publish_retry=publish_retry,
            json_encoder=json_encoder,
        )
        self._http = httpx.AsyncClient(
            headers=dict(self._settings.headers),
            timeout=self._settings.timeout,
            transport=transport,
            verify=verify,
        )

    async def publish(
        self, group: str, data: object, *, idempotency_key: str | None = None
    ) -> int | None:
        """See ``Client.publish``."""
        body = self._settings.encode(_core.publish_body(group, data, idempotency_key))
        return (await self._publish_encoded(body, 1, idempotency_key))[0]

    async def publish_many(
        self, messages: Iterable[tuple[str, object]], *, idempotency_key: str | None = None
    ) -> list[int | None]:
        """See ``Client.publish_many``."""
        items = _messages(messages)
        if not items:
            return []
        body = self._settings.encode(_core.with_key({"messages": items}, idempotency_key))
        return await self._publish_encoded(body, len(items), idempotency_key)

    async def _publish_encoded(
        self, body: bytes, n: int, key: str | None = None
    ) -> list[int | None]:
        repeatable = key is not None or self._publish_repeatable()
        answer = await self._call("POST", "/api/v1/publish", body, repeatable)
        return _core.offsets(answer, n)

    async def disconnect(self, user_id: str | int) -> None:
        """See ``Client.disconnect``."""
        body = self._settings.encode({"user_id": user_id})
        await self._call("POST", "/api/v1/disconnect", body, True)

    async def revoke(self, token: str) -> None:
        """See ``Client.revoke``."""
        await self._call("POST", "/api/v1/revoke", self._settings.encode({"token": token}), True)

    async def unsubscribe(self, user_id: str | int, group: str) -> None:
        """See ``Client.unsubscribe``."""
        body = self._settings.encode({"user_id": user_id, "group": group})
        await self._call("POST", "/api/v1/unsubscribe", body, True)

    async def presence(self, group: str) -> Presence:
        """See ``Client.presence``."""
        answer: Presence = await self._call("GET", _core.presence_path(group), None, True)
        return answer

    async def cluster(self) -> list[ClusterNode]:
        """See ``Client.cluster``."""
        answer = await self._call("GET", "/api/v1/cluster", None, True)
        nodes = answer.get("nodes")
        if not isinstance(nodes, list):
            raise UnexpectedResponse("the answer has no list of nodes")
        return nodes

    async def _call(self, method: str, path: str, body: bytes | None, repeatable: bool) -> Any:
        attempt = 1
        while True:
            try:
                response = await self._http.request(
                    method, self._settings.url(path), content=body
                )
                return _core.read_answer(response)
            except httpx.TransportError as e:
                failure = self._transport_failure(e)
                if not _core.retryable_transport_error(e):
                    raise failure from e
                delay = self._next_attempt(attempt, repeatable, method, path, failure)
                if delay is None:
                    raise failure from e
            except WsgateError as e:
                delay = self._next_attempt(attempt, repeatable, method, path, e)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
