//! Hardware exit reasons, decoded as `perf kvm stat` does: the `kvm_exit` tracepoint gives a
//! code and which table it belongs to. The table is chosen from the record itself (x86's `isa`
//! field: 1 VMX, 2 SVM; arm64's `kvm_exit` carries the ESR exception class instead), so every
//! architecture's tables live side by side and none is picked at compile time.
mod arm64;
mod x86;

use std::fmt;

/// Which table a `kvm_exit` code belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Intel VT-x (`KVM_ISA_VMX`): the basic exit reason, bits 15:0.
    Vmx,
    /// AMD SVM (`KVM_ISA_SVM`): the VMCB exit code.
    Svm,
    /// PVM (`KVM_ISA_PVM`, in its RFC patches only).
    Pvm,
    /// arm64: the ESR_EL2 exception class.
    Arm64,
    /// Another `isa` value.
    Other(u32),
}

impl Isa {
    /// From x86's `isa` field (arch/x86/kvm/trace.h: KVM_ISA_VMX 1, KVM_ISA_SVM 2).
    pub fn from_x86(isa: u64) -> Isa {
        match isa {
            1 => Isa::Vmx,
            2 => Isa::Svm,
            3 => Isa::Pvm,
            n => Isa::Other(n as u32),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Vmx => "vmx",
            Isa::Svm => "svm",
            Isa::Pvm => "pvm",
            Isa::Arm64 => "arm64",
            Isa::Other(_) => "unknown",
        }
    }
}

/// A hardware exit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitReason {
    pub isa: Isa,
    /// The code as the tracepoint gives it (VMX: the full exit_reason with its flag bits).
    pub code: u64,
}

impl ExitReason {
    /// The name `perf kvm` would print: `npf`, `ioio`, `hlt`, `EPT_VIOLATION`, `WFx`, ... or the
    /// code in hex when no table knows it.
    pub fn name(&self) -> String {
        let known = match self.isa {
            Isa::Vmx => x86::vmx(self.code),
            Isa::Svm => x86::svm(self.code),
            Isa::Arm64 => arm64::esr_ec(self.code),
            Isa::Pvm | Isa::Other(_) => None,
        };
        match known {
            Some(n) if self.isa == Isa::Vmx && self.code & (1 << 31) != 0 => {
                format!("{n}(failed-entry)")
            }
            Some(n) => n.to_string(),
            None => format!("{}-{:#x}", self.isa.name(), self.code),
        }
    }

    /// For the x86 tables: whether the exit is one a guest's port or MMIO access causes
    /// (the ones that may go on to userspace).
    pub fn is_io_or_mmio(&self) -> bool {
        matches!(
            (self.isa, self.name().as_str()),
            (Isa::Svm, "ioio" | "npf")
                | (
                    Isa::Vmx,
                    "IO_INSTRUCTION" | "EPT_VIOLATION" | "EPT_MISCONFIG"
                )
                | (Isa::Arm64, "DABT_LOW")
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decode_by_their_table() {
        let r = |isa, code| ExitReason { isa, code }.name();
        assert_eq!(r(Isa::Svm, 0x400), "npf");
        assert_eq!(r(Isa::Svm, 0x7b), "ioio");
        assert_eq!(r(Isa::Svm, 0x78), "hlt");
        assert_eq!(r(Isa::Svm, 0x7c), "msr");
        assert_eq!(r(Isa::Svm, 0x60), "intr");
        assert_eq!(r(Isa::Svm, 0x64), "vintr");
        assert_eq!(r(Isa::Svm, 0x4e), "excp_pf");
        assert_eq!(r(Isa::Svm, 0x13), "write_cr3");
        assert_eq!(r(Isa::Svm, u64::from(u32::MAX)), "err");
        assert_eq!(r(Isa::Svm, 0x3ff), "svm-0x3ff");
        assert_eq!(r(Isa::Vmx, 48), "EPT_VIOLATION");
        assert_eq!(r(Isa::Vmx, 30), "IO_INSTRUCTION");
        assert_eq!(r(Isa::Vmx, 12), "HLT");
        assert_eq!(r(Isa::Vmx, 33 | (1 << 31)), "INVALID_STATE(failed-entry)");
        assert_eq!(r(Isa::Vmx, 999), "vmx-0x3e7");
        assert_eq!(r(Isa::Arm64, 0x01), "WFx");
        assert_eq!(r(Isa::Arm64, 0x24), "DABT_LOW");
        assert_eq!(r(Isa::Pvm, 3), "pvm-0x3");
        assert_eq!(Isa::from_x86(2), Isa::Svm);
        assert_eq!(Isa::from_x86(9), Isa::Other(9));
        assert!(ExitReason {
            isa: Isa::Svm,
            code: 0x400
        }
        .is_io_or_mmio());
        assert!(!ExitReason {
            isa: Isa::Svm,
            code: 0x78
        }
        .is_io_or_mmio());
    }
}
