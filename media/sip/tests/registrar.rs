//! The registrar through whole exchanges, with virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use branchgate_sip::digest::{Algorithm, Credentials, expected_response};
use branchgate_sip::message::param;
use branchgate_sip::{Flow, Message, Server, ServerConfig, StartLine, Transport, UserKeys};

const DOMAIN: &str = "branch.example";

fn keys(user: &str, password: &str) -> UserKeys {
    use md5::Digest;
    let input = format!("{user}:{DOMAIN}:{password}");
    UserKeys {
        md5: hex::encode(md5::Md5::digest(input.as_bytes())),
        sha256: hex::encode(sha2::Sha256::digest(input.as_bytes())),
    }
}

fn flow() -> Flow {
    Flow {
        transport: Transport::Udp,
        local: "127.0.0.1:5060".parse().expect("addr"),
        remote: "192.0.2.7:40000".parse().expect("addr"),
    }
}

struct Harness {
    server: Server,
    now: Instant,
    cseq: u32,
}

impl Harness {
    fn new() -> Self {
        let mut config = ServerConfig::new(DOMAIN);
        config.users.insert("1001".into(), keys("1001", "pw"));
        let now = Instant::now();
        Harness { server: Server::new(config, [5; 32], now), now, cseq: 0 }
    }

    fn send(&mut self, text: &str) -> Vec<Message> {
        self.server.handle_input(self.now, flow(), text.as_bytes());
        let mut out = Vec::new();
        while let Some(o) = self.server.poll_output() {
            assert_eq!(o.flow, flow());
            out.push(Message::parse(&o.data).expect("our output parses"));
        }
        out
    }

    fn register(
        &mut self,
        user: &str,
        contact: &str,
        expires: u32,
        authorization: Option<String>,
    ) -> (String, Message) {
        self.cseq += 1;
        let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let branch = format!("z9hG4bK{}", self.cseq);
        let text = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch={branch};rport\r\n\
From: <sip:{user}@{DOMAIN}>;tag=a1\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: reg-1\r\nCSeq: {} REGISTER\r\n\
Contact: {contact}\r\nExpires: {expires}\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n",
            self.cseq
        );
        let mut replies = self.send(&text);
        assert_eq!(replies.len(), 1);
        (text, replies.remove(0))
    }

    /// Registers with digest after the challenge.
    fn register_authenticated(&mut self, user: &str, password: &str, contact: &str, expires: u32) -> Message {
        let header = self.credentials(user, password, contact, expires);
        self.register(user, contact, expires, Some(header)).1
    }

    /// Gets a challenge and computes the Authorization value answering it.
    fn credentials(&mut self, user: &str, password: &str, contact: &str, expires: u32) -> String {
        let (_, challenge) = self.register(user, contact, expires, None);
        assert_eq!(code(&challenge), 401);
        let www: Vec<&str> = challenge.lines("WWW-Authenticate").collect();
        assert_eq!(www.len(), 1, "MD5 only unless SHA-256 is offered");
        assert!(www[0].contains("algorithm=MD5"));
        let nonce = param(&format!(";{}", www[0].trim_start_matches("Digest ").replace(", ", ";")), "nonce")
            .expect("nonce")
            .to_string();
        let c = Credentials {
            username: user.into(),
            realm: DOMAIN.into(),
            nonce: nonce.clone(),
            uri: format!("sip:{DOMAIN}"),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("abc".into()),
            ..Credentials::default()
        };
        let ha1 = keys(user, password).md5;
        let response = expected_response(Algorithm::Md5, &ha1, "REGISTER", &c);
        format!(
            "Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"sip:{DOMAIN}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\""
        )
    }
}

fn code(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code, .. } => code,
        StartLine::Request { .. } => 0,
    }
}

