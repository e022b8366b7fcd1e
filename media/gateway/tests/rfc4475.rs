//! RFC 4475's torture messages (the RFC's own bytes, from its Appendix A
//! archive: tests/rfc4475/, indexed by INDEX.tsv) sent to the box's SIP
//! front (endpoint + B2BUA), with what the RFC expects of a server.

use std::time::Instant;

use branchgate_gateway::b2bua::{B2bua, CallConfig};
use branchgate_sip::{Flow, Message, Server, ServerConfig, StartLine, Transport};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rfc4475");

/// (file, expected: "valid" | "invalid" | "semantic").
fn cases() -> Vec<(String, String)> {
    let index = std::fs::read_to_string(format!("{DIR}/INDEX.tsv")).expect("INDEX.tsv");
    index
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols[0].to_string(), cols[3].to_string())
        })
        .collect()
}

/// The status codes the box answers a datagram with.
fn answers(bytes: &[u8]) -> Vec<u16> {
    let flow = Flow {
        transport: Transport::Udp,
        local: "127.0.0.1:5060".parse().expect("addr"),
        remote: "192.0.2.1:5060".parse().expect("addr"),
    };
    let now = Instant::now();
    let server = Server::new(ServerConfig::new("example.com"), [3; 32], now);
    let mut b2bua = B2bua::new(server, CallConfig::new("example.com"), [7; 32], now);
    b2bua.handle_input(now, flow, bytes);
    std::iter::from_fn(|| b2bua.poll_output())
        .filter_map(|o| Message::parse(&o.data).ok())
        .filter_map(|m| match m.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        })
        .filter(|code| *code != 100)
        .collect()
}

/// What the box answers each message with. Where RFC 4475 allows a liberal
/// reading (ignore a bad Date, infer <>), the box is liberal, and requests it
/// serves only to authenticated users are challenged first.
const EXPECTED: &[(&str, &[u16])] = &[
    ("3.1.1.1-wsinv.sip", &[481]), // to-tagged INVITE of no dialog
    ("3.1.1.2-intmeth.sip", &[501]),
    ("3.1.1.3-esc01.sip", &[407]),
    ("3.1.1.4-escnull.sip", &[401]),
    ("3.1.1.5-esc02.sip", &[501]),
    ("3.1.1.6-lwsdisp.sip", &[200]),
    ("3.1.1.7-longreq.sip", &[407]),
    ("3.1.1.8-dblreq.sip", &[401]),
    ("3.1.1.9-semiuri.sip", &[200]),
    ("3.1.1.10-transports.sip", &[200]),
    ("3.1.1.11-mpart01.sip", &[405]), // MESSAGE: known, not served
    ("3.1.1.12-unreason.sip", &[]),   // responses are never answered
    ("3.1.1.13-noreason.sip", &[]),
    ("3.1.2.1-badinv01.sip", &[400]),
    ("3.1.2.2-clerr.sip", &[400]),
    ("3.1.2.3-ncl.sip", &[400]),
    ("3.1.2.4-scalar02.sip", &[400]),
    ("3.1.2.5-scalarlg.sip", &[]),
    ("3.1.2.6-quotbal.sip", &[400]),
    ("3.1.2.7-ltgtruri.sip", &[400]),
    ("3.1.2.8-lwsruri.sip", &[400]),
    ("3.1.2.9-lwsstart.sip", &[400]),
    ("3.1.2.10-trws.sip", &[400]),
    ("3.1.2.11-escruri.sip", &[400]),
    ("3.1.2.12-baddate.sip", &[407]),  // Date ignored
    ("3.1.2.13-regbadct.sip", &[401]), // <> inferred
    ("3.1.2.14-badaspec.sip", &[200]), // spaces ignored
    ("3.1.2.15-baddn.sip", &[400]),
    ("3.1.2.16-badvers.sip", &[505]),
    ("3.1.2.17-mismatch01.sip", &[400]),
    ("3.1.2.18-mismatch02.sip", &[400]),
    ("3.1.2.19-bigcode.sip", &[]),
    ("3.2.1-badbranch.sip", &[200]),
    ("3.3.1-insuf.sip", &[400]),
    ("3.3.2-unkscm.sip", &[416]),
    ("3.3.3-novelsc.sip", &[416]),
    ("3.3.4-unksm2.sip", &[401]),
    ("3.3.5-bext01.sip", &[420]),
    ("3.3.6-invut.sip", &[415]),
    ("3.3.7-regaut01.sip", &[401]),
    ("3.3.8-multi01.sip", &[400]),
    ("3.3.9-mcl01.sip", &[400]),
    ("3.3.10-bcast.sip", &[]),
    ("3.3.11-zeromf.sip", &[483]),
    ("3.3.12-cparam01.sip", &[401]),
    ("3.3.13-cparam02.sip", &[401]),
    ("3.3.14-regescrt.sip", &[401]),
    ("3.3.15-sdp01.sip", &[406]),
    ("3.4.1-inv2543.sip", &[407]),
];

#[test]
fn every_torture_message_gets_the_answer_rfc4475_expects() {
    let cases = cases();
    assert_eq!(cases.len(), 49, "all of RFC 4475's messages");
    for (file, kind) in cases {
        let bytes = std::fs::read(format!("{DIR}/{file}")).expect("message file");
        if kind == "valid" {
            Message::parse(&bytes).unwrap_or_else(|e| panic!("{file} must parse: {e}"));
        }
        let expected = EXPECTED.iter().find(|(f, _)| *f == file).map(|(_, c)| *c).expect("an expectation per file");
        assert_eq!(answers(&bytes), expected, "{file} ({kind})");
    }
}
