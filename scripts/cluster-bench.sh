#!/usr/bin/env bash
# scripts/cluster-bench.sh [--quick] [--only PHASE[,PHASE]] [--runs N] [--out FILE] [--inputs-out FILE] [--keep]
#
# The capacity model (docs/scaling.md, scripts/capacity) checked against a
# real multi-node run, and the Redis back ends side by side (issue 16). It
# starts everything itself, on loopback, and stops it at the end:
#
#   - throwaway redis-server processes in a private temp dir (ports 7200-7299
#     only): a 3-master Redis Cluster (7201-7203, `redis-cli --cluster
#     create`), one Redis (7210) and 3 independent shards (7211-7213);
#   - a throwaway PostgreSQL database on 127.0.0.1:5432 (user postgres),
#     created and migrated here, dropped at the end;
#   - 3 wsgate nodes (ws 18201-18203, api 18211-18213, metrics 18221-18223)
#     and nginx in front of them, rendered from scripts/nginx-local.conf.template
#     as scripts/local-cluster.sh does (own prefix, never the system nginx;
#     ws 18280, api 18281);
#   - wsgate-bench `groups` through nginx (sockets spread round robin over
#     the nodes; publishes through the API, also through nginx).
#
# Phase "curve": the model's CPU per delivery by load. The embedded node
# alone at rising delivery rates (CLUSTER_BENCH_CURVE, deliveries/s: 4,000
# to 128,000, doubling), market shape: rate/10 sockets in 10 groups each,
# rate/100 groups of 100 members, one publish/s a group through the API (10
# messages/s a socket whatever the rate: the sockets scale, the shape
# stays), 20 s a point (quick: 10). The climb stops at the first point the node cannot keep
# up with (under 95 % of the offered deliveries or asked publishes).
# Written into the inputs file as delivery_us_by_rate (--inputs-out), and
# used by this run's model phase (the "model" column).
#
# Phase "model": the market shape scaled down (2,400 sockets, 240 groups, 10
# groups a socket, 240 publishes/s) over the Redis Cluster. Per node: CPU
# (utime+stime of /proc/PID/stat over the measured window) / its deliveries
# (wsgate_messages_delivered_total of its /metrics over the same window);
# Redis: the redis-server processes' CPU / publishes. Beside them the
# model's prediction for the same load and 3 pods (`scripts/capacity ...
# --pods 3`) and the difference (goal: within 25 %); and a second prediction
# whose CPU per delivery is measured on the spot (the "calibrated model"): a
# fourth, embedded node alone with one node's share of the load (800
# sockets, the same groups and publishes), interleaved with the cluster runs.
#
# Phase "backends": one workload with more Redis traffic (3,000 publishes/s
# in batches of 10 over 600 groups of ~3 members each, 1,800 sockets) on one
# Redis, 3 independent shards (redis.shards, when the wsgate binary accepts
# it; otherwise reported as skipped) and the 3-master cluster: messages
# through Redis per second and Redis CPU per message, also net of the
# servers' CPU with nothing sent (measured just before each run).
#
# EVERYTHING SHARES THE MACHINE'S CORES (2 here): the nodes, Redis, nginx,
# PostgreSQL and the load generator. The run checks costs per operation and
# correctness (every message delivered, none duplicated), not throughput
# growth with nodes.
#
# Options:
#   --quick        shorter runs (10 s of publishing instead of 30 s)
#   --only PHASES  curve, model or backends, or a comma list (default: all three;
#                  "curve,model" checks the model with a curve measured just before)
#   --runs N       repetitions of each measurement (default 1)
#   --out FILE     the report (Markdown, with the raw JSON lines) [target/cluster-bench.md]
#   --inputs-out F put the measured Redis figures and the curve into the capacity
#                  inputs file F (docs/capacity-inputs.json; `capacity cluster-inputs`)
#   --keep         keep the temp dir (logs; tokens and the API key are in it)
#   --direct       sockets and publishes straight to the nodes, round robin, not
#                  through nginx (to see what the proxy costs the nodes)
#
# Workloads: CLUSTER_BENCH_MODEL and CLUSTER_BENCH_BACKENDS, each "SOCKETS
# GROUPS GROUPS_A_SOCKET PUBLISHES_PER_S [BATCH]", and CLUSTER_BENCH_CURVE,
# "RATE..." (deliveries/s, multiples of 100; defaults above).
#
# Environment: WSGATE_BIN [/work/main/target/release/wsgate, else target/release/wsgate],
# WSGATE_BENCH_BIN [same directory's wsgate-bench], NGINX [nginx from PATH].
# Bounded: about 4 minutes per repetition (quick: 2) and 3 for the curve;
# nothing is built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0 ONLY="" RUNS=1 OUT=$ROOT/target/cluster-bench.md KEEP=0 INPUTS_OUT="" DIRECT=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --inputs-out) INPUTS_OUT=$2; shift ;;
        --keep) KEEP=1 ;;
        --direct) DIRECT=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $ONLY =~ ^((curve|model|backends)(,|$))*$ ]] || { echo "cluster-bench.sh: --only curve|model|backends[,...]" >&2; exit 2; }
