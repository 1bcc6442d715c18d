# The nested scenarios (issue #9), sourced by scripts/nested/run.sh. Each one is a command that
# runs inside L1 (an emulated-SVM Linux with a real /dev/kvm) plus what its result must show:
#
#   scenario NAME TIMEOUT_S [--slow] -- COMMAND...
#                                the command (run under 'timeout', stdin /dev/null; stdout goes
#                                to NAME/console, stderr to NAME/stderr); --slow: only with --all
#   expect_rc NAME CODE          its exit status (124: it timed out)
#   expect NAME LABEL ERE        a line of console or stderr matches
#   expect_not NAME LABEL ERE    no line matches
#   xfail NAME REASON            a known failure: failing checks give XFAIL, not FAIL
#
# Variables: $TRAPVISOR (a copy of the binary under test), $KIT (the guest kit: vmlinuz, vmlinux,
# l2.cpio.gz, rootfs.ext4), $DISKRUN (scripts/nested/disk-run.sh), $QEMU (qemu-system-x86_64), $L1RUN (scripts/nested/l1-run.sh: a TAP and an iperf3
# server in L1 around the command). Paths are the host's: L1 sees the host's root at the
# same paths. The L2 initramfs's parameters (l2.end=, l2.dmesg=, ...) are described in
# scripts/nested/l2-init.sh.

# The L2 command line: serial console, reboot at once on panic, and only the kernel's errors on
# the console (every console byte costs two traps through two levels of virtualization, ~3 ms).
l2_cmdline="console=ttyS0 panic=-1 loglevel=4"
l2=(--initrd "$KIT/l2.cpio.gz" --memory 512M)
# What the dmesg scenarios print besides the log: MTRRdefType, PAT; the extended CPUID range and
# the first brand-string leaf.
l2_probe="l2.msr=0x2ff,0x277 l2.cpuid=0x80000000,0x80000002"

# --- the built-in guest under a real (not PVM) KVM ---------------------------------------------
scenario builtin-default 60 -- "$TRAPVISOR" run --cmdline "hello pio-loop=1000 mmio-loop=1000 cpl3"
expect_rc builtin-default 0
expect builtin-default pass 'guest reported PASS'

scenario builtin-smp4 60 -- "$TRAPVISOR" run --cpus 4 --cmdline smp
expect_rc builtin-smp4 0
expect builtin-smp4 four-cpus '4 cpus online'
expect builtin-smp4 pass 'guest reported PASS'

scenario builtin-triple-fault 60 -- "$TRAPVISOR" run --cmdline triple-fault
expect_rc builtin-triple-fault 1
expect builtin-triple-fault reported 'guest triple-faulted'

# --- the kernel half of the trap path (--trace-kernel) under a real KVM (SVM exits) --------------
# tracefs is mounted first (L1 does not mount it). One built-in guest run covers the exit reasons
# (port and MMIO loops, x2APIC MSRs, halting waits, the host's interrupts) and a virtio-net ping's
# flows; while the guest idles afterwards `ctl stats` prints both halves and `ctl histogram` draws
# them; then the trace's summary must show the kernel's share and the flows from the guest's kick
# through the kernel and trapvisor back to kvm_entry, with the injection (kvm_msi_set_irq) and its
# delivery (kvm_inj_virq). The trace, the histogram and the outputs stay in the scenario's
# results directory. (One line: job.sh runs under L1's sh, which reads no $'...' quoting.)
mount_tracefs='mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing'
ktrace_run="$mount_tracefs; "'t=$1; d=$2; s=/run/ktrace-api.sock; rm -f $s; "$t" run --trace-kernel --trace "$d/trace.json" --net tap=tv0 --api-socket $s --cmdline "$3 idle" >"$d/guest.out" 2>"$d/run.err" & pid=$!; n=0; until grep -q "idle: halted" "$d/guest.out" 2>/dev/null || [ $n -ge 600 ]; do n=$((n+1)); sleep 0.1; done; cat "$d/guest.out"; "$t" ctl --api-socket $s stats; "$t" ctl --api-socket $s histogram --svg "$d/histogram.svg"; "$t" ctl --api-socket $s shutdown; wait $pid; rc=$?; cat "$d/run.err" >&2; "$t" trace-summary --last 8 "$d/trace.json"; exit $rc'
scenario builtin-ktrace 90 -- "$L1RUN" --tap tv0 -- sh -c "$ktrace_run" sh "$TRAPVISOR" \
    "$out/builtin-ktrace" "pio-loop=1000 mmio-loop=1000 net.ping=10.0.2.1,count=10,wait=halt"
