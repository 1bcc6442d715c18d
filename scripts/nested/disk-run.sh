#!/bin/sh
# Runs trapvisor with Debian's kernel whose root file system is the kit's ext4 image on a
# two-queue virtio-blk disk, inside L1 (scripts/nested/scenarios.sh, the disk-root scenarios):
#
#   disk-run.sh write|read IMG KIT TRAPVISOR WORD
#
# write: IMG starts as a fresh copy of KIT/rootfs.ext4 and the guest writes WORD to it; read:
# the guest prints what IMG holds, which an earlier write run left (when IMG is missing, as on
# the fresh L1 of a rerun, a write run makes it first). The guest gets L1's time (l2.now=) to
# compare its date with. After each boot the image is checked with e2fsck -fn: "fsck: clean" or
# "fsck: errors". Exit status: trapvisor's (of the last boot).
set -u
mode=$1 img=$2 kit=$3 tv=$4 word=$5
PATH="$PATH:/usr/sbin:/sbin"
boot() {
    now=$(date +%s)
    "$tv" run --kernel "$kit/vmlinuz" --initrd "$kit/l2.cpio.gz" --memory 512M --cpus 2 \
        --disk "path=$img,queues=2" --stats \
        --cmdline "console=ttyS0 panic=-1 loglevel=4 l2.root=/dev/vda l2.now=$now $1"
    rc=$?
    if e2fsck -fn "$img" >/dev/null 2>&1; then
        echo "fsck: clean"
    else
        echo "fsck: errors"
    fi
    return $rc
}
if [ "$mode" = write ] || [ ! -s "$img" ]; then
    [ "$mode" = write ] || echo "disk-run: no image from an earlier write run: writing one first"
    cp "$kit/rootfs.ext4" "$img" || exit 2
    boot "l2.disk=write:$word" || exit $?
    [ "$mode" = write ] && exit 0
fi
boot "l2.disk=read"
