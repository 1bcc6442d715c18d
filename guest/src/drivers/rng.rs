//! The `rng` command: a virtio-rng driver (virtio 1.x over PCI, completion by MSI-X).
//!
//! Lists bus 0 (as `pci`), then drives the first 1af4:1044: negotiation (VERSION_1 only), MSI-X
//! entry 0 → [`RNG_VECTOR`] on this CPU, queue 0 with [`BUFFERS`] device-writable buffers, one
//! kick, and a wait in `sti; hlt` (never a CPL0 spin: on PVM that delays delivery by ~3 ms)
//! woken by the MSI-X interrupt or the local APIC timer, bounded by [`MAX_TICKS`] timer ticks
//! and a TSC deadline. Then the used ring is checked and the device reset.
use core::fmt::Write;

use crate::arch::irq::{self, TIMER_VECTOR};
use crate::arch::{time, BootInfo};
use crate::msix::Msix;
use crate::pci::{self, Function};
use crate::println;
use crate::sync::Global;
use crate::virtio::queue::{Buffer, QueueMemory, SplitQueue};
use crate::virtio::{self, Transport};

/// PCI device ID of a modern virtio-rng.
pub const DEVICE_ID: u16 = virtio::MODERN_DEVICE_BASE + 4;
/// Buffers posted, and bytes each.
const BUFFERS: usize = 4;
const BUF_LEN: usize = 64;
/// Ring size asked for (less if the device's maximum is smaller).
const QUEUE_SIZE: u16 = 64;
/// Vector of the queue's MSI-X message.
pub const RNG_VECTOR: u8 = 0x40;
/// Period of the wake-up timer (`irq::TIMER_VECTOR`).
const TICK_US: u32 = 10_000;
/// Timer ticks to wait at most (2 s), and the same bound on the TSC.
const MAX_TICKS: u64 = 200;
const WAIT_US: u64 = 2_000_000;

#[link_section = ".noinit.virtio"]
static QUEUE: Global<QueueMemory> = Global::new(QueueMemory::new());
#[link_section = ".noinit.virtio"]
static BUFS: Global<[[u8; BUF_LEN]; BUFFERS]> = Global::new([[0; BUF_LEN]; BUFFERS]);

/// The `rng` command.
pub fn run(info: &BootInfo) {
    let bus = pci::list(info);
    let Some(f) = bus.find(virtio::VENDOR, DEVICE_ID) else {
        crate::fail!(
            "rng: no virtio-rng ({:04x}:{:04x}) on bus 0",
            virtio::VENDOR,
            DEVICE_ID
        );
    };
    if let Err(e) = drive(f) {
        crate::fail!("rng: {}", e);
    }
    println!("rng: ok");
}

/// A line of hex, for up to 16 bytes.
struct Hex([u8; 32], usize);

impl Write for Hex {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if self.1 < self.0.len() {
                self.0[self.1] = b;
                self.1 += 1;
            }
        }
        Ok(())
    }
}

