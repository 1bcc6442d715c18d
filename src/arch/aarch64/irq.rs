//! The legacy GSIs: the GIC's SPIs. KVM's default routing sends GSI n to SPI n (INTID 32 + n);
//! every table trapvisor sets keeps those routes, and MSI routes start above them.
use kvm_bindings::kvm_irq_routing_entry;

use super::layout::NR_SPIS;
use crate::kvm::irq::irqchip_entry;

/// GSIs 0..LEGACY_GSIS are the SPIs; MSI routes start here.
pub const LEGACY_GSIS: u32 = NR_SPIS;

/// KVM's default routes on arm64 (`kvm_vgic_setup_default_irq_routing`): GSI n to irqchip 0,
/// pin n, which the vGIC injects as SPI n.
pub fn default_gsi_routes() -> Vec<kvm_irq_routing_entry> {
    (0..NR_SPIS).map(|gsi| irqchip_entry(gsi, 0, gsi)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spi_routes_to_itself() {
        let r = default_gsi_routes();
        assert_eq!(r.len(), NR_SPIS as usize);
        for (n, e) in r.iter().enumerate() {
            assert_eq!(e.gsi, n as u32);
            assert_eq!(e.type_, kvm_bindings::KVM_IRQ_ROUTING_IRQCHIP);
            // SAFETY: irqchip entries are written through the `irqchip` member.
            let (chip, pin) = unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) };
            assert_eq!((chip, pin), (0, n as u32));
        }
        // The UART's SPI is among them.
        assert!(r.iter().any(|e| e.gsi == super::super::layout::UART_SPI));
    }
}
