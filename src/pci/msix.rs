//! MSI-X: the capability's message control, the vector table and the pending-bit array, and
//! delivery to KVM.
//!
//! A vector is *armed* while MSI-X is enabled, the function is not masked, the vector is not
//! masked and the device uses it (a virtio transport marks the vectors its queues and config
//! point at). Arming sets up delivery: for [`IrqfdDelivery`] a GSI route with the vector's
//! message plus an irqfd, so firing is one eventfd write; for [`SignalMsiDelivery`] nothing,
//! firing is one KVM_SIGNAL_MSI. Disarming takes the route and irqfd down. A vector fired while
//! masked sets its pending bit and is delivered when it is unmasked.
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::msix_fast::{FastPath, FastSend, IrqfdSend, SignalMsiSend};
use crate::kvm::irq::{IrqError, IrqRouting, MsiMessage};

pub const MSIX_CAP_ID: u8 = 0x11;
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: mask bit.
const VECTOR_MASKED: u32 = 1;
/// The most vectors a function may have.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// How vectors reach the guest.
pub trait MsiDelivery: Send {
    /// The vector may fire with `msg` from now on (called again when the message changes).
    fn arm(&mut self, vector: u16, msg: MsiMessage) -> Result<(), IrqError>;
    /// The vector is masked or unused: take its delivery down.
    fn disarm(&mut self, vector: u16) -> Result<(), IrqError>;
    /// Sends an armed vector's message now.
    fn deliver(&mut self, vector: u16, msg: MsiMessage) -> Result<(), IrqError>;
    /// How a fired vector reaches KVM, for reports: "irqfd" or "KVM_SIGNAL_MSI".
    fn path(&self) -> &'static str {
        "other"
    }
    /// The GSI a vector is routed on, if it has one.
    fn gsi(&self, _vector: u16) -> Option<u32> {
        None
    }
    /// The eventfd that raises `vector` through KVM while it is armed, if there is one.
    fn irqfd(&self, _vector: u16) -> Option<std::os::fd::RawFd> {
        None
    }
    /// What fires an open vector without the function's lock (see `msix_fast`), if this
    /// delivery has one.
    fn fast_sender(&self) -> Option<Box<dyn FastSend>> {
        None
    }
}

struct IrqfdVector {
    /// Allocated at the first arm, kept until drop.
    gsi: Option<u32>,
    bound: bool,
}

/// Each armed vector is a GSI route plus an irqfd; firing writes the eventfd.
///
/// The eventfds are made up front, so that arming and firing (which may happen on any thread,
/// under any seccomp filter) only need ioctls and writes.
pub struct IrqfdDelivery {
    router: Arc<dyn IrqRouting>,
    vectors: Vec<IrqfdVector>,
    /// One eventfd per vector (shared with the lock-free fire path).
    evts: Arc<[EventFd]>,
}

impl IrqfdDelivery {
    pub fn new(router: Arc<dyn IrqRouting>, nr_vectors: u16) -> Result<Self, IrqError> {
        let evts = (0..nr_vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd))
            .collect::<Result<Vec<_>, IrqError>>()?;
        let vectors = (0..nr_vectors)
            .map(|_| IrqfdVector {
                gsi: None,
                bound: false,
            })
            .collect();
        Ok(IrqfdDelivery {
            router,
            vectors,
            evts: evts.into(),
        })
    }
}

impl MsiDelivery for IrqfdDelivery {
    fn arm(&mut self, vector: u16, msg: MsiMessage) -> Result<(), IrqError> {
        let Some(v) = self.vectors.get_mut(usize::from(vector)) else {
            return Ok(());
        };
        let gsi = match v.gsi {
            Some(g) => g,
            None => {
                let g = self.router.allocate_gsi()?;
                v.gsi = Some(g);
                g
            }
        };
        self.router.set_msi_route(gsi, msg)?;
        if !v.bound {
            self.router
                .register_irqfd(&self.evts[usize::from(vector)], gsi)?;
            v.bound = true;
        }
        Ok(())
    }

    fn disarm(&mut self, vector: u16) -> Result<(), IrqError> {
        let Some(v) = self.vectors.get_mut(usize::from(vector)) else {
            return Ok(());
        };
        let Some(gsi) = v.gsi else {
            return Ok(());
        };
        if v.bound {
            self.router
                .unregister_irqfd(&self.evts[usize::from(vector)], gsi)?;
            v.bound = false;
        }
        self.router.remove_route(gsi)
    }

