//! RTSP 1.0 (RFC 2326) for non-WebRTC players (VLC, ffplay, NVRs), sans-IO:
//! requests parsed from a connection's bytes, answers decided by a
//! per-connection state machine. The driver ([`crate::rtsp_server`]) owns the
//! sockets and the camera subscription; this module never does IO.
//!
//! What a player gets: `DESCRIBE rtsp://<box>:8554/<camera>` answers an SDP
//! with one H.264 track (the camera's one encode, as WHEP viewers get it);
//! `SETUP` takes RTP over the RTSP connection (`RTP/AVP/TCP;interleaved=`) or
//! over UDP (`client_port=`); `PLAY`, `TEARDOWN`, and `GET_PARAMETER`/
//! `OPTIONS` as keepalives. Everything else gets a clear RTSP error status.

use std::collections::HashMap;

/// The longest request head (request line and headers) a player may send.
pub const MAX_HEAD: usize = 8 * 1024;
/// The longest request body (players send none, or a few parameters).
pub const MAX_BODY: usize = 4 * 1024;
/// What `Session:` announces: a UDP player must send a keepalive within this.
pub const SESSION_TIMEOUT_SECONDS: u64 = 60;
/// The one track's control name, relative to the camera's URL.
pub const TRACK: &str = "trackID=0";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtspError {
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("request body longer than {MAX_BODY} bytes")]
    BodyTooLong,
    #[error("not an RTSP/1.0 request line")]
    BadRequestLine,
    #[error("malformed header line")]
    BadHeader,
    #[error("bad Content-Length")]
    BadLength,
}

/// One request from a player.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub uri: String,
    /// Header names in lower case; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// What the start of a connection's input holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A whole request, and the bytes it took.
    Request(Request, usize),
    /// An interleaved binary frame (`$`, channel, 16-bit length; RFC 2326 §10.12) — a
    /// player's RTCP over TCP — to skip: the bytes it takes.
    Interleaved(usize),
    /// Not enough bytes yet.
    Incomplete,
}

/// Parses what `buf` starts with.
pub fn parse(buf: &[u8]) -> Result<Input, RtspError> {
    if buf.first() == Some(&b'$') {
        let (Some(&high), Some(&low)) = (buf.get(2), buf.get(3)) else { return Ok(Input::Incomplete) };
        let len = 4 + usize::from(u16::from_be_bytes([high, low]));
        return Ok(if buf.len() >= len { Input::Interleaved(len) } else { Input::Incomplete });
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(RtspError::HeadTooLong) } else { Ok(Input::Incomplete) };
    };
    if head_end > MAX_HEAD {
        return Err(RtspError::HeadTooLong);
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| RtspError::BadHeader)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(RtspError::BadRequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(uri), Some("RTSP/1.0"), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RtspError::BadRequestLine);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') || uri.is_empty() {
        return Err(RtspError::BadRequestLine);
    }
    let mut headers = HashMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(RtspError::BadHeader)?;
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            return Err(RtspError::BadHeader);
        }
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    let body_len = match headers.get("content-length") {
        Some(value) => value.parse::<usize>().map_err(|_| RtspError::BadLength)?,
        None => 0,
    };
    if body_len > MAX_BODY {
        return Err(RtspError::BodyTooLong);
    }
    let start = head_end + 4;
    let Some(body) = buf.get(start..start + body_len) else { return Ok(Input::Incomplete) };
    let request = Request { method: method.to_string(), uri: uri.to_string(), headers, body: body.to_vec() };
    Ok(Input::Request(request, start + body_len))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How a player wants the RTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Over the RTSP connection, on these interleaved channels (RTP, RTCP).
    Interleaved(u8, u8),
    /// To the player's address on these UDP ports (RTP, RTCP).
    Udp(u16, u16),
}

impl Transport {
    /// The first transport of a `Transport:` header the box can serve (unicast RTP/AVP).
    pub fn choose(header: &str) -> Option<Transport> {
        header.split(',').find_map(|spec| {
            let mut fields = spec.split(';').map(str::trim);
            let profile = fields.next()?;
            let fields: Vec<&str> = fields.collect();
            if fields.iter().any(|f| f.eq_ignore_ascii_case("multicast")) {
                return None;
            }
            let value = |name: &str| {
                fields
                    .iter()
                    .find_map(|f| f.split_once('=').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
            };
            let pair = |text: &str| -> Option<(u16, u16)> {
                match text.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let a: u16 = text.parse().ok()?;
                        Some((a, a.checked_add(1)?))
                    }
                }
            };
            match profile.to_ascii_uppercase().as_str() {
                "RTP/AVP/TCP" => {
                    let (rtp, rtcp) = value("interleaved").map_or(Some((0, 1)), pair)?;
                    Some(Transport::Interleaved(u8::try_from(rtp).ok()?, u8::try_from(rtcp).ok()?))
                }
                "RTP/AVP" | "RTP/AVP/UDP" => {
                    let (rtp, rtcp) = pair(value("client_port")?)?;
                    (rtp != 0).then_some(Transport::Udp(rtp, rtcp))
                }
                _ => None,
            }
        })
    }
}

