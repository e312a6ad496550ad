"""Django integration: the client from settings, and publishing only once a
transaction has committed.

Settings:

- ``WSGATE_API_URL``: wsgate's API (``api.listen``), e.g. ``http://127.0.0.1:8081``;
- ``WSGATE_API_KEY``: one of wsgate's ``api.keys``;
- ``WSGATE_CLIENT_OPTIONS`` (optional): keyword arguments of
  :class:`wsgate.Client`, e.g. ``{"timeout": 2, "publish_retry": "at_least_once"}``.

Data is encoded with Django's ``DjangoJSONEncoder`` (``Decimal``,
``datetime``, ``UUID``, lazy translations) unless the options name another
``json_encoder``.

>>> from wsgate.django import publish_on_commit
>>> with transaction.atomic():
...     order.save()
...     publish_on_commit(f"user.{order.user_id}", {"order": order.pk, "status": "paid"})

The message goes out after the commit, and never if the transaction rolls
back (a rolled-back savepoint drops what was registered inside it). Outside
a transaction (autocommit) it goes out at once, as ``transaction.on_commit``
does. In Django's ``TestCase``, which never commits, wrap the code in
``self.captureOnCommitCallbacks(execute=True)``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from . import _core
from ._client import AsyncClient, Client
from .errors import WsgateError

__all__ = ["async_client", "get_client", "publish_many_on_commit", "publish_on_commit"]

logger = logging.getLogger("wsgate.django")

_lock = threading.Lock()
_cached: tuple[tuple[object, ...], Client] | None = None


def _options() -> tuple[str, str, dict[str, Any]]:
    url = getattr(settings, "WSGATE_API_URL", None)
    key = getattr(settings, "WSGATE_API_KEY", None)
    options = getattr(settings, "WSGATE_CLIENT_OPTIONS", None) or {}
    if not url or not isinstance(url, str):
        raise ImproperlyConfigured(
            "WSGATE_API_URL is not set: the address of wsgate's API, like http://127.0.0.1:8081"
        )
    if not key or not isinstance(key, str):
        raise ImproperlyConfigured("WSGATE_API_KEY is not set: one of wsgate's api.keys")
    if not isinstance(options, dict):
        raise ImproperlyConfigured(
            "WSGATE_CLIENT_OPTIONS must be a dict of wsgate.Client keyword arguments"
        )
    options = dict(options)
    options.setdefault("json_encoder", DjangoJSONEncoder)
    return url, key, options


def get_client() -> Client:
    """The process's :class:`wsgate.Client` for the current settings (made on
    first use, again after a fork or when the settings change; thread-safe)."""
    global _cached
    url, key, options = _options()
    ident: tuple[object, ...] = (os.getpid(), url, key, options)
    with _lock:
        if _cached is None or _cached[0] != ident:
            if _cached is not None and _cached[0][0] == ident[0]:
                # The settings changed (override_settings, say): close the old
                # pool. A client inherited over a fork is left alone: its
                # connections are the parent's.
                _cached[1].close()
            _cached = (ident, Client(url, key, **options))
        return _cached[1]


def async_client() -> AsyncClient:
    """A new :class:`wsgate.AsyncClient` for the current settings; close it
    (``async with wsgate.django.async_client() as client: ...``). It is not
    cached: an asyncio client belongs to one event loop."""
    url, key, options = _options()
    return AsyncClient(url, key, **options)


def publish_on_commit(
    group: str, data: object, *, using: str | None = None, robust: bool = True
) -> None:
    """Publishes ``data`` to ``group`` once the current transaction on the
    database ``using`` commits; nothing if it rolls back.

    ``data`` is encoded now, so data JSON cannot hold raises here (TypeError
    or ValueError), inside the transaction, not after the commit.

    ``robust=True`` (default): a failed publish after the commit (a
    :class:`wsgate.WsgateError`, once the client's retries are used up) is
    logged on the ``wsgate.django`` logger and goes no further, since the
    data is committed by then. ``robust=False`` lets it propagate, as an
    ``on_commit`` callback's error does (out of the ``atomic`` block)."""
    _on_commit([(group, data)], using, robust)


def publish_many_on_commit(
    messages: Iterable[tuple[str, object]], *, using: str | None = None, robust: bool = True
) -> None:
    """Like :func:`publish_on_commit` for ``(group, data)`` pairs, sent in one
    request in order."""
    _on_commit(messages, using, robust)


def _on_commit(
    messages: Iterable[tuple[str, object]], using: str | None, robust: bool
) -> None:
    client = get_client()
    items = _core.publish_many_body(messages)
    if not items:
        return
    if len(items) == 1:
        body = client._settings.encode(items[0])
    else:
        body = client._settings.encode({"messages": items})
    groups = sorted({str(item["group"]) for item in items})
    transaction.on_commit(_sender(client, body, len(items), groups, robust), using=using)


def _sender(
    client: Client, body: bytes, n: int, groups: list[str], robust: bool
) -> Callable[[], None]:
    def send() -> None:
        try:
            client._publish_encoded(body, n)
        except WsgateError as e:
            if not robust:
                raise
            logger.error(
                "wsgate: publishing %d message(s) to %s after the commit failed: %s",
                n,
                ", ".join(groups),
                e,
            )

    return send
