#!/usr/bin/env bash
# scripts/ab.sh [--pairs N] [--duration S] [--no-build] [--json-out FILE] ROW A B
# scripts/ab.sh --report FILE ROW A B
#
# Alternated A/B runs of one of bench.sh's rows, each on a fresh node: A, B,
# A, B, ... N pairs (3 by default), then the figures per run, the ratio B/A
# of each pair and the ratio of the means. --json-out keeps the runs' raw
# results; --report prints the same table again from such a file.
#
# Why: this VM's speed drifts by tens of per cent over minutes
# (docs/performance.md), and bench.sh runs a row's embedded, Redis and floor
# variants minutes apart, so a single full run cannot tell differences under
# about 20 % apart. Pairs run back to back can; docs/performance.md's
# "alternated" figures are this script's output.
#
# ROW is one of bench-env.sh's ROWS (fanout-1k-500, groups-of-10,
# connect-miss, ...), with the same load as bench.sh gives it. A side is
#
#     embedded | redis [,bin=PATH] [,VAR=VALUE ...] | floor
#
#   embedded  one node on SQLite with the in-process broker (bench.sh's rows);
#   redis     one node on PostgreSQL (a throwaway database) and the machine's
#             Redis (a unique prefix), as bench.sh's redis1- rows;
#   floor     wsgate-floor, the minimal server of issue 15 (floor- rows);
#   bin=PATH  another wsgate build (a copy of an older target/release/wsgate);
#   VAR=VALUE a setting for that side's node (WSGATE__SERVER__WRITE_DELAY=5ms),
#             or TOKIO_WORKER_THREADS=N, the node's runtime threads.
#
# For example, Redis against the embedded node on the many-groups row, and
# a change against the build before it:
#
#     scripts/ab.sh groups-of-10 embedded redis
#     scripts/ab.sh --pairs 4 connect-miss redis,bin=/tmp/wsgate-before redis
#
# connect-miss needs PostgreSQL (only the redis side has its tokens there).
# Each run takes about as long as one bench.sh row plus a node's start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# shellcheck disable=SC2034 # D and DRAIN are read by row_args
PAIRS=3 BUILD=1 JSON_OUT="" REPORT="" D=10 DRAIN=5
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS=$2; shift ;;
        --duration) D=$2; shift ;;
        --no-build) BUILD=0 ;;
        --json-out) JSON_OUT=$2; shift ;;
        --report) REPORT=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "ab.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done
