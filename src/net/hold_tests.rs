//! `txhold` against a driver model: a transmit interrupt held behind a receive interrupt is
//! not sent when the driver's receive handler took the completion along (as Linux's
//! `virtnet_poll_cleantx` and the built-in guest do), is sent when the hold expires or the
//! next transmit pass comes while the driver still wants it, and is never held without a
//! receive interrupt after it. The worker's steps are driven by hand: `worker_idle` after a
//! batch of events, `backend_ready` for what its one more look finds, `hold_expired` for its
//! timer.
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::exit_tests::{Rig, RXQ, TXQ};
use crate::net::ctrl::tests::{rings, SIZE};
use crate::net::header::HDR_LEN;
use crate::net::NetConfig;
use crate::trace::timeline::Timeline;
use crate::virtio::{
    feature, InterruptError, VirtioInterrupt, VirtioInterruptType, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The driver's side: counts interrupts; its receive handler, with `cleans_tx`, also takes
/// the transmit completions and pushes the transmit `used_event` half the ring space past
/// them (no interrupt wanted for them any more).
struct Driver {
    mem: GuestMemoryMmap,
    cleans_tx: bool,
    rx_irqs: u32,
    tx_irqs: u32,
    /// The trace flow each transmit interrupt was raised in (0: none).
    tx_flows: Vec<u64>,
}

fn used_event_addr(q: u64) -> GuestAddress {
    GuestAddress(rings(q).1 + 4 + 2 * u64::from(SIZE))
}

impl Driver {
    fn arm(&self, q: u64) {
        let used: u16 = self.mem.read_obj(GuestAddress(rings(q).2 + 2)).unwrap();
        self.mem.write_obj(used, used_event_addr(q)).unwrap();
    }
}

struct Irq(Arc<Mutex<Driver>>, Option<Arc<Timeline>>);

impl VirtioInterrupt for Irq {
    fn trigger_in_flow(&self, kind: VirtioInterruptType, flow: u64) -> Result<(), InterruptError> {
        if kind == VirtioInterruptType::Queue(TXQ as u16) {
            self.0.lock().unwrap().tx_flows.push(flow);
        }
        self.trigger(kind)
    }

    fn timeline(&self) -> Option<Arc<Timeline>> {
        self.1.clone()
    }

    fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
        let mut d = self.0.lock().unwrap();
        if kind == VirtioInterruptType::Queue(RXQ as u16) {
            d.rx_irqs += 1;
            if d.cleans_tx {
                let used: u16 = d.mem.read_obj(GuestAddress(rings(TXQ).2 + 2)).unwrap();
                let ahead = used.wrapping_add(0x8000);
                d.mem.write_obj(ahead, used_event_addr(TXQ)).unwrap();
            }
        } else if kind == VirtioInterruptType::Queue(TXQ as u16) {
            d.tx_irqs += 1;
        }
        Ok(())
    }
}

/// A rig with EVENT_IDX whose driver wants an interrupt for its next completion on both
/// queues (as the built-in guest before it halts, or Linux with few buffers out).
fn rig(cleans_tx: bool) -> (Rig, Arc<Mutex<Driver>>) {
    rig_with(cleans_tx, NetConfig::new("hold0"))
}

fn rig_with(cleans_tx: bool, cfg: NetConfig) -> (Rig, Arc<Mutex<Driver>>) {
    rig_traced(cleans_tx, cfg, None)
}

fn rig_traced(
    cleans_tx: bool,
    cfg: NetConfig,
    timeline: Option<Arc<Timeline>>,
) -> (Rig, Arc<Mutex<Driver>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let driver = Arc::new(Mutex::new(Driver {
        mem: mem.clone(),
        cleans_tx,
        rx_irqs: 0,
        tx_irqs: 0,
        tx_flows: Vec::new(),
    }));
    {
        let d = driver.lock().unwrap();
        d.arm(RXQ);
        d.arm(TXQ);
    }
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX);
    let rig = Rig::with(mem, features, Arc::new(Irq(driver.clone(), timeline)), cfg);
    (rig, driver)
}

const FRAME: u32 = HDR_LEN as u32 + 60;

fn irqs(d: &Arc<Mutex<Driver>>) -> (u32, u32) {
    let d = d.lock().unwrap();
    (d.rx_irqs, d.tx_irqs)
}

/// A request through its queue's ioeventfd, as its worker serves it: the pass, one more look
/// (which finds the reply the host queued during the writev), and the end of the batch, where
/// the hold begins.
fn ping(rig: &mut Rig, driver: &Arc<Mutex<Driver>>, n: u64) {
    let h = rig.net.handle();
    let (rx_irqs, tx_irqs) = irqs(driver);
    rig.send(n, FRAME, n as u8);
    h.ioeventfd_kick(TXQ as usize);
    assert_eq!(rig.used_idx(TXQ), n as u16 + 1, "published at once");
    assert_eq!(irqs(driver), (rx_irqs, tx_irqs), "its interrupt waits");
    assert!(h.worker_idle(0), "looks once more");
    h.backend_ready(0, EventSet::IN);
    assert_eq!(
        irqs(driver),
        (rx_irqs + 1, tx_irqs),
        "the reply's interrupt"
    );
    assert!(
        !h.worker_idle(0),
        "held: the timer starts, the worker waits"
    );
}

#[test]
fn the_receive_handler_takes_the_completion_and_no_transmit_interrupt_is_sent() {
    let (mut rig, driver) = rig(true);
    let h = rig.net.handle();
    ping(&mut rig, &driver, 0);
    assert_eq!(rig.used_idx(RXQ), 1);
    assert!(h.tx_interrupt_pending(0));
    h.hold_expired(0);
    assert!(!h.tx_interrupt_pending(0));
    assert_eq!(irqs(&driver), (1, 0), "no longer wanted: not sent");
    let c = rig.net.counters().pairs[0].tx;
    assert_eq!(
        (
            c.irq_held,
            c.irq_held_avoided,
            c.irq_held_expired,
            c.interrupts
        ),
        (1, 1, 0, 0)
    );
}

