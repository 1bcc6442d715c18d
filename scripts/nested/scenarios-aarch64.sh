# The aarch64 nested scenarios (issue 13), sourced by `scripts/nested/run.sh --arch aarch64`. The
# format is scenarios.sh's (scenario, expect_rc, expect, expect_not, xfail). They run inside an
# arm64 L1 (Debian's cloud kernel at EL2 under qemu-system-aarch64 TCG: a real arm64 /dev/kvm with
# a GICv3 and its ITS), from its own initramfs: $TRAPVISOR (the aarch64 binary under test),
# $KIT/Image and $KIT/l2.cpio.gz (Debian's arm64 cloud kernel and the L2 initramfs of
# kit-aarch64.sh), $L1RUN (l1-run-aarch64.sh: a TAP 10.0.2.1/24 and an iperf3 server around the
# command, @L1_EPOCH@ replaced by L1's clock).
#
# Scenarios named l1-* need no trapvisor (the harness's own checks); the others are skipped when
# there is no aarch64 trapvisor binary (run.sh --trapvisor none).
#
# Limits are tight on purpose (the built-in guest takes about 2 s in L1, an L2 boot 10-30 s):
# while the arm64 VMM is young, scenarios that hang must not stretch the L1 run past the test's
# 900 s bound; all of them hanging takes about 12 minutes.

# --- L1 itself: arm64 KVM with VHE, a GICv3 with an ITS ---------------------------------------------
scenario l1-kvm 30 -- sh -c 'ls -l /dev/kvm; dmesg; cat /proc/interrupts'
expect_rc l1-kvm 0
expect l1-kvm dev-kvm '^crw.* /dev/kvm$'
expect l1-kvm kvm-vhe 'kvm \[[0-9]+\]: (VHE|Hyp) mode initialized successfully'
expect l1-kvm gicv3-its 'ITS@0x[0-9a-f]+: allocated'

# The L2 command line: the 16550 console (stdout-path says which), reboot at once on panic, only
# the kernel's errors on the console (every console byte is a trap through two levels).
l2_cmdline="console=ttyS0 panic=-1 loglevel=4"
l2=(--initrd "$KIT/l2.cpio.gz" --memory 512M)
# --- the built-in guest (its aarch64 build, embedded in the aarch64 trapvisor) ---------------------
# Or, with NESTED_GUEST_IMAGE=NAME in the environment and the file given to run.sh with --add, that
# image booted with --kernel (a guest build tried on a VMM built without it).
builtin=(run)
[ -z "${NESTED_GUEST_IMAGE:-}" ] || builtin=(run --kernel "$KIT/$NESTED_GUEST_IMAGE")
scenario builtin-default 20 -- "$TRAPVISOR" "${builtin[@]}" --cmdline "hello mmio-loop=1000 el0"
expect_rc builtin-default 0
expect builtin-default hello '^trapvisor-guest: hello'
expect builtin-default mmio-loop '^mmio-loop: 1000 exits, sink=[0-9]+'
expect builtin-default el0-console '^el0: hello from EL0'
expect builtin-default el0 '^el0: ok .* 1000 mmio writes, sink=[0-9]+'
expect builtin-default pass 'guest reported PASS'

scenario builtin-smp4 20 -- "$TRAPVISOR" "${builtin[@]}" --cpus 4 --cmdline smp
expect_rc builtin-smp4 0
expect builtin-smp4 four-cpus '^smp: 4 cpus online'
expect builtin-smp4 pass 'guest reported PASS'

scenario builtin-pci 20 -- "$TRAPVISOR" "${builtin[@]}" --rng --cmdline pci
expect_rc builtin-pci 0
expect builtin-pci ecam '^pci: config access ecam 0x[0-9a-f]+ \(fdt\)$'
expect builtin-pci rng '^pci: 00:[0-9a-f]{2}\.0 1af4:1044 .* virtio-rng'
expect builtin-pci pass 'guest reported PASS'

# virtio-rng on every notify/irq path; its MSI-X goes through the ITS.
for path in ioeventfd,irqfd ioeventfd,msi exit,irqfd exit,msi; do
    n=builtin-rng-${path/,/-}
    scenario "$n" 20 -- "$TRAPVISOR" "${builtin[@]}" --rng "notify=${path%,*},irq=${path#*,}" --cmdline rng
    expect_rc "$n" 0
    expect "$n" its '^rng: queue 0 .* msi-x entry 0 -> its lpi [0-9]+ event 0x40'
    expect "$n" interrupt '^rng: interrupts=[1-9]'
    expect "$n" pass 'guest reported PASS'
done

# The guest's own virtio-net driver: 20 pings to L1 over a TAP.
scenario builtin-net-ping 20 -- "$L1RUN" --tap tv0 -- "$TRAPVISOR" "${builtin[@]}" --net tap=tv0 \
    --cmdline "net.ping=10.0.2.1,count=20"
