//! SDP (RFC 8866) as the B2BUA needs it: every line kept as received, so
//! that offer/answer passes through unchanged except where the box anchors
//! media (connection address, origin address, media ports, RTCP port).
//!
//! `webrtc-sdp` was considered: it models WebRTC sessions and refuses or
//! normalises some legacy SIP SDP (unknown attributes, odd `o=` lines) that
//! a border controller must pass through byte for byte.

use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    Encoding,
    #[error("SDP must start with v=0")]
    Version,
    #[error("malformed SDP line {0:?}")]
    Line(String),
    #[error("malformed m= line {0:?}")]
    Media(String),
    #[error("malformed c= line {0:?}")]
    Connection(String),
    #[error("SDP is too large")]
    TooLarge,
}

/// Largest SDP accepted (a SIP message is at most 64 KiB anyway).
pub const MAX_SDP: usize = 32 * 1024;

/// One `x=value` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub kind: char,
    pub value: String,
}

/// A media section: its `m=` line and the lines under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    pub port: u16,
    /// Port count from `m=audio 49170/2 ...`.
    pub port_count: Option<u16>,
    pub protocol: String,
    pub formats: Vec<String>,
    pub lines: Vec<Line>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    /// Session-level lines (from `v=` to the first `m=`).
    pub session: Vec<Line>,
    pub media: Vec<Media>,
}

/// An RTP payload format: `a=rtpmap:<pt> <name>/<rate>[/<channels>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: u16,
}

impl RtpMap {
    fn parse(payload_type: u8, encoding: &str) -> Option<RtpMap> {
        let mut parts = encoding.split('/');
        let name = parts.next()?.to_string();
        let clock_rate = parts.next()?.parse().ok()?;
        let channels = match parts.next() {
            Some(c) => c.parse().ok()?,
            None => 1,
        };
        Some(RtpMap { payload_type, name, clock_rate, channels })
    }

    /// RFC 3551 §6's static audio payload types that phones still send without `a=rtpmap`.
    fn static_format(payload_type: u8) -> Option<RtpMap> {
        let (name, clock_rate) = match payload_type {
            0 => ("PCMU", 8000),
            3 => ("GSM", 8000),
            4 => ("G723", 8000),
            8 => ("PCMA", 8000),
            9 => ("G722", 8000),
            13 => ("CN", 8000),
            18 => ("G729", 8000),
            _ => return None,
        };
        Some(RtpMap { payload_type, name: name.to_string(), clock_rate, channels: 1 })
    }

    /// Same encoding (names are case-insensitive, RFC 4855 §3).
    pub fn same_encoding(&self, other: &RtpMap) -> bool {
        self.name.eq_ignore_ascii_case(&other.name) && self.clock_rate == other.clock_rate
    }
}

/// Stream direction (RFC 3264 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute that says it (`a=sendonly`...).
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// What an answer says to an offer of this direction (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    fn from_attribute(value: &str) -> Option<Direction> {
        match value {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

fn parse_connection(value: &str) -> Result<Option<IpAddr>, SdpError> {
    let bad = || SdpError::Connection(value.to_string());
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(family), Some(address)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    // Multicast `224.2.1.1/127` carries a TTL; the address is before the slash.
    let address = address.split('/').next().unwrap_or(address);
    match family {
        "IP4" | "IP6" => Ok(address.parse().ok()),
        _ => Err(bad()),
    }
}

fn connection_line(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    }
}

impl Media {
    fn parse(value: &str) -> Result<Media, SdpError> {
        let bad = || SdpError::Media(value.to_string());
        let mut parts = value.split_whitespace();
        let (Some(kind), Some(port), Some(protocol)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let (port, port_count) = match port.split_once('/') {
            Some((p, n)) => (p, Some(n.parse().map_err(|_| bad())?)),
            None => (port, None),
        };
        Ok(Media {
            kind: kind.to_string(),
            port: port.parse().map_err(|_| bad())?,
            port_count,
            protocol: protocol.to_string(),
            formats: parts.map(str::to_string).collect(),
            lines: Vec::new(),
        })
    }

    fn m_line(&self) -> String {
        let port = match self.port_count {
            Some(n) => format!("{}/{n}", self.port),
            None => self.port.to_string(),
        };
        format!("{} {port} {} {}", self.kind, self.protocol, self.formats.join(" "))
    }

    /// Attribute values `a=name:value` (or `a=name` with an empty value).
    pub fn attributes<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        attributes(&self.lines, name)
    }

    /// DTLS-SRTP media (WebRTC's `UDP/TLS/RTP/SAVPF`, RFC 5764 §8), which the
    /// box terminates instead of relaying.
    pub fn is_dtls_srtp(&self) -> bool {
        let protocol = self.protocol.to_ascii_uppercase();
        protocol.starts_with("UDP/TLS/") || protocol.contains("DTLS")
    }

