"""Three ways for Django to push a message to the browsers of a group.

All three end as the same frame on every subscribed socket:

    {"type": "message", "group": "market.AAPL", "data": {...}}

- `publish_http`: wsgate's backend API, `POST /api/v1/publish`, through the
  `wsgate` package (clients/python): the client comes from the settings
  WSGATE_API_URL and WSGATE_API_KEY, retries connection failures and 503s,
  and raises `wsgate.WsgateError` subclasses on a refusal. It answers once
  wsgate has accepted the message; the one to use from request handlers and
  Celery tasks. Needs no Redis client. After a database write, use
  `wsgate.django.publish_on_commit(group, data)` instead, so that the
  message goes out only once the write has committed (README.md).
- `publish_redis`: `PUBLISH <prefix>group:<group> {"v":1,"group":..,"data":..}`
  on wsgate's Redis, for a backend that already holds a Redis client. One
  round trip, no HTTP; fire-and-forget like any Redis PUBLISH.
- `publish_channels`: what existing Django Channels code does,
  `channel_layer.group_send(group, {"type": ..., ...})`. wsgate delivers it
  when started with compat.channels_redis = true; the message minus `type`
  (or only its compat.payload_key value) becomes `data`.

- `publish_outbox`: a row in wsgate's `wsgate_outbox` table, saved in the
  caller's transaction: published once the transaction commits (at least
  once, in order per group), never if it rolls back. Needs PostgreSQL and
  wsgate's outbox.enabled = true.

A group may be any name of 1-128 characters of A-Z a-z 0-9 . _ : @ -.
"""

import json

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from wsgate.django import get_client

_redis = None


def publish_http(group, data):
    """POST /api/v1/publish; returns the message's history offset (None for a
    group without history); raises wsgate.WsgateError on a refusal."""
    return get_client().publish(group, data)


def publish_redis(group, data):
    """PUBLISH the broker envelope; returns how many wsgate nodes got it."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL)
    envelope = json.dumps({"v": 1, "group": group, "data": data}, separators=(",", ":"))
    return _redis.publish(f"{settings.WSGATE_REDIS_PREFIX}group:{group}", envelope)


def publish_outbox(group, data):
    """Saves an OutboxMessage; call it inside `transaction.atomic()` with the
    business write it announces."""
    from market.models import OutboxMessage

    return OutboxMessage.objects.create(group=group, data=data).pk


def publish_channels(group, data, type="market.tick"):
    """channel_layer.group_send, unchanged Django Channels code."""
    async_to_sync(get_channel_layer().group_send)(group, {"type": type, **data})
