#!/usr/bin/env bash
# scripts/bench.sh [--quick] [--no-peer] [--no-build] [--keep] [--out FILE] [--inputs-out FILE]
#                  [--only embedded|coalescing|redis|peer|floor[,SECTION...]]
#
# Runs every scenario of the performance issue (issue 6) with wsgate-bench
# against wsgate nodes this script starts itself, and rewrites BENCHMARKS.md
# with the machine, date, commit, exact command lines and results.
#
#   - one node, embedded mode (SQLite file in a temp dir, in-process broker);
#   - one node, then two nodes, over the machine's Redis (127.0.0.1:6379, a
#     unique key prefix) with a throwaway PostgreSQL database (127.0.0.1:5432,
#     user postgres) that is created here and dropped at the end; the one
#     node's rows are labelled redis1-<embedded name>, with the ratios
#     Redis/embedded;
#   - the many-groups shape at server.write_delay 0, 5 and 20 ms (coalescing);
#   - when ../shared/peers/django_channels exists, the Django Channels peer
#     (copied to target/bench-peer, throwaway database) for the same fan-out
#     and connect scenarios, with the ratios wsgate/peer;
#   - the floor of issue 15 (wsgate-floor, from the bench crate: tokio, one
#     pre-encoded frame per broadcast, one write per wake-up, no database, no
#     Redis) for the embedded node's scenario command lines, rows labelled
#     floor-<same name>, with the ratios wsgate/floor, and the coalescing
#     section's write_delay-0 rates (floor-groups-wd0ms-r*). --only takes a
#     comma list, so --only embedded,coalescing,floor measures both sides.
#
# It also writes the per-node figures scripts/capacity reads (CPU per delivery,
# memory per socket, CPU per authentication, ...; each with its source row) to
# docs/capacity-inputs.json (--inputs-out FILE), with the kernel's slab per
# idle socket measured on 2,000 loopback connections (scripts/capacity
# measure-kernel; needs /proc/slabinfo, i.e. root, else that figure stays assumed).
# The Redis figures of scripts/cluster-bench.sh already in that file are kept.
#
# A full run takes about 10 minutes; --quick about 2 to 3 (shorter runs, same
# socket counts; the first peer setup adds a pip install; the floor section
# takes about as long as the embedded one). All load stays on
# loopback, every run is bounded and stops by itself. Tokens and the API key
# only ever live in files under a private temp dir; nothing prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0 PEER=1 BUILD=1 KEEP=0 OUT=BENCHMARKS.md INPUTS_OUT=docs/capacity-inputs.json ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-peer) PEER=0 ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        --out) OUT=$2; shift ;;
        --inputs-out) INPUTS_OUT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# want SECTION: whether this run includes SECTION (all of them without --only;
# --only takes one section or a comma list).
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
for section in ${ONLY//,/ }; do
    case "$section" in embedded|coalescing|redis|peer|floor) ;; *) echo "bench.sh: --only $section?" >&2; exit 2 ;; esac
done
# Only the redis and peer sections use Redis and PostgreSQL (the others
# measure them where they are, for the "other load" column, if they answer).
NEED_DB=0
if want redis || want peer; then NEED_DB=1; fi
if [ -n "$ONLY" ] && [ "$OUT" = BENCHMARKS.md ]; then
    echo "bench.sh: --only needs --out FILE (BENCHMARKS.md holds full runs)" >&2; exit 2
fi

log() { printf '\n== %s\n' "$*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 1; }
# shellcheck source=SCRIPTDIR/lib/bench-env.sh
. "$ROOT/scripts/lib/bench-env.sh"

binaries "$BUILD"
if want floor; then [ -x "$FLOOR" ] || die "$FLOOR missing (run without --no-build)"; fi
need curl
if [ "$NEED_DB" = 1 ]; then need psql redis-cli; fi

if [ "$QUICK" = 1 ]; then
    MODE=quick D=3 DRAIN=3 HOLD=2 MISS_TOKENS=20000 PEER_D=3 PEER_TOKENS=2000
else
    MODE=full D=10 DRAIN=5 HOLD=5 MISS_TOKENS=60000 PEER_D=8 PEER_TOKENS=5000
fi

private_work wsgate-bench
RUN_ID="$(date +%s)$$"
RESULTS=$WORK/results.jsonl
COMMANDS=$WORK/commands.txt
: >"$RESULTS"
: >"$COMMANDS"
PIDS=()
PGDB="wsgate_bench_${RUN_ID}"
PEERDB="wsgate_bench_peer_${RUN_ID}"
PREFIX="wsgate-bench-${RUN_ID}:"
PG_CREATED=0 PEERDB_CREATED=0
FAILED=()
FOREIGN_MAX=0
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)



