#!/usr/bin/env bash
# Runs one nested scenario's VMM inside L1 (scripts/nested/run.sh copies this file into the job
# directory; scenarios.sh calls it as "$L1RUN"), with what the NIC scenarios need around it:
#
#   l1-run.sh [--tap NAME] [--mq] [--iperf] -- COMMAND...
#
#   --tap NAME   create the TAP NAME (10.0.2.1/24, up) before COMMAND, delete it afterwards;
#                the VMM attaches to it by name (trapvisor --net tap=NAME, QEMU -netdev tap)
#   --mq         make it a multiqueue TAP (IFF_MULTI_QUEUE, for queues=N)
#   --iperf      an iperf3 server on 10.0.2.1 while COMMAND runs (for l2.iperf=client:10.0.2.1)
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
while [ $# -gt 0 ]; do
    case "$1" in
    --tap) tap=$2; shift 2 ;;
    --mq) mq=multi_queue; shift ;;
    --iperf) iperf=1; shift ;;
    --) shift; break ;;
    *) echo "l1-run: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "l1-run: no command" >&2; exit 2; }

srv=
cleanup() {
    [ -z "$srv" ] || kill "$srv" 2>/dev/null
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

start=$EPOCHREALTIME
"$@" | while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
    "L2: userspace up"*)
        awk -v s="$start" -v e="$EPOCHREALTIME" \
            'BEGIN { printf "l1-run: wall_to_userspace_s=%.2f\n", e - s }' >&2
        ;;
    esac
done
exit "${PIPESTATUS[0]}"
