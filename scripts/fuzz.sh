#!/usr/bin/env bash
# fuzz.sh [SECONDS]: runs each coverage-guided fuzz target of fuzz/ (cargo
# fuzz, libFuzzer with AddressSanitizer, on the nightly toolchain) for
# SECONDS (default 30), from the seeds in fuzz/seeds/TARGET, in a temporary
# corpus. Prints executions and executions per second per target; a crash
# stops it with the input in fuzz/artifacts/TARGET/ (make it a regression
# test that stable `cargo test` replays).
#
# Without a nightly toolchain it says so in one line and exits 0, unless
# CI=true: CI has nightly and must not skip fuzzing. The fuzz build is
# cached in $POP3SERVER_FUZZ_TARGET (default /var/cache/pop3server-tests/fuzz-target).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_PER_TARGET=${1:-30}
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
ensure_cargo

if ! cargo +nightly --version >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "fuzzing needs a nightly toolchain (rustup toolchain list), and CI must fuzz" >&2
        exit 1
    fi
    echo "fuzzing skipped: no nightly toolchain (cargo fuzz needs one for its sanitizers)"
    exit 0
fi
# cargo-fuzz goes into a cache of its own (~/.cargo/bin may be read-only).
TOOLS=${POP3SERVER_TOOLS:-/var/cache/pop3server-tests/cargo-tools}
export PATH="$TOOLS/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz into $TOOLS (once, about a minute)"
    cargo install --locked --root "$TOOLS" cargo-fuzz@0.13.2
fi

export CARGO_TARGET_DIR=${POP3SERVER_FUZZ_TARGET:-/var/cache/pop3server-tests/fuzz-target}
mkdir -p "$CARGO_TARGET_DIR"
cd fuzz
cargo +nightly fuzz build 2>&1 | tail -n 1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/$target"
    cp seeds/"$target"/* "$work/$target/" 2>/dev/null || true
    log="$work/$target.log"
    if ! cargo +nightly fuzz run "$target" "$work/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 \
            > "$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    rate=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || echo "?")
    echo "fuzz $target: $runs executions in ${SECONDS_PER_TARGET}s ($rate/s), no crash"
done
