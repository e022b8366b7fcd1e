//! SIP messages (RFC 3261 §7, §25): a parser that keeps every header's raw
//! text, so that what passes through the box is changed only where the box
//! means to change it, and a serializer.

use std::fmt;

/// A header as received: its name as written and its raw value (folding undone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no end of headers")]
    Incomplete,
    #[error("malformed start line: {0}")]
    StartLine(String),
    #[error("SIP version {0} is not supported")]
    Version(String),
    #[error("malformed header line: {0}")]
    Header(String),
    #[error("Content-Length {declared} does not match the {actual} bytes of body")]
    ContentLength { declared: usize, actual: usize },
    #[error("missing mandatory header {0}")]
    Missing(&'static str),
    #[error("not UTF-8 in the headers")]
    Encoding,
}

/// Compact header forms (RFC 3261 §7.3.3 and later RFCs) and their long names.
const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// The long form of a header name (compact forms expanded), for comparisons.
pub fn canonical_name(name: &str) -> &str {
    COMPACT.iter().find(|(short, _)| short.eq_ignore_ascii_case(name)).map(|(_, long)| *long).unwrap_or(name)
}

fn same_header(a: &str, b: &str) -> bool {
    canonical_name(a).eq_ignore_ascii_case(canonical_name(b))
}

/// Splits a header value at commas that separate values (not inside quotes or <>).
pub fn split_values(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped, mut start) = (false, false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|v| !v.is_empty());
    out
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

