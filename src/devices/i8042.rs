//! Enough of the i8042 keyboard controller for Linux to probe it, find a keyboard, and for the
//! reset command.
//!
//! Port 0x60 is data, 0x64 is status (read) and command (write). Command 0xFE pulses the reset
//! line; so does clearing bit 0 of the output port through command 0xD1.
//!
//! Bytes for the guest wait in a short queue; the head is in the output buffer (status OBF).
//! Each byte that reaches the output buffer raises the keyboard interrupt (IRQ 1, an edge) when
//! the configuration byte enables it (CTR bit 0), as QEMU's does for controller and keyboard
//! data alike. The keyboard answers as an MF2 keyboard with no keys pressed: reset (0xFF) →
//! ACK, self-test passed (0xAA); identify (0xF2) → ACK, 0xAB 0x83; echo (0xEE) → 0xEE; any
//! other byte (commands and their parameters) → ACK.
use std::collections::VecDeque;

use crate::bus::{BusDevice, DeviceEvent};

/// Offset of the command/status port from the data port (0x64 - 0x60).
pub const CMD_OFFSET: u64 = 4;

const STATUS_OUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_CMD_DATA: u8 = 0x08;
/// Keyboard not inhibited (no "keylock").
const STATUS_UNLOCKED: u8 = 0x10;
/// Controller configuration: keyboard interrupt enabled.
const CTR_KBD_INT: u8 = 0x01;
/// Controller configuration: keyboard and aux clocks disabled.
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_ECHO: u8 = 0xee;
const KBD_GET_ID: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
/// An MF2 keyboard (in translated mode Linux accepts 0xab 0x41 too).
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// Bytes waiting for the guest, beyond the output buffer; the longest answer is three bytes, so
/// only a guest that never reads can fill it, and then new bytes are dropped.
const QUEUE_MAX: usize = 16;

/// The keyboard interrupt line (an irqfd on GSI 1 in the VMM).
pub type KbdIrq = Box<dyn Fn() + Send>;

/// The controller, registered over ports 0x60..=0x64.
pub struct I8042 {
    status: u8,
    ctr: u8,
    outp: u8,
    /// The command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    /// Bytes for the guest: the head is the output buffer.
    queue: VecDeque<u8>,
    irq: Option<KbdIrq>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            ctr: 0x47,
            outp: 0x01,
            pending: None,
            queue: VecDeque::new(),
            irq: None,
        }
    }
}

impl I8042 {
    /// A controller that raises `irq` for each byte it puts in the output buffer.
    pub fn with_irq(irq: KbdIrq) -> Self {
        I8042 {
            irq: Some(irq),
            ..I8042::default()
        }
    }

