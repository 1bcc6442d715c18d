//! The command line.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::block::DiskConfig;
use crate::net::NetConfig;
use crate::virtio::rng::RngConfig;

#[derive(Debug, Parser)]
#[command(
    name = "trapvisor",
    version,
    about = "A KVM VMM whose trap path is complete, fast and visible"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a VM: the built-in guest unless --kernel is given.
    Run(RunArgs),
    /// Describe in words the last packet paths (flows) of a `--trace` file, or with --totals
    /// where each thread's time went.
    TraceSummary {
        /// The trace file.
        path: PathBuf,
        /// How many of the last chains to describe.
        #[arg(long, default_value_t = 5)]
        last: usize,
        /// Instead of the chains: per thread, the time in each kind of span (count, total,
        /// share, mean), the largest first.
        #[arg(long)]
        totals: bool,
        /// With --totals: only spans that start at or after this time (ms of the trace).
        #[arg(long, requires = "totals")]
        from_ms: Option<f64>,
        /// With --totals: only spans that start at or before this time (ms of the trace).
        #[arg(long, requires = "totals")]
        to_ms: Option<f64>,
        /// With --totals: how many kinds per thread.
        #[arg(long, default_value_t = 12, requires = "totals")]
        top: usize,
    },
    /// Talk to a running VM through its API socket.
    Ctl(CtlArgs),
    /// Write the built-in guest (a PVH ELF that QEMU, Firecracker and Cloud Hypervisor can boot)
    /// to PATH.
    GuestImage {
        /// Where to write the image.
        path: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel to boot: a bzImage, or an ELF vmlinux with a PVH note.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (for the built-in guest: the commands it runs).
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest RAM, e.g. 256M or 1G (suffixes K, M, G, T; powers of 1024).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Print both address spaces (range, size, device, region) before starting.
    #[arg(long)]
    pub print_map: bool,
    /// seccomp filters on every thread: on (a forbidden syscall stops trapvisor with a
    /// message), log (allowed, logged by the kernel), off.
    #[arg(long, default_value = "on")]
    pub seccomp: crate::seccomp::SeccompMode,
    /// Test hook: vcpu0 makes one forbidden syscall once its filter is installed.
    #[arg(long, hide = true)]
    pub seccomp_selftest: bool,
    /// Write a Perfetto / Chrome trace-event timeline (JSON) of the run to this file.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Trace KVM's own events (kvm_exit, kvm_entry, kvm_userspace_exit, kvm_pio, kvm_mmio,
    /// injections, ...) on trapvisor's threads: exit statistics with both halves in --stats and
    /// /stats, and the kernel half on the --trace timeline. Needs root or CAP_PERFMON and
    /// tracefs; without them one line says why and the VM runs without.
    #[arg(long)]
    pub trace_kernel: bool,
    /// Serve the control API (HTTP/1.1 + JSON) on this unix socket (mode 0600 whatever the
    /// umask: only its owner and root may connect).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Let this group (a name or a numeric gid) use the API socket too: mode 0660.
    #[arg(long, value_name = "GROUP", requires = "api_socket", value_parser = crate::api::socket::parse_group)]
    pub api_socket_group: Option<libc::gid_t>,
    /// Print the exit statistics (counts and handling latency by reason, device and region)
    /// on stderr when the VM stops.
    #[arg(long)]
    pub stats: bool,
    /// Add a virtio-rng (PCI); options: notify=ioeventfd|exit (how a queue kick reaches the
    /// device), irq=irqfd|msi (how its MSI-X interrupts reach KVM). `--rng` alone: the defaults
    /// (notify=ioeventfd,irq=irqfd).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "")]
    pub rng: Option<RngConfig>,
    /// Add a virtio-net (PCI) on a TAP; repeat for more NICs. Options: tap=NAME (required;
    /// attached if it exists, else created until trapvisor exits), mac=52:54:00:12:34:56
    /// (default: derived from the name), queues=N (queue pairs, a TAP queue and a worker
    /// thread each), notify=ioeventfd|exit, irq=irqfd|msi, offload=on|off, vhost=on|off,
    /// txhold=US (how long a transmit interrupt may wait behind a receive interrupt that
    /// carries its completion along; default 300, 0: never).
    #[arg(long, value_name = "tap=NAME[,OPTIONS]")]
    pub net: Vec<NetConfig>,
    /// Add a virtio-blk (PCI) on a raw image file or block device; repeat for more disks.
    /// Options: path=IMG (required), readonly=on, direct=on (O_DIRECT), queues=N (a worker
    /// and an io_uring each), serial=STR (GET_ID, up to 20 characters), engine=uring|pool
    /// (default: io_uring, the thread pool if the kernel refuses it), notify=, irq=.
    #[arg(long, value_name = "path=IMG[,OPTIONS]")]
    pub disk: Vec<DiskConfig>,
    /// A microVM's device set: no legacy PC devices (x86_64: no i8042 and no CMOS RTC — nor
    /// their ACPI descriptions, and the FADT says so, so Linux probes neither and takes the
    /// wall clock from kvm-clock — and no PIT). Reboot then goes through the ACPI reset
    /// register (Linux's default, or reboot=a), not reboot=k.
    #[arg(long)]
    pub no_legacy: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The VM's API socket (`trapvisor run --api-socket PATH`).
    #[arg(long)]
    pub api_socket: PathBuf,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// State and configuration.
    Vm,
    /// The exit table: counts and handling latency by reason, device and region.
    Stats,
    /// Both address spaces.
    Map,
    /// Stop the vCPUs (no exits while paused).
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// Stop the VM.
    Shutdown,
    /// Refresh the exit table every second with rates, until interrupted or the VM is gone.
    Top {
        /// Stop after this many refreshes (0: no limit).
        #[arg(long, default_value_t = 0)]
        count: u32,
    },
    /// Draw the exit-latency distribution per reason as an SVG picture.
    Histogram {
        #[arg(long)]
        svg: PathBuf,
    },
}

