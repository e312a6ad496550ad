#!/usr/bin/env bash
# scripts/instructions.sh [--no-build] [--rate R] [--keep DIR] SIDE...
#
# User-space instructions per publish of each side, counted by valgrind's
# callgrind on a small groups-of-10 load: 1,000 sockets, each in one of 100
# groups of 10, single publishes through the API at R a second (200 by
# default), 16 in flight. A SIDE is
#
#     embedded [,bin=PATH] [,VAR=VALUE ...] | redis [,bin=PATH] [,VAR=VALUE ...] | floor
#
#   embedded  one node on SQLite with the in-process broker;
#   redis     the same with the machine's Redis (a unique prefix) as broker;
#   floor     wsgate-floor, the minimal server of issue 15;
#   bin=PATH, VAR=VALUE as in scripts/ab.sh.
#
# Each side gets a fresh node under callgrind, a 2 s warm-up, then a 3 s and
# a 13 s run with the counters zeroed before and dumped after each; the
# difference of the two totals over the difference of their publishes is
# the figure, so connects, start-up and timers cancel out. --keep DIR keeps
# the dumps (SIDE-N.short, SIDE-N.long) for callgrind_annotate.
#
# Why: instructions do not move with this VM's speed, which moves CPU
# seconds by tens of per cent within minutes (docs/performance.md). The
# same build still counts a few per cent apart from run to run (timing
# decides how many frames a wake-up finds: wsgate's node within 3-5 %,
# the floor's within 15 %, a node on Redis within 25 % in round sixteen),
# so compare builds over two or three runs each. Kernel time is not counted, and valgrind runs one
# thread at a time, so this says where instructions go, not what a native
# run costs: seconds remain the measure of the targets (bench.sh, ab.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BUILD=1 RATE=200 KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --rate) RATE=$2; shift ;;
        --keep) KEEP=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "instructions.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done
[ $# -ge 1 ] || { echo "instructions.sh: at least one SIDE expected (see --help)" >&2; exit 2; }
[[ "$RATE" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "instructions.sh: --rate takes 1 to 9999" >&2; exit 2; }

log() { printf '== %s\n' "$*" >&2; }
die() { echo "instructions.sh: $*" >&2; exit 1; }
note_cmd() { :; }
# shellcheck source=SCRIPTDIR/lib/bench-env.sh
. "$ROOT/scripts/lib/bench-env.sh"
need valgrind callgrind_control jq curl
binaries "$BUILD"
DEFAULT_WSGATE=$WSGATE
[ -z "$KEEP" ] || mkdir -p "$KEEP"

private_work wsgate-instructions
PIDS=() RUN_PREFIX=""
cleanup() {
    local rc=$?
    set +e
    stop_all
    [ -z "$RUN_PREFIX" ] || drop_prefix "$RUN_PREFIX"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

make_api_key
lift_limits
free_ports WSGATE_INSTRUCTIONS_PORT_BASE "${WSGATE_INSTRUCTIONS_PORT_BASE:-17700}"
for spec in "$@"; do parse_side "$spec"; done

# load LABEL SECONDS: the groups-of-10 load against the running node; its
# result is the last line of $WORK/results.jsonl.
load() {
    "$BENCH" groups --label "$1" --json-out "$WORK/results.jsonl" --ws "ws://127.0.0.1:$WS/ws" \
        --api "http://127.0.0.1:$API" --tokens-file "$WORK/$LABEL/tokens.txt" --api-key-file "$API_KEY_FILE" \
        --server-pid "$NODE_PID" --sockets 1000 --groups 100 --per-socket 1 --rate "$RATE" --inflight 16 \
        --duration "$2" --drain 3 >>"$WORK/$LABEL.out" 2>&1 || { tail -5 "$WORK/$LABEL.out" >&2; die "$1 failed"; }
    [ "$(tail -1 "$WORK/results.jsonl" | jq '.deliveries.missing + .deliveries.duplicates')" = 0 ] ||
        die "$1: deliveries missing or duplicated"
}

# counted NAME SECONDS: zeroes the counters, runs the load and dumps; sets
# IR (instructions since the zeroing) and PUBLISHED.
counted() {
    local before dump
    callgrind_control -z "$NODE_PID" >/dev/null 2>&1
    load "$LABEL-$1" "$2"
    before=$(find "$WORK/$LABEL" -name 'callgrind.*' | wc -l)
    callgrind_control -d "$NODE_PID" >/dev/null 2>&1
    for _ in $(seq 100); do
        [ "$(find "$WORK/$LABEL" -name 'callgrind.*' | wc -l)" -gt "$before" ] && break
        sleep 0.1
    done
    dump=$(find "$WORK/$LABEL" -name 'callgrind.*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
    IR=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    [ -n "$IR" ] || die "$LABEL: no callgrind dump"
    [ -z "$KEEP" ] || cp "$dump" "$KEEP/$LABEL.$1"
    PUBLISHED=$(tail -1 "$WORK/results.jsonl" | jq .published.messages)
}

ROWS_OUT=()
FIRST=""
n=0
for spec in "$@"; do
    n=$((n + 1))
    parse_side "$spec"
    LABEL="$KIND-$n"
    WSGATE=$SIDE_BIN
    mkdir -p "$WORK/$LABEL"
    # Names uncompressed: each dump then stands alone for callgrind_annotate
    # (compressed, a later dump names functions by ids its file lacks).
    NODE_WRAP=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no "--callgrind-out-file=$WORK/$LABEL/callgrind.%p")
    case "$KIND" in
        embedded) one_node "$LABEL" "$WS" "$API" "$MET" "${SIDE_ENV[@]}" ;;
        redis)
            RUN_PREFIX="wsgate-instructions-$(date +%s%N)$$:"
            one_node "$LABEL" "$WS" "$API" "$MET" WSGATE__REDIS__URL="redis://127.0.0.1:6379" \
                WSGATE__REDIS__PREFIX="$RUN_PREFIX" "${SIDE_ENV[@]}"
            ;;
        floor)
            "$BENCH" gen-tokens --count 1 --out "$WORK/$LABEL/tokens.txt" 2>/dev/null
            start_floor "$LABEL" "$WS" "$API"
            ;;
    esac
    log "$LABEL: $spec (under callgrind)"
    : >"$WORK/$LABEL.out"
    load "$LABEL-warm-up" 2
    counted short 3
    short_ir=$IR short_pub=$PUBLISHED
    counted long 13
    long_ir=$IR long_pub=$PUBLISHED
    [ "$long_pub" -gt "$short_pub" ] || die "$LABEL: the long run published no more than the short one"
    per=$(( (long_ir - short_ir) / (long_pub - short_pub) ))
    FIRST=${FIRST:-$per}
    ROWS_OUT+=("$LABEL	$spec	$per	$(awk -v a="$per" -v b="$FIRST" 'BEGIN {printf "%.3f", a / b}')	$((long_pub - short_pub))")
    stop_pid "$NODE_PID"
    [ -z "$RUN_PREFIX" ] || { drop_prefix "$RUN_PREFIX"; RUN_PREFIX=""; }
done

echo "groups of 10 at $RATE publishes/s: user-space instructions per publish (callgrind)"
{
    printf 'run\tside\tinstructions/publish\tto the first\tpublishes counted\n'
    printf '%s\n' "${ROWS_OUT[@]}"
} | column -t -s $'\t'
[ -z "$KEEP" ] || echo "dumps in $KEEP: callgrind_annotate DUMP (the long run minus the short one is the load)"