/// A response to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            453 => "Not Enough Bandwidth",
            454 => "Session Not Found",
            455 => "Method Not Valid in This State",
            459 => "Aggregate Operation Not Allowed",
            461 => "Unsupported Transport",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "Error",
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = format!("RTSP/1.0 {} {}\r\n", self.status, self.reason());
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Server: branchgate\r\n");
        if !self.body.is_empty() {
            text.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A camera a player may ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Camera {
    pub id: String,
    pub name: String,
}

/// What the driver must do after answering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Start sending `camera`'s video the way SETUP agreed.
    Play {
        camera: String,
        transport: Transport,
    },
    /// Stop sending (the connection may go on).
    Stop,
}

/// The state of one RTSP connection (one session at most).
#[derive(Debug)]
pub struct Connection {
    session: String,
    /// The camera and transport SETUP agreed on.
    setup: Option<(String, Transport)>,
    playing: bool,
}

/// Where a request's URL points: the camera id, and whether it names the track.
fn target(uri: &str) -> Option<(&str, bool)> {
    let rest = uri.strip_prefix("rtsp://").or_else(|| uri.strip_prefix("rtsps://"))?;
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let path = path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/');
    let (camera, track) = match path.rsplit_once('/') {
        Some((camera, TRACK)) => (camera, true),
        Some(_) => return None,
        None => (path, false),
    };
    let valid = !camera.is_empty() && camera.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some((camera, track))
}

/// The methods the box answers (`Public:`).
const METHODS: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER";

impl Connection {
    /// `session`: the id this connection's session will have (random, from the driver).
    pub fn new(session: String) -> Connection {
        Connection { session, setup: None, playing: false }
    }

    pub fn playing(&self) -> bool {
        self.playing
    }

    /// The answer to `request` and what to do after sending it. `cameras` are the
    /// box's cameras now; `server_ports` the UDP ports the driver sends from (RTP, RTCP).
    pub fn handle(&mut self, request: &Request, cameras: &[Camera], server_ports: (u16, u16)) -> (Response, Effect) {
        let Some(cseq) = request.header("CSeq").map(str::to_string) else {
            return (Response::new(400).with("Content-Type", "text/plain"), Effect::None);
        };
        let (mut response, effect) = self.respond(request, cameras, server_ports);
        response.headers.insert(0, ("CSeq", cseq));
        (response, effect)
    }

    fn session_matches(&self, request: &Request) -> bool {
        request.header("Session").is_some_and(|s| s.split(';').next().map(str::trim) == Some(self.session.as_str()))
    }

    fn respond(&mut self, request: &Request, cameras: &[Camera], server_ports: (u16, u16)) -> (Response, Effect) {
        let session_header = format!("{};timeout={SESSION_TIMEOUT_SECONDS}", self.session);
        match request.method.as_str() {
            "OPTIONS" => (Response::new(200).with("Public", METHODS), Effect::None),
            "GET_PARAMETER" => (Response::new(200).with("Session", session_header), Effect::None),
            "DESCRIBE" => {
                let Some((id, false)) = target(&request.uri) else { return (Response::new(404), Effect::None) };
                let Some(camera) = cameras.iter().find(|c| c.id == id) else {
                    return (Response::new(404), Effect::None);
                };
                let base = format!("{}/", request.uri.split(['?', '#']).next().unwrap_or("").trim_end_matches('/'));
                let mut response =
                    Response::new(200).with("Content-Type", "application/sdp").with("Content-Base", base);
                response.body = describe(camera).into_bytes();
                (response, Effect::None)
            }
            "SETUP" => {
                let Some((id, _)) = target(&request.uri) else { return (Response::new(404), Effect::None) };
                if !cameras.iter().any(|c| c.id == id) {
                    return (Response::new(404), Effect::None);
                }
                if request.header("Session").is_some() && !self.session_matches(request) {
                    return (Response::new(454), Effect::None);
                }
                if self.playing {
                    return (Response::new(455), Effect::None);
                }
                let Some(transport) = request.header("Transport").and_then(Transport::choose) else {
                    return (Response::new(461), Effect::None);
                };
                let echoed = match transport {
                    Transport::Interleaved(rtp, rtcp) => format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp}"),
                    Transport::Udp(rtp, rtcp) => format!(
                        "RTP/AVP;unicast;client_port={rtp}-{rtcp};server_port={}-{}",
                        server_ports.0, server_ports.1
                    ),
                };
                self.setup = Some((id.to_string(), transport));
                (Response::new(200).with("Transport", echoed).with("Session", session_header), Effect::None)
            }
            "PLAY" => {
                if !self.session_matches(request) {
                    return (Response::new(454), Effect::None);
                }
                let Some((camera, transport)) = self.setup.clone() else { return (Response::new(455), Effect::None) };
                if target(&request.uri).is_none_or(|(id, _)| id != camera) {
                    return (Response::new(404), Effect::None);
                }
                let effect = if self.playing { Effect::None } else { Effect::Play { camera, transport } };
                self.playing = true;
                let response = Response::new(200).with("Session", session_header).with("Range", "npt=now-");
                (response, effect)
            }
            "PAUSE" | "TEARDOWN" => {
                if !self.session_matches(request) {
                    return (Response::new(454), Effect::None);
                }
                let was_playing = std::mem::take(&mut self.playing);
                if request.method == "TEARDOWN" {
                    self.setup = None;
                }
                let effect = if was_playing { Effect::Stop } else { Effect::None };
                (Response::new(200).with("Session", session_header), effect)
            }
            "ANNOUNCE" | "RECORD" | "SET_PARAMETER" | "REDIRECT" => {
                (Response::new(405).with("Allow", METHODS), Effect::None)
            }
            _ => (Response::new(501).with("Public", METHODS), Effect::None),
        }
    }
}

