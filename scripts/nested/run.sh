#!/usr/bin/env bash
# The nested harness (issue #9): boots one L1 (Debian's kernel under QEMU TCG, which emulates
# AMD SVM, so L1 has a real /dev/kvm) and runs the scenarios of scripts/nested/scenarios.sh in it,
# one after the other; then judges each one.
#
#   scripts/nested/run.sh [--arch x86_64|aarch64] [--out DIR] [--trapvisor PATH] [--only ERE]
#                         [--all] [--timeout S] [--scenarios FILE] [--list]
#
#   --arch A         x86_64 (default: the L1 above) or aarch64: Debian's arm64 kernel at EL2 under
#                    qemu-system-aarch64 (-M virt,virtualization=on,gic-version=3), so L1 has an
#                    arm64 /dev/kvm; the scenarios of scenarios-aarch64.sh, the kit of
#                    kit-aarch64.sh, an aarch64 trapvisor (default
#                    target/aarch64-unknown-linux-musl/release/trapvisor). L1 cannot see the
#                    host's files there: the job travels in L1's initramfs and the results come
#                    back as a tar stream over a virtio-serial port (DIR/results.tar)
#
#   --out DIR        results directory (default .cache/nested/results); emptied first
#   --trapvisor P    the binary to test (default target/release/trapvisor); copied into DIR.
#                    "none": no binary (one that does not build yet): only the scenarios named
#                    l1-* run (the harness's own checks), the others are reported SKIP
#   --only ERE       run only the scenarios whose name matches (slow ones included)
#   --all            run the slow scenarios too (by default they are left out)
#   --scenarios F    the scenario file (default scripts/nested/scenarios.sh)
#   --l1-memory MB   L1's RAM (default 4608: room for an L2 with RAM above 4 GiB)
#   --timeout S      bound on the whole L1 run (default: 120 + the scenarios' own limits)
#   --add FILE       copy FILE into the kit L1 sees ($KIT/NAME; repeatable), for a scenario file
#                    that boots something else (another kernel, a guest image)
#   --list           print the scenario names and exit
#   --direct         no L1: run the scenarios right here, on this machine's /dev/kvm (a real KVM
#                    on hardware: a developer machine), as root, in a new network namespace
#                    (the TAPs live there); the results look the same
# Environment: L1_TCG_THREAD=single runs L1's two vCPUs on one host thread (default multi, one
# each); WEDGE_GAP=S how long L1's boot or a gap between scenarios may stay silent (below);
# L1_APPEND="ARGS" adds to the x86_64 L1's kernel command line (an experiment: L1 keeps time
# with the HPET under TCG; L1_APPEND=tsc=reliable put it on the TSC and made the nested
# benchmark slower, 414 against ~560 Mbit/s of TX).
#
# One run at a time: a second one waits for the first (a lock on .cache/nested/.lock). Stopping
# this script, or the death of the process that started it, stops QEMU.
#
# Results: DIR/NAME/{console,stderr,rc,secs,verdict} for each scenario, DIR/summary.tsv
# (name, PASS/FAIL/XFAIL/XPASS, exit status, seconds, reason), DIR/l1-console.log, DIR/times
# (l1_kvm_ready_s, l1_total_s, qemu_exit, and l1_wedged SCENARIO when the watchdog below stopped
# an L1 that had stopped making progress), DIR/dmesg-diff-*.txt, DIR/compare.txt (the
# trapvisor/QEMU ratios of the l2-cmp pair, scripts/nested/compare.sh). Exit status 0 when no
# scenario FAILed (XFAIL: a known failure, marked in the scenario file), 1 when one did, 2 when
# the harness itself could not run (kit, QEMU, L1 boot).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/scripts/nested"

