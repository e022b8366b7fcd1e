//! Which peers a TURN allocation may talk to.
//!
//! A relay on the branch box must not become a way into the branch LAN or the
//! box itself: by default every address that is not a public unicast address
//! is refused, whatever textual form it arrives in (IPv4-mapped and
//! IPv4-compatible IPv6, NAT64 and 6to4 embeddings are unwrapped first). The
//! operator opens ranges with `turn.allowed_peers`; the unspecified addresses
//! (0.0.0.0/8, ::) stay closed even then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The IPv4 address an IPv6 address stands for, when it embeds one.
fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible (deprecated, RFC 4291 §2.5.5.1): ::a.b.c.d, but not :: or ::1.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052) and local-use 64:ff9b:1::/48 (RFC 8215).
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // 6to4 (RFC 3056): 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// The address the packet really goes to: embedded IPv4 unwrapped.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(&v6).map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn never_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// Not a public unicast address (RFC 6890 special-purpose registries).
fn special_purpose(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] >= 240 // reserved
                || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64/10 shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
                || (o[0] == 198 && (o[1] & 0xFE) == 18) // 198.18/15 benchmarking
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xFE00) == 0xFC00 // unique local fc00::/7
                || (s[0] & 0xFFC0) == 0xFE80 // link-local fe80::/10
                || (s[0] & 0xFFC0) == 0xFEC0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard 100::/64
                || (s[0] == 0x2001 && s[1] == 0) // Teredo: embeds an obfuscated IPv4 address
                || s[..6] == [0; 6] // the rest of ::/96
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// Ranges opened by the operator (`turn.allowed_peers`).
    pub allowed: Vec<IpNet>,
    /// The box's own addresses (its interfaces and its public mapping).
    pub own_addresses: Vec<IpAddr>,
    /// The box's own service ports (admin UI, SIP, TURN, metrics): never reachable
    /// through the relay on the box itself, even where `allowed` opens the address.
    pub own_ports: Vec<u16>,
    /// The box's media ports (`media.rtp_port_min..=max`), open to UDP relays on
    /// [`PeerPolicy::media_addresses`]: a browser behind a NAT reaches the box's calls
    /// and camera viewers through the relay, which is why the box has one.
    pub media_ports: Option<(u16, u16)>,
    /// The addresses the box's media is offered on (its SDP/ICE address and its public
    /// mapping) — not every address it has: its management, VPN and link-local
    /// addresses stay closed.
    pub media_addresses: Vec<IpAddr>,
}

/// What a relayed connection to a peer carries: the box's media ports take UDP only
/// (RFC 6062 TCP connections to them serve no call and would reach its RTP sockets' neighbours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayProtocol {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the unspecified address is never a peer")]
    Unspecified,
    #[error("not a public address")]
    NotPublic,
    #[error("one of the box's own addresses")]
    OwnAddress,
    #[error("one of the box's own services")]
    OwnService,
}

impl PeerPolicy {
    /// Whether `ip` is the box itself (loopback, or one of its addresses).
    fn is_self(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.own_addresses.iter().any(|own| canonical(*own) == ip)
    }

    pub fn check(&self, peer: SocketAddr, protocol: RelayProtocol) -> Result<(), Denied> {
        let ip = canonical(peer.ip());
        if never_allowed(ip) || never_allowed(peer.ip()) {
            return Err(Denied::Unspecified);
        }
        if self.own_ports.contains(&peer.port()) && self.is_self(ip) {
            return Err(Denied::OwnService);
        }
        if protocol == RelayProtocol::Udp
            && self.media_ports.is_some_and(|(first, last)| (first..=last).contains(&peer.port()))
            && !ip.is_loopback()
            && self.media_addresses.iter().any(|media| canonical(*media) == ip)
        {
            return Ok(());
        }
        // Otherwise the box itself is reachable only where the operator named that exact host
        // (a lab on loopback): a broad range like the LAN's /24 does not open it.
        if self.is_self(ip) {
            let exact = self.allowed.iter().any(|net| net.prefix_len() == net.max_prefix_len() && net.addr() == ip);
            return if exact { Ok(()) } else { Err(Denied::OwnAddress) };
        }
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        if self.own_addresses.iter().any(|own| canonical(*own) == ip) {
            return Err(Denied::OwnAddress);
        }
        if special_purpose(ip) {
            return Err(Denied::NotPublic);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().expect("ip"), 5000)
    }

