#!/usr/bin/env bash
# Runs one nested scenario's VMM inside L1 (scripts/nested/run.sh copies this file into the job
# directory; scenarios.sh calls it as "$L1RUN"), with what the NIC scenarios need around it:
#
#   l1-run.sh [--tap NAME] [--mq] [--iperf] [--hog] [--timeline] -- COMMAND...
#
#   --tap NAME   create the TAP NAME (10.0.2.1/24, up) before COMMAND, delete it afterwards;
#                the VMM attaches to it by name (trapvisor --net tap=NAME, QEMU -netdev tap)
#   --mq         make it a multiqueue TAP (IFF_MULTI_QUEUE, for queues=N)
#   --iperf      an iperf3 server on 10.0.2.1 while COMMAND runs (for l2.iperf=client:10.0.2.1)
#   --hog        once the console says "L2: phase loaded", a busy loop on L1's CPU 1 (as on a
#                busy host) until COMMAND ends
#   --pin        once the console says "L2: userspace up", L2's vCPU threads on L1's CPU 0 and
#                the VMM's other threads (and its vhost-net workers) on CPU 1 (an experiment:
#                does placement decide throughput?)
#   --timeline   the boot benchmark's marks on stderr, seconds since COMMAND started:
#                "l1-run: first_byte_s=S" (COMMAND's first byte of output: the L2's first
#                serial byte), "l1-run: banner_s=S" (the first line with "Linux version"),
#                "l1-run: exit_s=S" (COMMAND has exited), besides wall_to_userspace_s below
#
# Each console line "L2: iperf3 begin" samples the VMM process's CPU time (utime + stime);
# the next "L2: iperf3 ... mbps=" line adds "l1-run: vmm_cpu_s=S for LINE" on stderr (the
# VMM's CPU seconds during that iperf3 run; vhost-net's kernel threads not included), and
# "l1-run: cpu_split NAME=S ... for LINE": the seconds of each VMM thread by name, of the
# VMM's vhost-net kernel workers (vhost=), of L1's iperf3 server (iperf3=), and L1's idle
# seconds summed over its CPUs (l1_idle=): where L1's CPU went during the run.
#
# When COMMAND is "trapvisor run ...", it gets --api-socket /run/l1-run-api.sock (the path
# run.sh's job asks), so that a scenario about to time out can be asked for its statistics
# (run.sh's job does, with the threads' kernel stacks: DIR/NAME/hang).
#
# COMMAND's stdout (the L2 console) passes through unchanged; when a line starts with
# "L2: userspace up", the wall time since COMMAND started goes to stderr as
# "l1-run: wall_to_userspace_s=S". Exit status: COMMAND's (2 when the set-up failed).
set -uo pipefail

tap=
mq=
iperf=0
hog=0
pin=0
timeline=0
while [ $# -gt 0 ]; do
    case "$1" in
    --tap) tap=$2; shift 2 ;;
    --mq) mq=multi_queue; shift ;;
    --iperf) iperf=1; shift ;;
    --hog) hog=1; shift ;;
    --pin) pin=1; shift ;;
    --timeline) timeline=1; shift ;;
    --) shift; break ;;
    *) echo "l1-run: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "l1-run: no command" >&2; exit 2; }

