//! Application processors: INIT-SIPI-SIPI through the local APIC and a real-mode trampoline.
//!
//! The trampoline is assembled into the image and copied to [`TRAMPOLINE`] (page 8, so the SIPI
//! vector is 0x08). An AP starts there in real mode at 0800:0000, loads the trampoline's GDT,
//! enters protected mode, enables PAE, EFER.LME and paging with the BSP's page tables, enters
//! long mode, takes its stack and cpu number from the trampoline's data, and jumps to
//! `ap_long_entry` in the image (shared GDT), which calls [`ap_main`].
//!
//! APs are started one at a time: each acknowledges through [`STARTED`] once it no longer needs
//! the trampoline's data, then prints, counts itself in [`ONLINE`] and parks with `cli; hlt`.
use core::sync::atomic::{AtomicU32, Ordering};

use super::boot::{self, AP_STACK_SIZE, MAX_CPUS};
use super::{acpi, apic, cpu, idt, time};
use crate::{println, sym_addr};

/// Physical address the trampoline runs at (below 1 MiB, page-aligned; clear of what trapvisor
/// puts in low memory: start info 0x6000, zero page 0x7000, boot page tables 0x9000).
pub const TRAMPOLINE: u64 = 0x8000;
/// How long one AP gets to reach `ap_main`.
const AP_START_TIMEOUT_US: u64 = 2_000_000;
/// How long all started APs get to report in.
const ONLINE_TIMEOUT_US: u64 = 5_000_000;

core::arch::global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .set TB, {base}
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(TB + tramp32 - ap_trampoline_start)

    .code32
tramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov (TB + tramp_cr3 - ap_trampoline_start), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010000, %eax        /* PG | WP */
    mov %eax, %cr0
    ljmp $0x08, $(TB + tramp64 - ap_trampoline_start)

    .code64
tramp64:
    mov (TB + tramp_stack - ap_trampoline_start), %rsp
    mov (TB + tramp_cpu - ap_trampoline_start), %rdi
    movabs $ap_long_entry, %rax
    jmp *%rax

    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 code, 64-bit (same selector as the image's GDT) */
    .quad 0x00cf92000000ffff    /* 0x10 data */
    .quad 0x00cf9a000000ffff    /* 0x18 code, 32-bit */
tramp_gdt_ptr:
    .word tramp_gdt_ptr - tramp_gdt - 1
    .long TB + tramp_gdt - ap_trampoline_start
    .balign 8
    .global tramp_cr3
tramp_cr3:
    .quad 0
    .global tramp_stack
tramp_stack:
    .quad 0
    .global tramp_cpu
tramp_cpu:
    .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
    "#,
    base = const TRAMPOLINE,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static tramp_cr3: u8;
    static tramp_stack: u8;
    static tramp_cpu: u8;
}

/// The cpu number of the AP that last reached `ap_main` (`u32::MAX`: none yet).
static STARTED: AtomicU32 = AtomicU32::new(u32::MAX);
/// APs that are up and have printed.
static ONLINE: AtomicU32 = AtomicU32::new(0);
/// The APIC ID each cpu number reported (`u32::MAX`: not up).
static REPORTED: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Called by `ap_long_entry` on the AP's own stack with the shared GDT loaded.
#[no_mangle]
extern "C" fn ap_main(cpu_index: u64) -> ! {
    idt::load();
    let cpu_index = cpu_index as u32;
    // The trampoline's data may be reused from here on.
    STARTED.store(cpu_index, Ordering::Release);
    let apic_id = apic::id_from_cpuid();
    println!("smp: cpu {} up (apic id {})", cpu_index, apic_id);
    if let Some(slot) = REPORTED.get(cpu_index as usize) {
        slot.store(apic_id, Ordering::Relaxed);
    }
    ONLINE.fetch_add(1, Ordering::AcqRel);
    cpu::halt_forever()
}

/// Writes a trampoline data field in the low-memory copy.
fn set_field(field: u64, value: u64) {
    let at = TRAMPOLINE + field - sym_addr!(ap_trampoline_start);
    // SAFETY: `at` is inside the trampoline copy in identity-mapped low RAM, 8-byte aligned (the
    // fields are `.balign 8` and the copy is page-aligned); no AP reads it until the next SIPI.
    unsafe { core::ptr::write_volatile(at as *mut u64, value) }
}

