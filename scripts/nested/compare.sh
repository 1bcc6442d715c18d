#!/usr/bin/env bash
# trapvisor vs QEMU inside one L1 (issue #9's benchmark): reads the results of the scenario pair
# l2-cmp-trapvisor / l2-cmp-qemu (scripts/nested/run.sh --all, or --only '^l2-cmp-') and prints
# each figure for both and their ratio trapvisor/QEMU, with the direction that is better.
#
#   scripts/nested/compare.sh [RESULTS_DIR]    (default .cache/nested/results)
#
# Figures: L2's uptime at its "userspace up" marker, L1's wall clock from the VMM's start to that
# marker (l1-run.sh), the whole scenario's wall time, ping's average RTT, iperf3 Mbit/s
# L2 -> L1 (tx) and L1 -> L2 (rx). Exit status 1 when a figure is missing from either run.
# Nested TCG is no hardware: the ratios compare the two VMMs' functional paths, not speed.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=${1:-$root/.cache/nested/results}
tv="$dir/l2-cmp-trapvisor"
qe="$dir/l2-cmp-qemu"

# figure NAME SCENARIO_DIR: the value, or nothing.
figure() {
    local d=$2
    case "$1" in
    uptime) sed -n 's/^L2: userspace up uptime=\([0-9.]*\).*/\1/p' "$d/console" ;;
    wall_userspace) sed -n 's/^l1-run: wall_to_userspace_s=\([0-9.]*\).*/\1/p' "$d/stderr" ;;
    wall_total) cat "$d/secs" ;;
    ping_avg_ms) sed -n 's/^L2: ping .* ok .* avg_ms=\([0-9.]*\).*/\1/p' "$d/console" ;;
    iperf_tx) sed -n 's/^L2: iperf3 tx mbps=\([0-9.]*\).*/\1/p' "$d/console" ;;
    iperf_rx) sed -n 's/^L2: iperf3 rx mbps=\([0-9.]*\).*/\1/p' "$d/console" ;;
    esac 2>/dev/null | tr -d '\r' | head -n 1
}

missing=0
printf '%-16s %12s %12s %8s  %s\n' figure trapvisor qemu ratio "(trapvisor/QEMU; better is)"
for f in uptime:s:lower wall_userspace:s:lower wall_total:s:lower ping_avg_ms:ms:lower \
    iperf_tx:Mbit/s:higher iperf_rx:Mbit/s:higher; do
    name=${f%%:*}
    rest=${f#*:}
    unit=${rest%%:*}
    better=${rest#*:}
    a=$(figure "$name" "$tv")
    b=$(figure "$name" "$qe")
    if [ -z "$a" ] || [ -z "$b" ]; then
        missing=1
        printf '%-16s %12s %12s %8s  %s\n' "$name" "${a:--}" "${b:--}" - "($unit; missing)"
        continue
    fi
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    printf '%-16s %12s %12s %8s  %s\n' "$name" "$a" "$b" "$ratio" "($unit; $better)"
done
exit "$missing"
