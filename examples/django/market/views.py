import wsgate
from django.conf import settings
from django.db import DatabaseError
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from . import publish, wstoken


class TickSerializer(serializers.Serializer):
    symbol = serializers.RegexField(r"^[A-Z0-9.]{1,16}$")
    price = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=False)
    via = serializers.ChoiceField(choices=["http", "redis", "channels"], default="http")


class PublishTick(APIView):
    """POST /api/market/ticks/ {"symbol": "AAPL", "price": 189.5, "via": "http"}
    (staff only): pushes the tick to group market.<symbol>."""

    permission_classes = [IsAdminUser]

    def post(self, request):
        tick = TickSerializer(data=request.data)
        tick.is_valid(raise_exception=True)
        symbol = tick.validated_data["symbol"]
        data = {"symbol": symbol, "price": float(tick.validated_data["price"])}
        sender = {
            "http": publish.publish_http,
            "redis": publish.publish_redis,
            "channels": publish.publish_channels,
        }[tick.validated_data["via"]]
        try:
            sender(f"market.{symbol}", data)
        except wsgate.WsgateError as e:
            # wsgate refused or could not be reached (after the client's
            # retries): e.code is the API's error code ("unavailable", ...).
            return Response({"ok": False, "error": e.code}, status=502)
        return Response({"ok": True, "group": f"market.{symbol}"}, status=202)


class ClientConfig(APIView):
    """GET /api/market/config/: what the front end needs to reach wsgate.
    The token is the one the user got from /auth/token/login/."""

    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({"ws_url": settings.WSGATE_WS_URL, "user_id": str(request.user.pk)})


class WsToken(APIView):
    """POST /api/ws-token/: a short-lived wsgate token for the logged-in user
    (session cookie, with Django's CSRF header; or a DRF token), for the JS
    client's getToken. Answers {"token", "expires_in", "ws_url", "user_id"}.
    Needs wsgate's `native` store on the shared database (market/wstoken.py)."""

    permission_classes = [IsAuthenticated]

    def post(self, request):
        by_session = isinstance(request.successful_authenticator, SessionAuthentication)
        try:
            token, ttl = wstoken.mint(request.user, request.session if by_session else None)
        except DatabaseError:
            # Most likely wsgate has not created wsgate_tokens yet.
            return Response({"error": "wsgate_tokens unavailable"}, status=503)
        response = Response(
            {
                "token": token,
                "expires_in": ttl,
                "ws_url": settings.WSGATE_WS_URL,
                "user_id": str(request.user.pk),
            }
        )
        response["Cache-Control"] = "no-store"
        return response
