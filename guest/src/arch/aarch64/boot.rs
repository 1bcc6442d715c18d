//! The arm64 `Image` entry: header, EL1 set-up, page tables, MMU on, then `rust_main`.
//!
//! The VMM loads the image at a 2 MiB-aligned address P (the header says `text_offset` 0 and
//! "anywhere") and enters `_start` at EL1 (EL2 is dropped to EL1) with the MMU off and X0 = the
//! FDT's physical address. The image is linked at [`LINK_BASE`] (the TTBR1 half), so before any
//! code that needs its absolute addresses runs, the boot code:
//! 1. masks interrupts, turns on FP/SIMD (CPACR_EL1.FPEN), takes the boot stack (PC-relative,
//!    so at its physical address) and zeroes .bss;
//! 2. calls [`early_tables`] (Rust, but only PC-relative code: no formatting, no panics), which
//!    builds the page tables: TTBR0 identity-maps the first 512 GiB of physical space as device
//!    memory (nGnRE, EL0 read/write, never executable), except the 2 MiB blocks holding the
//!    image, which are normal memory the boot code can execute from while the MMU comes on;
//!    TTBR1 maps the image at [`LINK_BASE`] with 4 KiB pages: text read-only and executable at
//!    EL1 and EL0, rodata read-only, data/bss/noinit read-write (for EL0 too: the unprivileged
//!    loops and tasks use the image's statics), all normal write-back memory;
//! 3. turns the MMU and caches on (`mmu_on`, with the values `early_tables` left in
//!    [`MMU_CONFIG`] for the secondary CPUs too), jumps to the link address, switches to the
//!    boot stack's virtual address, installs the vector table and calls
//!    `rust_main(fdt_paddr, image_paddr)`.
//!
//! Device DMA needs physical addresses: [`super::paging::dma_addr`] turns an image address
//! into one.
use core::ptr::addr_of_mut;

use crate::sync::Global;

/// Where the image is linked (`link.ld`): the start of the TTBR1 range with T1SZ = 25.
pub const LINK_BASE: u64 = 0xffff_ff80_0000_0000;
/// Bytes of each stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;
pub const USER_STACK_SIZE: usize = 16 * 1024;
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// Most CPUs the guest can bring up (AP stacks are static).
pub const MAX_CPUS: usize = 64;
/// Most image bytes the TTBR1 tables map (asserted by `link.ld`): `L3_TABLES` × 2 MiB.
const L3_TABLES: usize = 16;
const MAX_IMAGE: u64 = (L3_TABLES as u64) << 21;

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b primary_entry             /* code0 */
    .long 0                     /* code1 */
    .quad 0                     /* text_offset */
    .quad __image_size          /* image_size: with .bss and .noinit */
    .quad 0xa                   /* flags: little-endian, 4 KiB pages, anywhere in RAM */
    .quad 0, 0, 0               /* res2..res4 */
    .ascii "ARM\x64"            /* magic */
    .long 0                     /* res5: no PE header */

    .section .text.boot, "ax"
primary_entry:
    msr daifset, #0xf
    mov x19, x0                 /* FDT */
    bl drop_to_el1
    adrp x1, boot_stack_top
    add x1, x1, :lo12:boot_stack_top
    mov sp, x1
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
1:  cmp x1, x2
    b.hs 2f
    stp xzr, xzr, [x1], #16
    b 1b
2:  adrp x20, _start            /* the image's physical address (4 KiB aligned) */
    mov x0, x20
    bl early_tables
    cbnz x0, boot_failed
    adrp x1, {mmu_config}
    add x1, x1, :lo12:{mmu_config}
    bl mmu_on
    ldr x1, =3f
    br x1
3:  ldr x1, =boot_stack_top
    mov sp, x1
    ldr x1, =exception_vectors
    msr vbar_el1, x1
    isb
    mov x0, x19
    mov x1, x20
    bl rust_main
