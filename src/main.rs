use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use trapvisor::cli::{Cli, Command, RunArgs};
use trapvisor::kvm::exit::StopReason;
use trapvisor::vmm::{Kernel, StopSignals, VmConfig, Vmm};

/// Bad input or a VMM failure before the guest ran.
const EXIT_USAGE: u8 = 2;
/// The guest failed (FAIL verdict, triple fault, internal error).
const EXIT_GUEST_FAILED: u8 = 1;

fn main() -> ExitCode {
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
            // One line, as for every other bad input.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
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
        Command::Run(args) => run(args),
    }
}

fn fail(code: u8, e: &anyhow::Error) -> ExitCode {
    eprintln!("trapvisor: error: {e:#}");
    ExitCode::from(code)
}

fn run(args: RunArgs) -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked SIGINT/SIGTERM.
    let signals = match StopSignals::new().context("cannot set up signal handling") {
        Ok(s) => s,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let cfg = VmConfig {
        kernel: args.kernel.map_or(Kernel::Builtin, Kernel::File),
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_size: args.memory,
        cpus: args.cpus,
        console: Box::new(std::io::stdout()),
    };
    let mut vmm = match Vmm::new(cfg) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_USAGE, &e.into()),
    };
    if args.print_map {
        print!("{}", vmm.format_map());
    }
    let result = match vmm.run(Some(&signals), true) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_USAGE, &e.into()),
    };
    if args.stats {
        eprint!("{}", vmm.format_exit_stats());
    }
    let failed = match &result.reason {
        StopReason::DebugExit(code) => *code != 0,
        StopReason::Poweroff | StopReason::Reset | StopReason::Requested => false,
        StopReason::TripleFault | StopReason::GuestCrash | StopReason::Fatal(_) => true,
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
