//! Interrupts into the guest by message: the GSI routing table, irqfds and KVM_SIGNAL_MSI.
//!
//! An MSI (an MSI-X vector's address and data) reaches the guest's interrupt controller (the
//! local APIC on x86_64, the GICv3 ITS on aarch64) in one of two ways:
//!
//! * **irqfd**: the message is a route of the GSI routing table (`KVM_SET_GSI_ROUTING`) and an
//!   eventfd is bound to that GSI (`KVM_IRQFD`); writing 1 to the eventfd injects the interrupt
//!   inside KVM, from any thread, without an ioctl;
//! * **KVM_SIGNAL_MSI**: one ioctl per interrupt with the message itself, no route needed.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so [`KvmIrqRouter`] keeps the in-kernel
//! irqchip's default routes for the legacy GSIs (`arch::default_gsi_routes`: on x86_64 GSI n →
//! IOAPIC pin n and for n < 16 also PIC pin n % 8; on aarch64 GSI n → SPI n) in every table it
//! sets: the serial port's irqfd keeps working. MSI routes get GSIs from `arch::LEGACY_GSIS` up.
//!
//! A message carries the requester id of the function that sends it ([`MsiMessage::devid`]):
//! an ITS translates by (device id, event id). It goes to KVM with `KVM_MSI_VALID_DEVID` when
//! the VM has `KVM_CAP_MSI_DEVID` (on arm64 only once the ITS exists; never on x86_64).
//!
//! Devices see only the [`IrqRouting`] trait; unit tests use a fake. [`FunctionIrqRouting`]
//! stamps one function's requester id on every message it routes or sends.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_msi, KvmIrqRouting,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

pub use crate::arch::LEGACY_GSIS;

/// The highest GSI handed out for MSI routes (KVM allows up to KVM_MAX_IRQ_ROUTES - 1).
pub const MAX_MSI_GSI: u32 = 4095;

/// An MSI message: what the device writes, where, and who writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
    /// The sender's PCI requester id (bus << 8 | device << 3 | function).
    pub devid: u32,
}

/// The requester id (BDF) of function `func` of device `dev` on `bus`.
pub fn requester_id(bus: u8, dev: u8, func: u8) -> u32 {
    u32::from(bus) << 8 | u32::from(dev & 0x1f) << 3 | u32::from(func & 0x7)
}

#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("no free GSI for an MSI route")]
    NoGsi,
    #[error("GSI {0} was not handed out by this router")]
    UnknownGsi(u32),
    #[error("KVM {op} failed: {err}")]
    Kvm {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// What a device needs to raise message-signalled interrupts.
pub trait IrqRouting: Send + Sync {
    /// A GSI for an MSI route (24 and up).
    fn allocate_gsi(&self) -> Result<u32, IrqError>;
    /// Gives a GSI back, removing its route if it has one.
    fn free_gsi(&self, gsi: u32);
    /// Routes `gsi` to `msg` (replacing its route if it had one).
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError>;
    /// Removes the route of `gsi` (an irqfd on it then injects nothing).
    fn remove_route(&self, gsi: u32) -> Result<(), IrqError>;
    /// Binds `fd` to `gsi`: a write on it injects the GSI's route.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError>;
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError>;
    /// Injects `msg` now. Returns false when KVM reported it blocked (the guest masked it).
    fn signal_msi(&self, msg: MsiMessage) -> Result<bool, IrqError>;
}

/// A route of `gsi` to pin `pin` of the in-kernel irqchip `irqchip`.
pub fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
    e
}

/// A route of `gsi` to `msg`; with `devid` its requester id goes along (KVM_MSI_VALID_DEVID).
fn msi_entry(gsi: u32, msg: MsiMessage, devid: bool) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    let mut msi = kvm_irq_routing_msi {
        address_lo: msg.address as u32,
        address_hi: (msg.address >> 32) as u32,
        data: msg.data,
        ..Default::default()
    };
    if devid {
        e.flags = KVM_MSI_VALID_DEVID;
        msi.__bindgen_anon_1.devid = msg.devid;
    }
    e.u.msi = msi;
    e
}

