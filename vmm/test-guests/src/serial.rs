//! COM1 output by port I/O. The VMM's UART is always ready, so the line status is not polled
//! (each poll would be a VM exit).

pub const COM1: u16 = 0x3f8;

pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            crate::outb(COM1, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write;
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
