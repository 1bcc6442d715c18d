#!/usr/bin/env bash
# Boot benchmark, in one emulated-SVM L1 (a benchmark, not a pass/fail test: L1 runs under TCG,
# so absolute times mean nothing; only ratios between VMMs inside one L1 run do):
#
#   scripts/nested/boot-bench.sh [--rounds N] [--memory SIZE] [--before PATH]
#                                [--other NAME=PATH]... [--variant NAME=ARGS]...
#                                [--append NAME=PARAMS]... [--firecracker PATH]
#                                [--cloud-hypervisor PATH] [--initcalls N] [--verbose]
#                                [--with ERE] [--out DIR] [--trapvisor PATH] [--report]
#
# The same Debian kernel and L2 initramfs (scripts/nested/guest-kit.sh), 1 vCPU, SIZE of RAM
# (default 256M), booted to the initramfs's first userspace line and straight to the end
# (l2.boot=1: poweroff, or reboot for Firecracker, which has no ACPI power-off) by:
#   tv-pvh   trapvisor, the ELF vmlinux through its PVH entry
#   tv-bz    trapvisor, the bzImage (the kernel decompresses itself first)
#   qemu     QEMU q35 (-accel kvm -cpu host -nodefaults), the bzImage (SeaBIOS, linuxboot)
#   before   --before PATH: another trapvisor build, vmlinux (the A/B of a change)
#   NAME     --other NAME=PATH: the same for more builds (one per change)
#   NAME     --variant NAME=ARGS: trapvisor vmlinux with ARGS added to "run" (an option's A/B)
#   NAME     --append NAME=PARAMS: trapvisor vmlinux with kernel parameters added (a hint's A/B)
#   fc       --firecracker PATH: Firecracker (--no-api, a config file), the vmlinux
#   ch       --cloud-hypervisor PATH: Cloud Hypervisor, the vmlinux (PVH)
# Firecracker and Cloud Hypervisor binaries are never downloaded or built: give their paths
# (copied next to the results; L1 sees the host's files).
#
# Per round every VMM boots once, in an order shuffled per round (seeded by the round's number).
# A boot's speed depends on the boot before it: in one 9-round run with the order rotating (so
# each VMM always followed the same one), the build that always came right after QEMU's boot
# read the kernel into guest RAM in 0.52-0.70 s every time, the same reads by another build
# took 0.26-0.48 s in some rounds and 1.2-2.3 s in others (strace in L1: the first 14.7 MB
# read() alone 0.13 s or 0.7-1.5 s): the same binary reading the same file, so the difference
# is in L1, most likely the state the boot before left its memory in. Each boot's marks, in L1 wall
# seconds from the VMM's start (scripts/nested/l1-run.sh --timeline): the first serial byte,
# the kernel banner ("Linux version"), the userspace marker, the VMM's exit; and the L2's own
# uptime at the marker (the kernel's share: its clock starts early in the kernel; wall minus
# uptime is the VMM's share, with the bzImage's decompression and QEMU's firmware in it).
# The console is quiet (loglevel=4, as in the scenarios: every console byte costs two exits,
# ~1 ms here, and this L1 makes the kernel print a 2.5 KB XSAVE warning at loglevel 5), so the
# first byte is the userspace marker's and there is no banner; --verbose boots with loglevel=5
# instead (banner and first byte early, ~9,000 more serial exits per boot). trapvisor runs with --stats: its start phases and
# its exits by device and region (the boot to userspace, then poweroff: nothing else runs in
# between). After the rounds, one more boot each of tv-pvh, qemu (and fc, ch) with the kernel's
# initcall_debug: the N slowest initcalls (default 12) and the time in all of them.
#
# --with ERE also runs the scripts/nested/scenarios.sh scenarios matching ERE, first, in the same
# L1 (their verdicts count for the exit status).
#
# Output: DIR/boot.txt (default DIR .cache/nested/boot-bench): the medians over the rounds and
# the ratios to QEMU, then tv-pvh's time to userspace over each other VMM's in the same round
# (median, rounds it was sooner, every ratio), trapvisor's exits, the initcalls, with the
# host's load average;
# DIR/boot.tsv (every figure), DIR/results/NAME/ (consoles, stderr with --stats).
# --report only prints the tables of an earlier run's results.
# Hold the machine's L1 lock when others share the machine:
#   flock LOCKFILE scripts/nested/boot-bench.sh   (the lock file the machine's users share)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/scripts/nested"
rounds=3
mem=256M
others=()
fc=
ch=
ninit=12
# What of the kernel log the initcall boots print too (clock and TSC set-up, PCI probing).
klog='tsc:|[Cc]alibrat|MMCONFIG|PCI:|peer|aperture|AGP|i8042|serial8250'
report=0
variants=()
appends=()
with=
loglevel=4
out="$root/.cache/nested/boot-bench"
tv="$root/target/release/trapvisor"
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --memory) mem=$2; shift 2 ;;
    --before) others+=("before=$2"); shift 2 ;;
    --other) others+=("$2"); shift 2 ;;
    --variant) variants+=("$2"); shift 2 ;;
    --firecracker) fc=$2; shift 2 ;;
    --cloud-hypervisor) ch=$2; shift 2 ;;
    --initcalls) ninit=$2; shift 2 ;;
    --append) appends+=("$2"); shift 2 ;;
    --verbose) loglevel=5; shift ;;
    --with) with=$2; shift 2 ;;
    --report) report=1; shift ;;
    --out) out=$2; shift 2 ;;
    --trapvisor) tv=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "boot-bench: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