expect_rc builtin-net-ping 0
expect builtin-net-ping ping '^net: ping dst=10\.0\.2\.1 sent=20 received=20 '
expect builtin-net-ping pass 'guest reported PASS'

# The two ways out: the test device's EXIT register (a code) and PSCI SYSTEM_OFF.
scenario builtin-exit-code 20 -- "$TRAPVISOR" "${builtin[@]}" --cmdline "exit=3"
expect_rc builtin-exit-code 1
expect builtin-exit-code reported '^exit: reporting 3'

scenario builtin-poweroff 20 -- "$TRAPVISOR" "${builtin[@]}" --cmdline "hello poweroff"
expect_rc builtin-poweroff 0
expect builtin-poweroff psci '^poweroff: psci system_off'
expect_not builtin-poweroff no-verdict 'guest reported (PASS|FAIL)'

# --- Debian's arm64 cloud kernel as L2 -----------------------------------------------------------
# One vCPU to userspace; Linux's clock from trapvisor's PL031 (l2.date_ref: L1's clock when the
# scenario starts); poweroff -f (PSCI SYSTEM_OFF) -> exit 0.
scenario l2-boot 90 -- "$L1RUN" -- "$TRAPVISOR" run --kernel "$KIT/Image" "${l2[@]}" \
    --cmdline "$l2_cmdline l2.date_ref=@L1_EPOCH@ l2.end=poweroff"
expect_rc l2-boot 0
expect l2-boot userspace '^L2: userspace up'
expect l2-boot one-cpu '^L2: cpus=1 '
expect l2-boot pl031 '^L2: rtc0 name=rtc-pl031 .* date ok '
expect l2-boot done '^L2: done .* end=poweroff'

# Two vCPUs (the second started by PSCI CPU_ON in the kernel); reboot -f (PSCI SYSTEM_RESET) ->
# exit 0.
scenario l2-smp2-reboot 90 -- "$TRAPVISOR" run --kernel "$KIT/Image" "${l2[@]}" --cpus 2 \
    --cmdline "$l2_cmdline l2.end=reboot"
expect_rc l2-smp2-reboot 0
expect l2-smp2-reboot two-cpus '^L2: cpus=2 online=0-1'
expect l2-smp2-reboot done '^L2: done .* end=reboot'

# Linux's virtio_net on trapvisor's virtio-net-pci: MSI-X through the ITS (ITS-MSI in
# /proc/interrupts), 20 pings without loss, iperf3 both ways; virtio-rng as the hwrng.
scenario l2-net 120 -- "$L1RUN" --tap tv0 --iperf -- "$TRAPVISOR" run --kernel "$KIT/Image" \
    "${l2[@]}" --net tap=tv0 --rng \
    --cmdline "$l2_cmdline l2.ip=10.0.2.15/24 l2.ping=10.0.2.1 l2.pings=20 l2.iperf=client:10.0.2.1 l2.iperf_dir=both l2.iperf_time=2"
expect_rc l2-net 0
expect l2-net virtio-net '^L2: nic eth0 mac=[0-9a-f:]+ driver=virtio_net'
expect l2-net msix '^L2: eth0 msi_irqs=[1-9][0-9]* mode=msix$'
expect l2-net its-msi-in '^L2: irq virtio[0-9]+-input\.0 ITS-MSI count=[1-9]'
expect l2-net its-msi-out '^L2: irq virtio[0-9]+-output\.0 ITS-MSI'
expect l2-net ping '^L2: ping 10\.0\.2\.1 ok 20/20 '
expect l2-net iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect l2-net iperf-rx '^L2: iperf3 rx mbps=[0-9.]*[1-9]'
expect l2-net hwrng '^L2: hwrng current=virtio_rng\.0 '
expect l2-net done '^L2: done .* end=poweroff'

# A kernel panic (init exits, panic=-1) is reported and exits 1, as pvpanic does on x86. Debian's
# arm64 kernels (6.1 and 6.12, cloud and generic) are built without CONFIG_PVPANIC, so the panic
# reaches trapvisor another way: with reboot=panic_warm, Linux restarts after a panic with PSCI
# SYSTEM_RESET2 (a warm reset) instead of SYSTEM_RESET, and KVM reports it with
# KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2 (docs/aarch64.md).
scenario l2-panic 60 -- "$TRAPVISOR" run --kernel "$KIT/Image" "${l2[@]}" \
    --cmdline "$l2_cmdline reboot=panic_warm l2.end=exit"
expect_rc l2-panic 1
expect l2-panic panic 'Kernel panic - not syncing: Attempted to kill init'
expect l2-panic reported 'guest kernel panicked \(PSCI SYSTEM_RESET2'
