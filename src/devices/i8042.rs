//! Enough of the i8042 keyboard controller for Linux to probe it and for the reset command.
//!
//! Port 0x60 is data, 0x64 is status (read) and command (write). Command 0xFE pulses the reset
//! line; so does clearing bit 0 of the output port through command 0xD1.
use crate::bus::{BusDevice, DeviceEvent};

/// Offset of the command/status port from the data port (0x64 - 0x60).
pub const CMD_OFFSET: u64 = 4;

const STATUS_OUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_CMD_DATA: u8 = 0x08;
/// Keyboard not inhibited (no "keylock").
const STATUS_UNLOCKED: u8 = 0x10;
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

/// The controller, registered over ports 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    status: u8,
    ctr: u8,
    outp: u8,
    /// The command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    output: Option<u8>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            ctr: 0x47,
            outp: 0x01,
            pending: None,
            output: None,
        }
    }
}

impl I8042 {
    fn push(&mut self, byte: u8) {
        self.output = Some(byte);
        self.status |= STATUS_OUT_FULL;
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
            // A byte for the keyboard itself: acknowledge it (0xFA) as a keyboard would.
            _ => self.push(0xfa),
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
            0 => {
                self.status &= !STATUS_OUT_FULL;
                self.output.take().unwrap_or(0)
            }
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
