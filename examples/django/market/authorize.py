"""wsgate's subscribe hook and subscription grants, answered with DRF
permissions (wsgate `groups.authorize`, docs/protocol.md section 5).

wsgate POSTs {"user_id", "group", "node", "session", "conn", "ip"} to
/api/wsgate/authorize/, signed with HMAC-SHA256 over "<timestamp>.<body>"
(settings.WSGATE_HOOK_SECRET = wsgate's authorize.hook_secret).
`WsgateHookAuthentication` checks that signature and makes the user asking
to subscribe `request.user`; the view then runs ordinary DRF permission
classes for that user and group and answers {"allow": true|false}. A bad
signature is a 403, which wsgate turns into `unavailable`, never an allow.

`POST /api/ws-grant/ {"group": ...}` gives the logged-in user a short-lived
grant instead (settings.WSGATE_GRANT_SECRET = authorize.grant_secret),
checked with the same permissions, for the subscribe's "token".

`revoke(user_id, group)` ends a subscription on every wsgate node
(POST /api/v1/unsubscribe): call it after taking the permission away.
"""

import hashlib
import hmac
import time

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from wsgate.django import get_client

# How old a signed hook call may be (seconds): a captured call cannot be
# replayed after that.
MAX_SKEW = 60
# Lifetime of the grants /api/ws-grant/ mints (at most wsgate's
# authorize.grant_max_lifetime).
GRANT_TTL = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WsgateHookAuthentication(BaseAuthentication):
    """Authenticates wsgate (the signature), and makes the subscribing user
    `request.user` (None for no such active user: permissions then deny)."""

    def authenticate(self, request):
        secret = settings.WSGATE_HOOK_SECRET
        timestamp = request.META.get("HTTP_X_WSGATE_TIMESTAMP", "")
        given = request.META.get("HTTP_X_WSGATE_SIGNATURE", "")
        if not secret or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW:
            raise exceptions.AuthenticationFailed("unsigned or stale hook call")
        body = request._request.body
        if not hmac.compare_digest(signature(secret, timestamp, body), given):
            raise exceptions.AuthenticationFailed("bad signature")
        user_id = str(request.data.get("user_id", ""))
        user = None
        if user_id.isdigit():
            user = get_user_model().objects.filter(pk=int(user_id), is_active=True).first()
        return (user, "wsgate")


class ProMarketData(BasePermission):
    """market.pro.<SYMBOL>: members of the Django group "pro", and staff."""

    def has_permission(self, request, view):
        user, group = request.user, view.group
        if not group.startswith("market.pro.") or user is None:
            return False
        return user.is_staff or user.groups.filter(name="pro").exists()


class HasUser(BasePermission):
    def has_permission(self, request, view):
        return request.user is not None and request.user.is_authenticated


class GroupSerializer(serializers.Serializer):
    group = serializers.RegexField(r"^[A-Za-z0-9._:@-]{1,128}$")


class SubscribePermissionsMixin:
    """The permissions a subscribe to `self.group` needs, in DRF's terms."""

    subscribe_permission_classes = [HasUser, ProMarketData]
    group = ""

    def may_subscribe(self, request, group):
        self.group = group
        return all(p().has_permission(request, self) for p in self.subscribe_permission_classes)


class SubscribeHook(SubscribePermissionsMixin, APIView):
    """POST /api/wsgate/authorize/: wsgate's subscribe hook."""

    authentication_classes = [WsgateHookAuthentication]
    # The signature is the authentication; who subscribes is decided below.
    permission_classes = []

    def post(self, request):
        if request.auth != "wsgate":
            raise exceptions.NotAuthenticated()
        body = GroupSerializer(data=request.data)
        if not body.is_valid():
            return Response({"allow": False})
        return Response({"allow": self.may_subscribe(request, body.validated_data["group"])})


class SubscribeGrant(SubscribePermissionsMixin, APIView):
    """POST /api/ws-grant/ {"group": "market.pro.AAPL"}: a grant for the
    logged-in user, if the same permissions allow it; 403 otherwise."""

    permission_classes = [IsAuthenticated]

    def post(self, request):
        body = GroupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        group = body.validated_data["group"]
        if not self.may_subscribe(request, group):
            raise exceptions.PermissionDenied("not allowed in this group")
        now = int(time.time())
        claims = {"sub": str(request.user.pk), "group": group, "iat": now, "exp": now + GRANT_TTL}
        grant = jwt.encode(claims, settings.WSGATE_GRANT_SECRET, algorithm="HS256")
        response = Response({"token": grant, "group": group, "expires_in": GRANT_TTL})
        response["Cache-Control"] = "no-store"
        return response


def revoke(user_id, group):
    """Takes the user out of `group` on every wsgate node, and drops wsgate's
    cached allow; raises wsgate.WsgateError when wsgate refuses."""
    get_client().unsubscribe(user_id, group)