expect_rc builtin-ktrace 0
expect builtin-ktrace ping '^net: ping dst=10\.0\.2\.1 sent=10 received=10 '
expect builtin-ktrace stopped 'trapvisor: stopped by the VMM'
for r in npf ioio hlt msr intr; do
    expect builtin-ktrace "reason-$r" "^  $r +\(all\) +[0-9]+ +[0-9]+ +[0-9]+ "
done
expect builtin-ktrace kernel-share '^kernel exits \(--trace-kernel, kvm_exit to kvm_entry\): [0-9]+ exits, [0-9]+ \([0-9.]+%\) handled in the kernel'
expect builtin-ktrace to-trapvisor '^  ioio +  pio testdev sink '
expect builtin-ktrace stats-fd '^  exits: [0-9]+ taken by KVM, [0-9]+ reached trapvisor'
expect builtin-ktrace time-split '^  vcpu0: [0-9]+ exits, .* time: guest .* kernel .* trapvisor '
expect builtin-ktrace flow-kick ' vcpu0 +guest kick +in npf '
expect builtin-ktrace flow-msi ' net0-tv0 +kvm_msi_set_irq '
expect builtin-ktrace flow-inj ' vcpu0 +kvm_inj_virq '
expect builtin-ktrace flow-entry ' vcpu0 +kvm_entry '
expect builtin-ktrace halves '^  in the kernel: [0-9.]+ us, in trapvisor: [0-9.]+ us'
expect_not builtin-ktrace no-loss 'records lost: [1-9]'

# --- Debian's stock kernel as L2 ---------------------------------------------------------------
# bzImage (64-bit boot protocol): userspace, kvm-clock, "poweroff -f" -> ACPI S5 -> exit 0.
# With --trace-kernel and --stats, and two idle seconds before the end (l2.idle=2): the kernel
# table shows what Linux's idle loop (hlt) and its timer (the TSC-deadline MSR, the interrupt
# window) cost, and that KVM handles them itself.
scenario l2-bzimage 150 -- sh -c "$mount_tracefs; exec \"\$@\"" sh "$TRAPVISOR" run --trace-kernel --stats --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline l2.idle=2 l2.end=poweroff"
expect_rc l2-bzimage 0
for r in hlt msr intr; do
    expect l2-bzimage "kernel-$r" "^  $r +\(all\) +[0-9]+ +[0-9]+ +0 "
done
expect l2-bzimage userspace '^L2: userspace up'
expect l2-bzimage one-cpu '^L2: cpus=1 '
expect l2-bzimage kvm-clock '^L2: clocksource=kvm-clock'
expect l2-bzimage poweroff 'guest powered off'

# ELF vmlinux through the PVH entry point.
scenario l2-vmlinux-pvh 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinux" "${l2[@]}" \
    --cmdline "$l2_cmdline l2.end=poweroff"
expect_rc l2-vmlinux-pvh 0
expect l2-vmlinux-pvh userspace '^L2: userspace up'
expect l2-vmlinux-pvh kvm-clock '^L2: clocksource=kvm-clock'
expect l2-vmlinux-pvh poweroff 'guest powered off'

# --no-legacy (a microVM's device set: no i8042, no CMOS RTC, no PIT): to userspace and off;
# no RTC registered (the FADT says there is none), the clock from kvm-clock's wall clock,
# within 300 s of L1's (l2.date_ref: L1's clock when the scenario started).
scenario l2-nolegacy 150 -- sh -c 'c=$1; shift; exec "$@" --cmdline "$c l2.date_ref=$(date +%s)"' \
    sh "$l2_cmdline l2.end=poweroff" "$TRAPVISOR" run --no-legacy --kernel "$KIT/vmlinux" "${l2[@]}"
expect_rc l2-nolegacy 0
expect l2-nolegacy userspace '^L2: userspace up'
expect l2-nolegacy no-rtc '^L2: rtc0 name=none date ok '
expect l2-nolegacy poweroff 'guest powered off'

# 3.5 GiB of RAM: the e820 map continues above 4 GiB, past the 32-bit MMIO hole.
scenario l2-memory-3584m 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" \
    --initrd "$KIT/l2.cpio.gz" --memory 3584M --cmdline "$l2_cmdline l2.end=poweroff"
