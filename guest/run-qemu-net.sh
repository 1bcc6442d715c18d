#!/usr/bin/env bash
# Boots the built-in guest with a virtio-net device on a TAP inside a network namespace of its
# own, for the guest's net.* commands. Root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) needed.
#
#   guest/run-qemu-net.sh [-e ELF] [-t SECONDS] [-a kvm|tcg] [-n NETNS] [-H HOST_CMD] \
#                         [-P HOST_CMD] [-w READY_REGEX] [-q QUEUE_OPTS] [-V TRAPVISOR] \
#                         [-A TRAPVISOR_ARGS] [-k] [COMMANDS...]
#
# Creates namespace NETNS (default tvnet-$$), a TAP "tvq0" in it with 10.0.2.1/24, up, and
# runs the guest inside it: QEMU (q35, -accel kvm by default, 1 vCPU, virtio-net-pci with
# disable-legacy=on on netdev tap,vhost=off; -q appends options to the -device, e.g.
# -q rx_queue_size=1024) or, with -V PATH, that trapvisor binary (`run --net tap=tvq0`, -q
# appended there too, e.g. -q notify=exit; its built-in guest unless -e is given; -A adds
# words to its `run`, e.g. -A '--seccomp log --stats').
# The guest's serial output goes to stdout (and to NETNS.log in $TMPDIR).
#
# -H runs HOST_CMD inside the namespace (sh -c, with $NS, $HERE and $GUEST_IP set) once the
# guest printed a line matching -w (default "net: (echo|udp-rx) listening"); when HOST_CMD
# exits, the guest runs on until it stops (within -t), or is stopped at once with -k (e.g. for
# a net.echo without seconds). -P starts a HOST_CMD in the namespace before the guest (in the
# background, e.g. a receiver for net.udp-tx) and waits for it after the guest stopped.
# Exit status: the guest's (0 PASS, 1 FAIL, 2 no report, 124 timeout; as run-qemu.sh) unless
# that was 0 and a HOST_CMD failed: then 3. The namespace (and the TAP) is deleted on exit.
#
# Examples:
#   guest/run-qemu-net.sh net.info net.ping=10.0.2.1,count=100
#   guest/run-qemu-net.sh -k -H 'python3 $HERE/net-host.py ping $GUEST_IP --count 5' net.echo
#   guest/run-qemu-net.sh -H 'python3 $HERE/net-host.py send 10.0.2.15 9000 --count 1000' \
#       net.udp-rx=9000,seconds=5
#   guest/run-qemu-net.sh -P 'python3 $HERE/net-host.py recv 9000 --seconds 6' \
#       net.udp-tx=10.0.2.1:9000,pps=2000,seconds=2
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
elf=""
timeout_s=120
accel=kvm
NS="tvnet-$$"
host_cmd=""
pre_cmd=""
ready='net: (echo|udp-rx) listening'
queue_opts=""
trapvisor=""
tv_args=""
kill_after=0
while getopts "e:t:a:n:H:P:w:q:V:A:k" opt; do
    case "$opt" in
        e) elf="$OPTARG" ;;
        t) timeout_s="$OPTARG" ;;
        a) accel="$OPTARG" ;;
        n) NS="$OPTARG" ;;
        H) host_cmd="$OPTARG" ;;
        P) pre_cmd="$OPTARG" ;;
        w) ready="$OPTARG" ;;
        q) queue_opts=",$OPTARG" ;;
        V) trapvisor="$OPTARG" ;;
        A) tv_args="$OPTARG" ;;
        k) kill_after=1 ;;
        *) sed -n '2,32p' "$0"; exit 64 ;;
    esac
done
shift $((OPTIND - 1))
if [ -z "$elf" ] && [ -z "$trapvisor" ]; then
    cargo build --quiet --release --manifest-path "$HERE/Cargo.toml" --target x86_64-unknown-none
    elf="$HERE/target/x86_64-unknown-none/release/trapvisor-guest"
fi
cpu_model=max
[ "$accel" = kvm ] && cpu_model="max,-arch-capabilities"
GUEST_IP=10.0.2.15
for w in "$@"; do
    case "$w" in net.ip=*) GUEST_IP="${w#net.ip=}"; GUEST_IP="${GUEST_IP%/*}" ;; esac
