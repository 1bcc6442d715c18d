#!/bin/sh
# /init of the L2 initramfs (built by scripts/nested/guest-kit.sh). Prints markers the nested
# tests look for, all starting with "L2: ", then ends as the command line asks.
#
# Command-line parameters (all optional):
#   l2.ip=ADDR/PREFIX     configure eth0 with it (when eth0 exists)
#   l2.gw=ADDR            default route
#   l2.ping=ADDR          ping it (l2.pings=N times, default 5, every l2.ping_interval=S
#                         seconds, default 0.2): "L2: ping ADDR ok R/N avg_ms=A" (R replies;
#                         A from ping's summary)
#   l2.iperf=server       run "iperf3 -s -1" (one client, then go on)
#   l2.iperf=client:ADDR  run "iperf3 -c ADDR -t l2.iperf_time (default 3) -P l2.iperf_p
#                         (default 1)" in the directions of l2.iperf_dir=tx|rx|both (default
#                         tx; rx is iperf3 -R: the server sends): "L2: iperf3 tx mbps=M" (the
#                         receiver's figure) per direction; l2.iperf_phases=quiet,loaded runs
#                         them again after "L2: phase loaded" ("L2: iperf3 loaded tx mbps=M");
#                         l2.iperf_begin=1 prints "L2: iperf3 begin" before each run
#   l2.napi_tx=0          load virtio_net with napi_tx=0 (TX skbs freed at xmit, not on the
#                         completion interrupt: TCP Small Queues stops waiting for the device)
#   l2.relink=1           after iperf3: "ip link set eth0 down", "up", 5 pings to l2.ping:
#                         "L2: relink ping ok R/5"
#   l2.rebind=1           after that: unbind virtio_net from eth0's virtio device and bind it
#                         again (the device is reset and re-initialized), address, 5 pings:
#                         "L2: rebind ping ok R/5", and 1 s of iperf3 -c each way when
#                         l2.iperf=client:ADDR ("L2: rebind iperf3 tx mbps=M")
#   l2.msr=A,B,...        print these MSRs of CPU 0 ("L2: msr 0x2ff=0000000000000c06")
#   l2.cpuid=L,...        print these CPUID leaves (subleaf 0) of CPU 0 as eax ebx ecx edx
#   l2.dmesg=1            print the kernel log between "L2: dmesg begin" and "L2: dmesg end"
#   l2.dmesg=warn         the same, only the records of level warning and above (0-4)
#   l2.date_ref=EPOCH     compare the clock (set from the RTC at boot) with EPOCH: "L2: rtc0
#                         name=NAME date ok|off epoch=NOW ref=EPOCH" (ok: within 300 s)
#   l2.root=DEV           mount DEV (ext4, e.g. /dev/vda) read-write after loading the modules
#                         and switch_root into it: its /sbin/init (disk-init.sh) takes over
#   l2.end=poweroff       how to end: poweroff (default, "poweroff -f"), reboot ("reboot -f"),
#                         exit (init exits: the kernel panics), crash (sysrq 'c'), hang
#   l2.boot=1             the boot benchmark's mode (scripts/nested/boot-bench.sh): right after
#                         "L2: userspace up", end as l2.end says, loading nothing and printing
#                         nothing else (but l2.initcalls=)
#   l2.initcalls=N        with l2.boot=1 and the kernel's initcall_debug: the N slowest
#                         initcalls from the kernel log, "L2: initcall NAME usecs=U", slowest
#                         first, then "L2: initcalls count=C total_usecs=T"
#   l2.klog=ERE           with l2.boot=1: the kernel log's lines that match ERE (grep -E; no
#                         spaces: a kernel parameter), each as "L2: klog LINE"
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

# The boot benchmark's mode: the userspace marker is what it waits for; end at once.
if [ "$(arg boot 0)" = 1 ]; then
    n=$(arg initcalls 0)
    if [ "$n" != 0 ]; then
        # "initcall NAME+0x0/0x40 returned 0 after 123 usecs" (initcall_debug, level debug).
        dmesg | sed -n 's/.* initcall \([^ +]*\)[^ ]* returned .* after \([0-9]*\) usecs.*/\2 \1/p' >/tmp/ic
        sort -rn /tmp/ic | head -n "$n" | while read -r us name; do say "initcall $name usecs=$us"; done
        say "initcalls count=$(wc -l </tmp/ic) total_usecs=$(awk '{ t += $1 } END { print t + 0 }' /tmp/ic)"
    fi
    re=$(arg klog "")
    [ -z "$re" ] || dmesg | grep -E -- "$re" | while IFS= read -r l; do say "klog $l"; done
    end=$(arg end poweroff)
    say "done uptime=$(uptime_s) end=$end"
    case "$end" in
    reboot) reboot -f ;;
    hang) while :; do sleep 3600; done ;;
    *) poweroff -f ;;
    esac
    sleep 10
    say "still running after '$end'"
    exit 1
