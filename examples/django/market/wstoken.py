"""Short-lived wsgate tokens for session-cookie users (what Channels'
AuthMiddlewareStack gave a consumer).

A browser logged in with Django's session cookie has no token to put in
wsgate's first frame. `POST /api/ws-token/` (market.views.WsToken) mints
one: a random token whose SHA-256 digest goes into wsgate's own table
`wsgate_tokens`, in the database Django and wsgate share, expiring after
WSGATE_TOKEN_TTL seconds (300 by default). The browser receives the token
once; only its digest is stored. wsgate must run with its `native` store
(`auth.store = "native"`, the default) on that database, and must have
created its tables (it does at start-up, or `wsgate migrate`).

The JS client's `getToken` calls the view before every connection attempt
and again before the token expires (`refresh`, on the same socket), so a
short lifetime costs nothing. Logging out deletes the rows of the tokens
minted for that session; wsgate's trigger on `wsgate_tokens` then closes
their sockets with 4003 on every node.
"""

import hashlib
import secrets
import time

from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.db import connection, transaction
from django.dispatch import receiver

SESSION_KEY = "wsgate_token_digests"
# Tokens remembered per session for logout (older ones have expired anyway).
MAX_PER_SESSION = 32


def ttl_seconds():
    return int(getattr(settings, "WSGATE_TOKEN_TTL", 300))


def digest(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint(user, session=None):
    """Inserts a new token for `user` and returns (token, expires_in seconds).

    `session`, when given, remembers the digest so that logout revokes it.
    """
    token = "wsg_" + secrets.token_urlsafe(32)  # the shape of wsgate's own tokens
    now_ms = int(time.time() * 1000)
    ttl = ttl_seconds()
    with transaction.atomic(), connection.cursor() as cursor:
        # This user's expired rows are of no use any more.
        cursor.execute(
            "DELETE FROM wsgate_tokens WHERE user_id = %s AND expires_at < %s",
            [str(user.pk), now_ms],
        )
        cursor.execute(
            "INSERT INTO wsgate_tokens (digest, user_id, created_at, expires_at, revoked_at) "
            "VALUES (%s, %s, %s, %s, NULL)",
            [digest(token), str(user.pk), now_ms, now_ms + ttl * 1000],
        )
    if session is not None:
        digests = session.get(SESSION_KEY, [])[-(MAX_PER_SESSION - 1):]
        session[SESSION_KEY] = digests + [digest(token)]
    return token, ttl


def revoke_session_tokens(session):
    """Deletes the rows of the tokens minted for `session` (the trigger on
    wsgate_tokens closes their sockets)."""
    digests = session.get(SESSION_KEY) or []
    if not digests:
        return
    with connection.cursor() as cursor:
        placeholders = ", ".join(["%s"] * len(digests))
        cursor.execute(f"DELETE FROM wsgate_tokens WHERE digest IN ({placeholders})", digests)
    session[SESSION_KEY] = []


@receiver(user_logged_out)
def _revoke_on_logout(sender, request, user, **kwargs):
    # Sent before the session is flushed, so its digests are still there.
    if request is not None and hasattr(request, "session"):
        revoke_session_tokens(request.session)