/// The whole table for a set of MSI routes: the irqchip's defaults first, then the MSIs by
/// GSI (with their requester ids when `devid`).
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>, devid: bool) -> Vec<kvm_irq_routing_entry> {
    let mut v = crate::arch::default_gsi_routes();
    v.extend(msi.iter().map(|(&gsi, &msg)| msi_entry(gsi, msg, devid)));
    v
}

/// The `kvm_msi` for KVM_SIGNAL_MSI.
pub fn kvm_msi_of(msg: MsiMessage, devid: bool) -> kvm_msi {
    let mut m = kvm_msi {
        address_lo: msg.address as u32,
        address_hi: (msg.address >> 32) as u32,
        data: msg.data,
        ..Default::default()
    };
    if devid {
        m.flags = KVM_MSI_VALID_DEVID;
        m.devid = msg.devid;
    }
    m
}

struct RouterState {
    gsis: IdAllocator,
    routes: BTreeMap<u32, MsiMessage>,
}

/// Counters of a router.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouterStats {
    /// KVM_SET_GSI_ROUTING calls.
    pub table_updates: u64,
    /// KVM_SIGNAL_MSI calls.
    pub signal_msi: u64,
    /// MSI routes in the table now.
    pub msi_routes: u64,
}

/// The VM's GSI routing table and MSI injection on a real KVM VM.
pub struct KvmIrqRouter {
    vm: Arc<VmFd>,
    /// Messages go to KVM with their requester id (the VM has KVM_CAP_MSI_DEVID).
    devid: bool,
    state: Mutex<RouterState>,
    stats: Mutex<RouterStats>,
    /// KVM_SIGNAL_MSI calls: an atomic, so the interrupt path takes no lock.
    signal_msi: AtomicU64,
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> IrqError {
    move |err| IrqError::Kvm { op, err }
}

impl KvmIrqRouter {
    /// A router for `vm`, which must have its in-kernel irqchip (on aarch64: the GIC and its
    /// ITS, since KVM_CAP_MSI_DEVID is read here and reads 0 before the ITS exists).
    pub fn new(vm: Arc<VmFd>) -> Self {
        let devid = vm.check_extension(kvm_ioctls::Cap::MsiDevid);
        KvmIrqRouter {
            vm,
            devid,
            state: Mutex::new(RouterState {
                // The range is valid (start <= end), so this cannot fail.
                gsis: IdAllocator::new(LEGACY_GSIS, MAX_MSI_GSI).expect("valid GSI range"),
                routes: BTreeMap::new(),
            }),
            stats: Mutex::new(RouterStats::default()),
            signal_msi: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> RouterStats {
        RouterStats {
            signal_msi: self.signal_msi.load(Ordering::Relaxed),
            ..*self.stats.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// Whether messages reach KVM with their requester id (`KVM_MSI_VALID_DEVID`).
    pub fn uses_devid(&self) -> bool {
        self.devid
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the whole table from `routes` (called with the state lock held, so tables are set
    /// in the order their changes were made).
    fn commit(&self, routes: &BTreeMap<u32, MsiMessage>) -> Result<(), IrqError> {
        let table =
            KvmIrqRouting::from_entries(&routing_table(routes, self.devid)).map_err(|_| {
                IrqError::Kvm {
                    op: "KVM_SET_GSI_ROUTING (table too large)",
                    err: kvm_ioctls::Error::new(libc::E2BIG),
                }
            })?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(kvm_err("KVM_SET_GSI_ROUTING"))?;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.table_updates += 1;
        s.msi_routes = routes.len() as u64;
        Ok(())
    }
}

impl IrqRouting for KvmIrqRouter {
    fn allocate_gsi(&self) -> Result<u32, IrqError> {
        self.state().gsis.allocate_id().map_err(|_| IrqError::NoGsi)
    }

    fn free_gsi(&self, gsi: u32) {
        let mut st = self.state();
        if st.routes.remove(&gsi).is_some() {
            let routes = st.routes.clone();
            if let Err(e) = self.commit(&routes) {
                log::warn!("removing the route of GSI {gsi}: {e}");
            }
        }
        let _ = st.gsis.free_id(gsi);
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        let mut st = self.state();
        if !st.gsis.is_allocated(gsi) {
            return Err(IrqError::UnknownGsi(gsi));
        }
        let old = st.routes.insert(gsi, msg);
        if old == Some(msg) {
            return Ok(());
        }
        let routes = st.routes.clone();
        let r = self.commit(&routes);
        if r.is_err() {
            // Keep our copy equal to what KVM has.
            match old {
                Some(m) => st.routes.insert(gsi, m),
                None => st.routes.remove(&gsi),
            };
        }
        r
    }

    fn remove_route(&self, gsi: u32) -> Result<(), IrqError> {
        let mut st = self.state();
        if st.routes.remove(&gsi).is_none() {
            return Ok(());
        }
        let routes = st.routes.clone();
        self.commit(&routes)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(kvm_err("KVM_IRQFD (deassign)"))
    }

    fn signal_msi(&self, msg: MsiMessage) -> Result<bool, IrqError> {
        let r = self
            .vm
            .signal_msi(kvm_msi_of(msg, self.devid))
            .map_err(kvm_err("KVM_SIGNAL_MSI"))?;
        self.signal_msi.fetch_add(1, Ordering::Relaxed);
        Ok(r > 0)
    }
}

/// One PCI function's view of the VM's router: every message it routes or sends carries the
/// function's requester id, whatever the device put in it.
pub struct FunctionIrqRouting {
    inner: Arc<dyn IrqRouting>,
    devid: u32,
}

impl FunctionIrqRouting {
    pub fn new(inner: Arc<dyn IrqRouting>, devid: u32) -> Self {
        FunctionIrqRouting { inner, devid }
    }

    fn stamp(&self, msg: MsiMessage) -> MsiMessage {
        MsiMessage {
            devid: self.devid,
            ..msg
        }
    }
}

impl IrqRouting for FunctionIrqRouting {
    fn allocate_gsi(&self) -> Result<u32, IrqError> {
        self.inner.allocate_gsi()
    }
    fn free_gsi(&self, gsi: u32) {
        self.inner.free_gsi(gsi)
    }
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        self.inner.set_msi_route(gsi, self.stamp(msg))
    }
    fn remove_route(&self, gsi: u32) -> Result<(), IrqError> {
        self.inner.remove_route(gsi)
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.inner.register_irqfd(fd, gsi)
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.inner.unregister_irqfd(fd, gsi)
    }
    fn signal_msi(&self, msg: MsiMessage) -> Result<bool, IrqError> {
        self.inner.signal_msi(self.stamp(msg))
    }
}

/// A fake router for unit tests: records routes, irqfds and signalled messages.
#[derive(Default)]
pub struct FakeIrqRouting {
    pub state: Mutex<FakeIrqState>,
}

#[derive(Default, Debug)]
pub struct FakeIrqState {
    pub next_gsi: u32,
    pub allocated: Vec<u32>,
    pub routes: BTreeMap<u32, MsiMessage>,
    /// (eventfd raw fd, gsi) pairs bound now.
    pub irqfds: Vec<(i32, u32)>,
    pub signalled: Vec<MsiMessage>,
    /// When set, every call fails (to test error paths).
    pub fail: bool,
}

impl FakeIrqRouting {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeIrqRouting::default())
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeIrqState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<std::sync::MutexGuard<'_, FakeIrqState>, IrqError> {
        let s = self.lock();
        if s.fail {
            return Err(IrqError::Kvm {
                op: "fake",
                err: kvm_ioctls::Error::new(libc::EIO),
            });
        }
        Ok(s)
    }
}

impl IrqRouting for FakeIrqRouting {
    fn allocate_gsi(&self) -> Result<u32, IrqError> {
        let mut s = self.check()?;
        let gsi = LEGACY_GSIS + s.next_gsi;
        s.next_gsi += 1;
        s.allocated.push(gsi);
        Ok(gsi)
    }
    fn free_gsi(&self, gsi: u32) {
        let mut s = self.lock();
        s.allocated.retain(|&g| g != gsi);
        s.routes.remove(&gsi);
    }
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        let mut s = self.check()?;
        if !s.allocated.contains(&gsi) {
            return Err(IrqError::UnknownGsi(gsi));
        }
        s.routes.insert(gsi, msg);
        Ok(())
    }
    fn remove_route(&self, gsi: u32) -> Result<(), IrqError> {
        self.check()?.routes.remove(&gsi);
        Ok(())
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        use std::os::fd::AsRawFd;
        self.check()?.irqfds.push((fd.as_raw_fd(), gsi));
        Ok(())
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        use std::os::fd::AsRawFd;
        let mut s = self.check()?;
        let key = (fd.as_raw_fd(), gsi);
        s.irqfds.retain(|&p| p != key);
        Ok(())
    }
    fn signal_msi(&self, msg: MsiMessage) -> Result<bool, IrqError> {
        self.check()?.signalled.push(msg);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(address: u64, data: u32, devid: u32) -> MsiMessage {
        MsiMessage {
            address,
            data,
            devid,
        }
    }

    #[test]
    fn table_keeps_defaults_and_adds_msis() {
        let defaults = crate::arch::default_gsi_routes();
        assert!(!defaults.is_empty());
        assert!(defaults
            .iter()
            .all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP && e.gsi < LEGACY_GSIS));
        let mut m = BTreeMap::new();
        m.insert(LEGACY_GSIS + 6, msg(0x1_fee0_1000, 0x41, 0x18));
        for devid in [false, true] {
            let t = routing_table(&m, devid);
            assert_eq!(t.len(), defaults.len() + 1);
            let last = t.last().unwrap();
            assert_eq!(
                (last.gsi, last.type_),
                (LEGACY_GSIS + 6, KVM_IRQ_ROUTING_MSI)
            );
            // SAFETY: written through the `msi` member.
            let msi = unsafe { last.u.msi };
            assert_eq!(
                (msi.address_lo, msi.address_hi, msi.data),
                (0xfee0_1000, 1, 0x41)
            );
            // SAFETY: the union's two members are both a u32.
            let id = unsafe { msi.__bindgen_anon_1.devid };
            if devid {
                assert_eq!((last.flags, id), (KVM_MSI_VALID_DEVID, 0x18));
            } else {
                assert_eq!((last.flags, id), (0, 0));
            }
        }
    }

    #[test]
    fn signal_msi_carries_the_devid_only_when_asked() {
        let m = kvm_msi_of(msg(0x8_0001_0040, 7, 0x20), true);
        assert_eq!((m.address_lo, m.address_hi, m.data), (0x0001_0040, 8, 7));
        assert_eq!((m.flags, m.devid), (KVM_MSI_VALID_DEVID, 0x20));
        let m = kvm_msi_of(msg(0xfee0_0000, 0x30, 0x20), false);
        assert_eq!((m.flags, m.devid), (0, 0));
    }

    #[test]
    fn requester_ids() {
        assert_eq!(requester_id(0, 0, 0), 0);
        assert_eq!(requester_id(0, 3, 0), 0x18);
        assert_eq!(requester_id(1, 31, 7), 0x1ff);
    }

    #[test]
    fn a_function_stamps_its_requester_id() {
        let fake = FakeIrqRouting::new();
        let f = FunctionIrqRouting::new(fake.clone(), 0x10);
        let gsi = f.allocate_gsi().unwrap();
        f.set_msi_route(gsi, msg(0xfee0_0000, 0x31, 0xdead))
            .unwrap();
        f.signal_msi(msg(0xfee0_0000, 0x32, 0)).unwrap();
        let s = fake.lock();
        assert_eq!(s.routes[&gsi], msg(0xfee0_0000, 0x31, 0x10));
        assert_eq!(s.signalled, vec![msg(0xfee0_0000, 0x32, 0x10)]);
    }
}
