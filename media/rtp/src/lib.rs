//! RTP/RTCP for the box, sans-IO: just enough of the packet to tell RTP from
//! RTCP and to count streams (RFC 3550, RFC 5761), and the symmetric-RTP
//! latch that finds a phone's real address behind NAT (RFC 4961 practice),
//! and reception quality (loss, jitter, MOS) for the call details.

pub mod quality;

pub use quality::{ReceptionStats, StreamQuality, mos};

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The fixed RTP header fields the relay looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than an RTP header")]
    Short,
    #[error("not RTP version 2")]
    Version,
}

/// Parses the fixed header of an RTP packet (RFC 3550 §5.1).
pub fn parse_rtp(packet: &[u8]) -> Result<RtpHeader, RtpError> {
    if packet.len() < 12 {
        return Err(RtpError::Short);
    }
    if packet[0] >> 6 != 2 {
        return Err(RtpError::Version);
    }
    Ok(RtpHeader {
        payload_type: packet[1] & 0x7f,
        marker: packet[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    })
}

/// The payload of an RTP packet: after the CSRC list and header extension,
/// before any padding (RFC 3550 §5.1, §5.3.1).
pub fn rtp_payload(packet: &[u8]) -> Result<&[u8], RtpError> {
    parse_rtp(packet)?;
    let csrc_count = usize::from(packet[0] & 0x0f);
    let mut start = 12 + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        let words = packet.get(start + 2..start + 4).ok_or(RtpError::Short)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let padding = usize::from(*packet.last().ok_or(RtpError::Short)?);
        end = end.checked_sub(padding).ok_or(RtpError::Short)?;
    }
    packet.get(start..end).ok_or(RtpError::Short)
}

