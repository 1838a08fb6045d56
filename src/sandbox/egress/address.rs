//! Which IP addresses the egress proxy never dials: anything that is not a public unicast address
//! (loopback, private, link-local with the cloud metadata endpoint, CGNAT, multicast, broadcast,
//! documentation and reserved ranges), including the IPv6 forms that embed such an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of range a refused address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Unspecified,
    Loopback,
    Private,
    SharedCgnat,
    LinkLocal,
    Multicast,
    Broadcast,
    Documentation,
    Benchmarking,
    /// Reserved, deprecated or special-purpose ranges that are not ordinary public unicast.
    Reserved,
}

/// How an IPv4 address was carried inside an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    Mapped,
    Compatible,
    Nat64,
    SixToFour,
}

/// Why an address is refused: its range, and the IPv6 form that carried it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden {
    pub range: Range,
    pub embedding: Option<Embedding>,
}

impl Forbidden {
    /// Whether this is plain loopback (127.0.0.0/8 or `::1`), the only kind that the test-only
    /// switch lets through. Embedded forms such as `::ffff:127.0.0.1` stay refused.
    #[must_use]
    pub fn is_plain_loopback(&self) -> bool {
        self.range == Range::Loopback && self.embedding.is_none()
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::SharedCgnat => "a shared (CGNAT) address",
            Self::LinkLocal => "a link-local address (where cloud metadata endpoints live)",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address",
            Self::Reserved => "a reserved, non-public address",
        })
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.embedding {
            None => self.range.fmt(f),
            Some(embedding) => {
                let form = match embedding {
                    Embedding::Mapped => "IPv4-mapped",
                    Embedding::Compatible => "IPv4-compatible",
                    Embedding::Nat64 => "NAT64",
                    Embedding::SixToFour => "6to4",
                };
                write!(f, "the {form} IPv6 form of {}", self.range)
            }
        }
    }
}

/// Why `ip` must not be dialed, or `None` when it is an ordinary public unicast address.
#[must_use]
pub fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4).map(|range| Forbidden {
            range,
            embedding: None,
        }),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<Range> {
    let [a, b, c, _] = ip.octets();
    let range = match (a, b, c) {
        _ if ip.is_unspecified() => Range::Unspecified,
        _ if ip.is_broadcast() => Range::Broadcast,
        (127, ..) => Range::Loopback,
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => Range::Private,
        (100, 64..=127, _) => Range::SharedCgnat,
        (169, 254, _) => Range::LinkLocal,
        (224..=239, ..) => Range::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Range::Documentation,
        (198, 18..=19, _) => Range::Benchmarking,
        // 0/8 "this network", 192.0.0/24 protocol assignments (NAT64 discovery among them),
        // 192.88.99/24 the old 6to4 relay anycast, 240/4 reserved.
        (0 | 240..=255, ..) | (192, 0, 0) | (192, 88, 99) => Range::Reserved,
        _ => return None,
    };
    Some(range)
}