    /// A byte reached the output buffer: interrupt if the guest wants it.
    fn output_ready(&mut self) {
        self.status |= STATUS_OUT_FULL;
        if self.ctr & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.irq {
                irq();
            }
        }
    }

    fn push(&mut self, byte: u8) {
        if self.queue.len() >= QUEUE_MAX {
            return;
        }
        self.queue.push_back(byte);
        if self.queue.len() == 1 {
            self.output_ready();
        }
    }

    /// The guest read the output buffer: the next byte, if any, takes its place.
    fn pop(&mut self) -> u8 {
        let byte = self.queue.pop_front().unwrap_or(0);
        if self.queue.is_empty() {
            self.status &= !STATUS_OUT_FULL;
        } else {
            self.output_ready();
        }
        byte
    }

    /// A byte for the keyboard itself.
    fn keyboard(&mut self, byte: u8) {
        match byte {
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_RESET => {
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_PASSED);
            }
            KBD_GET_ID => {
                self.push(KBD_ACK);
                KBD_ID.iter().for_each(|&b| self.push(b));
            }
            _ => self.push(KBD_ACK),
        }
    }

    fn command(&mut self, cmd: u8) -> DeviceEvent {
        self.status |= STATUS_CMD_DATA;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            CMD_TEST_KBD | CMD_TEST_AUX => self.push(0x00),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_RESET_CPU => return DeviceEvent::Reset,
            // Linux checks that these show in the configuration byte.
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            // Pulse-output-line commands 0xF0..=0xFF: bit 0 clear pulses reset.
            c if c >= 0xf0 && c & 1 == 0 => return DeviceEvent::Reset,
            _ => {}
        }
        DeviceEvent::None
    }

    fn data(&mut self, byte: u8) -> DeviceEvent {
        self.status &= !STATUS_CMD_DATA;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = byte,
            Some(CMD_WRITE_OUTP) => {
                self.outp = byte;
                if byte & 1 == 0 {
                    return DeviceEvent::Reset;
                }
            }
            _ => self.keyboard(byte),
        }
        DeviceEvent::None
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            0 => self.pop(),
            CMD_OFFSET => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        let Some(&byte) = data.first() else {
            return DeviceEvent::None;
        };
        match offset {
            0 => self.data(byte),
            CMD_OFFSET => self.command(byte),
            _ => DeviceEvent::None,
        }
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            0 => "data",
            CMD_OFFSET => "status/command",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn read(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_requests_a_reset() {
        let mut d = I8042::default();
        assert_eq!(d.write(CMD_OFFSET, &[0xfe]), DeviceEvent::Reset);
    }

    #[test]
    fn clearing_output_port_bit0_resets() {
        let mut d = I8042::default();
        assert_eq!(d.write(CMD_OFFSET, &[CMD_WRITE_OUTP]), DeviceEvent::None);
        assert_eq!(d.write(0, &[0x00]), DeviceEvent::Reset);
    }

    #[test]
    fn self_test_and_ctr_round_trip() {
        let mut d = I8042::default();
        d.write(CMD_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, CMD_OFFSET) & STATUS_OUT_FULL, STATUS_OUT_FULL);
        assert_eq!(read(&mut d, 0), 0x55);
        assert_eq!(read(&mut d, CMD_OFFSET) & STATUS_OUT_FULL, 0);
        d.write(CMD_OFFSET, &[CMD_WRITE_CTR]);
        d.write(0, &[0x65]);
        d.write(CMD_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0), 0x65);
    }

    #[test]
    fn stray_accesses_are_harmless() {
        let mut d = I8042::default();
        assert_eq!(d.write(2, &[0xfe]), DeviceEvent::None);
        assert_eq!(d.write(0, &[]), DeviceEvent::None);
        assert_eq!(read(&mut d, 1), 0xff);
        let mut empty: [u8; 0] = [];
        d.read(0, &mut empty);
        // An unknown command does nothing.
        assert_eq!(d.write(CMD_OFFSET, &[0x42]), DeviceEvent::None);
    }

    /// A controller whose interrupts are counted.
    fn counted() -> (I8042, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let d = I8042::with_irq(Box::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        }));
        (d, n)
    }

    /// Reads the output buffer until it is empty.
    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while read(d, CMD_OFFSET) & STATUS_OUT_FULL != 0 {
            out.push(read(d, 0));
            assert!(out.len() <= QUEUE_MAX, "the output never empties");
        }
        out
    }

    #[test]
    fn the_keyboard_answers_as_an_mf2_keyboard() {
        let mut d = I8042::default();
        d.write(0, &[KBD_GET_ID]);
        assert_eq!(drain(&mut d), [KBD_ACK, 0xab, 0x83]);
        d.write(0, &[KBD_RESET]);
        assert_eq!(drain(&mut d), [KBD_ACK, KBD_SELF_TEST_PASSED]);
        d.write(0, &[KBD_ECHO]);
        assert_eq!(drain(&mut d), [KBD_ECHO]);
        // Set LEDs and its parameter: one ACK each.
        d.write(0, &[0xed]);
        d.write(0, &[0x00]);
        assert_eq!(drain(&mut d), [KBD_ACK, KBD_ACK]);
        // An empty output buffer reads 0 and stays empty.
        assert_eq!(read(&mut d, 0), 0);
        assert_eq!(read(&mut d, CMD_OFFSET) & STATUS_OUT_FULL, 0);
    }

    #[test]
    fn each_byte_in_the_output_buffer_interrupts_when_enabled() {
        let (mut d, irqs) = counted();
        // The reset CTR (0x47) enables the keyboard interrupt.
        d.write(0, &[KBD_GET_ID]);
        // Only the head is in the output buffer: one interrupt so far.
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        assert_eq!(read(&mut d, 0), KBD_ACK);
        assert_eq!(irqs.load(Ordering::SeqCst), 2);
        assert_eq!(drain(&mut d), [0xab, 0x83]);
        assert_eq!(irqs.load(Ordering::SeqCst), 3);
        // Controller answers interrupt too.
        d.write(CMD_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(irqs.load(Ordering::SeqCst), 4);
        assert_eq!(drain(&mut d), [0x55]);
        // With CTR bit 0 clear: no interrupt, the data is still there.
        d.write(CMD_OFFSET, &[CMD_WRITE_CTR]);
        d.write(0, &[0x46]);
        d.write(0, &[KBD_GET_ID]);
        assert_eq!(drain(&mut d), [KBD_ACK, 0xab, 0x83]);
        assert_eq!(irqs.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_queue() {
        let (mut d, irqs) = counted();
        for _ in 0..1000 {
            d.write(0, &[KBD_GET_ID]);
        }
        // One interrupt for the first byte in the output buffer; the rest waits or is dropped.
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        let out = drain(&mut d);
        assert_eq!(out.len(), QUEUE_MAX);
        assert_eq!(&out[..3], [KBD_ACK, 0xab, 0x83]);
    }

    #[test]
    fn not_keylocked_and_port_disables_show_in_the_ctr() {
        let mut d = I8042::default();
        assert_eq!(read(&mut d, CMD_OFFSET) & STATUS_UNLOCKED, STATUS_UNLOCKED);
        d.write(CMD_OFFSET, &[CMD_DISABLE_AUX]);
        d.write(CMD_OFFSET, &[CMD_DISABLE_KBD]);
        d.write(CMD_OFFSET, &[CMD_READ_CTR]);
        let ctr = read(&mut d, 0);
        assert_eq!(ctr & (CTR_AUX_DISABLED | CTR_KBD_DISABLED), 0x30);
        d.write(CMD_OFFSET, &[CMD_ENABLE_AUX]);
        d.write(CMD_OFFSET, &[CMD_ENABLE_KBD]);
        d.write(CMD_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0) & 0x30, 0);
    }
}