expect_rc l2-memory-3584m 0
expect l2-memory-3584m userspace '^L2: userspace up'
expect l2-memory-3584m above-3g '^L2: memtotal_kb=3[0-9]{6}$'
expect l2-memory-3584m poweroff 'guest powered off'

# Two vCPUs; "reboot -f" with reboot=k (the i8042 reset line): trapvisor stops with exit 0.
scenario l2-smp2-reboot-kbd 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" --cpus 2 \
    --cmdline "$l2_cmdline reboot=k l2.end=reboot"
expect_rc l2-smp2-reboot-kbd 0
expect l2-smp2-reboot-kbd two-cpus '^L2: cpus=2 online=0-1'
expect l2-smp2-reboot-kbd reset 'guest requested a reset'

# "reboot -f" with reboot=a: the FADT's reset register.
scenario l2-reboot-acpi 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline reboot=a l2.end=reboot"
expect_rc l2-reboot-acpi 0
expect l2-reboot-acpi reset 'guest requested a reset'

# A kernel panic (init exits) with panic=-1 reboot=k: Linux's pvpanic driver (ACPI QEMU0001)
# reports it before the kernel would reset; trapvisor stops, says so and exits 1.
scenario l2-panic 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline reboot=k l2.end=exit"
expect_rc l2-panic 1
expect l2-panic panic 'Kernel panic - not syncing: Attempted to kill init'
expect l2-panic reported 'trapvisor: guest kernel panicked'
expect_not l2-panic no-reset 'guest requested a reset'

# The same through an oops: sysrq 'c'.
scenario l2-panic-sysrq 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline reboot=k l2.end=crash"
expect_rc l2-panic-sysrq 1
expect l2-panic-sysrq panic 'Kernel panic - not syncing: sysrq triggered crash'
expect l2-panic-sysrq reported 'trapvisor: guest kernel panicked'

# "reboot -f" with the kernel's default reboot method: with a hardware-reduced FADT and no EFI,
# Linux (arch/x86/kernel/reboot.c: reboot_init) picks BOOT_EFI, finds no EFI runtime, falls back
# to BOOT_BIOS, a jump to the reset vector f000:fff0 in real mode (this used to hang: no
# firmware); trapvisor puts a stub there that resets through the ACPI reset register.
scenario l2-reboot-default 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline l2.end=reboot"
expect_rc l2-reboot-default 0
expect l2-reboot-default reset 'guest requested a reset'

# A panic with panic=0 (Debian's default: the kernel spins forever afterwards, which trapvisor
# could not tell from work before pvpanic) and no reboot=: reported, exit 1.
scenario l2-panic-halt 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "console=ttyS0 panic=0 loglevel=4 l2.end=exit"
expect_rc l2-panic-halt 1
expect l2-panic-halt panic 'Kernel panic - not syncing'
expect l2-panic-halt reported 'trapvisor: guest kernel panicked'

# --- virtio-net and virtio-rng with Linux's own drivers -------------------------------------------
# L1 makes a TAP tv0 (10.0.2.1/24) and serves iperf3 on it ($L1RUN); trapvisor attaches to it by
# name; L2 is 10.0.2.15/24.
l2_net="$l2_cmdline l2.ip=10.0.2.15/24 l2.ping=10.0.2.1 l2.pings=20"

# The built-in guest's own virtio-net driver under a real KVM: 20 pings to L1.
scenario builtin-net-ping 60 -- "$L1RUN" --tap tv0 -- "$TRAPVISOR" run --net tap=tv0 \
    --cmdline "net.ping=10.0.2.1,count=20"
expect_rc builtin-net-ping 0
expect builtin-net-ping pass 'guest reported PASS'

# virtio_net binds trapvisor's virtio-net-pci; its vectors are MSI-X; the features Linux takes
# (offloads offered); 20 pings without loss; iperf3 both ways.
scenario l2-net 200 -- "$L1RUN" --tap tv0 --iperf -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" \
    "${l2[@]}" --net tap=tv0 \
    --cmdline "$l2_net l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_time=2"
expect_rc l2-net 0
expect l2-net virtio-net '^L2: nic eth0 mac=[0-9a-f:]+ driver=virtio_net'
expect l2-net msix '^L2: eth0 msi_irqs=[1-9][0-9]* mode=msix$'
expect l2-net msix-in '^L2: irq virtio[0-9]+-input\.0 PCI-MSI'
expect l2-net msix-out '^L2: irq virtio[0-9]+-output\.0 PCI-MSI'
expect l2-net offloads '^L2: eth0 features CSUM GUEST_CSUM GUEST_TSO4 GUEST_TSO6 HOST_TSO4 HOST_TSO6 '
expect l2-net mrg-event-idx '^L2: eth0 features .* MRG_RXBUF .*EVENT_IDX'
expect l2-net ping '^L2: ping 10\.0\.2\.1 ok 20/20 '
expect l2-net iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'
expect l2-net poweroff 'guest powered off'