arch=x86_64
out=
tv=
only=
l1_mem=
all=0
scenarios=
total_timeout=
list=0
direct=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --arch) arch=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --trapvisor) tv=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --all) all=1; shift ;;
    --l1-memory) l1_mem=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --timeout) total_timeout=$2; shift 2 ;;
    --list) list=1; shift ;;
    --add) extra+=("$(realpath "$2")"); shift 2 ;;
    --direct) direct=1; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

die() {
    echo "nested: $*" >&2
    exit 2
}
case "$arch" in
x86_64)
    : "${out:=$root/.cache/nested/results}" "${tv:=$root/target/release/trapvisor}"
    : "${l1_mem:=4608}" "${scenarios:=$here/scenarios.sh}"
    ;;
aarch64)
    : "${out:=$root/.cache/nested/results-aarch64}"
    : "${tv:=$root/target/aarch64-unknown-linux-musl/release/trapvisor}"
    : "${l1_mem:=2048}" "${scenarios:=$here/scenarios-aarch64.sh}"
    [ "$direct" = 0 ] || die "--direct is for x86_64 machines (run the aarch64 scenarios on an arm64 host's /dev/kvm by hand)"
    ;;
*) die "--arch is x86_64 or aarch64, not '$arch'" ;;
esac
say() {
    echo "nested: $*" >&2 || true
}

# One L1 at a time on this machine (and one user of the results directory).
mkdir -p "$root/.cache/nested"
exec 9>"$root/.cache/nested/.lock"
if ! flock -n 9; then
    say "another nested run holds .cache/nested/.lock; waiting for it"
    flock 9
fi

# --- the scenario list -------------------------------------------------------------------------
names=()
declare -A timeout_of cmd_of rc_of checks_of slow_of xfail_of
scenario() {
    local name=$1 t=$2 slow=0
    shift 2
    [ "$1" != --slow ] || { slow=1; shift; }
    [ "$1" = -- ] && shift
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad scenario name '$name'"
    [ -z "${timeout_of[$name]+x}" ] || die "scenario '$name' defined twice"
    names+=("$name")
    timeout_of[$name]=$t
    cmd_of[$name]=$(printf '%q ' "$@")
    rc_of[$name]=0
    checks_of[$name]=
    slow_of[$name]=$slow
    xfail_of[$name]=
}
# A known failure: its failing checks give XFAIL (not a failure of the run), passing ones XPASS.
xfail() {
    xfail_of[$1]=$2
}
expect_rc() {
    rc_of[$1]=$2
}
# Checks are stored one a line: "+|-<TAB>label<TAB>regex".
expect() {
    checks_of[$1]+=$(printf '+\t%s\t%s' "$2" "$3")$'\n'
}
expect_not() {
    checks_of[$1]+=$(printf -- '-\t%s\t%s' "$2" "$3")$'\n'
}

mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ "$arch" = x86_64 ]; then
    HOSTKIT="$root/.cache/nested/kit"
    QEMU=$(command -v qemu-system-x86_64 || echo /usr/bin/qemu-system-x86_64)
    TRAPVISOR="$out/bin/trapvisor"
    # The wrapper for the NIC scenarios (TAP, iperf3 server, wall time to the userspace marker).
    L1RUN="$out/bin/l1-run.sh"
    # The wrapper for the disk scenarios (a fresh root image, L1's time, fsck afterwards).
    DISKRUN="$out/bin/disk-run.sh"
    # What the scenarios boot, as L1 sees it: a copy of the kit inside the job directory. The
    # host's root reaches L1 over 9p, but L1 puts a tmpfs on /tmp, so a checkout under /tmp (as
    # CI's can be) is invisible there; the job directory is mounted at its own path and always is.
    KIT="$out/kit"
else
    HOSTKIT="$root/.cache/nested/kit-arm64"
    # In L1's initramfs: /job (job.sh, bin/, kit/); the results are written under /results.
    TRAPVISOR=/job/bin/trapvisor
    L1RUN=/job/bin/l1-run.sh
    KIT=/job/kit
    DISKRUN=/nonexistent/disk-run.sh
    # No QEMU for arm64 in L1 (yet): scenarios that compare with it do not exist here.
    QEMU=/nonexistent/qemu-system-aarch64