/// The SDP of a camera's stream: one H.264 track (RFC 6184, packetization mode 1,
/// constrained baseline; SPS/PPS arrive in-band before every keyframe).
fn describe(camera: &Camera) -> String {
    let name: String = camera.name.chars().filter(|c| !c.is_control()).collect();
    format!(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns={}\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=control:*\r\na=range:npt=now-\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n\
a=control:{TRACK}\r\n",
        if name.is_empty() { "camera" } else { name.as_str() }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Input::Request(request, used)) => {
                assert_eq!(used, text.len());
                request
            }
            other => panic!("{other:?}"),
        }
    }

    fn cameras() -> Vec<Camera> {
        vec![Camera { id: "sim0".into(), name: "Simulated camera".into() }]
    }

    #[test]
    fn requests_are_parsed_whole_or_not_at_all() {
        let text = "OPTIONS rtsp://box:8554/sim0 RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: Lavf\r\n\r\n";
        for cut in 0..text.len() {
            assert_eq!(parse(&text.as_bytes()[..cut]), Ok(Input::Incomplete), "cut at {cut}");
        }
        let r = request(text);
        assert_eq!(
            (r.method.as_str(), r.uri.as_str(), r.header("cseq")),
            ("OPTIONS", "rtsp://box:8554/sim0", Some("1"))
        );
        // A body, then the next request's bytes are left alone.
        let two = "SET_PARAMETER rtsp://b/x RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 5\r\n\r\nhelloOPTIONS";
        let used = two.len() - "OPTIONS".len();
        assert!(matches!(parse(two.as_bytes()), Ok(Input::Request(r, n)) if r.body == b"hello" && n == used));
        // An interleaved RTCP frame from the player is skipped whole.
        assert_eq!(parse(&[b'$', 1, 0, 3, 9, 9, 9, b'O']), Ok(Input::Interleaved(7)));
        assert_eq!(parse(&[b'$', 1, 0, 3, 9]), Ok(Input::Incomplete));
    }

    #[test]
    fn bad_requests_are_errors() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(RtspError::BadRequestLine));
        assert_eq!(parse(b"OPTIONS * RTSP/1.0\r\nNoColon\r\n\r\n"), Err(RtspError::BadHeader));
        assert_eq!(parse(b"OPTIONS * RTSP/1.0\r\nContent-Length: x\r\n\r\n"), Err(RtspError::BadLength));
        assert_eq!(parse(b"OPTIONS * RTSP/1.0\r\nContent-Length: 999999\r\n\r\n"), Err(RtspError::BodyTooLong));
        assert_eq!(parse(&vec![b'A'; MAX_HEAD + 1]), Err(RtspError::HeadTooLong));
    }

    #[test]
    fn transports_tcp_udp_and_refused() {
        assert_eq!(Transport::choose("RTP/AVP/TCP;unicast;interleaved=0-1"), Some(Transport::Interleaved(0, 1)));
        assert_eq!(Transport::choose("RTP/AVP;unicast;client_port=5000-5001"), Some(Transport::Udp(5000, 5001)));
        assert_eq!(Transport::choose("RTP/AVP/UDP;unicast;client_port=6000"), Some(Transport::Udp(6000, 6001)));
        assert_eq!(
            Transport::choose("RTP/AVP;multicast, RTP/AVP/TCP;unicast;interleaved=2-3"),
            Some(Transport::Interleaved(2, 3)),
            "the first the box can serve"
        );
        assert_eq!(Transport::choose("RTP/SAVP;unicast;client_port=1-2"), None);
        assert_eq!(Transport::choose("RTP/AVP/TCP;interleaved=300-301"), None);
        assert_eq!(Transport::choose("RTP/AVP;unicast;client_port=0-1"), None);
    }

    #[test]
    fn a_player_describes_sets_up_plays_and_tears_down() {
        let mut connection = Connection::new("4f2a".into());
        let ports = (29970, 29971);
        let (r, _) =
            connection.handle(&request("OPTIONS rtsp://box:8554/sim0 RTSP/1.0\r\nCSeq: 1\r\n\r\n"), &cameras(), ports);
        assert_eq!(r.status, 200);
        assert!(r.headers.contains(&("Public", METHODS.into())));
        let (r, _) =
            connection.handle(&request("DESCRIBE rtsp://box:8554/sim0 RTSP/1.0\r\nCSeq: 2\r\n\r\n"), &cameras(), ports);
        assert_eq!(r.status, 200);
        assert_eq!(r.headers[0], ("CSeq", "2".into()));
        assert!(r.headers.contains(&("Content-Base", "rtsp://box:8554/sim0/".into())));
        let sdp = String::from_utf8(r.body.clone()).expect("sdp");
        assert!(
            sdp.contains("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n") && sdp.contains("a=control:trackID=0")
        );
        let (r, _) = connection.handle(
            &request("PLAY rtsp://box:8554/sim0/ RTSP/1.0\r\nCSeq: 3\r\nSession: 4f2a\r\n\r\n"),
            &cameras(),
            ports,
        );
        assert_eq!(r.status, 455, "PLAY before SETUP");
        let (r, _) = connection.handle(
            &request("SETUP rtsp://box:8554/sim0/trackID=0 RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP;unicast;client_port=7000-7001\r\n\r\n"),
            &cameras(),
            ports,
        );
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains(&("Transport", "RTP/AVP;unicast;client_port=7000-7001;server_port=29970-29971".into()))
        );
        assert!(r.headers.contains(&("Session", format!("4f2a;timeout={SESSION_TIMEOUT_SECONDS}"))));
        let (r, _) = connection.handle(
            &request("PLAY rtsp://box:8554/sim0/ RTSP/1.0\r\nCSeq: 5\r\nSession: other\r\n\r\n"),
            &cameras(),
            ports,
        );
        assert_eq!(r.status, 454, "someone else's session");
        let (r, effect) = connection.handle(
            &request("PLAY rtsp://box:8554/sim0/ RTSP/1.0\r\nCSeq: 6\r\nSession: 4f2a\r\n\r\n"),
            &cameras(),
            ports,
        );
        assert_eq!(r.status, 200);
        assert_eq!(effect, Effect::Play { camera: "sim0".into(), transport: Transport::Udp(7000, 7001) });
        assert!(connection.playing());
        let (r, effect) = connection.handle(
            &request("TEARDOWN rtsp://box:8554/sim0/ RTSP/1.0\r\nCSeq: 7\r\nSession: 4f2a\r\n\r\n"),
            &cameras(),
            ports,
        );
        assert_eq!((r.status, effect), (200, Effect::Stop));
    }

    #[test]
    fn errors_a_player_can_read() {
        let mut connection = Connection::new("s".into());
        let ports = (1, 2);
        let status = |c: &mut Connection, text: &str| c.handle(&request(text), &cameras(), ports).0.status;
        assert_eq!(status(&mut connection, "DESCRIBE rtsp://box/nope RTSP/1.0\r\nCSeq: 1\r\n\r\n"), 404);
        assert_eq!(status(&mut connection, "DESCRIBE rtsp://box/../etc RTSP/1.0\r\nCSeq: 1\r\n\r\n"), 404);
        assert_eq!(status(&mut connection, "DESCRIBE rtsp://box/sim0 RTSP/1.0\r\n\r\n"), 400, "no CSeq");
        assert_eq!(status(&mut connection, "RECORD rtsp://box/sim0 RTSP/1.0\r\nCSeq: 1\r\n\r\n"), 405);
        assert_eq!(status(&mut connection, "FLY rtsp://box/sim0 RTSP/1.0\r\nCSeq: 1\r\n\r\n"), 501);
        assert_eq!(
            status(
                &mut connection,
                "SETUP rtsp://box/sim0/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP;multicast\r\n\r\n"
            ),
            461
        );
    }
}
