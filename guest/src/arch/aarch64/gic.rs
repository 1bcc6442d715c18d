//! The GICv3: distributor, this CPU's redistributor, the CPU interface (system registers),
//! LPIs and the ITS — as little as the guest needs.
//!
//! `init` (per CPU that takes interrupts: only the boot CPU) enables group-1 interrupts with
//! affinity routing at the distributor, wakes this CPU's redistributor, makes the SGIs and
//! PPIs group 1, enables the CPU interface (priority mask 0xff) and the virtual timer's PPI.
//!
//! `lpis` (on first use by `msi`) sets up LPIs and the ITS: a property table (one byte per LPI
//! 8192..16383: priority 0xa0, enable) and a zeroed pending table at the redistributor
//! (PROPBASER, PENDBASER, then EnableLPIs); at the ITS one flat page of device table and of
//! collection table (GITS_BASERn), a 4 KiB command queue (CBASER, 64 KiB aligned: KVM ignores
//! its address bits 15:12), every address read back; then MAPC (collection 0 → this
//! redistributor) and SYNC. `map` adds one event of one device: MAPD (once per device, with a
//! 256-event ITT), MAPTI (event → LPI, collection 0), INV, SYNC.
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{cpu, paging, time};
use crate::sync::{Global, SpinLock};

// Distributor.
const GICD_CTLR: u64 = 0x0;
const GICD_TYPER: u64 = 0x4;
const CTLR_RWP: u32 = 1 << 31;
const CTLR_ARE_NS: u32 = 1 << 4;
const CTLR_ENABLE_G1A: u32 = 1 << 1;
const CTLR_ENABLE_G1: u32 = 1 << 0;
const TYPER_LPIS: u32 = 1 << 17;
// Redistributor: RD frame, then the SGI frame 64 KiB above.
const GICR_CTLR: u64 = 0x0;
const GICR_TYPER: u64 = 0x8;
const GICR_WAKER: u64 = 0x14;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;
const GICR_SGI: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = GICR_SGI + 0x80;
const GICR_ISENABLER0: u64 = GICR_SGI + 0x100;
const GICR_ICENABLER0: u64 = GICR_SGI + 0x180;
const GICR_IPRIORITYR: u64 = GICR_SGI + 0x400;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICR_TYPER_PLPIS: u64 = 1 << 0;
// ITS.
const GITS_CTLR: u64 = 0x0;
const GITS_TYPER: u64 = 0x8;
const GITS_CBASER: u64 = 0x80;
const GITS_CWRITER: u64 = 0x88;
const GITS_CREADR: u64 = 0x90;
const GITS_BASER: u64 = 0x100;
/// Where devices write their MSIs (in the ITS's second 64 KiB frame).
pub const GITS_TRANSLATER: u64 = 0x1_0040;
const BASER_VALID: u64 = 1 << 63;
/// Inner write-back read/write-allocate, inner shareable (for BASER, CBASER, PROPBASER and
/// PENDBASER alike: the cacheability field at 61:59 or 9:7 and shareability at 11:10).
const ITS_CACHE_WB: u64 = 0b111 << 59;
const RD_CACHE_WB: u64 = 0b111 << 7;
const SHARE_INNER: u64 = 0b01 << 10;
const PENDBASER_PTZ: u64 = 1 << 62;
/// The physical address fields of PROPBASER, PENDBASER and CBASER (51:12), and of GITS_BASERn
/// (47:12; with 64 KiB pages bits 15:12 hold address bits 51:48, zero here).
const ADDR_51_12: u64 = 0x000f_ffff_ffff_f000;
const ADDR_47_12: u64 = 0x0000_ffff_ffff_f000;
/// The first LPI, and the LPI INTID bits used (LPIs 8192..16383).
pub const LPI_BASE: u32 = 8192;
const LPI_ID_BITS: u32 = 14;
/// Events per device (ITT size, 2^8).
const ITT_EVENT_BITS: u32 = 8;
const MAX_DEVICES: usize = 12;
/// Priority given to every interrupt (lower is more urgent; the mask lets all through).
const PRIORITY: u8 = 0xa0;
const TIMEOUT_US: u64 = 200_000;