srv=
hogpid=
cleanup() {
    [ -z "$srv" ] || kill "$srv" 2>/dev/null
    [ -z "$hogpid" ] || kill "$hogpid" 2>/dev/null
    [ -z "$tap" ] || ip link del "$tap" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 143' TERM INT

if [ -n "$tap" ]; then
    # A scenario killed outright (timeout's SIGKILL) leaves its TAP behind: start afresh.
    ip link del "$tap" 2>/dev/null
    # shellcheck disable=SC2086 # $mq is one word or none
    ip tuntap add dev "$tap" mode tap $mq &&
        ip addr add 10.0.2.1/24 dev "$tap" &&
        ip link set "$tap" up || { echo "l1-run: cannot set up TAP $tap" >&2; exit 2; }
fi
if [ "$iperf" = 1 ]; then
    command -v iperf3 >/dev/null || { echo "l1-run: iperf3 is not installed" >&2; exit 2; }
    iperf3 -s -B 10.0.2.1 >/dev/null 2>&1 </dev/null &
    srv=$!
fi

api=/run/l1-run-api.sock
if [ "${1##*/}" = trapvisor ] && [ "${2:-}" = run ]; then
    rm -f "$api"
    set -- "$1" run --api-socket "$api" "${@:3}"
fi

# The VMM's CPU time in clock ticks (the newest process of COMMAND's name; one VMM at a time).
vmm=${1##*/}
vmm_ticks() {
    local p
    p=$(pgrep -n -x "${vmm:0:15}") || return
    awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null
}
hz=$(getconf CLK_TCK)

# vmm_pids: the VMM's pid (vmm_pid) and its vhost-net workers' (vmm_vhost), looked up once
# (not from a $(...) subshell, which would forget them).
vmm_pid=
vmm_vhost=
vmm_pids() {
    [ -z "$vmm_pid" ] || return 0
    vmm_pid=$(pgrep -n -x "${vmm:0:15}") || return 0
    vmm_vhost=$(pgrep -x "vhost-$vmm_pid")
}

# Where the CPU went, as "NAME TICKS" lines: each thread of the VMM by its name (spaces made
# _), vhost-net's kernel workers of that VMM (vhost), L1's iperf3 server (iperf3), and L1's
# idle time over all its CPUs (l1_idle).
cpu_split() {
    local f t
    [ -n "$vmm_pid" ] || return 0
    f=(/proc/"$vmm_pid"/task/*/stat)
    for t in $vmm_vhost; do f+=("/proc/$t/stat"); done
    [ -z "$srv" ] || f+=("/proc/$srv/stat")
    # One process for all of it (a fork is slow in an emulated L1, and this runs while L2's
    # iperf3 does): the name between the first "(" and the last ")", the ticks after.
    awk -v srv="/proc/$srv/stat" '
        FILENAME == "/proc/stat" { if ($1 == "cpu") print "l1_idle", $5 + $6; next }
        { n = substr($0, index($0, "(") + 1); n = substr(n, 1, match(n, /\) [A-Z] /) - 1)
          rest = substr($0, match($0, /\) [A-Z] /) + 2); split(rest, v, " ")
          if (FILENAME == srv) n = "iperf3"; else if (n ~ /^vhost-/) n = "vhost"
          gsub(/ /, "_", n); print n, v[12] + v[13] }' "${f[@]}" /proc/stat 2>/dev/null
}

# --pin: L2's vCPU threads on L1's CPU 0, every other thread of the VMM (and its vhost-net
# workers) on CPU 1.
pin_threads() {
    local t
    vmm_pids
    [ -n "$vmm_pid" ] || return 0
    for t in /proc/"$vmm_pid"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in
        vcpu* | "CPU "*) taskset -p -c 0 "${t##*/}" >/dev/null ;;
        *) taskset -p -c 1 "${t##*/}" >/dev/null ;;
        esac
    done
    for t in $vmm_vhost; do taskset -p -c 1 "$t" >/dev/null; done
    echo "l1-run: pinned vCPU threads to CPU 0, the rest to CPU 1" >&2
}

# since NAME: "l1-run: NAME_s=S" on stderr, S the seconds since COMMAND started.
since() {
    awk -v s="$start" -v e="$EPOCHREALTIME" -v n="$1" 'BEGIN { printf "l1-run: %s_s=%.2f\n", n, e - s }' >&2
}

start=$EPOCHREALTIME
"$@" | {
    t0=
    first=
    banner=0
    # The first byte on its own (a console line can take long to arrive, byte by byte).
    if [ "$timeline" = 1 ] && IFS= read -r -N 1 first; then
        since first_byte
        [ "$first" != $'\n' ] || { printf '\n'; first=; }
    fi
    while IFS= read -r line || [ -n "$first$line" ]; do
        line=$first$line
        first=
        printf '%s\n' "$line"
        case "$line" in
        "L2: userspace up"*)
            since wall_to_userspace
            [ "$pin" = 0 ] || pin_threads
            ;;
        *"Linux version "*)
            [ "$timeline" = 0 ] || [ "$banner" = 1 ] || { since banner; banner=1; }
            ;;
        "L2: phase loaded"*)
            if [ "$hog" = 1 ] && [ -z "$hogpid" ]; then
                timeout 600 taskset -c 1 sh -c 'while :; do :; done' &
                hogpid=$!
            fi
            ;;
        "L2: iperf3 begin"*)
            t0=$(vmm_ticks)
            vmm_pids
            split0=$(cpu_split)
            ;;
        "L2: iperf3 "*mbps=*)
            t1=$(vmm_ticks)
            [ -z "$t0" ] || [ -z "$t1" ] ||
                awk -v a="$t0" -v b="$t1" -v hz="$hz" -v l="${line%$'\r'}" \
                    'BEGIN { printf "l1-run: vmm_cpu_s=%.2f for %s\n", (b - a) / hz, l }' >&2
            # "l1-run: cpu_split NAME=S ... for LINE": seconds each used during the run.
            [ -z "${split0:-}" ] || { echo "$split0" | sed 's/^/0 /'; cpu_split | sed 's/^/1 /'; } |
                awk -v hz="$hz" -v l="${line%$'\r'}" '
                    $1 == 0 { a[$2] += $3; next }
                    { b[$2] += $3; if (($2 in a) && !($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
                    END { printf "l1-run: cpu_split"
                          for (i = 1; i <= n; i++) printf " %s=%.2f", order[i], (b[order[i]] - a[order[i]]) / hz
                          printf " for %s\n", l }' >&2
            t0= split0=
            ;;
        esac
    done
    [ -z "$hogpid" ] || kill "$hogpid" 2>/dev/null
}
rc=${PIPESTATUS[0]}
[ "$timeline" = 0 ] || since exit
exit "$rc"
