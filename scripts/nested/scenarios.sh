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
# l2.cpio.gz), $QEMU (qemu-system-x86_64). Paths are the host's: L1 sees the host's root at the
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

# --- Debian's stock kernel as L2 ---------------------------------------------------------------
# bzImage (64-bit boot protocol): userspace, kvm-clock, "poweroff -f" -> ACPI S5 -> exit 0.
scenario l2-bzimage 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline l2.end=poweroff"
expect_rc l2-bzimage 0
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

# A kernel panic (init exits) with panic=-1 reboot=k: the kernel resets at once and trapvisor
# exits 0 (a reset is a stop; see docs/nested.md).
scenario l2-panic 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline reboot=k l2.end=exit"
expect_rc l2-panic 0
expect l2-panic panic 'Kernel panic - not syncing: Attempted to kill init'
expect l2-panic reset 'guest requested a reset'

# The same through an oops: sysrq 'c'.
scenario l2-panic-sysrq 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline reboot=k l2.end=crash"
expect_rc l2-panic-sysrq 0
expect l2-panic-sysrq panic 'Kernel panic - not syncing: sysrq triggered crash'
expect l2-panic-sysrq reset 'guest requested a reset'

# A panic with the kernel's default reboot method. Known to hang: with a hardware-reduced FADT
# and no EFI, Linux (arch/x86/kernel/reboot.c: reboot_init) picks BOOT_EFI, finds no EFI runtime,
# falls back to BOOT_BIOS, i.e. a jump to the reset vector f000:fff0 in real mode. trapvisor has
# no firmware, but puts a stub there that resets through the ACPI reset register.
scenario l2-panic-default-reboot 40 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "$l2_cmdline l2.end=exit"
expect_rc l2-panic-default-reboot 0
expect l2-panic-default-reboot panic 'Kernel panic - not syncing'
expect l2-panic-default-reboot reset 'guest requested a reset'

# --- the same L2 under trapvisor and under QEMU/KVM (q35, -cpu host) in the same L1 ---------------
# The kernel's warnings and errors of each; scripts/nested/dmesg-diff.sh compares them into
# dmesg-diff-warn.txt (informational). The trapvisor run must show no MSR or CPUID trouble.
scenario l2-dmesg-trapvisor 150 -- "$TRAPVISOR" run --kernel "$KIT/vmlinuz" "${l2[@]}" \
    --cmdline "console=ttyS0 panic=-1 loglevel=1 l2.dmesg=warn $l2_probe"
expect_rc l2-dmesg-trapvisor 0
expect l2-dmesg-trapvisor dmesg '^L2: dmesg end'
expect_not l2-dmesg-trapvisor no-unchecked-msr 'unchecked MSR access'
expect_not l2-dmesg-trapvisor no-oops 'BUG:|Oops|general protection fault'

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
