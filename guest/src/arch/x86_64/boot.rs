//! The PVH entry: 32-bit protected mode → long mode → `rust_main`.
//!
//! The VMM enters `pvh_start32` (named by the `XEN_ELFNOTE_PHYS32_ENTRY` note) in 32-bit
//! protected mode with paging off, flat segments, and EBX = physical address of
//! `hvm_start_info`. The stub zeroes .bss (a few KiB: see `link.ld`), loads CR3 with the
//! identity map of the first 4 GiB (2 MiB pages, assembled as data: U/S set at every level, so
//! CPL3 code reaches RAM and the MMIO pages; the top GiB uncached), loads the 64-bit GDT, enables PAE, EFER.LME and paging, far-jumps to 64-bit code, switches to the
//! boot stack and calls `rust_main(start_info_paddr)`.
//!
//! GDT (shared by every CPU; the TSS descriptor is filled in by `gdt::init`):
//!
//! | selector | segment |
//! |---|---|
//! | 0x08 | kernel code, 64-bit |
//! | 0x10 | kernel data |
//! | 0x18 | user data, DPL 3 (0x1b with RPL) |
//! | 0x20 | user code, 64-bit, DPL 3 (0x23 with RPL) |
//! | 0x28 | 64-bit TSS (16 bytes) |

/// Bytes of each stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;
pub const INT_STACK_SIZE: usize = 16 * 1024;
pub const DF_STACK_SIZE: usize = 16 * 1024;
pub const USER_STACK_SIZE: usize = 16 * 1024;
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// Most CPUs the guest can bring up (AP stacks are static).
pub const MAX_CPUS: usize = 64;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const TSS_SELECTOR: u16 = 0x28;
/// Index of the TSS descriptor's first quadword in `gdt64`.
pub const TSS_GDT_INDEX: usize = 5;

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32           /* 32-bit entry; the upper half stays 0 for loaders reading 8 bytes */
    .long 0
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* start info, kept in ESI until rust_main */

    /* Zero .bss: only the small statics that need it. The page tables are pre-filled data,
       the big buffers and the stacks live in .noinit. (linux-loader's Elf::load does not
       zero p_memsz beyond p_filesz; it relies on fresh guest RAM.) */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    lgdt gdt64_ptr
    mov %cr0, %eax
    or $0x80010001, %eax        /* PG | WP | PE */
    mov %eax, %cr0
    ljmp ${kernel_cs}, $long_mode_entry

    .code64
long_mode_entry:
    mov ${kernel_ds}, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %esi, %edi              /* zero-extends: rust_main(start_info_paddr) */
    call rust_main
4:  cli
    hlt
    jmp 4b

    /* Where the SMP trampoline lands in the image: the shared GDT, then ap_main(cpu index). */
    .global ap_long_entry
ap_long_entry:
    movabs $gdt64_ptr, %rax
    lgdt (%rax)
    mov ${kernel_ds}, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    call ap_main                /* RDI = cpu index, RSP = this AP's stack */
5:  cli
    hlt
    jmp 5b

    .section .data.gdt, "aw"
    .balign 16
    .global gdt64
gdt64:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cff2000000ffff    /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff    /* 0x20 user code, 64-bit, DPL 3 */
    .quad 0, 0                  /* 0x28 TSS, filled in by gdt::init */
gdt64_end:
    .balign 16
    .global gdt64_ptr
gdt64_ptr:
    .word gdt64_end - gdt64 - 1
    .quad gdt64

    /* Identity map of the first 4 GiB with 2 MiB pages, assembled as data (building it at
       run time costs milliseconds of emulated CPL0 code): P | RW | US at every level, PS in
       the PDs, PWT | PCD from 3 GiB (MMIO) on. */
    .section .data.pagetables, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
    .global boot_pdpt
boot_pdpt:
    .quad boot_pd + 0x7
    .quad boot_pd + 0x1000 + 0x7
    .quad boot_pd + 0x2000 + 0x7
    .quad boot_pd + 0x3000 + 0x7
    .fill 508, 8, 0
    .global boot_pd
boot_pd:
    pd_index = 0
    .rept 1536
    .quad (pd_index << 21) | 0x87
    pd_index = pd_index + 1
    .endr
    .rept 512
    .quad (pd_index << 21) | 0x9f
    pd_index = pd_index + 1
    .endr

    .section .noinit.stacks, "aw", @nobits
    .balign 4096
    .skip {boot_stack}
    .global boot_stack_top
boot_stack_top:
    .skip {int_stack}
    .global int_stack_top
int_stack_top:
    .skip {df_stack}
    .global df_stack_top
df_stack_top:
    .skip {user_stack}
    .global user_stack_top
user_stack_top:
    .global ap_stacks
ap_stacks:
    .skip {ap_stacks}
    "#,
    boot_stack = const BOOT_STACK_SIZE,
    int_stack = const INT_STACK_SIZE,
    df_stack = const DF_STACK_SIZE,
    user_stack = const USER_STACK_SIZE,
    ap_stacks = const AP_STACK_SIZE * MAX_CPUS,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    options(att_syntax)
);

extern "C" {
    /// The page directory pointer table under PML4[0]: entries 0–3 map the first 4 GiB.
    pub static mut boot_pdpt: [u64; 512];
    /// The four page directories of the first 4 GiB (2048 entries of 2 MiB).
    pub static mut boot_pd: [u64; 2048];
    /// The GDT (7 quadwords; see the module comment).
    pub static mut gdt64: [u64; 7];
    /// RSP0: the stack interrupts from CPL3 arrive on.
    pub static int_stack_top: u8;
    /// IST1: the double-fault stack.
    pub static df_stack_top: u8;
    /// The CPL3 stack.
    pub static user_stack_top: u8;
    /// `MAX_CPUS` stacks of `AP_STACK_SIZE` bytes, indexed by cpu number.
    pub static ap_stacks: u8;
}
