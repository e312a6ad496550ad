#!/usr/bin/env bash
# Installs the Python side of the tests into a virtualenv, from PyPI only;
# idempotent (a second run installs nothing).
#
#   tests/compat_channels.rs   runs the real channels_redis (group_send through
#                              RedisPubSubChannelLayer) and the example Django
#                              project (manage.py check, migrate, tokens)
#   tests/python_client.rs     runs clients/python's tests (pytest) against a
#                              real node, builds its wheel, runs mypy --strict
#
# The packages are the pinned ones of examples/django/requirements.txt
# (Django, DRF, djoser, channels==4.3.2, channels_redis==4.3.0, redis-py,
# psycopg, httpx), so the example and the tests run the same versions, and
# of clients/python/requirements-dev.txt (pytest, websockets, mypy,
# hatchling); then the `wsgate` package of clients/python itself (built with
# that hatchling, so without the network).
#
# Virtualenv: $WSGATE_PYENV, else $HOME/.cache/wsgate-pyenv (where the tests
# look for it). Python: $PYTHON, else python3 (3.10 or later). Up to date
# means: made from these requirement files and this clients/python (a stamp
# holds their hash) and it imports the packages; else it is (re)installed,
# under a lock.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${WSGATE_PYENV:-$HOME/.cache/wsgate-pyenv}
PYTHON=${PYTHON:-python3}
REQUIREMENTS=examples/django/requirements.txt
DEV_REQUIREMENTS=clients/python/requirements-dev.txt
PACKAGE=clients/python

say() { printf 'install-python-tools: %s\n' "$*"; }
die() { printf 'install-python-tools: ERROR: %s\n' "$*" >&2; exit 1; }

for f in "$REQUIREMENTS" "$DEV_REQUIREMENTS" "$PACKAGE/pyproject.toml"; do
    [ -f "$f" ] || die "$f is missing"
done
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3)"

IMPORTS='import django, channels, channels_redis, rest_framework, djoser, redis, psycopg, msgpack, httpx, pytest, websockets, mypy, hatchling, wsgate.django'

# One install at a time per virtualenv (worktrees share it).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock -w 900 9 || die "another install of $VENV holds $VENV.lock"

stamp=$VENV/.wsgate-requirements
# The requirement files, the package's pyproject.toml and its sources: a
# change to any of them reinstalls (the package is a copy, not a link, so
# that worktrees sharing the virtualenv do not run each other's checkout).
want=$(
    {
        sha256sum "$REQUIREMENTS" "$DEV_REQUIREMENTS" "$PACKAGE/pyproject.toml" "$PACKAGE/README.md"
        find "$PACKAGE/src" -type f \( -name '*.py' -o -name py.typed \) -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
    say "virtualenv $VENV up to date"
    exit 0
fi

# A virtualenv whose interpreter no longer runs (its Python was removed or
# upgraded) is made anew.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "removing the broken virtualenv $VENV"
    rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 without python3-venv: install it, then retry.
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
            apt-get -o DPkg::Lock::Timeout=600 update -qq
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV"
        else
            die "cannot create a virtualenv with $PYTHON (install python3-venv)"
        fi
    fi
fi

say "installing $REQUIREMENTS, $DEV_REQUIREMENTS and $PACKAGE"
rm -f "$stamp"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check --no-input "$@" --root-user-action=ignore; }
pip install --upgrade pip
pip install -r "$REQUIREMENTS" -r "$DEV_REQUIREMENTS"
# Its dependencies are pinned above; --force-reinstall because a changed
# source keeps the same version number.
pip install --no-deps --no-build-isolation --force-reinstall "./$PACKAGE"
"$VENV/bin/python" -c "$IMPORTS" || die "the virtualenv does not import the pinned packages"
printf '%s\n' "$want" >"$stamp"
say "done: $("$VENV/bin/python" -c 'import django, channels, channels_redis, httpx, wsgate; print("Django", django.__version__, "channels", channels.__version__, "channels_redis", channels_redis.__version__, "httpx", httpx.__version__, "wsgate", wsgate.__version__)')"
