#!/bin/sh
# /sbin/init of the root file system on the virtio-blk disk (rootfs.ext4, built by
# scripts/nested/guest-kit.sh with mke2fs -d). The L2 initramfs (l2-init.sh, l2.root=) mounts
# /dev/vda read-write and switch_roots here. Prints markers starting with "L2: disk ", then
# powers off.
#
# Command-line parameters:
#   l2.disk=write:WORD    write WORD to /var/tv-data (fdatasync'ed by sync), then read it back
#   l2.disk=read          print what /var/tv-data holds
#   l2.now=SECONDS        L1's time at launch: the guest's date at its kernel's start must be
#                         within 60 s of it
#   l2.disk=bench:AT      the read/write benchmark (scripts/nested/disk-bench.sh) on the disk's
#                         raw sectors from AT MiB on (past the file system: the image was
#                         lengthened for it), busybox dd with O_DIRECT, one request at a time:
#                         1 MiB sequential writes (then a flush), 1 MiB sequential reads, 4 KiB
#                         reads; "L2: disk bench NAME ... secs=S" per figure
#   l2.bench_mb=N         MiB each 1 MiB figure moves (default 64)
#   l2.bench_4k=N         4 KiB reads (default 4000)
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
say() {
    echo "L2: disk $*"
}
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in
        "l2.$1="*) echo "${w#*=}"; return 0 ;;
        esac
    done
    echo "$2"
}
say "root $(awk '$2 == "/" { print $1, $3, $4 }' /proc/mounts | tail -n 1)"
say "marker $(cat /etc/tv-rootfs 2>/dev/null || echo missing)"
now=$(date +%s)
host=$(arg now 0)
# The guest's clock at its kernel's start (now less the uptime) against L1's at the launch: the
# boot's own duration (long under nested emulation) does not count.
read -r up _ </proc/uptime
delta=$((now - ${up%.*} - host))
[ "$delta" -lt 0 ] && delta=$((-delta))
say "date $(date -u '+%Y-%m-%dT%H:%M:%SZ') now=$now uptime=${up%.*} host=$host delta=$delta $([ "$delta" -le 60 ] && echo ok || echo WRONG)"
say "rtc $(cat /sys/class/rtc/rtc0/name 2>/dev/null || echo none) $(cat /sys/class/rtc/rtc0/date 2>/dev/null) $(cat /sys/class/rtc/rtc0/time 2>/dev/null)"
say "queues $(ls /sys/block/vda/mq 2>/dev/null | wc -l)"
case "$(arg disk "")" in
write:*)
    word=$(arg disk "")
    word=${word#write:}
    echo "$word" >/var/tv-data
    sync
    say "wrote $(cat /var/tv-data)"
    ;;
read)
    say "read $(cat /var/tv-data 2>/dev/null || echo nothing)"
    ;;
bench:*)
    at=$(arg disk "")
    at=${at#bench:}
    mb=$(arg bench_mb 64)
    n4k=$(arg bench_4k 4000)
    # Seconds a command took (/proc/uptime: 10 ms steps; the figures run for seconds).
    timed() {
        read -r t0 _ </proc/uptime
        "$@" 2>/dev/null || echo "dd failed: $*" >&2
        read -r t1 _ </proc/uptime
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
    }
    rate() {
        awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "inf" }'
    }
    size_mb=$(($(cat /sys/block/vda/size) / 2048))
    if [ $((at + mb)) -gt "$size_mb" ]; then
        say "bench: the disk has $size_mb MiB, the benchmark needs $((at + mb))"
    else
        s=$(timed dd if=/dev/zero of=/dev/vda bs=1M count="$mb" seek="$at" oflag=direct conv=fsync)
        say "bench write1m mb=$mb secs=$s mbps=$(rate "$mb" "$s")"
        s=$(timed dd if=/dev/vda of=/dev/null bs=1M count="$mb" skip="$at" iflag=direct)
        say "bench read1m mb=$mb secs=$s mbps=$(rate "$mb" "$s")"
        s=$(timed dd if=/dev/vda of=/dev/null bs=4k count="$n4k" skip=$((at * 256)) iflag=direct)
        say "bench read4k requests=$n4k secs=$s iops=$(rate "$n4k" "$s")"
    fi
    ;;
esac
# Reads and writes spread over the CPUs, so every queue sees requests.
for c in $(seq 0 $(($(grep -c '^processor' /proc/cpuinfo) - 1))); do
    taskset -c "$c" dd if=/dev/vda of=/dev/null bs=64k count=64 skip=$((c * 64)) iflag=direct 2>/dev/null
    taskset -c "$c" sh -c "echo cpu$c >/var/tv-cpu$c; sync"
done
say "stat $(cat /sys/block/vda/stat | xargs)"
sync
mount -o remount,ro / 2>/dev/null
say "done"
poweroff -f
