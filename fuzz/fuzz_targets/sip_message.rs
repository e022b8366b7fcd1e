//! SIP from the network: the parser, the header accessors, the digest parser,
//! the registrar and the B2BUA must take any bytes without panicking.
//!
//! The input is a sequence of messages separated by NUL bytes; the first byte
//! of each says who sends it (a trunk, or the phone registered as 2001) so
//! that calls from the trunk reach the phone and the phone's answers reach
//! the call. Time advances between messages so that timers run.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use branchgate_gateway::b2bua::{B2bua, CallConfig, RouteRule, TrunkTarget};
use branchgate_sip::digest::{Algorithm, expected_response, parse_credentials};
use branchgate_sip::{Flow, Message, Server, ServerConfig, Transport, UserKeys};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

const TRUNK: &str = "192.0.2.10:5060";
const PHONE: &str = "198.51.100.20:5062";

fn flow(remote: &str) -> Flow {
    Flow { transport: Transport::Udp, local: "0.0.0.0:5060".parse().expect("addr"), remote: remote.parse().expect("addr") }
}

/// A B2BUA with a trunk, a route and user 2001 registered (a real digest handshake).
fn b2bua(now: Instant) -> B2bua {
    let ha1 = hex::encode(Md5::digest(b"2001:fuzz.example:secret"));
    let mut config = ServerConfig::new("fuzz.example");
    config.users.insert("2001".into(), UserKeys { md5: ha1.clone(), sha256: String::new() });
    let mut calls = CallConfig::new("fuzz.example");
    calls.trunks.push(TrunkTarget {
        name: "pstn".into(),
        addr: TRUNK.parse().expect("addr"),
        transport: Transport::Udp,
        priority: 1,
        keepalive: Some(Duration::from_secs(30)),
        credentials: None,
        register: false,
        dtmf_info: false,
    });
    calls.routes.push(RouteRule { prefix: "9".into(), strip: 1, trunk: "pstn".into() });
    let mut b2bua = B2bua::new(Server::new(config, [7; 32], now), calls, [1; 32], now);
    let register = |auth: &str| {
        format!(
            "REGISTER sip:fuzz.example SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK{}\r\nFrom: <sip:2001@fuzz.example>;tag=a\r\n\
To: <sip:2001@fuzz.example>\r\nCall-ID: reg\r\nCSeq: {} REGISTER\r\nContact: <sip:2001@{PHONE}>\r\n{auth}\r\n",
            auth.len(),
            auth.len() + 1
        )
    };
    b2bua.handle_input(now, flow(PHONE), register("").as_bytes());
    let challenge = std::iter::from_fn(|| b2bua.poll_output())
        .filter_map(|o| Message::parse(&o.data).ok())
        .find_map(|m| m.get("WWW-Authenticate").map(str::to_string))
        .expect("challenged");
    let nonce = parse_credentials(&challenge).expect("digest").nonce;
    let mut c = parse_credentials(&format!("Digest uri=\"sip:fuzz.example\", nonce=\"{nonce}\", qop=auth, nc=00000001, cnonce=\"x\""))
        .expect("credentials");
    c.username = "2001".into();
    let response = expected_response(Algorithm::Md5, &ha1, "REGISTER", &c);
    let auth = format!(
        "Authorization: Digest username=\"2001\", realm=\"fuzz.example\", nonce=\"{nonce}\", uri=\"sip:fuzz.example\", \
response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\"\r\n"
    );
    b2bua.handle_input(now, flow(PHONE), register(&auth).as_bytes());
    while b2bua.poll_output().is_some() {}
    b2bua
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.check_mandatory();
        let _ = m.cseq();
        let _ = m.get_all("Via");
        let _ = m.get_all("Contact");
        for line in m.lines("Authorization") {
            let _ = parse_credentials(line);
        }
        let _ = Message::parse(&m.to_bytes());
    }
    static START: OnceLock<Instant> = OnceLock::new();
    let mut now = *START.get_or_init(Instant::now);
    let mut b2bua = b2bua(now);
    assert_eq!(b2bua.sip().registrations(now).len(), 1, "the phone is registered");
    for chunk in data.split(|b| *b == 0) {
        let Some((who, message)) = chunk.split_first() else { continue };
        let source = if who % 2 == 0 { TRUNK } else { PHONE };
        b2bua.handle_input(now, flow(source), message);
        now += Duration::from_millis(u64::from(*who) * 40);
        b2bua.handle_timeout(now);
        while b2bua.poll_output().is_some() {}
        while b2bua.poll_action().is_some() {}
    }
});