    /// The payload formats in the `m=` line's order, named by `a=rtpmap` or
    /// RFC 3551's static table; formats neither names are left out.
    pub fn rtp_maps(&self) -> Vec<RtpMap> {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter_map(|pt| {
                let declared = self.attributes("rtpmap").find_map(|v| {
                    let (number, encoding) = v.split_once(' ')?;
                    (number.trim().parse::<u8>().ok()? == pt).then_some(encoding.trim())
                });
                match declared {
                    Some(encoding) => RtpMap::parse(pt, encoding),
                    None => RtpMap::static_format(pt),
                }
            })
            .collect()
    }

    /// The `a=fmtp` parameters of payload type `pt`.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.attributes("fmtp").find_map(|v| {
            let (number, parameters) = v.split_once(' ')?;
            (number.trim().parse::<u8>().ok()? == pt).then_some(parameters.trim())
        })
    }

    pub fn direction(&self) -> Option<Direction> {
        self.lines.iter().filter(|l| l.kind == 'a').find_map(|l| Direction::from_attribute(&l.value))
    }

    /// Says `direction` for this stream (replacing the one it said).
    pub fn set_direction(&mut self, direction: Direction) {
        self.lines.retain(|l| !(l.kind == 'a' && Direction::from_attribute(&l.value).is_some()));
        self.lines.push(Line { kind: 'a', value: direction.attribute().to_string() });
    }

    /// The media-level connection address, if this section has one.
    pub fn connection(&self) -> Result<Option<IpAddr>, SdpError> {
        match self.lines.iter().find(|l| l.kind == 'c') {
            Some(line) => parse_connection(&line.value),
            None => Ok(None),
        }
    }
}

fn attributes<'a>(lines: &'a [Line], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    lines.iter().filter(|l| l.kind == 'a').filter_map(move |l| match l.value.split_once(':') {
        Some((n, v)) if n == name => Some(v),
        None if l.value == name => Some(""),
        _ => None,
    })
}

