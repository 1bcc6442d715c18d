//! The MSI-X fire path without the lock: what a device's thread needs to raise an open vector,
//! kept in atomics that [`super::msix::Msix`] updates under its lock.
//!
//! Per vector: whether it is *open* (MSI-X enabled, function and vector unmasked, armed with
//! KVM), its message (address and data behind a sequence count, so a reader never sees half of
//! a reprogrammed entry), and how many interrupts it delivered. A fire on an open vector is then
//! one atomic load (two more and a re-check of the count for KVM_SIGNAL_MSI's message), the
//! eventfd write or ioctl, and one counter increment; anything else (masked: set the pending
//! bit; disabled; a delivery error to count and log) goes through the lock as before.
//!
//! A fire that found its vector open may still reach KVM just after the guest masked it, as
//! an MSI already on its way does on real hardware. With irqfd, an eventfd written after its
//! irqfd was taken down is not lost: KVM delivers it when the vector is armed again (at
//! unmask), which is what the pending bit would have done.
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::kvm::irq::{IrqError, IrqRouting, MsiMessage};

/// Sends an open vector's message from any thread, without the function's lock.
pub trait FastSend: Send + Sync {
    fn send(&self, vector: u16, msg: MsiMessage) -> Result<(), IrqError>;
    /// Whether `send` needs the message (KVM_SIGNAL_MSI does; an irqfd's route has it).
    fn needs_message(&self) -> bool;
}

/// irqfd: the vector's eventfd (made up front, shared with the delivery that binds it).
pub struct IrqfdSend(pub Arc<[EventFd]>);

impl FastSend for IrqfdSend {
    fn send(&self, vector: u16, _: MsiMessage) -> Result<(), IrqError> {
        match self.0.get(usize::from(vector)) {
            Some(e) => e.write(1).map_err(IrqError::EventFd),
            None => Ok(()),
        }
    }
    fn needs_message(&self) -> bool {
        false
    }
}

/// KVM_SIGNAL_MSI with the message.
pub struct SignalMsiSend(pub Arc<dyn IrqRouting>);

impl FastSend for SignalMsiSend {
    fn send(&self, _: u16, msg: MsiMessage) -> Result<(), IrqError> {
        self.0.signal_msi(msg).map(|_| ())
    }
    fn needs_message(&self) -> bool {
        true
    }
}

#[derive(Default)]
struct FastVector {
    open: AtomicBool,
    /// Odd while the message is being rewritten.
    seq: AtomicU32,
    address: AtomicU64,
    data: AtomicU32,
    delivered: AtomicU64,
}

/// One MSI-X function's lock-free fire path.
pub struct FastPath {
    vectors: Box<[FastVector]>,
    sender: Option<Box<dyn FastSend>>,
    /// `sender.needs_message()`, asked once.
    needs_message: bool,
}

impl FastPath {
    pub fn new(nr_vectors: usize, sender: Option<Box<dyn FastSend>>) -> Self {
        FastPath {
            vectors: (0..nr_vectors).map(|_| FastVector::default()).collect(),
            needs_message: sender.as_ref().is_some_and(|s| s.needs_message()),
            sender,
        }
    }

    /// Raises `vector` if it is open; `false`: take the locked path (masked, disabled, not
    /// armed, no fast sender, or the send failed and is to be retried, counted and logged).
    pub fn try_fire(&self, vector: u16) -> bool {
        let (Some(v), Some(sender)) = (self.vectors.get(usize::from(vector)), &self.sender) else {
            return false;
        };
        if !v.open.load(Ordering::Acquire) {
            return false;
        }
        let msg = if self.needs_message {
            let s1 = v.seq.load(Ordering::Acquire);
            let msg = MsiMessage {
                address: v.address.load(Ordering::Relaxed),
                data: v.data.load(Ordering::Relaxed),
                // The function's router stamps its requester id.
                devid: 0,
            };
            fence(Ordering::Acquire);
            if s1 & 1 != 0 || v.seq.load(Ordering::Relaxed) != s1 {
                return false;
            }
            msg
        } else {
            MsiMessage::default()
        };
        if sender.send(vector, msg).is_err() {
            return false;
        }
        v.delivered.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Under the function's lock: whether `vector` may be fired without it.
    pub(crate) fn set_open(&self, vector: usize, open: bool) {
        if let Some(v) = self.vectors.get(vector) {
            v.open.store(open, Ordering::Release);
        }
    }

    /// Under the function's lock: `vector`'s message changed.
    pub(crate) fn set_message(&self, vector: usize, msg: MsiMessage) {
        let Some(v) = self.vectors.get(vector) else {
            return;
        };
        let s = v.seq.load(Ordering::Relaxed);
        v.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        v.address.store(msg.address, Ordering::Relaxed);
        v.data.store(msg.data, Ordering::Relaxed);
        v.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A delivery made under the lock.
    pub(crate) fn count(&self, vector: usize) {
        if let Some(v) = self.vectors.get(vector) {
            v.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Interrupts `vector` delivered to KVM (either path).
    pub fn delivered(&self, vector: usize) -> u64 {
        self.vectors
            .get(vector)
            .map_or(0, |v| v.delivered.load(Ordering::Relaxed))
    }

    pub fn total_delivered(&self) -> u64 {
        self.vectors
            .iter()
            .map(|v| v.delivered.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::irq::FakeIrqRouting;

    #[test]
    fn only_open_vectors_fire_and_the_message_is_whole() {
        let router = FakeIrqRouting::new();
        let f = FastPath::new(2, Some(Box::new(SignalMsiSend(router.clone()))));
        assert!(!f.try_fire(0), "closed");
        assert!(!f.try_fire(9), "no such vector");
        let msg = MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x41,
            devid: 0,
        };
        f.set_message(0, msg);
        f.set_open(0, true);
        assert!(f.try_fire(0));
        assert_eq!(router.lock().signalled, vec![msg]);
        assert_eq!((f.delivered(0), f.total_delivered()), (1, 1));
        f.set_open(0, false);
        assert!(!f.try_fire(0));
        // A message being rewritten (odd count) is not read: the locked path takes it.
        f.vectors[0].seq.fetch_add(1, Ordering::SeqCst);
        f.set_open(0, true);
        assert!(!f.try_fire(0));
        // A failed send goes to the locked path to be counted there.
        f.vectors[0].seq.fetch_add(1, Ordering::SeqCst);
        router.lock().fail = true;
        assert!(!f.try_fire(0));
        assert!(!FastPath::new(1, None).try_fire(0), "no fast sender");
    }
}