/// The LPI and ITS memory. KVM's ITS takes the pending table's and the command queue's addresses
/// as 64 KiB aligned (it clears bits 15:12 of GICR_PENDBASER's and GITS_CBASER's address, which
/// the architecture allows to be only 4 KiB aligned), and the device and collection tables are
/// one 64 KiB ITS page each: those four start on 64 KiB boundaries; the property table and one
/// ITT per device fill the rest of the first 64 KiB.
#[repr(C, align(65536))]
struct ItsMemory {
    pending: [u8; 4096],
    props: [u8; 8192],
    itt: [[u8; 4096]; MAX_DEVICES],
    _pad: [u8; ITS_PAD],
    devices: [u8; 65536],
    collections: [u8; 65536],
    commands: [u8; 4096],
}

const ITS_PAD: usize = 65536 - 4096 - 8192 - 4096 * MAX_DEVICES;
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(ItsMemory, pending) % 65536 == 0);
    assert!(offset_of!(ItsMemory, props) % 4096 == 0);
    assert!(offset_of!(ItsMemory, devices) % 65536 == 0);
    assert!(offset_of!(ItsMemory, collections) % 65536 == 0);
    assert!(offset_of!(ItsMemory, commands) % 65536 == 0);
};

#[link_section = ".noinit.align64k"]
static MEM: Global<ItsMemory> = Global::new(ItsMemory {
    pending: [0; 4096],
    props: [0; 8192],
    itt: [[0; 4096]; MAX_DEVICES],
    _pad: [0; ITS_PAD],
    devices: [0; 65536],
    collections: [0; 65536],
    commands: [0; 4096],
});

static DIST: AtomicU64 = AtomicU64::new(0);
/// The boot CPU's redistributor (RD frame).
static RD: AtomicU64 = AtomicU64::new(0);

/// The ITS and what has been mapped.
struct Its {
    base: u64,
    /// Command queue write offset.
    cwriter: u64,
    /// Device IDs with an ITT (MAPD done), and the events mapped for each.
    devices: [Option<(u32, [u64; 4])>; MAX_DEVICES],
    /// What MAPC and SYNC name as this redistributor.
    rdbase: u64,
    /// Device IDs the device table covers.
    max_devid: u64,
}

static ITS: SpinLock<Option<Its>> = SpinLock::new(None);
static LPIS_TRIED: AtomicBool = AtomicBool::new(false);

fn rd32(addr: u64) -> u32 {
    // SAFETY: GIC registers are device memory in the identity map (addresses from the FDT).
    unsafe { cpu::mmio_read32(addr) }
}
fn wr32(addr: u64, v: u32) {
    // SAFETY: as in `rd32`.
    unsafe { cpu::mmio_write32(addr, v) }
}
fn rd64(addr: u64) -> u64 {
    // SAFETY: as in `rd32`.
    unsafe { cpu::mmio_read64(addr) }
}
fn wr64(addr: u64, v: u64) {
    // SAFETY: as in `rd32`.
    unsafe { cpu::mmio_write64(addr, v) }
}