/// Parses `256M`, `1G`, `4096`, `2GiB`; rejects 0 and overflow.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(format!("'{s}' is not a size (examples: 256M, 1G)"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 256M, 1G)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use K, M, G or T)")),
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes == 0 {
        return Err("the size must be larger than 0".to_string());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "0",
            "0M",
            "M",
            "12Q",
            "-1G",
            "1.5G",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["trapvisor", "run"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.memory, 256 << 20);
        assert_eq!(a.cpus, 1);
        assert!(a.kernel.is_none() && a.initrd.is_none() && !a.print_map);
        assert_eq!(a.cmdline, "");
    }

    #[test]
    fn run_options() {
        let cli = Cli::try_parse_from([
            "trapvisor",
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0",
            "--memory",
            "1G",
            "--cpus",
            "4",
            "--print-map",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.kernel, Some(PathBuf::from("/k")));
        assert_eq!(a.initrd, Some(PathBuf::from("/i")));
        assert_eq!(a.cmdline, "console=ttyS0");
        assert_eq!((a.memory, a.cpus, a.print_map), (1 << 30, 4, true));
    }

    #[test]
    fn ctl_commands_parse() {
        let cli = Cli::try_parse_from([
            "trapvisor",
            "ctl",
            "--api-socket",
            "/s",
            "histogram",
            "--svg",
            "/o.svg",
        ])
        .unwrap();
        let Command::Ctl(c) = cli.command else {
            panic!("not ctl")
        };
        assert_eq!(c.api_socket, PathBuf::from("/s"));
        assert!(
            matches!(c.action, CtlAction::Histogram { ref svg } if svg == &PathBuf::from("/o.svg"))
        );
        assert!(Cli::try_parse_from(["trapvisor", "ctl", "stats"]).is_err());
        assert!(
            Cli::try_parse_from(["trapvisor", "ctl", "--api-socket", "/s", "explode"]).is_err()
        );
    }

    #[test]
    fn bad_options_are_refused() {
        for args in [
            &["trapvisor", "run", "--cpus", "0"][..],
            &["trapvisor", "run", "--cpus", "65"],
            &["trapvisor", "run", "--memory", "0"],
            &["trapvisor", "run", "--memory", "lots"],
            &["trapvisor", "run", "--bogus"],
            &["trapvisor"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} parsed");
        }
    }

    fn rng_of(args: &[&str]) -> Option<RngConfig> {
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        a.rng
    }

    #[test]
    fn rng_option() {
        use crate::virtio::{DeviceOptions, IrqMode, NotifyMode};
        assert_eq!(rng_of(&["trapvisor", "run"]), None);
        assert_eq!(
            rng_of(&["trapvisor", "run", "--rng"]),
            Some(RngConfig::default())
        );
        // `--rng` alone followed by other options.
        assert_eq!(
            rng_of(&["trapvisor", "run", "--rng", "--cmdline", "rng"]),
            Some(RngConfig::default())
        );
        let both = RngConfig {
            transport: DeviceOptions {
                notify: NotifyMode::Exit,
                irq: IrqMode::Msi,
            },
        };
        assert_eq!(
            rng_of(&["trapvisor", "run", "--rng", "notify=exit,irq=msi"]),
            Some(both)
        );
        assert_eq!(
            rng_of(&["trapvisor", "run", "--rng=irq=msi,notify=exit"]),
            Some(both)
        );
        assert_eq!(
            rng_of(&["trapvisor", "run", "--rng", "irq=msi"])
                .unwrap()
                .transport
                .notify,
            NotifyMode::Ioeventfd
        );
    }

    fn net_of(args: &[&str]) -> Vec<NetConfig> {
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        a.net
    }

    #[test]
    fn net_option() {
        use crate::virtio::NotifyMode;
        assert!(net_of(&["trapvisor", "run"]).is_empty());
        let nets = net_of(&[
            "trapvisor",
            "run",
            "--net",
            "tap=tv0",
            "--net=tap=tv1,queues=2,notify=exit,offload=off,mac=52:54:00:00:00:01",
        ]);
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0], NetConfig::new("tv0"));
        assert_eq!(nets[0].mac(), crate::net::tap::mac_from_name("tv0"));
        assert_eq!(
            (nets[1].tap.as_str(), nets[1].queues, nets[1].offload),
            ("tv1", 2, false)
        );
        assert_eq!(nets[1].transport.notify, NotifyMode::Exit);
        assert_eq!(nets[1].mac(), [0x52, 0x54, 0, 0, 0, 1]);
    }

    #[test]
    fn bad_net_options_are_refused() {
        for bad in [
            "",
            "queues=2",
            "tap=tv0123456789abcd",
            "tap=tv0,queues=0",
            "tap=tv0,queues=1000",
            "tap=tv0,mac=ff:ff:ff:ff:ff:ff",
            "tap=tv0,notify=fast",
            "tap=tv0,irq=intx",
            "tap=tv0,offload=yes",
            "tap=tv0,bogus=1",
        ] {
            let r = Cli::try_parse_from(["trapvisor", "run", "--net", bad]);
            assert!(r.is_err(), "--net {bad} parsed");
        }
        // --net needs a value.
        assert!(Cli::try_parse_from(["trapvisor", "run", "--net"]).is_err());
    }

    #[test]
    fn disk_option() {
        let cli = Cli::try_parse_from([
            "trapvisor",
            "run",
            "--disk",
            "path=/a.img",
            "--disk=path=/b.img,readonly=on,queues=2",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.disk.len(), 2);
        assert_eq!(a.disk[0], DiskConfig::new("/a.img"));
        assert!(a.disk[1].readonly && a.disk[1].queues == 2);
        for bad in ["", "readonly=on", "path=/a,queues=0", "path=/a,bogus=1"] {
            let r = Cli::try_parse_from(["trapvisor", "run", "--disk", bad]);
            assert!(r.is_err(), "--disk {bad} parsed");
        }
    }

    #[test]
    fn bad_rng_options_are_refused() {
        for bad in [
            "notify=fast",
            "irq=intx",
            "bogus",
            "notify=exit,notify=exit",
            "speed=1",
        ] {
            let r = Cli::try_parse_from(["trapvisor", "run", "--rng", bad]);
            assert!(r.is_err(), "--rng {bad} parsed");
        }
    }
}
