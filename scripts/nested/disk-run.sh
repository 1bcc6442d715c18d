#!/bin/sh
# Runs trapvisor with Debian's kernel whose root file system is the kit's ext4 image on a
# two-queue virtio-blk disk, inside L1 (scripts/nested/scenarios.sh, the disk-root scenarios;
# scripts/nested/disk-bench.sh):
#
#   disk-run.sh write|read IMG KIT TRAPVISOR WORD
#   disk-run.sh bench IMG KIT VMM [DISK_OPTIONS]
#
# write: IMG starts as a fresh copy of KIT/rootfs.ext4 and the guest writes WORD to it; read:
# the guest prints what IMG holds, which an earlier write run left (when IMG is missing, as on
# the fresh L1 of a rerun, a write run makes it first). The guest gets L1's time (l2.now=) to
# compare its date with. After each boot the image is checked with e2fsck -fn: "fsck: clean" or
# "fsck: errors". Exit status: trapvisor's (of the last boot).
#
# bench: IMG is a fresh copy of KIT/rootfs.ext4 made 128 MiB longer (the benchmark's raw
# sectors, past the file system), booted by VMM: a trapvisor binary (--disk path=IMG,queues=2
# and DISK_OPTIONS, e.g. ",notify=exit") or a qemu-system-x86_64 (q35, -accel kvm,
# virtio-blk-pci with two queues on a raw -drive with QEMU's defaults: cache=writeback,
# aio=threads); the same kernel, initramfs, memory, vCPUs and command line. The guest's
# disk-init.sh runs the benchmark (l2.disk=bench:...; $TV_DISK_BENCH is added to the command
# line, e.g. "l2.bench_mb=32"). IMG is removed afterwards.
set -u
mode=$1 img=$2 kit=$3 tv=$4 word=${5:-}
PATH="$PATH:/usr/sbin:/sbin"
fsck_img() {
    if e2fsck -fn "$img" >/dev/null 2>&1; then
        echo "fsck: clean"
    else
        echo "fsck: errors"
    fi
}
boot() {
    now=$(date +%s)
    "$tv" run --kernel "$kit/vmlinuz" --initrd "$kit/l2.cpio.gz" --memory 512M --cpus 2 \
        --disk "path=$img,queues=2" --stats \
        --cmdline "console=ttyS0 panic=-1 loglevel=4 l2.root=/dev/vda l2.now=$now $1"
    rc=$?
    fsck_img
    return $rc
}
if [ "$mode" = bench ]; then
    cp "$kit/rootfs.ext4" "$img" || exit 2
    at=$(($(stat -c %s "$img") / 1048576))
    truncate -s $(((at + 128) * 1048576)) "$img" || exit 2
    cmdline="console=ttyS0 panic=-1 loglevel=4 l2.root=/dev/vda l2.now=$(date +%s) l2.disk=bench:$at ${TV_DISK_BENCH:-}"
    case "${tv##*/}" in
    qemu-system-*)
        "$tv" -accel kvm -M q35 -cpu host -m 512M -smp 2 -display none -monitor none \
            -serial stdio -nodefaults -no-reboot \
            -drive "file=$img,if=none,id=d0,format=raw" \
            -device virtio-blk-pci,drive=d0,num-queues=2 \
            -kernel "$kit/vmlinuz" -initrd "$kit/l2.cpio.gz" -append "$cmdline"
        ;;
    *)
        "$tv" run --kernel "$kit/vmlinuz" --initrd "$kit/l2.cpio.gz" --memory 512M --cpus 2 \
            --disk "path=$img,queues=2$word" --stats --cmdline "$cmdline"
        ;;
    esac
    rc=$?
    fsck_img
    rm -f "$img"
    exit $rc
fi
if [ "$mode" = write ] || [ ! -s "$img" ]; then
    [ "$mode" = write ] || echo "disk-run: no image from an earlier write run: writing one first"
    cp "$kit/rootfs.ext4" "$img" || exit 2
    boot "l2.disk=write:$word" || exit $?
    [ "$mode" = write ] && exit 0
fi
boot "l2.disk=read"