fi
[ -f "$scenarios" ] || die "no scenario file $scenarios"
# shellcheck source=scenarios.sh
source "$scenarios"

selected=()
skipped=()
for n in "${names[@]}"; do
    if [ -n "$only" ]; then
        [[ "$n" =~ $only ]] || continue
    elif [ "$all" = 0 ] && [ "${slow_of[$n]}" = 1 ]; then
        continue
    fi
    if [ "$tv" = none ] && [[ "$n" != l1-* ]]; then
        skipped+=("$n")
    else
        selected+=("$n")
    fi
done
if [ "$list" = 1 ]; then
    printf '%s\n' "${selected[@]}"
    exit 0
fi
[ "${#selected[@]}" -gt 0 ] || die "no scenario matches '$only'"

# --- kit, binary, job ----------------------------------------------------------------------------
[ "$tv" = none ] || [ -x "$tv" ] || die "no trapvisor binary at $tv (cargo build --release, or --trapvisor PATH)"
if [ "$arch" = x86_64 ]; then
    kit=$(bash "$here/guest-kit.sh") || die "the guest kit could not be built"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed"
    kernel="$HOSTKIT/vmlinuz"
else
    kit=$(bash "$here/kit-aarch64.sh") || die "the aarch64 guest kit could not be built"
    if ! command -v qemu-system-aarch64 >/dev/null; then
        [ "$(id -u)" -eq 0 ] || die "qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)"
        say "installing qemu-system-arm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-arm >&2 ||
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-arm >&2; } ||
            die "apt-get install qemu-system-arm failed"
    fi
    kernel="$HOSTKIT/Image"
    # The binary must be an aarch64 one (a static musl build runs in L1's bare initramfs).
    [ "$tv" = none ] || [ "$(od -An -t u2 -j 18 -N 2 "$tv" | tr -d ' ')" = 183 ] ||
        die "$tv is not an aarch64 ELF"
fi
[ "$kit" = "$HOSTKIT" ] || die "the kit is at $kit, not $HOSTKIT"

# The results directory is also L1's job directory (virtfs tag 'job', read-write); L1 mounts it
# at the same path. Empty it, keeping nothing from an earlier run.
find "$out" -mindepth 1 -delete
if [ "$arch" = x86_64 ]; then
    mkdir -p "$out/bin" "$KIT"
    [ "$tv" = none ] || cp "$tv" "$TRAPVISOR"
    cp "$here/l1-run.sh" "$L1RUN"
    cp "$here/disk-run.sh" "$DISKRUN"
    # Hard links where the filesystem allows (no copy of 70 MB), else copies; -L follows the
    # kit's links into .cache/kernel.
    for f in vmlinuz vmlinux l2.cpio.gz rootfs.ext4 kver; do
        cp -L -l "$HOSTKIT/$f" "$KIT/$f" 2>/dev/null || cp -L "$HOSTKIT/$f" "$KIT/$f"
    done
    for f in "${extra[@]}"; do
        cp -L "$f" "$KIT/" || die "--add $f: cannot copy it"
    done
else
    # The tree that becomes /job in L1's initramfs.
    jobroot="$out/.jobroot"
    mkdir -p "$jobroot/job/bin" "$jobroot/job/kit" "$jobroot/results"
    [ "$tv" = none ] || cp "$tv" "$jobroot$TRAPVISOR"
    install -m 0755 "$here/l1-run-aarch64.sh" "$jobroot$L1RUN"
    for f in Image l2.cpio.gz kver; do
        cp -L -l "$HOSTKIT/$f" "$jobroot/job/kit/$f" 2>/dev/null || cp -L "$HOSTKIT/$f" "$jobroot/job/kit/$f"
    done
    for f in "${extra[@]}"; do
        cp -L "$f" "$jobroot/job/kit/" || die "--add $f: cannot copy it"
    done
