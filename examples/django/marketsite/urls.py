from django.contrib import admin
from django.urls import include, path

from market import authorize, views

urlpatterns = [
    path("admin/", admin.site.urls),
    # djoser: POST /auth/users/ (sign up), POST /auth/token/login/ (returns
    # {"auth_token": ...}, a row of authtoken_token), POST /auth/token/logout/
    # (deletes it: with deploy/sql/django-revoke-trigger.sql installed, wsgate
    # closes that token's sockets within a second).
    path("auth/", include("djoser.urls")),
    path("auth/", include("djoser.urls.authtoken")),
    path("api/market/ticks/", views.PublishTick.as_view()),
    path("api/market/config/", views.ClientConfig.as_view()),
    # A short-lived wsgate token for the session (or DRF token) user: the JS
    # client's getToken (market/wstoken.py).
    path("api/ws-token/", views.WsToken.as_view()),
    # wsgate's subscribe hook (groups.authorize) and subscription grants,
    # decided by DRF permissions (market/authorize.py).
    path("api/wsgate/authorize/", authorize.SubscribeHook.as_view()),
    path("api/ws-grant/", authorize.SubscribeGrant.as_view()),
]
