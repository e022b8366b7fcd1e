//! STUN messages (RFC 8489, compatible with RFC 5389 clients): a zero-copy
//! reader over a received datagram and a writer for responses.
//!
//! The reader never allocates: attributes are found by walking the TLVs of
//! the borrowed bytes. Integrity and fingerprint checks hash the bytes in
//! place, with the header's length field adjusted as the RFC requires.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 5780 SOFTWARE etc.).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// RFC 8656 §18.12: which family of a dual allocation failed, and why.
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// The code points of the IPv6 draft (draft-ietf-tram-turn-ipv6) that coturn 4.6
    /// (`turnutils_uclient -Z`) still sends and reads: accepted beside RFC 8656's, answered in kind.
    pub const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
    pub const ADDRESS_ERROR_CODE_DRAFT: u16 = 0x8033;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// RFC 6062 §6.2.1.
    pub const CONNECTION_ID: u16 = 0x002A;

    /// Comprehension-required attributes lie in 0x0000-0x7FFF (RFC 8489 §14).
    pub fn comprehension_required(kind: u16) -> bool {
        kind < 0x8000
    }

    /// The comprehension-required attributes this server understands.
    pub fn understood(kind: u16) -> bool {
        matches!(
            kind,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | CONNECTION_ID
        )
    }
}

/// Methods (RFC 8489 §18.2, RFC 8656 §17).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    /// RFC 6062 TCP allocations.
    pub const CONNECT: u16 = 0x00A;
    pub const CONNECTION_BIND: u16 = 0x00B;
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }
}

/// The message type field: class bits interleaved with the method bits (RFC 8489 §5).
pub fn message_type(class: Class, method: u16) -> u16 {
    let m = method & 0x0FFF;
    ((m & 0x0F80) << 2) | ((m & 0x0070) << 1) | (m & 0x000F) | class.bits()
}

fn split_type(kind: u16) -> (Class, u16) {
    let class = match kind & 0x0110 {
        0x000 => Class::Request,
        0x010 => Class::Indication,
        0x100 => Class::Success,
        _ => Class::Error,
    };
    let method = ((kind & 0x3E00) >> 2) | ((kind & 0x00E0) >> 1) | (kind & 0x000F);
    (class, method)
}

/// Address family values of REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY and
/// ADDRESS-ERROR-CODE (RFC 8656 §18.6, §18.11, §18.12).
pub mod family {
    pub const IPV4: u8 = 0x01;
    pub const IPV6: u8 = 0x02;
}

/// A decoded ADDRESS-ERROR-CODE (RFC 8656 §18.12): the family that could not be
/// allocated, the error code and its reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressError<'a> {
    pub family: u8,
    pub code: u16,
    pub reason: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not a STUN message (first bits or magic cookie)")]
    NotStun,
    #[error("length field does not match the datagram")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    BadAttribute,
    #[error("malformed address attribute")]
    BadAddress,
}

/// A received STUN message borrowing the datagram.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    pub class: Class,
    pub method: u16,
}

/// One attribute: its type, its value, and where it starts in the message.
#[derive(Clone, Copy, Debug)]
pub struct Attribute<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    pub offset: usize,
}

/// Quick test for demultiplexing: does this datagram look like STUN?
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && bytes[0] & 0xC0 == 0
        && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == MAGIC_COOKIE
}

