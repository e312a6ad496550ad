#!/usr/bin/env bash
# A local wsgate cluster without Docker: the docker-compose topology on one
# machine. Three wsgate nodes on loopback ports share the machine's
# PostgreSQL and Redis, and Debian's nginx balances them round robin (no
# stickiness) with WebSocket upgrade.
#
# Usage:
#   scripts/local-cluster.sh up           build (cargo build --release), start, wait until ready
#   scripts/local-cluster.sh status       what runs, readiness, the cluster listing
#   scripts/local-cluster.sh down         stop everything `up` started (and only that)
#   scripts/local-cluster.sh token USER   issue a token for USER (native store)
#   scripts/local-cluster.sh render-conf  print the nginx config for the ports below
#
# Then:
#   WebSocket:  ws://127.0.0.1:18080/ws      (nginx, round robin over the nodes)
#   API:        http://127.0.0.1:18180/api/v1/publish
#               curl -H "Authorization: Bearer $(cat /tmp/wsgate-local/api-key)" \
#                    -d '{"group":"market.AAPL","data":{"p":1}}' http://127.0.0.1:18180/api/v1/publish
#   Nodes:      ws 18081-18083, api 18181-18183, metrics 19091-19093 (/metrics, /readyz)
#
# Needs: PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres (and
# psql), Redis on 127.0.0.1:6379, and nginx (`apt-get install -y nginx`).
# nginx runs as a separate instance with its own prefix
# (`nginx -p $STATE/nginx -c $STATE/nginx/nginx.conf`): it never reads or
# writes /etc/nginx and never touches the system nginx service. The config
# comes from scripts/nginx-local.conf.template, which tests/local_cluster.rs
# renders through `render-conf` too, so the test runs this very config.
#
# Environment (defaults in brackets):
#   WSGATE_LOCAL_DIR            state dir: PIDs, logs, nginx prefix, API key [/tmp/wsgate-local]
#   WSGATE_BIN                  wsgate binary to run [cargo build --release, target/release/wsgate]
#   WSGATE_API_KEY              API key shared by the nodes [generated once into $WSGATE_LOCAL_DIR/api-key]
#   WSGATE_LOCAL_WS_PORTS       node WebSocket ports, one node each ["18081 18082 18083"]
#                               (render-conf also takes host:port entries)
#   WSGATE_LOCAL_API_PORTS      node API ports ["18181 18182 18183"]
#   WSGATE_LOCAL_METRICS_PORTS  node metrics ports ["19091 19092 19093"]
#   WSGATE_LOCAL_LB_WS_PORT     nginx WebSocket port [18080]
#   WSGATE_LOCAL_LB_API_PORT    nginx API port [18180]
#   WSGATE_LOCAL_LB_BIND        address nginx listens on [127.0.0.1]
#   WSGATE_LOCAL_PG             PostgreSQL server URL, without database [postgres://postgres@127.0.0.1:5432]
#   WSGATE_LOCAL_DB             database, created if missing [wsgate_local]
#   WSGATE_LOCAL_REDIS_URL      Redis [redis://127.0.0.1:6379]
#   WSGATE_LOCAL_REDIS_PREFIX   key and channel prefix, apart from other users of that Redis [wsgate_local:]
#   NGINX                       nginx binary [nginx from PATH, /usr/sbin, /usr/local/sbin]
# A WSGATE__SECTION__KEY variable in the environment reaches every node
# (e.g. WSGATE__LOG__LEVEL=debug, WSGATE__GROUPS__ALLOW=market.*), except the
# listen addresses, node ids, database and Redis settings, which are set here.
#
# Node ids are local-1, local-2, ... (the `node` field of `welcome`).
# Logs: $STATE/logs/node-N.log, $STATE/nginx/{access,error}.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATE=$ROOT/scripts/nginx-local.conf.template

