//! Where things are: the virtio-pci BAR layout and the capabilities that announce it
//! (virtio 1.2 §4.1.4).
//!
//! One 32-bit memory BAR (BAR0, 32 KiB, so that a driver with only the low 4 GiB mapped
//! reaches it), one 4 KiB page per structure:
//!
//! ```text
//! 0x0000 common config     0x3000 notify (4 bytes per queue: notify_off_multiplier = 4)
//! 0x1000 ISR status        0x4000 MSI-X table
//! 0x2000 device config     0x5000 MSI-X PBA
//! ```
use crate::pci::BarRegion;

pub const BAR: usize = 0;
pub const BAR_SIZE: u64 = 0x8000;
const PAGE: u64 = 0x1000;

pub const COMMON: BarRegion = BarRegion {
    offset: 0,
    len: PAGE,
    name: "common",
};
pub const ISR: BarRegion = BarRegion {
    offset: 0x1000,
    len: PAGE,
    name: "isr",
};
pub const DEVICE: BarRegion = BarRegion {
    offset: 0x2000,
    len: PAGE,
    name: "device",
};
pub const NOTIFY: BarRegion = BarRegion {
    offset: 0x3000,
    len: PAGE,
    name: "notify",
};
pub const MSIX_TABLE: BarRegion = BarRegion {
    offset: 0x4000,
    len: PAGE,
    name: "msix-table",
};
pub const MSIX_PBA: BarRegion = BarRegion {
    offset: 0x5000,
    len: PAGE,
    name: "msix-pba",
};
pub const REGIONS: [BarRegion; 6] = [COMMON, ISR, DEVICE, NOTIFY, MSIX_TABLE, MSIX_PBA];

/// Queue `n` is notified at `NOTIFY.offset + n * NOTIFY_OFF_MULTIPLIER`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Queues the notify page has room for.
pub const MAX_QUEUES: usize = (PAGE / NOTIFY_OFF_MULTIPLIER as u64) as usize;
/// MSI-X vectors the table page has room for.
pub const MAX_VECTORS: u16 = (PAGE / 16) as u16;

/// `cfg_type` of the virtio vendor capabilities.
pub const CAP_COMMON_CFG: u8 = 1;
pub const CAP_NOTIFY_CFG: u8 = 2;
pub const CAP_ISR_CFG: u8 = 3;
pub const CAP_DEVICE_CFG: u8 = 4;
pub const CAP_PCI_CFG: u8 = 5;
pub const PCI_CAP_ID_VENDOR: u8 = 0x09;

/// struct virtio_pci_cap: offsets of its fields.
pub const CAP_BAR: usize = 4;
pub const CAP_OFFSET: usize = 8;
pub const CAP_LENGTH: usize = 12;
/// virtio_pci_cfg_cap.pci_cfg_data, after the 16-byte virtio_pci_cap.
pub const PCI_CFG_DATA: usize = 16;

/// PCI identity (virtio 1.2 §4.1.2): vendor 0x1af4, device 0x1040 + type, revision 1; the
/// subsystem ids are QEMU's (Red Hat, 0x1100), which Linux takes as the virtio vendor id.
pub const VENDOR_ID: u16 = 0x1af4;
pub const DEVICE_ID_BASE: u16 = 0x1040;
pub const REVISION_ID: u8 = 1;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const SUBSYSTEM_ID: u16 = 0x1100;

/// A virtio vendor capability (`extra` follows the 16-byte struct virtio_pci_cap) and its
/// write mask (`writable` bytes of the whole capability).
pub fn vendor_cap(cfg_type: u8, region: BarRegion, extra: &[u8]) -> Vec<u8> {
    let len = 16 + extra.len();
    let mut b = vec![
        PCI_CAP_ID_VENDOR,
        0,
        len as u8,
        cfg_type,
        BAR as u8,
        0,
        0,
        0,
    ];
    b.extend_from_slice(&(region.offset as u32).to_le_bytes());
    b.extend_from_slice(&(region.len as u32).to_le_bytes());
    b.extend_from_slice(extra);
    b
}

/// VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data are writable; it starts pointing
/// nowhere (length 0).
pub fn pci_cfg_cap() -> (Vec<u8>, Vec<u8>) {
    let mut b = vendor_cap(
        CAP_PCI_CFG,
        BarRegion {
            offset: 0,
            len: 0,
            name: "",
        },
        &[0; 4],
    );
    b[CAP_BAR] = 0;
    let mut m = vec![0u8; b.len()];
    m[CAP_BAR] = 0xff;
    m[CAP_OFFSET..CAP_OFFSET + 4].fill(0xff);
    m[CAP_LENGTH..CAP_LENGTH + 4].fill(0xff);
    m[PCI_CFG_DATA..PCI_CFG_DATA + 4].fill(0xff);
    (b, m)
}

/// The region holding BAR offset `offset`, and the offset inside it.
pub fn region_at(offset: u64) -> Option<(BarRegion, u64)> {
    REGIONS
        .iter()
        .find(|r| offset >= r.offset && offset - r.offset < r.len)
        .map(|r| (*r, offset - r.offset))
}
