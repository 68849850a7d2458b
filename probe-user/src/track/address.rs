//! IPv4-mapped addresses, converted in one place. The kernel side holds every address as 16
//! bytes, IPv4 ones as `::ffff:a.b.c.d` ([`probe_common::v4_mapped`]); a dual-stack socket really
//! has such an address. These helpers turn them into `IpAddr`s and back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use probe_common::{v4_mapped, v4_unmapped};

/// `ip` as the kernel side holds it: IPv6, with IPv4 addresses IPv4-mapped.
pub fn to_mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address in 16 kernel bytes: an `Ipv4Addr` when `as_v4` and the bytes are IPv4-mapped
/// (an IPv4 socket), the IPv6 address otherwise (a dual-stack socket keeps its mapped form).
pub fn from_mapped(bytes: [u8; 16], as_v4: bool) -> IpAddr {
    match v4_unmapped(bytes) {
        Some(v4) if as_v4 => IpAddr::V4(Ipv4Addr::from(v4)),
        _ => IpAddr::V6(Ipv6Addr::from(bytes)),
    }
}

/// The address a user means: an IPv4-mapped IPv6 address is its IPv4 address (for matching
/// filters, which may name either form).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v4_unmapped(v6.octets()).map_or(ip, |v4| IpAddr::V4(Ipv4Addr::from(v4))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_kernel_form() {
        for text in ["127.0.0.1", "::1", "::ffff:10.0.0.1", "2001:db8::7"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(from_mapped(to_mapped(ip), ip.is_ipv4()), ip, "{text}");
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            canonical("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}
