#!/usr/bin/env bash
# Boots the aarch64 built-in guest under QEMU's `virt` machine (TCG on any host), as an arm64
# Image with the FDT QEMU generates (GICv3 with ITS, PL011, PSCI by hvc, ECAM PCI).
#
#   guest/run-qemu-aarch64.sh [-i IMAGE] [-s CPUS] [-t SECONDS] [-d DEVICE]... [-r] [-n] \
#                             [COMMANDS...]
#
# Without -i it builds the guest (release, aarch64-unknown-none) and converts it with
# elf2image.py. COMMANDS are the guest's command line (empty: the default sequence). -d adds a
# QEMU device (repeatable); -r adds virtio-rng-pci; -n adds virtio-net-pci on QEMU's user-mode
# network (10.0.2.2 answers ARP and ping from the guest's default 10.0.2.15). QEMU's virt
# machine has no trapvisor test device, so the guest leaves through PSCI (SYSTEM_OFF after
# PASS, SYSTEM_RESET after a failure, both end QEMU) and the verdict is read from the console:
# exit 0 on "trapvisor-guest: PASS", 1 on "FAIL", 2 without either, 124 on timeout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image=""
cpus=1
timeout_s=120
devices=()
while getopts "i:s:t:d:rn" opt; do
    case "$opt" in
        i) image="$OPTARG" ;;
        s) cpus="$OPTARG" ;;
        t) timeout_s="$OPTARG" ;;
        d) devices+=(-device "$OPTARG") ;;
        r) devices+=(-device virtio-rng-pci,disable-legacy=on) ;;
        n) devices+=(-netdev user,id=n0 -device virtio-net-pci,disable-legacy=on,netdev=n0) ;;
        *) sed -n '2,15p' "$0"; exit 64 ;;
    esac
done
shift $((OPTIND - 1))
if [ -z "$image" ]; then
    cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target aarch64-unknown-none
    image="$here/target/aarch64-unknown-none/release/trapvisor-guest.img"
    python3 "$here/elf2image.py" "$here/target/aarch64-unknown-none/release/trapvisor-guest" "$image"
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
set +e
timeout "$timeout_s" qemu-system-aarch64 -M virt,gic-version=3 -cpu max -m 256 -smp "$cpus" \
    -nographic -no-reboot -monitor none -serial stdio -nic none \
    -kernel "$image" -append "$*" "${devices[@]}" | tee "$out"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 124 ]; then echo "run-qemu-aarch64: timed out after ${timeout_s}s" >&2; exit 124; fi
if grep -q "^trapvisor-guest: PASS" "$out"; then exit 0; fi
if grep -q "^trapvisor-guest: FAIL" "$out"; then exit 1; fi
echo "run-qemu-aarch64: QEMU stopped (status $rc) without a verdict" >&2
exit 2