    fn deliver(&mut self, vector: u16, _msg: MsiMessage) -> Result<(), IrqError> {
        match self.vectors.get(usize::from(vector)) {
            Some(v) if v.bound => self.evts[usize::from(vector)]
                .write(1)
                .map_err(IrqError::EventFd),
            _ => Ok(()),
        }
    }

    fn path(&self) -> &'static str {
        "irqfd"
    }

    fn fast_sender(&self) -> Option<Box<dyn FastSend>> {
        Some(Box::new(IrqfdSend(self.evts.clone())))
    }

    fn irqfd(&self, vector: u16) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.evts.get(usize::from(vector)).map(|e| e.as_raw_fd())
    }

    /// The GSI of an armed (or once armed) vector.
    fn gsi(&self, vector: u16) -> Option<u32> {
        self.vectors.get(usize::from(vector))?.gsi
    }
}

impl Drop for IrqfdDelivery {
    fn drop(&mut self) {
        for (v, evt) in self.vectors.iter().zip(self.evts.iter()) {
            if let Some(gsi) = v.gsi {
                if v.bound {
                    let _ = self.router.unregister_irqfd(evt, gsi);
                }
                self.router.free_gsi(gsi);
            }
        }
    }
}

/// Each fire is one KVM_SIGNAL_MSI with the vector's message; nothing to arm.
pub struct SignalMsiDelivery {
    router: Arc<dyn IrqRouting>,
}

impl SignalMsiDelivery {
    pub fn new(router: Arc<dyn IrqRouting>) -> Self {
        SignalMsiDelivery { router }
    }
}

impl MsiDelivery for SignalMsiDelivery {
    fn arm(&mut self, _vector: u16, _msg: MsiMessage) -> Result<(), IrqError> {
        Ok(())
    }
    fn disarm(&mut self, _vector: u16) -> Result<(), IrqError> {
        Ok(())
    }
    fn deliver(&mut self, _vector: u16, msg: MsiMessage) -> Result<(), IrqError> {
        self.router.signal_msi(msg).map(|_| ())
    }

    fn path(&self) -> &'static str {
        "KVM_SIGNAL_MSI"
    }

    fn fast_sender(&self) -> Option<Box<dyn FastSend>> {
        Some(Box::new(SignalMsiSend(self.router.clone())))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    fn msg(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
            // The function's router stamps its requester id (`kvm::irq::FunctionIrqRouting`).
            devid: 0,
        }
    }

    fn masked(&self) -> bool {
        self.ctrl & VECTOR_MASKED != 0
    }

    fn bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..4].copy_from_slice(&self.addr_lo.to_le_bytes());
        b[4..8].copy_from_slice(&self.addr_hi.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.ctrl.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; 16]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Entry {
            addr_lo: w(0),
            addr_hi: w(4),
            data: w(8),
            // Only the mask bit is implemented; the rest of vector control is reserved (0).
            ctrl: w(12) & VECTOR_MASKED,
        }
    }
}

/// What happened to a fired vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    Delivered,
    /// Masked: the pending bit is set.
    Pending,
    /// MSI-X is disabled (no INTx fallback) or the vector does not exist.
    Dropped,
    /// Delivery failed (counted; the error is logged once).
    Failed,
}

/// Counters of an MSI-X function.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MsixStats {
    pub delivered: u64,
    /// Fired while masked (pending bit set).
    pub pended: u64,
    /// Pending vectors delivered at unmask.
    pub delivered_at_unmask: u64,
    /// Fired while MSI-X was disabled, or a vector past the table.
    pub dropped: u64,
    pub delivery_errors: u64,
    /// Table or PBA accesses outside the table/PBA, or PBA writes (read-only).
    pub bad_accesses: u64,
    pub arms: u64,
    pub disarms: u64,
}

/// An MSI-X function's state.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    armed: Vec<bool>,
    in_use: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    delivery: Box<dyn MsiDelivery>,
    stats: MsixStats,
    /// Open vectors, their messages and per-vector delivery counts, for firing without the
    /// lock (kept in step by `sync`, `arm` and `write_table`).
    fast: Arc<FastPath>,
}

