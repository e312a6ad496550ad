"""Exceptions: one class per error code of wsgate's backend API.

Every exception carries the API's ``error`` code (``code``), its ``message``,
the HTTP ``status`` (``None`` when no answer came) and the ``request_id``
wsgate echoed (``X-Request-Id``, to find the call in wsgate's logs). None of
them ever holds the API key: not in ``str()``, not in ``repr()``.
"""

from __future__ import annotations

__all__ = [
    "WsgateError",
    "ApiError",
    "Unauthorized",
    "BadRequest",
    "PayloadTooLarge",
    "NotFound",
    "MethodNotAllowed",
    "Unavailable",
    "UnexpectedResponse",
    "ConnectionFailed",
]


class WsgateError(Exception):
    """Base class of everything this package raises about a call."""

    #: The code used when the answer names none.
    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        rid = f", request {self.request_id}" if self.request_id else ""
        return f"{self.code}: {self.message} ({where}{rid})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


class ApiError(WsgateError):
    """wsgate (or something in front of it) answered with an error status."""


class Unauthorized(ApiError):
    """401 ``unauthorized``: missing or wrong API key."""

    default_code = "unauthorized"


class BadRequest(ApiError):
    """400 ``bad_request``: invalid JSON, missing or unknown fields, an invalid
    group name, an empty ``user_id`` or ``token``."""

    default_code = "bad_request"


class PayloadTooLarge(ApiError):
    """413 ``payload_too_large``: the body is over the API's 1 MiB. Raised
    before sending (``status`` ``None``) when the encoded body is already
    known to be too large."""

    default_code = "payload_too_large"


class NotFound(ApiError):
    """404 ``not_found``: no such endpoint (check ``api_url``)."""

    default_code = "not_found"


class MethodNotAllowed(ApiError):
    """405 ``method_not_allowed``."""

    default_code = "method_not_allowed"


class Unavailable(ApiError):
    """503 ``unavailable``: the broker or the token store cannot serve the call
    now. Raised once the client's retries are used up (or at once for a
    publish that is not retried, see ``Client``)."""

    default_code = "unavailable"


class UnexpectedResponse(ApiError):
    """Any other answer: another status (a proxy's 502, say), or a body that is
    not the API's JSON."""

    default_code = "unexpected_response"


class ConnectionFailed(WsgateError):
    """No answer: the connection was refused, timed out or dropped.

    ``request_sent`` tells whether wsgate may have acted on the call: ``False``
    when the request certainly never reached it (connection refused, connect
    timeout), ``True`` when it may have (a timeout or a dropped connection
    after the request went out: a publish may have been delivered).
    """

    default_code = "connection_failed"

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


#: The API's error codes and their classes.
BY_CODE: dict[str, type[ApiError]] = {
    "unauthorized": Unauthorized,
    "bad_request": BadRequest,
    "payload_too_large": PayloadTooLarge,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "unavailable": Unavailable,
}

#: The class for a status when the body names no known code.
BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    400: BadRequest,
    413: PayloadTooLarge,
    404: NotFound,
    405: MethodNotAllowed,
    503: Unavailable,
}