# The same with the offloads withdrawn (offload=off): no CSUM/TSO, still MRG_RXBUF and EVENT_IDX.
# And a virtio-rng (--rng): Linux's virtio_rng becomes the current hwrng.
scenario l2-net-offload-off 200 -- "$L1RUN" --tap tv0 --iperf -- "$TRAPVISOR" run \
    --kernel "$KIT/vmlinuz" "${l2[@]}" --net tap=tv0,offload=off --rng \
    --cmdline "$l2_cmdline l2.ip=10.0.2.15/24 l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_time=2"
expect_rc l2-net-offload-off 0
expect l2-net-offload-off mrg-event-idx '^L2: eth0 features .*MRG_RXBUF .*EVENT_IDX'
expect_not l2-net-offload-off no-offloads '^L2: eth0 features .*(CSUM|TSO)'
expect l2-net-offload-off hwrng '^L2: hwrng current=virtio_rng\.0 '
expect l2-net-offload-off iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net-offload-off iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'
expect l2-net-offload-off poweroff 'guest powered off'

# Two queue pairs on a multiqueue TAP, two vCPUs (Linux enables min(CPUs, pairs) pairs): L2
# shows two rx and two tx queues, and four iperf3 streams each way interrupt on both pairs.
scenario l2-net-mq 200 -- "$L1RUN" --tap tv0 --mq --iperf -- "$TRAPVISOR" run \
    --kernel "$KIT/vmlinuz" "${l2[@]}" --cpus 2 --net tap=tv0,queues=2 \
    --cmdline "$l2_cmdline l2.ip=10.0.2.15/24 l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_p=4 l2.iperf_time=2"
expect_rc l2-net-mq 0
expect l2-net-mq mq '^L2: eth0 features .* MQ '
expect l2-net-mq queues '^L2: eth0 queues rx=2 tx=2$'
expect l2-net-mq iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net-mq iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'
for q in input.0 input.1 output.0 output.1; do
    expect l2-net-mq "irqs-$q" "^L2: irq virtio[0-9]+-${q/./\\.} PCI-MSI.* count=[1-9]"
done
expect l2-net-mq poweroff 'guest powered off'

# --- vhost=on: the kernel's vhost-net moves the frames (L1 loads vhost_net) ----------------------
# Two pairs on a multiqueue TAP, Linux's virtio_net with offloads: MSI-X, 20 pings, iperf3 -P 4
# both ways with each of the four queues interrupting, the link taken down and up, then the
# driver unbound and bound again (a device reset: vhost-net lets go, the next DRIVER_OK hands the
# new rings over) with pings and iperf3 afterwards. --stats: the counters say vhost-net served.
scenario l2-net-vhost 240 -- "$L1RUN" --tap tv0 --mq --iperf -- "$TRAPVISOR" run --stats \
    --kernel "$KIT/vmlinuz" "${l2[@]}" --cpus 2 --net tap=tv0,queues=2,vhost=on \
    --cmdline "$l2_net l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_p=4 l2.iperf_time=2 l2.relink=1 l2.rebind=1"
expect_rc l2-net-vhost 0
expect l2-net-vhost msix '^L2: eth0 msi_irqs=[1-9][0-9]* mode=msix$'
expect l2-net-vhost offloads '^L2: eth0 features CSUM GUEST_CSUM GUEST_TSO4 GUEST_TSO6 HOST_TSO4 HOST_TSO6 .*MQ .*EVENT_IDX'
expect l2-net-vhost queues '^L2: eth0 queues rx=2 tx=2$'
expect l2-net-vhost ping '^L2: ping 10\.0\.2\.1 ok 20/20 '
expect l2-net-vhost iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net-vhost iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'
for q in input.0 input.1 output.0 output.1; do
    expect l2-net-vhost "irqs-$q" "^L2: irq virtio[0-9]+-${q/./\\.} PCI-MSI.* count=[1-9]"
