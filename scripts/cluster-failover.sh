#!/usr/bin/env bash
# Failover runs on one machine, loopback only, bounded (issue 16): a Redis
# Cluster master lost under publish load, a resharding under load, and a
# wsgate node lost under load. Prints a Markdown report; exits non-zero when
# a correctness check fails.
#
# Usage:
#   scripts/cluster-failover.sh                       all phases (75-85 s on a 2-core VM; more
#                                                     when a recovery does not come: 30 s bound each)
#   scripts/cluster-failover.sh --phase master-loss   one phase (or a comma list, run in
#                                                     that order; all: master-loss,node-loss,reshard)
#   scripts/cluster-failover.sh --report FILE         also write the report to FILE
#
# What it starts, all by itself, and stops on exit (trap, also on failure or
# Ctrl-C; only the PIDs it wrote down, never by name):
#   - 6 throwaway redis-server processes, a Redis Cluster of 3 masters + 3
#     replicas (`redis-cli --cluster create ... --cluster-replicas 1`),
#     ports 7101-7106 (cluster bus 17101-17106), cluster-node-timeout
#     1500 ms, no persistence, data in a private temp dir;
#   - a throwaway PostgreSQL database `wsgate_fo_<random>` on the machine's
#     server (127.0.0.1:5432, user postgres, trust), dropped at the end;
#   - 3 wsgate nodes (fo-1..fo-3): ws 17121-17123, api 18121-18123,
#     metrics 17131-17133, redis.url = redis-cluster://127.0.0.1:7101;
#   - nginx in front, as scripts/local-cluster.sh does (its own prefix, the
#     config rendered from scripts/nginx-local.conf.template; never the
#     system nginx): WebSocket on 127.0.0.1:17120, API on 127.0.0.1:18120;
#   - the driver, scripts/cluster_failover_driver.py (Python, the repo's
#     virtualenv): 240 WebSockets through nginx, 2 groups each, 30 groups
#     (8 plain + 2 history per master), 150 publishes/s through the API.
#
# Phases, in this order by default (the driver's report says what each
# measures; resharding comes last because it moves the slots the earlier
# phases' groups sit on; results in docs/failover.md):
#   master-loss  SIGKILL of a Redis master (not the seed 7101): time until
#                every group on its slots delivers again on every node,
#                messages lost (plain groups: at most once), history groups
#                recovered with `since` (zero loss), presence, node registry,
#                /readyz, same wsgate PIDs. The old master is then restarted
#                and rejoins as a replica.
#   node-loss    SIGKILL of wsgate fo-2: its clients reconnect through nginx
#                and resubscribe; time until all are back and receiving, and
#                the token lookups / PostgreSQL work the reconnect caused.
#   reshard      redis-cli --cluster reshard of 1500 slots between two masters
#                while publishing: loss, the longest gap per group, and
#                PUBSUB SHARDNUMSUB of the moved groups on their new master.
#
# Bounds: every wait has a timeout (30 s per recovery, 60 s for start-up and
# `redis-cli --cluster` commands); the whole run is killed after
# FAILOVER_DEADLINE seconds [290].
#
# Needs: redis-server and redis-cli (7.x), nginx (installed by
# scripts/test.sh; else `apt-get install -y nginx`), psql and PostgreSQL at
# 127.0.0.1:5432, the virtualenv of scripts/install-python-tools.sh
# (websockets, httpx), and the wsgate release binary.
#
# Environment (defaults in brackets):
#   WSGATE_BIN         wsgate binary [/work/main/target/release/wsgate, else
#                      target/release/wsgate of this checkout]; waited for up
#                      to WSGATE_BIN_WAIT seconds [0] if it does not exist yet
#   WSGATE_PYENV       virtualenv [~/.cache/wsgate-pyenv]
#   FAILOVER_DEADLINE  hard bound of the whole run in seconds [290]
#   FAILOVER_KEEP=1    keep the logs dir, with each phase's raw figures as JSON
#                      (secrets are always deleted)
#   FAILOVER_SOCKETS, FAILOVER_RATE   sizes [240, 150]
# Secrets (API key, tokens) live in files in a private temp dir and are
# never printed; logs are kept on failure (or with FAILOVER_KEEP=1) in
# that temp dir's logs/ only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PHASES=master-loss,node-loss,reshard
REPORT=
while (($#)); do
    case $1 in
    --phase | --phases) PHASES=${2:?}; shift 2 ;;
    --report) REPORT=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster-failover: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

