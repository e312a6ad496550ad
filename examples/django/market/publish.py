"""Three ways for Django to push a message to the browsers of a group.

All three end as the same frame on every subscribed socket:

    {"type": "message", "group": "market.AAPL", "data": {...}}

- `publish_http`: wsgate's backend API, `POST /api/v1/publish` with the
  Bearer key. Answers only once wsgate has accepted the message; the one to
  use from request handlers and Celery tasks. Needs no Redis client.
- `publish_redis`: `PUBLISH <prefix>group:<group> {"v":1,"group":..,"data":..}`
  on wsgate's Redis, for a backend that already holds a Redis client. One
  round trip, no HTTP; fire-and-forget like any Redis PUBLISH.
- `publish_channels`: what existing Django Channels code does,
  `channel_layer.group_send(group, {"type": ..., ...})`. wsgate delivers it
  when started with compat.channels_redis = true; the message minus `type`
  (or only its compat.payload_key value) becomes `data`.

A group may be any name of 1-128 characters of A-Z a-z 0-9 . _ : @ -.
"""

import json
import urllib.request

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

_redis = None


def publish_http(group, data, timeout=5):
    """POST /api/v1/publish; raises urllib.error.HTTPError on a refusal."""
    body = json.dumps({"group": group, "data": data}).encode()
    request = urllib.request.Request(
        settings.WSGATE_API_URL.rstrip("/") + "/api/v1/publish",
        data=body,
        headers={
            "Authorization": f"Bearer {settings.WSGATE_API_KEY}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def publish_redis(group, data):
    """PUBLISH the broker envelope; returns how many wsgate nodes got it."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL)
    envelope = json.dumps({"v": 1, "group": group, "data": data}, separators=(",", ":"))
    return _redis.publish(f"{settings.WSGATE_REDIS_PREFIX}group:{group}", envelope)


def publish_channels(group, data, type="market.tick"):
    """channel_layer.group_send, unchanged Django Channels code."""
    async_to_sync(get_channel_layer().group_send)(group, {"type": type, **data})