done
expect l2-net-vhost relink '^L2: relink ping ok [1-5]/5'
expect l2-net-vhost rebind '^L2: rebind ping ok [1-5]/5'
expect l2-net-vhost rebind-tx '^L2: rebind iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net-vhost rebind-rx '^L2: rebind iperf3 rx mbps=[0-9.]*[1-9]'
expect l2-net-vhost vhost-started 'pair1\.vhost\.starts=2'
expect_not l2-net-vhost no-trapvisor-tx 'tx0\.frames='
expect l2-net-vhost poweroff 'guest powered off'

# Offloads withdrawn (offload=off): no CSUM/TSO, iperf3 both ways through vhost-net.
scenario l2-net-vhost-offload-off 200 -- "$L1RUN" --tap tv0 --iperf -- "$TRAPVISOR" run \
    --kernel "$KIT/vmlinuz" "${l2[@]}" --net tap=tv0,offload=off,vhost=on \
    --cmdline "$l2_cmdline l2.ip=10.0.2.15/24 l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_time=2"
expect_rc l2-net-vhost-offload-off 0
expect_not l2-net-vhost-offload-off no-offloads '^L2: eth0 features .*(CSUM|TSO)'
expect l2-net-vhost-offload-off iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net-vhost-offload-off iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'

# The built-in guest's own driver with vhost-net underneath.
scenario builtin-net-ping-vhost 60 -- "$L1RUN" --tap tv0 -- "$TRAPVISOR" run --stats \
    --net tap=tv0,vhost=on --cmdline "net.ping=10.0.2.1,count=20"
expect_rc builtin-net-ping-vhost 0
expect builtin-net-ping-vhost pass 'guest reported PASS'
expect builtin-net-ping-vhost vhost 'pair0\.vhost\.starts=1'

# --- trapvisor vs QEMU/KVM (q35, virtio-net-pci on the same TAP, no vhost) in the same L1 ---------
# The same kernel, initramfs and L2 work: time to the userspace marker (L2's uptime and L1's wall
# clock), ping RTT, iperf3 both ways. scripts/nested/compare.sh turns the pair into ratios
# (compare.txt). Only with --all (slow; QEMU in L1 once hung L1).
l2_cmp="$l2_net l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_time=3"
scenario l2-cmp-trapvisor 200 --slow -- "$L1RUN" --tap tv0 --iperf -- "$TRAPVISOR" run \
    --kernel "$KIT/vmlinuz" "${l2[@]}" --net tap=tv0 --cmdline "$l2_cmp"
expect_rc l2-cmp-trapvisor 0
expect l2-cmp-trapvisor ping '^L2: ping 10\.0\.2\.1 ok 20/20 '
expect l2-cmp-trapvisor iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-cmp-trapvisor iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'

scenario l2-cmp-qemu 200 --slow -- "$L1RUN" --tap tv0 --iperf -- "$QEMU" -accel kvm -M q35 \
    -cpu host -m 512M -smp 1 -display none -monitor none -serial stdio -nodefaults -no-reboot \
    -netdev tap,id=n0,ifname=tv0,script=no,downscript=no,vhost=off \
    -device virtio-net-pci,netdev=n0 \
    -kernel "$KIT/vmlinuz" -initrd "$KIT/l2.cpio.gz" -append "$l2_cmp"
expect_rc l2-cmp-qemu 0
expect l2-cmp-qemu ping '^L2: ping 10\.0\.2\.1 ok 20/20 '
expect l2-cmp-qemu iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-cmp-qemu iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'

# --- the same L2 under trapvisor and under QEMU/KVM (q35, -cpu host) in the same L1 ---------------
# The kernel's warnings and errors of each; scripts/nested/dmesg-diff.sh compares them into
# dmesg-diff-warn.txt (informational). The trapvisor run must show no MSR or CPUID trouble.
scenario l2-dmesg-trapvisor 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "console=ttyS0 panic=-1 loglevel=1 l2.dmesg=warn $l2_probe"
expect_rc l2-dmesg-trapvisor 0
expect l2-dmesg-trapvisor dmesg '^L2: dmesg end'
expect_not l2-dmesg-trapvisor no-unchecked-msr 'unchecked MSR access'
expect_not l2-dmesg-trapvisor no-oops 'BUG:|Oops|general protection fault'
# The DSDT's PS2K (PNP0303) gives Linux's i8042 driver its ports and IRQ 1; before it the probe
# failed with -22 (a hardware-reduced platform maps no legacy IRQs). IRQ 1 arrives (the
# keyboard's answers interrupt) and atkbd finds the keyboard.
expect l2-dmesg-trapvisor i8042-pnp '^L2: pnp .*PNP0303'
expect l2-dmesg-trapvisor i8042-irq '^L2: i8042 irq=[0-9]+:1-edge count=[1-9]'
expect l2-dmesg-trapvisor keyboard '^L2: input .*AT Translated Set 2 keyboard'
expect_not l2-dmesg-trapvisor i8042-ok 'i8042.*(fail|error|No PS/2)'
expect l2-dmesg-trapvisor pvpanic '^L2: pvpanic 1 bound'

