//! Interrupts into the guest by message: the GSI routing table, irqfds and KVM_SIGNAL_MSI.
//!
//! An MSI (an MSI-X vector's address and data) reaches the guest's local APIC in one of two ways:
//!
//! * **irqfd**: the message is a route of the GSI routing table (`KVM_SET_GSI_ROUTING`) and an
//!   eventfd is bound to that GSI (`KVM_IRQFD`); writing 1 to the eventfd injects the interrupt
//!   inside KVM, from any thread, without an ioctl;
//! * **KVM_SIGNAL_MSI**: one ioctl per interrupt with the message itself, no route needed.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so [`KvmIrqRouter`] keeps the in-kernel
//! irqchip's default routes for GSIs 0..23 (GSI n → IOAPIC pin n, and for n < 16 also the PIC
//! pin n % 8, the table KVM installs with the irqchip) in every table it sets: the serial port's
//! irqfd on GSI 4 keeps working. MSI routes get GSIs from 24 up.
//!
//! Devices see only the [`IrqRouting`] trait; unit tests use a fake.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

/// GSIs 0..LEGACY_GSIS belong to the in-kernel PIC/IOAPIC.
pub const LEGACY_GSIS: u32 = 24;
/// The highest GSI handed out for MSI routes (KVM allows up to KVM_MAX_IRQ_ROUTES - 1).
pub const MAX_MSI_GSI: u32 = 4095;

/// An MSI message: what the device writes, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
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

/// The in-kernel irqchip's default routes, as KVM installs them with KVM_CREATE_IRQCHIP.
pub fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..LEGACY_GSIS {
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(irqchip_entry(gsi, chip, gsi % 8));
        }
    }
    v
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
    e
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi = kvm_irq_routing_msi {
        address_lo: msg.address as u32,
        address_hi: (msg.address >> 32) as u32,
        data: msg.data,
        ..Default::default()
    };
    e
}

/// The whole table for a set of MSI routes: the defaults first, then the MSIs by GSI.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut v = default_routes();
    v.extend(msi.iter().map(|(&gsi, &msg)| msi_entry(gsi, msg)));
    v
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
    state: Mutex<RouterState>,
    stats: Mutex<RouterStats>,
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> IrqError {
    move |err| IrqError::Kvm { op, err }
}

impl KvmIrqRouter {
    /// A router for `vm`, which must have an in-kernel irqchip.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmIrqRouter {
            vm,
            state: Mutex::new(RouterState {
                // The range is valid (start <= end), so this cannot fail.
                gsis: IdAllocator::new(LEGACY_GSIS, MAX_MSI_GSI).expect("valid GSI range"),
                routes: BTreeMap::new(),
            }),
            stats: Mutex::new(RouterStats::default()),
        }
    }

    pub fn stats(&self) -> RouterStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the whole table from `routes` (called with the state lock held, so tables are set
    /// in the order their changes were made).
    fn commit(&self, routes: &BTreeMap<u32, MsiMessage>) -> Result<(), IrqError> {
        let table =
            KvmIrqRouting::from_entries(&routing_table(routes)).map_err(|_| IrqError::Kvm {
                op: "KVM_SET_GSI_ROUTING (table too large)",
                err: kvm_ioctls::Error::new(libc::E2BIG),
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
        let m = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        let r = self.vm.signal_msi(m).map_err(kvm_err("KVM_SIGNAL_MSI"))?;
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .signal_msi += 1;
        Ok(r > 0)
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

    #[test]
    fn default_routes_match_kvms_table() {
        let r = default_routes();
        // 16 GSIs with two routes (IOAPIC + PIC), 8 with one.
        assert_eq!(r.len(), 16 * 2 + 8);
        let gsi4: Vec<_> = r.iter().filter(|e| e.gsi == 4).collect();
        assert_eq!(gsi4.len(), 2);
        // SAFETY: irqchip entries were written through the `irqchip` member.
        let chips: Vec<(u32, u32)> = gsi4
            .iter()
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(chips.contains(&(KVM_IRQCHIP_IOAPIC, 4)));
        assert!(chips.contains(&(KVM_IRQCHIP_PIC_MASTER, 4)));
        // SAFETY: as above.
        let gsi10 = r
            .iter()
            .filter(|e| e.gsi == 10 && unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_PIC_SLAVE)
            .count();
        assert_eq!(gsi10, 1);
        assert!(r.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
    }

    #[test]
    fn table_keeps_defaults_and_adds_msis() {
        let mut m = BTreeMap::new();
        m.insert(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41,
            },
        );
        let t = routing_table(&m);
        assert_eq!(t.len(), 41);
        let last = t.last().unwrap();
        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: written through the `msi` member.
        let msi = unsafe { last.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x41)
        );
    }

    /// On the real /dev/kvm: routes replace the whole table, the legacy GSI 4 keeps working,
    /// irqfds bind to MSI GSIs and KVM_SIGNAL_MSI is accepted.
    #[test]
    fn kvm_routes_irqfds_and_signal_msi() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let _vcpu = vm.create_vcpu(0).unwrap();
        let router = KvmIrqRouter::new(vm.clone());
        let serial = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&serial, 4).unwrap();

        let gsi = router.allocate_gsi().unwrap();
        assert!(gsi >= LEGACY_GSIS);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        router.set_msi_route(gsi, msg).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        router.register_irqfd(&evt, gsi).unwrap();
        evt.write(1).unwrap();
        // The table was replaced, and GSI 4 (the serial port) still has its routes: a line
        // raised through the table shows in the IOAPIC's IRR, and the serial irqfd's pulse is
        // latched in the PIC's IRR (both are gone if GSI 4 has no route).
        let irr = |chip_id| {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).unwrap();
            // SAFETY: KVM_GET_IRQCHIP fills the member named by chip_id.
            unsafe {
                if chip_id == KVM_IRQCHIP_IOAPIC {
                    chip.chip.ioapic.irr
                } else {
                    u32::from(chip.chip.pic.irr)
                }
            }
        };
        assert_eq!(irr(KVM_IRQCHIP_PIC_MASTER) & (1 << 4), 0);
        serial.write(1).unwrap();
        // irqfd injection of an IRQCHIP route runs from a kernel work item: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while irr(KVM_IRQCHIP_PIC_MASTER) & (1 << 4) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_ne!(
            irr(KVM_IRQCHIP_PIC_MASTER) & (1 << 4),
            0,
            "serial irqfd lost"
        );
        vm.set_irq_line(4, true).unwrap();
        assert_ne!(irr(KVM_IRQCHIP_IOAPIC) & (1 << 4), 0, "no IOAPIC route");
        vm.set_irq_line(4, false).unwrap();
        router.signal_msi(msg).unwrap();
        router.unregister_irqfd(&evt, gsi).unwrap();
        router.remove_route(gsi).unwrap();
        router.free_gsi(gsi);
        let s = router.stats();
        assert_eq!(s.table_updates, 2);
        assert_eq!(s.msi_routes, 0);
        assert_eq!(s.signal_msi, 1);
        // An unknown GSI is refused.
        assert!(matches!(
            router.set_msi_route(4000, msg),
            Err(IrqError::UnknownGsi(4000))
        ));
    }
}