/// Waits (bounded) until `done()`.
fn wait(done: impl Fn() -> bool, what: &'static str) -> Result<(), &'static str> {
    let end = time::deadline_us(TIMEOUT_US);
    while !done() {
        if time::passed(end) {
            return Err(what);
        }
        cpu::pause();
    }
    Ok(())
}

/// Finds the redistributor whose GICR_TYPER affinity is `mpidr`'s in `(base, size)`.
fn find_redist((base, size): (u64, u64), mpidr: u64) -> Option<u64> {
    let aff = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
    let mut at = base;
    while at + 0x2_0000 <= base.saturating_add(size) {
        let typer = rd64(at + GICR_TYPER);
        if typer >> 32 == aff {
            return Some(at);
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        at += if typer & GICR_TYPER_VLPIS != 0 {
            0x4_0000
        } else {
            0x2_0000
        };
    }
    None
}

/// Sets up the distributor, this CPU's redistributor and CPU interface, and enables the PPI
/// `timer_intid` (see the module comment).
pub fn init(dist: u64, redist: (u64, u64), timer_intid: u32) -> Result<(), &'static str> {
    DIST.store(dist, Ordering::Relaxed);
    wr32(
        dist + GICD_CTLR,
        CTLR_ARE_NS | CTLR_ENABLE_G1A | CTLR_ENABLE_G1,
    );
    wait(
        || rd32(dist + GICD_CTLR) & CTLR_RWP == 0,
        "GIC distributor stuck in RWP",
    )?;
    let rd = find_redist(redist, cpu::mpidr()).ok_or("no GIC redistributor for this CPU")?;
    RD.store(rd, Ordering::Relaxed);
    let waker = rd32(rd + GICR_WAKER);
    wr32(rd + GICR_WAKER, waker & !WAKER_PROCESSOR_SLEEP);
    wait(
        || rd32(rd + GICR_WAKER) & WAKER_CHILDREN_ASLEEP == 0,
        "GIC redistributor did not wake",
    )?;
    wr32(rd + GICR_ICENABLER0, u32::MAX);
    wr32(rd + GICR_IGROUPR0, u32::MAX);
    for i in 0..8 {
        let p = u32::from(PRIORITY);
        wr32(rd + GICR_IPRIORITYR + 4 * i, p | p << 8 | p << 16 | p << 24);
    }
    // SAFETY: the CPU interface's system registers: system-register access on, every priority
    // let through, group 1 on. They only decide which interrupts reach this CPU.
    unsafe {
        asm!(
            "mrs {t}, ICC_SRE_EL1",
            "orr {t}, {t}, #1",
            "msr ICC_SRE_EL1, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr ICC_PMR_EL1, {t}",
            "msr ICC_BPR1_EL1, xzr",
            "msr ICC_CTLR_EL1, xzr",
            "mov {t}, #1",
            "msr ICC_IGRPEN1_EL1, {t}",
            "isb",
            t = out(reg) _,
            options(nostack)
        )
    }
    if timer_intid < 32 {
        wr32(rd + GICR_ISENABLER0, 1 << timer_intid);
    }
    Ok(())
}

/// Acknowledges the highest-priority pending interrupt: its INTID (1020–1023: none).
pub fn ack() -> u32 {
    let v: u64;
    // SAFETY: reading ICC_IAR1_EL1 acknowledges an interrupt, which `eoi` then ends.
    unsafe { asm!("mrs {}, ICC_IAR1_EL1", out(reg) v, options(nomem, nostack)) }
    v as u32
}

/// Ends interrupt `intid` (priority drop and deactivation: EOImode 0).
pub fn eoi(intid: u32) {
    // SAFETY: ends the interrupt `ack` returned.
    unsafe {
        asm!("msr ICC_EOIR1_EL1, {}", "isb", in(reg) u64::from(intid), options(nomem, nostack))
    }
}

/// Physical address of ITS memory at `p` (an image address).
fn pa<T>(p: *const T) -> u64 {
    paging::dma_addr(p as u64)
}

/// Sets up LPIs and the ITS at `its` (once; later calls return the first outcome).
fn lpis(its: u64) -> Result<(), &'static str> {
    if ITS.lock().is_some() {
        return Ok(());
    }
    if LPIS_TRIED.swap(true, Ordering::Relaxed) {
        return Err("the ITS could not be set up (see the first error)");
    }
    let dist = DIST.load(Ordering::Relaxed);
    let rd = RD.load(Ordering::Relaxed);
    if rd32(dist + GICD_TYPER) & TYPER_LPIS == 0 {
        return Err("the GIC distributor does not support LPIs");
    }
    let id_bits = ((rd32(dist + GICD_TYPER) >> 19) & 0x1f) + 1;
    if id_bits < LPI_ID_BITS {
        return Err("the GIC supports fewer INTID bits than the LPIs used need");
    }
    if rd64(rd + GICR_TYPER) & GICR_TYPER_PLPIS == 0 {
        return Err("the redistributor does not support LPIs");
    }
    let m = MEM.get();
    // SAFETY: the ITS memory is this module's; nothing (the GIC included) uses it yet.
    unsafe { core::ptr::write_bytes(m, 0, 1) };
    // SAFETY: only addresses of fields are taken.
    let (pending, props, commands, devices, collections) = unsafe {
        (
            pa(core::ptr::addr_of!((*m).pending)),
            pa(core::ptr::addr_of!((*m).props)),
            pa(core::ptr::addr_of!((*m).commands)),
            pa(core::ptr::addr_of!((*m).devices)),
            pa(core::ptr::addr_of!((*m).collections)),
        )
    };
    if pending % 0x1_0000 != 0 {
        return Err("the LPI pending table is not 64 KiB aligned (image not 64 KiB aligned)");
    }
    // Make the zeroes visible to the GIC before it is told where the tables are.
    // SAFETY: a barrier.
    unsafe { asm!("dsb ish", options(nostack)) };
    wr64(
        rd + GICR_PROPBASER,
        props | RD_CACHE_WB | SHARE_INNER | u64::from(LPI_ID_BITS - 1),
    );
    wr64(
        rd + GICR_PENDBASER,
        pending | RD_CACHE_WB | SHARE_INNER | PENDBASER_PTZ,
    );
    // A GIC may keep fewer address bits than were written (KVM keeps the pending table's
    // 64 KiB aligned): the tables must be where it reads them.
    if rd64(rd + GICR_PROPBASER) & ADDR_51_12 != props {
        return Err("the redistributor moved the LPI property table (GICR_PROPBASER)");
    }
    if rd64(rd + GICR_PENDBASER) & ADDR_51_12 != pending {
        return Err("the redistributor moved the LPI pending table (GICR_PENDBASER)");
    }
    wr32(rd + GICR_CTLR, rd32(rd + GICR_CTLR) | 1); // EnableLPIs

    if rd32(its + GITS_CTLR) & 1 != 0 {
        return Err("the ITS is already enabled");
    }
    let typer = rd64(its + GITS_TYPER);
    let devbits = ((typer >> 13) & 0x1f) + 1;
    let pta = typer & (1 << 19) != 0;
    let mut max_devid = 0;
    for n in 0..8u64 {
        let reg = its + GITS_BASER + 8 * n;
        let baser = rd64(reg);
        let kind = (baser >> 56) & 7;
        let entry = ((baser >> 48) & 0x1f) + 1;
        let table = match kind {
            1 => devices,
            4 => collections,
            _ => continue,
        };
        // One page, 64 KiB asked; a smaller fixed page size reads back, and still fits.
        wr64(
            reg,
            BASER_VALID | ITS_CACHE_WB | SHARE_INNER | (0b10 << 8) | table | (kind << 56),
        );
        let got = rd64(reg);
        if got & BASER_VALID == 0 {
            return Err("the ITS refused a table (GITS_BASER)");
        }
        if got & ADDR_47_12 != table {
            return Err("the ITS moved a table (GITS_BASER)");
        }
        if kind == 1 {
            let page = match (got >> 8) & 3 {
                0 => 4096,
                1 => 16384,
                _ => 65536,
            };
            max_devid = (page / entry).min(1 << devbits) - 1;
        }
    }
    wr64(
        its + GITS_CBASER,
        BASER_VALID | ITS_CACHE_WB | SHARE_INNER | commands,
    );
    if rd64(its + GITS_CBASER) & ADDR_51_12 != commands {
        return Err("the ITS moved the command queue (GITS_CBASER)");
    }
    wr64(its + GITS_CWRITER, 0);
    wr32(its + GITS_CTLR, 1);
    let rdbase = if pta {
        rd
    } else {
        // Processor_Number, bits 23:8 of GICR_TYPER.
        ((rd64(rd + GICR_TYPER) >> 8) & 0xffff) << 16
    };
    let mut state = Its {
        base: its,
        cwriter: 0,
        devices: [None; MAX_DEVICES],
        rdbase,
        max_devid,
    };
    // MAPC: collection 0 → this redistributor; SYNC.
    state.command([0x09, 0, (1 << 63) | rdbase, 0])?;
    state.command([0x05, 0, rdbase, 0])?;
    *ITS.lock() = Some(state);
    Ok(())
}

