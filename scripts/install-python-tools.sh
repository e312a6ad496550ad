#!/usr/bin/env bash
# Installs the Python side of the tests into a virtualenv, from PyPI only;
# idempotent (a second run installs nothing).
#
#   tests/compat_channels.rs   runs the real channels_redis (group_send through
#                              RedisPubSubChannelLayer) and the example Django
#                              project (manage.py check, migrate, tokens)
#
# The packages are the pinned ones of examples/django/requirements.txt
# (Django, DRF, djoser, channels==4.3.2, channels_redis==4.3.0, redis-py,
# psycopg), so the example and the tests run the same versions.
#
# Virtualenv: $WSGATE_PYENV, else $HOME/.cache/wsgate-pyenv (where the tests
# look for it). Python: $PYTHON, else python3 (3.10 or later).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${WSGATE_PYENV:-$HOME/.cache/wsgate-pyenv}
PYTHON=${PYTHON:-python3}
REQUIREMENTS=examples/django/requirements.txt

say() { printf 'install-python-tools: %s\n' "$*"; }
die() { printf 'install-python-tools: ERROR: %s\n' "$*" >&2; exit 1; }

[ -f "$REQUIREMENTS" ] || die "$REQUIREMENTS is missing"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3)"

stamp=$VENV/.wsgate-requirements
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "virtualenv $VENV up to date"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! "$PYTHON" -m venv "$VENV"; then
        # Debian's python3 without python3-venv: install it, then retry.
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV"
        else
            die "cannot create a virtualenv with $PYTHON (install python3-venv)"
        fi
    fi
fi

say "installing $REQUIREMENTS"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
"$VENV/bin/python" -c 'import django, channels, channels_redis, rest_framework, djoser, redis, psycopg, msgpack' \
    || die "the virtualenv does not import the pinned packages"
printf '%s\n' "$want" >"$stamp"
say "done: $("$VENV/bin/python" -c 'import django, channels, channels_redis; print("Django", django.__version__, "channels", channels.__version__, "channels_redis", channels_redis.__version__)')"
