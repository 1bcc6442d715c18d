#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use trapvisor::api::{client, ApiServer, SocketAccess};
use trapvisor::cli::{Cli, Command, CtlAction, CtlArgs, RunArgs};
use trapvisor::kvm::exit::StopReason;
use trapvisor::seccomp::SeccompMode;
use trapvisor::vmm::{Kernel, StopSignals, VmConfig, Vmm};

/// Bad input or a VMM failure before the guest ran.
const EXIT_USAGE: u8 = 2;
/// Events a `--trace` timeline keeps (about 100 bytes each).
const TRACE_CAPACITY: usize = 1_000_000;
/// The guest failed (FAIL verdict, triple fault, internal error).
const EXIT_GUEST_FAILED: u8 = 1;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            // One line, as for every other bad input; a first line that ends in a colon
            // takes the indented lines that follow it (the arguments it names).
            let text = e.render().to_string();
            let mut lines = text.lines();
            let mut first = lines.next().unwrap_or("invalid arguments").to_string();
            if first.ends_with(':') {
                let named: Vec<&str> = lines
                    .take_while(|l| l.starts_with(' '))
                    .map(str::trim)
                    .collect();
                first = format!("{first} {}", named.join(", "));
            }
            eprintln!("trapvisor: {first} (see --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::GuestImage { path } => match trapvisor::guest::write_image(&path)
            .with_context(|| format!("cannot write {}", path.display()))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_USAGE, &e),
        },
        Command::Run(args) => run(args, started),
        Command::TraceSummary {
            path,
            last,
            totals,
            from_ms,
            to_ms,
            top,
        } => {
            let text = if totals {
                trapvisor::trace::totals::totals_file(&path, from_ms, to_ms, top)
            } else {
                trapvisor::trace::timeline::summarize_file(&path, last)
            };
            match text.with_context(|| format!("cannot summarize {}", path.display())) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_USAGE, &e),
            }
        }
        Command::Ctl(args) => match ctl(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_GUEST_FAILED, &e),
        },
    }
}

fn fail(code: u8, e: &anyhow::Error) -> ExitCode {
    eprintln!("trapvisor: error: {e:#}");
    ExitCode::from(code)
}

fn run(args: RunArgs, started: std::time::Instant) -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked SIGINT/SIGTERM.
    let signals = match StopSignals::new().context("cannot set up signal handling") {
        Ok(s) => s,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let config_json = serde_json::json!({
        "memory": args.memory,
        "cpus": args.cpus,
        "kernel": args.kernel.as_ref().map_or("built-in".to_string(), |k| k.display().to_string()),
        "initrd": args.initrd.as_ref().map(|p| p.display().to_string()),
        "cmdline": args.cmdline,
        "net": args.net.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "disks": args.disk.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    });
    let cfg = VmConfig {
        kernel: args.kernel.map_or(Kernel::Builtin, Kernel::File),
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_size: args.memory,
        cpus: args.cpus,
        console: Box::new(std::io::stdout()),
        rng: args.rng,
        net: args.net,
        disks: args.disk,
        legacy: !args.no_legacy,
        started: Some(started),
    };
    let mut vmm = match Vmm::new(cfg) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_USAGE, &e.into()),
    };
    if args.trace_kernel {
        match trapvisor::trace::kernel::KernelTrace::open(args.trace.is_some()) {
            Ok(kt) => vmm.set_kernel_trace(std::sync::Arc::new(kt)),
            Err(why) => eprintln!("trapvisor: --trace-kernel: {why}; running without it"),
        }
    }
    let _api = match &args.api_socket {
        Some(path) => {
            match ApiServer::start(
                path,
                std::sync::Arc::new(vmm.api_view(config_json)),
                args.seccomp,
                args.api_socket_group
                    .map_or(SocketAccess::Owner, SocketAccess::Group),
            ) {
                Ok(server) => Some(server),
                Err(e) => return fail(EXIT_USAGE, &e.into()),
            }
        }
        None => None,
    };
    if args.seccomp == SeccompMode::On {
        if let Err(e) = trapvisor::seccomp::install_sigsys_handler() {
            return fail(EXIT_USAGE, &e.into());
        }
    }
    vmm.set_seccomp(args.seccomp, args.seccomp_selftest);
    let timeline = args.trace.as_ref().map(|_| {
        let tl = std::sync::Arc::new(trapvisor::trace::timeline::Timeline::new(TRACE_CAPACITY));
        vmm.set_timeline(tl.clone());
        tl
    });
    if args.print_map {
        print!("{}", vmm.format_map());
    }
    let result = match vmm.run(Some(&signals), true) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_USAGE, &e.into()),
    };
    if let (Some(tl), Some(path)) = (&timeline, &args.trace) {
        if let Err(e) = tl.write(path) {
            eprintln!("trapvisor: cannot write the trace {}: {e}", path.display());
        }
    }
    if args.stats {
        eprint!("{}", vmm.format_exit_stats());
    }
    let failed = match &result.reason {
        StopReason::DebugExit(code) => *code != 0,
        StopReason::Poweroff | StopReason::Reset | StopReason::Requested => false,
        StopReason::TripleFault
        | StopReason::GuestCrash
        | StopReason::GuestPanic
        | StopReason::PanicReset
        | StopReason::Fatal(_) => true,
    };
    if failed {
        eprintln!(
            "trapvisor: {}",
            result.reason.to_string().lines().next().unwrap_or("")
        );
        if let Some(report) = &result.report {
            eprint!("{report}");
        }
        ExitCode::from(EXIT_GUEST_FAILED)
    } else {
        eprintln!("trapvisor: {}", result.reason);
        ExitCode::SUCCESS
    }
}

fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    let socket = &args.api_socket;
    match args.action {
        CtlAction::Vm => println!(
            "{}",
            serde_json::to_string_pretty(&client::request(socket, "GET", "/vm")?)?
        ),
        CtlAction::Stats => print!(
            "{}",
            client::format_stats(&client::request(socket, "GET", "/stats")?)
        ),
        CtlAction::Map => print!(
            "{}",
            client::format_map(&client::request(socket, "GET", "/map")?)
        ),
        CtlAction::Pause => {
            client::request(socket, "PUT", "/vm/pause")?;
            println!("paused");
        }
        CtlAction::Resume => {
            client::request(socket, "PUT", "/vm/resume")?;
            println!("resumed");
        }
        CtlAction::Shutdown => {
            client::request(socket, "PUT", "/vm/shutdown")?;
            println!("shutting down");
        }
        CtlAction::Top { count } => {
            let mut n = 0;
            let mut prev: Option<serde_json::Value> = None;
            loop {
                let stats = client::request(socket, "GET", "/stats")?;
                // Clear the screen and go home, then draw the table.
                print!(
                    "\x1b[2J\x1b[H{}",
                    client::format_stats_since(&stats, prev.as_ref())
                );
                prev = Some(stats);
                n += 1;
                if count != 0 && n >= count {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        CtlAction::Histogram { svg } => {
            let stats = client::request(socket, "GET", "/stats")?;
            std::fs::write(&svg, client::histogram_svg(&stats))
                .with_context(|| format!("cannot write {}", svg.display()))?;
            println!("wrote {}", svg.display());
        }
    }
    Ok(())
}
