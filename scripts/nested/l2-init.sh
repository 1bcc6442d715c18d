#!/bin/sh
# /init of the L2 initramfs (built by scripts/nested/guest-kit.sh). Prints markers the nested
# tests look for, all starting with "L2: ", then ends as the command line asks.
#
# Command-line parameters (all optional):
#   l2.ip=ADDR/PREFIX     configure eth0 with it (when eth0 exists)
#   l2.gw=ADDR            default route
#   l2.ping=ADDR          ping it (l2.pings=N times, default 5): "L2: ping ADDR ok N/N"
#   l2.iperf=server       run "iperf3 -s -1" (one client, then go on)
#   l2.iperf=client:ADDR  run "iperf3 -c ADDR -t l2.iperf_time (default 3)"
#   l2.msr=A,B,...        print these MSRs of CPU 0 ("L2: msr 0x2ff=0000000000000c06")
#   l2.cpuid=L,...        print these CPUID leaves (subleaf 0) of CPU 0 as eax ebx ecx edx
#   l2.dmesg=1            print the kernel log between "L2: dmesg begin" and "L2: dmesg end"
#   l2.dmesg=warn         the same, only the records of level warning and above (0-4)
#   l2.end=poweroff       how to end: poweroff (default, "poweroff -f"), reboot ("reboot -f"),
#                         exit (init exits: the kernel panics), crash (sysrq 'c'), hang
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

say() {
    echo "L2: $*"
}
uptime_s() {
    read -r up _ </proc/uptime
    echo "$up"
}
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in
        "l2.$1="*) echo "${w#*=}"; return 0 ;;
        esac
    done
    echo "$2"
}

say "userspace up uptime=$(uptime_s)"
say "cpus=$(grep -c '^processor' /proc/cpuinfo) online=$(cat /sys/devices/system/cpu/online)"
say "clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
say "cmdline=$(cat /proc/cmdline)"
say "memtotal_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)"
say "cpu model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"

while read -r m; do
    insmod "/$m" 2>/dev/null || say "insmod $m failed"
done </etc/modules.load
ip link set lo up

for r in $(arg msr "" | tr ',' ' '); do
    v=$(dd if=/dev/cpu/0/msr bs=8 count=1 skip=$((r)) iflag=skip_bytes 2>/dev/null | od -An -t x8 | tr -d ' ')
    say "msr $r=${v:-unreadable}"
done
for l in $(arg cpuid "" | tr ',' ' '); do
    v=$(dd if=/dev/cpu/0/cpuid bs=16 count=1 skip=$((l)) iflag=skip_bytes 2>/dev/null | od -An -t x4 | xargs)
    say "cpuid $l=${v:-unreadable}"
done

nics=0
for n in /sys/class/net/*; do
    name=${n##*/}
    [ "$name" = lo ] && continue
    drv=$(readlink "$n/device/driver" 2>/dev/null)
    say "nic $name mac=$(cat "$n/address") driver=${drv##*/}"
    nics=$((nics + 1))
done
say "nics=$nics"

addr=$(arg ip "")
if [ -n "$addr" ] && [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add "$addr" dev eth0 && say "eth0 $addr"
    gw=$(arg gw "")
    [ -z "$gw" ] || ip route add default via "$gw"
fi
peer=$(arg ping "")
if [ -n "$peer" ]; then
    count=$(arg pings 5)
    got=$(ping -c "$count" -W 2 "$peer" 2>&1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    if [ "${got:-0}" -gt 0 ]; then
        say "ping $peer ok ${got}/$count"
    else
        say "ping $peer failed 0/$count"
    fi
fi
case "$(arg iperf "")" in
server)
    say "iperf3 server listening"
    iperf3 -s -1 && say "iperf3 server done" || say "iperf3 server failed"
    ;;
client:*)
    host=$(arg iperf "")
    host=${host#client:}
    if iperf3 -c "$host" -t "$(arg iperf_time 3)" -f m; then
        say "iperf3 client done"
    else
        say "iperf3 client failed"
    fi
    ;;
esac

case "$(arg dmesg 0)" in
1)
    say "dmesg begin"
    dmesg
    say "dmesg end"
    ;;
warn)
    say "dmesg begin"
    dmesg -r | grep -E '^<[0-4]>' | sed 's/^<[0-9]>//'
    say "dmesg end"
    ;;
esac

end=$(arg end poweroff)
say "done uptime=$(uptime_s) end=$end"
case "$end" in
reboot) reboot -f ;;
exit) exit 0 ;;
crash)
    echo 1 >/proc/sys/kernel/sysrq
    echo c >/proc/sysrq-trigger
    ;;
hang) while :; do sleep 3600; done ;;
*) poweroff -f ;;
esac
sleep 10
say "still running after '$end'"
