#!/bin/sh
# Runs trapvisor with Debian's kernel whose root file system is the kit's ext4 image on a
# two-queue virtio-blk disk, inside L1 (scripts/nested/scenarios.sh, the disk-root scenarios):
#
#   disk-run.sh write|read IMG KIT TRAPVISOR [KERNEL PARAMETERS...]
#
# write: IMG starts as a fresh copy of KIT/rootfs.ext4; read: IMG is what an earlier run left.
# The guest gets L1's time (l2.now=) to compare its date with. Afterwards the image is checked
# with e2fsck -fn: "fsck: clean" or "fsck: errors". Exit status: trapvisor's.
set -u
mode=$1 img=$2 kit=$3 tv=$4
shift 4
if [ "$mode" = write ]; then
    cp "$kit/rootfs.ext4" "$img" || exit 2
fi
now=$(date +%s)
"$tv" run --kernel "$kit/vmlinuz" --initrd "$kit/l2.cpio.gz" --memory 512M --cpus 2 \
    --disk "path=$img,queues=2" --stats \
    --cmdline "console=ttyS0 panic=-1 loglevel=4 l2.root=/dev/vda l2.now=$now $*"
rc=$?
PATH="$PATH:/usr/sbin:/sbin"
if e2fsck -fn "$img" >/dev/null 2>&1; then
    echo "fsck: clean"
else
    echo "fsck: errors"
fi
exit $rc
