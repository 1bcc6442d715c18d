//! The `smp` command on aarch64: every CPU of the FDT's `/cpus` started with PSCI CPU_ON.
//!
//! A secondary starts at `boot::secondary_entry` (its physical address) with the cpu index as
//! the context ID, turns its MMU on with the boot CPU's tables, takes its stack, and calls
//! [`ap_main`], which reports its MPIDR, counts itself in [`ONLINE`] and parks (`wfi` with
//! interrupts masked). CPUs are started one at a time, each waited for.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::boot::{self, MAX_CPUS};
use super::{cpu, paging, psci, time, BootInfo};
use crate::println;

/// How long one CPU gets to reach `ap_main`.
const AP_START_TIMEOUT_US: u64 = 2_000_000;

/// CPUs that reached `ap_main` (not counting the boot CPU).
static ONLINE: AtomicU32 = AtomicU32::new(0);
/// The MPIDR each CPU read for itself, by index (u64::MAX: not reported).
static REPORTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

/// A secondary CPU in Rust: MMU on, on its own stack, interrupts masked.
#[no_mangle]
extern "C" fn ap_main(index: u64) -> ! {
    let mpidr = cpu::mpidr();
    if let Some(slot) = REPORTED.get(index as usize) {
        slot.store(mpidr, Ordering::Relaxed);
    }
    println!("smp: cpu {} (mpidr {:#x}) online", index, mpidr);
    ONLINE.fetch_add(1, Ordering::Release);
    cpu::halt_forever()
}

/// The `smp` command.
pub fn run(info: &BootInfo) {
    if info.cpus_listed > MAX_CPUS {
        crate::fail!(
            "smp: the FDT lists {} cpus, the guest supports {}",
            info.cpus_listed,
            MAX_CPUS
        );
    }
    let Some(conduit) = psci::conduit() else {
        crate::fail!("smp: no PSCI (arm,psci-0.2 with method hvc or smc) in the FDT");
    };
    let me = cpu::mpidr();
    let (khz, _) = time::ticks_khz();
    let (major, minor) = psci::version().unwrap_or((0, 0));
    println!(
        "smp: {} cpus in the FDT, boot cpu mpidr {:#x}, psci {}.{} via {}, counter {} kHz",
        info.cpus_listed, me, major, minor, conduit, khz
    );
    let entry = paging::dma_addr(boot::secondary_entry as *const () as u64);
    ONLINE.store(0, Ordering::Release);
    let mut started = 0;
    for (i, &mpidr) in info.cpu_mpidrs().iter().enumerate() {
        if mpidr == me {
            REPORTED[i].store(me, Ordering::Relaxed);
            continue;
        }
        let r = psci::call(psci::CPU_ON_64, mpidr, entry, i as u64);
        if r != psci::SUCCESS {
            println!("smp: cpu {} (mpidr {:#x}): CPU_ON returned {}", i, mpidr, r);
            continue;
        }
        started += 1;
        let end = time::deadline_us(AP_START_TIMEOUT_US);
        while ONLINE.load(Ordering::Acquire) < started && !time::passed(end) {
            cpu::pause();
        }
    }
    let online = ONLINE.load(Ordering::Acquire) as usize + 1;
    println!("smp: {} cpus online", online);
    if online != info.cpus_listed {
        crate::fail!("smp: {} of {} cpus online", online, info.cpus_listed);
    }
    for (i, &mpidr) in info.cpu_mpidrs().iter().enumerate() {
        let got = REPORTED[i].load(Ordering::Relaxed);
        if got != mpidr {
            crate::fail!(
                "smp: cpu {} reported mpidr {:#x}, the FDT says {:#x}",
                i,
                got,
                mpidr
            );
        }
    }
}
