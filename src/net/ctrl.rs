//! The control queue (virtio 1.2 §5.1.6.5): `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (how many queue
//! pairs the driver uses: the others' TAP queues are detached, so the kernel steers no frames
//! to them) and `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET` (TUNSETOFFLOAD again). Everything else
//! is answered `VIRTIO_NET_ERR`. Runs on whichever thread got the kick, under its own lock.
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MQ, VIRTIO_NET_OK,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{read_at, walk, write_at, Direction, RamMap, Seg};
use super::counters::CtrlCounters;
use super::device::Shared;
use super::pair::{signal, IrqCounters};
use super::used::UsedRing;
use crate::virtio::VirtioInterrupt;

/// Guest offloads `GUEST_OFFLOADS_SET` may turn on or off.
pub const GUEST_OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_UFO);

/// Longest command we read (class, command, then at most a u64).
const MAX_COMMAND: usize = 4096;

#[derive(Default)]
pub(crate) struct CtrlState {
    pub active: Option<CtrlActive>,
    pub counters: CtrlCounters,
    segs: Vec<Seg>,
}

pub(crate) struct CtrlActive {
    pub mem: GuestMemoryMmap,
    pub ram: RamMap,
    pub queue: Queue,
    pub used: UsedRing,
    pub index: u16,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub acked: u64,
    /// Queue pairs the driver may ask for.
    pub max_pairs: u16,
}

impl CtrlState {
    /// Answers every command queued.
    pub(crate) fn process(&mut self, shared: &Shared) -> Result<(), virtio_queue::Error> {
        let CtrlState {
            active,
            counters: c,
            segs,
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        if !a.queue.ready() {
            return Ok(());
        }
        let max_desc = usize::from(a.queue.size());
        loop {
            a.queue.disable_notification(&a.mem)?;
            while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
                let head = chain.head_index();
                if head >= a.queue.size() {
                    c.bad_chain += 1;
                    continue;
                }
                let walked = walk(
                    chain,
                    &a.ram,
                    Direction::ReadThenWrite,
                    max_desc,
                    MAX_COMMAND as u64,
                    segs,
                );
                let len = match walked {
                    Ok(w) if w.readable >= 2 && w.writable >= 1 => {
                        let ack = command(a, shared, segs, w.readable as usize);
                        if ack == VIRTIO_NET_OK as u8 {
                            c.ok += 1;
                        } else {
                            c.err += 1;
                        }
                        let first_writable =
                            segs.iter().position(|s| s.write).unwrap_or(segs.len());
                        if write_at(&a.mem, &segs[first_writable..], 0, &[ack]) {
                            1
                        } else {
                            0
                        }
                    }
                    _ => {
                        c.bad_chain += 1;
                        0
                    }
                };
                a.used.add(&a.mem, head, len)?;
            }
            if !a.queue.enable_notification(&a.mem)? {
                break;
            }
        }
        let mut errors = 0;
        let irq = IrqCounters {
            sent: &mut c.interrupts,
            suppressed: &mut c.interrupts_suppressed,
            errors: &mut errors,
        };
        a.queue.set_next_used(a.used.next_used());
        signal(
            &mut a.used,
            &a.mem,
            a.interrupt.as_ref(),
            a.index,
            irq,
            &None,
        )
    }
}

/// Carries out one command; returns the ack byte.
fn command(a: &CtrlActive, shared: &Shared, segs: &[Seg], readable: usize) -> u8 {
    let ok = VIRTIO_NET_OK as u8;
    let err = VIRTIO_NET_ERR as u8;
    let has = |bit: u32| a.acked & (1u64 << bit) != 0;
    let mut hdr = [0u8; 2];
    if !read_at(&a.mem, segs, 0, &mut hdr) {
        return err;
    }
    let data_len = readable - 2;
    let (class, cmd) = (u32::from(hdr[0]), u32::from(hdr[1]));
    match (class, cmd) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if has(VIRTIO_NET_F_MQ) => {
            let mut b = [0u8; 2];
            if data_len != 2 || !read_at(&a.mem, segs, 2, &mut b) {
                return err;
            }
            let pairs = u16::from_le_bytes(b);
            if pairs == 0 || pairs > a.max_pairs {
                return err;
            }
            if shared.set_active_pairs(usize::from(pairs)) {
                ok
            } else {
                err
            }
        }
        (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET)
            if has(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) =>
        {
            let mut b = [0u8; 8];
            if data_len != 8 || !read_at(&a.mem, segs, 2, &mut b) {
                return err;
            }
            let offloads = u64::from_le_bytes(b);
            // Only offloads the driver negotiated may be turned on.
            if offloads & !(a.acked & GUEST_OFFLOAD_FEATURES) != 0 {
                return err;
            }
            if shared.set_offload(offloads) {
                ok
            } else {
                err
            }
        }
        _ => err,
    }
}
