"""Sends Django Channels group messages the way a Django project does.

Used by tests/compat_channels.rs, with the virtualenv that
scripts/install-python-tools.sh makes. Reads a JSON list of
[group, message] pairs on stdin and sends each, in order, with
`async_to_sync(get_channel_layer().group_send)(group, message)` through the
real channels_redis RedisPubSubChannelLayer:

    python tests/compat/group_send.py --redis redis://127.0.0.1:6379 \
        --prefix asgi <<<'[["market.AAPL", {"type": "market.tick", "p": 1}]]'

Prints one line, "sent N", and exits 0; any error exits non-zero.
"""

import argparse
import json
import sys

import django
from django.conf import settings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True, help="redis:// URL of the layer's one host")
    parser.add_argument("--prefix", required=True, help="the layer's prefix option")
    args = parser.parse_args()

    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [args.redis], "prefix": args.prefix},
            }
        },
    )
    django.setup()

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    messages = json.load(sys.stdin)
    for group, message in messages:
        # Each call runs on its own event loop, and the layer closes its
        # per-loop connection when that loop closes (channels_redis
        # utils._wrap_close); PUBLISH has returned before the next call.
        async_to_sync(layer.group_send)(group, message)
    print(f"sent {len(messages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
