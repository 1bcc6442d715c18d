//! KVM's tracepoints as trapvisor reads them: which ones it asks for, and each raw record
//! decoded through the field offsets of this kernel's format files.
use std::collections::HashMap;

use super::format::{EventFormat, Field};
use super::reasons::{ExitReason, Isa};

/// The tracepoints `--trace-kernel` opens, in the `kvm` system (those the host has).
pub const WANTED: [&str; 12] = [
    "kvm_exit",
    "kvm_entry",
    "kvm_userspace_exit",
    "kvm_pio",
    "kvm_mmio",
    "kvm_fast_mmio",
    "kvm_msr",
    "kvm_set_irq",
    "kvm_msi_set_irq",
    "kvm_apic_accept_irq",
    "kvm_inj_virq",
    "kvm_fpu",
];

/// What one record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The CPU left the guest (VMX/SVM; arm64).
    Exit {
        reason: ExitReason,
        info1: u64,
        info2: u64,
    },
    /// KVM is about to enter the guest.
    Entry,
    /// KVM_RUN returns to trapvisor: `reason` is KVM_EXIT_*, `errno` e.g. -4 (EINTR).
    UserspaceExit { reason: u32, errno: i32 },
    /// A port access KVM saw (handled in the kernel, or about to go to userspace).
    Pio {
        write: bool,
        port: u16,
        size: u8,
        count: u32,
    },
    /// An MMIO access KVM emulated: `op` 0 unsatisfied read, 1 read, 2 write.
    Mmio { op: u8, len: u8, gpa: u64 },
    /// A fast MMIO write (VMX EPT misconfiguration): an ioeventfd hit without emulation.
    FastMmio { gpa: u64 },
    /// An MSR access KVM handled.
    Msr { write: bool, ecx: u32 },
    /// A legacy interrupt line set (irqfd on a GSI, the PIT, ...).
    SetIrq { gsi: u32, level: i32 },
    /// An MSI delivered (irqfd with an MSI route, KVM_SIGNAL_MSI).
    MsiSetIrq { address: u64, data: u64 },
    /// The local APIC of `apic` accepted interrupt `vector`.
    ApicAcceptIrq { apic: u32, vector: u8 },
    /// KVM injects `vector` into the vCPU at its next entry.
    InjVirq { vector: u8 },
    /// The guest FPU state is loaded (KVM_RUN begins) or put away (KVM_RUN ends).
    Fpu { load: bool },
}

impl Kind {
    /// The tracepoint's name.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Exit { .. } => "kvm_exit",
            Kind::Entry => "kvm_entry",
            Kind::UserspaceExit { .. } => "kvm_userspace_exit",
            Kind::Pio { .. } => "kvm_pio",
            Kind::Mmio { .. } => "kvm_mmio",
            Kind::FastMmio { .. } => "kvm_fast_mmio",
            Kind::Msr { .. } => "kvm_msr",
            Kind::SetIrq { .. } => "kvm_set_irq",
            Kind::MsiSetIrq { .. } => "kvm_msi_set_irq",
            Kind::ApicAcceptIrq { .. } => "kvm_apic_accept_irq",
            Kind::InjVirq { .. } => "kvm_inj_virq",
            Kind::Fpu { .. } => "kvm_fpu",
        }
    }
}

/// One record: when (CLOCK_MONOTONIC ns), on which thread, what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub tid: u32,
    pub time_ns: u64,
    pub kind: Kind,
}

/// How one tracepoint's record is decoded.
#[derive(Debug, Clone)]
struct Layout {
    name: &'static str,
    fields: HashMap<&'static str, Field>,
    /// The record length its fields need; a shorter record is refused whole.
    min_len: usize,
    /// arm64's kvm_exit has `esr_ec` where x86's has `exit_reason` and `isa`.
    arm64_exit: bool,
}

/// Decodes raw records of the tracepoints whose formats it was given.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    by_id: HashMap<u64, Layout>,
}

