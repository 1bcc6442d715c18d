//! The TSS (RSP0 for interrupts from CPL3, IST1 for double faults) and its GDT descriptor.
use core::arch::asm;

use super::boot::{self, TSS_GDT_INDEX, TSS_SELECTOR};
use crate::sym_addr;
use crate::sync::Global;

/// The 64-bit task-state segment.
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const TSS_SIZE: usize = core::mem::size_of::<Tss>();
const _: () = assert!(TSS_SIZE == 104);

static TSS: Global<Tss> = Global::new(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // Past the limit: no I/O permission bitmap.
    iomap_base: TSS_SIZE as u16,
});

/// Fills in the TSS and its descriptor, and loads TR. BSP only (a TSS is busy once loaded).
pub fn init() {
    let tss = TSS.get();
    // SAFETY: single CPU at boot; the stacks are the assembly-defined ones and nothing else
    // touches the TSS or the GDT's TSS slots.
    unsafe {
        (*tss).rsp[0] = sym_addr!(boot::int_stack_top);
        (*tss).ist[0] = sym_addr!(boot::df_stack_top);
        let base = tss as u64;
        let limit = (TSS_SIZE - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit TSS (available)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let high = base >> 32;
        let gdt = core::ptr::addr_of_mut!(boot::gdt64) as *mut u64;
        gdt.add(TSS_GDT_INDEX).write_volatile(low);
        gdt.add(TSS_GDT_INDEX + 1).write_volatile(high);
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags));
    }
}