STATE=${WSGATE_LOCAL_DIR:-/tmp/wsgate-local}
# Port lists: separated by spaces or commas.
IFS=', ' read -r -a WS_PORTS <<<"${WSGATE_LOCAL_WS_PORTS:-18081 18082 18083}"
IFS=', ' read -r -a API_PORTS <<<"${WSGATE_LOCAL_API_PORTS:-18181 18182 18183}"
IFS=', ' read -r -a METRICS_PORTS <<<"${WSGATE_LOCAL_METRICS_PORTS:-19091 19092 19093}"
LB_WS_PORT=${WSGATE_LOCAL_LB_WS_PORT:-18080}
LB_API_PORT=${WSGATE_LOCAL_LB_API_PORT:-18180}
LB_BIND=${WSGATE_LOCAL_LB_BIND:-127.0.0.1}
PG=${WSGATE_LOCAL_PG:-postgres://postgres@127.0.0.1:5432}
DB=${WSGATE_LOCAL_DB:-wsgate_local}
REDIS_URL=${WSGATE_LOCAL_REDIS_URL:-redis://127.0.0.1:6379}
REDIS_PREFIX=${WSGATE_LOCAL_REDIS_PREFIX:-wsgate_local:}
NODES=${#WS_PORTS[@]}

RUN=$STATE/run
LOGS=$STATE/logs
NGINX_PREFIX=$STATE/nginx
NGINX_CONF=$NGINX_PREFIX/nginx.conf

say() { printf 'local-cluster: %s\n' "$*"; }
die() { printf 'local-cluster: %s\n' "$*" >&2; exit 1; }

# "1234" -> "127.0.0.1:1234"; "host:1234" stays.
addr() { if [[ $1 == *:* ]]; then printf '%s' "$1"; else printf '127.0.0.1:%s' "$1"; fi; }

find_nginx() {
    if [[ -n ${NGINX:-} ]]; then
        [[ -x $NGINX ]] || die "NGINX=$NGINX is not an executable"
        printf '%s' "$NGINX"; return
    fi
    local p
    for p in "$(command -v nginx 2>/dev/null || true)" /usr/sbin/nginx /usr/local/sbin/nginx; do
        if [[ -n $p && -x $p ]]; then printf '%s' "$p"; return; fi
    done
    die "nginx not found; install it with: apt-get install -y nginx (only the binary is used; the system service is never started or touched)"
}

# The nginx config for the ports above, on stdout.
render_conf() {
    [[ -r $TEMPLATE ]] || die "missing $TEMPLATE"
    [[ ${#API_PORTS[@]} -eq $NODES ]] || die "WSGATE_LOCAL_API_PORTS must list $NODES ports, like WSGATE_LOCAL_WS_PORTS"
    ((NODES > 0)) || die "WSGATE_LOCAL_WS_PORTS is empty"
    local ws_servers="" api_servers="" i
    for i in "${!WS_PORTS[@]}"; do
        ws_servers+="        server $(addr "${WS_PORTS[$i]}") max_fails=1 fail_timeout=10s;"$'\n'
        api_servers+="        server $(addr "${API_PORTS[$i]}") max_fails=1 fail_timeout=10s;"$'\n'
    done
    local conf
    # The template's own header (up to the first blank line) documents the
    # markers; the output gets a short one instead.
    conf="# Generated by scripts/local-cluster.sh render-conf from"$'\n'
    conf+="# scripts/nginx-local.conf.template (see there); edit the template, not this."$'\n'
    conf+=$(sed '1,/^$/d' "$TEMPLATE")
    conf=${conf//@WS_SERVERS@/${ws_servers%$'\n'}}
    conf=${conf//@API_SERVERS@/${api_servers%$'\n'}}
    conf=${conf//@LB_WS_LISTEN@/$(addr "$LB_BIND:$LB_WS_PORT")}
    conf=${conf//@LB_API_LISTEN@/$(addr "$LB_BIND:$LB_API_PORT")}
    if [[ $conf =~ @[A-Z_]+@ ]]; then die "template has an unknown marker ${BASH_REMATCH[0]}"; fi
    printf '%s\n' "$conf"
}

# HTTP GET on 127.0.0.1; prints the status code (000 if unreachable).
http_status() { # PORT PATH
    local line
    # shellcheck disable=SC2016 # expanded by the inner bash
    line=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        head -n1 <&3' _ "$1" "$2" 2>/dev/null) || true
    line=${line#HTTP/* }
    printf '%s' "${line:0:3}" | grep -E '^[0-9]{3}$' || printf '000'
}

# shellcheck disable=SC2016 # expanded by the inner bash
port_busy() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# Alive and not a zombie (an unreaped child of init still answers kill -0).
alive() { # PID
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# PID from a pid file if that process is alive and is the one we started
# (a recycled PID is never signalled).
owned_pid() { # NAME
    local file=$RUN/$1.pid pid
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    if [[ $1 == nginx ]]; then
        # nginx rewrites its title to "nginx: master process <argv>".
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-p $NGINX_PREFIX" || return 1
    else
        tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "WSGATE_LOCAL_INSTANCE=$STATE" || return 1
    fi
    printf '%s' "$pid"
}

# SIGNAL the process, wait up to SECS for it to exit, then SIGKILL it.
stop_pid() { # NAME PID SIGNAL SECS
    local name=$1 pid=$2 i
    [[ $3 == 0 ]] || kill "-$3" "$pid" 2>/dev/null || true
    for ((i = 0; i < $4 * 10; i++)); do
        alive "$pid" || { say "stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    say "$name (pid $pid) did not stop in $4 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

api_key() {
    if [[ -n ${WSGATE_API_KEY:-} ]]; then
        ((${#WSGATE_API_KEY} >= 16)) || die "WSGATE_API_KEY must be at least 16 characters"
        printf '%s' "$WSGATE_API_KEY"
        return
    fi
    if [[ ! -s $STATE/api-key ]]; then
        (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$STATE/api-key")
        say "generated an API key in $STATE/api-key" >&2
    fi
    cat "$STATE/api-key"
}

wsgate_bin() {
    if [[ -n ${WSGATE_BIN:-} ]]; then
        [[ -x $WSGATE_BIN ]] || die "WSGATE_BIN=$WSGATE_BIN is not an executable"
        printf '%s' "$(realpath "$WSGATE_BIN")"
        return
    fi
    say "cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --bin wsgate >&2) || die "cargo build failed"
    printf '%s' "$ROOT/target/release/wsgate"
}

database_url() { printf '%s/%s' "$PG" "$DB"; }

ensure_database() {
    [[ $DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "WSGATE_LOCAL_DB must be a plain lower-case name"
    command -v psql >/dev/null || die "psql not found (apt-get install -y postgresql-client), or create database $DB yourself"
    local exists
    exists=$(psql "$PG/postgres" -XtAc "SELECT 1 FROM pg_database WHERE datname = '$DB'") ||
        die "PostgreSQL at $PG is not reachable (user postgres, trust auth)"
    if [[ $exists != 1 ]]; then
        psql "$PG/postgres" -Xq -c "CREATE DATABASE $DB" || die "could not create database $DB"
        say "created database $DB"
    fi
}

# The ports `up` used, so that status and down work without the same
# environment.
save_layout() {
    declare -p WS_PORTS API_PORTS METRICS_PORTS LB_WS_PORT LB_API_PORT >"$RUN/layout"
}
load_layout() {
    if [[ -r $RUN/layout ]]; then
        # shellcheck disable=SC1091
        source "$RUN/layout"
        NODES=${#WS_PORTS[@]}
    fi
}

UP_DONE=1
# shellcheck disable=SC2317 # run by the EXIT trap
up_exit() {
    ((UP_DONE)) && return
    say "up failed; stopping what it started" >&2
    do_down >&2 || true
}
up_fail() { # MESSAGE [LOG]
    if [[ -n ${2:-} && -r $2 ]]; then
        say "last lines of $2:" >&2
        tail -n 20 "$2" >&2
    fi
    die "$1"
}

do_up() {
    ((NODES > 0)) || die "WSGATE_LOCAL_WS_PORTS is empty"
    [[ ${#API_PORTS[@]} -eq $NODES && ${#METRICS_PORTS[@]} -eq $NODES ]] ||
        die "WSGATE_LOCAL_WS_PORTS, _API_PORTS and _METRICS_PORTS must list the same number of ports"
    local port
    for port in "${WS_PORTS[@]}" "${API_PORTS[@]}" "${METRICS_PORTS[@]}" "$LB_WS_PORT" "$LB_API_PORT"; do
        [[ $port =~ ^[0-9]+$ ]] || die "up takes plain port numbers (the nodes listen on 127.0.0.1), not '$port'"
    done
    mkdir -p "$RUN" "$LOGS" "$NGINX_PREFIX"
    local f
    for f in "$RUN"/*.pid; do
        [[ -e $f ]] || continue
        f=$(basename "$f" .pid)
        if owned_pid "$f" >/dev/null; then
            die "$f is already running (see: $0 status); run: $0 down"
        fi
    done
    for port in "${WS_PORTS[@]}" "${API_PORTS[@]}" "${METRICS_PORTS[@]}" "$LB_WS_PORT" "$LB_API_PORT"; do
        if port_busy "$port"; then
            die "port $port is already in use (override the ports with WSGATE_LOCAL_*_PORT[S])"
        fi
    done

    local nginx bin key db_url
    nginx=$(find_nginx)
    ensure_database
    db_url=$(database_url)
    if command -v redis-cli >/dev/null; then
        redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG || die "Redis at $REDIS_URL does not answer PING"
    fi
    key=$(api_key)
    bin=$(wsgate_bin)
    [[ -x $bin ]] || die "no wsgate binary at $bin"

    render_conf >"$NGINX_CONF"
    "$nginx" -t -q -p "$NGINX_PREFIX/" -c "$NGINX_CONF" -e "$NGINX_PREFIX/error.log" ||
        die "nginx -t failed on $NGINX_CONF"

    # Migrations once, before the nodes start (as the compose migrate service).
    WSGATE__DATABASE__URL=$db_url "$bin" migrate >>"$LOGS/migrate.log" 2>&1 ||
        up_fail "wsgate migrate failed" "$LOGS/migrate.log"

    save_layout
    UP_DONE=0
    trap up_exit EXIT
    local i n t
    for ((i = 0; i < NODES; i++)); do
        n=$((i + 1))
        # WSGATE_LOCAL_INSTANCE marks the process as ours for status/down.
        WSGATE_LOCAL_INSTANCE=$STATE \
            WSGATE__SERVER__NODE_ID=local-$n \
            WSGATE__SERVER__LISTEN=127.0.0.1:${WS_PORTS[$i]} \
            WSGATE__API__LISTEN=127.0.0.1:${API_PORTS[$i]} \
            WSGATE__METRICS__LISTEN=127.0.0.1:${METRICS_PORTS[$i]} \
            WSGATE__API__KEYS=$key \
            WSGATE__DATABASE__URL=$db_url \
            WSGATE__DATABASE__MIGRATE=false \
            WSGATE__REDIS__URL=$REDIS_URL \
            WSGATE__REDIS__PREFIX=$REDIS_PREFIX \
            WSGATE__DRAIN__GRACE=${WSGATE__DRAIN__GRACE:-1s} \
            WSGATE__DRAIN__SPREAD=${WSGATE__DRAIN__SPREAD:-2s} \
            nohup "$bin" serve </dev/null >>"$LOGS/node-$n.log" 2>&1 &
        echo $! >"$RUN/node-$n.pid"
        say "started local-$n (pid $!): ws :${WS_PORTS[$i]} api :${API_PORTS[$i]} metrics :${METRICS_PORTS[$i]}"
    done
    for ((i = 0; i < NODES; i++)); do
        n=$((i + 1))
        for ((t = 0; t < 300; t++)); do
            [[ $(http_status "${METRICS_PORTS[$i]}" /readyz) == 200 ]] && break
            alive "$(<"$RUN/node-$n.pid")" || up_fail "local-$n exited" "$LOGS/node-$n.log"
            sleep 0.1
        done
        ((t < 300)) || up_fail "local-$n not ready in 30 s" "$LOGS/node-$n.log"
    done
    say "nodes ready"

    nohup "$nginx" -p "$NGINX_PREFIX/" -c "$NGINX_CONF" -e "$NGINX_PREFIX/error.log" -g 'daemon off;' \
        </dev/null >>"$NGINX_PREFIX/stdout.log" 2>&1 &
    echo $! >"$RUN/nginx.pid"
    for ((t = 0; t < 100; t++)); do
        [[ $(http_status "$LB_WS_PORT" /readyz) == 200 ]] && break
        alive "$(<"$RUN/nginx.pid")" || up_fail "nginx exited" "$NGINX_PREFIX/error.log"
        sleep 0.1
    done
    ((t < 100)) || up_fail "nginx did not answer on :$LB_WS_PORT in 10 s" "$NGINX_PREFIX/error.log"
    UP_DONE=1
    say "nginx (pid $(<"$RUN/nginx.pid")) balancing round robin over $NODES nodes"
    cat <<EOF

  WebSocket  ws://$(addr "$LB_BIND:$LB_WS_PORT")/ws
  API        http://$(addr "$LB_BIND:$LB_API_PORT")/api/v1/publish   (Authorization: Bearer <key>)
  API key    $(if [[ -n ${WSGATE_API_KEY:-} ]]; then echo "\$WSGATE_API_KEY"; else echo "$STATE/api-key"; fi)
  token      $0 token 42
  status     $0 status
  stop       $0 down
  logs       $LOGS/node-N.log, $NGINX_PREFIX/access.log, $NGINX_PREFIX/error.log

EOF
}

do_down() {
    local pid f any=0
    if pid=$(owned_pid nginx); then
        any=1
        stop_pid nginx "$pid" TERM 10
    fi
    rm -f "$RUN/nginx.pid"
    # Every node at once: SIGTERM drains (drain.grace + drain.spread), then
    # the node exits 0.
    local pids=() names=()
    for f in "$RUN"/node-*.pid; do
        [[ -e $f ]] || continue
        f=$(basename "$f" .pid)
        if pid=$(owned_pid "$f"); then
            pids+=("$pid")
            names+=("local-${f#node-}")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    local i
    for i in "${!pids[@]}"; do
        any=1
        stop_pid "${names[$i]}" "${pids[$i]}" 0 30
    done
    rm -f "$RUN"/node-*.pid
    ((any)) || say "nothing was running (state dir $STATE)"
}

do_status() {
    local pid n i rc=0
    printf '%-8s %-8s %-8s %s\n' NAME PID STATE DETAILS
    for ((i = 0; i < NODES; i++)); do
        n=$((i + 1))
        if pid=$(owned_pid "node-$n"); then
            printf '%-8s %-8s %-8s ws :%s api :%s metrics :%s readyz %s\n' "local-$n" "$pid" running \
                "${WS_PORTS[$i]}" "${API_PORTS[$i]}" "${METRICS_PORTS[$i]}" "$(http_status "${METRICS_PORTS[$i]}" /readyz)"
        else
            printf '%-8s %-8s %-8s %s\n' "local-$n" - stopped "log $LOGS/node-$n.log"
            rc=3
        fi
    done
    if pid=$(owned_pid nginx); then
        printf '%-8s %-8s %-8s ws :%s api :%s /readyz via nginx %s\n' nginx "$pid" running \
            "$LB_WS_PORT" "$LB_API_PORT" "$(http_status "$LB_WS_PORT" /readyz)"
    else
        printf '%-8s %-8s %-8s\n' nginx - stopped
        rc=3
    fi
    if ((rc == 0)) && command -v curl >/dev/null; then
        local key
        key=$(if [[ -n ${WSGATE_API_KEY:-} ]]; then printf '%s' "$WSGATE_API_KEY"; else cat "$STATE/api-key" 2>/dev/null; fi)
        printf '\ncluster (GET /api/v1/cluster through nginx):\n'
        curl -sS -m 3 -H "Authorization: Bearer $key" "http://127.0.0.1:$LB_API_PORT/api/v1/cluster" || true
        echo
    fi
    return $rc
}

do_token() {
    [[ $# -ge 1 ]] || die "usage: $0 token USER [--ttl 24h]"
    local bin
    if [[ -z ${WSGATE_BIN:-} && -x $ROOT/target/release/wsgate ]]; then
        bin=$ROOT/target/release/wsgate
    else
        bin=$(wsgate_bin)
    fi
    WSGATE__DATABASE__URL=$(database_url) "$bin" token issue --user "$@"
}

main() {
    case ${1:-} in
    up) do_up ;;
    down) load_layout; do_down ;;
    status) load_layout; do_status ;;
    token) shift; do_token "$@" ;;
    render-conf) render_conf ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
    esac
}

# One line, parsed whole before it runs: editing this file while `up` runs
# cannot make bash read on into the edited text.
main "$@"; exit $?