#[test]
fn a_driver_that_still_wants_it_gets_it_when_the_hold_expires() {
    let (mut rig, driver) = rig(false);
    let h = rig.net.handle();
    ping(&mut rig, &driver, 0);
    h.hold_expired(0);
    assert_eq!(irqs(&driver), (1, 1));
    let c = rig.net.counters().pairs[0].tx;
    assert_eq!(
        (c.irq_held, c.irq_held_avoided, c.irq_held_expired),
        (1, 0, 1)
    );
}

#[test]
fn the_next_transmit_pass_decides_a_held_interrupt_before_its_writev() {
    let (mut rig, driver) = rig(false);
    let h = rig.net.handle();
    ping(&mut rig, &driver, 0);
    // The next request, before the timer: the held interrupt (still wanted) goes first.
    rig.send(1, FRAME, 2);
    h.ioeventfd_kick(TXQ as usize);
    assert_eq!(irqs(&driver), (1, 1));
    assert_eq!(rig.written(), 2);
    // The new completion's own interrupt is not wanted (the driver did not re-arm).
    assert!(!h.worker_idle(0));
    h.hold_expired(0);
    assert_eq!(irqs(&driver), (1, 1));
    assert!(!h.tx_interrupt_pending(0));
}

#[test]
fn without_a_receive_interrupt_after_the_look_it_is_sent_at_once() {
    let (mut rig, driver) = rig(true);
    let h = rig.net.handle();
    rig.send(0, FRAME, 1);
    h.ioeventfd_kick(TXQ as usize);
    assert!(h.worker_idle(0));
    // The look found nothing (no reply): decided now, no hold.
    assert!(!h.worker_idle(0));
    assert_eq!(irqs(&driver), (0, 1));
    assert!(!h.tx_interrupt_pending(0));
    let c = rig.net.counters().pairs[0].tx;
    assert_eq!((c.irq_held, c.interrupts), (0, 1));
}

#[test]
fn a_completion_followed_by_another_chain_is_interrupted_before_its_writev() {
    let (mut rig, driver) = rig(true);
    let h = rig.net.handle();
    rig.send(0, FRAME, 1);
    rig.send(1, FRAME, 2);
    h.ioeventfd_kick(TXQ as usize);
    // The first completion's interrupt went before the second writev; the second
    // completion is not wanted (used_event was 0).
    assert_eq!(irqs(&driver), (0, 1));
    assert_eq!(rig.written(), 2);
    assert!(!h.worker_idle(0), "nothing left to decide");
}

#[test]
fn txhold_0_never_holds() {
    let cfg: NetConfig = "tap=hold0,txhold=0".parse().unwrap();
    let (mut rig, driver) = rig_with(true, cfg);
    let h = rig.net.handle();
    rig.send(0, FRAME, 1);
    h.ioeventfd_kick(TXQ as usize);
    assert_eq!(irqs(&driver), (0, 1), "decided right after the writev");
    assert!(!h.worker_idle(0));
}

#[test]
fn the_vcpu_path_never_holds() {
    // notify=exit: the kick's chain is sent on the vCPU thread, which no worker follows.
    let (mut rig, driver) = rig(true);
    rig.send(0, FRAME, 1);
    crate::virtio::VirtioDevice::process_queue(&mut rig.net, TXQ as usize).unwrap();
    assert_eq!(
        irqs(&driver),
        (1, 1),
        "the reply read inside the exit, both interrupts"
    );
    assert!(!rig.net.handle().tx_interrupt_pending(0));
}

#[test]
fn the_timeline_shows_the_hold_and_how_it_ended() {
    for cleans_tx in [true, false] {
        let tl = Arc::new(Timeline::new(1024));
        let (mut rig, driver) = rig_traced(cleans_tx, NetConfig::new("hold0"), Some(tl.clone()));
        ping(&mut rig, &driver, 0);
        rig.net.handle().hold_expired(0);
        let json = tl.to_json();
        let events = json["traceEvents"].as_array().unwrap();
        let span = events
            .iter()
            .find(|e| e["ph"] == "X" && e["cat"] == "net" && e["args"]["decided_by"].is_string())
            .unwrap_or_else(|| panic!("no span for the hold: {json}"));
        let outcome = if cleans_tx { "not wanted" } else { "sent" };
        assert_eq!(span["args"]["outcome"], outcome, "{span}");
        assert_eq!(span["args"]["decided_by"], "hold expired", "{span}");
        let name = span["name"].as_str().unwrap();
        assert!(
            name.starts_with(&format!("queue {TXQ}: tx interrupt held "))
                && name.ends_with(&format!(" us, {outcome}")),
            "{name}"
        );
        assert!(span["args"]["held_us"].as_f64().unwrap() >= 0.0, "{span}");
        // The kick's flow goes on to the hold; an interrupt sent after it ends that flow.
        let flow_of = |name: &str| {
            events
                .iter()
                .find(|e| e["cat"] == "flow" && e["name"] == name)
                .and_then(|e| e["id"].as_u64())
        };
        let flow = flow_of("interrupt held").expect("a flow step at the hold");
        assert_eq!(flow_of("ioeventfd wakeup"), Some(flow), "{json}");
        let sent = driver.lock().unwrap().tx_flows.clone();
        assert_eq!(sent, if cleans_tx { vec![] } else { vec![flow] });
    }
}
