//! The B2BUA's call model in virtual time: routing, failover, topology
//! hiding and media anchoring, with every message checked as a peer sees it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use branchgate_dsp::Codec;
use branchgate_gateway::b2bua::{Action, B2bua, CallConfig, RouteRule, Side, TrunkTarget};
use branchgate_gateway::webrtc::Transcode;
use branchgate_sip::digest::{Algorithm, expected_response, parse_credentials};
use branchgate_sip::{Flow, Message, Server, ServerConfig, StartLine, Transport, UserKeys};
use md5::{Digest, Md5};

const DOMAIN: &str = "branch.example";
const CALLER: &str = "10.1.1.5:5062";
const T1: &str = "192.0.2.10:5060";
const T2: &str = "192.0.2.20:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn flow(remote: &str) -> Flow {
    Flow { transport: Transport::Udp, local: addr("0.0.0.0:5060"), remote: addr(remote) }
}

fn ha1() -> String {
    hex::encode(Md5::digest(format!("1001:{DOMAIN}:secret").as_bytes()))
}

fn trunk(name: &str, at: &str, priority: u32) -> TrunkTarget {
    TrunkTarget {
        name: name.into(),
        addr: addr(at),
        transport: Transport::Udp,
        priority,
        keepalive: None,
        credentials: None,
        register: false,
        dtmf_info: false,
    }
}

struct Lab {
    b2bua: B2bua,
    now: Instant,
    calls: u32,
    /// The SDP the caller's INVITEs carry.
    offer: String,
    /// Extra header lines of the caller's INVITEs.
    headers: String,
}

impl Lab {
    fn new(trunks: Vec<TrunkTarget>, routes: Vec<RouteRule>) -> Lab {
        let now = Instant::now();
        let mut config = ServerConfig::new(DOMAIN);
        config.users.insert("1001".into(), UserKeys { md5: ha1(), sha256: String::new() });
        let mut calls = CallConfig::new(DOMAIN);
        calls.trunks = trunks;
        calls.routes = routes;
        calls.emergency_numbers = vec!["112".into()];
        calls.advertise_ip = "203.0.113.1".parse().expect("ip");
        Lab {
            b2bua: B2bua::new(Server::new(config, [1; 32], now), calls, [42; 32], now),
            now,
            calls: 0,
            offer: OFFER.to_string(),
            headers: String::new(),
        }
    }

    /// Feeds a message and returns what the box sent, as (destination, message).
    fn send(&mut self, from: &str, text: &str) -> Vec<(SocketAddr, Message)> {
        self.b2bua.handle_input(self.now, flow(from), text.as_bytes());
        self.sent()
    }

    fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
        std::iter::from_fn(|| self.b2bua.poll_output())
            .map(|o| (o.flow.remote, Message::parse(&o.data).expect("the box sends valid SIP")))
            .collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<(SocketAddr, Message)> {
        self.now += by;
        self.b2bua.handle_timeout(self.now);
        self.sent()
    }

    /// The caller's INVITE to `number`, authenticated after the 407 challenge.
    fn call(&mut self, number: &str) -> Vec<(SocketAddr, Message)> {
        self.calls += 1;
        let extra = format!("{}Max-Forwards", self.headers);
        let first = self.send(
            CALLER,
            &invite_with(number, "", &self.offer.clone())
                .replace("caller1", &format!("caller1-{}", self.calls))
                .replace("Max-Forwards", &extra),
        );
        let challenge = first
            .iter()
            .find(|(_, m)| code(m) == 407)
            .and_then(|(_, m)| m.get("Proxy-Authenticate"))
            .expect("a 407 challenge")
            .to_string();
        let nonce = parse_credentials(&challenge).expect("digest").nonce;
        let uri = format!("sip:{number}@{DOMAIN}");
        let c = parse_credentials(&format!(
            "Digest username=\"1001\", uri=\"{uri}\", nonce=\"{nonce}\", qop=auth, nc=00000001, cnonce=\"c\""
        ))
        .expect("credentials");
        let response = expected_response(Algorithm::Md5, &ha1(), "INVITE", &c);
        let second = invite_with(
            number,
            &format!(
                "Proxy-Authorization: Digest username=\"1001\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"\r\n"
            ),
            &self.offer.clone(),
        );
        self.send(
            CALLER,
            &second.replace("caller2", &format!("caller2-{}", self.calls)).replace("Max-Forwards", &extra),
        )
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.b2bua.poll_action()).collect()
    }
}

const OFFER: &str =
    "v=0\r\no=alice 1 1 IN IP4 10.1.1.5\r\ns=-\r\nc=IN IP4 10.1.1.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

fn invite(number: &str, auth: &str) -> String {
    invite_with(number, auth, OFFER)
}

fn invite_with(number: &str, auth: &str, offer: &str) -> String {
    let branch = if auth.is_empty() { "z9hG4bKcaller1" } else { "z9hG4bKcaller2" };
    format!(
        "INVITE sip:{number}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch={branch}\r\n\
From: \"Alice\" <sip:1001@{DOMAIN}>;tag=alicetag\r\nTo: <sip:{number}@{DOMAIN}>\r\nCall-ID: alice-call@10.1.1.5\r\n\
CSeq: {} INVITE\r\nContact: <sip:1001@10.1.1.5:5062>\r\nMax-Forwards: 70\r\nX-Internal: secret-pbx-7\r\n{auth}\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        if auth.is_empty() { 1 } else { 2 },
        offer.len()
    )
}

fn code(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code, .. } => code,
        StartLine::Request { .. } => 0,
    }
}

fn method(m: &Message) -> &str {
    m.method().unwrap_or("")
}

/// A response from the callee to a request the box sent.
fn answer(request: &Message, status: u16, tag: &str, body: &str) -> String {
    let mut r = request.response(status, "Reason");
    if status > 100 {
        let to = format!("{};tag={tag}", r.get("To").expect("to"));
        r.set("To", to);
        r.push("Contact", "<sip:far@192.0.2.99:5060>");
    }
    if !body.is_empty() {
        r.push("Content-Type", "application/sdp");
        r.body = body.as_bytes().to_vec();
    }
    String::from_utf8(r.to_bytes()).expect("utf8")
}

const ANSWER: &str =
    "v=0\r\no=bob 1 1 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";

fn routes() -> Vec<RouteRule> {
    vec![
        RouteRule { prefix: "9".into(), strip: 1, trunk: "second".into() },
        RouteRule { prefix: "9".into(), strip: 1, trunk: "first".into() },
        RouteRule { prefix: "0".into(), strip: 0, trunk: "second".into() },
    ]
}

