//! The arch boundary. Each architecture lives in its own folder and offers the same modules
//! and names to the arch-neutral code (`commands`, `pci`, `msix`, `virtio`, `drivers`, `net`):
//!
//! | name | what |
//! |---|---|
//! | `BootInfo` | what the boot protocol told: `cmdline()`, `ram_top` |
//! | `commands` | `DEFAULT` command line, `unsupported`, `hello`, `pio_loop`, `sink_writes`, `idle`, `triple_fault` |
//! | `cpu` | `mmio_{read,write}{8,16,32}`, `pause`, `halt_forever` |
//! | `time` | `ticks` (the clock), `ticks_khz`, `source`, `COUNTER`, `calibrate`, `deadline_us`, `passed`, `delay_us` |
//! | `irq` | `INTERRUPTS`, `count(vector)`, `TIMER_VECTOR`, `timer_periodic`, `timer_stop`, `halt_until_interrupt` |
//! | `msi` | `message(bdf, vector)`: the MSI that raises `vector` on this CPU; `describe` |
//! | `paging` | `map_uncached` for device MMIO |
//! | `pci` | `platform(info)`: ECAM and BAR windows; `legacy_read`/`legacy_write`, `LEGACY` |
//! | `serial` | `print_line`, `print_bytes_line`, `print_line_unlocked` |
//! | `smp` | `run(info)`: the `smp` command |
//! | `testdev` | `present`, `sink_mmio`, `ABSENT`, `exit(code)` |
//! | `user` | the unprivileged loop (`run`) and tasks (`run_task`, `wait`, `flush`, `exit`, `log_line`, `in_user`, `panic_in_user`) |
//!
//! Interrupt "vectors" are small numbers the drivers pick (0x30..0x4f); each arch maps them to
//! its own interrupt IDs.
#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
mod imp;

pub use imp::*;
