//! Legacy PC devices from vm-superio: the 16550 UART at 0x3f8 (IRQ 4) and the i8042
//! controller at 0x60/0x64, whose only job here is the reset line (guest reboot = VM exit).

use std::io::Write;

use vm_superio::{I8042Device, Serial};

use super::bus::BusDevice;
use super::EventFdTrigger;

pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

/// Tells the event loop when the guest emptied the receive FIFO, so console input resumes.
pub struct RxDrained(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::serial::SerialEvents for RxDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

pub struct SerialDevice {
    serial: Serial<EventFdTrigger, RxDrained, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(
        interrupt: EventFdTrigger,
        rx_drained: RxDrained,
        out: Box<dyn Write + Send>,
    ) -> Self {
        SerialDevice {
            serial: Serial::with_events(interrupt, rx_drained, out),
        }
    }

    /// Room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues console input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// Console input: stdin into the UART's receive FIFO, paused while the FIFO is full (resumed
/// by the guest draining it) and stopped at EOF. Stdin that epoll cannot watch (/dev/null, a
/// regular file) gives no input.
pub struct ConsoleInput {
    serial: std::sync::Arc<std::sync::Mutex<SerialDevice>>,
    drained: vmm_sys_util::eventfd::EventFd,
    watching: bool,
    eof: bool,
}

const STDIN_EVENT: u32 = 0;
const DRAINED_EVENT: u32 = 1;

impl ConsoleInput {
    pub fn new(
        serial: std::sync::Arc<std::sync::Mutex<SerialDevice>>,
        drained: vmm_sys_util::eventfd::EventFd,
    ) -> Self {
        ConsoleInput {
            serial,
            drained,
            watching: false,
            eof: false,
        }
    }

    fn watch(&mut self, ops: &mut event_manager::EventOps, on: bool) {
        use event_manager::Events;
        use vmm_sys_util::epoll::EventSet;
        if on && !self.watching && !self.eof {
            self.watching = ops
                .add(Events::with_data_raw(0, STDIN_EVENT, EventSet::IN))
                .is_ok();
        } else if !on && self.watching {
            let _ = ops.remove(Events::with_data_raw(0, STDIN_EVENT, EventSet::IN));
            self.watching = false;
        }
    }

    fn pump(&mut self, ops: &mut event_manager::EventOps) {
        let mut serial = super::bus::lock(&self.serial);
        let room = serial.input_capacity();
        if room == 0 {
            drop(serial);
            return self.watch(ops, false);
        }
        let mut buf = [0u8; 64];
        // SAFETY: reads at most `room` (<= 64) bytes into our buffer from stdin.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), room.min(buf.len())) };
        match n {
            0 => {
                self.eof = true;
                drop(serial);
                self.watch(ops, false);
            }
            n if n > 0 => {
                serial.enqueue_input(&buf[..n as usize]);
            }
            _ => {}
        }
    }
}

impl event_manager::MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        use event_manager::Events;
        use vmm_sys_util::epoll::EventSet;
        let _ = ops.add(Events::with_data(
            &self.drained,
            DRAINED_EVENT,
            EventSet::IN,
        ));
        self.watch(ops, true);
    }

    fn process(&mut self, events: event_manager::Events, ops: &mut event_manager::EventOps) {
        if events.data() == DRAINED_EVENT {
            let _ = self.drained.read();
            self.watch(ops, true);
        } else {
            self.pump(ops);
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_LEN {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_LEN {
            // A failing output (full disk, closed pipe) must not stop the guest.
            let _ = self.serial.write(offset as u8, data[0]);
        }
    }
}

pub struct I8042 {
    device: I8042Device<EventFdTrigger>,
}

impl I8042 {
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042 {
            device: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.device.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let _ = self.device.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_writes_reach_the_output() {
        let sink = Sink::default();
        let irq = EventFdTrigger(EventFd::new(EFD_NONBLOCK).unwrap());
        let drained = RxDrained(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut s = SerialDevice::new(irq, drained, Box::new(sink.clone()));
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
        // Input: queued bytes are readable at RBR, data-ready clears when drained.
        assert_eq!(s.enqueue_input(b"ok"), 2);
        assert_eq!(s.input_capacity(), 62);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'o');
        s.read(0, &mut b);
        assert_eq!(b[0], b'k');
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0, "no data ready");
    }

    #[test]
    fn i8042_reset_command_fires_the_reset_event() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(4, &[0x01]);
        assert!(evt.read().is_err(), "no reset for other commands");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