    #[test]
    fn every_textual_form_of_an_internal_address_is_refused() {
        let policy = PeerPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(policy.check(peer(bad), RelayProtocol::Udp).is_err(), "{bad} must be refused");
        }
        for good in ["8.8.8.8", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert_eq!(policy.check(peer(good), RelayProtocol::Udp), Ok(()), "{good} is public");
        }
    }

    #[test]
    fn allowed_ranges_open_but_never_the_unspecified_address() {
        let policy = PeerPolicy {
            allowed: vec![
                "127.0.0.1/32".parse().expect("net"),
                "0.0.0.0/0".parse().expect("net"),
                "::/0".parse().expect("net"),
            ],
            ..PeerPolicy::default()
        };
        assert_eq!(policy.check(peer("127.0.0.1"), RelayProtocol::Udp), Ok(()));
        assert_eq!(policy.check(peer("::ffff:127.0.0.1"), RelayProtocol::Udp), Ok(()), "the same address in IPv6 form");
        assert_eq!(policy.check(peer("10.0.0.1"), RelayProtocol::Udp), Ok(()));
        assert_eq!(policy.check(peer("0.0.0.0"), RelayProtocol::Udp), Err(Denied::Unspecified));
        assert_eq!(policy.check(peer("::ffff:0.0.0.0"), RelayProtocol::Udp), Err(Denied::Unspecified));
        assert_eq!(policy.check(peer("::"), RelayProtocol::Udp), Err(Denied::Unspecified));
    }

    #[test]
    fn the_boxs_media_ports_on_its_own_addresses_are_open_by_default() {
        let policy = PeerPolicy {
            own_addresses: vec![
                "203.0.113.10".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
                "10.8.0.1".parse().expect("ip"),
            ],
            own_ports: vec![8443, 5060],
            media_ports: Some((20000, 29999)),
            media_addresses: vec!["203.0.113.10".parse().expect("ip")],
            ..PeerPolicy::default()
        };
        for open in ["203.0.113.10:20000", "203.0.113.10:29999", "[::ffff:203.0.113.10]:24000"] {
            assert_eq!(policy.check(open.parse().expect("addr"), RelayProtocol::Udp), Ok(()), "{open}");
        }
        // Other ports of the box, its services, and loopback stay closed.
        for (closed, why) in [
            ("203.0.113.10:19999", Denied::OwnAddress),
            ("203.0.113.10:30000", Denied::OwnAddress),
            ("203.0.113.10:5060", Denied::OwnService),
            ("127.0.0.1:20000", Denied::OwnAddress),
            ("[::1]:20000", Denied::OwnAddress),
            ("10.8.0.1:20000", Denied::OwnAddress),
        ] {
            assert_eq!(policy.check(closed.parse().expect("addr"), RelayProtocol::Udp), Err(why), "{closed}");
        }
        // A box address that carries no media (a VPN or management interface) stays closed,
        // and TCP relays (RFC 6062) never reach the media ports.
        assert_eq!(
            policy.check("203.0.113.10:20000".parse().expect("addr"), RelayProtocol::Tcp),
            Err(Denied::OwnAddress)
        );
    }

    #[test]
    fn the_box_itself_is_refused() {
        let policy = PeerPolicy {
            allowed: vec!["127.0.0.1/32".parse().expect("net"), "203.0.113.0/24".parse().expect("net")],
            own_addresses: vec!["203.0.113.10".parse().expect("ip")],
            own_ports: vec![8443, 5060],
            media_ports: None,
            media_addresses: Vec::new(),
        };
        assert_eq!(policy.check(peer("8.8.4.4"), RelayProtocol::Udp), Ok(()));
        assert!(policy.check(peer("203.0.113.10"), RelayProtocol::Udp).is_err());
        assert!(policy.check(peer("::ffff:203.0.113.10"), RelayProtocol::Udp).is_err());
        // Loopback opened for a lab (exact host): still not the box's own services.
        assert_eq!(policy.check(peer("127.0.0.1"), RelayProtocol::Udp), Ok(()));
        assert!(policy.check(peer("127.0.0.2"), RelayProtocol::Udp).is_err(), "only the exact host was opened");
        assert_eq!(policy.check(peer("203.0.113.11"), RelayProtocol::Udp), Ok(()), "the range opens its other hosts");
        for own in ["127.0.0.1:8443", "127.0.0.2:5060", "[::ffff:127.0.0.1]:8443", "[::1]:8443"] {
            assert_eq!(policy.check(own.parse().expect("addr"), RelayProtocol::Udp), Err(Denied::OwnService), "{own}");
        }
    }

    #[test]
    fn ipv6_loopback_opens_only_as_an_exact_host_and_keeps_the_services_closed() {
        let policy = PeerPolicy {
            allowed: vec!["::1/128".parse().expect("net"), "2001:db8:5::/48".parse().expect("net")],
            own_addresses: vec!["2001:db8:5::10".parse().expect("ip")],
            own_ports: vec![3478],
            ..PeerPolicy::default()
        };
        assert_eq!(policy.check("[::1]:5000".parse().expect("addr"), RelayProtocol::Udp), Ok(()));
        assert_eq!(policy.check("[::1]:3478".parse().expect("addr"), RelayProtocol::Udp), Err(Denied::OwnService));
        assert_eq!(policy.check(peer("2001:db8:5::11"), RelayProtocol::Udp), Ok(()), "the range's other hosts");
        assert_eq!(policy.check(peer("2001:db8:5::10"), RelayProtocol::Udp), Err(Denied::OwnAddress));
        // Opening ::1 opens neither IPv4 loopback nor the rest of the special ranges.
        for closed in ["127.0.0.1", "::ffff:127.0.0.1", "fe80::1", "fc00::1", "ff02::1", "::"] {
            assert!(policy.check(peer(closed), RelayProtocol::Udp).is_err(), "{closed}");
        }
    }
}