impl Its {
    /// Queues one command and waits (bounded) until the ITS has read it.
    fn command(&mut self, words: [u64; 4]) -> Result<(), &'static str> {
        let m = MEM.get();
        let at = self.cwriter;
        // SAFETY: the command queue is this module's; the ITS reads only the slots up to
        // CWRITER, and this slot is past what it has been given.
        unsafe {
            let slot = (core::ptr::addr_of_mut!((*m).commands) as *mut u64).add(at as usize / 8);
            for (i, w) in words.iter().enumerate() {
                slot.add(i).write_volatile(*w);
            }
            asm!("dsb ish", options(nostack));
        }
        self.cwriter = (at + 32) % 4096;
        let (base, cw) = (self.base, self.cwriter);
        wr64(base + GITS_CWRITER, cw);
        wait(
            || rd64(base + GITS_CREADR) & !0x1f == cw || rd64(base + GITS_CREADR) & 1 != 0,
            "the ITS did not read its command queue",
        )?;
        if rd64(base + GITS_CREADR) & 1 != 0 {
            return Err("the ITS stalled on a command");
        }
        Ok(())
    }
}

/// Makes event `event` (< 256) of device `devid` raise LPI `LPI_BASE + event` on this CPU,
/// setting up LPIs and the ITS at `its` on first use.
pub fn map(its: u64, devid: u32, event: u32) -> Result<u32, &'static str> {
    lpis(its)?;
    if event >= 1 << ITT_EVENT_BITS {
        return Err("MSI event beyond the ITT");
    }
    let intid = LPI_BASE + event;
    let mut guard = ITS.lock();
    let its = guard.as_mut().ok_or("the ITS is not set up")?;
    if u64::from(devid) > its.max_devid {
        return Err("PCI device ID beyond the ITS device table");
    }
    let slot = match its
        .devices
        .iter()
        .position(|d| matches!(d, Some((id, _)) if *id == devid))
    {
        Some(i) => i,
        None => {
            let i = its
                .devices
                .iter()
                .position(|d| d.is_none())
                .ok_or("more MSI devices than the guest has ITTs for")?;
            let m = MEM.get();
            // SAFETY: only the address of the ITT is taken.
            let itt = pa(unsafe { core::ptr::addr_of!((*m).itt[i]) });
            // MAPD: device → ITT of 2^8 events.
            its.command([
                0x08 | (u64::from(devid) << 32),
                u64::from(ITT_EVENT_BITS - 1),
                (1 << 63) | itt,
                0,
            ])?;
            its.devices[i] = Some((devid, [0; 4]));
            i
        }
    };
    let (word, bit) = ((event / 64) as usize, 1u64 << (event % 64));
    if matches!(its.devices[slot], Some((_, mapped)) if mapped[word] & bit != 0) {
        return Ok(intid);
    }
    let m = MEM.get();
    // SAFETY: the property table is this module's; the byte of this LPI: priority, enabled.
    unsafe {
        (core::ptr::addr_of_mut!((*m).props) as *mut u8)
            .add(event as usize)
            .write_volatile(PRIORITY | 1);
        asm!("dsb ish", options(nostack));
    }
    let rdbase = its.rdbase;
    // MAPTI: (device, event) → LPI in collection 0; INV (re-read its property); SYNC.
    its.command([
        0x0a | (u64::from(devid) << 32),
        u64::from(event) | (u64::from(intid) << 32),
        0,
        0,
    ])?;
    its.command([0x0c | (u64::from(devid) << 32), u64::from(event), 0, 0])?;
    its.command([0x05, 0, rdbase, 0])?;
    if let Some((_, mapped)) = its.devices[slot].as_mut() {
        mapped[word] |= bit;
    }
    Ok(intid)
}