cleanup() {
    local rc=$?
    set +e
    stop_all
    if [ "$PG_CREATED" = 1 ]; then psql_admin -c "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)"; fi
    if [ "$PEERDB_CREATED" = 1 ]; then psql_admin -c "DROP DATABASE IF EXISTS $PEERDB WITH (FORCE)"; fi
    if command -v redis-cli >/dev/null; then drop_prefix "$PREFIX"; fi
    if [ "$KEEP" = 1 ]; then echo "bench.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: a block of free loopback ports below the ephemeral range.
port_free() { ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
BASE=${WSGATE_BENCH_PORT_BASE:-17100}
for _ in $(seq 20); do
    ok=1
    for off in $(seq 0 12); do port_free $((BASE + off)) || { ok=0; break; }; done
    [ "$ok" = 1 ] && break
    BASE=$((BASE + 100))
done
[ "$ok" = 1 ] || die "no free port block found"

# A random API key, kept in a private file; the lifted per-IP limits.
make_api_key
lift_limits

# note_cmd WORDS...: records a command line (paths shortened, no secrets).
note_cmd() {
    printf '%s\n' "$*" | sed -e "s#$WORK#\$WORK#g" -e "s#$ROOT/##g" >>"$COMMANDS"
}

# Counts compiler and cargo processes that are not ours (other builds).
sample_foreign() {
    local n
    n=$(pgrep -c -x 'rustc|cargo|cc1|cc1plus' 2>/dev/null || true)
    n=${n:-0}
    [ "$n" -gt "$FOREIGN_MAX" ] && FOREIGN_MAX=$n
    return 0
}

# bench LABEL SCENARIO ARGS...: one wsgate-bench run, recorded.
bench() {
    local label=$1 scenario=$2
    shift 2
    local cmd=("$BENCH" "$scenario" --label "$label" --json-out "$RESULTS" "$@")
    printf '%q ' "${cmd[@]}" | sed -e "s#$WORK#\$WORK#g" -e "s#$ROOT/##g" >>"$COMMANDS"
    echo >>"$COMMANDS"
    log "$label"
    sample_foreign
    if ! "${cmd[@]}" >/dev/null; then
        echo "bench.sh: run $label failed" >&2
        FAILED+=("$label")
    fi
    sample_foreign
}

# row LABEL NAME ARGS...: bench LABEL with the load of row NAME (row_args)
# against the server ARGS name.
row() {
    local label=$1
    row_args "$2"
    shift 2
    bench "$label" "${ROW[0]}" "$@" "${ROW[@]:1}"
}

REDIS_PID=""
if command -v redis-cli >/dev/null; then
    REDIS_PID=$(redis-cli -h 127.0.0.1 -p 6379 info server 2>/dev/null | tr -d '\r' | awk -F: '/^process_id:/{print $2}')
fi
if [ "$NEED_DB" = 1 ]; then
    [ -n "$REDIS_PID" ] || die "Redis at 127.0.0.1:6379 does not answer"
    pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL at 127.0.0.1:5432 does not answer"
fi

WS1=$BASE API1=$((BASE + 1)) MET1=$((BASE + 2))
WSR1=$((BASE + 3)) APIR1=$((BASE + 4)) METR1=$((BASE + 5))
WSR2=$((BASE + 6)) APIR2=$((BASE + 7)) METR2=$((BASE + 8))
PEER_PORT=$((BASE + 9))
WSF=$((BASE + 10)) APIF=$((BASE + 11))

KEYS=(--api-key-file "$API_KEY_FILE")

# --- one node, embedded mode ------------------------------------------------
if want embedded; then
log "one node, embedded mode (ports $WS1/$API1)"
one_node embedded "$WS1" "$API1" "$MET1"
N1=(--ws "ws://127.0.0.1:$WS1/ws" --api "http://127.0.0.1:$API1" --tokens-file "$WORK/embedded/tokens.txt"
    "${KEYS[@]}" --server-pid "$NODE_PID")
EMBEDDED_PID=$NODE_PID

row fanout-1k-500 fanout-1k-500 "${N1[@]}"
row fanout-1k-max fanout-1k-max "${N1[@]}"
row fanout-1k-batch10-max fanout-1k-batch10-max "${N1[@]}"
row fanout-10k-5 fanout-10k-5 "${N1[@]}"
row fanout-10k-max fanout-10k-max "${N1[@]}"
row groups-10k groups-10k "${N1[@]}"
row groups-of-10 groups-of-10 "${N1[@]}"
row connect-hit connect-hit "${N1[@]}"
stop_pid "$EMBEDDED_PID"

# Idle sockets on a fresh node, so earlier runs' memory does not hide the cost.
log "idle sockets on a fresh embedded node"
one_node idle "$WS1" "$API1" "$MET1"
bench idle-19k idle --ws "ws://127.0.0.1:$WS1/ws" --tokens-file "$WORK/idle/tokens.txt" \
    --server-pid "$NODE_PID" --sockets 19000 --sockets-per-process 10000 --settle 2 --hold "$HOLD"
stop_pid "$NODE_PID"
fi

# --- write coalescing: the many-groups shape at several server.write_delay ------
# Each window on a fresh embedded node, the same offered rates; the report
# gives per window the highest rate reached with p99 <= 50 ms.
want coalescing && for wd in ${WRITE_DELAYS:-0 5 20}; do
    log "many groups with server.write_delay=${wd}ms"
    one_node "wd$wd" "$WS1" "$API1" "$MET1" WSGATE__SERVER__WRITE_DELAY="${wd}ms"
    NWD=(--ws "ws://127.0.0.1:$WS1/ws" --api "http://127.0.0.1:$API1" --tokens-file "$WORK/wd$wd/tokens.txt"
        "${KEYS[@]}" --server-pid "$NODE_PID")
    for rate in ${COALESCE_RATES:-1000 2000 3000 5000}; do
        bench "groups-wd${wd}ms-r$rate" groups "${NWD[@]}" --sockets 10000 --groups 1000 --per-socket 10 \
            --rate "$rate" --inflight 128 --duration "$D" --drain "$DRAIN"
    done
    stop_pid "$NODE_PID"
done

# --- two nodes over Redis, PostgreSQL token store -----------------------------
if want redis; then
log "two nodes over Redis (prefix $PREFIX), PostgreSQL database $PGDB"
psql_admin -c "CREATE DATABASE $PGDB"
PG_CREATED=1
DB_ENV=(WSGATE__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$PGDB"
    WSGATE__REDIS__URL="redis://127.0.0.1:6379" WSGATE__REDIS__PREFIX="$PREFIX")
mkdir -p "$WORK/redis"
issue_token "$WORK/redis/tokens.txt" "${DB_ENV[@]}"
note_cmd "# miss tokens: target/release/wsgate-bench gen-tokens --count $MISS_TOKENS --out $WORK/redis/miss-tokens.txt," \
    "then psql inserts encode(sha256(token), 'hex') of each into wsgate_tokens"
# Cache-miss tokens for connect-miss.
gen_users "$WORK/redis/miss-tokens.txt" "$MISS_TOKENS" miss- "$PGDB"
# Tokens of distinct users for redis-idle-10k-users (below).
note_cmd "# idle users: the same for 10000 tokens in $WORK/redis/idle-tokens.txt, user ids idle-1, idle-2, ..."
gen_users "$WORK/redis/idle-tokens.txt" 10000 idle- "$PGDB"
start_node r1 "$WSR1" "$APIR1" "$METR1" "${DB_ENV[@]}"
R1_PID=$NODE_PID
# One node with redis.url (issue 15, target 4: "the same node" on Redis),
# the embedded section's command lines, rows redis1-<same name>.
RN1=(--ws "ws://127.0.0.1:$WSR1/ws" --api "http://127.0.0.1:$APIR1" --tokens-file "$WORK/redis/tokens.txt"
    "${KEYS[@]}" --server-pid "$R1_PID" --aux-pid "$REDIS_PID")
# First, on the fresh node (so its RSS per socket means something): idle
# sockets of 10,000 distinct users, each user's own group a presence hash
# that the heartbeat refreshes (server CPU while held). Not named redis1-:
# the embedded idle row has one user, so there is no like-for-like pair.
bench redis-idle-10k-users idle --ws "ws://127.0.0.1:$WSR1/ws" --tokens-file "$WORK/redis/idle-tokens.txt" \
    --server-pid "$R1_PID" --aux-pid "$REDIS_PID" --sockets 10000 --settle 2 --hold "$HOLD"
row redis1-fanout-1k-500 fanout-1k-500 "${RN1[@]}"
row redis1-fanout-10k-5 fanout-10k-5 "${RN1[@]}"
row redis1-groups-10k groups-10k "${RN1[@]}"
row redis1-groups-of-10 groups-of-10 "${RN1[@]}"
start_node r2 "$WSR2" "$APIR2" "$METR2" "${DB_ENV[@]}"
R2_PID=$NODE_PID
R2=(--ws "ws://127.0.0.1:$WSR1/ws" --ws "ws://127.0.0.1:$WSR2/ws" --api "http://127.0.0.1:$APIR1"
    --tokens-file "$WORK/redis/tokens.txt" "${KEYS[@]}" --server-pid "$R1_PID" --server-pid "$R2_PID"
    --aux-pid "$REDIS_PID")
row redis2-fanout-1k-max fanout-1k-max "${R2[@]}"
row redis2-fanout-1k-batch10-max fanout-1k-batch10-max "${R2[@]}"
row redis2-fanout-10k-max fanout-10k-max "${R2[@]}"
row connect-miss connect-miss --ws "ws://127.0.0.1:$WSR1/ws" --tokens-file "$WORK/redis/miss-tokens.txt" \
    --server-pid "$R1_PID" --aux-pid "$REDIS_PID"
bench publish-batch publish --api "http://127.0.0.1:$APIR1" "${KEYS[@]}" --server-pid "$R1_PID" \
    --aux-pid "$REDIS_PID" --batch 100 --concurrency 8 --groups 100 --duration "$D"
stop_pid "$R1_PID"
stop_pid "$R2_PID"
fi

# --- the Django Channels peer ---------------------------------------------------
PEER_SRC=$ROOT/../shared/peers/django_channels
PEER_NOTE="not run"
if want peer && [ "$PEER" = 1 ] && [ -d "$PEER_SRC" ] && command -v python3 >/dev/null; then
    log "Django Channels peer (database $PEERDB)"
    PEER_DIR=${WSGATE_BENCH_PEER_DIR:-$ROOT/target/bench-peer}
    mkdir -p "$PEER_DIR"
    # A fresh copy of the peer, keeping its virtualenv between runs.
    find "$PEER_DIR" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
    cp -r "$PEER_SRC/." "$PEER_DIR/"
    chmod -R u+w "$PEER_DIR"
    export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGDATABASE=$PEERDB
    export WSGATE_API_KEYS=$API_KEY REDIS_URL=${WSGATE_BENCH_PEER_REDIS:-redis://127.0.0.1:6379/0}
    PEERDB_CREATED=1
    note_cmd "# peer: cp -r ../shared/peers/django_channels $PEER_DIR; cd $PEER_DIR;" \
        "PGDATABASE=$PEERDB WSGATE_API_KEYS=\$(cat \$WORK/api-key) ./setup.sh;" \
        ".venv/bin/python make_tokens.py $PEER_TOKENS \$WORK/peer-tokens.txt; ./start.sh $PEER_PORT"
    if (cd "$PEER_DIR" && ./setup.sh >"$WORK/peer-setup.log" 2>&1) &&
        (cd "$PEER_DIR" && umask 077 && .venv/bin/python make_tokens.py "$PEER_TOKENS" "$WORK/peer-tokens.txt" >/dev/null) &&
        PEER_PID=$(cd "$PEER_DIR" && ./start.sh "$PEER_PORT"); then
        PIDS+=("$PEER_PID")
        PEER_NOTE=$(grep -o 'Django .*' "$WORK/peer-setup.log" | tail -1)
        head -n 1 "$WORK/peer-tokens.txt" >"$WORK/peer-token-hit.txt"
        PEERARGS=(--ws "ws://127.0.0.1:$PEER_PORT/ws" --api "http://127.0.0.1:$PEER_PORT" "${KEYS[@]}"
            --server-pid "$PEER_PID" --aux-pid "$REDIS_PID")
        bench peer-fanout-1k-max fanout "${PEERARGS[@]}" --tokens-file "$WORK/peer-tokens.txt" \
            --group "bench.fanout.$RUN_ID" --subscribers 1000 --rate 0 --window 4 --inflight 4 \
            --duration "$PEER_D" --drain "$DRAIN" --connect-concurrency 32
        bench peer-connect-hit connect "${PEERARGS[@]}" --tokens-file "$WORK/peer-token-hit.txt" \
            --mode hit --duration "$PEER_D" --concurrency 64
        bench peer-connect-miss connect "${PEERARGS[@]}" --tokens-file "$WORK/peer-tokens.txt" \
            --mode miss --duration "$PEER_D" --concurrency 64
        stop_pid "$PEER_PID"
    else
        echo "bench.sh: the Django peer could not be set up or started (see $WORK/peer-setup.log); skipping it" >&2
        tail -5 "$WORK/peer-setup.log" >&2 || true
        PEER_NOTE="setup failed"
        FAILED+=("peer")
    fi
fi

# --- the floor (issue 15) ----------------------------------------------------------
# wsgate-floor: the minimal broadcast server the issue's ratios are taken
# against (bench/src/floor/main.rs). The embedded node's command lines with
# the floor's endpoints, rows labelled floor-<same name>. It checks no token
# and no key, so one generated token and the run's API key do.
FLOOR_NOTE="not run"
if want floor; then
    log "the floor: wsgate-floor (ports $WSF/$APIF)"
    mkdir -p "$WORK/floor"
    note_cmd "# floor tokens: target/release/wsgate-bench gen-tokens --count 1 --out $WORK/floor/tokens.txt (the floor accepts any)"
    "$BENCH" gen-tokens --count 1 --out "$WORK/floor/tokens.txt" 2>/dev/null
    start_floor floor "$WSF" "$APIF"
    NF=(--ws "ws://127.0.0.1:$WSF/ws" --api "http://127.0.0.1:$APIF" --tokens-file "$WORK/floor/tokens.txt"
        "${KEYS[@]}" --server-pid "$NODE_PID")
    FLOOR_PID=$NODE_PID
    row floor-fanout-1k-500 fanout-1k-500 "${NF[@]}"
    row floor-fanout-1k-max fanout-1k-max "${NF[@]}"
    row floor-fanout-1k-batch10-max fanout-1k-batch10-max "${NF[@]}"
    row floor-fanout-10k-5 fanout-10k-5 "${NF[@]}"
    row floor-fanout-10k-max fanout-10k-max "${NF[@]}"
    row floor-groups-10k groups-10k "${NF[@]}"
    row floor-groups-of-10 groups-of-10 "${NF[@]}"
    # The market-data shape at the coalescing section's offered rates (its
    # write_delay 0 rows), for target 6: past the knee, wsgate's reached
    # rate against the floor's. 5,000 offered is floor-groups-10k above.
    for rate in 1000 2000 3000; do
        bench "floor-groups-wd0ms-r$rate" groups "${NF[@]}" --sockets 10000 --groups 1000 --per-socket 10 \
            --rate "$rate" --inflight 128 --duration "$D" --drain "$DRAIN"
    done
    row floor-connect-hit connect-hit "${NF[@]}"
    stop_pid "$FLOOR_PID"
    # Idle sockets on a fresh floor, as for wsgate.
    log "idle sockets on a fresh floor"
    start_floor floor-idle "$WSF" "$APIF"
    bench floor-idle-19k idle --ws "ws://127.0.0.1:$WSF/ws" --tokens-file "$WORK/floor/tokens.txt" \
        --server-pid "$NODE_PID" --sockets 19000 --sockets-per-process 10000 --settle 2 --hold "$HOLD"
    stop_pid "$NODE_PID"
    FLOOR_NOTE="wsgate-floor (bench/src/floor), one process, $(nproc) runtime threads"
fi

# --- BENCHMARKS.md ----------------------------------------------------------------
log "writing $OUT"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then DIRTY=" (with uncommitted changes in the work tree)"; fi
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
# "Other" CPU is everything but the servers, the generator and Redis, so in
# the rows where PostgreSQL does the scenario's work (cache misses, the
# Django peer) it is that work, not outside load: those rows are left out.
OWN_DB='select(.label | test("connect-miss|^peer") | not)'
OTHER=$(jq -s "[.[] | $OWN_DB | .machine.other_cores // 0] | max" "$RESULTS" 2>/dev/null || echo "?")
OTHER_AVG=$(jq -s "[.[] | $OWN_DB | .machine.other_cores // 0] | (add / (length | if . == 0 then 1 else . end)) * 100 | round / 100" "$RESULTS" 2>/dev/null || echo "?")
{
    echo "# Benchmarks"
    echo
    echo "Written by \`scripts/bench.sh\` ($MODE run); re-run it rather than editing this file."
    echo "How the figures are measured: [docs/performance.md](docs/performance.md)."
    echo
    echo "## Machine and run"
    echo
    echo "- date: $STARTED_AT (UTC), $MODE run; commit $COMMIT$DIRTY"
    echo "- machine: $(nproc) cores ($CPU_MODEL), $MEM memory, Linux $(uname -r), open-file limit $(ulimit -n)"
    echo "- $(rustc --version 2>/dev/null || echo 'rustc ?'); release profile"
    echo "- the load generator runs on the same $(nproc) cores as the server(s), Redis and PostgreSQL"
    echo "- load average at start $LOAD_START, at end $LOAD_END; compiler/test processes seen during the run: up to $FOREIGN_MAX"
    echo "- CPU used by other processes (neither server, generator nor Redis) during the runs: up to $OTHER cores, $OTHER_AVG on average (column \"other load\"; the connect-miss and peer rows are left out of these two figures because there it is mostly PostgreSQL doing the scenario's work)"
    if awk -v o="$OTHER" -v f="$FOREIGN_MAX" 'BEGIN { exit !((o + 0) > 0.2 || (f + 0) > 0) }'; then
        echo
        echo "**These figures were measured while other builds and tests ran on the machine**; they"
        echo "are lower bounds. Server CPU per delivery (from /proc) depends least on that."
    fi
    if [ "$QUICK" = 1 ]; then
        echo
        echo "This was a \`--quick\` run (${D} s per run instead of 10 s); run \`scripts/bench.sh\` for the full one."
    fi
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo
        echo "Runs that failed (no figures): ${FAILED[*]}."
    fi
    echo
    echo "Peer: Django Channels from \`../shared/peers/django_channels\`: $PEER_NOTE (one uvicorn node, channels_redis core layer)."
    echo
    echo "Floor (issue 15): $FLOOR_NOTE; it checks no token or key and keeps no history (rows floor-*)."
    echo
    "$BENCH" report --results "$RESULTS"
    echo
    echo "## Command lines"
    echo
    echo "Nodes: embedded and idle = one node on SQLite with the in-process broker; r1 = one node on"
    echo "PostgreSQL and Redis (rows redis1-*), then r1 and r2 = two such nodes; floor, floor-idle = wsgate-floor. Every wsgate node runs with \`${LIMIT_ENV[*]}\`: the per-IP"
    echo "limits are lifted because the generator plays thousands of clients from 4 addresses."
    echo "\`\$WORK\` is the run's private temp dir (tokens and the API key live in files there)."
    echo
    echo '```sh'
    cat "$COMMANDS"
    echo '```'
    echo
    echo "## Raw results"
    echo
    echo "One JSON object per run, as \`wsgate-bench\` printed it:"
    echo
    echo '```json'
    cat "$RESULTS"
    echo '```'
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"

# --- the capacity calculator's inputs (docs/scaling.md) ---------------------------
# The same runs' figures as JSON, each with its source row; the kernel's slab
# per idle socket is measured here (2,000 loopback connections, a few seconds).
if [ -n "$ONLY" ]; then log "done: $OUT (--only $ONLY: $INPUTS_OUT left as it was)"; exit 0; fi
log "writing $INPUTS_OUT"
INPUTS_ARGS=()
# The Redis figures scripts/cluster-bench.sh wrote into the file stay (these
# runs do not measure them).
[ -f "$INPUTS_OUT" ] && INPUTS_ARGS+=(--carry "$INPUTS_OUT")
if python3 scripts/capacity measure-kernel --connections 2000 --out "$WORK/kernel.json" 2>"$WORK/kernel.err"; then
    INPUTS_ARGS+=(--kernel "$WORK/kernel.json")
else
    echo "bench.sh: kernel socket memory not measured ($(cat "$WORK/kernel.err")); it stays an assumption" >&2
fi
if ! python3 scripts/capacity inputs --results "$RESULTS" --date "$STARTED_AT" --mode "$MODE" \
    --commit "$COMMIT$DIRTY" --machine "$(nproc) cores ($CPU_MODEL), $MEM memory, Linux $(uname -r), open-file limit $(ulimit -n)" \
    "${INPUTS_ARGS[@]}" --out "$INPUTS_OUT"; then
    echo "bench.sh: $INPUTS_OUT not written (a run it needs failed?); the previous one is kept" >&2
fi
log "done: $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "bench.sh: some runs failed: ${FAILED[*]}" >&2
fi