[ $# -eq 3 ] || { echo "ab.sh: ROW A B expected (see --help)" >&2; exit 2; }
ROW_NAME=$1 SIDE_A=$2 SIDE_B=$3
[[ "$PAIRS" =~ ^[1-9][0-9]?$ ]] || { echo "ab.sh: --pairs takes 1 to 99" >&2; exit 2; }
[[ "$D" =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: --duration takes whole seconds" >&2; exit 2; }

log() { printf '== %s\n' "$*" >&2; }
die() { echo "ab.sh: $*" >&2; exit 1; }
note_cmd() { :; }
# shellcheck source=SCRIPTDIR/lib/bench-env.sh
. "$ROOT/scripts/lib/bench-env.sh"
need jq column curl
row_args "$ROW_NAME"

# report FILE: rate, p99 latency and server CPU per operation of each run
# (Redis CPU beside it where it ran), B/A per pair, and the means.
report() {
    echo "$ROW_NAME: A = $SIDE_A, B = $SIDE_B; $PAIRS alternated pairs, fresh server each run"
    jq -rs --arg pairs "$PAIRS" '
    def r2: . * 100 | round / 100;
    def op: .cpu_us_per_delivery // .cpu_us_per_authentication // .cpu_us_per_message;
    def per_op: .server | op;
    def aux_op: .aux | if . == null then "-" else (op // 0 | r2 | tostring) end;
    def r3: . * 1000 | round / 1000;
    def p99: .latency_ms.p99 | r2;
    def mean(f): map(f) | add / length;
    (map({key: .label, value: .}) | from_entries) as $by |
    map(select(.label | startswith("a"))) as $xa | map(select(.label | startswith("b"))) as $xb |
    [["pair", "A rate", "A p99 ms", "A us/op", "A Redis us/op", "B rate", "B p99 ms", "B us/op", "B Redis us/op", "B/A us/op"]]
    + [range(1; ($pairs | tonumber) + 1) as $i | $by["a\($i)"] as $a | $by["b\($i)"] as $b |
        [$i, ($a.rate | round), ($a | p99), ($a | per_op | r2), ($a | aux_op), ($b.rate | round),
         ($b | p99), ($b | per_op | r2), ($b | aux_op), (($b | per_op) / ($a | per_op) | r3)]]
    + [["means", ($xa | mean(.rate) | round), ($xa | mean(p99) | r2), ($xa | mean(per_op) | r2), "",
        ($xb | mean(.rate) | round), ($xb | mean(p99) | r2), ($xb | mean(per_op) | r2), "",
        (($xb | mean(per_op)) / ($xa | mean(per_op)) | r3)]]
    | .[] | @tsv' "$1" | column -t -s $'\t'
    echo "(rate: deliveries/s, or authentications/s on connect rows; p99: publish to receipt, or connect to welcome; us/op: server CPU per delivery or authentication)"
}
if [ -n "$REPORT" ]; then
    PAIRS=$(jq -s '[.[] | select(.label | startswith("a"))] | length' "$REPORT")
    report "$REPORT"
    exit 0
fi

binaries "$BUILD"
DEFAULT_WSGATE=$WSGATE

private_work wsgate-ab
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=() RUN_DB="" RUN_PREFIX=""
REDIS_PID=$(redis-cli -h 127.0.0.1 -p 6379 info server 2>/dev/null | tr -d '\r' | awk -F: '/^process_id:/{print $2}' || true)
# drop_run: the running redis side's database and keys, if any.
drop_run() {
    [ -z "$RUN_DB" ] || psql_admin -c "DROP DATABASE IF EXISTS $RUN_DB WITH (FORCE)" 2>/dev/null
    [ -z "$RUN_PREFIX" ] || drop_prefix "$RUN_PREFIX"
    RUN_DB="" RUN_PREFIX=""
}
cleanup() {
    local rc=$?
    set +e
    stop_all
    drop_run
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

make_api_key
lift_limits
free_ports WSGATE_AB_PORT_BASE "${WSGATE_AB_PORT_BASE:-17600}"

# side SPEC: parse_side, and what a row needs of its sides.
side() {
    parse_side "$1"
    [ "$KIND" = redis ] || [ "$ROW_NAME" != connect-miss ] || die "connect-miss runs on a redis side only"
    if [ "$KIND" = redis ]; then
        need psql
        [ -n "$REDIS_PID" ] || die "Redis at 127.0.0.1:6379 does not answer"
        pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL at 127.0.0.1:5432 does not answer"
    fi
    return 0
}
side "$SIDE_A"
side "$SIDE_B"

# run LABEL SPEC: one run of the row on a fresh server of side SPEC.
run() {
    local label=$1 id target=() aux=()
    side "$2"
    WSGATE=$SIDE_BIN
    id="$(date +%s%N)$$"
    mkdir -p "$WORK/$label"
    case "$KIND" in
        embedded)
            one_node "$label" "$WS" "$API" "$MET" "${SIDE_ENV[@]}"
            ;;
        redis)
            RUN_DB="wsgate_ab_$id" RUN_PREFIX="wsgate-ab-$id:"
            psql_admin -c "CREATE DATABASE $RUN_DB"
            local env=(WSGATE__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$RUN_DB"
                WSGATE__REDIS__URL="redis://127.0.0.1:6379" WSGATE__REDIS__PREFIX="$RUN_PREFIX")
            issue_token "$WORK/$label/tokens.txt" "${env[@]}"
            start_node "$label" "$WS" "$API" "$MET" "${env[@]}" "${SIDE_ENV[@]}"
            if [ "$ROW_NAME" = connect-miss ]; then
                gen_users "$WORK/$label/tokens.txt" 60000 miss- "$RUN_DB" 2>/dev/null
            fi
            aux=(--aux-pid "$REDIS_PID")
            ;;
        floor)
            "$BENCH" gen-tokens --count 1 --out "$WORK/$label/tokens.txt" 2>/dev/null
            start_floor "$label" "$WS" "$API"
            ;;
    esac
    target=(--ws "ws://127.0.0.1:$WS/ws" --api "http://127.0.0.1:$API" --tokens-file "$WORK/$label/tokens.txt"
        --api-key-file "$API_KEY_FILE" --server-pid "$NODE_PID" "${aux[@]}")
    log "$label: $2"
    "$BENCH" "${ROW[0]}" --label "$label" --json-out "$RESULTS" "${target[@]}" "${ROW[@]:1}" >"$WORK/$label.out" 2>&1 ||
        { tail -5 "$WORK/$label.out" >&2; die "run $label failed"; }
    stop_pid "$NODE_PID"
    drop_run
}

log "$ROW_NAME: $PAIRS pairs of A = $SIDE_A, B = $SIDE_B (${D} s each)"
for i in $(seq "$PAIRS"); do
    run "a$i" "$SIDE_A"
    run "b$i" "$SIDE_B"
done
[ -z "$JSON_OUT" ] || cp "$RESULTS" "$JSON_OUT"
report "$RESULTS"