#[test]
fn a_503_fails_over_to_the_next_trunk_and_the_answer_is_anchored_and_hidden() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1), trunk("second", T2, 2)], routes());
    let out = lab.call("95551234");
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 100));
    let (to, first) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to a trunk").clone();
    assert_eq!(to, addr(T1), "priority 1 first");
    assert!(
        matches!(&first.start, StartLine::Request { uri, .. } if uri == "sip:5551234@192.0.2.10:5060"),
        "prefix stripped"
    );
    // Topology hiding: nothing of the caller's SIP or addresses in the trunk's INVITE.
    let wire = String::from_utf8_lossy(&first.to_bytes()).into_owned();
    for leak in
        ["alice-call", "z9hG4bKcaller", "alicetag", "10.1.1.5", "X-Internal", "secret-pbx", "Proxy-Authorization"]
    {
        assert!(!wire.contains(leak), "{leak} leaked into\n{wire}");
    }
    assert!(wire.contains("c=IN IP4 203.0.113.1") && wire.contains("\"Alice\" <sip:1001@203.0.113.1>"));
    assert_eq!(first.get("Max-Forwards"), Some("69"));

    let out = lab.send(T1, &answer(&first, 503, "t1", ""));
    assert!(out.iter().any(|(to, m)| *to == addr(T1) && method(m) == "ACK"), "the 503 is ACKed");
    let (to, second) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("failover INVITE").clone();
    assert_eq!(to, addr(T2));
    assert_ne!(second.get("Call-ID"), first.get("Call-ID"));

    lab.send(T2, &answer(&second, 180, "t2", ""));
    let out = lab.send(T2, &answer(&second, 200, "t2", ANSWER));
    let ack = out.iter().find(|(to, m)| *to == addr(T2) && method(m) == "ACK").expect("ACK to the trunk").1.clone();
    assert!(ack.get("To").is_some_and(|t| t.contains("tag=t2")));
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the caller").1.clone();
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(!body.contains("192.0.2.99") && body.contains("c=IN IP4 203.0.113.1"), "{body}");
    assert!(!String::from_utf8_lossy(&ok.to_bytes()).contains("far@192.0.2.99"), "callee's Contact hidden");

    // The relay learned both sides' announced addresses; each side sees its own relay port.
    let actions = lab.actions();
    let open = actions.iter().find_map(|a| match a {
        Action::OpenStream { ports, .. } => Some(*ports),
        _ => None,
    });
    let ports = open.expect("a relay stream");
    assert!(wire.contains(&format!("m=audio {} ", ports.b_port)));
    assert!(body.contains(&format!("m=audio {} ", ports.a_port)));
    let peer = |side, destination: &str, signalling: &str| {
        actions.iter().any(|a| {
            matches!(a, Action::Peer { call: 1, index: 0, side: s, peer }
                if *s == side && peer.destination == Some(addr(destination)) && peer.signalling.to_string() == signalling
                    && peer.formats.first().is_some_and(|f| f.name == "PCMU"))
        })
    };
    assert!(peer(Side::A, "10.1.1.5:4000", "10.1.1.5"));
    assert!(peer(Side::B, "192.0.2.99:6000", "192.0.2.20"));
    assert_eq!(lab.b2bua.calls(lab.now).len(), 1);

    // The callee hangs up: 200 to it, BYE to the caller, a record, relays closed.
    let bye = format!(
        "BYE sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKbye\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: 1 BYE\r\n\r\n",
        ack.get("To").expect("to"),
        ack.get("From").expect("from"),
        ack.get("Call-ID").expect("call-id")
    );
    let out = lab.send(T2, &bye);
    assert!(out.iter().any(|(to, m)| *to == addr(T2) && code(m) == 200));
    let bye_a = out.iter().find(|(to, m)| *to == addr(CALLER) && method(m) == "BYE").expect("BYE to the caller");
    assert_eq!(bye_a.1.get("Call-ID"), Some("alice-call@10.1.1.5"));
    assert!(
        bye_a.1.get("From").is_some_and(|f| !f.contains("alicetag"))
            && bye_a.1.get("To").is_some_and(|t| t.contains("alicetag"))
    );
    let actions = lab.actions();
    assert!(actions.contains(&Action::Close { call: 1 }));
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Record(r) if r.cause == "callee-bye" && r.answered && r.destination == "second")
        )
    );
    assert!(lab.b2bua.calls(lab.now).is_empty());
}

#[test]
fn a_silent_trunk_is_abandoned_after_the_failover_time() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1), trunk("second", T2, 2)], routes());
    lab.call("9123");
    let out = lab.advance(Duration::from_secs(2));
    assert!(!out.iter().any(|(to, _)| *to == addr(T2)), "nothing to the second trunk yet");
    assert!(out.iter().any(|(to, m)| *to == addr(T1) && method(m) == "INVITE"), "Timer A retransmits");
    let out = lab.advance(Duration::from_millis(2100));
    assert!(out.iter().any(|(to, m)| *to == addr(T2) && method(m) == "INVITE"), "next trunk after 4 s of silence");
}

#[test]
fn when_every_trunk_fails_the_caller_gets_503_or_504() {
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    let out = lab.call("0800");
    let invite = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE").1;
    let out = lab.send(T2, &answer(&invite, 500, "x", ""));
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 503));
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    lab.call("0800");
    let out = lab.advance(Duration::from_secs(5));
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 504), "timeout → 504");
}

#[test]
fn routing_refusals_and_callers() {
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    // Not authenticated: challenged.
    let out = lab.send(CALLER, &invite("9123", ""));
    assert!(out.iter().any(|(_, m)| code(m) == 407));
    // No route: 404. A known user who is not registered: 480.
    assert!(lab.call("777").iter().any(|(_, m)| code(m) == 404));
    assert!(lab.call("1001").iter().any(|(_, m)| code(m) == 480));
    // A trunk may call users only (no toll fraud through the box), and needs no digest.
    let from_trunk = invite("95551234", "").replace("10.1.1.5:5062", "192.0.2.20:5060");
    let out = lab.send(T2, &from_trunk);
    assert!(out.iter().any(|(_, m)| code(m) == 404), "trunk to trunk refused");
    // Emergency numbers go out even without a route for them.
    let out = lab.call("112");
    assert!(out.iter().any(|(to, m)| *to == addr(T2) && method(m) == "INVITE"));
    // A required extension the box does not support.
    let out = lab.send(
        CALLER,
        &invite("9123", "")
            .replace("Max-Forwards", "Require: 100rel, timer\r\nMax-Forwards")
            .replace("caller1", "caller-require"),
    );
    assert!(out.iter().any(|(_, m)| code(m) == 420 && m.get("Unsupported") == Some("timer")), "100rel is supported");
}