/// Copies the trampoline to low memory.
fn install_trampoline() -> Result<(), &'static str> {
    let start = sym_addr!(ap_trampoline_start);
    let len = (sym_addr!(ap_trampoline_end) - start) as usize;
    if len > 4096 {
        return Err("SMP trampoline larger than a page");
    }
    // SAFETY: the source is the trampoline in the image; the destination page at TRAMPOLINE is
    // RAM the guest does not otherwise use (the start info was copied out at boot).
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len) };
    set_field(sym_addr!(tramp_cr3), cpu::read_cr3());
    Ok(())
}

/// INIT-SIPI-SIPI to one AP; waits until it reaches `ap_main`.
fn start_ap(cpu_index: usize, apic_id: u32) -> Result<(), &'static str> {
    let stack_top = sym_addr!(boot::ap_stacks) + ((cpu_index + 1) * AP_STACK_SIZE) as u64;
    set_field(sym_addr!(tramp_stack), stack_top);
    set_field(sym_addr!(tramp_cpu), cpu_index as u64);
    STARTED.store(u32::MAX, Ordering::Release);

    apic::send_ipi(apic_id, apic::ICR_INIT)?;
    time::delay_us(10_000);
    let vector = (TRAMPOLINE >> 12) as u32;
    for _ in 0..2 {
        apic::send_ipi(apic_id, apic::ICR_STARTUP | vector)?;
        let end = time::deadline_us(200);
        while !time::passed(end) {
            if STARTED.load(Ordering::Acquire) == cpu_index as u32 {
                return Ok(());
            }
            cpu::pause();
        }
    }
    let end = time::deadline_us(AP_START_TIMEOUT_US);
    while !time::passed(end) {
        if STARTED.load(Ordering::Acquire) == cpu_index as u32 {
            return Ok(());
        }
        cpu::pause();
    }
    Err("did not start")
}

/// The `smp` command.
pub fn run(info: &super::BootInfo) {
    let cpus = match acpi::cpus(info.rsdp_paddr) {
        Ok(c) => c,
        Err(e) => crate::fail!("smp: {}", e),
    };
    if cpus.listed > MAX_CPUS {
        crate::fail!(
            "smp: the MADT lists {} cpus, the guest supports {}",
            cpus.listed,
            MAX_CPUS
        );
    }
    let bsp = apic::id();
    let (khz, known) = time::tsc_khz();
    println!(
        "smp: {} cpus in the MADT, bsp apic id {}, {} APIC, tsc {} MHz{}",
        cpus.listed,
        bsp,
        if apic::is_x2apic() { "x2" } else { "x" },
        khz / 1000,
        if known { "" } else { " (assumed)" }
    );
    if let Err(e) = install_trampoline() {
        crate::fail!("smp: {}", e);
    }
    ONLINE.store(0, Ordering::Release);
    for slot in REPORTED.iter() {
        slot.store(u32::MAX, Ordering::Relaxed);
    }
    let mut started = 0u32;
    for (i, &id) in cpus.apic_ids().iter().enumerate() {
        if id == bsp {
            REPORTED[i].store(bsp, Ordering::Relaxed);
            continue;
        }
        match start_ap(i, id) {
            Ok(()) => started += 1,
            Err(e) => println!("smp: cpu {} (apic id {}): {}", i, id, e),
        }
    }
    let end = time::deadline_us(ONLINE_TIMEOUT_US);
    while ONLINE.load(Ordering::Acquire) < started && !time::passed(end) {
        cpu::pause();
    }
    let online = ONLINE.load(Ordering::Acquire) + 1;
    println!("smp: {} cpus online", online);
    if online as usize != cpus.listed {
        crate::fail!("smp: {} of {} cpus online", online, cpus.listed);
    }
    for (i, &id) in cpus.apic_ids().iter().enumerate() {
        let got = REPORTED[i].load(Ordering::Relaxed);
        if got != id {
            crate::fail!(
                "smp: cpu {} reported apic id {:#x}, the MADT says {:#x}",
                i,
                got,
                id
            );
        }
    }
}