impl<'a> Message<'a> {
    /// Checks the header and that the attributes tile the body exactly.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, StunError> {
        if bytes.len() < HEADER_LEN {
            return Err(StunError::TooShort);
        }
        if !is_stun(bytes) {
            return Err(StunError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
            return Err(StunError::BadLength);
        }
        let (class, method) = split_type(u16::from_be_bytes([bytes[0], bytes[1]]));
        let message = Message { bytes, class, method };
        // Walk once so that later lookups can trust the layout.
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            if at + 4 > bytes.len() {
                return Err(StunError::BadAttribute);
            }
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let padded = (len + 3) & !3;
            if at + 4 + padded > bytes.len() {
                return Err(StunError::BadAttribute);
            }
            at += 4 + padded;
        }
        Ok(message)
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.bytes[8..20]);
        id
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        let bytes = self.bytes;
        let mut at = HEADER_LEN;
        std::iter::from_fn(move || {
            if at + 4 > bytes.len() {
                return None;
            }
            let kind = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let value = bytes.get(at + 4..at + 4 + len)?;
            let attribute = Attribute { kind, value, offset: at };
            at += 4 + ((len + 3) & !3);
            Some(attribute)
        })
    }

    /// The first attribute of `kind` before MESSAGE-INTEGRITY (RFC 8489 §14.5:
    /// attributes after it, other than FINGERPRINT, are ignored).
    pub fn get(&self, kind: u16) -> Option<Attribute<'a>> {
        self.attributes()
            .take_while(|a| {
                a.kind == kind
                    || (a.kind != attr::MESSAGE_INTEGRITY
                        && a.kind != attr::MESSAGE_INTEGRITY_SHA256
                        && a.kind != attr::FINGERPRINT)
            })
            .find(|a| a.kind == kind)
    }

    pub fn all(&self, kind: u16) -> impl Iterator<Item = Attribute<'a>> + 'a {
        self.attributes()
            .take_while(|a| {
                a.kind != attr::MESSAGE_INTEGRITY
                    && a.kind != attr::MESSAGE_INTEGRITY_SHA256
                    && a.kind != attr::FINGERPRINT
            })
            .filter(move |a| a.kind == kind)
    }

    pub fn text(&self, kind: u16) -> Option<&'a str> {
        self.get(kind).and_then(|a| std::str::from_utf8(a.value).ok())
    }

    pub fn u32(&self, kind: u16) -> Option<u32> {
        self.get(kind).and_then(|a| a.value.try_into().ok()).map(u32::from_be_bytes)
    }

    /// An XOR-*-ADDRESS attribute decoded (RFC 8489 §14.2).
    pub fn xor_address(&self, kind: u16) -> Option<Result<SocketAddr, StunError>> {
        self.get(kind).map(|a| decode_xor_address(a.value, &self.transaction_id()))
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12, or the IPv6 draft's code point): family (8 bits),
    /// 13 reserved bits, the code's class (3 bits) and number (8 bits), then a UTF-8 reason.
    pub fn address_error_code(&self) -> Option<Result<AddressError<'a>, StunError>> {
        self.get(attr::ADDRESS_ERROR_CODE).or_else(|| self.get(attr::ADDRESS_ERROR_CODE_DRAFT)).map(|a| {
            let [family, _, class, number, ..] = *a.value else {
                return Err(StunError::BadAttribute);
            };
            let class = u16::from(class & 0x07);
            if !(3..=6).contains(&class) || number > 99 {
                return Err(StunError::BadAttribute);
            }
            let reason = std::str::from_utf8(&a.value[4..]).map_err(|_| StunError::BadAttribute)?;
            Ok(AddressError { family, code: class * 100 + u16::from(number), reason })
        })
    }

    /// Comprehension-required attributes this server does not know (for 420).
    pub fn unknown_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.attributes().map(|a| a.kind).filter(|k| attr::comprehension_required(*k) && !attr::understood(*k))
    }

    /// Verifies FINGERPRINT if present: `Some(true/false)`, `None` when absent.
    pub fn fingerprint_ok(&self) -> Option<bool> {
        let a = self.attributes().find(|a| a.kind == attr::FINGERPRINT)?;
        let expected = u32::from_be_bytes(a.value.try_into().ok()?);
        Some(fingerprint(self.bytes, a.offset) == expected)
    }

    pub fn has(&self, kind: u16) -> bool {
        self.attributes().any(|a| a.kind == kind)
    }

    /// Verifies MESSAGE-INTEGRITY (HMAC-SHA1) with `key`; false when absent or wrong.
    pub fn integrity_ok(&self, key: &[u8]) -> bool {
        let Some(a) = self.attributes().find(|a| a.kind == attr::MESSAGE_INTEGRITY) else {
            return false;
        };
        a.value.len() == 20 && constant_time_eq(&hmac_sha1(self.bytes, a.offset, 24, key), a.value)
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 (which may be truncated to 16..32 bytes).
    pub fn integrity_sha256_ok(&self, key: &[u8]) -> bool {
        let Some(a) = self.attributes().find(|a| a.kind == attr::MESSAGE_INTEGRITY_SHA256) else {
            return false;
        };
        let n = a.value.len();
        (16..=32).contains(&n)
            && n % 4 == 0
            && constant_time_eq(&hmac_sha256(self.bytes, a.offset, 4 + ((n + 3) & !3), key)[..n], a.value)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The header with its length field set as if the message ended after an
/// attribute of `attr_total` bytes starting at `offset`.
fn adjusted_header(bytes: &[u8], offset: usize, attr_total: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&bytes[..HEADER_LEN]);
    let length = (offset + attr_total - HEADER_LEN) as u16;
    header[2..4].copy_from_slice(&length.to_be_bytes());
    header
}

fn hmac_sha1(bytes: &[u8], offset: usize, attr_total: usize, key: &[u8]) -> [u8; 20] {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return [0; 20];
    };
    mac.update(&adjusted_header(bytes, offset, attr_total));
    mac.update(&bytes[HEADER_LEN..offset]);
    mac.finalize().into_bytes().into()
}

