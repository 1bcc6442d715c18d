//! Small purpose-made guests run through the library: real mode, and the built-in guest's
//! long-mode paths driven directly.
use std::io::Write;
use std::sync::{Arc, Mutex};

use trapvisor::kvm::exit::StopReason;
use trapvisor::vmm::{Kernel, VmConfig, Vmm};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn real_mode(image: &[u8], capture: &Capture) -> VmConfig {
    VmConfig {
        kernel: Kernel::RealMode {
            image: image.to_vec(),
            load_addr: 0x7c00,
            cs: 0,
            ip: 0x7c00,
        },
        initrd: None,
        cmdline: String::new(),
        mem_size: 16 << 20,
        cpus: 1,
        console: Box::new(capture.clone()),
        rng: None,
        net: Vec::new(),
        disks: Vec::new(),
        legacy: true,
        started: None,
    }
}

#[test]
fn real_mode_guest_prints_and_reports_pass() {
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'R',       // mov al, 'R'
        0xee,             // out dx, al
        0xb0, b'\n',      // mov al, '\n'
        0xee,             // out dx, al
        0xba, 0xf4, 0x00, // mov dx, 0xf4
        0xb0, 0x00,       // mov al, 0
        0xee,             // out dx, al  (debug-exit: pass)
        0xf4,             // hlt
    ];
    let capture = Capture::default();
    let mut vmm = Vmm::new(real_mode(&code, &capture)).unwrap();
    let result = vmm.run(None, false).unwrap();
    assert_eq!(result.reason, StopReason::DebugExit(0));
    assert_eq!(capture.text(), "R\n");
}

#[test]
fn real_mode_string_io_and_port_reads() {
    #[rustfmt::skip]
    let code = [
        0xbe, 0x00, 0x7d,       // mov si, 0x7d00 (message)
        0xb9, 0x03, 0x00,       // mov cx, 3
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xfc,                   // cld
        0xf3, 0x6e,             // rep outsb
        0xba, 0x14, 0x05,       // mov dx, 0x514 (testdev SINK)
        0xef,                   // out dx, ax
        0xef,                   // out dx, ax
        0xed,                   // in ax, dx  (sink count = 2)
        0xba, 0xf4, 0x00,       // mov dx, 0xf4
        0xef,                   // out dx, ax (debug-exit with the count)
        0xf4,                   // hlt
    ];
    let mut image = vec![0u8; 0x100];
    image[..code.len()].copy_from_slice(&code);
    image.extend_from_slice(b"ok\n");
    let capture = Capture::default();
    let mut vmm = Vmm::new(real_mode(&image, &capture)).unwrap();
    let result = vmm.run(None, false).unwrap();
    assert_eq!(capture.text(), "ok\n");
    assert_eq!(result.reason, StopReason::DebugExit(2));
    assert_eq!(vmm.sink_count(), 2);
}

#[test]
fn a_jump_to_the_bios_reset_entry_resets() {
    // What Linux's "BIOS" reboot method does at the end: real mode, ljmp f000:fff0.
    let code = [0xea, 0xf0, 0xff, 0x00, 0xf0];
    let capture = Capture::default();
    let mut vmm = Vmm::new(real_mode(&code, &capture)).unwrap();
    let result = vmm.run(None, false).unwrap();
    assert_eq!(result.reason, StopReason::Reset);
}

#[test]
fn builtin_guest_long_mode_loops_count_every_exit() {
    let capture = Capture::default();
    let mut cfg = VmConfig::builtin("pio-loop=50 mmio-loop=25");
    cfg.console = Box::new(capture.clone());
    let mut vmm = Vmm::new(cfg).unwrap();
    let result = vmm.run(None, false).unwrap();
    assert_eq!(
        result.reason,
        StopReason::DebugExit(0),
        "{}",
        capture.text()
    );
    assert_eq!(vmm.sink_count(), 75);
}