/// The caller's PRACK (CSeq `cseq`) of the box's reliable provisional `response`.
fn prack(response: &Message, rseq: u32, cseq: u32) -> String {
    format!(
        "PRACK sip:box@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKprack{cseq}\r\nFrom: {}\r\n\
To: {}\r\nCall-ID: {}\r\nCSeq: {cseq} PRACK\r\nRAck: {rseq} 2 INVITE\r\nContent-Length: 0\r\n\r\n",
        response.get("From").expect("from"),
        response.get("To").expect("to"),
        response.get("Call-ID").expect("call-id"),
    )
}

fn to_caller(out: &[(SocketAddr, Message)], status: u16, cseq_method: &str) -> Option<Message> {
    out.iter()
        .find(|(to, m)| *to == addr(CALLER) && code(m) == status && m.cseq().is_some_and(|(_, m)| m == cseq_method))
        .map(|(_, m)| m.clone())
}

#[test]
fn a_caller_that_requires_100rel_gets_reliable_provisionals_and_the_200_after_its_prack() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    lab.headers = "Require: 100rel\r\n".into();
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(to, m)| *to == addr(T1) && method(m) == "INVITE").expect("INVITE").clone();
    assert!(!out.iter().any(|(_, m)| code(m) == 420), "100rel is supported");
    let out = lab.send(T1, &answer(&invite, 180, "t1", ""));
    let ringing = to_caller(&out, 180, "INVITE").expect("180 to the caller");
    assert_eq!(ringing.get("Require"), Some("100rel"));
    let rseq: u32 = ringing.get("RSeq").and_then(|r| r.parse().ok()).expect("RSeq");
    // One reliable provisional at a time: the 183 waits for the PRACK of the 180.
    let out = lab.send(T1, &answer(&invite, 183, "t1", ANSWER));
    assert!(to_caller(&out, 183, "INVITE").is_none());
    // Not PRACKed within T1: sent again, the same RSeq.
    let out = lab.advance(Duration::from_millis(600));
    let again = to_caller(&out, 180, "INVITE").expect("retransmitted");
    assert_eq!(again.get("RSeq"), Some(rseq.to_string().as_str()));
    // A PRACK that names another RSeq acknowledges nothing.
    let out = lab.send(CALLER, &prack(&ringing, rseq + 7, 3));
    assert!(to_caller(&out, 481, "PRACK").is_some());
    // The PRACK: 200, and the 183 goes (next RSeq, with the box's SDP).
    let out = lab.send(CALLER, &prack(&ringing, rseq, 4));
    assert!(to_caller(&out, 200, "PRACK").is_some());
    let progress = to_caller(&out, 183, "INVITE").expect("183 after the PRACK");
    assert_eq!(progress.get("RSeq"), Some((rseq + 1).to_string().as_str()));
    assert!(String::from_utf8_lossy(&progress.body).contains("203.0.113.1"), "anchored SDP");
    // The trunk answers: the 200 waits for the PRACK of the 183, which carried SDP.
    let out = lab.send(T1, &answer(&invite, 200, "t1", ANSWER));
    assert!(to_caller(&out, 200, "INVITE").is_none());
    let out = lab.send(CALLER, &prack(&progress, rseq + 1, 5));
    assert!(to_caller(&out, 200, "PRACK").is_some());
    assert!(to_caller(&out, 200, "INVITE").is_some(), "the 200 once the 183 is PRACKed");
}

#[test]
fn a_caller_that_never_pracks_gets_504_and_the_callee_a_cancel() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    lab.headers = "Require: 100rel\r\n".into();
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(to, m)| *to == addr(T1) && method(m) == "INVITE").expect("INVITE").clone();
    lab.send(T1, &answer(&invite, 183, "t1", ANSWER));
    let mut sent = Vec::new();
    for _ in 0..70 {
        sent.extend(lab.advance(Duration::from_millis(500)));
    }
    let resent = sent.iter().filter(|(to, m)| *to == addr(CALLER) && code(m) == 183).count();
    assert!((5..=7).contains(&resent), "T1 doubling for 64·T1: {resent} retransmissions");
    assert!(to_caller(&sent, 504, "INVITE").is_some(), "504 to the caller");
    assert!(sent.iter().any(|(to, m)| *to == addr(T1) && method(m) == "CANCEL"), "the callee's INVITE cancelled");
}

#[test]
fn cancel_before_answer_reaches_the_callee_and_a_crossing_200_is_hung_up() {
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    let out = lab.call("0800");
    let invite = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE").1;
    lab.send(T2, &answer(&invite, 180, "t2", ""));
    let cancel = "CANCEL sip:0800@branch.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKcaller2-1\r\n\
From: \"Alice\" <sip:1001@branch.example>;tag=alicetag\r\nTo: <sip:0800@branch.example>\r\n\
Call-ID: alice-call@10.1.1.5\r\nCSeq: 2 CANCEL\r\n\r\n";
    let out = lab.send(CALLER, cancel);
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 200 && m.cseq().map(|c| c.1) == Some("CANCEL")));
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 487));
    assert!(out.iter().any(|(to, m)| *to == addr(T2) && method(m) == "CANCEL"));
    // The callee answered just before it saw the CANCEL: ACK and BYE it.
    let out = lab.send(T2, &answer(&invite, 200, "t2", ANSWER));
    assert!(out.iter().any(|(to, m)| *to == addr(T2) && method(m) == "ACK"));
    assert!(out.iter().any(|(to, m)| *to == addr(T2) && method(m) == "BYE"));
    assert!(lab.actions().iter().any(|a| matches!(a, Action::Record(r) if r.cause == "cancelled" && r.status == 487)));
}

#[test]
fn a_reliable_183_is_pracked_by_the_box_and_relayed_unreliably() {
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    let out = lab.call("0800");
    let invite = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE").1;
    assert!(invite.lines("Supported").any(|s| s.contains("100rel")), "leg B offers 100rel");
    let invite_cseq = invite.cseq().expect("cseq").0;
    let mut early = Message::parse(answer(&invite, 183, "t2", ANSWER).as_bytes()).expect("183");
    early.push("Require", "100rel");
    early.push("RSeq", "7");
    let early = String::from_utf8(early.to_bytes()).expect("utf8");
    let out = lab.send(T2, &early);
    let prack = out.iter().find(|(_, m)| method(m) == "PRACK").expect("the box PRACKs the 183");
    assert_eq!(prack.0, addr(T2), "over the trunk's flow");
    assert!(
        matches!(&prack.1.start, StartLine::Request { uri, .. } if uri == "sip:far@192.0.2.99:5060"),
        "to the 183's Contact"
    );
    assert_eq!(prack.1.get("RAck"), Some(format!("7 {invite_cseq} INVITE").as_str()));
    assert!(prack.1.get("To").is_some_and(|t| t.contains("tag=t2")));
    let relayed = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 183).expect("183 to the caller");
    assert!(relayed.1.get("Require").is_none() && relayed.1.get("RSeq").is_none(), "unreliable toward the caller");
    // A retransmission of the same reliable 183 is neither PRACKed again nor relayed.
    let out = lab.send(T2, &early);
    assert!(!out.iter().any(|(_, m)| method(m) == "PRACK" || code(m) == 183), "{out:?}");
    // The answer: the ACK carries the INVITE's CSeq, not the PRACK's.
    let out = lab.send(T2, &answer(&invite, 200, "t2", ANSWER));
    let ack = out.iter().find(|(_, m)| method(m) == "ACK").expect("ACK");
    assert_eq!(ack.1.cseq(), Some((invite_cseq, "ACK")));
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 200));
}

