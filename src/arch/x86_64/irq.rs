//! The legacy GSIs: the in-kernel IOAPIC and PIC pins.
use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

use crate::kvm::irq::irqchip_entry;

/// GSIs 0..LEGACY_GSIS belong to the in-kernel PIC/IOAPIC; MSI routes start here.
pub const LEGACY_GSIS: u32 = 24;

/// The in-kernel irqchip's default routes, as KVM installs them with KVM_CREATE_IRQCHIP: GSI n
/// to IOAPIC pin n, and for n < 16 also to PIC pin n % 8.
pub fn default_gsi_routes() -> Vec<kvm_irq_routing_entry> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kvm_bindings::KVM_IRQ_ROUTING_IRQCHIP;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::kvm::irq::{IrqError, IrqRouting, KvmIrqRouter, MsiMessage};

    #[test]
    fn default_routes_match_kvms_table() {
        let r = default_gsi_routes();
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
        // x86 KVM has no KVM_CAP_MSI_DEVID: messages go without a requester id.
        assert!(!router.uses_devid());
        let serial = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&serial, 4).unwrap();

        let gsi = router.allocate_gsi().unwrap();
        assert!(gsi >= LEGACY_GSIS);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
            devid: 0,
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