/// One vector as a report shows it: its message, state, route and how often it fired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VectorReport {
    pub vector: u16,
    pub address: u64,
    pub data: u32,
    pub masked: bool,
    pub pending: bool,
    /// Armed with KVM now (route + irqfd in place, for irqfd delivery).
    pub armed: bool,
    pub in_use: bool,
    pub gsi: Option<u32>,
    /// "irqfd" or "KVM_SIGNAL_MSI".
    pub path: &'static str,
    /// Interrupts delivered to KVM through this vector.
    pub delivered: u64,
}

impl Msix {
    /// `nr_vectors` vectors (1..=2048), all masked, MSI-X disabled.
    pub fn new(nr_vectors: u16, delivery: Box<dyn MsiDelivery>) -> Self {
        let n = usize::from(nr_vectors.clamp(1, MSIX_MAX_VECTORS));
        let fast = Arc::new(FastPath::new(n, delivery.fast_sender()));
        Msix {
            entries: vec![
                Entry {
                    ctrl: VECTOR_MASKED,
                    ..Default::default()
                };
                n
            ],
            pending: vec![false; n],
            armed: vec![false; n],
            in_use: vec![false; n],
            enabled: false,
            function_masked: false,
            delivery,
            stats: MsixStats::default(),
            fast,
        }
    }

    /// The eventfd that raises `vector` through KVM while it is armed (irqfd delivery).
    pub fn irqfd(&self, vector: u16) -> Option<std::os::fd::RawFd> {
        self.delivery.irqfd(vector)
    }

    /// The lock-free fire path: [`FastPath::try_fire`], with [`Msix::fire`] when it declines.
    pub fn fast(&self) -> Arc<FastPath> {
        self.fast.clone()
    }