#[test]
fn a_trunk_407_is_answered_once_with_the_trunk_credentials() {
    let mut with_credentials = trunk("second", T2, 2);
    with_credentials.credentials = Some(("trunkuser".into(), "trunk-secret".into()));
    let mut lab = Lab::new(vec![with_credentials], routes());
    let out = lab.call("0800");
    let first = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE").1;
    let mut challenge = first.response(407, "Proxy Authentication Required");
    challenge.set("To", format!("{};tag=t2", first.get("To").expect("to")));
    challenge.push("Proxy-Authenticate", "Digest realm=\"carrier\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5");
    let out = lab.send(T2, &String::from_utf8(challenge.to_bytes()).expect("utf8"));
    let again = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE with credentials").1.clone();
    assert_eq!(again.get("Call-ID"), first.get("Call-ID"), "same dialog attempt");
    assert_eq!(again.cseq(), Some((2, "INVITE")));
    assert_eq!(again.body, first.body);
    let c = parse_credentials(again.get("Proxy-Authorization").expect("credentials")).expect("digest");
    let ha1 = hex::encode(Md5::digest(b"trunkuser:carrier:trunk-secret"));
    assert_eq!(c.uri, "sip:0800@192.0.2.20:5060");
    assert_eq!(c.response, expected_response(Algorithm::Md5, &ha1, "INVITE", &c));
    // Challenged again: the credentials are wrong; the caller gets the refusal.
    let mut again_challenge = again.response(407, "Proxy Authentication Required");
    again_challenge.set("To", format!("{};tag=t3", again.get("To").expect("to")));
    again_challenge.push("Proxy-Authenticate", "Digest realm=\"carrier\", nonce=\"def\", algorithm=MD5");
    let out = lab.send(T2, &String::from_utf8(again_challenge.to_bytes()).expect("utf8"));
    assert!(!out.iter().any(|(_, m)| method(m) == "INVITE"), "no second try");
    assert!(
        out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 503),
        "the caller sees no route, not a challenge"
    );
}

#[test]
fn late_offer_the_callers_ack_carries_the_answer_to_the_callee() {
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    // The caller's INVITE has no SDP: the callee will offer in its 200.
    lab.calls += 1;
    let no_sdp = |auth: &str| {
        let text = invite("0800", auth);
        let head = text.split("Content-Type").next().expect("head").to_string();
        format!("{head}Content-Length: 0\r\n\r\n")
    };
    let first = lab.send(CALLER, &no_sdp("").replace("caller1", "late1"));
    let challenge =
        first.iter().find(|(_, m)| code(m) == 407).expect("407").1.get("Proxy-Authenticate").expect("c").to_string();
    let nonce = parse_credentials(&challenge).expect("digest").nonce;
    let uri = format!("sip:0800@{DOMAIN}");
    let c = parse_credentials(&format!(
        "Digest username=\"1001\", uri=\"{uri}\", nonce=\"{nonce}\", qop=auth, nc=00000001, cnonce=\"c\""
    ))
    .expect("credentials");
    let response = expected_response(Algorithm::Md5, &ha1(), "INVITE", &c);
    let auth = format!(
        "Proxy-Authorization: Digest username=\"1001\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"\r\n"
    );
    let out = lab.send(CALLER, &no_sdp(&auth).replace("caller2", "late2"));
    let invite_b = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the trunk").1;
    assert!(invite_b.body.is_empty(), "no offer to pass on");
    let out = lab.send(T2, &answer(&invite_b, 200, "t2", ANSWER));
    assert!(!out.iter().any(|(_, m)| method(m) == "ACK"), "the ACK waits for the caller's answer");
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 with the offer").1.clone();
    assert!(String::from_utf8_lossy(&ok.body).contains("c=IN IP4 203.0.113.1"), "the offer is anchored");
    let ack = format!(
        "ACK sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKlateack\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: alice-call@10.1.1.5\r\nCSeq: 2 ACK\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        ok.get("From").expect("from"),
        ok.get("To").expect("to"),
        OFFER.len()
    );
    let out = lab.send(CALLER, &ack);
    let ack_b = out.iter().find(|(to, m)| *to == addr(T2) && method(m) == "ACK").expect("ACK to the callee").1.clone();
    let body = String::from_utf8_lossy(&ack_b.body).into_owned();
    assert!(body.contains("c=IN IP4 203.0.113.1") && !body.contains("10.1.1.5"), "the answer, anchored: {body}");
    assert_eq!(ack_b.cseq(), invite_b.cseq().map(|(n, _)| (n, "ACK")));
}

#[test]
fn a_redirect_is_followed_once_through_the_boxs_own_routing() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1), trunk("second", T2, 2)], routes());
    let out = lab.call("95551234");
    let invite = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE").1;
    let mut moved = invite.response(302, "Moved Temporarily");
    moved.set("To", format!("{};tag=r1", invite.get("To").expect("to")));
    moved.push("Contact", "<sip:0777@198.51.100.99:5060>");
    let out = lab.send(T1, &String::from_utf8(moved.to_bytes()).expect("utf8"));
    let (to, again) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the new number").clone();
    assert_eq!(to, addr(T2), "routed by the box's routes (prefix 0), never to the address in the Contact");
    assert!(matches!(&again.start, StartLine::Request { uri, .. } if uri.starts_with("sip:0777@192.0.2.20")));
    let mut moved_again = again.response(302, "Moved Temporarily");
    moved_again.set("To", format!("{};tag=r2", again.get("To").expect("to")));
    moved_again.push("Contact", "<sip:0888@198.51.100.99>");
    let out = lab.send(T2, &String::from_utf8(moved_again.to_bytes()).expect("utf8"));
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 480), "only one redirect is followed");
}

