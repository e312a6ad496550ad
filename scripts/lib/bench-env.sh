# shellcheck shell=bash
# Shared by scripts/bench.sh, scripts/ab.sh and scripts/cluster-bench.sh
# (sourced, not run; it only defines functions): the private API key, the
# limits a load generator on loopback needs lifted, starting and stopping
# servers, users in PostgreSQL, the named rows' load, and the PostgreSQL
# admin connection. The caller defines `die`, `log` and `note_cmd` and sets
# ROOT (the checkout), WORK (a private temp dir), PIDS (an array) and, for
# the rows, D and DRAIN (seconds); `binaries` sets WSGATE and BENCH.

# binaries BUILD: raises the open-file limit (every socket is a descriptor,
# on both ends), builds the release binaries when BUILD is 1, and sets
# WSGATE, BENCH and FLOOR (WSGATE_BIN, WSGATE_BENCH_BIN, WSGATE_FLOOR_BIN
# override them); dies if the first two are missing.
binaries() {
    ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    if [ "$1" = 1 ]; then
        log "cargo build --release -p wsgate -p wsgate-bench"
        cargo build --release -p wsgate -p wsgate-bench
    fi
    WSGATE=${WSGATE_BIN:-$ROOT/target/release/wsgate}
    BENCH=${WSGATE_BENCH_BIN:-$ROOT/target/release/wsgate-bench}
    FLOOR=${WSGATE_FLOOR_BIN:-$ROOT/target/release/wsgate-floor}
    { [ -x "$WSGATE" ] && [ -x "$BENCH" ]; } || die "release binaries missing (run without --no-build)"
}

# need TOOL...: dies naming the first TOOL that is not on PATH.
need() {
    local tool
    for tool in "$@"; do command -v "$tool" >/dev/null || die "$tool is needed"; done
}

# private_work NAME: sets WORK to a new directory under /tmp that only this
# user can read (the API key and tokens go there).
private_work() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 700 "$WORK"
}

# stop_all: stops every server in PIDS.
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}

# make_api_key: a random API key in $WORK/api-key (mode 600); sets
# API_KEY_FILE and API_KEY. Nothing prints it.
make_api_key() {
    API_KEY_FILE=$WORK/api-key
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$API_KEY_FILE")
    API_KEY=$(cat "$API_KEY_FILE")
}

# lift_limits: sets LIMIT_ENV, the settings every benchmark node runs with.
# The generator plays thousands of clients from a few loopback addresses
# (and behind nginx every node has one peer): lift the per-IP limits where
# this build has them (unknown keys are errors, so ask `config check`).
lift_limits() {
    local check
    # shellcheck disable=SC2015 # config check may fail: then no key is known
    check=$(cd "$WORK" && WSGATE__API__KEYS="$API_KEY" "$WSGATE" config check 2>/dev/null || true)
    has_key() { grep -qE "^$1 = " <<<"$check"; }
    LIMIT_ENV=(WSGATE__LOG__LEVEL=warn WSGATE__DRAIN__GRACE=0s WSGATE__DRAIN__SPREAD=1s)
    has_key max_connections_per_ip && LIMIT_ENV+=(WSGATE__LIMITS__MAX_CONNECTIONS_PER_IP=0)
    has_key max_pending && LIMIT_ENV+=(WSGATE__LIMITS__MAX_PENDING=100000)
    has_key max_pending_per_ip && LIMIT_ENV+=(WSGATE__LIMITS__MAX_PENDING_PER_IP=100000)
    has_key auth_failures_per_minute && LIMIT_ENV+=(WSGATE__LIMITS__AUTH_FAILURES_PER_MINUTE=0)
    return 0
}

