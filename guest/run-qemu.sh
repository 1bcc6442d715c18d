#!/usr/bin/env bash
# Boots the built-in guest under QEMU (TCG: no KVM needed) through its PVH note.
#
#   guest/run-qemu.sh [-e ELF] [-s CPUS] [-c CPU] [-t SECONDS] [-a ACCEL] [-b BIOS] \
#                     [-d DEVICE]... [-r] [COMMANDS...]
#
# Without -e it builds the guest (release, x86_64-unknown-none) into guest/target. COMMANDS are
# the guest's command line (empty: the default sequence). -a picks the accelerator (tcg, the
# default, or kvm; with kvm the CPU model defaults to "max,-arch-capabilities"). -d adds a QEMU
# device (repeatable), e.g. -d virtio-rng-pci,disable-legacy=on; -r is short for exactly that.
# -b replaces SeaBIOS, e.g. -b /usr/share/qemu/qboot.rom, which leaves PCI BARs unassigned.
# The default NIC is left out (-nic none). Exit status: 0 when the guest reported
# PASS (debug-exit 0), 1 when it reported a failure, 2 when QEMU stopped without a report (triple
# fault with -no-reboot, or a QEMU error), 124 on timeout (e.g. `idle`).
# The test device does not exist under QEMU: SINK reads give `sink=absent`, and the MMIO CONSOLE
# line of `cpl3` is not shown.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
elf=""
cpus=4
cpu_model=""
timeout_s=120
accel=tcg
devices=()
bios=()
while getopts "e:s:c:t:a:b:d:r" opt; do
    case "$opt" in
        e) elf="$OPTARG" ;;
        s) cpus="$OPTARG" ;;
        c) cpu_model="$OPTARG" ;;
        t) timeout_s="$OPTARG" ;;
        a) accel="$OPTARG" ;;
        b) bios=(-bios "$OPTARG") ;;
        d) devices+=(-device "$OPTARG") ;;
        r) devices+=(-device virtio-rng-pci,disable-legacy=on) ;;
        *) sed -n '2,17p' "$0"; exit 64 ;;
    esac
done
shift $((OPTIND - 1))
if [ -z "$cpu_model" ]; then
    # PVM's /dev/kvm cannot virtualise IA32_ARCH_CAPABILITIES, which "max" includes under KVM.
    if [ "$accel" = kvm ]; then cpu_model="max,-arch-capabilities"; else cpu_model=max; fi
fi
if [ -z "$elf" ]; then
    cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target x86_64-unknown-none
    elf="$here/target/x86_64-unknown-none/release/trapvisor-guest"
fi
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -M q35 -cpu "$cpu_model" -m 256 \
    "${bios[@]}" -smp "$cpus" -nographic -no-reboot -monitor none -serial stdio -nic none \
    -kernel "$elf" -append "$*" \
    -device isa-debug-exit,iobase=0xf4,iosize=4 "${devices[@]}"
rc=$?
set -e
case "$rc" in
    1) exit 0 ;;            # debug-exit 0: (0 << 1) | 1
    124) echo "run-qemu: timed out after ${timeout_s}s" >&2; exit 124 ;;
    0) echo "run-qemu: QEMU stopped without a debug-exit report (reset/shutdown)" >&2; exit 2 ;;
    *)
        if [ $((rc & 1)) -eq 1 ]; then
            echo "run-qemu: guest reported failure code $((rc >> 1))" >&2
            exit 1
        fi
        echo "run-qemu: qemu exited with $rc" >&2
        exit 2 ;;
esac