#[test]
fn an_offerless_reinvite_gets_the_askers_answer_in_the_ack() {
    let mut lab = Lab::new(vec![trunk("second", T2, 2)], routes());
    let out = lab.call("0800");
    let invite = out.into_iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE").1;
    let out = lab.send(T2, &answer(&invite, 200, "t2", ANSWER));
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("answered").1.clone();
    // The caller asks for a new offer: a re-INVITE without SDP in its dialog.
    let reinvite = format!(
        "INVITE sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKre1\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: alice-call@10.1.1.5\r\nCSeq: 3 INVITE\r\nContact: <sip:1001@10.1.1.5:5062>\r\nContent-Length: 0\r\n\r\n",
        ok.get("From").expect("from"),
        ok.get("To").expect("to")
    );
    let out = lab.send(CALLER, &reinvite);
    let relayed = out.into_iter().find(|(to, m)| *to == addr(T2) && method(m) == "INVITE").expect("relayed").1;
    assert!(relayed.body.is_empty());
    let out = lab.send(T2, &answer(&relayed, 200, "t2", ANSWER));
    assert!(!out.iter().any(|(to, m)| *to == addr(T2) && method(m) == "ACK"), "the ACK waits for the caller's answer");
    let offer = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("the offer").1.clone();
    assert!(String::from_utf8_lossy(&offer.body).contains("c=IN IP4 203.0.113.1"));
    let ack = format!(
        "ACK sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKre2\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: alice-call@10.1.1.5\r\nCSeq: 3 ACK\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        ok.get("From").expect("from"),
        ok.get("To").expect("to"),
        OFFER.len()
    );
    let out = lab.send(CALLER, &ack);
    let ack_b =
        out.iter().find(|(to, m)| *to == addr(T2) && method(m) == "ACK").expect("ACK with the answer").1.clone();
    let body = String::from_utf8_lossy(&ack_b.body).into_owned();
    assert!(body.contains("c=IN IP4 203.0.113.1") && !body.contains("10.1.1.5"), "{body}");
    assert_eq!(ack_b.cseq(), relayed.cseq().map(|(n, _)| (n, "ACK")));
}

/// Chromium's offer as JsSIP sends it (ICE, DTLS-SRTP, Opus first).
const CHROMIUM_OFFER: &str = include_str!("../../webrtc/tests/chromium-offer.sdp");

#[test]
fn a_browsers_offer_is_terminated_on_the_box_and_the_trunk_sees_plain_rtp() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    lab.offer = CHROMIUM_OFFER.to_string();
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the trunk").clone();
    let offer = String::from_utf8_lossy(&invite.body).into_owned();
    // Plain RTP with the passthrough codecs only: no ICE, no DTLS, no Opus, nothing of the browser's.
    assert!(offer.contains("m=audio ") && offer.contains(" RTP/AVP 9 0 8 126\r\n"), "{offer}");
    for leak in ["SAVPF", "fingerprint", "ice-ufrag", "candidate", "opus", "192.0.2.10 46243", "3735928559"] {
        assert!(!offer.contains(leak), "{leak} in the trunk's offer\n{offer}");
    }
    assert!(offer.contains("c=IN IP4 203.0.113.1"));
    assert!(!lab.actions().iter().any(|a| matches!(a, Action::OpenStream { .. })), "no plain relay for the browser");

    let answer_sdp =
        "v=0\r\no=bob 1 1 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
    let out = lab.send(T1, &answer(&invite, 200, "t1", answer_sdp));
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the browser").1.clone();
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains("UDP/TLS/RTP/SAVPF 8\r\n") || body.contains("UDP/TLS/RTP/SAVPF 8 "), "{body}");
    assert!(body.contains("a=ice-lite") && body.contains("a=fingerprint:sha-256"), "{body}");
    assert!(!body.contains("192.0.2.99"), "the trunk's address is hidden\n{body}");
    let actions = lab.actions();
    let (ports, payloads) = actions
        .iter()
        .find_map(|a| match a {
            Action::OpenWebRtc { ports, side: Side::A, payloads, .. } => Some((*ports, *payloads)),
            _ => None,
        })
        .expect("the browser's session goes to the relay");
    assert!(body.contains(&format!("203.0.113.1 {} typ host", ports.a_port)), "{body}");
    assert_eq!((payloads.voice.sip, payloads.voice.browser), (8, 8));
    // The trunk's address reaches the relay after the session (whose relay must exist first).
    let open = actions.iter().position(|a| matches!(a, Action::OpenWebRtc { .. })).expect("open");
    let peer = actions.iter().position(|a| matches!(a, Action::Peer { side: Side::B, .. })).expect("peer");
    assert!(open < peer);
}

#[test]
fn a_browser_that_speaks_only_opus_is_transcoded_to_the_trunks_g711() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    // Chromium's offer with Opus alone (what `setCodecPreferences([opus])` makes).
    lab.offer = CHROMIUM_OFFER.replace("SAVPF 111 63 9 0 8 13 110 126", "SAVPF 111 110 126");
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the trunk").clone();
    let offer = String::from_utf8_lossy(&invite.body).into_owned();
    assert!(offer.contains(" RTP/AVP 9 0 8 126\r\n") && !offer.contains("opus"), "{offer}");
    let answer_sdp =
        "v=0\r\no=bob 1 1 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let out = lab.send(T1, &answer(&invite, 200, "t1", answer_sdp));
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the browser").1.clone();
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains("UDP/TLS/RTP/SAVPF 111") && body.contains("a=rtpmap:111 opus/48000/2"), "{body}");
    let payloads = lab
        .actions()
        .iter()
        .find_map(|a| match a {
            Action::OpenWebRtc { payloads, .. } => Some(*payloads),
            _ => None,
        })
        .expect("the browser's session goes to the relay");
    assert_eq!((payloads.voice.sip, payloads.voice.browser), (0, 111));
    assert_eq!(payloads.transcode, Some(Transcode { browser: Codec::Opus, sip: Codec::Pcmu }));
}

#[test]
fn beyond_the_transcoding_capacity_an_opus_only_browser_is_refused_and_others_pass_through() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    let mut config = lab.b2bua.config().clone();
    config.max_transcoded = 0;
    lab.b2bua.set_config(config, lab.now);
    lab.offer = CHROMIUM_OFFER.replace("SAVPF 111 63 9 0 8 13 110 126", "SAVPF 111 110 126");
    let out = lab.call("95551234");
    assert!(out.iter().any(|(_, m)| code(m) == 488), "no transcoding left: 488");
    assert!(!out.iter().any(|(_, m)| method(m) == "INVITE"), "nothing sent to the trunk");
    // A browser that also speaks G.711 still gets through, untranscoded.
    lab.offer = CHROMIUM_OFFER.to_string();
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the trunk").clone();
    assert!(String::from_utf8_lossy(&invite.body).contains(" RTP/AVP 9 0 8 126\r\n"));
}