# wait_ready NAME PORT PID LOG: waits up to 30 s for http://127.0.0.1:PORT/readyz;
# dies (with the log's tail) if PID exits first or time runs out.
wait_ready() {
    local name=$1 port=$2 pid=$3 logfile=$4
    for _ in $(seq 150); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { tail -20 "$logfile" >&2; die "$name died"; }
        sleep 0.2
    done
    tail -20 "$logfile" >&2
    die "$name not ready in 30 s"
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# psql_admin ARGS...: psql as postgres on the machine's server, quiet, stop on error.
psql_admin() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

# start_node NAME WS_PORT API_PORT METRICS_PORT [VAR=VALUE...]: a wsgate node
# in $WORK/NAME with the run's API key and LIMIT_ENV; sets NODE_PID. Under
# the command in the array NODE_WRAP when the caller sets one (valgrind,
# for scripts/instructions.sh); it execs, so NODE_PID is the wrapper's.
start_node() {
    local name=$1 ws=$2 api=$3 met=$4
    shift 4
    mkdir -p "$WORK/$name"
    note_cmd "# node $name:" WSGATE__SERVER__LISTEN="127.0.0.1:$ws" WSGATE__API__LISTEN="127.0.0.1:$api" \
        WSGATE__METRICS__LISTEN="127.0.0.1:$met" WSGATE__SERVER__NODE_ID="$name" \
        'WSGATE__API__KEYS=$(cat $WORK/api-key)' "${LIMIT_ENV[@]}" "$@" target/release/wsgate serve
    (cd "$WORK/$name" && exec env \
        WSGATE__SERVER__LISTEN="127.0.0.1:$ws" WSGATE__API__LISTEN="127.0.0.1:$api" \
        WSGATE__METRICS__LISTEN="127.0.0.1:$met" WSGATE__SERVER__NODE_ID="$name" \
        WSGATE__API__KEYS="$API_KEY" "${LIMIT_ENV[@]}" "$@" ${NODE_WRAP[@]+"${NODE_WRAP[@]}"} "$WSGATE" serve) \
        >"$WORK/$name.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    wait_ready "node $name" "$ws" "$NODE_PID" "$WORK/$name.log"
}

# issue_token FILE [VAR=VALUE...]: one token of user 1 in FILE (mode 600),
# from the store the settings name; run in FILE's directory, as the nodes
# run in theirs.
issue_token() {
    local file=$1
    shift
    note_cmd "# tokens: $* target/release/wsgate token issue --user 1 > $file"
    (cd "$(dirname "$file")" && umask 077 &&
        env "$@" WSGATE__API__KEYS="$API_KEY" "$WSGATE" token issue --user 1 >"$file")
}

# one_node NAME WS_PORT API_PORT METRICS_PORT [VAR=VALUE...]: an embedded
# node (SQLite in $WORK/NAME, in-process broker) and one token of user 1 in
# $WORK/NAME/tokens.txt; sets NODE_PID.
one_node() {
    local name=$1 ws=$2 api=$3 met=$4
    shift 4
    mkdir -p "$WORK/$name"
    issue_token "$WORK/$name/tokens.txt" WSGATE__DATABASE__SQLITE_PATH="$WORK/$name/wsgate.db"
    start_node "$name" "$ws" "$api" "$met" WSGATE__DATABASE__SQLITE_PATH="$WORK/$name/wsgate.db" "$@"
}

# start_floor NAME WS_PORT API_PORT: wsgate-floor ($FLOOR), logging to
# $WORK/NAME.log, under NODE_WRAP as start_node; sets NODE_PID.
start_floor() {
    local name=$1 ws=$2 api=$3
    mkdir -p "$WORK/$name"
    note_cmd "# $name (wsgate-floor):" target/release/wsgate-floor --ws-listen "127.0.0.1:$ws" --api-listen "127.0.0.1:$api"
    ${NODE_WRAP[@]+"${NODE_WRAP[@]}"} "$FLOOR" --ws-listen "127.0.0.1:$ws" --api-listen "127.0.0.1:$api" \
        >"$WORK/$name.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    wait_ready "floor $name" "$ws" "$NODE_PID" "$WORK/$name.log"
}

# drop_prefix PREFIX: deletes the machine Redis's keys under PREFIX.
drop_prefix() {
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$1*" 2>/dev/null |
        xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1
}

# gen_users FILE COUNT USER_PREFIX DATABASE: COUNT random native tokens, one
# user each (USER_PREFIX1, USER_PREFIX2, ...); the PostgreSQL DATABASE (its
# tables made by a node that ran on it) stores their SHA-256 digests exactly
# as `wsgate token issue` does (hex of the token's bytes).
gen_users() {
    "$BENCH" gen-tokens --count "$2" --out "$1"
    psql -h 127.0.0.1 -U postgres -d "$4" -v ON_ERROR_STOP=1 -q <<SQL
CREATE TEMP TABLE bench_tokens (token text);
\copy bench_tokens FROM '$1'
INSERT INTO wsgate_tokens (digest, user_id, created_at, expires_at, revoked_at)
SELECT encode(sha256(convert_to(token, 'UTF8')), 'hex'), '$3' || row_number() OVER (),
       (extract(epoch FROM now()) * 1000)::bigint, NULL, NULL
FROM bench_tokens;
SQL
}

# ROWS: the rows every server runs with the same load (the embedded node,
# redis1-/redis2-, floor-, scripts/ab.sh). row_args NAME sets ROW to
# wsgate-bench's scenario and its load options for row NAME; the caller adds
# where to connect. One definition, so rows of one name are one load.
ROWS=(fanout-1k-500 fanout-1k-max fanout-1k-batch10-max fanout-10k-5 fanout-10k-max
    groups-10k groups-10k-1000 groups-of-10 connect-hit connect-miss)
# shellcheck disable=SC2034 # ROW is the caller's
row_args() {
    local run=(--duration "$D" --drain "$DRAIN")
    case "$1" in
        fanout-1k-500) ROW=(fanout --subscribers 1000 --rate 500 --inflight 64 "${run[@]}") ;;
        fanout-1k-max) ROW=(fanout --subscribers 1000 --rate 0 --window 32 --inflight 8 "${run[@]}") ;;
        fanout-1k-batch10-max)
            ROW=(fanout --subscribers 1000 --rate 0 --batch 10 --window 40 --inflight 8 "${run[@]}") ;;
        fanout-10k-5) ROW=(fanout --subscribers 10000 --rate 5 "${run[@]}") ;;
        fanout-10k-max) ROW=(fanout --subscribers 10000 --rate 0 --window 8 --inflight 4 "${run[@]}") ;;
        # Groups of 100: the market-data shape (issue 15, target 6).
        groups-10k) ROW=(groups --sockets 10000 --groups 1000 --per-socket 10 --rate 5000 --inflight 128 "${run[@]}") ;;
        # The same at 1,000 publishes/s, below the knee (target 6's CPU
        # figure; bench.sh's groups-wd0ms-r1000 and floor-groups-wd0ms-r1000).
        groups-10k-1000) ROW=(groups --sockets 10000 --groups 1000 --per-socket 10 --rate 1000 --inflight 128 "${run[@]}") ;;
        # Issue 15's "1,000 groups of 10" (its targets 2 and 4): each socket
        # in one group, so 5,000 single publishes/s are 50,000 deliveries/s.
        groups-of-10) ROW=(groups --sockets 10000 --groups 1000 --per-socket 1 --rate 5000 --inflight 128 "${run[@]}") ;;
        connect-hit) ROW=(connect --mode hit --duration "$D" --concurrency 64) ;;
        connect-miss) ROW=(connect --mode miss --duration "$D" --concurrency 64) ;;
        *) die "no row named $1 (rows: ${ROWS[*]})" ;;
    esac
}

