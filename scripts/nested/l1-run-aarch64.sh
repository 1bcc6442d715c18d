#!/bin/sh
# Runs one aarch64 nested scenario's VMM inside L1 (busybox sh: the arm64 L1 has no bash), with
# what the NIC scenarios need around it; the aarch64 twin of l1-run.sh:
#
#   l1-run.sh [--tap NAME] [--iperf] -- COMMAND...
#
#   --tap NAME   create the TAP NAME (busybox tunctl, persistent) with 10.0.2.1/24, up, before
#                COMMAND, and delete it afterwards; the VMM attaches to it by name
#   --iperf      an iperf3 server on 10.0.2.1 while COMMAND runs
#
# An argument of COMMAND containing @L1_EPOCH@ gets L1's clock there (seconds since the epoch),
# e.g. l2.date_ref=@L1_EPOCH@ for the L2's RTC check. "trapvisor run" gets --api-socket
# /run/l1-run-api.sock (the job's post-mortem asks it for statistics). COMMAND's stdout passes
# through; on "L2: userspace up" the wall time since COMMAND started goes to stderr as
# "l1-run: wall_to_userspace_s=S". Exit status: COMMAND's (2 when the set-up failed).
tap=
iperf=0
while [ $# -gt 0 ]; do
    case "$1" in
    --tap) tap=$2; shift 2 ;;
    --iperf) iperf=1; shift ;;
    --) shift; break ;;
    *) echo "l1-run: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "l1-run: no command" >&2; exit 2; }

srv=
cleanup() {
    [ -z "$srv" ] || kill "$srv" 2>/dev/null
    [ -z "$tap" ] || tunctl -d "$tap" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 143' TERM INT

if [ -n "$tap" ]; then
    tunctl -d "$tap" >/dev/null 2>&1
    tunctl -t "$tap" >/dev/null &&
        ip addr add 10.0.2.1/24 dev "$tap" &&
        ip link set "$tap" up || { echo "l1-run: cannot set up TAP $tap" >&2; exit 2; }
fi
if [ "$iperf" = 1 ]; then
    iperf3 -s -B 10.0.2.1 >/dev/null 2>&1 </dev/null &
    srv=$!
fi

now=$(date +%s)
api=/run/l1-run-api.sock
first=1
for a in "$@"; do
    [ "$first" = 1 ] && { shift $#; first=0; }
    case "$a" in
    *@L1_EPOCH@*) a="${a%%@L1_EPOCH@*}$now${a#*@L1_EPOCH@}" ;;
    esac
    set -- "$@" "$a"
done
if [ "${1##*/}" = trapvisor ] && [ "${2:-}" = run ]; then
    rm -f "$api"
    cmd=$1
    shift 2
    set -- "$cmd" run --api-socket "$api" "$@"
fi

rcfile=/tmp/l1-run.rc.$$
# Times from /proc/uptime (busybox's date has no %N).
start=$(cut -d' ' -f1 /proc/uptime)
{ "$@"; echo $? >"$rcfile"; } | while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
    "L2: userspace up"*)
        awk -v s="$start" -v e="$(cut -d' ' -f1 /proc/uptime)" \
            'BEGIN { printf "l1-run: wall_to_userspace_s=%.2f\n", e - s }' >&2
        ;;
    esac
done
rc=$(cat "$rcfile" 2>/dev/null || echo 2)
rm -f "$rcfile"
exit "$rc"
