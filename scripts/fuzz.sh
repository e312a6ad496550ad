#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time; exits 1 if any
# of them crashed (a panic, an abort, an out-of-memory or a hang).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS is the time per target (default 20); without TARGETs all four
# run: frame_parser, envelope_decoder, config_loader, ws_decoder.
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 enables the nightly flags
# cargo-fuzz passes to rustc. cargo-fuzz itself is installed from crates.io
# when missing. The targets are built without a sanitizer (`-s none`): the
# code under test is safe Rust, so AddressSanitizer would mostly slow the
# build and the runs; panics, aborts, out-of-memory and timeouts are caught.
#
# Inputs: each run starts from fuzz/seeds/<target>/ (realistic inputs),
# fuzz/regressions/<target>/ (crashes found before) and the working corpus
# of earlier runs ($FUZZ_TARGET_DIR/corpus/<target>, never committed), with
# the tokens of fuzz/dict/<target>.dict (JSON keys, config keys, units).
#
# A crash is minimized (libFuzzer's -minimize_crash) and copied to
# fuzz/regressions/<target>/, which tests/proptest_protocol.rs replays
# through the same entry points (fuzz/src/lib.rs) on every `cargo test`:
# fix the bug, then commit the file.
#
# Environment:
#   FUZZ_TARGET_DIR  build and corpus directory (default
#                    ${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-fuzz, outside the
#                    checkout so that CI's fresh clones reuse it). The first
#                    build compiles wsgate and all its dependencies with
#                    coverage instrumentation: about 12 CPU-minutes, 10 to 20
#                    minutes on 2 cores; later ones only recompile wsgate.
#   FUZZ_RSS_MB      memory limit of a run (default 2048)
#   FUZZ_RUNS        a fixed number of runs per target, with a fixed seed and
#                    only the committed seeds and regressions as inputs (no
#                    corpus carried over): the same inputs every time, so a
#                    CI run is reproducible and does not fail on a find of
#                    chance. Exploratory runs leave it unset.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
FUZZ_DIR=$PWD

SECS=${1:-20}
shift || true
if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=(frame_parser envelope_decoder config_loader ws_decoder)
fi
case $SECS in '' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
    ;;
esac

TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-fuzz}
RSS_MB=${FUZZ_RSS_MB:-2048}
export RUSTC_BOOTSTRAP=1

log() { printf '== fuzz: %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

HOST=$(rustc -vV | sed -n 's/^host: //p')
FUZZ_FLAGS=(-s none --target "$HOST" --target-dir "$TARGET_DIR")

start=$(date +%s)
log "building ${TARGETS[*]}"
if [ $# -gt 0 ]; then
    for target in "${TARGETS[@]}"; do
        cargo fuzz build "${FUZZ_FLAGS[@]}" "$target"
    done
else
    cargo fuzz build "${FUZZ_FLAGS[@]}"
fi
log "built in $(($(date +%s) - start)) s"

failed=()
for target in "${TARGETS[@]}"; do
    corpus=$TARGET_DIR/corpus/$target
    artifacts=$TARGET_DIR/artifacts/$target
    mkdir -p "$corpus" "$artifacts" "$FUZZ_DIR/seeds/$target"
    # Artifacts of an earlier run are not this run's findings.
    find "$artifacts" -type f -delete
    limits=(-max_total_time="$SECS")
    if [ -n "${FUZZ_RUNS:-}" ]; then
        corpus=$(mktemp -d)
        limits+=(-runs="$FUZZ_RUNS" -seed=1)
    fi
    inputs=("$corpus" "$FUZZ_DIR/seeds/$target")
    if [ -d "$FUZZ_DIR/regressions/$target" ]; then
        inputs+=("$FUZZ_DIR/regressions/$target")
    fi
    dict=()
    if [ -f "$FUZZ_DIR/dict/$target.dict" ]; then
        dict=(-dict="$FUZZ_DIR/dict/$target.dict")
    fi
    log "$target for ${SECS} s"
    t0=$(date +%s)
    # The binary itself rather than `cargo fuzz run`, which would rebuild
    # first if the sources changed meanwhile.
    bin=$TARGET_DIR/$HOST/release/$target
    set +e
    "$bin" "${limits[@]}" -timeout=10 -rss_limit_mb="$RSS_MB" \
        -artifact_prefix="$artifacts/" -print_final_stats=1 "${dict[@]}" \
        "${inputs[@]}" 2>"$TARGET_DIR/$target.log"
    status=$?
    set -e
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^(==[0-9]+== )?ERROR|^SUMMARY|panicked at' \
        "$TARGET_DIR/$target.log" || true
    log "$target ran $(($(date +%s) - t0)) s, exit $status"
    found=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \))
    if [ "$status" -eq 0 ] && [ -z "$found" ]; then
        continue
    fi
    failed+=("$target")
    tail -n 40 "$TARGET_DIR/$target.log" >&2
    mkdir -p "$FUZZ_DIR/regressions/$target"
    for artifact in $found; do
        name=$(basename "$artifact")
        small=$artifact
        # Minimizing a hang or an out-of-memory takes as long as each run; crashes only.
        case $name in crash-*)
            "$bin" -minimize_crash=1 -runs=2000 -max_total_time=60 -rss_limit_mb="$RSS_MB" \
                -exact_artifact_path="$artifacts/minimized" "$artifact" \
                >"$TARGET_DIR/$target.tmin.log" 2>&1 || true
            if [ -s "$artifacts/minimized" ]; then small=$artifacts/minimized; fi
            ;;
        esac
        cp "$small" "$FUZZ_DIR/regressions/$target/$name"
        log "$target: saved fuzz/regressions/$target/$name ($(wc -c <"$small") bytes)"
        rm -f "$artifacts/minimized"
    done
done

log "done in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    log "FAILED: ${failed[*]} (inputs saved under fuzz/regressions/)" >&2
    exit 1
fi
log "no crash"