# parse_side SPEC: a side of scripts/ab.sh or scripts/instructions.sh,
# "embedded|redis[,bin=PATH][,WSGATE__VAR=VALUE...][,TOKIO_WORKER_THREADS=N]"
# or "floor", into KIND,
# SIDE_BIN (DEFAULT_WSGATE unless bin= says otherwise) and SIDE_ENV; dies
# on a malformed side, a missing binary or an unreachable Redis. Each
# script checks what else its sides need.
parse_side() {
    local part parts
    IFS=, read -r -a parts <<<"$1"
    KIND=${parts[0]} SIDE_BIN=$DEFAULT_WSGATE SIDE_ENV=()
    case "$KIND" in embedded|redis|floor) ;; *) die "side $1: embedded, redis or floor first" ;; esac
    for part in "${parts[@]:1}"; do
        case "$part" in
            bin=*) SIDE_BIN=${part#bin=} ;;
            WSGATE__*=*|TOKIO_WORKER_THREADS=*) SIDE_ENV+=("$part") ;;
            *) die "side $1: $part is neither bin=PATH, WSGATE__...=VALUE nor TOKIO_WORKER_THREADS=N" ;;
        esac
    done
    [ "$KIND" != floor ] || [ "${#parts[@]}" = 1 ] || die "side $1: the floor takes no build or settings"
    [ -x "$SIDE_BIN" ] || die "side $1: $SIDE_BIN is not an executable"
    [ "$KIND" != floor ] || [ -x "$FLOOR" ] || die "$FLOOR missing (run without --no-build)"
    if [ "$KIND" = redis ]; then
        need redis-cli
        redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || die "Redis at 127.0.0.1:6379 does not answer"
    fi
    return 0
}

# free_ports VAR BASE: sets WS, API and MET to BASE, BASE+1 and BASE+2;
# dies if one is taken (VAR names the variable that moves them).
free_ports() {
    local p
    WS=$2 API=$(($2 + 1)) MET=$(($2 + 2))
    for p in "$WS" "$API" "$MET"; do
        ! ss -Htln "sport = :$p" 2>/dev/null | grep -q . || die "port $p is in use ($1)"
    done
}