/// One line of what the GIC says about LPI delivery (for a driver whose MSI never came): the
/// redistributor's LPI registers, the ITS's state and command queue, the property byte of
/// `event`'s LPI, and the CPU interface (mask, group enable, highest pending, running priority).
pub fn lpi_state(event: u32) -> LpiState {
    let rd = RD.load(Ordering::Relaxed);
    let its = ITS.lock().as_ref().map(|i| i.base);
    let m = MEM.get();
    let prop = if event < 8192 {
        // SAFETY: reading one byte of this module's property table.
        unsafe {
            (core::ptr::addr_of!((*m).props) as *const u8)
                .add(event as usize)
                .read_volatile()
        }
    } else {
        0
    };
    let (pmr, igrpen1, hppir1, rpr, isr, daif): (u64, u64, u64, u64, u64, u64);
    // SAFETY: reads of CPU interface and PSTATE registers, which have no side effect.
    unsafe {
        asm!(
            "mrs {0}, ICC_PMR_EL1",
            "mrs {1}, ICC_IGRPEN1_EL1",
            "mrs {2}, ICC_HPPIR1_EL1",
            "mrs {3}, ICC_RPR_EL1",
            "mrs {4}, isr_el1",
            "mrs {5}, daif",
            out(reg) pmr, out(reg) igrpen1, out(reg) hppir1, out(reg) rpr, out(reg) isr,
            out(reg) daif, options(nomem, nostack)
        )
    }
    LpiState {
        gicr: if rd == 0 {
            [0; 3]
        } else {
            [
                u64::from(rd32(rd + GICR_CTLR)),
                rd64(rd + GICR_PROPBASER),
                rd64(rd + GICR_PENDBASER),
            ]
        },
        gits: its.map(|b| {
            [
                u64::from(rd32(b + GITS_CTLR)),
                rd64(b + GITS_CBASER),
                rd64(b + GITS_CWRITER),
                rd64(b + GITS_CREADR),
                rd64(b + GITS_BASER),
                rd64(b + GITS_BASER + 8),
            ]
        }),
        prop,
        icc: [pmr, igrpen1, hppir1, rpr, isr, daif],
    }
}

/// What [`lpi_state`] read.
pub struct LpiState {
    gicr: [u64; 3],
    gits: Option<[u64; 6]>,
    prop: u8,
    icc: [u64; 6],
}

impl core::fmt::Display for LpiState {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let [ctlr, prop, pend] = self.gicr;
        write!(
            f,
            "gicr ctlr={ctlr:#x} propbaser={prop:#x} pendbaser={pend:#x}"
        )?;
        match self.gits {
            Some([ctlr, cbaser, cwriter, creadr, b0, b1]) => write!(
                f,
                " gits ctlr={ctlr:#x} cbaser={cbaser:#x} cwriter={cwriter:#x} creadr={creadr:#x} baser0={b0:#x} baser1={b1:#x}"
            )?,
            None => write!(f, " gits none")?,
        }
        let [pmr, igrpen1, hppir1, rpr, isr, daif] = self.icc;
        write!(
            f,
            " lpi_prop={:#x} icc pmr={pmr:#x} igrpen1={igrpen1:#x} hppir1={hppir1:#x} rpr={rpr:#x} isr={isr:#x} daif={daif:#x}",
            self.prop
        )
    }
}
