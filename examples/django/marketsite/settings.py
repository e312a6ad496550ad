"""Settings of the wsgate example project.

Everything that differs between machines comes from the environment (see
README.md); the defaults run the example on one machine with SQLite and a
local Redis.
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # Tokens in authtoken_token: the table wsgate's `django` store reads.
    "rest_framework.authtoken",
    "djoser",
    "market",
]

# EXAMPLE_CUSTOM_USER=1: a custom user model (accounts.User, table
# accounts_member) instead of auth.User; wsgate then needs the
# auth.django_user_* keys shown in accounts/models.py. Choose before the
# first migrate: Django cannot switch the user model of a migrated database.
if os.environ.get("EXAMPLE_CUSTOM_USER") == "1":
    INSTALLED_APPS.append("accounts")
    AUTH_USER_MODEL = "accounts.User"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "marketsite.urls"
WSGI_APPLICATION = "marketsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url):
    """`postgres://user:pass@host:5432/name` or `sqlite:///path` as a DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///db.sqlite3 is relative to this project, sqlite:////abs absolute.
        path = unquote(parts.path)[1:]
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(BASE_DIR / path)}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r}")


# The same database as wsgate (WSGATE__DATABASE__URL): wsgate's `django`
# store reads authtoken_token and auth_user there.
DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

# --- wsgate ---------------------------------------------------------------
# The Redis wsgate uses (WSGATE__REDIS__URL) and its key prefix
# (WSGATE__REDIS__PREFIX).
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
WSGATE_REDIS_PREFIX = os.environ.get("WSGATE_REDIS_PREFIX", "wsgate:")
# wsgate's backend API (api.listen) and one of its keys (api.keys): the
# settings wsgate.django (clients/python) reads. WSGATE_CLIENT_OPTIONS may
# add wsgate.Client keyword arguments, e.g. {"timeout": 2}.
WSGATE_API_URL = os.environ.get("WSGATE_API_URL", "http://127.0.0.1:8081")
WSGATE_API_KEY = os.environ.get("WSGATE_API_KEY", "")
# wsgate's authorize.hook_secret (the subscribe hook's HMAC key) and
# authorize.grant_secret (what /api/ws-grant/ signs grants with).
WSGATE_HOOK_SECRET = os.environ.get("WSGATE_HOOK_SECRET", "")
WSGATE_GRANT_SECRET = os.environ.get("WSGATE_GRANT_SECRET", "")
# Lifetime of the tokens POST /api/ws-token/ mints (seconds).
WSGATE_TOKEN_TTL = int(os.environ.get("WSGATE_TOKEN_TTL", "300"))
# What the browser connects to (server.listen + server.ws_path).
WSGATE_WS_URL = os.environ.get("WSGATE_WS_URL", "ws://127.0.0.1:8080/ws")

# The channel layer, for code that already calls group_send: wsgate
# delivers it with compat.channels_redis = true. It must be the pub/sub
# layer (the default RedisChannelLayer does not publish), with wsgate's
# Redis as its only host, and the same prefix as compat.channels_prefix.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": os.environ.get("CHANNELS_PREFIX", "asgi"),
        },
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
