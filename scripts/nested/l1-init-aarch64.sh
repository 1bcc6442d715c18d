#!/bin/sh
# /init of the aarch64 L1 initramfs (built by scripts/nested/kit-aarch64.sh). L1 is Debian's arm64
# kernel at EL2 under QEMU TCG (virtualization=on), so it has a real /dev/kvm. Its arm64 kernel
# has no 9p, and L1 could not run the host's x86 binaries anyway: everything the job needs comes
# in the initramfs (run.sh appends a second archive with /job: job.sh, the trapvisor binary, the
# kit), and the results go back over a virtio-serial port named "results" (a tar stream).
# Loads virtio-pci, virtio-console, tun and vhost_net; prints `L1: kvm ready`; runs
# `sh /job/job.sh /job PORT`; powers off.
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1

say() {
    echo "L1: $*"
}
uptime_s() {
    read -r up _ </proc/uptime
    echo "$up"
}
finish() {
    say "powering off uptime=$(uptime_s)"
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

say "init uptime=$(uptime_s)"
while read -r m; do
    insmod "/$m" || say "insmod $m failed"
done </etc/modules.load
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
ip link set lo up

port=
n=0
while [ -z "$port" ] && [ "$n" -lt 50 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = results ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] || { n=$((n + 1)); sleep 0.1; }
done
[ -n "$port" ] || say "no virtio-serial port named results: the results stay in L1"
[ -f /job/job.sh ] || { say "no /job/job.sh in the initramfs"; finish; }

if [ -c /dev/kvm ]; then
    say "kvm ready uptime=$(uptime_s)"
else
    say "no /dev/kvm uptime=$(uptime_s)"
fi
sh /job/job.sh /job "$port"
say "job exited rc=$?"
finish