impl SessionDescription {
    pub fn parse(bytes: &[u8]) -> Result<SessionDescription, SdpError> {
        if bytes.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| SdpError::Encoding)?;
        let mut sdp = SessionDescription { session: Vec::new(), media: Vec::new() };
        for raw in text.split('\n') {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.is_empty() {
                continue;
            }
            let mut chars = raw.chars();
            let (Some(kind), Some('=')) = (chars.next(), chars.next()) else {
                return Err(SdpError::Line(raw.chars().take(80).collect()));
            };
            if !kind.is_ascii_lowercase() {
                return Err(SdpError::Line(raw.chars().take(80).collect()));
            }
            let value = raw[2..].to_string();
            if sdp.session.is_empty() && (kind != 'v' || value.trim() != "0") {
                return Err(SdpError::Version);
            }
            match kind {
                'm' => sdp.media.push(Media::parse(&value)?),
                'c' => {
                    parse_connection(&value)?;
                    sdp.push_line(kind, value);
                }
                _ => sdp.push_line(kind, value),
            }
        }
        if sdp.session.first().map(|l| l.kind) != Some('v') {
            return Err(SdpError::Version);
        }
        Ok(sdp)
    }

    fn push_line(&mut self, kind: char, value: String) {
        match self.media.last_mut() {
            Some(media) => media.lines.push(Line { kind, value }),
            None => self.session.push(Line { kind, value }),
        }
    }

    /// The session-level connection address.
    pub fn connection(&self) -> Option<IpAddr> {
        self.session.iter().find(|l| l.kind == 'c').and_then(|l| parse_connection(&l.value).ok().flatten())
    }

    /// Where the sender of this SDP wants media `index` sent: its address
    /// (media-level `c=` over session-level) and port; `None` for a
    /// disabled stream (port 0) or a hold address (`0.0.0.0`).
    pub fn media_destination(&self, index: usize) -> Option<std::net::SocketAddr> {
        let media = self.media.get(index)?;
        let address = media.connection().ok().flatten().or_else(|| self.connection())?;
        (media.port != 0 && !address.is_unspecified()).then(|| std::net::SocketAddr::new(address, media.port))
    }

    /// Points every connection and origin address at `address` and media
    /// stream `i` at `ports[i]` (RTCP at the next port), leaving hold
    /// addresses (`0.0.0.0`) and disabled streams (port 0) as they are.
    /// ICE attributes are dropped: they describe the sender's addresses, which
    /// the far side must not learn and could not reach.
    pub fn anchor(&mut self, address: IpAddr, ports: &[u16]) {
        let rewrite_c = |line: &mut Line| {
            if line.kind == 'c' && !matches!(parse_connection(&line.value), Ok(Some(a)) if a.is_unspecified()) {
                line.value = connection_line(address);
            }
        };
        for line in &mut self.session {
            rewrite_c(line);
            if line.kind == 'o' {
                let mut parts: Vec<&str> = line.value.split_whitespace().collect();
                if parts.len() == 6 {
                    let (family, text) = match address {
                        IpAddr::V4(_) => ("IP4", address.to_string()),
                        IpAddr::V6(_) => ("IP6", address.to_string()),
                    };
                    parts[4] = family;
                    parts[5] = &text;
                    // The username can name an internal host or person: hide it.
                    parts[0] = "-";
                    line.value = parts.join(" ");
                }
            }
        }
        for (media, port) in self.media.iter_mut().zip(ports.iter().copied()) {
            if media.port == 0 {
                continue;
            }
            media.port = port;
            media.port_count = None;
            media.lines.retain(|l| {
                let name = l.value.split(':').next().unwrap_or("");
                !(l.kind == 'a'
                    && matches!(
                        name,
                        "candidate"
                            | "ice-ufrag"
                            | "ice-pwd"
                            | "ice-options"
                            | "end-of-candidates"
                            | "remote-candidates"
                    ))
            });
            for line in &mut media.lines {
                rewrite_c(line);
                if line.kind == 'a' && line.value.starts_with("rtcp:") {
                    line.value = format!("rtcp:{}", u32::from(port) + 1);
                }
            }
        }
        self.session.retain(|l| {
            !(l.kind == 'a'
                && matches!(
                    l.value.split(':').next().unwrap_or(""),
                    "ice-ufrag" | "ice-pwd" | "ice-options" | "ice-lite"
                ))
        });
    }

    /// The next version of this description (`o=` sess-version + 1, RFC 3264 §8).
    pub fn bump_version(&mut self) {
        for line in self.session.iter_mut().filter(|l| l.kind == 'o') {
            let mut parts: Vec<String> = line.value.split_whitespace().map(str::to_string).collect();
            if let Some(version) = parts.get_mut(2).and_then(|v| v.parse::<u64>().ok().map(|n| (v, n))) {
                *version.0 = version.1.wrapping_add(1).to_string();
                line.value = parts.join(" ");
            }
        }
    }

    /// An attribute of the first audio stream, or of the session when the stream has none.
    pub fn audio_attribute<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let media = self.media.iter().find(|m| m.kind == "audio")?;
        media.attributes(name).next().or_else(|| {
            self.session.iter().filter(|l| l.kind == 'a').find_map(|l| {
                let (key, value) = l.value.split_once(':')?;
                (key == name).then_some(value)
            })
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.session {
            write!(f, "{}={}\r\n", line.kind, line.value)?;
        }
        for media in &self.media {
            write!(f, "m={}\r\n", media.m_line())?;
            for line in &media.lines {
                write!(f, "{}={}\r\n", line.kind, line.value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hold_and_resume_rewrite_direction_and_version() {
        let mut sdp = SessionDescription::parse(
            b"v=0\r\no=- 7 1 IN IP4 192.0.2.1\r\ns=-\r\na=ice-ufrag:abcd\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n",
        )
        .expect("sdp");
        sdp.media[0].set_direction(Direction::SendOnly);
        sdp.bump_version();
        assert_eq!(sdp.media[0].direction(), Some(Direction::SendOnly));
        let text = String::from_utf8(sdp.to_bytes()).expect("utf-8");
        assert!(text.contains("o=- 7 2 IN IP4 192.0.2.1\r\n") && !text.contains("sendrecv"), "{text}");
        assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
        assert_eq!(Direction::Inactive.answer(), Direction::Inactive);
        assert_eq!(sdp.audio_attribute("ice-ufrag"), Some("abcd"), "from the session level");
    }

    use super::*;

    /// RFC 3264 §10.1, Alice's offer.
    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\ns=\r\n\
c=IN IP4 host.atlanta.example.com\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 97\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:97 iLBC/8000\r\nm=video 51372 RTP/AVP 31 32\r\na=rtpmap:31 H261/90000\r\n\
a=rtpmap:32 MPV/90000\r\n";

    /// RFC 4317 §2.1 (hold), with IP addresses.
    const HOLD: &str = "v=0\r\no=bob 2808844564 2808844565 IN IP4 192.0.2.2\r\ns=\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\na=sendonly\r\na=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn payload_formats_from_rtpmap_and_the_static_table() {
        let sdp = SessionDescription::parse(OFFER.as_bytes()).expect("parse");
        let names: Vec<(u8, String, u32)> =
            sdp.media[0].rtp_maps().into_iter().map(|m| (m.payload_type, m.name, m.clock_rate)).collect();
        assert_eq!(names, [(0, "PCMU".into(), 8000), (8, "PCMA".into(), 8000), (97, "iLBC".into(), 8000)]);
        // Without a=rtpmap, static types still have names (RFC 3551 §6).
        let bare = SessionDescription::parse(b"v=0\r\nm=audio 4000 RTP/AVP 18 8 96\r\n").expect("parse");
        let names: Vec<String> = bare.media[0].rtp_maps().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["G729", "PCMA"]);
        assert!(!bare.media[0].is_dtls_srtp());
        let webrtc = SessionDescription::parse(
            b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:126 telephone-event/8000\r\n",
        )
        .expect("parse");
        let media = &webrtc.media[0];
        assert!(media.is_dtls_srtp());
        assert_eq!(media.rtp_maps()[0].channels, 2);
        assert_eq!(media.fmtp(111), Some("minptime=10;useinbandfec=1"));
        assert_eq!(media.fmtp(126), None);
    }

    #[test]
    fn rfc3264_offer_round_trips_byte_for_byte() {
        let sdp = SessionDescription::parse(OFFER.as_bytes()).expect("parse");
        assert_eq!(sdp.media.len(), 2);
        assert_eq!(sdp.media[0].formats, ["0", "8", "97"]);
        assert_eq!(sdp.media[1].port, 51372);
        assert_eq!(
            sdp.media[0].attributes("rtpmap").collect::<Vec<_>>(),
            ["0 PCMU/8000", "8 PCMA/8000", "97 iLBC/8000"]
        );
        assert_eq!(sdp.to_string(), OFFER);
        // A host name is no destination the relay can use.
        assert_eq!(sdp.media_destination(0), None);
    }

    #[test]
    fn anchoring_rewrites_addresses_ports_and_rtcp_only() {
        let text = "v=0\r\no=alice 1 1 IN IP4 10.1.2.3\r\ns=-\r\nc=IN IP4 10.1.2.3\r\nt=0 0\r\na=ice-lite\r\n\
m=audio 4000 RTP/AVP 0 101\r\na=rtcp:4001\r\na=candidate:1 1 UDP 1 10.1.2.3 4000 typ host\r\na=fmtp:101 0-15\r\n\
m=video 0 RTP/AVP 31\r\n";
        let mut sdp = SessionDescription::parse(text.as_bytes()).expect("parse");
        assert_eq!(sdp.media_destination(0), Some("10.1.2.3:4000".parse().expect("addr")));
        sdp.anchor("203.0.113.5".parse().expect("ip"), &[20000, 20004]);
        let out = sdp.to_string();
        assert_eq!(
            out,
            "v=0\r\no=- 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0 101\r\na=rtcp:20001\r\na=fmtp:101 0-15\r\nm=video 0 RTP/AVP 31\r\n"
        );
        assert!(!out.contains("10.1.2.3"), "no internal address survives");
    }

    #[test]
    fn rfc4317_hold_keeps_the_hold_address_and_direction() {
        let mut sdp = SessionDescription::parse(HOLD.as_bytes()).expect("parse");
        assert_eq!(sdp.media[0].direction(), Some(Direction::SendOnly));
        assert_eq!(sdp.media_destination(0), None, "0.0.0.0 is hold, not a destination");
        sdp.anchor("198.51.100.1".parse().expect("ip"), &[21000]);
        let out = sdp.to_string();
        assert!(out.contains("c=IN IP4 0.0.0.0\r\n") && out.contains("m=audio 21000 ") && out.contains("a=sendonly"));
    }

    #[test]
    fn ipv6_and_media_level_connection() {
        let text = "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nt=0 0\nm=audio 5004 RTP/AVP 0\nc=IN IP6 2001:db8::2\n";
        let sdp = SessionDescription::parse(text.as_bytes()).expect("parse");
        assert_eq!(sdp.media_destination(0), Some("[2001:db8::2]:5004".parse().expect("addr")));
    }

    #[test]
    fn bad_sdp_is_refused_with_a_reason() {
        for (bad, expect) in [
            (&b"o=- 1 1 IN IP4 1.2.3.4\r\n"[..], SdpError::Version),
            (b"v=0\r\nm=audio x RTP/AVP 0\r\n", SdpError::Media("audio x RTP/AVP 0".into())),
            (b"v=0\r\nc=IN IPX 1.2.3.4\r\n", SdpError::Connection("IN IPX 1.2.3.4".into())),
            (b"v=0\r\nnonsense\r\n", SdpError::Line("nonsense".into())),
            (b"v=0\r\nm=audio\r\n", SdpError::Media("audio".into())),
            (b"v=0\r\n\xff=\r\n", SdpError::Encoding),
            (b"\r\nv=0o\r\n", SdpError::Version),
        ] {
            assert_eq!(SessionDescription::parse(bad), Err(expect));
        }
        assert_eq!(SessionDescription::parse(&vec![b'a'; MAX_SDP + 1]), Err(SdpError::TooLarge));
    }
}