#[test]
fn a_browser_offer_with_nothing_to_pass_through_or_transcode_is_refused_with_488() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    lab.offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 103\r\n\
a=rtpmap:103 ISAC/16000\r\n"
        .to_string();
    let out = lab.call("95551234");
    let refused = out.iter().find(|(_, m)| code(m) == 488).expect("488");
    assert!(refused.1.get("Warning").is_some_and(|w| w.contains("transcode")), "{:?}", refused.1.get("Warning"));
}

/// A browser's call to the trunk `first`, answered with PCMU and telephone events;
/// returns the box's 200 to the browser, what went to the relay and the box's INVITE to the trunk.
fn answered_browser_call(dtmf_info: bool) -> (Lab, Message, Vec<Action>, Message) {
    let mut first = trunk("first", T1, 1);
    first.dtmf_info = dtmf_info;
    let mut lab = Lab::new(vec![first], routes());
    lab.offer = CHROMIUM_OFFER.to_string();
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the trunk").clone();
    let answer_sdp = "v=0\r\no=bob 1 1 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let out = lab.send(T1, &answer(&invite, 200, "t1", answer_sdp));
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the browser").1.clone();
    let actions = lab.actions();
    (lab, ok, actions, invite)
}

/// An in-dialog request from the browser in the dialog its 200 set up.
fn from_caller(ok: &Message, method: &str, content_type: &str, body: &str) -> String {
    format!(
        "{method} sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK{method}1\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: 5 {method}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        ok.get("From").expect("from"),
        ok.get("To").expect("to"),
        ok.get("Call-ID").expect("call-id"),
        body.len()
    )
}

#[test]
fn a_browsers_sip_info_dtmf_goes_to_the_phone_as_rfc_4733() {
    let (mut lab, ok, actions, _) = answered_browser_call(false);
    assert!(actions.iter().any(|a| matches!(a, Action::OpenWebRtc { dtmf_as_info: false, .. })));
    let info = from_caller(&ok, "INFO", "application/dtmf-relay", "Signal=#\r\nDuration=250\r\n");
    let out = lab.send(CALLER, &info);
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 200), "the box answers the INFO itself");
    assert!(!out.iter().any(|(to, _)| *to == addr(T1)), "nothing goes to the trunk as SIP");
    let sent = lab.actions();
    assert_eq!(sent, [Action::SendDtmf { call: 1, index: 0, toward: Side::B, event: 11, duration_ms: 250 }]);
    // application/dtmf carries the key alone.
    let second =
        from_caller(&ok, "INFO", "application/dtmf", "7").replace("CSeq: 5", "CSeq: 6").replace("INFO1", "INFO2");
    let out = lab.send(CALLER, &second);
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 200));
    assert!(matches!(lab.actions()[..], [Action::SendDtmf { event: 7, duration_ms: 160, .. }]));
}

#[test]
fn a_trunk_that_takes_sip_info_gets_the_browsers_telephone_events_as_info() {
    let (mut lab, ok, actions, _) = answered_browser_call(true);
    assert!(actions.iter().any(|a| matches!(a, Action::OpenWebRtc { dtmf_as_info: true, .. })));
    // The relay reported key 5 from the browser's RFC 4733 events.
    lab.b2bua.handle_dtmf(lab.now, 1, Side::A, 5, 180);
    let out = lab.sent();
    let (_, info) = out.iter().find(|(to, m)| *to == addr(T1) && method(m) == "INFO").expect("INFO to the trunk");
    assert_eq!(info.get("Content-Type"), Some("application/dtmf-relay"));
    assert_eq!(String::from_utf8_lossy(&info.body), "Signal=5\r\nDuration=180\r\n");
    assert!(info.get("To").is_some_and(|t| t.contains("tag=t1")), "in the trunk's dialog");
    // The trunk's 200 ends the INFO: nothing is sent back (no ACK, no BYE), the call goes on.
    let info = info.clone();
    let ok_text = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        info.get("Via").expect("via"),
        info.get("From").expect("from"),
        info.get("To").expect("to"),
        info.get("Call-ID").expect("call-id"),
        info.get("CSeq").expect("cseq")
    );
    assert!(lab.send(T1, &ok_text).is_empty(), "the INFO's 200 is the end of it");
    assert_eq!(lab.b2bua.calls(lab.now).len(), 1);
    // The browser's own INFO passes to such a trunk as it is.
    let out = lab.send(CALLER, &from_caller(&ok, "INFO", "application/dtmf-relay", "Signal=9\r\nDuration=100\r\n"));
    let relayed = out.iter().find(|(to, m)| *to == addr(T1) && method(m) == "INFO").expect("INFO relayed");
    assert!(String::from_utf8_lossy(&relayed.1.body).contains("Signal=9"));
    assert!(!lab.actions().iter().any(|a| matches!(a, Action::SendDtmf { .. })));
    // A key that is not a DTMF key is not sent.
    lab.b2bua.handle_dtmf(lab.now, 1, Side::A, 16, 100);
    assert!(!lab.sent().iter().any(|(_, m)| method(m) == "INFO"));
}

#[test]
fn a_browser_holds_and_the_trunk_gets_a_plain_hold_reinvite() {
    let (mut lab, ok, _, _) = answered_browser_call(false);
    let hold_offer = CHROMIUM_OFFER.replace("a=sendrecv", "a=sendonly");
    let reinvite = from_caller(&ok, "INVITE", "application/sdp", &hold_offer);
    let out = lab.send(CALLER, &reinvite);
    let (_, relayed) =
        out.iter().find(|(to, m)| *to == addr(T1) && method(m) == "INVITE").expect("re-INVITE to the trunk");
    let offer = String::from_utf8_lossy(&relayed.body).into_owned();
    assert!(offer.contains("RTP/AVP") && offer.contains("a=sendonly") && !offer.contains("fingerprint"), "{offer}");
    assert!(offer.contains(" 2 IN IP4 "), "the next version of the box's SDP\n{offer}");
    let answer_sdp = "v=0\r\no=bob 1 2 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n";
    let out = lab.send(T1, &answer(relayed, 200, "t1", answer_sdp));
    assert!(out.iter().any(|(to, m)| *to == addr(T1) && method(m) == "ACK"), "the box ACKs the trunk");
    let (_, held) = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the browser");
    let body = String::from_utf8_lossy(&held.body).into_owned();
    assert!(body.contains("a=recvonly") && body.contains("a=fingerprint:sha-256") && body.contains("SAVPF"), "{body}");
}