    /// How fired vectors reach KVM: "irqfd" or "KVM_SIGNAL_MSI".
    pub fn path(&self) -> &'static str {
        self.delivery.path()
    }

    /// The vectors a report shows: those in use, armed, pending or ever delivered.
    pub fn report(&self) -> Vec<VectorReport> {
        (0..self.entries.len())
            .filter(|&v| {
                self.in_use[v] || self.armed[v] || self.pending[v] || self.fast.delivered(v) > 0
            })
            .map(|v| {
                let msg = self.entries[v].msg();
                VectorReport {
                    vector: v as u16,
                    address: msg.address,
                    data: msg.data,
                    masked: self.masked(v),
                    pending: self.pending[v],
                    armed: self.armed[v],
                    in_use: self.in_use[v],
                    gsi: self.delivery.gsi(v as u16),
                    path: self.delivery.path(),
                    delivered: self.fast.delivered(v),
                }
            })
            .collect()
    }

    pub fn nr_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn stats(&self) -> MsixStats {
        MsixStats {
            delivered: self.fast.total_delivered(),
            ..self.stats
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether a vector is armed with KVM now.
    pub fn armed(&self, vector: u16) -> bool {
        self.armed
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    pub fn pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    /// Table size in bytes.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// PBA size in bytes (whole qwords).
    pub fn pba_len(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64) * 8
    }

    /// The capability's bytes and write masks for a table at `table` and a PBA at `pba`
    /// (each `(bar, offset)`, the offset 8-byte aligned). Message control's enable and function
    /// mask bits are writable; everything else is read-only.
    pub fn capability(&self, table: (u8, u32), pba: (u8, u32)) -> (Vec<u8>, Vec<u8>) {
        let ctrl = self.nr_vectors() - 1;
        let mut b = vec![MSIX_CAP_ID, 0];
        b.extend_from_slice(&ctrl.to_le_bytes());
        b.extend_from_slice(&(table.1 | u32::from(table.0 & 7)).to_le_bytes());
        b.extend_from_slice(&(pba.1 | u32::from(pba.0 & 7)).to_le_bytes());
        let mut m = vec![0u8; b.len()];
        m[3] = 0xc0;
        (b, m)
    }

    /// Applies message control (from the capability after a config write).
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & MSIX_ENABLE != 0;
        self.function_masked = ctrl & MSIX_FUNCTION_MASK != 0;
        self.sync();
    }

    /// Marks which vectors the device fires (the others stay disarmed).
    pub fn set_in_use(&mut self, vectors: &[u16]) {
        self.in_use.fill(false);
        for &v in vectors {
            if let Some(u) = self.in_use.get_mut(usize::from(v)) {
                *u = true;
            }
        }
        self.sync();
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.entries[v].masked()
    }

    /// Arms and disarms vectors to match the state; delivers pending vectors now unmasked.
    fn sync(&mut self) {
        for v in 0..self.entries.len() {
            let open = self.enabled && !self.masked(v);
            let want = open && self.in_use[v];
            if want && !self.armed[v] {
                self.arm(v);
            } else if !want && self.armed[v] {
                self.stats.disarms += 1;
                self.armed[v] = false;
                self.fast.set_open(v, false);
                if let Err(e) = self.delivery.disarm(v as u16) {
                    self.delivery_error(v, &e);
                }
            }
            self.fast.set_open(v, want && self.armed[v]);
            if open && self.pending[v] {
                self.pending[v] = false;
                if self.send(v) == Fired::Delivered {
                    self.stats.delivered_at_unmask += 1;
                }
            }
        }
    }

    fn arm(&mut self, v: usize) -> bool {
        self.fast.set_message(v, self.entries[v].msg());
        match self.delivery.arm(v as u16, self.entries[v].msg()) {
            Ok(()) => {
                self.stats.arms += 1;
                self.armed[v] = true;
                true
            }
            Err(e) => {
                self.delivery_error(v, &e);
                false
            }
        }
    }

    fn delivery_error(&mut self, v: usize, e: &IrqError) {
        self.stats.delivery_errors += 1;
        if self.stats.delivery_errors == 1 {
            log::warn!("MSI-X vector {v}: {e}");
        }
    }

    /// Sends vector `v` (unmasked), arming it first if the device had not marked it in use.
    fn send(&mut self, v: usize) -> Fired {
        if !self.armed[v] && !self.arm(v) {
            return Fired::Failed;
        }
        match self.delivery.deliver(v as u16, self.entries[v].msg()) {
            Ok(()) => {
                self.fast.count(v);
                Fired::Delivered
            }
            Err(e) => {
                self.delivery_error(v, &e);
                Fired::Failed
            }
        }
    }

    /// The device raises `vector`.
    pub fn fire(&mut self, vector: u16) -> Fired {
        let v = usize::from(vector);
        if v >= self.entries.len() || !self.enabled {
            self.stats.dropped += 1;
            return Fired::Dropped;
        }
        if self.masked(v) {
            self.pending[v] = true;
            self.stats.pended += 1;
            return Fired::Pending;
        }
        self.send(v)
    }

    /// A guest read in the table (`offset` from the table's start).
    pub fn read_table(&mut self, offset: u64, data: &mut [u8]) {
        if offset.saturating_add(data.len() as u64) > self.table_len() {
            self.stats.bad_accesses += 1;
            data.fill(0);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset as usize + i;
            *b = self.entries[off / 16].bytes()[off % 16];
        }
    }

    /// A guest write in the table: any width inside one or more entries.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        // An empty write touches nothing (and at the table's end would index past it).
        if data.is_empty() {
            return;
        }
        if offset.saturating_add(data.len() as u64) > self.table_len() {
            self.stats.bad_accesses += 1;
            return;
        }
        let first = offset as usize / 16;
        let last = (offset as usize + data.len().max(1) - 1) / 16;
        for v in first..=last {
            let old = self.entries[v];
            let mut bytes = old.bytes();
            for (i, &b) in data.iter().enumerate() {
                let off = offset as usize + i;
                if off / 16 == v {
                    bytes[off % 16] = b;
                }
            }
            let new = Entry::from_bytes(&bytes);
            self.entries[v] = new;
            if new.msg() != old.msg() {
                self.fast.set_message(v, new.msg());
                if self.armed[v] {
                    // The message of a live vector changed: update its route.
                    self.arm(v);
                }
            }
        }
        self.sync();
    }

    /// A guest read in the PBA.
    pub fn read_pba(&mut self, offset: u64, data: &mut [u8]) {
        if offset.saturating_add(data.len() as u64) > self.pba_len() {
            self.stats.bad_accesses += 1;
            data.fill(0);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset as usize + i;
            *b = (0..8)
                .filter(|bit| self.pending.get(byte * 8 + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }

    /// The PBA is read-only.
    pub fn write_pba(&mut self, _offset: u64, _data: &[u8]) {
        self.stats.bad_accesses += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::irq::FakeIrqRouting;

    fn program(m: &mut Msix, v: u16, addr: u64, data: u32) {
        let base = u64::from(v) * 16;
        m.write_table(base, &(addr as u32).to_le_bytes());
        m.write_table(base + 4, &((addr >> 32) as u32).to_le_bytes());
        m.write_table(base + 8, &data.to_le_bytes());
    }

    fn unmask(m: &mut Msix, v: u16) {
        m.write_table(u64::from(v) * 16 + 12, &0u32.to_le_bytes());
    }

    fn mask(m: &mut Msix, v: u16) {
        m.write_table(u64::from(v) * 16 + 12, &1u32.to_le_bytes());
    }

    #[test]
    fn capability_layout() {
        let m = Msix::new(3, Box::new(SignalMsiDelivery::new(FakeIrqRouting::new())));
        let (b, w) = m.capability((0, 0x4000), (0, 0x5000));
        assert_eq!(b.len(), 12);
        assert_eq!(b[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 2);
        assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 0x4000);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 0x5000);
        assert_eq!(w[3], 0xc0);
        assert_eq!(m.pba_len(), 8);
        assert_eq!(m.table_len(), 48);
    }

    #[test]
    fn irqfd_vectors_get_routes_when_unmasked_and_in_use() {
        let router = FakeIrqRouting::new();
        let mut m = Msix::new(2, Box::new(IrqfdDelivery::new(router.clone(), 2).unwrap()));
        program(&mut m, 0, 0xfee0_0000, 0x31);
        m.set_in_use(&[0]);
        m.set_control(MSIX_ENABLE);
        assert!(!m.armed(0), "masked vectors are not armed");
        unmask(&mut m, 0);
        assert!(m.armed(0));
        {
            let s = router.lock();
            assert_eq!(s.routes.len(), 1);
            assert_eq!(s.irqfds.len(), 1);
            assert_eq!(s.routes.values().next().unwrap().data, 0x31);
        }
        assert_eq!(m.fire(0), Fired::Delivered);
        // Reprogramming a live vector updates its route.
        program(&mut m, 0, 0xfee0_1000, 0x32);
        assert_eq!(router.lock().routes.values().next().unwrap().data, 0x32);
        // Masking takes the route and the irqfd down; unused vectors never get one.
        mask(&mut m, 0);
        assert!(!m.armed(0));
        assert!(router.lock().routes.is_empty());
        assert!(router.lock().irqfds.is_empty());
        unmask(&mut m, 1);
        assert!(!m.armed(1));
        m.set_in_use(&[]);
        unmask(&mut m, 0);
        assert!(!m.armed(0));
        drop(m);
        assert!(router.lock().allocated.is_empty(), "GSIs freed on drop");
    }

    /// The lock-free path fires exactly the vectors the locked one would deliver at once, with
    /// their current message, and its deliveries are counted with the others.
    #[test]
    fn fast_path_follows_enable_mask_in_use_and_message() {
        let router = FakeIrqRouting::new();
        let mut m = Msix::new(2, Box::new(SignalMsiDelivery::new(router.clone())));
        let fast = m.fast();
        program(&mut m, 0, 0xfee0_0000, 0x51);
        assert!(!fast.try_fire(0), "masked, disabled, not in use");
        m.set_in_use(&[0]);
        m.set_control(MSIX_ENABLE);
        assert!(!fast.try_fire(0), "masked");
        unmask(&mut m, 0);
        assert!(fast.try_fire(0));
        program(&mut m, 0, 0xfee0_2000, 0x52);
        assert!(fast.try_fire(0));
        let sent: Vec<u32> = router.lock().signalled.iter().map(|s| s.data).collect();
        assert_eq!(sent, [0x51, 0x52]);
        m.set_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert!(!fast.try_fire(0), "function masked");
        assert_eq!(m.fire(0), Fired::Pending, "the locked path pends it");
        m.set_control(MSIX_ENABLE);
        assert!(fast.try_fire(0));
        mask(&mut m, 0);
        assert!(!fast.try_fire(0));
        unmask(&mut m, 0);
        m.set_in_use(&[]);
        assert!(!fast.try_fire(0), "not in use");
        assert!(!fast.try_fire(1), "never armed");
        assert_eq!(m.stats().delivered, 4, "3 fast, 1 at unmask");
        assert_eq!(m.report()[0].delivered, 4);
    }

    #[test]
    fn masked_vector_pends_and_is_delivered_on_unmask() {
        let router = FakeIrqRouting::new();
        let mut m = Msix::new(2, Box::new(SignalMsiDelivery::new(router.clone())));
        program(&mut m, 1, 0xfee0_0000, 0x40);
        m.set_in_use(&[1]);
        m.set_control(MSIX_ENABLE);
        assert_eq!(m.fire(1), Fired::Pending);
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        unmask(&mut m, 1);
        assert!(!m.pending(1));
        assert_eq!(router.lock().signalled.len(), 1);
        assert_eq!(m.stats().delivered_at_unmask, 1);
        // Function mask: pends again, delivered when the function is unmasked.
        m.set_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert_eq!(m.fire(1), Fired::Pending);
        assert_eq!(router.lock().signalled.len(), 1);
        m.set_control(MSIX_ENABLE);
        assert_eq!(router.lock().signalled.len(), 2);
        assert_eq!(router.lock().signalled[1].data, 0x40);
        // Disabled: dropped, counted.
        m.set_control(0);
        assert_eq!(m.fire(1), Fired::Dropped);
        assert_eq!(m.fire(7), Fired::Dropped);
        assert_eq!(m.stats().dropped, 2);
    }

    #[test]
    fn out_of_range_and_odd_table_accesses() {
        let router = FakeIrqRouting::new();
        let mut m = Msix::new(2, Box::new(SignalMsiDelivery::new(router)));
        let mut b = [0xaa; 4];
        m.read_table(32, &mut b);
        assert_eq!(b, [0; 4]);
        m.write_table(30, &[1, 2, 3, 4]);
        m.write_table(u64::MAX - 1, &[1, 2, 3, 4]);
        m.read_pba(8, &mut b);
        m.write_pba(0, &[0xff]);
        assert_eq!(m.stats().bad_accesses, 5);
        // A 1-byte write in the middle of an entry and an 8-byte write over address lo+hi.
        m.write_table(9, &[0x12]);
        m.write_table(16, &0x1_fee0_0000u64.to_le_bytes());
        let mut e = [0u8; 16];
        m.read_table(0, &mut e);
        assert_eq!(e[9], 0x12);
        m.read_table(16, &mut e);
        assert_eq!(
            u64::from_le_bytes(e[0..8].try_into().unwrap()),
            0x1_fee0_0000
        );
        assert_eq!(e[12] & 1, 1, "vectors start masked");
        // Reserved vector control bits read 0.
        m.write_table(28, &0xffff_fffeu32.to_le_bytes());
        m.read_table(28, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn delivery_errors_are_counted_not_fatal() {
        let router = FakeIrqRouting::new();
        let mut m = Msix::new(1, Box::new(IrqfdDelivery::new(router.clone(), 1).unwrap()));
        router.lock().fail = true;
        m.set_in_use(&[0]);
        m.set_control(MSIX_ENABLE);
        unmask(&mut m, 0);
        assert!(!m.armed(0));
        assert_eq!(m.fire(0), Fired::Failed);
        assert!(m.stats().delivery_errors >= 2);
        router.lock().fail = false;
        assert_eq!(m.fire(0), Fired::Delivered);
    }

    /// Fuzz finding (pci_msix): an empty write at the very end of the table indexed one entry
    /// past it.
    #[test]
    fn empty_table_write_at_the_end_is_harmless() {
        let mut m = Msix::new(4, Box::new(NoDelivery));
        let end = m.table_len();
        m.write_table(end, &[]);
        m.write_table(0, &[]);
        let mut d = [0u8; 4];
        m.read_table(end, &mut []);
        m.read_table(12, &mut d);
        assert_eq!(d, [1, 0, 0, 0], "vector 0 still masked");
    }

    struct NoDelivery;
    impl MsiDelivery for NoDelivery {
        fn arm(&mut self, _: u16, _: MsiMessage) -> Result<(), IrqError> {
            Ok(())
        }
        fn disarm(&mut self, _: u16) -> Result<(), IrqError> {
            Ok(())
        }
        fn deliver(&mut self, _: u16, _: MsiMessage) -> Result<(), IrqError> {
            Ok(())
        }
    }
}