boot_failed:
    wfe
    b boot_failed

    /* Secondary CPUs (PSCI CPU_ON): X0 = the cpu index (the context id). */
    .global secondary_entry
secondary_entry:
    msr daifset, #0xf
    mov x19, x0
    bl drop_to_el1
    adrp x1, {mmu_config}
    add x1, x1, :lo12:{mmu_config}
    bl mmu_on
    ldr x1, =4f
    br x1
4:  ldr x1, =ap_stacks
    add x2, x19, #1
    mov x3, #{ap_stack}
    madd x1, x2, x3, x1         /* the top of stack x19 */
    mov sp, x1
    ldr x1, =exception_vectors
    msr vbar_el1, x1
    isb
    mov x0, x19
    bl ap_main
5:  wfe
    b 5b

    /* At EL2 (QEMU with virtualization=on): run the guest at EL1 instead. At EL1: FP/SIMD on. */
drop_to_el1:
    mrs x9, CurrentEL
    cmp x9, #8
    b.ne 6f
    mov x9, #(1 << 31)          /* HCR_EL2.RW: EL1 is AArch64 */
    msr hcr_el2, x9
    mov x9, #0x33ff             /* CPTR_EL2: RES1 bits, no FP trap */
    msr cptr_el2, x9
    mrs x9, cnthctl_el2
    orr x9, x9, #3              /* EL1 may use the physical counter and timer */
    msr cnthctl_el2, x9
    msr cntvoff_el2, xzr
    mrs x9, id_aa64pfr0_el1
    ubfx x9, x9, #24, #4
    cbz x9, 7f                  /* no GICv3 system registers */
    mrs x9, ICC_SRE_EL2
    mov x10, #0x9               /* SRE, Enable: EL1 may use the system registers */
    orr x9, x9, x10
    msr ICC_SRE_EL2, x9
7:  mov x9, #0x3c5              /* EL1h, DAIF masked */
    msr spsr_el2, x9
    adr x9, 6f
    msr elr_el2, x9
    isb
    eret
6:  mov x9, #(3 << 20)          /* CPACR_EL1.FPEN: no FP/SIMD trap at EL1 and EL0 */
    msr cpacr_el1, x9
    isb
    ret

    /* MMU on with MMU_CONFIG at X1: MAIR, TCR, TTBR0, TTBR1, SCTLR. */