/// The fields each tracepoint's decoding reads (the first name that exists is used).
fn wanted_fields(name: &str) -> &'static [&'static str] {
    match name {
        "kvm_exit" => &["exit_reason", "isa", "info1", "info2", "esr_ec"],
        "kvm_userspace_exit" => &["reason", "errno"],
        "kvm_pio" => &["rw", "port", "size", "count"],
        "kvm_mmio" => &["type", "len", "gpa"],
        "kvm_fast_mmio" => &["gpa"],
        "kvm_msr" => &["write", "ecx"],
        "kvm_set_irq" => &["gsi", "level"],
        "kvm_msi_set_irq" => &["address", "data"],
        "kvm_apic_accept_irq" => &["apicid", "vec"],
        "kvm_inj_virq" => &["vector", "irq"],
        "kvm_fpu" => &["load"],
        _ => &[],
    }
}

impl Decoder {
    /// A decoder for these formats (tracepoints not in [`WANTED`] are ignored).
    pub fn new(formats: &[EventFormat]) -> Self {
        let mut by_id = HashMap::new();
        for f in formats {
            let Some(name) = WANTED.iter().copied().find(|w| *w == f.name) else {
                continue;
            };
            let fields: HashMap<&'static str, Field> = wanted_fields(name)
                .iter()
                .filter_map(|n| f.field(n).map(|fl| (*n, *fl)))
                .collect();
            let arm64_exit = name == "kvm_exit" && f.field("esr_ec").is_some();
            let min_len = fields
                .values()
                .map(|fl: &Field| fl.offset + fl.size)
                .max()
                .unwrap_or(0);
            by_id.insert(
                f.id,
                Layout {
                    name,
                    fields,
                    min_len,
                    arm64_exit,
                },
            );
        }
        Decoder { by_id }
    }