fi
say "cpus=$(grep -c '^processor' /proc/cpuinfo) online=$(cat /sys/devices/system/cpu/online)"
say "clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
say "cmdline=$(cat /proc/cmdline)"
say "memtotal_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)"
say "cpu model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"

while read -r m; do
    opts=
    case "$m" in
    */virtio_net.ko*) [ "$(arg napi_tx "")" = 0 ] && opts=napi_tx=0 ;;
    esac
    # shellcheck disable=SC2086 # $opts is one word or none
    insmod "/$m" $opts 2>/dev/null || say "insmod $m failed"
done </etc/modules.load
[ "$(arg napi_tx "")" != 0 ] || say "virtio_net napi_tx=$(cat /sys/module/virtio_net/parameters/napi_tx 2>/dev/null)"
ip link set lo up

rootdev=$(arg root "")
if [ -n "$rootdev" ]; then
    mkdir -p /newroot
    if mount -t ext4 "$rootdev" /newroot; then
        say "root $rootdev mounted"
        umount /proc /sys 2>/dev/null
        exec switch_root /newroot /sbin/init
    fi
    say "root $rootdev: mount failed"
fi

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
# The virtio feature bits Linux negotiated with the NIC (the device's sysfs 'features': one
# character per bit, bit 0 first), by name.
if [ -r /sys/class/net/eth0/device/features ]; then
    f=$(cat /sys/class/net/eth0/device/features)
    names=
    for b in 0:CSUM 1:GUEST_CSUM 7:GUEST_TSO4 8:GUEST_TSO6 11:HOST_TSO4 12:HOST_TSO6 \
        15:MRG_RXBUF 17:CTRL_VQ 22:MQ 28:INDIRECT_DESC 29:EVENT_IDX 32:VERSION_1; do
        [ "$(echo "$f" | cut -c $((${b%%:*} + 1)))" = 1 ] && names="$names ${b#*:}"
    done
    say "eth0 features$names"
    # The PCI function's MSI/MSI-X vectors: how many, and their mode(s).
    m=/sys/class/net/eth0/device/../msi_irqs
    say "eth0 msi_irqs=$(ls "$m" 2>/dev/null | wc -l) mode=$(cat "$m"/* 2>/dev/null | sort -u | xargs)"
    say "eth0 queues rx=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) tx=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)"
fi
# The NIC's interrupt lines in /proc/interrupts: "L2: irq NAME CHIP count=N" (N over all CPUs).
virtio_irqs() {
    awk 'NR == 1 { ncpu = NF; next }
        $NF ~ /^virtio[0-9]+-(input|output|config)/ {
            n = 0; for (i = 2; i <= ncpu + 1; i++) n += $i
            print "L2: irq " $NF " " $(ncpu + 2) " count=" n
        }' /proc/interrupts
}

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
    out=$(ping -c "$count" -i "$(arg ping_interval 0.2)" -W 2 "$peer" 2>&1)
    got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    avg=$(echo "$out" | sed -n 's|^round-trip min/avg/max = [0-9.]*/\([0-9.]*\)/.*|\1|p')
    if [ "${got:-0}" -gt 0 ]; then
        say "ping $peer ok ${got}/$count avg_ms=${avg:-?}"
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
    case "$(arg iperf_dir tx)" in
    both) dirs="tx rx" ;;
    rx) dirs=rx ;;
    *) dirs=tx ;;
    esac
    for ph in $(arg iperf_phases quiet | tr ',' ' '); do
        # Another phase: announce it (scripts/nested/l1-run.sh --hog starts its CPU hog on
        # "L2: phase loaded") and give L1 a second.
        label=
        if [ "$ph" != quiet ]; then
            label="$ph "
            say "phase $ph"
            sleep 1
        fi
        for d in $dirs; do
            r=
            [ "$d" = tx ] || r=-R
            # Only the result goes to the console (every byte there is slow): the receiver's
            # summary line (with -P, the SUM line), its Mbit/s. "begin" lets L1 sample the
            # VMM's CPU time (l1-run.sh).
            [ "$(arg iperf_begin 0)" = 0 ] || say "iperf3 begin"
            if iperf3 -c "$host" $r -t "$(arg iperf_time 3)" -P "$(arg iperf_p 1)" -f m >/tmp/iperf.out 2>&1; then
                m=$(awk '/receiver$/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") v = $i } END { print v }' /tmp/iperf.out)
                say "iperf3 $label$d mbps=${m:-?}"
            else
                say "iperf3 $label$d failed: $(tail -n 1 /tmp/iperf.out)"
            fi
        done
    done
    ;;