/// The action that hands a browser's re-offer to its WebRTC session.
fn renegotiation(actions: &[Action]) -> Option<&str> {
    actions.iter().find_map(|a| match a {
        Action::Renegotiate { call: 1, index: 0, offer } => Some(offer.as_str()),
        _ => None,
    })
}

#[test]
fn a_browsers_ice_restart_is_answered_by_its_webrtc_session_without_the_trunk() {
    let (mut lab, ok, _, _) = answered_browser_call(false);
    let restart = CHROMIUM_OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:new");
    let reinvite = from_caller(&ok, "INVITE", "application/sdp", &restart);
    let out = lab.send(CALLER, &reinvite);
    assert!(!out.iter().any(|(to, _)| *to == addr(T1)), "the trunk's media does not change");
    assert!(!out.iter().any(|(_, m)| code(m) >= 200), "the answer is the WebRTC session's");
    let actions = lab.actions();
    let offer = renegotiation(&actions).expect("the offer goes to the browser's stream");
    assert!(offer.contains("a=ice-ufrag:new"), "{offer}");
    // Another offer while that one is open: 491 (RFC 3261 §14.2).
    let again = reinvite.replace("CSeq: 5", "CSeq: 6").replace("INVITE1", "INVITE2");
    let out = lab.send(CALLER, &again);
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 491));
    // The session's answer goes to the browser in a 200.
    let box_answer = "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
c=IN IP4 0.0.0.0\r\na=ice-ufrag:fresh\r\na=ice-pwd:freshfreshfreshfreshfresh\r\na=sendrecv\r\n";
    lab.b2bua.handle_renegotiated(lab.now, 1, Ok(box_answer.to_string()));
    let out = lab.sent();
    let (_, answered) = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the browser");
    assert!(String::from_utf8_lossy(&answered.body).contains("a=ice-ufrag:fresh"));
    assert!(answered.get("To").is_some_and(|t| t.contains("tag=")), "in the browser's dialog");
    assert!(!out.iter().any(|(to, _)| *to == addr(T1)));
    // A re-offer the session refuses (a new DTLS identity): 488 with the reason; the call goes on.
    let other = restart.replace("a=ice-ufrag:new", "a=ice-ufrag:third");
    let third = from_caller(&ok, "INVITE", "application/sdp", &other)
        .replace("CSeq: 5", "CSeq: 7")
        .replace("INVITE1", "INVITE3");
    lab.send(CALLER, &third);
    assert!(renegotiation(&lab.actions()).is_some());
    lab.b2bua.handle_renegotiated(lab.now, 1, Err("a new DTLS fingerprint".into()));
    let out = lab.sent();
    let (_, refused) = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 488).expect("488");
    assert!(refused.get("Warning").is_some_and(|w| w.contains("DTLS fingerprint")));
    assert_eq!(lab.b2bua.calls(lab.now).len(), 1);
}

#[test]
fn an_ice_restart_that_also_holds_goes_to_the_trunk_as_a_hold() {
    let (mut lab, ok, _, _) = answered_browser_call(false);
    let restart = CHROMIUM_OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:new").replace("a=sendrecv", "a=sendonly");
    lab.send(CALLER, &from_caller(&ok, "INVITE", "application/sdp", &restart));
    assert!(renegotiation(&lab.actions()).is_some());
    let box_answer = "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
c=IN IP4 0.0.0.0\r\na=ice-ufrag:fresh\r\na=ice-pwd:freshfreshfreshfreshfresh\r\na=recvonly\r\n";
    lab.b2bua.handle_renegotiated(lab.now, 1, Ok(box_answer.to_string()));
    let out = lab.sent();
    assert!(!out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 200), "the browser waits for the trunk");
    let (_, relayed) =
        out.iter().find(|(to, m)| *to == addr(T1) && method(m) == "INVITE").expect("re-INVITE to the trunk");
    assert!(String::from_utf8_lossy(&relayed.body).contains("a=sendonly"));
    let answer_sdp = "v=0\r\no=bob 1 2 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n";
    let out = lab.send(T1, &answer(relayed, 200, "t1", answer_sdp));
    let (_, held) = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the browser");
    assert!(String::from_utf8_lossy(&held.body).contains("a=ice-ufrag:fresh"), "the WebRTC session's answer");
}

#[test]
fn a_phone_that_holds_a_browser_is_answered_by_the_box() {
    let (mut lab, _, _, invite) = answered_browser_call(false);
    // The trunk's re-INVITE in its dialog with the box (From: the trunk, tagged t1; To: the box).
    let from = format!("{};tag=t1", invite.get("To").expect("to"));
    let (to, call_id) =
        (invite.get("From").expect("from").to_string(), invite.get("Call-ID").expect("call-id").to_string());
    let hold = "v=0\r\no=bob 1 2 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=sendonly\r\n";
    let reinvite = format!(
        "INVITE sip:box@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKhold1\r\nFrom: {from}\r\nTo: {to}\r\n\
Call-ID: {call_id}\r\nCSeq: 9 INVITE\r\nContact: <sip:t1@192.0.2.99>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold}",
        hold.len()
    );
    let out = lab.send(T1, &reinvite);
    let (_, ok) = out.iter().find(|(to, m)| *to == addr(T1) && code(m) == 200).expect("the box answers the hold");
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains("a=recvonly") && body.contains("RTP/AVP"), "{body}");
    assert!(!out.iter().any(|(to, _)| *to == addr(CALLER)), "the browser's session is left alone");
}

/// Where the browser 1002 is connected (its WebSocket as the box's SIP server sees it).
const BROWSER_B: &str = "10.1.1.7:50123";

/// Registers 1002 over a WebSocket (what JsSIP does), digest included.
fn register_browser(lab: &mut Lab) {
    let ha1 = hex::encode(Md5::digest(format!("1002:{DOMAIN}:secret2").as_bytes()));
    let mut config = lab.b2bua.sip().config().clone();
    config.users.insert("1002".into(), UserKeys { md5: ha1.clone(), sha256: String::new() });
    lab.b2bua.sip_mut().set_config(config);
    let ws = Flow { transport: Transport::Ws, local: addr("0.0.0.0:8443"), remote: addr(BROWSER_B) };
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS abc.invalid;branch=z9hG4bKreg{cseq}\r\n\
From: <sip:1002@{DOMAIN}>;tag=regtag\r\nTo: <sip:1002@{DOMAIN}>\r\nCall-ID: reg-1002\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:x7@abc.invalid;transport=ws>\r\nExpires: 600\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    lab.b2bua.handle_input(lab.now, ws, register(1, "").as_bytes());
    let challenge = lab
        .sent()
        .iter()
        .find(|(_, m)| code(m) == 401)
        .and_then(|(_, m)| m.get("WWW-Authenticate").map(str::to_string))
        .expect("a 401 challenge");
    let nonce = parse_credentials(&challenge).expect("digest").nonce;
    let uri = format!("sip:{DOMAIN}");
    let c = parse_credentials(&format!(
        "Digest username=\"1002\", uri=\"{uri}\", nonce=\"{nonce}\", qop=auth, nc=00000001, cnonce=\"c\""
    ))
    .expect("credentials");
    let response = expected_response(Algorithm::Md5, &ha1, "REGISTER", &c);
    let auth = format!(
        "Authorization: Digest username=\"1002\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"\r\n"
    );
    lab.b2bua.handle_input(lab.now, ws, register(2, &auth).as_bytes());
    assert!(lab.sent().iter().any(|(_, m)| code(m) == 200), "1002 registered");
}

