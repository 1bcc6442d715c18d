#!/usr/bin/env bash
# Compares two L2 kernel logs (consoles of scenarios run with l2.dmesg=1): the same kernel and
# initramfs under trapvisor (A) and under QEMU/KVM q35 (B), in the same L1.
#   scripts/nested/dmesg-diff.sh A_CONSOLE B_CONSOLE
# Prints the complaint-like lines (warnings, errors, firmware bugs, unchecked MSRs/CPUID, ...)
# that only A has, then those that only B has, then the whole normalized diff. Timestamps are
# dropped and numbers replaced by '#' before comparing.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 A_CONSOLE B_CONSOLE" >&2; exit 2; }

extract() {
    tr -d '\r' <"$1" | sed -n '/^L2: dmesg begin/,/^L2: dmesg end/p' | sed '1d;$d' |
        sed -E 's/^<[0-9]>//; s/^\[ *[0-9]+\.[0-9]+\] //'
}
normalize() {
    sed -E 's/0x[0-9a-fA-F]+/#/g; s/[0-9a-fA-F]{8,}/#/g; s/[0-9]+/#/g' | LC_ALL=C sort -u
}
complaint='warn|error|fail|bug|unknown|unhandled|unsupported|invalid|broken|bogus|mismatch|not (found|present|available|supported)|unable|cannot|can.t|disabl|ignor|firmware|timeout|tainted|spurious|unexpected|missing|no .* found'

a=$(mktemp)
b=$(mktemp)
trap 'rm -f "$a" "$b" "$a.n" "$b.n"' EXIT
extract "$1" >"$a"
extract "$2" >"$b"
[ -s "$a" ] || { echo "no dmesg section in $1" >&2; exit 1; }
[ -s "$b" ] || { echo "no dmesg section in $2" >&2; exit 1; }
normalize <"$a" >"$a.n"
normalize <"$b" >"$b.n"

only() {
    # Lines of log $1 whose normalized form is not in $2's normalized set.
    local log=$1 other=$2
    while IFS= read -r line; do
        n=$(printf '%s\n' "$line" | normalize)
        grep -qxF -- "$n" "$other" || printf '%s\n' "$line"
    done <"$log"
}

echo "=== complaint-like lines only under A ($1)"
only "$a" "$b.n" | grep -iE "$complaint" || echo "(none)"
echo
echo "=== complaint-like lines only under B ($2)"
only "$b" "$a.n" | grep -iE "$complaint" || echo "(none)"
echo
echo "=== every line only under A"
only "$a" "$b.n"
echo
echo "=== every line only under B"
only "$b" "$a.n"
