//! 16550 UART (COM1) on vm-superio, behind the bus trait.
//!
//! The interrupt line is a `Trigger`: an irqfd bound to IRQ 4 in the VMM, a counter in tests.
use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceEvent};

/// An eventfd registered as an irqfd: writing it raises the serial IRQ inside KVM.
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A serial port on the PIO bus.
pub struct SerialDevice<T: Trigger> {
    uart: Serial<T, NoEvents, Box<dyn Write + Send>>,
    /// Interrupts the guest could not be sent (the trigger failed).
    irq_errors: u64,
}

impl<T: Trigger> SerialDevice<T> {
    pub fn new(trigger: T, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(trigger, out),
            irq_errors: 0,
        }
    }

    /// Queues bytes for the guest to read (stdin). Returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(_) => {
                self.irq_errors += 1;
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    pub fn irq_errors(&self) -> u64 {
        self.irq_errors
    }
}

impl<T: Trigger + Send> BusDevice for SerialDevice<T>
where
    T::E: std::fmt::Debug,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset < 8 && !data.is_empty() {
            data[0] = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        if offset < 8 && !data.is_empty() && self.uart.write(offset as u8, data[0]).is_err() {
            // The output or the IRQ failed; the guest keeps running and we count it.
            self.irq_errors += 1;
        }
        DeviceEvent::None
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            0 => "THR/RBR",
            1 => "IER",
            2 => "IIR/FCR",
            3 => "LCR",
            4 => "MCR",
            5 => "LSR",
            6 => "MSR",
            7 => "SCR",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Count(Arc<AtomicU64>);
    impl Trigger for Count {
        type E = io::Error;
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_writes_reach_the_output() {
        let out = Out::default();
        let mut s = SerialDevice::new(Count::default(), Box::new(out.clone()));
        for b in b"hello\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
        // LSR says the transmitter is empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x20, 0x20);
    }

    #[test]
    fn input_raises_the_irq_when_enabled() {
        let irq = Count::default();
        let mut s = SerialDevice::new(irq.clone(), Box::new(Out::default()));
        s.write(1, &[0x01]); // IER: received data available
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'a');
        s.read(0, &mut b);
        assert_eq!(b[0], b'b');
    }

    #[test]
    fn out_of_range_offsets_are_ignored() {
        let out = Out::default();
        let mut s = SerialDevice::new(Count::default(), Box::new(out.clone()));
        let mut b = [0xffu8; 2];
        s.read(9, &mut b);
        assert_eq!(b, [0, 0]);
        s.write(9, b"x");
        s.write(0, &[]);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