#[test]
fn register_with_digest_then_expire() {
    let mut h = Harness::new();
    let ok = h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.5:5060>", 120);
    assert_eq!(code(&ok), 200);
    assert_eq!(ok.get_all("Contact"), vec!["<sip:1001@10.0.0.5:5060>;expires=120"]);
    assert!(ok.get("Via").is_some_and(|v| v.contains("received=192.0.2.7") && v.contains("rport=40000")));
    assert!(ok.get("To").and_then(|t| param(t, "tag")).is_some());
    let regs = h.server.registrations(h.now);
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].source, "192.0.2.7:40000".parse::<SocketAddr>().expect("addr"));
    h.now += Duration::from_secs(121);
    h.server.handle_timeout(h.now);
    assert!(h.server.registrations(h.now).is_empty());
}

#[test]
fn wrong_password_and_other_users_are_refused() {
    let mut h = Harness::new();
    assert_eq!(code(&h.register_authenticated("1001", "nope", "<sip:1001@10.0.0.5>", 120)), 403);
    assert_eq!(code(&h.register_authenticated("9999", "pw", "<sip:9999@10.0.0.5>", 120)), 403);
    assert!(h.server.registrations(h.now).is_empty());
    assert_eq!(h.server.auth_failures, 2);
}

#[test]
fn short_expiry_unregister_and_wildcard() {
    let mut h = Harness::new();
    let brief = h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.5>", 10);
    assert_eq!(code(&brief), 423);
    assert_eq!(brief.get("Min-Expires"), Some("60"));
    assert_eq!(code(&h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.5>", 300)), 200);
    assert_eq!(code(&h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.6>", 300)), 200);
    assert_eq!(h.server.contacts("1001", h.now).len(), 2, "several contacts per user");
    assert_eq!(code(&h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.6>", 0)), 200);
    assert_eq!(h.server.contacts("1001", h.now).len(), 1);
    assert_eq!(code(&h.register_authenticated("1001", "pw", "*", 0)), 200);
    assert!(h.server.registrations(h.now).is_empty());
}

#[test]
fn retransmissions_get_the_same_answer() {
    let mut h = Harness::new();
    let (text, first) = h.register("1001", "<sip:1001@10.0.0.5>", 300, None);
    let again = h.send(&text);
    assert_eq!(again, vec![first]);
}

#[test]
fn options_bad_requests_and_loops() {
    let mut h = Harness::new();
    let base =
        "Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKo1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: o1\r\n";
    let ok = h.send(&format!("OPTIONS sip:{DOMAIN} SIP/2.0\r\n{base}CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n"));
    assert_eq!(code(&ok[0]), 200);
    assert!(ok[0].get("Allow").is_some_and(|a| a.contains("REGISTER")));
    let mismatch = h.send(&format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\n{}CSeq: 2 INVITE\r\n\r\n",
        base.replace("z9hG4bKo1", "z9hG4bKo2")
    ));
    assert_eq!(code(&mismatch[0]), 400);
    let hops = h.send(&format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\n{}CSeq: 3 OPTIONS\r\nMax-Forwards: 0\r\n\r\n",
        base.replace("z9hG4bKo1", "z9hG4bKo3")
    ));
    assert_eq!(code(&hops[0]), 483);
    // Unparseable but answerable: 400 with a Warning saying why.
    let broken =
        h.send(&format!("OPTIONS sip:{DOMAIN} SIP/2.0\r\n{base}CSeq: 4 OPTIONS\r\nContent-Length: 99\r\n\r\nshort"));
    assert_eq!(code(&broken[0]), 400);
    assert!(broken[0].get("Warning").is_some_and(|w| w.contains("Content-Length")));
    // Not even that: silence.
    assert!(h.send("garbage\r\n\r\n").is_empty());
    assert!(h.send("\r\n\r\n").is_empty(), "a keep-alive on UDP needs no answer");
}

#[test]
fn sha256_is_offered_first_when_configured() {
    let mut h = Harness::new();
    let mut config = ServerConfig::new(DOMAIN);
    config.users.insert("1001".into(), keys("1001", "pw"));
    config.offer_sha256 = true;
    h.server.set_config(config);
    let (_, challenge) = h.register("1001", "<sip:1001@10.0.0.5>", 300, None);
    let www: Vec<&str> = challenge.lines("WWW-Authenticate").collect();
    assert_eq!(www.len(), 2);
    assert!(www[0].contains("algorithm=SHA-256") && www[1].contains("algorithm=MD5"), "RFC 8760 §2.4 order");
}

#[test]
fn a_replayed_authorization_is_challenged_again() {
    let mut h = Harness::new();
    let header = h.credentials("1001", "pw", "<sip:1001@10.0.0.5>", 300);
    assert_eq!(code(&h.register("1001", "<sip:1001@10.0.0.5>", 300, Some(header.clone())).1), 200);
    // The same credentials (same nonce and nc) in a new request: a replay.
    let (_, replayed) = h.register("1001", "<sip:1001@10.0.0.5>", 300, Some(header));
    assert_eq!(code(&replayed), 401);
    assert!(replayed.get("WWW-Authenticate").is_some_and(|w| w.contains("stale=true")));
}

#[test]
fn guessing_passwords_gets_the_address_refused_for_a_while() {
    let mut h = Harness::new();
    for _ in 0..branchgate_sip::server::MAX_FAILURES {
        assert_eq!(code(&h.register_authenticated("1001", "guess", "<sip:1001@10.0.0.5>", 300)), 403);
    }
    let refused = h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.5>", 300);
    assert_eq!(code(&refused), 403, "even the right password, while blocked");
    assert!(refused.get("Warning").is_some_and(|w| w.contains("too many")));
    // Another user behind the same address is not locked out by it.
    let mut config = ServerConfig::new(DOMAIN);
    config.users.insert("1001".into(), keys("1001", "pw"));
    config.users.insert("1002".into(), keys("1002", "pw2"));
    h.server.set_config(config);
    assert_eq!(code(&h.register_authenticated("1002", "pw2", "<sip:1002@10.0.0.5>", 300)), 200);
    h.now += branchgate_sip::server::FAILURE_WINDOW;
    h.server.handle_timeout(h.now);
    assert_eq!(code(&h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.5>", 300)), 200);
}

#[test]
fn an_older_register_of_the_same_call_id_is_refused_and_received_is_ours() {
    let mut h = Harness::new();
    assert_eq!(code(&h.register_authenticated("1001", "pw", "<sip:1001@10.0.0.5>", 300)), 200);
    let header = h.credentials("1001", "pw", "<sip:1001@10.0.0.5>", 300);
    // Same Call-ID, a CSeq lower than the binding's (2), in a new transaction.
    let late = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKold;rport\r\n\
From: <sip:1001@{DOMAIN}>;tag=a1\r\nTo: <sip:1001@{DOMAIN}>\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:1001@10.0.0.5>\r\nExpires: 300\r\nAuthorization: {header}\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(code(&h.send(&late).remove(0)), 500);
    // A client-supplied received is replaced by the real source.
    let text = "OPTIONS sip:branch.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;received=6.6.6.6;branch=z9hG4bKrcv\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:branch.example>\r\nCall-ID: rcv\r\nCSeq: 1 OPTIONS\r\n\r\n";
    let ok = h.send(text).remove(0);
    let via = ok.get("Via").expect("via");
    assert!(via.contains("received=192.0.2.7") && !via.contains("6.6.6.6"), "{via}");
}

#[test]
fn an_ack_is_never_answered_even_when_broken() {
    let mut h = Harness::new();
    for text in [
        "ACK  SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa1\r\nCSeq: 1 ACK\r\n\r\n",
        "ACK sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa2\r\nCSeq: 1 ACK\r\n\r\n",
    ] {
        assert!(h.send(text).is_empty(), "{text}");
    }
}