done
export NS HERE GUEST_IP
log="${TMPDIR:-/tmp}/$NS.log"
guest_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$guest_pid" ] && kill -0 "$guest_pid" 2>/dev/null; then
        # `timeout -k 5` passes SIGTERM on, and SIGKILLs a VMM that ignores it 5 s later.
        kill "$guest_pid" 2>/dev/null || true
        wait "$guest_pid" 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add tvq0 mode tap
ip -n "$NS" addr add 10.0.2.1/24 dev tvq0
ip -n "$NS" link set tvq0 up
: >"$log"
pre_pid=""
if [ -n "$pre_cmd" ]; then
    ip netns exec "$NS" sh -c "$pre_cmd" &
    pre_pid=$!
    sleep 0.3 # let it bind
fi
if [ -n "$trapvisor" ]; then
    kernel=()
    [ -n "$elf" ] && kernel=(--kernel "$elf")
    # shellcheck disable=SC2086 # -A is a list of words
    ip netns exec "$NS" timeout -k 5 "$timeout_s" "$trapvisor" run $tv_args "${kernel[@]}" \
        --net "tap=tvq0$queue_opts" --cmdline "$*" >"$log" 2>&1 &
else
    ip netns exec "$NS" timeout -k 5 "$timeout_s" qemu-system-x86_64 -accel "$accel" -M q35 \
        -cpu "$cpu_model" -m 256 -smp 1 -nographic -no-reboot -monitor none -serial stdio \
        -kernel "$elf" -append "$*" -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -netdev tap,id=n0,ifname=tvq0,script=no,downscript=no,vhost=off \
        -device "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=$queue_opts" >"$log" 2>&1 &
fi
guest_pid=$!
tail -n +1 -f "$log" --pid "$guest_pid" &
tail_pid=$!
host_rc=0
if [ -n "$host_cmd" ]; then
    waited=0
    until grep -Eq "$ready" "$log"; do
        if ! kill -0 "$guest_pid" 2>/dev/null || [ "$waited" -ge $((timeout_s * 10)) ]; then
            echo "run-qemu-net: the guest never printed /$ready/" >&2
            host_rc=1
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    if [ "$host_rc" -eq 0 ]; then
        set +e
        ip netns exec "$NS" sh -c "$host_cmd"
        host_rc=$?
        set -e
        echo "run-qemu-net: host command exited $host_rc" >&2
    fi
    if [ "$kill_after" -eq 1 ]; then
        kill "$guest_pid" 2>/dev/null || true
    fi
fi
set +e
wait "$guest_pid"
rc=$?
set -e
guest_pid=""
wait "$tail_pid" 2>/dev/null || true
if [ -n "$pre_pid" ]; then
    set +e
    wait "$pre_pid"
    pre_rc=$?
    set -e
    echo "run-qemu-net: host command (-P) exited $pre_rc" >&2
    [ "$pre_rc" -ne 0 ] && host_rc=$pre_rc
fi
if [ -n "$trapvisor" ]; then
    # trapvisor exits 0 for a PASS and when stopped by a signal: go by the guest's report.
    if grep -q "trapvisor-guest: FAIL" "$log"; then status=1
    elif grep -q "trapvisor-guest: PASS" "$log" && [ "$rc" -eq 0 ]; then status=0
    elif [ "$rc" -eq 124 ]; then status=124
    else status=2
    fi
else
    case "$rc" in
        1) status=0 ;;
        124) echo "run-qemu-net: timed out after ${timeout_s}s" >&2; status=124 ;;
        0) status=2 ;;
        *) if [ $((rc & 1)) -eq 1 ] && [ "$rc" -lt 128 ]; then status=1; else status=2; fi ;;
    esac
fi
if [ "$kill_after" -eq 1 ] && [ "$status" -eq 2 ]; then
    status=0 # the guest was stopped on purpose, without a report
fi
if [ "$status" -eq 0 ] && [ "$host_rc" -ne 0 ]; then
    status=3
fi
exit "$status"