mmu_on:
    ldr x2, [x1, #0]
    msr mair_el1, x2
    ldr x2, [x1, #8]
    msr tcr_el1, x2
    ldr x2, [x1, #16]
    msr ttbr0_el1, x2
    ldr x2, [x1, #24]
    msr ttbr1_el1, x2
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x2, [x1, #32]
    msr sctlr_el1, x2
    isb
    ic iallu
    dsb nsh
    isb
    ret

    .ltorg

    .section .noinit.stacks, "aw", @nobits
    .balign 4096
    .skip {boot_stack}
    .global boot_stack_top
boot_stack_top:
    .skip {user_stack}
    .global user_stack_top
user_stack_top:
    .global ap_stacks
ap_stacks:
    .skip {ap_stacks}
    "#,
    mmu_config = sym MMU_CONFIG,
    boot_stack = const BOOT_STACK_SIZE,
    user_stack = const USER_STACK_SIZE,
    ap_stack = const AP_STACK_SIZE,
    ap_stacks = const AP_STACK_SIZE * MAX_CPUS,
);

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
    /// The EL0 stack.
    pub static user_stack_top: u8;
    /// Where PSCI CPU_ON starts a secondary CPU (its physical address: see `paging`).
    pub fn secondary_entry();
}

/// MAIR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, SCTLR_EL1 as `mmu_on` loads them; then the image's
/// physical address. Written once by `early_tables`, read-only afterwards.
static MMU_CONFIG: Global<[u64; 6]> = Global::new([0; 6]);

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// TTBR0's level-1 table (1 GiB blocks), the level-2 table of the GiB with the image, TTBR1's
/// level-1 and level-2 tables and the level-3 tables of the image (one per 2 MiB).
#[repr(C)]
struct Tables {
    id_l1: Table,
    id_l2: Table,
    hi_l1: Table,
    hi_l2: Table,
    hi_l3: [Table; L3_TABLES],
}

/// In .bss: zeroed before `early_tables` runs, which is the only writer.
static TABLES: Global<Tables> = Global::new(Tables {
    id_l1: Table([0; 512]),
    id_l2: Table([0; 512]),
    hi_l1: Table([0; 512]),
    hi_l2: Table([0; 512]),
    hi_l3: [const { Table([0; 512]) }; L3_TABLES],
});

// Descriptor bits (VMSAv8-64, 4 KiB granule).
const DESC_BLOCK: u64 = 0b01;
const DESC_TABLE: u64 = 0b11;
const DESC_PAGE: u64 = 0b11;
const ATTR_DEVICE: u64 = 1 << 2; // MAIR index 1
const ATTR_NORMAL: u64 = 2 << 2; // MAIR index 2
const AP_RW_ALL: u64 = 0b01 << 6;
const AP_RO_EL1: u64 = 0b10 << 6;
const AP_RO_ALL: u64 = 0b11 << 6;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// Device memory: EL0 and EL1 read/write, never executable.
const DEVICE_BLOCK: u64 = DESC_BLOCK | ATTR_DEVICE | AP_RW_ALL | AF | PXN | UXN;
/// The image's identity blocks: normal, EL1 read-only and executable (the MMU switch runs here).
const IDMAP_IMAGE_BLOCK: u64 = DESC_BLOCK | ATTR_NORMAL | AP_RO_EL1 | SH_INNER | AF | UXN;
const PAGE_TEXT: u64 = DESC_PAGE | ATTR_NORMAL | AP_RO_ALL | SH_INNER | AF;
const PAGE_RODATA: u64 = DESC_PAGE | ATTR_NORMAL | AP_RO_ALL | SH_INNER | AF | PXN | UXN;
const PAGE_DATA: u64 = DESC_PAGE | ATTR_NORMAL | AP_RW_ALL | SH_INNER | AF | PXN | UXN;

/// Attr0 device-nGnRnE, attr1 device-nGnRE, attr2 normal write-back read/write-allocate.
const MAIR: u64 = (0x04 << 8) | (0xff << 16);
const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

/// Builds the page tables and MMU_CONFIG (see the module comment) for an image at physical
/// address `pa`. Runs with the MMU off, before anything else: only PC-relative addressing,
/// no panics. Returns 0, or 1 when the image does not fit what the tables map.
#[no_mangle]
extern "C" fn early_tables(pa: u64) -> u64 {
    // Offsets from the image start; PC-relative, so right before and after the MMU is on.
    let base = core::ptr::addr_of!(__image_start) as u64;
    let (text_end, rodata_end, image_end) = (
        core::ptr::addr_of!(__text_end) as u64 - base,
        core::ptr::addr_of!(__rodata_end) as u64 - base,
        core::ptr::addr_of!(__image_end) as u64 - base,
    );
    let image_gib = pa / GIB;
    if image_end > MAX_IMAGE || (pa + image_end - 1) / GIB != image_gib || image_gib >= 512 {
        return 1;
    }
    // SAFETY: the tables are this code's alone (one CPU, before the MMU is on).
    unsafe {
        let t = TABLES.get();
        let id_l1 = addr_of_mut!((*t).id_l1.0) as *mut u64;
        let id_l2 = addr_of_mut!((*t).id_l2.0) as *mut u64;
        let hi_l1 = addr_of_mut!((*t).hi_l1.0) as *mut u64;
        let hi_l2 = addr_of_mut!((*t).hi_l2.0) as *mut u64;
        let hi_l3 = addr_of_mut!((*t).hi_l3) as *mut u64;
        let mut i = 0u64;
        while i < 512 {
            id_l1
                .add(i as usize)
                .write_volatile((i * GIB) | DEVICE_BLOCK);
            let block = image_gib * GIB + i * MIB2;
            let image = block + MIB2 > pa && block < pa + image_end;
            id_l2.add(i as usize).write_volatile(
                block
                    | if image {
                        IDMAP_IMAGE_BLOCK
                    } else {
                        DEVICE_BLOCK
                    },
            );
            i += 1;
        }
        id_l1
            .add(image_gib as usize)
            .write_volatile(id_l2 as u64 | DESC_TABLE);
        hi_l1.write_volatile(hi_l2 as u64 | DESC_TABLE);
        let mut k = 0u64;
        while k < L3_TABLES as u64 {
            hi_l2
                .add(k as usize)
                .write_volatile((hi_l3 as u64 + k * 4096) | DESC_TABLE);
            k += 1;
        }
        let mut off = 0u64;
        while off < image_end {
            let attrs = if off < text_end {
                PAGE_TEXT
            } else if off < rodata_end {
                PAGE_RODATA
            } else {
                PAGE_DATA
            };
            hi_l3
                .add((off / 4096) as usize)
                .write_volatile((pa + off) | attrs);
            off += 4096;
        }

        let parange: u64;
        core::arch::asm!("mrs {}, id_aa64mmfr0_el1", out(reg) parange);
        let ips = (parange & 0xf).min(5);
        // T0SZ = T1SZ = 25 (39-bit halves), 4 KiB granules, walks inner-shareable write-back.
        let tcr = 25
            | (0b01 << 8)
            | (0b01 << 10)
            | (0b11 << 12)
            | (25 << 16)
            | (0b01 << 24)
            | (0b01 << 26)
            | (0b11 << 28)
            | (0b10 << 30)
            | (ips << 32);
        let mut sctlr: u64;
        core::arch::asm!("mrs {}, sctlr_el1", out(reg) sctlr);
        // Off: A (alignment checks), WXN, EE, E0E. On: M, C, SA, SA0, I, DZE, UCT, SPAN (PAN
        // stays as it is on exceptions; the kernel reads EL0's data).
        sctlr &= !((1 << 1) | (1 << 19) | (1 << 24) | (1 << 25));
        sctlr |= (1 << 0)
            | (1 << 2)
            | (1 << 3)
            | (1 << 4)
            | (1 << 12)
            | (1 << 14)
            | (1 << 15)
            | (1 << 23);
        let cfg = MMU_CONFIG.get() as *mut u64;
        cfg.write_volatile(MAIR);
        cfg.add(1).write_volatile(tcr);
        cfg.add(2).write_volatile(id_l1 as u64);
        cfg.add(3).write_volatile(hi_l1 as u64);
        cfg.add(4).write_volatile(sctlr);
        cfg.add(5).write_volatile(pa);
        // Written with the MMU (and so the data cache) off: drop any stale lines before the
        // table walker and the secondaries read them through the cache.
        dcache_clean_invalidate(t as u64, core::mem::size_of::<Tables>() as u64);
        dcache_clean_invalidate(cfg as u64, 48);
    }
    0
}

/// `dc civac` over `[start, start + len)`, a line (CTR_EL0.DminLine) at a time, then `dsb sy`.
fn dcache_clean_invalidate(start: u64, len: u64) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr) };
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut at = start & !(line - 1);
    while at < start + len {
        // SAFETY: cleaning and invalidating lines of memory this code owns changes no value.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) at) };
        at += line;
    }
    // SAFETY: a barrier.
    unsafe { core::arch::asm!("dsb sy") };
}

/// The image's physical address (from `MMU_CONFIG`).
pub fn image_pa() -> u64 {
    // SAFETY: written once before the MMU came on, read-only since.
    unsafe { (*MMU_CONFIG.get())[5] }
}

/// The image's size in bytes.
pub fn image_size() -> u64 {
    core::ptr::addr_of!(__image_end) as u64 - core::ptr::addr_of!(__image_start) as u64
}