fn hmac_sha256(bytes: &[u8], offset: usize, attr_total: usize, key: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(&adjusted_header(bytes, offset, attr_total));
    mac.update(&bytes[HEADER_LEN..offset]);
    mac.finalize().into_bytes().into()
}

fn fingerprint(bytes: &[u8], offset: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&adjusted_header(bytes, offset, 8));
    hasher.update(&bytes[HEADER_LEN..offset]);
    hasher.finalize() ^ FINGERPRINT_XOR
}

pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Result<SocketAddr, StunError> {
    if value.len() < 4 {
        return Err(StunError::BadAddress);
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (value[1], value.len()) {
        (0x01, 8) => {
            let raw = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(raw)), port))
        }
        (0x02, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction_id);
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ key[i];
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        _ => Err(StunError::BadAddress),
    }
}

/// Writes `addr` XOR-encoded into `out` (8 or 20 bytes); returns the length.
pub fn encode_xor_address(addr: SocketAddr, transaction_id: &[u8; 12], out: &mut [u8; 20]) -> usize {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(v4) => {
            out[1] = 0x01;
            out[4..8].copy_from_slice(&(u32::from(v4) ^ MAGIC_COOKIE).to_be_bytes());
            8
        }
        IpAddr::V6(v6) => {
            out[1] = 0x02;
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction_id);
            for (i, o) in v6.octets().iter().enumerate() {
                out[4 + i] = o ^ key[i];
            }
            20
        }
    }
}

/// Builds a message into a caller-provided buffer (reused across packets).
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    transaction_id: [u8; 12],
}

impl<'b> Writer<'b> {
    /// Appends a header to `buf` (which may already hold bytes, e.g. headroom).
    pub fn new(buf: &'b mut Vec<u8>, class: Class, method: u16, transaction_id: [u8; 12]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        Writer { buf, start, transaction_id }
    }

    fn set_length(&mut self) {
        let length = (self.buf.len() - self.start - HEADER_LEN) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&length.to_be_bytes());
    }

    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_length();
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    pub fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let mut value = [0u8; 20];
        let n = encode_xor_address(addr, &self.transaction_id, &mut value);
        self.attr(kind, &value[..n])
    }

    /// ERROR-CODE (RFC 8489 §14.8): class and number, and a reason phrase.
    pub fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut value = Vec::with_capacity(4 + reason.len());
        value.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        value.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &value)
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12) as attribute `kind` (the RFC's or the draft's):
    /// `family` could not be allocated, with `code`.
    pub fn address_error(&mut self, kind: u16, family: u8, code: u16, reason: &str) -> &mut Self {
        let mut value = Vec::with_capacity(4 + reason.len());
        value.extend_from_slice(&[family, 0, (code / 100) as u8, (code % 100) as u8]);
        value.extend_from_slice(reason.as_bytes());
        self.attr(kind, &value)
    }

    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let offset = self.buf.len() - self.start;
        let mac = hmac_sha1(&self.buf[self.start..], offset, 24, key);
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }

    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let offset = self.buf.len() - self.start;
        let mac = hmac_sha256(&self.buf[self.start..], offset, 36, key);
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    pub fn fingerprint(&mut self) -> &mut Self {
        let offset = self.buf.len() - self.start;
        let crc = fingerprint(&self.buf[self.start..], offset);
        self.u32(attr::FINGERPRINT, crc)
    }
}

