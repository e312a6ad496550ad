"""wsgate: publish to wsgate groups from Python.

>>> import wsgate
>>> with wsgate.Client("http://127.0.0.1:8081", api_key) as client:
...     client.publish("market.AAPL", {"p": 189.5})

``AsyncClient`` is the same as coroutines; ``wsgate.django`` reads the
client's settings from Django's and publishes after a transaction commits.
"""

from ._client import AsyncClient, Client
from ._core import MAX_BODY_BYTES
from ._types import ClusterNode, Member, Message, Presence, PublishRetry
from ._version import __version__
from .errors import (
    ApiError,
    BadRequest,
    ConnectionFailed,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    WsgateError,
)

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClusterNode",
    "ConnectionFailed",
    "Member",
    "Message",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "Presence",
    "PublishRetry",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "WsgateError",
    "__version__",
]