impl Message {
    /// Parses one message from a datagram (or a framed stream message).
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        // Leading CRLFs are keep-alives or stream padding (RFC 3261 §7.5).
        let mut bytes = bytes;
        while bytes.starts_with(b"\r\n") {
            bytes = &bytes[2..];
        }
        let (head_end, body_start) = match find(bytes, b"\r\n\r\n") {
            Some(i) => (i, i + 4),
            None => match find(bytes, b"\n\n") {
                Some(i) => (i, i + 2),
                None => return Err(ParseError::Incomplete),
            },
        };
        let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::Encoding)?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next().unwrap_or("");
        let start = parse_start_line(first)?;
        let mut headers: Vec<Header> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                // Folded continuation (RFC 3261 §7.3.1): joined with one space.
                let Some(last) = headers.last_mut() else {
                    return Err(ParseError::Header(line.to_string()));
                };
                last.value.push(' ');
                last.value.push_str(line.trim());
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(ParseError::Header(line.to_string()));
            };
            let name = name.trim_end();
            if !is_token(name) {
                return Err(ParseError::Header(line.to_string()));
            }
            headers.push(Header { name: name.to_string(), value: value.trim().to_string() });
        }
        let mut body = bytes[body_start..].to_vec();
        let message = Message { start, headers, body: Vec::new() };
        // Two lengths make the framing ambiguous (RFC 4475 §3.3.9).
        if message.lines("Content-Length").count() > 1 {
            return Err(ParseError::Header("more than one Content-Length".into()));
        }
        if let Some(declared) = message.get("Content-Length") {
            let declared: usize =
                declared.trim().parse().map_err(|_| ParseError::Header(format!("Content-Length: {declared}")))?;
            if declared > body.len() {
                return Err(ParseError::ContentLength { declared, actual: body.len() });
            }
            // Extra bytes after the declared body are ignored (RFC 3261 §18.3).
            body.truncate(declared);
        }
        let mut message = message;
        message.body = body;
        Ok(message)
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| same_header(&h.name, name)).map(|h| h.value.as_str())
    }

    /// Every value of a header, across repeated lines and comma lists.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|h| same_header(&h.name, name)).flat_map(|h| split_values(&h.value)).collect()
    }

    /// Every header line of that name (values not split: for Authorization and the like).
    pub fn lines(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers.iter().filter(move |h| same_header(&h.name, name)).map(|h| h.value.as_str())
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let value = self.get("CSeq")?;
        let mut parts = value.split_whitespace();
        Some((parts.next()?.parse().ok()?, parts.next()?))
    }

    /// A request must carry these to be answered at all (RFC 3261 §8.1.1).
    pub fn check_mandatory(&self) -> Result<(), ParseError> {
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if self.get(name).is_none() {
                return Err(ParseError::Missing(name));
            }
        }
        if self.cseq().is_none() {
            return Err(ParseError::Header("CSeq".into()));
        }
        Ok(())
    }

    /// Checks a request beyond the grammar of its lines: what RFC 3261 and
    /// RFC 4475 expect a server to refuse, as the status code and reason to
    /// answer with (416 for a Request-URI scheme the box does not serve, 400
    /// otherwise).
    pub fn validate_request(&self) -> Result<(), (u16, String)> {
        let StartLine::Request { uri, .. } = &self.start else { return Ok(()) };
        let scheme = uri.split(':').next().unwrap_or("");
        if uri.starts_with('<') {
            return Err((400, "the Request-URI must not be enclosed in <>".into()));
        }
        if !["sip", "sips", "tel"].iter().any(|s| s.eq_ignore_ascii_case(scheme)) || !uri.contains(':') {
            return Err((416, format!("unsupported URI scheme {scheme:?}")));
        }
        // `?` may be part of the user (RFC 3261 user-unreserved); after the host it starts headers.
        if uri.rsplit_once('@').map_or(uri.as_str(), |(_, host)| host).contains('?') {
            return Err((400, "headers are not allowed in the Request-URI".into()));
        }
        for name in ["From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type", "Expires"] {
            let values = self.lines(name).flat_map(split_values).count();
            if values > 1 {
                return Err((400, format!("{name} must appear once")));
            }
        }
        for name in ["From", "To", "Contact"] {
            for value in self.lines(name) {
                if !quotes_balance(value) {
                    return Err((400, format!("unbalanced quotes in {name}")));
                }
            }
        }
        for via in self.lines("Via") {
            for value in split_values(via) {
                let mut params = value.split(';');
                let sent = params.next().unwrap_or("");
                let protocol: String = sent.chars().filter(|c| !c.is_whitespace()).collect();
                if !protocol.to_ascii_uppercase().starts_with("SIP/2.0/") || params.any(|p| p.trim().is_empty()) {
                    return Err((400, format!("malformed Via {value:?}")));
                }
            }
            if via.trim_end().ends_with(',') || via.contains(",,") {
                return Err((400, "empty Via value".into()));
            }
        }
        Ok(())
    }

    /// A response to this request with the headers RFC 3261 §8.2.6.2 copies.
    pub fn response(&self, code: u16, reason: &str) -> Message {
        let mut headers = Vec::new();
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for h in self.headers.iter().filter(|h| same_header(&h.name, name)) {
                headers.push(Header { name: canonical_name(&h.name).to_string(), value: h.value.clone() });
            }
        }
        Message { start: StartLine::Response { code, reason: reason.to_string() }, headers, body: Vec::new() }
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push(Header { name: name.to_string(), value: value.into() });
    }

    /// Replaces the first header of that name (or adds it).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        match self.headers.iter_mut().find(|h| same_header(&h.name, name)) {
            Some(h) => h.value = value.into(),
            None => self.push(name, value),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.start {
            StartLine::Request { method, uri } => write!(f, "{method} {uri} SIP/2.0\r\n")?,
            StartLine::Response { code, reason } => write!(f, "SIP/2.0 {code} {reason}\r\n")?,
        }
        for h in self.headers.iter().filter(|h| !same_header(&h.name, "Content-Length")) {
            write!(f, "{}: {}\r\n", h.name, h.value)?;
        }
        write!(f, "Content-Length: {}\r\n\r\n", self.body.len())?;
        f.write_str(&String::from_utf8_lossy(&self.body))
    }
}

impl Message {
    /// The wire form; the body goes out byte for byte (it need not be UTF-8).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head =
            Message { start: self.start.clone(), headers: self.headers.clone(), body: Vec::new() }.to_string();
        // `head` ends with a Content-Length of 0 from the empty body: put the real one.
        let marker = "Content-Length: 0\r\n\r\n";
        if head.ends_with(marker) {
            head.truncate(head.len() - marker.len());
            head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        }
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Largest SIP message accepted on a stream.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// How many bytes of a TCP/TLS stream make the next frame: a run of CRLFs
/// (keep-alive, RFC 5626 §3.5.1) or a whole message (headers + Content-Length
/// body). `Ok(None)`: not enough yet; `Err(())`: unusable stream, close it.
#[allow(clippy::result_unit_err)]
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let crlfs = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    if crlfs > 0 {
        return Ok(Some(crlfs));
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_MESSAGE { Err(()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ())?;
    let length = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| canonical_name(name.trim()).eq_ignore_ascii_case("Content-Length"))
        .map(|(_, value)| value.trim().parse::<usize>().map_err(|_| ()))
        .transpose()?
        .unwrap_or(0);
    if length > MAX_MESSAGE {
        return Err(());
    }
    let total = end + 4 + length;
    if total > MAX_MESSAGE {
        return Err(());
    }
    Ok((buf.len() >= total).then_some(total))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let bad = || ParseError::StartLine(line.chars().take(80).collect());
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| bad())?;
        if !(100..=699).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response { code, reason: reason.to_string() });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !is_token(method) || uri.is_empty() {
        return Err(bad());
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        let looks_like_sip = version.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
        return Err(if looks_like_sip { ParseError::Version(version.to_string()) } else { bad() });
    }
    Ok(StartLine::Request { method: method.to_string(), uri: uri.to_string() })
}