#[test]
fn a_browser_calls_a_browser_through_the_boxs_internal_leg() {
    let mut lab = Lab::new(vec![], vec![]);
    register_browser(&mut lab);
    lab.offer = CHROMIUM_OFFER.to_string();
    let out = lab.call("1002");
    assert!(!out.iter().any(|(_, m)| code(m) == 488), "no longer refused");
    let (to, invite) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the browser").clone();
    assert_eq!(to, addr(BROWSER_B), "over the callee's own WebSocket");
    assert!(
        invite.get("From").is_some_and(|f| f.contains("sip:1001@")),
        "the caller is 1001: {:?}",
        invite.get("From")
    );
    let offer = String::from_utf8_lossy(&invite.body).into_owned();
    // The box's own WebRTC session: its ICE and fingerprint, nothing of the calling browser's.
    assert!(offer.contains("UDP/TLS/RTP/SAVPF") && offer.contains("a=ice-lite"), "{offer}");
    for leak in ["wX4X", "3A:96:6D", "192.0.2.10", "127.0.0.1 ", "3735928559"] {
        assert!(!offer.contains(leak), "{leak} in the callee's offer\n{offer}");
    }
    // Two calls joined inside the box: 1001 -> 1002 (to the box) and 1001 -> 1002 (to the browser).
    let calls = lab.b2bua.calls(lab.now);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|c| c.caller == "1001" && c.callee == "1002"), "{calls:?}");

    // The callee's browser answers with G.722 (the first codec both browsers offered).
    let answer_sdp = CHROMIUM_OFFER
        .replace("SAVPF 111 63 9 0 8 13 110 126", "SAVPF 9 126")
        .replace("a=setup:actpass", "a=setup:active")
        .replace("a=ice-ufrag:wX4X", "a=ice-ufrag:bBbB");
    let ws = Flow { transport: Transport::Ws, local: addr("0.0.0.0:8443"), remote: addr(BROWSER_B) };
    lab.b2bua.handle_input(lab.now, ws, answer(&invite, 200, "b2", &answer_sdp).as_bytes());
    let out = lab.sent();
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the caller").1.clone();
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains("UDP/TLS/RTP/SAVPF 9") && body.contains("a=fingerprint:sha-256"), "{body}");
    assert!(!body.contains("bBbB") && !body.contains("10.1.1.7"), "the callee browser is hidden\n{body}");
    let actions = lab.actions();
    let sessions: Vec<(Side, u16, u16)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::OpenWebRtc { side, ports, payloads, .. } => {
                assert_eq!(payloads.transcode, None, "G.722 passes through both sessions");
                Some((*side, ports.a_port, ports.b_port))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sessions.len(), 2, "one WebRTC session per browser: {actions:?}");
    // Each session's plain side sends to the other's, on loopback.
    let peers: Vec<SocketAddr> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Peer { peer, .. } => peer.destination.filter(|d| d.ip().is_loopback()),
            _ => None,
        })
        .collect();
    let (caller_session, callee_session) = match sessions[..] {
        [(Side::A, _, _), (Side::B, _, _)] => (sessions[0], sessions[1]),
        [(Side::B, _, _), (Side::A, _, _)] => (sessions[1], sessions[0]),
        _ => panic!("sessions {sessions:?}"),
    };
    assert!(peers.iter().any(|p| p.port() == callee_session.1), "caller's relay sends to the callee's: {peers:?}");
    assert!(peers.iter().any(|p| p.port() == caller_session.2), "callee's relay sends to the caller's: {peers:?}");

    // The caller hangs up: both calls end, the callee's browser gets the BYE.
    let bye = format!(
        "BYE sip:x@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKbye1\r\n\
From: \"Alice\" <sip:1001@{DOMAIN}>;tag=alicetag\r\nTo: {}\r\nCall-ID: alice-call@10.1.1.5\r\nCSeq: 3 BYE\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        ok.get("To").expect("to")
    );
    let out = lab.send(CALLER, &bye);
    assert!(out.iter().any(|(to, m)| *to == addr(CALLER) && code(m) == 200), "the caller's BYE is answered");
    let (to, bye_b) = out.iter().find(|(_, m)| method(m) == "BYE").expect("BYE to the callee").clone();
    assert_eq!(to, addr(BROWSER_B));
    lab.b2bua.handle_input(lab.now, ws, answer(&bye_b, 200, "b2", "").as_bytes());
    let _ = lab.sent();
    assert!(lab.b2bua.calls(lab.now).is_empty(), "both halves ended");
}

#[test]
fn behind_a_one_to_one_nat_the_trunk_gets_the_public_address_and_the_lan_phone_the_boxs_own() {
    let mut lab = Lab::new(vec![trunk("first", T1, 1)], routes());
    let mut config = lab.b2bua.config().clone();
    config.public_ip = "198.51.100.1".parse().ok();
    config.local_networks = branchgate_config::MediaConfig::default().local_networks;
    lab.b2bua.set_config(config, lab.now);
    let out = lab.call("95551234");
    let (_, invite) = out.iter().find(|(_, m)| method(m) == "INVITE").expect("INVITE to the trunk").clone();
    let offer = String::from_utf8_lossy(&invite.body).into_owned();
    assert!(offer.contains("c=IN IP4 198.51.100.1"), "the trunk (outside) is offered the public address\n{offer}");
    for header in ["Via", "Contact", "From"] {
        assert!(invite.get(header).is_some_and(|v| v.contains("198.51.100.1")), "{header}: {:?}", invite.get(header));
    }
    let answer_sdp =
        "v=0\r\no=bob 1 1 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let out = lab.send(T1, &answer(&invite, 200, "t1", answer_sdp));
    let ok = out.iter().find(|(to, m)| *to == addr(CALLER) && code(m) == 200).expect("200 to the caller").1.clone();
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(
        body.contains("c=IN IP4 203.0.113.1") && !body.contains("198.51.100.1"),
        "the LAN phone gets the box's own\n{body}"
    );
}