# QEMU as the L2 VMM is only a reference, and once hung the whole L1 (its own timeout never
# fired): only with --all.
scenario l2-dmesg-qemu 150 --slow -- "$QEMU" -accel kvm -M q35 -cpu host -m 512M -smp 1 \
    -display none -monitor none -serial stdio -nodefaults -no-reboot \
    -kernel "$KIT/vmlinuz" -initrd "$KIT/l2.cpio.gz" \
    -append "console=ttyS0 panic=-1 loglevel=1 l2.dmesg=warn $l2_probe"
expect_rc l2-dmesg-qemu 0
expect l2-dmesg-qemu dmesg '^L2: dmesg end'

# The whole kernel log of each (about 90 s apiece: it all goes through the serial port), compared
# into dmesg-diff-full.txt. Only with --all.
scenario l2-dmesg-full-trapvisor 400 --slow -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "console=ttyS0 panic=-1 loglevel=1 l2.dmesg=1 $l2_probe"
expect_rc l2-dmesg-full-trapvisor 0
expect l2-dmesg-full-trapvisor dmesg '^L2: dmesg end'

scenario l2-dmesg-full-qemu 400 --slow -- "$QEMU" -accel kvm -M q35 -cpu host -m 512M -smp 1 \
    -display none -monitor none -serial stdio -nodefaults -no-reboot \
    -kernel "$KIT/vmlinuz" -initrd "$KIT/l2.cpio.gz" \
    -append "console=ttyS0 panic=-1 loglevel=1 l2.dmesg=1 $l2_probe"
expect_rc l2-dmesg-full-qemu 0
expect l2-dmesg-full-qemu dmesg '^L2: dmesg end'

# --- a root file system on virtio-blk ----------------------------------------------------------
# Debian's kernel with root=/dev/vda: the L2 initramfs loads virtio_blk and ext4, mounts the
# kit's ext4 image (mke2fs -d, no loop mount) from a two-queue disk and switch_roots into it;
# the disk's init checks the date (the CMOS RTC against L1's clock), writes a file, reads and
# writes on both vCPUs so both queues see requests, and powers off; e2fsck finds the image
# clean. The second run reads the file back (so they run in this order).
disk_img="$(dirname "$TRAPVISOR")/disk-root.ext4"
scenario disk-root-write 200 -- sh "$DISKRUN" write "$disk_img" "$KIT" "$TRAPVISOR" tv-persisted-1
expect_rc disk-root-write 0
expect disk-root-write mounted '^L2: root /dev/vda mounted'
expect disk-root-write root '^L2: disk root /dev/vda ext4 rw'
expect disk-root-write marker '^L2: disk marker trapvisor rootfs'
expect disk-root-write date '^L2: disk date .* ok$'
expect disk-root-write rtc '^L2: disk rtc rtc_cmos'
expect disk-root-write two-queues '^L2: disk queues 2'
expect disk-root-write wrote '^L2: disk wrote tv-persisted-1'
expect disk-root-write queue0 'q0\.read=[1-9]'
expect disk-root-write queue1 'q1\.read=[1-9]'
expect disk-root-write fsck '^fsck: clean'
expect disk-root-write poweroff 'guest powered off'
# The image lies in the job directory, on L1's 9p mount, which has no fallocate: trapvisor must
# not offer DISCARD/WRITE_ZEROES there (it did, and ext4's WRITE_ZEROES failed as an I/O error).
expect_not disk-root-write no-io-error 'I/O error, dev vda'

scenario disk-root-read 200 -- sh "$DISKRUN" read "$disk_img" "$KIT" "$TRAPVISOR" tv-persisted-1
expect_rc disk-root-read 0
expect disk-root-read root '^L2: disk root /dev/vda ext4 rw'
expect disk-root-read persisted '^L2: disk read tv-persisted-1$'
expect disk-root-read date '^L2: disk date .* ok$'
expect disk-root-read fsck '^fsck: clean'
expect disk-root-read poweroff 'guest powered off'
expect_not disk-root-read no-io-error 'I/O error, dev vda'