[[ $RUNS =~ ^[1-9]$ ]] || { echo "cluster-bench.sh: --runs 1..9" >&2; exit 2; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

log() { printf '\n== %s\n' "$*" >&2; }
die() { echo "cluster-bench.sh: $*" >&2; exit 1; }
# shellcheck source=SCRIPTDIR/lib/bench-env.sh
. "$ROOT/scripts/lib/bench-env.sh"

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

DEFAULT_BIN_DIR=/work/main/target/release
[ -x "$DEFAULT_BIN_DIR/wsgate" ] || DEFAULT_BIN_DIR=$ROOT/target/release
WSGATE=${WSGATE_BIN:-$DEFAULT_BIN_DIR/wsgate}
BENCH=${WSGATE_BENCH_BIN:-$DEFAULT_BIN_DIR/wsgate-bench}
[ -x "$WSGATE" ] || die "no wsgate binary at $WSGATE (set WSGATE_BIN)"
[ -x "$BENCH" ] || die "no wsgate-bench binary at $BENCH (set WSGATE_BENCH_BIN)"
"$BENCH" groups --help | grep -q -- --metrics-url ||
    die "$BENCH has no --metrics-url (build this tree's bench: cargo build --release -p wsgate-bench)"
need curl psql redis-server redis-cli python3
NGINX_BIN=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX_BIN" ] || die "nginx is needed (apt-get install -y nginx; only the binary is used)"
pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL at 127.0.0.1:5432 does not answer"

if [ "$QUICK" = 1 ]; then D=10 CURVE_D=10 MODE=quick IDLE_S=3; else D=30 CURVE_D=20 MODE=full IDLE_S=5; fi
DRAIN=5

# --- ports ------------------------------------------------------------------
WS_PORTS=(18201 18202 18203) API_PORTS=(18211 18212 18213) MET_PORTS=(18221 18222 18223)
ONE_WS=18204 ONE_API=18214 ONE_MET=18224   # the embedded node of the calibration runs
LB_WS=18280 LB_API=18281
CLUSTER_PORTS=(7201 7202 7203) SINGLE_PORT=7210 SHARD_PORTS=(7211 7212 7213)
port_free() { ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
# A Redis Cluster node also listens on its bus port, port + 10000.
for p in "${WS_PORTS[@]}" "${API_PORTS[@]}" "${MET_PORTS[@]}" $ONE_WS $ONE_API $ONE_MET $LB_WS $LB_API "${CLUSTER_PORTS[@]}" \
    $((CLUSTER_PORTS[0] + 10000)) $((CLUSTER_PORTS[1] + 10000)) $((CLUSTER_PORTS[2] + 10000)) \
    $SINGLE_PORT "${SHARD_PORTS[@]}"; do
    port_free "$p" || die "port $p is in use (another cluster-bench run?)"
done

# --- state and cleanup ------------------------------------------------------
private_work wsgate-cluster-bench
RUN_ID="$(date +%s)$$"
PGDB="wsgate_cbench_${RUN_ID}"
PG_CREATED=0
NODE_PIDS=() REDIS_PIDS=() NGINX_PID="" ONE_PID=""
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)


stop_nodes() { local p; for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done; NODE_PIDS=(); }
stop_redis() { local p; for p in "${REDIS_PIDS[@]}"; do stop_pid "$p"; done; REDIS_PIDS=(); }

cleanup() {
    local rc=$?
    set +e
    [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
    stop_nodes
    [ -n "$ONE_PID" ] && stop_pid "$ONE_PID"
    [ -n "$NGINX_PID" ] && stop_pid "$NGINX_PID"
    stop_redis
    if [ "$PG_CREATED" = 1 ]; then psql_admin -c "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)"; fi
    if [ "$KEEP" = 1 ]; then echo "cluster-bench.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A hard bound on the whole run, whatever happens (the trap still cleans up).
# shellcheck disable=SC2016 # $s is the subshell's
( sleep $((RUNS * 600 + 300)) & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM
  wait $s && { echo "cluster-bench.sh: time limit reached" >&2; kill -TERM $$ 2>/dev/null; } ) &
WATCHDOG=$!

# --- secrets (only in files under $WORK) and the lifted per-IP limits ----------
make_api_key
lift_limits

# --- Redis ------------------------------------------------------------------
start_redis() { # PORT [extra args...]: appends to REDIS_PIDS
    local port=$1; shift
    mkdir -p "$WORK/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$WORK/redis-$port" --logfile "$WORK/redis-$port/log" "$@" &
    REDIS_PIDS+=("$!")
    for _ in $(seq 100); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    die "redis-server on $port did not start"
}
start_cluster() {
    local p addrs=()
    for p in "${CLUSTER_PORTS[@]}"; do
        start_redis "$p" --cluster-enabled yes --cluster-config-file "$WORK/redis-$p/nodes.conf" \
            --cluster-node-timeout 2000
        addrs+=("127.0.0.1:$p")
    done
    timeout 30 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
        >"$WORK/cluster-create.log" 2>&1 || { cat "$WORK/cluster-create.log" >&2; die "cluster create failed"; }
    for p in "${CLUSTER_PORTS[@]}"; do
        for _ in $(seq 300); do
            redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
            sleep 0.1
        done
        redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || die "cluster not ok on $p"
    done
}

# --- PostgreSQL: a throwaway database, migrated once --------------------------
log "PostgreSQL database $PGDB"
psql_admin -c "CREATE DATABASE $PGDB"
PG_CREATED=1
DB_URL="postgres://postgres@127.0.0.1:5432/$PGDB"
WSGATE__DATABASE__URL=$DB_URL WSGATE__API__KEYS=$API_KEY "$WSGATE" migrate >"$WORK/migrate.log" 2>&1 ||
    { cat "$WORK/migrate.log" >&2; die "wsgate migrate failed"; }
(umask 077 && WSGATE__DATABASE__URL=$DB_URL WSGATE__API__KEYS=$API_KEY \
    "$WSGATE" token issue --user 1 --ttl 24h >"$WORK/tokens.txt" 2>"$WORK/token.log") ||
    (umask 077 && WSGATE__DATABASE__URL=$DB_URL WSGATE__API__KEYS=$API_KEY \
        "$WSGATE" token issue --user 1 >"$WORK/tokens.txt" 2>"$WORK/token.log") ||
    { cat "$WORK/token.log" >&2; die "token issue failed"; }

# --- nginx: the local cluster's template, our ports, our prefix ---------------
NGX=$WORK/nginx
mkdir -p "$NGX"
WSGATE_LOCAL_WS_PORTS="${WS_PORTS[*]}" WSGATE_LOCAL_API_PORTS="${API_PORTS[*]}" \
    WSGATE_LOCAL_LB_WS_PORT=$LB_WS WSGATE_LOCAL_LB_API_PORT=$LB_API \
    scripts/local-cluster.sh render-conf >"$NGX/nginx.conf.base"
# Thousands of proxied sockets (two connections each), and no access log
# line per API request at hundreds of publishes a second.
sed -e 's/^worker_rlimit_nofile .*/worker_rlimit_nofile 65536;/' \
    -e 's/^\( *\)worker_connections .*/\1worker_connections 16384;/' \
    -e 's/^\( *\)access_log access.log wsgate;/\1access_log off;/' \
    "$NGX/nginx.conf.base" >"$NGX/nginx.conf"
"$NGINX_BIN" -t -q -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" || die "nginx -t failed"
"$NGINX_BIN" -p "$NGX/" -c "$NGX/nginx.conf" -e "$NGX/error.log" -g 'daemon off;' >"$NGX/stdout.log" 2>&1 &
NGINX_PID=$!

# --- wsgate nodes -------------------------------------------------------------
start_nodes() { # VAR=VALUE...: the Redis settings of this phase
    local i
    for i in 0 1 2; do
        mkdir -p "$WORK/node-$((i + 1))"
        (cd "$WORK/node-$((i + 1))" && exec env \
            WSGATE__SERVER__LISTEN="127.0.0.1:${WS_PORTS[$i]}" WSGATE__API__LISTEN="127.0.0.1:${API_PORTS[$i]}" \
            WSGATE__METRICS__LISTEN="127.0.0.1:${MET_PORTS[$i]}" WSGATE__SERVER__NODE_ID="cbench-$((i + 1))" \
            WSGATE__API__KEYS="$API_KEY" WSGATE__DATABASE__URL="$DB_URL" WSGATE__DATABASE__MIGRATE=false \
            "${LIMIT_ENV[@]}" "$@" "$WSGATE" serve) >"$WORK/node-$((i + 1)).log" 2>&1 &
        NODE_PIDS+=("$!")
    done
    for i in 0 1 2; do
        wait_ready "node $((i + 1))" "${MET_PORTS[$i]}" "${NODE_PIDS[$i]}" "$WORK/node-$((i + 1)).log"
    done
    for _ in $(seq 50); do
        curl -fsS -o /dev/null "http://127.0.0.1:$LB_WS/readyz" 2>/dev/null && return 0
        sleep 0.2
    done
    die "nginx does not answer on :$LB_WS"
}

# start_one_node: a fourth node, alone in embedded mode (SQLite in $WORK,
# the in-process broker), for the calibration runs; its own token file.
start_one_node() {
    mkdir -p "$WORK/one"
    (umask 077 && WSGATE__DATABASE__SQLITE_PATH="$WORK/one/wsgate.db" WSGATE__API__KEYS=$API_KEY \
        "$WSGATE" token issue --user 1 >"$WORK/one/tokens.txt" 2>"$WORK/one/token.log") ||
        { cat "$WORK/one/token.log" >&2; die "token issue (embedded) failed"; }
    (cd "$WORK/one" && exec env \
        WSGATE__SERVER__LISTEN="127.0.0.1:$ONE_WS" WSGATE__API__LISTEN="127.0.0.1:$ONE_API" \
        WSGATE__METRICS__LISTEN="127.0.0.1:$ONE_MET" WSGATE__SERVER__NODE_ID=cbench-one \
        WSGATE__API__KEYS="$API_KEY" WSGATE__DATABASE__SQLITE_PATH="$WORK/one/wsgate.db" \
        "${LIMIT_ENV[@]}" "$WSGATE" serve) >"$WORK/one.log" 2>&1 &
    ONE_PID=$!
    wait_ready "the embedded node" "$ONE_MET" "$ONE_PID" "$WORK/one.log"
}

# redis_stats PORT...: {port: {"cpu": used_cpu_sys + used_cpu_user (s), "cmd": {command: [calls, usec]}}}
# from INFO (Redis's own getrusage and commandstats: finer than /proc's ticks).
redis_stats() {
    local p first=1
    printf '{'
    for p in "$@"; do
        [ $first = 1 ] || printf ','
        first=0
        printf '"%s":' "$p"
        redis-cli -p "$p" info all | tr -d '\r' | awk -F'[:=,]' '
            /^used_cpu_(sys|user):/ { cpu += $2 }
            /^cmdstat_/ { sub(/^cmdstat_/, "", $1); cmd = cmd sep "\"" $1 "\":[" $3 "," $5 "]"; sep = "," }
            END { printf "{\"cpu\":%.6f,\"cmd\":{%s}}", cpu, cmd }'
    done
    printf '}'
}

# cpu_ticks PID...: utime+stime of each process, in clock ticks, one a line.
cpu_ticks() { local p; for p in "$@"; do awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat"; done; }
# idle_cores SECONDS PID...: the CPU each process uses while nothing is sent
# (the nodes' heartbeats), as a JSON list.
idle_cores() {
    local secs=$1; shift
    local a b hz
    hz=$(getconf CLK_TCK)
    a=$(cpu_ticks "$@"); sleep "$secs"; b=$(cpu_ticks "$@")
    paste <(echo "$a") <(echo "$b") | awk -v s="$secs" -v hz="$hz" \
        'BEGIN { printf "[" } { printf "%s%.4f", (NR > 1 ? "," : ""), ($2 - $1) / hz / s } END { printf "]" }'
}

# run_groups LABEL BACKEND SOCKETS GROUPS PER_SOCKET RATE BATCH REDIS_PORTS...
# (REDIS_PORTS empty: the embedded node of the calibration run)
run_groups() {
    local label=$1 backend=$2 sockets=$3 groups=$4 per=$5 rate=$6 batch=$7 dur=${RUN_D:-$D}
    shift 7
    local ports=("$@") aux=() rpids=() p
    for p in "${ports[@]}"; do rpids+=("$(redis-cli -p "$p" info server | tr -d '\r' | awk -F: '/^process_id:/{print $2}')"); done
    for p in "${rpids[@]}"; do aux+=(--aux-pid "$p"); done
    local nodes=() pids=("${NODE_PIDS[@]}") i
    for i in "${!NODE_PIDS[@]}"; do nodes+=(--server-pid "${NODE_PIDS[$i]}" --metrics-url "http://127.0.0.1:${MET_PORTS[$i]}/metrics"); done
    if [ "$backend" = one-node ]; then
        pids=("$ONE_PID")
        nodes=(--server-pid "$ONE_PID" --metrics-url "http://127.0.0.1:$ONE_MET/metrics")
    fi
    log "$label: $sockets sockets, $groups groups, $per a socket, $rate publishes/s (batches of $batch), $dur s, over $backend"
    local before after idle_redis="[]" idle_nodes
    if [ "${#ports[@]}" -gt 0 ]; then
        before=$(redis_stats "${ports[@]}"); sleep "$IDLE_S"; after=$(redis_stats "${ports[@]}")
        idle_redis=$(python3 -c 'import json, sys; b, a, s = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
print(json.dumps([round((a[p]["cpu"] - b[p]["cpu"]) / s, 5) for p in a]))' "$before" "$after" "$IDLE_S")
    fi
    idle_nodes=$(idle_cores 1 "${pids[@]}")
    before=$(redis_stats "${ports[@]}")
    local entry=(--ws "ws://127.0.0.1:$LB_WS/ws" --api "http://127.0.0.1:$LB_API") TOKENS=$WORK/tokens.txt
    if [ "$backend" = one-node ]; then
        TOKENS=$WORK/one/tokens.txt
        entry=(--ws "ws://127.0.0.1:$ONE_WS/ws" --api "http://127.0.0.1:$ONE_API")
    elif [ "$DIRECT" = 1 ]; then
        entry=()
        for i in 0 1 2; do entry+=(--ws "ws://127.0.0.1:${WS_PORTS[$i]}/ws" --api "http://127.0.0.1:${API_PORTS[$i]}"); done
    fi
    "$BENCH" groups --label "$label" --json-out "$WORK/run.json" "${entry[@]}" \
        --tokens-file "$TOKENS" --api-key-file "$API_KEY_FILE" "${nodes[@]}" "${aux[@]}" \
        --sockets "$sockets" --groups "$groups" --per-socket "$per" \
        --rate "$rate" --batch "$batch" --inflight 32 --duration "$dur" --drain "$DRAIN" >/dev/null 2>"$WORK/$label.err" ||
        { tail -20 "$WORK/$label.err" >&2; die "run $label failed"; }
    after=$(redis_stats "${ports[@]}")
    # The bench's line, with the backend, the Redis counters and the model's plan.
    python3 - "$WORK/run.json" "$backend" "$before" "$after" "$idle_redis" "$idle_nodes" "$IDLE_S" >>"$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
r = rows[-1]
r["backend"] = sys.argv[2]
r["idle"] = {"redis_cores_each": json.loads(sys.argv[5]), "node_cores_each": json.loads(sys.argv[6]),
             "redis_seconds": float(sys.argv[7]), "node_seconds": 1.0,
             "what": "CPU of each process over a window before the run with nothing sent"}
b, a = json.loads(sys.argv[3]), json.loads(sys.argv[4])
def cmds(p):
    out = {}
    for c, (calls, usec) in a[p]["cmd"].items():
        d = (calls - b[p]["cmd"].get(c, [0, 0])[0], usec - b[p]["cmd"].get(c, [0, 0])[1])
        if d[0] > 0:
            out[c] = d
    return out
# Over the whole wsgate-bench run (sockets set up, the window, closes); the
# publishes happen only in the window.
r["redis"] = {p: {"publishes": sum(n for c, (n, _) in cmds(p).items() if c in ("publish", "spublish")),
                  "used_cpu_s": round(a[p]["cpu"] - b[p]["cpu"], 3), "commands": cmds(p)} for p in a}
print(json.dumps(r))
PY
    rm -f "$WORK/run.json"
    sleep 2
}

# --- phase 0: the curve, the embedded node alone at rising rates -------------------
if want curve; then
    CURVE_RATES=${CLUSTER_BENCH_CURVE:-4000 8000 16000 32000 64000 128000}
    log "curve: the embedded node alone at $CURVE_RATES deliveries/s"
    start_one_node
    for rate in $CURVE_RATES; do
        RUN_D=$CURVE_D run_groups "curve-$rate" one-node "$((rate / 10))" "$((rate / 100))" 10 "$((rate / 100))" 1
        rc=0
        python3 scripts/capacity curve-check --results "$RESULTS" --label "curve-$rate" >&2 || rc=$?
        if [ "$rc" = 3 ]; then log "curve: the node did not keep up at $rate deliveries/s; the climb stops"; break; fi
        [ "$rc" = 0 ] || die "curve-check failed"
    done
    stop_pid "$ONE_PID"
    ONE_PID=""
fi

# run_backend NAME PORTS...: the back-end comparison's load, $RUNS times,
# against the Redis servers on PORTS (rows backends-NAME-N).
run_backend() {
    local name=$1 n
    shift
    for n in $(seq "$RUNS"); do
        run_groups "backends-$name-$n" "$name" "$B_SOCKETS" "$B_GROUPS" "$B_PER" "$B_RATE" "$B_BATCH" "$@"
    done
}

# --- phase 1: the model against 3 nodes over a Redis Cluster --------------------
# Workloads: "sockets groups groups-a-socket publishes/s" (overridable).
read -r M_SOCKETS M_GROUPS M_PER M_RATE <<<"${CLUSTER_BENCH_MODEL:-2400 240 10 240}"
read -r B_SOCKETS B_GROUPS B_PER B_RATE B_BATCH <<<"${CLUSTER_BENCH_BACKENDS:-1800 600 1 3000 10}"
B_BATCH=${B_BATCH:-1}
CLUSTER_URL="redis-cluster://127.0.0.1:${CLUSTER_PORTS[0]}"

if want model; then
    log "Redis Cluster (${CLUSTER_PORTS[*]}), 3 nodes behind nginx; a fourth, embedded node for calibration"
    start_cluster
    start_nodes WSGATE__REDIS__URL="$CLUSTER_URL"
    start_one_node
    # Calibration: the fourth node alone (embedded, no Redis) with one node's
    # share of the same load (a third of the sockets, the same groups and
    # publishes: the deliveries a second of each cluster node), for the
    # model's CPU per delivery at this operating point. Interleaved with the
    # cluster runs, so both see the same machine.
    for n in $(seq "$RUNS"); do
        run_groups "model-$n" cluster "$M_SOCKETS" "$M_GROUPS" "$M_PER" "$M_RATE" 1 "${CLUSTER_PORTS[@]}"
        run_groups "calib-$n" one-node "$((M_SOCKETS / 3))" "$M_GROUPS" "$M_PER" "$M_RATE" 1
    done
    stop_pid "$ONE_PID"
    ONE_PID=""
    if want backends; then
        run_backend cluster "${CLUSTER_PORTS[@]}"
    fi
    stop_nodes
    stop_redis
elif want backends; then
    log "Redis Cluster (${CLUSTER_PORTS[*]}), 3 nodes behind nginx"
    start_cluster
    start_nodes WSGATE__REDIS__URL="$CLUSTER_URL"
    run_backend cluster "${CLUSTER_PORTS[@]}"
    stop_nodes
    stop_redis
fi

# --- phase 2: one Redis, independent shards --------------------------------------
if want backends; then
    log "one Redis ($SINGLE_PORT)"
    start_redis "$SINGLE_PORT"
    start_nodes WSGATE__REDIS__URL="redis://127.0.0.1:$SINGLE_PORT"
    run_backend single "$SINGLE_PORT"
    stop_nodes
    stop_redis
    log "3 independent shards (${SHARD_PORTS[*]})"
    for p in "${SHARD_PORTS[@]}"; do start_redis "$p"; done
    start_nodes WSGATE__REDIS__SHARDS="redis://127.0.0.1:${SHARD_PORTS[0]},redis://127.0.0.1:${SHARD_PORTS[1]},redis://127.0.0.1:${SHARD_PORTS[2]}"
    run_backend shards "${SHARD_PORTS[@]}"
    stop_nodes
    stop_redis
fi

# --- the report ---------------------------------------------------------------------
log "writing $OUT"
mkdir -p "$(dirname "$OUT")"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then DIRTY=" (with uncommitted changes in the work tree)"; fi
MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), Linux $(uname -r)"
python3 scripts/capacity cluster-report --results "$RESULTS" --out "$OUT.tmp" --date "$STARTED_AT" --mode "$MODE" \
    --commit "$COMMIT$DIRTY" --machine "$MACHINE" --load "$LOAD_START; $LOAD_END" \
    --binaries "$WSGATE, $BENCH" || die "the report could not be written"
mv "$OUT.tmp" "$OUT"
sed -n '/^## \(CPU per delivery by load\|The model\)/,/^## Raw/p' "$OUT" | sed '$d' >&2
if [ -n "$INPUTS_OUT" ]; then
    python3 scripts/capacity cluster-inputs --results "$RESULTS" --into "$INPUTS_OUT" --date "$STARTED_AT" \
        --mode "$MODE" --commit "$COMMIT$DIRTY" --machine "$MACHINE" >&2 || die "$INPUTS_OUT not updated"
fi
log "done: $OUT"
