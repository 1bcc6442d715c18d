//! The VMM's own start, phase by phase: from `main` to the first KVM_RUN (`--stats` prints it
//! as one line before the exit table).
//!
//! The phases follow the start path: `parse` (the command line, until the VM is built), `kvm+ram`
//! (/dev/kvm, the VM, its RAM and memory slots, the architecture's in-kernel devices),
//! `vcpus+irqchip` (the vCPUs and what needs all of them), `devices` (platform devices, PCI,
//! virtio), `kernel` (the image into guest RAM), `initrd`, `acpi+boot tables` (command line,
//! ACPI, zero page or PVH start info), `vcpu setup` (CPUID, MSRs, registers; KVM's statistics
//! descriptors), `threads` (device workers and the event loop started) and `to KVM_RUN` (vCPU
//! 0's thread started, its seccomp filter installed, until it enters the guest).
use std::time::{Duration, Instant};

/// Phases of one VM's start, each the time since the previous one ended.
#[derive(Debug, Clone)]
pub struct StartPhases {
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl StartPhases {
    /// Phases counted from `start` (the process's start, or the moment the VM build began).
    pub fn new(start: Instant) -> Self {
        StartPhases {
            start,
            last: start,
            phases: Vec::new(),
        }
    }

    /// Ends the phase running since the previous mark (or the start) and calls it `name`.
    pub fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    /// As [`mark`](Self::mark), at `at` (never before the previous mark).
    pub fn mark_at(&mut self, name: &'static str, at: Instant) {
        let at = at.max(self.last);
        self.phases.push((name, at - self.last));
        self.last = at;
    }

    /// The phases so far, in order.
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// From the start to the end of the last phase.
    pub fn total(&self) -> Duration {
        self.last - self.start
    }

    /// One line: `start phases (ms): parse 0.41, kvm+ram 1.20, ...; 18.40 to the first
    /// KVM_RUN`. `first_run` is when vCPU 0 first entered the guest (`None`: it never did).
    pub fn format(&self, first_run: Option<Instant>) -> String {
        let mut p = self.clone();
        if let Some(at) = first_run {
            p.mark_at("to KVM_RUN", at);
        }
        let list: Vec<String> = p
            .phases
            .iter()
            .map(|(name, d)| format!("{name} {:.2}", ms(*d)))
            .collect();
        let end = match first_run {
            Some(_) => format!("{:.2} to the first KVM_RUN", ms(p.total())),
            None => format!("{:.2} in all, no KVM_RUN", ms(p.total())),
        };
        format!("start phases (ms): {}; {end}", list.join(", "))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_and_format_in_order() {
        let t0 = Instant::now();
        let mut p = StartPhases::new(t0);
        p.mark_at("parse", t0 + Duration::from_micros(400));
        p.mark_at("kvm+ram", t0 + Duration::from_micros(1600));
        // A mark earlier than the previous one counts as zero, never negative.
        p.mark_at("devices", t0 + Duration::from_micros(1000));
        assert_eq!(
            p.phases(),
            &[
                ("parse", Duration::from_micros(400)),
                ("kvm+ram", Duration::from_micros(1200)),
                ("devices", Duration::ZERO),
            ]
        );
        assert_eq!(p.total(), Duration::from_micros(1600));
        assert_eq!(
            p.format(Some(t0 + Duration::from_micros(2100))),
            "start phases (ms): parse 0.40, kvm+ram 1.20, devices 0.00, to KVM_RUN 0.50; \
             2.10 to the first KVM_RUN"
        );
        assert_eq!(
            p.format(None),
            "start phases (ms): parse 0.40, kvm+ram 1.20, devices 0.00; 1.60 in all, no KVM_RUN"
        );
        // Formatting does not change the phases.
        assert_eq!(p.phases().len(), 3);
    }
}