/// An RTP packet with a fixed 12-byte header (no CSRCs, no extension).
pub fn build_rtp(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(0x80);
    out.push((header.payload_type & 0x7f) | if header.marker { 0x80 } else { 0 });
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One RFC 4733 telephone event block (§2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// 0–9, 10 `*`, 11 `#`, 12–15 `A`–`D` (§3.2).
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    /// In the stream's timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let block = payload.get(..4)?;
        Some(TelephoneEvent {
            event: block[0],
            end: block[1] & 0x80 != 0,
            volume: block[1] & 0x3f,
            duration: u16::from_be_bytes([block[2], block[3]]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let [high, low] = self.duration.to_be_bytes();
        [self.event, if self.end { 0x80 } else { 0 } | (self.volume & 0x3f), high, low]
    }
}

/// The DTMF key of an RFC 4733 event (§3.2), as SIP INFO names it.
pub fn dtmf_key(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The RFC 4733 event of a DTMF key (`0`–`9`, `*`, `#`, `A`–`D`, case-insensitive).
pub fn dtmf_event(key: char) -> Option<u8> {
    match key.to_ascii_uppercase() {
        '0'..='9' => key.to_digit(10).map(|d| d as u8),
        '*' => Some(10),
        '#' => Some(11),
        k @ 'A'..='D' => Some(k as u8 - b'A' + 12),
        _ => None,
    }
}

/// The packets of one DTMF key sent as RFC 4733 events (§2.5.1): the first
/// with the marker bit, updates every 50 ms with the duration so far, and
/// the end packet three times (§2.5.1.4), 20 ms apart so that one loss does
/// not take all three. Each entry: when to send it after the first, the
/// marker bit, the payload; all share the event's timestamp.
pub fn telephone_event_packets(
    event: u8,
    duration_ms: u32,
    clock_rate: u32,
) -> Vec<(std::time::Duration, bool, [u8; 4])> {
    // RFC 4733 §2.5.2.3: an event longer than the 16-bit duration is split; keys are never that long.
    let duration_ms = duration_ms.clamp(40, 5000);
    let ticks = |ms: u32| (u64::from(ms) * u64::from(clock_rate) / 1000).min(u64::from(u16::MAX)) as u16;
    let block = |end: bool, ms: u32| TelephoneEvent { event, end, volume: 10, duration: ticks(ms) }.to_bytes();
    let mut packets = vec![(std::time::Duration::ZERO, true, block(false, 0))];
    let mut at = 50;
    while at < duration_ms {
        packets.push((std::time::Duration::from_millis(u64::from(at)), false, block(false, at)));
        at += 50;
    }
    for repeat in 0..3 {
        let at = std::time::Duration::from_millis(u64::from(duration_ms + 20 * repeat));
        packets.push((at, false, block(true, duration_ms)));
    }
    packets
}

/// RTCP when RTP and RTCP share a port: packet types 192–223 (RFC 5761 §4).
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

/// Where one side of a relay sends: the address its SDP announced until
/// media arrives, then the address media really comes from (a phone behind
/// NAT sends from its public mapping). Once latched, other sources are
/// ignored (nobody can hijack the stream mid-call) unless the latched source
/// has been silent for [`RELATCH_AFTER`] (the phone's NAT mapping changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latch {
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_heard: Option<Instant>,
    /// Addresses media of this side may come from and be sent to: the side's
    /// signalling address, and the SDP address when it is that one or a private
    /// one (a phone on the LAN). Nobody else can latch, and the box never sends
    /// media to an address a caller merely wrote into its SDP (RTP bleed, reflection).
    allowed: Vec<IpAddr>,
}

/// A private, loopback or link-local address (where a LAN phone's SDP points).
fn local_scope(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Silence after which a new source may take over a latched stream.
pub const RELATCH_AFTER: Duration = Duration::from_secs(2);

impl Latch {
    /// A side nobody has signalled yet: it refuses everything until [`Latch::signal`] (while a
    /// call rings, its callee's port is open and anyone — a TURN user, a scanner — could
    /// otherwise latch it and inject media into the caller's ear).
    pub fn new() -> Self {
        Latch::default()
    }

    /// New SDP from this side (the offer, or a re-INVITE) and where its SIP comes from:
    /// a new address starts over.
    pub fn signal(&mut self, signalled: Option<SocketAddr>, signalling: IpAddr) {
        if signalled.is_some() && signalled != self.signalled {
            self.latched = None;
        }
        self.signalled = signalled;
        self.allowed = vec![signalling];
        if let Some(sdp) = signalled
            && sdp.ip() != signalling
            && local_scope(sdp.ip())
        {
            self.allowed.push(sdp.ip());
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allowed.contains(&ip)
    }

    /// A packet arrived from `source`; `false` means drop it.
    pub fn accept(&mut self, now: Instant, source: SocketAddr) -> bool {
        if !self.allowed(source.ip()) {
            return false;
        }
        let silent = self.last_heard.is_none_or(|t| now.saturating_duration_since(t) >= RELATCH_AFTER);
        match self.latched {
            Some(latched) if latched == source => {}
            Some(_) if !silent => return false,
            _ => self.latched = Some(source),
        }
        self.last_heard = Some(now);
        true
    }

    /// Where to send packets for this side.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.signalled.filter(|s| self.allowed(s.ip())))
    }

    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn dtmf_keys_and_events_follow_rfc_4733() {
        for (key, event) in [('0', 0), ('9', 9), ('*', 10), ('#', 11), ('A', 12), ('d', 15)] {
            assert_eq!(dtmf_event(key), Some(event), "{key}");
            assert_eq!(dtmf_key(event), Some(key.to_ascii_uppercase()), "{event}");
        }
        assert_eq!(dtmf_event('x'), None);
        assert_eq!(dtmf_key(16), None, "16 is flash, not a key");
        let block = TelephoneEvent::parse(&[11, 0x8a, 0x03, 0x20]).expect("event");
        assert_eq!(block, TelephoneEvent { event: 11, end: true, volume: 10, duration: 800 });
        assert_eq!(block.to_bytes(), [11, 0x8a, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), None);
    }

    #[test]
    fn a_key_becomes_a_start_updates_and_three_ends() {
        let packets = telephone_event_packets(5, 160, 8000);
        let at: Vec<u64> = packets.iter().map(|(d, _, _)| d.as_millis() as u64).collect();
        assert_eq!(at, [0, 50, 100, 150, 160, 180, 200]);
        assert!(packets[0].1 && packets.iter().skip(1).all(|p| !p.1), "marker on the first only");
        let events: Vec<TelephoneEvent> = packets.iter().filter_map(|p| TelephoneEvent::parse(&p.2)).collect();
        assert_eq!(events.iter().filter(|e| e.end).count(), 3);
        assert_eq!(events.last().map(|e| e.duration), Some(1280), "160 ms at 8 kHz");
        assert!(events.windows(2).all(|w| w[0].duration <= w[1].duration));
    }

    #[test]
    fn payload_skips_csrcs_extension_and_padding() {
        let header = RtpHeader { payload_type: 0, marker: false, sequence: 7, timestamp: 160, ssrc: 9 };
        let mut plain = Vec::new();
        build_rtp(&header, b"voice", &mut plain);
        assert_eq!(parse_rtp(&plain), Ok(header));
        assert_eq!(rtp_payload(&plain), Ok(&b"voice"[..]));
        // X and P bits, one CSRC, a one-word extension, two bytes of padding.
        let mut packet = vec![0xb1, 0, 0, 7, 0, 0, 0, 160, 0, 0, 0, 9, 1, 2, 3, 4, 0xbe, 0xde, 0, 1, 9, 9, 9, 9];
        packet.extend_from_slice(b"voice");
        packet.extend_from_slice(&[0, 2]);
        assert_eq!(rtp_payload(&packet), Ok(&b"voice"[..]));
        // Lengths that point past the end are refused, not sliced.
        packet[19] = 200;
        assert_eq!(rtp_payload(&packet), Err(RtpError::Short));
        let mut padded = plain.clone();
        padded[0] |= 0x20;
        *padded.last_mut().expect("byte") = 250;
        assert_eq!(rtp_payload(&padded), Err(RtpError::Short));
    }

    #[test]
    fn rtp_header_and_rtcp_demultiplexing() {
        // RFC 3550 header: V=2, PT=0 (PCMU), seq 0x1234, ts 0x10, SSRC 0xdeadbeef.
        let packet = [0x80, 0x80, 0x12, 0x34, 0, 0, 0, 0x10, 0xde, 0xad, 0xbe, 0xef, 0xff];
        let h = parse_rtp(&packet).expect("rtp");
        assert_eq!((h.payload_type, h.marker, h.sequence, h.timestamp, h.ssrc), (0, true, 0x1234, 0x10, 0xdead_beef));
        assert!(!is_rtcp(&packet));
        // A receiver report (PT 201).
        assert!(is_rtcp(&[0x81, 201, 0, 7, 0, 0, 0, 1]));
        assert_eq!(parse_rtp(&packet[..11]), Err(RtpError::Short));
        assert_eq!(parse_rtp(&[0x40; 12]), Err(RtpError::Version));
    }

    #[test]
    fn latch_follows_the_first_source_and_refuses_hijack() {
        let t0 = Instant::now();
        let mut latch = Latch::new();
        assert!(!latch.accept(t0, addr("198.51.100.7:61000")), "nothing is accepted before the side is signalled");
        latch.signal(Some(addr("10.0.0.5:4000")), "198.51.100.7".parse().expect("ip"));
        assert_eq!(latch.destination(), Some(addr("10.0.0.5:4000")));
        assert!(latch.accept(t0, addr("198.51.100.7:61000")), "the NAT's public mapping");
        assert_eq!(latch.destination(), Some(addr("198.51.100.7:61000")));
        assert!(!latch.accept(t0 + Duration::from_millis(20), addr("203.0.113.66:5000")), "hijack refused");
        assert!(latch.accept(t0 + Duration::from_millis(40), addr("198.51.100.7:61000")));
        // After silence a new mapping may take over.
        assert!(latch.accept(t0 + Duration::from_secs(3), addr("198.51.100.7:62000")));
        assert_eq!(latch.destination(), Some(addr("198.51.100.7:62000")));
        // A re-INVITE to a new address forgets the latch.
        latch.signal(Some(addr("10.0.0.6:4002")), "10.0.0.6".parse().expect("ip"));
        assert_eq!(latch.destination(), Some(addr("10.0.0.6:4002")));
    }

    #[test]
    fn only_the_sides_own_addresses_latch_or_receive() {
        let t0 = Instant::now();
        let mut latch = Latch::new();
        // A phone behind NAT: SIP from its public address, SDP with its LAN address.
        latch.signal(Some(addr("192.168.1.20:4000")), "198.51.100.7".parse().expect("ip"));
        assert_eq!(latch.destination(), Some(addr("192.168.1.20:4000")), "a LAN address is fine to try");
        assert!(!latch.accept(t0, addr("203.0.113.66:5000")), "a stranger cannot latch");
        assert!(latch.accept(t0, addr("198.51.100.7:61000")));
        // A caller pointing the media at a public victim gets nothing sent there.
        let mut latch = Latch::new();
        latch.signal(Some(addr("203.0.113.99:9")), "198.51.100.7".parse().expect("ip"));
        assert_eq!(latch.destination(), None, "no media to an address only the SDP names");
        assert!(latch.accept(t0, addr("198.51.100.7:4000")));
        assert_eq!(latch.destination(), Some(addr("198.51.100.7:4000")));
    }
}
