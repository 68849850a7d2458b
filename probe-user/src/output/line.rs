//! The line written for every transition, assembled as bytes: integers, addresses and padding
//! appended directly, not through `write!`, whose machinery (an adapter per piece, padding one
//! character at a time) was half of probe's CPU time on a churning workload. The line is then
//! written at once.

use std::{
    fmt,
    io::Write as _,
    net::{IpAddr, SocketAddr},
};

/// A reusable line buffer.
#[derive(Debug, Default)]
pub struct Line {
    bytes: Vec<u8>,
}

impl Line {
    /// Empties the line, keeping its allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// The line so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the next byte goes: the start of a span to pad with [`Line::pad_from`].
    pub fn mark(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `text`.
    pub fn push_str(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// Appends one ASCII byte.
    pub fn push_byte(&mut self, byte: u8) {
        self.bytes.push(byte);
    }

    /// Appends `value` in decimal.
    pub fn push_int(&mut self, value: impl itoa::Integer) {
        self.push_str(itoa::Buffer::new().format(value));
    }

    /// Appends `value` in decimal, right-aligned in `width` (as `{:>width$}`).
    pub fn push_int_right(&mut self, value: impl itoa::Integer, width: usize) {
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(value);
        self.spaces(width.saturating_sub(digits.len()));
        self.push_str(digits);
    }

    /// Appends `value` in decimal with leading zeros to `width` digits (as `{:0width$}`).
    pub fn push_int_zero_padded(&mut self, value: impl itoa::Integer, width: usize) {
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(value);
        let zeros = width.saturating_sub(digits.len());
        self.bytes.extend(std::iter::repeat_n(b'0', zeros));
        self.push_str(digits);
    }

    /// Appends `value` as `0x` and lowercase hex digits (as `{:#x}`).
    pub fn push_hex(&mut self, value: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.push_str("0x");
        let nibbles = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for nibble in (0..nibbles).rev() {
            self.push_byte(DIGITS[(value >> (nibble * 4) & 0xf) as usize]);
        }
    }

    /// Appends `ip` as std shows it (IPv4 by hand, IPv6 through std's own rules).
    pub fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                self.push_int(a);
                for octet in [b, c, d] {
                    self.push_byte(b'.');
                    self.push_int(octet);
                }
            }
            // Writing to a Vec cannot fail.
            IpAddr::V6(v6) => {
                let _ = write!(self.bytes, "{v6}");
            }
        }
    }

    /// Appends `addr` as std shows it: `1.2.3.4:80`, `[::1]:80`.
    pub fn push_socket_addr(&mut self, addr: SocketAddr) {
        match addr {
            SocketAddr::V4(_) => self.push_ip(addr.ip()),
            SocketAddr::V6(_) => {
                self.push_byte(b'[');
                self.push_ip(addr.ip());
                self.push_byte(b']');
            }
        }
        self.push_byte(b':');
        self.push_int(addr.port());
    }

    /// Pads what was appended since `start` with spaces to `width` characters (as `{:<width$}`).
    pub fn pad_from(&mut self, start: usize, width: usize) {
        let written = &self.bytes[start..];
        let chars = if written.is_ascii() {
            written.len()
        } else {
            String::from_utf8_lossy(written).chars().count()
        };
        self.spaces(width.saturating_sub(chars));
    }

    /// Ends the line.
    pub fn end(&mut self) {
        self.push_byte(b'\n');
    }

    fn spaces(&mut self, count: usize) {
        self.bytes.extend(std::iter::repeat_n(b' ', count));
    }
}

/// For the rare pieces still formatted (durations, IPv6).
impl fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push_str(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;

    use super::*;

    fn line(fill: impl FnOnce(&mut Line)) -> String {
        let mut line = Line::default();
        fill(&mut line);
        String::from_utf8(line.as_bytes().to_vec()).unwrap()
    }

    proptest! {
        #[test]
        fn addresses_read_as_std_writes_them(v4: u32, v6: u128, port: u16) {
            for addr in [
                SocketAddr::from((Ipv4Addr::from(v4), port)),
                SocketAddr::from((Ipv6Addr::from(v6), port)),
                SocketAddr::V6(SocketAddrV6::new(Ipv4Addr::from(v4).to_ipv6_mapped(), port, 0, 0)),
            ] {
                prop_assert_eq!(line(|l| l.push_socket_addr(addr)), addr.to_string());
                prop_assert_eq!(line(|l| l.push_ip(addr.ip())), addr.ip().to_string());
            }
        }

        #[test]
        fn numbers_read_as_std_writes_them(value: u64, small: u32, width in 0usize..12) {
            prop_assert_eq!(line(|l| l.push_int(value)), value.to_string());
            prop_assert_eq!(line(|l| l.push_hex(value)), format!("{value:#x}"));
            prop_assert_eq!(line(|l| l.push_int_right(small, width)), format!("{small:>width$}"));
            prop_assert_eq!(
                line(|l| l.push_int_zero_padded(small, width)),
                format!("{small:0width$}")
            );
        }

        #[test]
        fn padding_counts_characters(text in "\\PC{0,20}", width in 0usize..25) {
            let padded = line(|l| {
                let start = l.mark();
                l.push_str(&text);
                l.pad_from(start, width);
            });
            prop_assert_eq!(padded, format!("{text:<width$}"));
        }
    }
}