fn v6_forbidden(ip: Ipv6Addr) -> Option<Forbidden> {
    let plain = |range| {
        Some(Forbidden {
            range,
            embedding: None,
        })
    };
    let embedded = |v4: Ipv4Addr, embedding| {
        v4_range(v4).map(|range| Forbidden {
            range,
            embedding: Some(embedding),
        })
    };
    let s = ip.segments();
    let o = ip.octets();
    let low_v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if ip.is_unspecified() {
        return plain(Range::Unspecified);
    }
    if ip.is_loopback() {
        return plain(Range::Loopback);
    }
    match s {
        // ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => embedded(low_v4, Embedding::Mapped),
        // ::a.b.c.d (deprecated, but some stacks still route it as IPv4)
        [0, 0, 0, 0, 0, 0, _, _] => embedded(low_v4, Embedding::Compatible),
        // 64:ff9b::a.b.c.d, the well-known NAT64 prefix
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => embedded(low_v4, Embedding::Nat64),
        // 2002:AABB:CCDD::/48 carries a.b.c.d
        [0x2002, ..] => embedded(Ipv4Addr::new(o[2], o[3], o[4], o[5]), Embedding::SixToFour),
        [0xfc00..=0xfdff, ..] => plain(Range::Private),
        [0xfe80..=0xfebf, ..] => plain(Range::LinkLocal),
        [0xff00..=0xffff, ..] => plain(Range::Multicast),
        [0x2001, 0x0db8, ..] | [0x3fff, 0..=0x0fff, ..] => plain(Range::Documentation),
        [0x2001, 0x0002, 0, ..] => plain(Range::Benchmarking),
        // Teredo tunnels to an address we cannot check.
        [0x2001, 0, ..] => plain(Range::Reserved),
        // Only 2000::/3 is global unicast; the rest (::/8 with NAT64 local-use, discard-only
        // 100::/64, site-local fec0::/10, ...) is not somewhere a sandbox should reach.
        [first, ..] if !(0x2000..=0x3fff).contains(&first) => plain(Range::Reserved),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str) -> Option<Forbidden> {
        forbidden(ip.parse().unwrap())
    }

    fn range(ip: &str) -> Option<Range> {
        check(ip).map(|f| f.range)
    }

    #[test]
    fn ipv4_special_ranges_are_refused() {
        let cases = [
            ("0.0.0.0", Range::Unspecified),
            ("0.1.2.3", Range::Reserved),
            ("127.0.0.1", Range::Loopback),
            ("127.255.255.254", Range::Loopback),
            ("10.0.0.1", Range::Private),
            ("172.16.0.1", Range::Private),
            ("172.31.255.255", Range::Private),
            ("192.168.1.1", Range::Private),
            ("100.64.0.1", Range::SharedCgnat),
            ("100.127.255.255", Range::SharedCgnat),
            ("169.254.169.254", Range::LinkLocal),
            ("224.0.0.1", Range::Multicast),
            ("239.255.255.250", Range::Multicast),
            ("255.255.255.255", Range::Broadcast),
            ("240.0.0.1", Range::Reserved),
            ("192.0.2.10", Range::Documentation),
            ("198.51.100.1", Range::Documentation),
            ("203.0.113.7", Range::Documentation),
            ("198.18.0.1", Range::Benchmarking),
            ("192.0.0.170", Range::Reserved),
        ];
        for (ip, expected) in cases {
            assert_eq!(range(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_ipv4_is_allowed() {
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "172.15.0.1",
            "172.32.0.1",
            "100.63.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(check(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_refused() {
        let cases = [
            ("::", Range::Unspecified),
            ("::1", Range::Loopback),
            ("fe80::1", Range::LinkLocal),
            ("febf::1", Range::LinkLocal),
            ("fc00::1", Range::Private),
            ("fd12:3456::1", Range::Private),
            ("ff02::1", Range::Multicast),
            ("2001:db8::1", Range::Documentation),
            ("3fff::1", Range::Documentation),
            ("2001::1", Range::Reserved),
            ("2001:2::1", Range::Benchmarking),
            ("64:ff9b:1::1", Range::Reserved),
            ("100::1", Range::Reserved),
            ("fec0::1", Range::Reserved),
        ];
        for (ip, expected) in cases {
            assert_eq!(range(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_forbidden_ipv4_are_refused() {
        let cases = [
            ("::ffff:127.0.0.1", Range::Loopback, Embedding::Mapped),
            (
                "::ffff:169.254.169.254",
                Range::LinkLocal,
                Embedding::Mapped,
            ),
            ("::ffff:10.0.0.1", Range::Private, Embedding::Mapped),
            ("::127.0.0.1", Range::Loopback, Embedding::Compatible),
            ("64:ff9b::a9fe:a9fe", Range::LinkLocal, Embedding::Nat64),
            ("64:ff9b::192.168.0.1", Range::Private, Embedding::Nat64),
            ("2002:7f00:1::1", Range::Loopback, Embedding::SixToFour),
        ];
        for (ip, range, embedding) in cases {
            let found = check(ip).unwrap_or_else(|| panic!("{ip} should be refused"));
            assert_eq!(
                found,
                Forbidden {
                    range,
                    embedding: Some(embedding)
                },
                "{ip}"
            );
            assert!(!found.is_plain_loopback());
        }
        assert_eq!(
            check("::ffff:169.254.169.254").unwrap().to_string(),
            "the IPv4-mapped IPv6 form of a link-local address (where cloud metadata endpoints live)"
        );
    }

    #[test]
    fn public_ipv6_and_embedded_public_ipv4_are_allowed() {
        for ip in [
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "64:ff9b::8c52:7003",
            "2002:8c52:7003::1",
        ] {
            assert_eq!(check(ip), None, "{ip}");
        }
        // A mapped public address is still an IPv4 destination, and a public one.
        assert_eq!(check("::ffff:140.82.112.3"), None);
    }
}