fi
{
    cat <<'JOB'
#!/bin/sh
# Generated by scripts/nested/run.sh; run by L1: sh job.sh JOBDIR [PORT]. x86_64: in the host
# root (chroot), JOBDIR the host's results directory over 9p, results written there. aarch64: in
# L1's own initramfs, JOBDIR=/job; results under /results, each scenario's directory sent as a
# tar archive to PORT (a virtio-serial port) when it ends.
J=$1
PORT=${2:-}
R=$J
[ "$J" != /job ] || R=/results
cd "$J" || exit 1
# What every trapvisor process is doing: its threads' states, kernel stacks and CPU time, and
# its statistics from the API socket that l1-run.sh gives it.
dump_vmm() {
    for p in $(pgrep -x trapvisor 2>/dev/null || pidof trapvisor); do
        echo "== pid $p: $(tr '\0' ' ' </proc/$p/cmdline)"
        for d in /proc/$p/task/*; do
            echo "-- $(cat $d/comm) state=$(cut -d' ' -f3 $d/stat) wchan=$(cat $d/wchan) schedstat=$(cat $d/schedstat)"
            cat $d/stack 2>/dev/null
        done
        [ -S /run/l1-run-api.sock ] && timeout 20 "$J/bin/trapvisor" ctl --api-socket /run/l1-run-api.sock stats
    done
    # L1's KVM for one second: which exits the guests' vCPUs take (a vCPU that never leaves
    # KVM_RUN: is it the guest looping, or KVM?).
    tr=/sys/kernel/tracing
    [ -d $tr/events ] || mount -t tracefs nodev $tr 2>/dev/null
    if [ -d $tr/events/kvm ]; then
        echo >$tr/trace
        echo 1 >$tr/events/kvm/kvm_exit/enable
        echo 1 >$tr/events/kvm/kvm_inj_virq/enable 2>/dev/null
        echo 1 >$tr/events/kvm/kvm_inj_exception/enable 2>/dev/null
        sleep 1
        echo 0 >$tr/events/kvm/enable
        echo "== L1 kvm events in 1 s: by thread and event"
        grep -v '^#' $tr/trace | awk '{ k = $1 " " $5 " " $9; n[k]++ } END { for (k in n) print n[k], k }' | sort -rn | head -30
        echo "== the last of them"
        grep -v '^#' $tr/trace | tail -n 40
    fi
}
run_one() {
    n=$1; t=$2; shift 2
    mkdir -p "$R/$n"
    echo "L1: scenario $n start"
    s=$(cut -d' ' -f1 /proc/uptime)
    timeout -k 10 "$t" "$@" >"$R/$n/console" 2>"$R/$n/stderr" </dev/null &
    cmd=$!
    # 25 s before the limit (at 3/4 of a short one), a post-mortem of what is still running
    # (a hang's evidence).
    ( sleep $((t > 50 ? t - 25 : t * 3 / 4)) && dump_vmm >"$R/$n/hang" 2>&1 ) &
    watch=$!
    wait $cmd
    rc=$?
    kill $watch 2>/dev/null
    e=$(cut -d' ' -f1 /proc/uptime)
    secs=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }')
    echo "$secs" >"$R/$n/secs"
    echo "$rc" >"$R/$n/rc"
    [ -z "$PORT" ] || tar -cf - -C "$R" "$n" >"$PORT"
    echo "L1: scenario $n rc=$rc secs=$secs"
}
JOB
    for n in "${selected[@]}"; do
        echo "run_one $n ${timeout_of[$n]} ${cmd_of[$n]}"
    done
    echo 'sync'
} >"$out/job.sh"
if [ "$arch" = aarch64 ]; then
    # L1's initramfs: the kit's, then the job's (the kernel unpacks concatenated archives in
    # order), packed with the kit's host busybox.
    cp "$out/job.sh" "$jobroot/job/job.sh"
    hostbb=$(find "$root/.cache/nested/debs" -maxdepth 1 -name 'busybox-static_*_amd64.deb' | sort -V | tail -n 1)
    [ -n "$hostbb" ] || die "no busybox-static amd64 package in .cache/nested/debs (kit-aarch64.sh gets it)"
    mkdir -p "$out/.bb"
    dpkg-deb -x "$hostbb" "$out/.bb"
    (cd "$jobroot" && find . -mindepth 1 | LC_ALL=C sort | "$out/.bb/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) |
        gzip -1 >"$out/job.cpio.gz"
    cat "$HOSTKIT/l1.cpio.gz" "$out/job.cpio.gz" >"$out/l1-initrd.cpio.gz"
    rm -rf "$jobroot" "$out/.bb" "$out/job.cpio.gz"
    : >"$out/results.tar"
fi

# Bound on the whole run: L1 boot, and every scenario's limit plus its kill grace.
if [ -z "$total_timeout" ]; then
    total_timeout=120
    for n in "${selected[@]}"; do
        total_timeout=$((total_timeout + timeout_of[$n] + 10))
    done
fi

# --- L1 ------------------------------------------------------------------------------------------
# L1_TCG_THREAD=single: one host thread for both of L1's vCPUs instead of one each (to compare
# how often an L1 wedges under each; multi is the default).
tcg_thread=${L1_TCG_THREAD:-multi}
case "$tcg_thread" in multi | single) ;; *) die "L1_TCG_THREAD must be multi or single" ;; esac
# TCG with one thread per vCPU and a large translation cache; 'max' has SVM with nested paging.
# shellcheck disable=SC2054 # the commas are QEMU's
if [ "$direct" = 1 ]; then
    # No L1: the job runs here, in a network namespace of its own, and prints L1's markers.
    [ "$(id -u)" -eq 0 ] || die "--direct needs root (a network namespace, TAPs)"
    [ -c /dev/kvm ] || die "--direct needs /dev/kvm"
    # shellcheck disable=SC2016 # expanded by the inner shell
    qemu=(unshare --net sh -c 'ip link set lo up; echo "L1: kvm ready (direct)";
        sh "$1/job.sh" "$1"; echo "L1: job exited rc=$?"; echo "L1: powering off"' sh "$out")
elif [ "$arch" = aarch64 ]; then
    # EL2 for L1 (virtualization=on) with a GICv3 and its ITS (L1's KVM refuses GICv2 here);
    # pauth-impdef: TCG's faster pointer authentication. The results port: a virtio-serial port
    # named "results" written into DIR/results.tar.
    qemu=(nice -n 5 qemu-system-aarch64
        -accel "tcg,thread=$tcg_thread,tb-size=512" -M virt,virtualization=on,gic-version=3
        -cpu max,pauth-impdef=on -smp 2 -m "$l1_mem"
        -display none -monitor none -serial stdio -no-reboot -nodefaults
        -kernel "$kernel" -initrd "$out/l1-initrd.cpio.gz"
        -append "console=ttyAMA0 panic=-1 loglevel=3"
        -device virtio-serial-pci -chardev "file,id=results,path=$out/results.tar"
        -device virtserialport,chardev=results,name=results)
else
qemu=(nice -n 5 qemu-system-x86_64
    -accel "tcg,thread=$tcg_thread,tb-size=512" -cpu max -smp 2 -m "$l1_mem" -machine q35
    -display none -monitor none -serial stdio -no-reboot -nodefaults
    -kernel "$kernel" -initrd "$HOSTKIT/l1.cpio.gz"
    -append "console=ttyS0 panic=-1 loglevel=3 nested.job=$out${L1_APPEND:+ $L1_APPEND}"
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    -virtfs "local,path=$out,mount_tag=job,security_model=none")
fi
say "L1: ${#selected[@]} scenario(s), limit ${total_timeout}s: ${selected[*]}"
# A scenario's results are only this run's: a directory left by an earlier run must not lend a
# scenario that never ran here its old exit status.
for n in "${selected[@]}"; do
    rm -rf "${out:?}/$n"
done
start=$EPOCHREALTIME
kvm_ready=
l1_rc=0
: >"$out/l1-console.log"
timeout -k 10 "$total_timeout" "${qemu[@]}" </dev/null >>"$out/l1-console.log" 2>&1 &
qpid=$!
# Never leave L1 running: not when this script is stopped, nor when whoever started it is gone
# (a killed 'cargo test', say).
trap 'kill "$qpid" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM HUP
trap '' PIPE
me=$$
parent=$PPID
(
    while kill -0 "$qpid" 2>/dev/null; do
        if ! kill -0 "$me" 2>/dev/null || ! kill -0 "$parent" 2>/dev/null; then
            kill "$qpid" 2>/dev/null
            break
        fi
        sleep 2
    done
) </dev/null >/dev/null 2>&1 &
# L1's own progress lines to stderr, with the time since QEMU started; and the watchdog. An L1
# under TCG has, rarely, stopped as a whole (its own per-scenario timeouts then never fire): when
# no progress line comes for longer than the step it is in may take (a running scenario: its
# limit and the kill's grace plus a minute; L1's boot and between scenarios: WEDGE_GAP, default
# 240 s), L1 is stopped at once rather than at the bound on the whole run, and the scenarios that
# did not finish are reported so ("L1 wedged"), for a caller to run again on a fresh L1.
gap=${WEDGE_GAP:-240}
step=$gap
deadline=$((EPOCHSECONDS + step))
wedged=
current=
partial=
while :; do
    if IFS= read -r -t 5 part; then
        line=$partial$part
        partial=
    else
        # Past the timeout read keeps what it got of the line; anything else is the end.
        [ $? -gt 128 ] || break
        partial+=$part
        if [ -z "$wedged" ] && [ "$EPOCHSECONDS" -gt "$deadline" ]; then
            wedged=${current:-"(between scenarios)"}
            say "L1 wedged: no progress line for $((EPOCHSECONDS - deadline + step))s, in scenario $wedged; stopping it"
            kill "$qpid" 2>/dev/null || true
        fi
        continue
    fi
    line=${line%$'\r'}
    case "$line" in
    L1:*)
        t=$(awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }')
        say "[$t s] $line"
        step=$gap
        current=
        case "$line" in
        "L1: kvm ready"*) kvm_ready=$t ;;
        "L1: scenario "*" start")
            current=${line#L1: scenario }
            current=${current% start}
            step=$((${timeout_of[$current]:-$gap} + 10 + 60))
            ;;
        esac
        deadline=$((EPOCHSECONDS + step))
        ;;
    esac
done < <(tail -n +1 -f --pid="$qpid" "$out/l1-console.log" 2>/dev/null)
qemu_rc=0
wait "$qpid" || qemu_rc=$?
total=$(awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }')
{
    echo "l1_kvm_ready_s ${kvm_ready:-none}"
    echo "l1_total_s $total"
    echo "qemu_exit ${qemu_rc:-?}"
    [ -z "$wedged" ] || echo "l1_wedged $wedged"
} >"$out/times"
say "L1 finished after ${total}s (qemu exit ${qemu_rc:-?}, /dev/kvm ready at ${kvm_ready:-never}s)"
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    say "L1 ran past its ${total_timeout}s limit and was killed"
fi
if [ "$arch" = aarch64 ]; then
    # Each scenario's directory as a tar archive, one after the other (-i: past each end marker).
    [ ! -s "$out/results.tar" ] || tar -xif "$out/results.tar" -C "$out" ||
        say "the results stream is damaged; what could be read is in $out"
fi
grep -q '^L1: kvm ready' "$out/l1-console.log" || {
    say "L1 never had /dev/kvm; its console:"
    tail -n 40 "$out/l1-console.log" >&2 || true
    l1_rc=2
}

# --- verdicts --------------------------------------------------------------------------------------
failed=0
printf 'scenario\tverdict\trc\tsecs\treason\n' >"$out/summary.tsv"
for n in "${selected[@]}"; do
    d="$out/$n"
    reasons=()
    rc=$(cat "$d/rc" 2>/dev/null || true)
    secs=$(cat "$d/secs" 2>/dev/null || echo -)
    if [ -z "$rc" ]; then
        if [ -n "$wedged" ]; then
            reasons+=("did not finish (L1 wedged in $wedged)")
        else
            reasons+=("did not finish (L1 stopped first)")
        fi
        rc=-
    else
        [ "$rc" != 124 ] && [ "$rc" != 137 ] || reasons+=("timed out after ${timeout_of[$n]}s")
        [ "$rc" = "${rc_of[$n]}" ] || reasons+=("exit status $rc, expected ${rc_of[$n]}")
        while IFS=$'\t' read -r sign label re; do
            [ -n "$sign" ] || continue
            # grep reads to the end (no -q): a grep that quits at its first match leaves tr
            # writing into a closed pipe, and with pipefail that failure would read as "no
            # match" (seen: a check that matched line 12 of 80 reported as missing).
            if cat "$d/console" "$d/stderr" 2>/dev/null | tr -d '\r' | grep -E -- "$re" >/dev/null; then
                [ "$sign" = + ] || reasons+=("$label: found /$re/")
            else
                [ "$sign" = - ] || reasons+=("$label: no line matches /$re/")
            fi
        done <<<"${checks_of[$n]}"
    fi
    why=$(IFS=';'; echo "${reasons[*]}")
    if [ -n "${xfail_of[$n]}" ]; then
        if [ "${#reasons[@]}" -eq 0 ]; then
            verdict=XPASS
            why="known failure passed, drop its xfail line: ${xfail_of[$n]}"
        else
            verdict=XFAIL
            why="known failure (${xfail_of[$n]}): $why"
        fi
    elif [ "${#reasons[@]}" -eq 0 ]; then
        verdict=PASS
    else
        verdict=FAIL
        failed=$((failed + 1))
    fi
    [ ! -d "$d" ] || echo "$verdict${why:+: $why}" >"$d/verdict"
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$verdict" "$rc" "$secs" "$why" >>"$out/summary.tsv"
done

for n in "${skipped[@]}"; do
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" SKIP - - "no trapvisor binary (--trapvisor none)" >>"$out/summary.tsv"
done

# Reports that compare scenarios (informational, no verdict): the L2 kernel log under trapvisor
# against the one under QEMU (warnings only, and with --all the whole log).
for pair in l2-dmesg:dmesg-diff-warn.txt l2-dmesg-full:dmesg-diff-full.txt; do
    p=${pair%%:*}
    if [ -s "$out/$p-trapvisor/console" ] && [ -s "$out/$p-qemu/console" ]; then
        bash "$here/dmesg-diff.sh" "$out/$p-trapvisor/console" "$out/$p-qemu/console" \
            >"$out/${pair#*:}" 2>&1 || true
    fi
done

# trapvisor vs QEMU (the l2-cmp pair; informational).
if [ -s "$out/l2-cmp-trapvisor/console" ] && [ -s "$out/l2-cmp-qemu/console" ]; then
    bash "$here/compare.sh" "$out" >"$out/compare.txt" 2>&1 || true
    cat "$out/compare.txt" >&2 || true
fi

column -t -s $'\t' "$out/summary.tsv" >&2 2>/dev/null || cat "$out/summary.tsv" >&2 || true
say "L1 /dev/kvm ready ${kvm_ready:-never}s, whole run ${total}s, $failed of ${#selected[@]} failed${skipped:+, ${#skipped[@]} skipped}; results in $out"
[ "$l1_rc" = 0 ] || exit 2
[ "$failed" -eq 0 ] || exit 1
exit 0