REDIS_PORTS=(7101 7102 7103 7104 7105 7106)
NODE_TIMEOUT_MS=1500
WS_PORTS=(17121 17122 17123)
API_PORTS=(18121 18122 18123)
METRICS_PORTS=(17131 17132 17133)
LB_WS=17120
LB_API=18120
PREFIX=wsgate_fo:
PG=postgres://postgres@127.0.0.1:5432
DEADLINE=${FAILOVER_DEADLINE:-290}
PYENV=${WSGATE_PYENV:-$HOME/.cache/wsgate-pyenv}
SOCKETS=${FAILOVER_SOCKETS:-240}
RATE=${FAILOVER_RATE:-150}

say() { printf '[%s] cluster-failover: %s\n' "$(date +%T)" "$*" >&2; }
die() { say "$*"; exit 2; }

WORK=$(mktemp -d /tmp/wsgate-failover.XXXXXX)
RUN=$WORK/run
LOGS=$WORK/logs
SECRET=$WORK/secret
RDIR=$WORK/redis
NGX=$WORK/nginx
mkdir -p "$RUN" "$LOGS" "$RDIR" "$NGX"
(umask 077 && mkdir -p "$SECRET")
DB=wsgate_fo_$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')
DB_CREATED=0
DRIVER_PID=
START=$SECONDS

alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# PID from RUN/NAME.pid when that process is alive and still the one we
# started (its command line holds WANT): a recycled PID is never signalled.
# shellcheck disable=SC2317 # used by the EXIT trap
owned() { # NAME WANT
    local f=$RUN/$1.pid pid
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    printf '%s' "$pid"
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$? pid f name i
    trap - EXIT INT TERM
    if [[ -n $DRIVER_PID ]] && alive "$DRIVER_PID"; then kill -TERM "$DRIVER_PID" 2>/dev/null || true; fi
    # nginx: SIGTERM to the master, which stops its workers (a SIGKILLed
    # master would leave them serving); its children by parent PID are
    # SIGKILLed only if they outlive it.
    if pid=$(owned nginx "-p $NGX/"); then
        local workers
        workers=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' | tr '\n' ' ')
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
        for f in $workers; do
            if alive "$f" && tr '\0' ' ' <"/proc/$f/cmdline" 2>/dev/null | grep -q '^nginx'; then
                kill -KILL "$f" 2>/dev/null || true
            fi
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for f in "$RUN"/*.pid; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .pid)
        case $name in
        nginx) continue ;;
        fo-*) pid=$(owned "$name" "wsgate") || continue ;;
        redis-*) pid=$(owned "$name" ":${name#redis-}") || continue ;;
        watchdog) pid=$(owned watchdog "cluster-failover") || continue
            kill -TERM "$pid" 2>/dev/null || true
            continue ;;
        *) continue ;;
        esac
        kill -KILL "$pid" 2>/dev/null || true
    done
    for f in "$RUN"/*.pid; do
        [[ -e $f ]] || continue
        pid=$(<"$f")
        for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    done
    if ((DB_CREATED)); then
        timeout 20 psql "$PG/postgres" -Xq -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 ||
            say "could not drop database $DB"
    fi
    rm -rf "$SECRET" "$RDIR"
    if ((rc != 0)) || [[ ${FAILOVER_KEEP:-0} == 1 ]]; then
        say "exit $rc after $((SECONDS - START)) s; logs kept in $LOGS (and $NGX/*.log)"
    else
        rm -rf "$WORK"
        say "done in $((SECONDS - START)) s; everything stopped and removed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The hard bound of the whole run: a watchdog signals this shell.
(
    trap 'kill "$SPID" 2>/dev/null; exit 0' TERM
    sleep "$DEADLINE" &
    SPID=$!
    wait "$SPID" && say "deadline of $DEADLINE s passed: stopping" && kill -TERM $$
) &
echo $! >"$RUN/watchdog.pid"

# ---------------------------------------------------------------- checks
for tool in redis-server redis-cli psql timeout; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
NGINX=$(command -v nginx || true)
[[ -n $NGINX ]] || for p in /usr/sbin/nginx /usr/local/sbin/nginx; do [[ -x $p ]] && NGINX=$p && break; done
[[ -n $NGINX ]] || die "nginx not found: apt-get install -y nginx (only the binary is used)"
[[ -x $PYENV/bin/python ]] || die "no virtualenv at $PYENV: run scripts/install-python-tools.sh"
"$PYENV/bin/python" -c 'import websockets, httpx' || die "$PYENV lacks websockets/httpx"

if [[ -z ${WSGATE_BIN:-} ]]; then
    WSGATE_BIN=/work/main/target/release/wsgate
    [[ -x $WSGATE_BIN ]] || [[ ! -x $ROOT/target/release/wsgate ]] || WSGATE_BIN=$ROOT/target/release/wsgate
fi
for ((i = 0; i < ${WSGATE_BIN_WAIT:-0}; i++)); do [[ -x $WSGATE_BIN ]] && break; sleep 1; done
[[ -x $WSGATE_BIN ]] || die "no wsgate binary at $WSGATE_BIN (set WSGATE_BIN)"

# shellcheck disable=SC2016 # expanded by the inner bash
port_busy() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }
for p in "${REDIS_PORTS[@]}" "${WS_PORTS[@]}" "${API_PORTS[@]}" "${METRICS_PORTS[@]}" $LB_WS $LB_API; do
    ! port_busy "$p" || die "port $p is in use (another run, or something else): not starting"
done
for p in "${REDIS_PORTS[@]}"; do
    ! port_busy $((p + 10000)) || die "cluster bus port $((p + 10000)) is in use"
done

http_status() { # PORT PATH
    curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null || true
}

# ------------------------------------------------------------- Redis Cluster
say "starting 6 redis-server on ${REDIS_PORTS[0]}-${REDIS_PORTS[5]}"
for p in "${REDIS_PORTS[@]}"; do
    mkdir -p "$RDIR/$p"
    setsid redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$RDIR/$p" \
        --cluster-enabled yes --cluster-config-file "$RDIR/$p/nodes.conf" \
        --cluster-node-timeout $NODE_TIMEOUT_MS </dev/null >>"$LOGS/redis-$p.log" 2>&1 &
    echo $! >"$RUN/redis-$p.pid"
    disown $!
done
for p in "${REDIS_PORTS[@]}"; do
    for ((i = 0; i < 100; i++)); do
        [[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
    ((i < 100)) || die "redis-server on $p did not answer in 10 s"
done
addrs=()
for p in "${REDIS_PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$LOGS/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed (see $LOGS/cluster-create.log)"
for p in "${REDIS_PORTS[@]}"; do
    for ((i = 0; i < 300; i++)); do
        redis-cli -p "$p" cluster info 2>/dev/null | grep -q cluster_state:ok && break
        sleep 0.2
    done
    ((i < 300)) || die "Redis Cluster not ok on $p in 60 s"
done
# Replicas must be attached before a master is killed.
for ((i = 0; i < 300; i++)); do
    n=$(redis-cli -p 7101 cluster nodes | grep -c ' slave ' || true)
    ((n == 3)) && break
    sleep 0.2
done
((i < 300)) || die "the 3 replicas did not attach in 60 s"
say "Redis Cluster up: $(redis-cli -p 7101 cluster nodes | awk '{split($2,a,"@"); print a[1], ($3 ~ /master/ ? "master" : "replica")}' | sort | tr '\n' ';')"

# -------------------------------------------------------------- PostgreSQL
timeout 20 psql "$PG/postgres" -Xq -c "CREATE DATABASE $DB" >/dev/null || die "could not create database $DB"
DB_CREATED=1
DB_URL=$PG/$DB
WSGATE__DATABASE__URL=$DB_URL timeout 60 "$WSGATE_BIN" migrate >>"$LOGS/migrate.log" 2>&1 ||
    die "wsgate migrate failed (see $LOGS/migrate.log)"

# Secrets: the API key and one native token per socket (user fo-N), stored
# as SHA-256 digests exactly as `wsgate token issue` does.
(umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$SECRET/api-key")
(umask 077 && "$PYENV/bin/python" - "$SOCKETS" >"$SECRET/tokens.txt" <<'PY'
import base64, os, sys
for _ in range(int(sys.argv[1])):
    print("wsg_" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())
PY
)
timeout 30 psql "$DB_URL" -Xq -v ON_ERROR_STOP=1 >/dev/null <<SQL || die "could not insert the tokens"
CREATE TEMP TABLE fo_tokens (n serial, token text);
\copy fo_tokens (token) FROM '$SECRET/tokens.txt'
INSERT INTO wsgate_tokens (digest, user_id, created_at, expires_at, revoked_at)
SELECT encode(sha256(convert_to(token, 'UTF8')), 'hex'), 'fo-' || n,
       (extract(epoch FROM now()) * 1000)::bigint, NULL, NULL
FROM fo_tokens;
SQL
say "database $DB: migrated, $SOCKETS tokens"

# ------------------------------------------------------------ wsgate nodes
KEY=$(<"$SECRET/api-key")
for i in 0 1 2; do
    n=fo-$((i + 1))
    WSGATE_FAILOVER_INSTANCE=$WORK \
        WSGATE__SERVER__NODE_ID=$n \
        WSGATE__SERVER__LISTEN=127.0.0.1:${WS_PORTS[$i]} \
        WSGATE__API__LISTEN=127.0.0.1:${API_PORTS[$i]} \
        WSGATE__METRICS__LISTEN=127.0.0.1:${METRICS_PORTS[$i]} \
        WSGATE__API__KEYS=$KEY \
        WSGATE__DATABASE__URL=$DB_URL \
        WSGATE__DATABASE__MIGRATE=false \
        WSGATE__REDIS__URL=redis-cluster://127.0.0.1:${REDIS_PORTS[0]} \
        WSGATE__REDIS__PREFIX=$PREFIX \
        WSGATE__REDIS__HEARTBEAT=1s \
        WSGATE__REDIS__NODE_TTL=4s \
        WSGATE__REDIS__COMMAND_TIMEOUT=1s \
        WSGATE__HISTORY__GROUPS='fo.h.*' \
        WSGATE__HISTORY__SIZE=2000 \
        WSGATE__AUTH__CACHE_TTL=10m \
        WSGATE__LIMITS__MAX_PENDING_PER_IP=1000 \
        WSGATE__LIMITS__MAX_CONNECTIONS_PER_IP=5000 \
        WSGATE__DRAIN__GRACE=0s \
        WSGATE__DRAIN__SPREAD=1s \
        setsid "$WSGATE_BIN" serve </dev/null >>"$LOGS/$n.log" 2>&1 &
    echo $! >"$RUN/$n.pid"
    disown $!
done
unset KEY
for i in 0 1 2; do
    n=fo-$((i + 1))
    for ((t = 0; t < 300; t++)); do
        [[ $(http_status "${METRICS_PORTS[$i]}" /readyz) == 200 ]] && break
        alive "$(<"$RUN/$n.pid")" || { tail -n 20 "$LOGS/$n.log" >&2; die "$n exited"; }
        sleep 0.2
    done
    ((t < 300)) || { tail -n 20 "$LOGS/$n.log" >&2; die "$n not ready in 60 s"; }
done
say "wsgate fo-1..fo-3 ready ($WSGATE_BIN)"

# -------------------------------------------------------------------- nginx
WSGATE_LOCAL_WS_PORTS="${WS_PORTS[*]}" WSGATE_LOCAL_API_PORTS="${API_PORTS[*]}" \
    WSGATE_LOCAL_LB_WS_PORT=$LB_WS WSGATE_LOCAL_LB_API_PORT=$LB_API \
    bash "$ROOT/scripts/local-cluster.sh" render-conf >"$NGX/nginx.conf"
"$NGINX" -t -q -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" || die "nginx -t failed"
"$NGINX" -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" -g 'daemon off;' \
    </dev/null >>"$NGX/stdout.log" 2>&1 &
echo $! >"$RUN/nginx.pid"
disown $!
for ((t = 0; t < 100; t++)); do
    [[ $(http_status $LB_WS /readyz) == 200 ]] && break
    sleep 0.1
done
((t < 100)) || die "nginx did not answer on :$LB_WS in 10 s"
say "nginx on :$LB_WS (ws) and :$LB_API (api); set-up took $((SECONDS - START)) s"

# ------------------------------------------------------------------- driver
nodes_arg=fo-1:${METRICS_PORTS[0]},fo-2:${METRICS_PORTS[1]},fo-3:${METRICS_PORTS[2]}
report_file=$WORK/report.md
DUMP=()
[[ ${FAILOVER_KEEP:-0} != 1 ]] || DUMP=(--dump)
set +e
"$PYENV/bin/python" "$ROOT/scripts/cluster_failover_driver.py" \
    --lb-ws $LB_WS --lb-api $LB_API \
    --api-key-file "$SECRET/api-key" --tokens-file "$SECRET/tokens.txt" \
    --nodes "$nodes_arg" --redis-ports "$(IFS=,; echo "${REDIS_PORTS[*]}")" \
    --redis-dir "$RDIR" --run-dir "$RUN" --log-dir "$LOGS" --prefix "$PREFIX" --pg-db "$DB" \
    --node-timeout-ms $NODE_TIMEOUT_MS --phases "$PHASES" \
    --sockets "$SOCKETS" --rate "$RATE" --report "$report_file" \
    "${DUMP[@]}" &
DRIVER_PID=$!
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=
set -e
# Did any wsgate node restart or log a panic?
for n in fo-1 fo-2 fo-3; do
    if grep -q "panicked" "$LOGS/$n.log"; then
        say "$n logged a panic (see $LOGS/$n.log)"
        rc=1
    fi
done
if [[ -s $report_file ]]; then
    {
        echo
        echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'),"
        echo "binary $WSGATE_BIN, phases $PHASES, $((SECONDS - START)) s in all; $(nproc) cores, loopback."
    } | tee -a "$report_file"
    [[ -z $REPORT ]] || cp "$report_file" "$REPORT"
fi
((rc == 0)) || say "driver exit status $rc"
exit "$rc"