    /// The tracepoint names this decoder knows.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.by_id.values().map(|l| l.name).collect();
        v.sort_unstable();
        v
    }

    /// Decodes a raw record (the tracepoint's own bytes: `common_type` first). `None` for a
    /// record of another tracepoint, or one too short for its fields.
    pub fn decode(&self, raw: &[u8]) -> Option<Kind> {
        let ty = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
        let l = self.by_id.get(&u64::from(ty))?;
        if raw.len() < l.min_len {
            return None;
        }
        let get = |n: &str| l.fields.get(n).and_then(|f| f.u64(raw));
        let int = |n: &str| l.fields.get(n).and_then(|f| f.read(raw));
        Some(match l.name {
            "kvm_exit" if l.arm64_exit => Kind::Exit {
                reason: ExitReason {
                    isa: Isa::Arm64,
                    code: get("esr_ec")?,
                },
                info1: 0,
                info2: 0,
            },
            "kvm_exit" => Kind::Exit {
                reason: ExitReason {
                    isa: Isa::from_x86(get("isa").unwrap_or(0)),
                    code: get("exit_reason")?,
                },
                info1: get("info1").unwrap_or(0),
                info2: get("info2").unwrap_or(0),
            },
            "kvm_entry" => Kind::Entry,
            "kvm_userspace_exit" => Kind::UserspaceExit {
                reason: get("reason")? as u32,
                errno: int("errno").unwrap_or(0) as i32,
            },
            "kvm_pio" => Kind::Pio {
                write: get("rw")? != 0,
                port: get("port")? as u16,
                size: get("size").unwrap_or(0) as u8,
                count: get("count").unwrap_or(1) as u32,
            },
            "kvm_mmio" => Kind::Mmio {
                op: get("type")? as u8,
                len: get("len").unwrap_or(0) as u8,
                gpa: get("gpa")?,
            },
            "kvm_fast_mmio" => Kind::FastMmio { gpa: get("gpa")? },
            "kvm_msr" => Kind::Msr {
                write: get("write")? != 0,
                ecx: get("ecx")? as u32,
            },
            "kvm_set_irq" => Kind::SetIrq {
                gsi: get("gsi")? as u32,
                level: int("level").unwrap_or(0) as i32,
            },
            "kvm_msi_set_irq" => Kind::MsiSetIrq {
                address: get("address")?,
                data: get("data")?,
            },
            "kvm_apic_accept_irq" => Kind::ApicAcceptIrq {
                apic: get("apicid")? as u32,
                vector: get("vec")? as u8,
            },
            // Older kernels name the field `irq`.
            "kvm_inj_virq" => Kind::InjVirq {
                vector: get("vector").or_else(|| get("irq"))? as u8,
            },
            "kvm_fpu" => Kind::Fpu {
                load: get("load")? != 0,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::parse;
    use super::*;

    fn fmt(name: &str, id: u64, fields: &[(&str, usize, usize, bool)]) -> EventFormat {
        let mut text = format!("name: {name}\nID: {id}\nformat:\n");
        for (n, off, size, signed) in fields {
            text.push_str(&format!(
                "\tfield:int {n};\toffset:{off};\tsize:{size};\tsigned:{};\n",
                u8::from(*signed)
            ));
        }
        parse(&text).unwrap()
    }

    fn rec(id: u16, len: usize, puts: &[(usize, &[u8])]) -> Vec<u8> {
        let mut r = vec![0u8; len];
        r[..2].copy_from_slice(&id.to_ne_bytes());
        for (at, b) in puts {
            r[*at..*at + b.len()].copy_from_slice(b);
        }
        r
    }

    #[test]
    fn decodes_through_the_given_offsets() {
        let d = Decoder::new(&[
            fmt(
                "kvm_exit",
                103,
                &[
                    ("exit_reason", 8, 4, false),
                    ("isa", 24, 4, false),
                    ("info1", 32, 8, false),
                    ("info2", 40, 8, false),
                ],
            ),
            fmt(
                "kvm_userspace_exit",
                42,
                &[("reason", 8, 4, false), ("errno", 12, 4, true)],
            ),
            fmt(
                "kvm_pio",
                110,
                &[
                    ("rw", 8, 4, false),
                    ("port", 12, 4, false),
                    ("size", 16, 4, false),
                    ("count", 20, 4, false),
                ],
            ),
            fmt("kvm_inj_virq", 102, &[("irq", 8, 4, false)]),
            fmt("kvm_exit_arm", 5, &[]),
            fmt("sched_switch", 7, &[("prev_pid", 8, 4, true)]),
        ]);
        assert_eq!(
            d.names(),
            vec!["kvm_exit", "kvm_inj_virq", "kvm_pio", "kvm_userspace_exit"]
        );
        let exit = rec(
            103,
            48,
            &[
                (8, &0x400u32.to_ne_bytes()),
                (24, &2u32.to_ne_bytes()),
                (40, &0xfee0_0000u64.to_ne_bytes()),
            ],
        );
        match d.decode(&exit) {
            Some(Kind::Exit { reason, info2, .. }) => {
                assert_eq!(reason.name(), "npf");
                assert_eq!(info2, 0xfee0_0000);
            }
            other => panic!("{other:?}"),
        }
        let ue = rec(
            42,
            16,
            &[(8, &2u32.to_ne_bytes()), (12, &(-4i32).to_ne_bytes())],
        );
        assert_eq!(
            d.decode(&ue),
            Some(Kind::UserspaceExit {
                reason: 2,
                errno: -4
            })
        );
        let pio = rec(
            110,
            24,
            &[
                (8, &1u32.to_ne_bytes()),
                (12, &0x514u32.to_ne_bytes()),
                (16, &4u32.to_ne_bytes()),
                (20, &1u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            d.decode(&pio),
            Some(Kind::Pio {
                write: true,
                port: 0x514,
                size: 4,
                count: 1
            })
        );
        assert_eq!(
            d.decode(&rec(102, 12, &[(8, &0x41u32.to_ne_bytes())])),
            Some(Kind::InjVirq { vector: 0x41 })
        );
        // Unknown ids, other systems' events, short records, empty input.
        assert_eq!(d.decode(&rec(7, 16, &[])), None);
        assert_eq!(d.decode(&rec(999, 16, &[])), None);
        assert_eq!(d.decode(&exit[..20]), None);
        assert_eq!(d.decode(&[]), None);
        assert_eq!(d.decode(&[1]), None);
    }

    #[test]
    fn arm64_exits_use_the_exception_class() {
        let d = Decoder::new(&[fmt(
            "kvm_exit",
            9,
            &[
                ("ret", 8, 4, true),
                ("esr_ec", 12, 4, false),
                ("vcpu_pc", 16, 8, false),
            ],
        )]);
        match d.decode(&rec(9, 24, &[(12, &0x24u32.to_ne_bytes())])) {
            Some(Kind::Exit { reason, .. }) => assert_eq!(reason.name(), "DABT_LOW"),
            other => panic!("{other:?}"),
        }
    }
}
