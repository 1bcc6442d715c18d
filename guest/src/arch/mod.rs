//! The arch boundary. Each architecture lives in its own folder and offers the same modules
//! and names to the arch-neutral code (`commands`, `pci`, `msix`, `virtio`, `drivers`, `net`):
//!
//! | name | what |
//! |---|---|
//! | `BootInfo` | what the boot protocol told: `cmdline()`, `ram_top` |
//! | `commands` | `DEFAULT` command line, `unsupported`, `hello`, `pio_loop`, `sink_writes`, `idle`, `triple_fault`, `poweroff`, `reboot` |
//! | `cpu` | `mmio_{read,write}{8,16,32}`, `pause`, `halt_forever` |
//! | `time` | `ticks` (the clock), `ticks_khz`, `source`, `COUNTER`, `calibrate`, `deadline_us`, `passed` |
//! | `irq` | `INTERRUPTS`, `count(vector)`, `TIMER_VECTOR`, `timer_periodic`, `timer_stop`, `halt_until_interrupt`, `wait_until` |
//! | `msi` | `message(bdf, vector)`: the MSI that raises `vector` on this CPU; `describe`; `state(vector)`: what the interrupt controller says of it |
//! | `paging` | `map_uncached` for device MMIO, `dma_addr`: the physical address of a buffer handed to a device |
//! | `pci` | `platform(info)`: ECAM and BAR windows; `legacy_read`/`legacy_write`, `LEGACY` |
//! | `serial` | `print_line`, `print_bytes_line`, `print_line_unlocked` |
//! | `smp` | `run(info)`: the `smp` command |
//! | `testdev` | `present`, `sink_mmio`, `sink_count`, `sink_addr`, `console_addr`, `ABSENT`, `exit(code)` |
//! | `user` | the unprivileged level's mechanism: `enter`, `resume`, `call`, `call_args`, `in_user`, `LEVEL`, `LEVEL_NAME`, `WHERE` (`crate::task` builds the loop and tasks on it) |
//!
//! Interrupt "vectors" are small numbers the drivers pick (0x30..0x4f); each arch maps them to
//! its own interrupt IDs.
#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
#[cfg_attr(target_arch = "aarch64", path = "aarch64/mod.rs")]
mod imp;

pub use imp::*;