esac
# 5 pings to l2.ping: "ok R/5" or "failed".
ping5() {
    p=$(arg ping "")
    out=$(ping -c 5 -i 0.2 -W 2 "$p" 2>&1)
    got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    if [ "${got:-0}" -gt 0 ]; then echo "ok ${got}/5"; else echo "failed 0/5"; fi
}
if [ "$(arg relink 0)" = 1 ] && [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 down
    ip link set eth0 up
    sleep 1
    say "relink ping $(ping5)"
fi
if [ "$(arg rebind 0)" = 1 ] && [ -e /sys/class/net/eth0 ]; then
    vdev=$(basename "$(readlink -f /sys/class/net/eth0/device)")
    drv=/sys/bus/virtio/drivers/virtio_net
    echo "$vdev" >"$drv/unbind" && echo "$vdev" >"$drv/bind" || say "rebind of $vdev failed"
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ip link set eth0 up
    ip addr add "$(arg ip "")" dev eth0 2>/dev/null
    sleep 1
    say "rebind ping $(ping5)"
    case "$(arg iperf "")" in
    client:*)
        host=$(arg iperf "")
        for d in tx rx; do
            r=
            [ "$d" = tx ] || r=-R
            if iperf3 -c "${host#client:}" $r -t 1 -f m >/tmp/iperf.out 2>&1; then
                m=$(awk '/receiver$/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") v = $i } END { print v }' /tmp/iperf.out)
                say "rebind iperf3 $d mbps=${m:-?}"
            else
                say "rebind iperf3 $d failed: $(tail -n 1 /tmp/iperf.out)"
            fi
        done
        ;;
    esac
fi
[ "$nics" = 0 ] || virtio_irqs
[ -z "$(cat /sys/class/misc/hw_random/rng_available 2>/dev/null)" ] ||
    say "hwrng current=$(cat /sys/class/misc/hw_random/rng_current) available=$(cat /sys/class/misc/hw_random/rng_available)"
# The RTC Linux set its clock from at boot (rtc0), and that clock against l2.date_ref= (L1's
# clock when the scenario started, seconds since the epoch): within 300 s is "ok".
ref=$(arg date_ref "")
if [ -n "$ref" ]; then
    now=$(date +%s)
    d=$((now - ref))
    [ "$d" -ge 0 ] || d=$((-d))
    v=off
    [ "$d" -gt 300 ] || v=ok
    say "rtc0 name=$(cat /sys/class/rtc/rtc0/name 2>/dev/null || echo none) date $v epoch=$now ref=$ref"
fi

# Platform devices found through the DSDT (PNP ids; the i8042's interrupt line and how many
# interrupts it took; input devices; pvpanic's driver), for the dmesg scenarios.
if [ "$(arg dmesg 0)" != 0 ]; then
    say "pnp $(cat /sys/bus/pnp/devices/*/id 2>/dev/null | xargs)"
    say "i8042 irq=$(awk 'NR == 1 { ncpu = NF; next } $NF == "i8042" {
        n = 0; for (i = 2; i <= ncpu + 1; i++) n += $i; print $1 $(NF - 1) " count=" n }' /proc/interrupts | xargs)"
    say "input $(sed -n 's/^N: Name=//p' /proc/bus/input/devices 2>/dev/null | tr -d '"' | paste -sd ',')"
    n=0
    for d in /sys/bus/platform/drivers/pvpanic-mmio/QEMU0001:*; do
        [ -e "$d" ] && n=$((n + 1))
    done
    say "pvpanic $n bound"
fi
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

# l2.idle=S: S seconds with nothing to do before the end (the idle loop and its timer, for the
# kernel half of the trap path: hlt and timer exits).
idle=$(arg idle 0)
if [ "$idle" != 0 ]; then
    say "idle ${idle}s"
    sleep "$idle"
fi

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
