#!/bin/sh
# /init of the L1 initramfs (built by scripts/nested/guest-kit.sh): loads kvm_amd, virtio-pci,
# 9p and tun; mounts the host's root (virtfs tag 'hostroot', read-only) on /host and the job
# directory (virtfs tag 'job', read-write) at its host path inside it; chroots into the host root
# and runs JOBDIR/job.sh there; powers off. Kernel command line: nested.job=JOBDIR.
export PATH=/bin:/sbin
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

job=
for w in $(cat /proc/cmdline); do
    case "$w" in
    nested.job=*) job=${w#nested.job=} ;;
    esac
done
[ -n "$job" ] || { say "no nested.job= on the command line"; finish; }

o=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host
n=0
until mount -t 9p -o "$o,ro,cache=loose" hostroot /host 2>/dev/null; do
    n=$((n + 1))
    [ "$n" -lt 50 ] || { say "cannot mount hostroot"; finish; }
    sleep 0.1
done
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts 2>/dev/null
mount -t tmpfs shm /host/dev/shm
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
# Last: the job directory may lie under one of the mounts above (the host's /tmp, say).
mkdir -p "/host$job" 2>/dev/null
mount -t 9p -o "$o" job "/host$job" || { say "cannot mount the job directory on /host$job"; finish; }
ip link set lo up 2>/dev/null

if [ -c /dev/kvm ]; then
    say "kvm ready uptime=$(uptime_s)"
else
    say "no /dev/kvm uptime=$(uptime_s)"
fi
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TERM=dumb /bin/sh "$job/job.sh" "$job"
say "job exited rc=$?"
finish
