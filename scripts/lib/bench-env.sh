# shellcheck shell=bash
# Shared by scripts/bench.sh and scripts/cluster-bench.sh (sourced, not run;
# it only defines functions): the private API key, the limits a load
# generator on loopback needs lifted, starting and stopping servers, and the
# PostgreSQL admin connection. The caller defines `die` and sets WORK (a
# private temp dir) and WSGATE (the binary) before calling them.

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