die() {
    echo "boot-bench: $*" >&2
    exit 2
}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive number"
[[ "$ninit" =~ ^[0-9]+$ ]] || die "--initcalls wants a number"
[[ "$mem" =~ ^[0-9]+[MG]$ ]] || die "--memory wants SIZE like 256M or 1G"

mkdir -p "$out/bin"
out=$(cd "$out" && pwd)
# run.sh empties its results directory: the scenario file and the binaries live beside it.
res="$out/results"
scen="$out/scenarios.sh"

kinds=(tv-pvh tv-bz qemu)
declare -A vargs cparams
if [ "$report" = 0 ]; then
    for o in "${others[@]}"; do
        name=${o%%=*}
        [[ "$name" =~ ^[a-z][a-z0-9]*$ ]] && [ "$name" != "$o" ] ||
            die "--other wants NAME=PATH, NAME lower-case letters and digits (not '$o')"
        case " ${kinds[*]} " in *" $name "*) die "--other $name: that name is taken" ;; esac
        cp "${o#*=}" "$out/bin/trapvisor-$name" || die "--other $o: cannot copy it"
        kinds+=("$name")
    done
    if [ -n "$fc" ]; then
        cp "$fc" "$out/bin/firecracker" || die "--firecracker $fc: cannot copy it"
        kinds+=(fc)
    fi
    if [ -n "$ch" ]; then
        cp "$ch" "$out/bin/cloud-hypervisor" || die "--cloud-hypervisor $ch: cannot copy it"
        kinds+=(ch)
    fi
    for v in "${variants[@]}"; do
        name=${v%%=*}
        [[ "$name" =~ ^[a-z][a-z0-9]*$ ]] && [ "$name" != "$v" ] ||
            die "--variant wants NAME=ARGS, NAME lower-case letters and digits (not '$v')"
        case " ${kinds[*]} " in *" $name "*) die "--variant $name: that name is taken" ;; esac
        vargs[$name]=${v#*=}
        kinds+=("$name")
    done
    for v in "${appends[@]}"; do
        name=${v%%=*}
        [[ "$name" =~ ^[a-z][a-z0-9]*$ ]] && [ "$name" != "$v" ] ||
            die "--append wants NAME=PARAMS, NAME lower-case letters and digits (not '$v')"
        case " ${kinds[*]} " in *" $name "*) die "--append $name: that name is taken" ;; esac
        cparams[$name]=${v#*=}
        kinds+=("$name")
    done
fi

# The L2 command line: serial console, errors only (or with the banner, a notice), the boot mode
# of the L2 init.
cmd="console=ttyS0 panic=-1 loglevel=$loglevel l2.boot=1"
{
    echo "# generated by scripts/nested/boot-bench.sh"
    [ -z "$with" ] || echo "source '$here/scenarios.sh'"
    printf 'BB_BIN=%q\nBB_MEM=%q\nBB_CMD=%q\n' "$out/bin" "$mem" "$cmd"
    for v in "${!vargs[@]}"; do
        printf 'BB_VARGS_%s=%q\n' "$v" "${vargs[$v]}"
    done
    for v in "${!cparams[@]}"; do
        printf 'BB_PARAMS_%s=%q\n' "$v" "${cparams[$v]}"
    done
    printf 'BB_OTHERS=%q\n' " ${others[*]%%=*} "
    cat <<'EOF'
# boot NAME KIND EXTRA_CMDLINE
boot() {
    local name=$1 kind=$2 c="$BB_CMD $3" mib=${BB_MEM%M} vargs= src=$TRAPVISOR exe=trapvisor
    # The binary each kind runs; another build (--other) has its own, a variant (--variant) its
    # extra arguments and kernel parameters; QEMU is L1's own (nothing to copy).
    case "$kind" in
    tv-pvh | tv-bz) ;;
    qemu) src= ;;
    fc) src=$BB_BIN/firecracker exe=firecracker ;;
    ch) src=$BB_BIN/cloud-hypervisor exe=cloud-hypervisor ;;
    *)
        case "$BB_OTHERS" in
        *" $kind "*) src=$BB_BIN/trapvisor-$kind exe=trapvisor-$kind ;;
        *) eval "vargs=\${BB_VARGS_$kind:-}; c=\"\$c \${BB_PARAMS_$kind:-}\"" ;;
        esac
        ;;
    esac
    # Every VMM reads the kernel and the initramfs from L1's RAM (its tmpfs /tmp), copied there
    # before the first boot's clock starts, so that no VMM's time holds reads over 9p from the
    # host; and runs from a copy of its binary there (its code faulted in from 9p, page by
    # page, cost trapvisor's start 50-260 ms before it had parsed its arguments: 0.2 ms on a
    # host). QEMU is the L1's own, with its libraries.
    local bin=/tmp/bb-kit/bin/$exe
    local pre="mkdir -p /tmp/bb-kit/bin && for f in vmlinux vmlinuz l2.cpio.gz; do [ -s /tmp/bb-kit/\$f ] || cp -L '$KIT'/\$f /tmp/bb-kit/ || exit 1; done; [ -z '$src' ] || [ -x '$bin' ] || cp -L '$src' '$bin' || exit 1; exec \"\$@\""
    local KIT=/tmp/bb-kit
    [ "$mib" != "$BB_MEM" ] || mib=$((${BB_MEM%G} * 1024))
    case "$kind" in
    tv-pvh | tv-bz)
        local k=$KIT/vmlinux
        [ "$kind" != tv-bz ] || k=$KIT/vmlinuz
        scenario "$name" 150 -- sh -c "$pre" sh "$L1RUN" --timeline -- "$bin" run --stats --kernel "$k" \
            --initrd "$KIT/l2.cpio.gz" --memory "$BB_MEM" --cmdline "$c l2.end=poweroff"
        ;;
    qemu)
        scenario "$name" 150 -- sh -c "$pre" sh "$L1RUN" --timeline -- "$QEMU" -accel kvm -M q35 -cpu host \
            -m "$BB_MEM" -smp 1 -display none -monitor none -serial stdio -nodefaults -no-reboot \
            -kernel "$KIT/vmlinuz" -initrd "$KIT/l2.cpio.gz" -append "$c l2.end=poweroff"
        ;;
    fc)
        # Firecracker powers nothing off: the i8042 reset (reboot=k) ends it.
        local cfg=$BB_BIN/fc-$name.json
        cat >"$cfg" <<JSON
{
  "boot-source": { "kernel_image_path": "$KIT/vmlinux", "initrd_path": "$KIT/l2.cpio.gz",
                   "boot_args": "$c reboot=k l2.end=reboot" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $mib }
}
JSON
        scenario "$name" 150 -- sh -c "$pre" sh "$L1RUN" --timeline -- "$bin" --no-api \
            --config-file "$cfg" --level Error
        ;;
    ch)
        scenario "$name" 150 -- sh -c "$pre" sh "$L1RUN" --timeline -- "$bin" \
            --kernel "$KIT/vmlinux" --initramfs "$KIT/l2.cpio.gz" --cmdline "$c l2.end=poweroff" \
            --cpus boot=1 --memory "size=$BB_MEM" --serial tty --console off
        ;;
    *)
        # shellcheck disable=SC2086 # the variant's arguments are words
        scenario "$name" 150 -- sh -c "$pre" sh "$L1RUN" --timeline -- "$bin" run --stats $vargs \
            --kernel "$KIT/vmlinux" --initrd "$KIT/l2.cpio.gz" --memory "$BB_MEM" \
            --cmdline "$c l2.end=poweroff"
        ;;
    esac
    expect "$name" userspace 'L2: userspace up uptime'
}
EOF
    # Each round in its own order: a shuffle seeded by the round's number (the same order for
    # the same round every time). Not a rotation: with one, every VMM always booted right after
    # the same other one, and what that boot left in L1's memory decides how fast the next one
    # reads its kernel into guest RAM (see the comment at the top).
    for r in $(seq 1 "$rounds"); do
        printf '%s\n' "${kinds[@]}" | awk -v seed="$r" '
            BEGIN { srand(seed) }
            { k[NR] = $0 }
            END {
                for (i = NR; i > 1; i--) { j = int(rand() * i) + 1; t = k[i]; k[i] = k[j]; k[j] = t }
                for (i = 1; i <= NR; i++) print k[i]
            }' | while read -r k; do
            echo "boot r$r-$k $k ''"
        done
    done
    if [ "$ninit" != 0 ]; then
        for k in tv-pvh qemu ${fc:+fc} ${ch:+ch}; do
            echo "boot ic-$k $k 'initcall_debug l2.initcalls=$ninit l2.klog=$klog'"
        done
    fi
} >"$scen"