/// Whether the double quotes of a header value pair up (backslash escapes inside quotes count).
fn quotes_balance(value: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

/// A parameter of a header value or URI: `;name=value` (value unquoted).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4475 §3.1.1.1, "A Short Tortuous INVITE" (trimmed to its header forms).
    const TORTUOUS: &str = "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
Content-Length   : 150\r\n\
cseq: 0009\r\n  INVITE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Type: application/sdp\r\n\
Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\
\r\n\
v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n";

    #[test]
    fn rfc4475_short_tortuous_invite() {
        let m = Message::parse(TORTUOUS.as_bytes()).expect("valid");
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.get("Call-ID"), Some("wsinv.ndaksdj@192.0.2.1"));
        assert_eq!(m.cseq(), Some((9, "INVITE")));
        assert_eq!(m.get_all("Via").len(), 3, "one Via line plus a compact line with two values");
        assert_eq!(m.get("Max-Forwards"), Some("0068"));
        assert_eq!(m.get("Subject"), Some(""));
        assert!(m.get("NewFangledHeader").is_some_and(|v| v.contains("continued newfangled value")));
        assert_eq!(m.body.len(), 150);
        assert!(m.get("Contact").is_some_and(|c| c.contains("<sip:jdrosen@example.com>")));
        m.check_mandatory().expect("all there");
    }

    #[test]
    fn rfc3261_register_example_round_trips() {
        let text = "REGISTER sip:registrar.biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.com>\r\nFrom: Bob <sip:bob@biloxi.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\nCSeq: 1826 REGISTER\r\nContact: <sip:bob@192.0.2.4>\r\n\
Expires: 7200\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(text.as_bytes()).expect("parse");
        assert_eq!(m.cseq(), Some((1826, "REGISTER")));
        assert_eq!(param(m.get("From").expect("from"), "tag"), Some("456248"));
        let again = Message::parse(&m.to_bytes()).expect("reparse");
        assert_eq!(again, m);
        let ok = m.response(200, "OK");
        assert_eq!(ok.get("CSeq"), Some("1826 REGISTER"));
        assert!(ok.to_string().starts_with("SIP/2.0 200 OK\r\n"));
    }

    #[test]
    fn invalid_messages_are_refused_with_a_reason() {
        for bad in [
            &b"INVITE sip:a@b SIP/7.0\r\nVia: x\r\n\r\n"[..],
            b"INVITE  sip:a@b SIP/2.0\r\n\r\n",
            b"SIP/2.0 99 Too Low\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\n",
        ] {
            assert!(Message::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let missing = Message::parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n").expect("parses");
        assert_eq!(missing.check_mandatory(), Err(ParseError::Missing("From")));
    }

    #[test]
    fn stream_framing() {
        let one = b"OPTIONS sip:a SIP/2.0\r\nl: 4\r\n\r\nbodyNEXT";
        assert_eq!(frame_len(one), Ok(Some(one.len() - 4)));
        assert_eq!(frame_len(&one[..20]), Ok(None));
        assert_eq!(frame_len(b"\r\n\r\nOPTIONS"), Ok(Some(4)));
        assert_eq!(frame_len(b"A\r\nContent-Length: x\r\n\r\n"), Err(()));
        assert_eq!(frame_len(&vec![b'a'; MAX_MESSAGE + 1]), Err(()));
        assert_eq!(frame_len(b"A\r\nl: 18446744073709551586\r\n\r\n"), Err(()), "no wrap-around");
    }

    #[test]
    fn values_split_outside_quotes_and_brackets() {
        assert_eq!(
            split_values(r#""a, b" <sip:x@y;p=1,2>, <sip:z@w>"#),
            vec![r#""a, b" <sip:x@y;p=1,2>"#, "<sip:z@w>"]
        );
    }
}