fn drive(f: &Function) -> Result<(), &'static str> {
    let t = Transport::new(f)?;
    f.enable(pci::CMD_MEMORY | pci::CMD_BUS_MASTER);
    let msix = Msix::find(f.bdf).ok_or("no MSI-X capability")?;
    let (offered, accepted) = t.negotiate(virtio::F_VERSION_1)?;
    println!(
        "rng: {} device features {:#x}, accepted {:#x}, {} queue(s)",
        f.bdf,
        offered,
        accepted,
        t.num_queues()
    );

    // MSI-X on (function masked while the table is written), entry 0 → this CPU.
    msix.enable(f.bdf, true);
    let msg = msix.route(f, 0, RNG_VECTOR)?;
    msix.enable(f.bdf, false);
    t.set_config_vector(virtio::NO_VECTOR)?;

    let max = t.queue_max_size(0);
    if max == 0 {
        return Err("device has no queue 0");
    }
    let size = max.min(QUEUE_SIZE);
    // SAFETY: QUEUE is this driver's alone; the device gets it only through setup_queue below
    // and is reset before this function returns (or fails the guest).
    let mut q = unsafe { SplitQueue::new(QUEUE.get(), size)? };
    let notify = t.setup_queue(0, &q, 0)?;
    t.driver_ok()?;
    println!(
        "rng: queue 0 size {} (max {}), msi-x entry 0 -> {} (control {:#06x}), notify {:#x}",
        size,
        max,
        msg,
        msix.control(f.bdf),
        notify
    );

    let bufs = BUFS.get() as *mut [u8; BUF_LEN];
    for i in 0..BUFFERS {
        // SAFETY: the buffers are this driver's; each is cleared, then handed to the device
        // until it comes back through the used ring (or the device is reset).
        let id = unsafe {
            let b = bufs.add(i);
            core::ptr::write_bytes(b, 0, 1);
            q.add(&[Buffer {
                addr: b as u64,
                len: BUF_LEN as u32,
                device_writes: true,
            }])
        };
        if id.is_none() {
            return Err("queue full");
        }
    }
    q.publish();

    let irqs_before = irq::count(RNG_VECTOR);
    let ticks_before = irq::count(TIMER_VECTOR);
    let deadline = time::deadline_us(WAIT_US);
    irq::timer_periodic(TICK_US);
    t.notify(notify, 0);
    let mut done = [None::<u32>; BUFFERS];
    let mut order = [0usize; BUFFERS];
    let mut returned = 0;
    let result = loop {
        // Interrupts are off here: one arriving between these checks and the halt stays
        // pending and ends the halt at once (see `irq::halt_until_interrupt`). The device may have filled the
        // ring before the first check (QEMU TCG completes during the notify write): the wait
        // goes on until the MSI-X interrupt has been taken too.
        match q.pop_used() {
            Ok(Some((id, len))) => {
                let i = usize::from(id);
                // One descriptor per buffer, added in order: id i is buffer i.
                if i >= BUFFERS || done[i].is_some() {
                    break Err("device returned a buffer twice or one never posted");
                }
                if len as usize > BUF_LEN {
                    break Err("device wrote more than the buffer holds");
                }
                done[i] = Some(len);
                order[returned] = i;
                returned += 1;
                continue;
            }
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if returned == BUFFERS && irq::count(RNG_VECTOR) > irqs_before {
            break Ok(());
        }
        if irq::count(TIMER_VECTOR) - ticks_before >= MAX_TICKS || time::passed(deadline) {
            break Err(if returned == BUFFERS {
                "used ring filled but no MSI-X interrupt arrived"
            } else {
                "timed out waiting for the device"
            });
        }
        irq::halt_until_interrupt();
    };
    irq::timer_stop();
    let irqs = irq::count(RNG_VECTOR) - irqs_before;
    let ticks = irq::count(TIMER_VECTOR) - ticks_before;
    if let Err(e) = result {
        println!(
            "rng: {} of {} buffers back, interrupts={}, timer ticks={}, device status {:#x}",
            returned,
            BUFFERS,
            irqs,
            ticks,
            t.status()
        );
        println!("rng: irq state {}", crate::arch::msi::state(RNG_VECTOR));
        t.reset()?;
        return Err(e);
    }
    t.reset()?;

    let mut total = 0usize;
    let mut nonzero = false;
    let mut hex = Hex([0; 32], 0);
    for &i in order.iter().take(returned) {
        let len = done[i].unwrap_or(0) as usize;
        for k in 0..len {
            // SAFETY: the device wrote these bytes and has been reset; volatile because the
            // writes came from outside the program.
            let byte = unsafe { core::ptr::read_volatile((bufs.add(i) as *const u8).add(k)) };
            nonzero |= byte != 0;
            if total + k < 16 {
                let _ = write!(hex, "{:02x}", byte);
            }
        }
        total += len;
    }
    let hex = core::str::from_utf8(&hex.0[..hex.1]).unwrap_or("?");
    println!("rng: got {} bytes: {}", total, hex);
    println!("rng: interrupts={}", irqs);
    if total == 0 {
        return Err("the device returned no bytes");
    }
    if !nonzero {
        return Err("every byte is zero");
    }
    Ok(())
}