/// The reason phrase the server sends with each error code.
pub fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let clean: String = text.split_whitespace().collect();
        (0..clean.len()).step_by(2).map(|i| u8::from_str_radix(&clean[i..i + 2], 16).expect("hex")).collect()
    }

    const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    /// RFC 5769 §2.1: sample request.
    fn rfc5769_request() -> Vec<u8> {
        hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
             00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
             00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
             9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
             80 28 00 04 e5 7a 3b cf")
    }

    #[test]
    fn rfc5769_sample_request() {
        let bytes = rfc5769_request();
        let m = Message::parse(&bytes).expect("parse");
        assert_eq!((m.class, m.method), (Class::Request, method::BINDING));
        assert_eq!(m.text(attr::SOFTWARE), Some("STUN test client"));
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert!(m.integrity_ok(PASSWORD), "short-term key is the password");
        assert!(!m.integrity_ok(b"wrong"));
        assert_eq!(m.fingerprint_ok(), Some(true));
        let mut tampered = bytes.clone();
        tampered[40] ^= 1;
        let m = Message::parse(&tampered).expect("parse");
        assert!(!m.integrity_ok(PASSWORD));
        assert_eq!(m.fingerprint_ok(), Some(false));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let bytes = hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 08
             00 01 a1 47 e1 12 a6 43 00 08 00 14 2b 91 f5 99 fd 9e 90 c3
             8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7 80 28 00 04 c0 7d 4c 96");
        let m = Message::parse(&bytes).expect("parse");
        assert_eq!(m.class, Class::Success);
        let mapped = m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("present").expect("valid");
        assert_eq!(mapped, "192.0.2.1:32853".parse().expect("addr"));
        assert!(m.integrity_ok(PASSWORD));
        assert_eq!(m.fingerprint_ok(), Some(true));
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let bytes = hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 14
             00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
             00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75
             bf e3 ed 41 80 28 00 04 c8 fb 0b 4c");
        let m = Message::parse(&bytes).expect("parse");
        let mapped = m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("present").expect("valid");
        assert_eq!(mapped, "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().expect("addr"));
        assert!(m.integrity_ok(PASSWORD));
        assert_eq!(m.fingerprint_ok(), Some(true));
    }

    #[test]
    fn rfc5769_long_term_request() {
        let bytes = hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
             00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3
             82 b9 00 00 00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36
             4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 14 00 0b
             65 78 61 6d 70 6c 65 2e 6f 72 67 00 00 08 00 14 f6 70 24 65
             6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66");
        let m = Message::parse(&bytes).expect("parse");
        assert_eq!(m.text(attr::REALM), Some("example.org"));
        assert_eq!(m.text(attr::NONCE), Some("f//499k954d6OL34oL9FSTvy64sA"));
        let username = m.text(attr::USERNAME).expect("username");
        let key = crate::auth::long_term_key(username, "example.org", "TheMatrIX");
        assert!(m.integrity_ok(&key));
    }

    /// RFC 8489 Appendix B.1 with errata 6268 (the corrected USERHASH and integrity).
    #[test]
    fn rfc8489_sha256_request() {
        let bytes = hex("00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
             00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
             24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
             00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f
             34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76
             79 36 34 73 41 00 00 00
             00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
             00 1d 00 04 00 02 00 00
             00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24
             13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65");
        let m = Message::parse(&bytes).expect("parse");
        assert!(m.has(attr::USERHASH));
        let key = crate::auth::long_term_key_sha256(
            "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
            "example.org",
            "TheMatrIX",
        );
        assert!(m.integrity_sha256_ok(&key));
        let userhash = m.get(attr::USERHASH).expect("userhash").value;
        assert_eq!(userhash, crate::auth::userhash("\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}", "example.org"));
    }

    #[test]
    fn written_messages_verify() {
        let mut buf = Vec::new();
        let id = [7u8; 12];
        Writer::new(&mut buf, Class::Success, method::ALLOCATE, id)
            .xor_address(attr::XOR_RELAYED_ADDRESS, "[2001:db8::1]:50000".parse().expect("addr"))
            .xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.7:4000".parse().expect("addr"))
            .u32(attr::LIFETIME, 600)
            .attr(attr::SOFTWARE, b"x")
            .integrity(b"key")
            .fingerprint();
        let m = Message::parse(&buf).expect("parse");
        assert_eq!((m.class, m.method), (Class::Success, method::ALLOCATE));
        assert_eq!(m.u32(attr::LIFETIME), Some(600));
        assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS), Some(Ok("[2001:db8::1]:50000".parse().expect("addr"))));
        assert!(m.integrity_ok(b"key"));
        assert_eq!(m.fingerprint_ok(), Some(true));
        let mut buf = Vec::new();
        Writer::new(&mut buf, Class::Error, method::ALLOCATE, id).error(438, "Stale Nonce").integrity_sha256(b"k");
        let m = Message::parse(&buf).expect("parse");
        assert!(m.integrity_sha256_ok(b"k"));
        assert_eq!(m.get(attr::ERROR_CODE).map(|a| a.value[2..4].to_vec()), Some(vec![4, 38]));
    }

    #[test]
    fn address_error_code_round_trips_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        Writer::new(&mut buf, Class::Success, method::ALLOCATE, [3; 12]).address_error(
            attr::ADDRESS_ERROR_CODE,
            family::IPV6,
            440,
            "Address Family not Supported",
        );
        // Type 0x8001, length 4 + 28, family 0x02, reserved, class 4, number 40.
        assert_eq!(buf[20..28], [0x80, 0x01, 0x00, 0x20, 0x02, 0x00, 0x04, 0x28]);
        let m = Message::parse(&buf).expect("parse");
        assert_eq!(
            m.address_error_code(),
            Some(Ok(AddressError { family: family::IPV6, code: 440, reason: "Address Family not Supported" }))
        );
        assert!(!attr::comprehension_required(attr::ADDRESS_ERROR_CODE));
        for bad in [&[0x02, 0x00, 0x04][..], &[0x02, 0x00, 0x02, 0x28], &[0x02, 0x00, 0x04, 100], &[2, 0, 4, 40, 0xFF]]
        {
            let mut buf = Vec::new();
            Writer::new(&mut buf, Class::Success, method::ALLOCATE, [3; 12]).attr(attr::ADDRESS_ERROR_CODE, bad);
            let m = Message::parse(&buf).expect("parse");
            assert_eq!(m.address_error_code(), Some(Err(StunError::BadAttribute)), "{bad:?}");
        }
        let mut buf = Vec::new();
        Writer::new(&mut buf, Class::Success, method::ALLOCATE, [3; 12]);
        assert_eq!(Message::parse(&buf).expect("parse").address_error_code(), None);
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        assert_eq!(Message::parse(&[0; 10]).err(), Some(StunError::TooShort));
        let mut bytes = rfc5769_request();
        bytes[3] = 0x59;
        assert_eq!(Message::parse(&bytes).err(), Some(StunError::BadLength));
        let mut bytes = rfc5769_request();
        bytes[23] = 0xff; // first attribute claims to be huge
        assert_eq!(Message::parse(&bytes).err(), Some(StunError::BadAttribute));
        let mut bytes = rfc5769_request();
        bytes[4] = 0;
        assert_eq!(Message::parse(&bytes).err(), Some(StunError::NotStun));
    }

    #[test]
    fn type_bits_round_trip() {
        for method in [method::BINDING, method::ALLOCATE, method::CHANNEL_BIND, 0xFFF] {
            for class in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                assert_eq!(split_type(message_type(class, method)), (class, method));
            }
        }
        assert_eq!(message_type(Class::Success, method::BINDING), 0x0101);
        assert_eq!(message_type(Class::Error, method::ALLOCATE), 0x0113);
    }
}
