#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time with the checked-in seed corpus.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Installs cargo-fuzz (and the nightly toolchain it needs) when missing. Every input that ever
# crashed a target is kept in fuzz/regressions/TARGET/ and is replayed first.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
shift || true
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        echo "fuzz: $t: replaying regressions"
        cargo +nightly fuzz run "$t" regressions/"$t"/* -- -runs=1
    fi
    mkdir -p "corpus/$t"
    echo "fuzz: $t: ${secs}s"
    # A private working corpus seeded from the checked-in seeds keeps the tree clean.
    work=$(mktemp -d)
    cp corpus/"$t"/seed-* "$work"/ 2>/dev/null || true
    cargo +nightly fuzz run "$t" "$work" -- -max_total_time="$secs" -print_final_stats=1 2>&1 |
        grep -E "stat::number_of_executed_units|Done|ERROR|panicked|crash-" || true
    status=${PIPESTATUS[0]}
    rm -rf "$work"
    [ "$status" -eq 0 ] || { echo "fuzz: $t FAILED"; exit 1; }
done