status=0
if [ "$report" = 0 ]; then
    only='^(r[0-9]+|ic)-'
    [ -z "$with" ] || only="^((r[0-9]+|ic)-.*|${with#^})"
    bash "$here/run.sh" --scenarios "$scen" --only "$only" --out "$res" --trapvisor "$tv" || status=$?
fi

# --- figures ---------------------------------------------------------------------------------
# One row per boot: round kind first_byte banner userspace uptime vmm_share exit exits kvm_exits
# start_ms (exits: those that reached the VMM, kvm_exits: all of KVM's, trapvisor only).
tsv="$out/boot.tsv"
printf 'round\tkind\tfirst_byte_s\tbanner_s\tuserspace_s\tuptime_s\tvmm_share_s\texit_s\texits\tkvm_exits\tstart_ms\n' >"$tsv"
val() { # val FILE ERE_WITH_ONE_GROUP: the group of the first line that matches
    { tr -d '\r' <"$1" | sed -n -E "s/^.*$2.*\$/\\1/p" | head -n 1; } 2>/dev/null || true
}
for d in "$res"/r*-*; do
    [ -d "$d" ] || continue
    name=${d##*/}
    r=${name%%-*}
    k=${name#*-}
    fb=$(val "$d/stderr" 'l1-run: first_byte_s=([0-9.]+)')
    bn=$(val "$d/stderr" 'l1-run: banner_s=([0-9.]+)')
    us=$(val "$d/stderr" 'l1-run: wall_to_userspace_s=([0-9.]+)')
    up=$(val "$d/console" 'L2: userspace up uptime=([0-9.]+)')
    ex=$(val "$d/stderr" 'l1-run: exit_s=([0-9.]+)')
    share=
    [ -z "$us" ] || [ -z "$up" ] || share=$(awk -v a="$us" -v b="$up" 'BEGIN { printf "%.2f", a - b }')
    exits=$(val "$d/stderr" 'all vcpus: ([0-9]+) exits')
    kexits=$(val "$d/stderr" '  exits: ([0-9]+) taken by KVM')
    startms=$(val "$d/stderr" '; ([0-9.]+) to the first KVM_RUN')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${r#r}" "$k" "${fb:--}" "${bn:--}" \
        "${us:--}" "${up:--}" "${share:--}" "${ex:--}" "${exits:--}" "${kexits:--}" "${startms:--}" >>"$tsv"
done

# --report: as many rounds as the results hold.
[ "$report" = 0 ] || rounds=$(awk -F'\t' 'NR > 1 && $1 + 0 > m { m = $1 + 0 } END { print m + 0 }' "$tsv")
{
    echo "nested boot: $rounds round(s), ${mem} RAM, 1 vCPU; L1 wall seconds from the VMM's start, medians; host load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    awk -F'\t' '
    # The values listed under key, sorted into a[1..n]; n.
    function sorted(key, a,   n, i, j, t) {
        n = split(vals[key], a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n
    }
    function median(key,   n, a) {
        if (vals[key] == "") return ""
        n = sorted(key, a)
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    BEGIN { CONVFMT = "%.17g" }
    NR == 1 { for (c = 3; c <= NF; c++) col[c] = $c; next }
    {
        if (!($2 in seen)) { seen[$2] = 1; order[++nk] = $2 }
        if ($5 ~ /^[0-9.]+$/) us[$1 SUBSEP $2] = $5
        for (c = 3; c <= NF; c++) if ($c ~ /^-?[0-9.]+$/) { vals[$2 SUBSEP c] = vals[$2 SUBSEP c] " " $c }
        runs[$2]++
    }
    END {
        printf "%-10s %5s %10s %9s %10s %9s %9s %8s %9s %9s %10s %9s\n", "vmm", "boots", "1st byte", "banner", "userspace", "L2 uptime", "VMM share", "exit", "us/qemu", "exits", "KVM exits", "start ms"
        q = median("qemu" SUBSEP 5)
        for (i = 1; i <= nk; i++) {
            k = order[i]
            u = median(k SUBSEP 5)
            printf "%-10s %5d %10s %9s %10s %9s %9s %8s %9s %9s %10s %9s\n", k, runs[k],
                median(k SUBSEP 3), median(k SUBSEP 4), u, median(k SUBSEP 6), median(k SUBSEP 7),
                median(k SUBSEP 8), (u != "" && q > 0) ? sprintf("%.2f", u / q) : "-",
                median(k SUBSEP 9), median(k SUBSEP 10), median(k SUBSEP 11)
        }
        # Round by round (L1 drifts in speed over minutes, the boots of a round are seconds
        # apart): the wall time to userspace of trapvisor PVH over that of each other VMM, per round.
        for (i = 1; i <= nk; i++) {
            k = order[i]
            if (k == "tv-pvh") continue
            won = 0; list = ""
            for (key in us) {
                split(key, p, SUBSEP)
                if (p[2] != k || !((p[1] SUBSEP "tv-pvh") in us)) continue
                r = us[p[1] SUBSEP "tv-pvh"] / us[key]
                vals["ratio" SUBSEP k] = vals["ratio" SUBSEP k] " " r; won += (r < 1)
            }
            if (vals["ratio" SUBSEP k] == "") continue
            n = sorted("ratio" SUBSEP k, a)
            for (x = 1; x <= n; x++) list = list sprintf(" %.2f", a[x])
            if (!hdr++) print "\ntv-pvh userspace / the other VMM'"'"'s in the same round (< 1: trapvisor PVH sooner):"
            printf "  %-10s median %.2f, sooner in %d of %d rounds; sorted:%s\n", k, median("ratio" SUBSEP k), won, n, list
        }
    }' "$tsv"
    echo
    echo "(1st byte, banner, userspace, exit: L1 wall s since the VMM started; L2 uptime: the guest's"
    echo " clock at the userspace marker; VMM share = userspace - L2 uptime; us/qemu: userspace / QEMU's;"
    echo " exits: those that reached trapvisor, KVM exits: all KVM took (KVM's statistics fd); start ms:"
    echo " trapvisor's start, exec to the first KVM_RUN)"
    # trapvisor's exits by device and region, both directions together, in the last round's
    # boot of each trapvisor kind.
    for k in $(awk -F'\t' 'NR > 1 && !s[$2]++ { print $2 }' "$tsv"); do
        case "$k" in qemu | fc | ch) continue ;; esac
        f=
        for r in $(seq "$rounds" -1 1); do
            [ ! -s "$res/r$r-$k/stderr" ] || { f="$res/r$r-$k"; break; }
        done
        [ -n "$f" ] || continue
        echo
        echo "exits to trapvisor by device and region, $k (${f##*/}): $(val "$f/stderr" '(all vcpus: [0-9]+ exits)')"
        tr -d '\r' <"$f/stderr" | awk '
            /^all vcpus:/ { on = 1; next }
            on && !/^  / { on = 0 }
            # "  io-out   pio serial0 THR/RBR   314  p50 p99 max": reason, where, count, times.
            on && NF >= 6 && $1 != "reason" && $2 != "(all)" {
                w = $2; for (i = 3; i <= NF - 4; i++) w = w " " $i
                c[w] += $(NF - 3)
            }
            END { for (w in c) printf "  %8d  %s\n", c[w], w }' | sort -rn | head -n 12
        tr -d '\r' <"$f/stderr" | grep -E '^(start phases|  exits: .* taken by KVM)' | sed 's/^ */  /' || true
        tr -d '\r' <"$f/stderr" | grep -E '^  (pf_fixed|insn_emulation|irq_window_exits|halt_exits|io_exits|mmio_exits) ' |
            awk '{ printf "  kvm %s=%s", $1, $2 } END { if (NR) print "" }' || true
    done
    # The slowest initcalls (initcall_debug), side by side.
    for d in "$res"/ic-*; do
        [ -s "$d/console" ] || continue
        echo
        echo "slowest initcalls, ${d##*/ic-}: $(tr -d '\r' <"$d/console" | sed -n 's/^L2: initcalls //p' | head -n 1)"
        tr -d '\r' <"$d/console" | sed -n 's/^L2: initcall \([^ ]*\) usecs=\([0-9]*\)$/  \2 us  \1/p'
        tr -d '\r' <"$d/console" | sed -n 's/^L2: klog /    log: /p'
    done
} >"$out/boot.txt"
cat "$out/boot.txt" >&2
exit "$status"
