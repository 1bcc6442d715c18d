//! PSCI (Arm DEN 0022): the calls the guest makes, by `hvc` or `smc` as the FDT's `/psci` node
//! says (`method`). With KVM's `KVM_ARM_VCPU_PSCI_0_2` the host kernel answers them itself,
//! except SYSTEM_OFF and SYSTEM_RESET, which reach the VMM as `KVM_EXIT_SYSTEM_EVENT`.
use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

pub const VERSION: u32 = 0x8400_0000;
pub const CPU_ON_64: u32 = 0xc400_0003;
pub const SYSTEM_OFF: u32 = 0x8400_0008;
pub const SYSTEM_RESET: u32 = 0x8400_0009;

/// Return codes.
pub const SUCCESS: i64 = 0;

const HVC: u8 = 0;
const SMC: u8 = 1;
const NONE: u8 = 2;
static CONDUIT: AtomicU8 = AtomicU8::new(NONE);

/// Takes the conduit from the FDT's `method` ("hvc" or "smc"; anything else: no PSCI).
pub fn init(method: Option<&str>) {
    let c = match method {
        Some("hvc") => HVC,
        Some("smc") => SMC,
        _ => NONE,
    };
    CONDUIT.store(c, Ordering::Relaxed);
}

/// `hvc` or `smc`, or None without PSCI.
pub fn conduit() -> Option<&'static str> {
    match CONDUIT.load(Ordering::Relaxed) {
        HVC => Some("hvc"),
        SMC => Some("smc"),
        _ => None,
    }
}

/// Calls PSCI function `f` with three arguments; -1 (NOT_SUPPORTED) without PSCI.
pub fn call(f: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let mut x0 = u64::from(f);
    // SAFETY: a PSCI call per SMCCC: x0–x3 in, x0 out, x4–x17 may be clobbered (declared). The
    // firmware (KVM) changes no memory of ours except as the call documents (CPU_ON starts a
    // CPU at an entry point we own).
    unsafe {
        match CONDUIT.load(Ordering::Relaxed) {
            HVC => asm!("hvc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                        inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                        out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                        out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                        options(nostack)),
            SMC => asm!("smc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                        inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                        out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                        out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                        options(nostack)),
            _ => return -1,
        }
    }
    x0 as i64
}

/// PSCI_VERSION: (major, minor), or None without PSCI.
pub fn version() -> Option<(u32, u32)> {
    let v = call(VERSION, 0, 0, 0);
    (v >= 0).then_some(((v >> 16) as u32, (v & 0xffff) as u32))
}
