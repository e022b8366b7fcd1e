//! The TURN server driven through whole allocations with virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use branchgate_turn::auth::{long_term_key, rest_credential};
use branchgate_turn::server::{HEADROOM, TAILROOM};
use branchgate_turn::stun::{Class, Message, Writer, attr, method};
use branchgate_turn::{FiveTuple, Forward, Output, Server, ServerConfig, Transport, frame_len};

const REALM: &str = "branch.example";
const LISTENER: &str = "127.0.0.1:3478";
const CLIENT: &str = "192.0.2.50:40000";
const PEER: &str = "127.0.0.1:5555";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

fn udp(client: &str) -> FiveTuple {
    FiveTuple { client: addr(client), listener: addr(LISTENER), transport: Transport::Udp }
}

struct Harness {
    server: Server,
    now: Instant,
    nonce: String,
    tid: u8,
    username: String,
    key: [u8; 16],
}

fn config() -> ServerConfig {
    let mut config = ServerConfig::new(REALM, "127.0.0.1".parse().expect("ip"));
    config.users.insert("test".into(), branchgate_turn::UserKey::from_password("test", REALM, "secret"));
    config.relay_ports = 50000..=50009;
    config.max_allocations_per_user = 2;
    config
}

impl Harness {
    fn new(config: ServerConfig) -> Self {
        let now = Instant::now();
        Harness {
            server: Server::new(config, [42; 32], now, 1_800_000_000),
            now,
            nonce: String::new(),
            tid: 0,
            username: "test".into(),
            key: long_term_key("test", REALM, "secret"),
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        [self.tid; 12]
    }

    /// Sends a request and returns the one reply it produced (and any other outputs).
    fn request(
        &mut self,
        client: &str,
        method: u16,
        authenticated: bool,
        fill: impl Fn(&mut Writer<'_>),
    ) -> (Vec<u8>, Vec<Output>) {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf, Class::Request, method, tid);
            fill(&mut w);
            if authenticated {
                w.attr(attr::USERNAME, self.username.as_bytes())
                    .attr(attr::REALM, REALM.as_bytes())
                    .attr(attr::NONCE, self.nonce.as_bytes())
                    .integrity(&self.key);
            }
            w.fingerprint();
        }
        let forward = self.server.handle_client_packet(self.now, udp(client), &buf);
        assert_eq!(forward, Forward::None);
        let mut reply = None;
        let mut others = Vec::new();
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Reply { data, tuple } if reply.is_none() => {
                    assert_eq!(tuple, udp(client));
                    reply = Some(data);
                }
                other => others.push(other),
            }
        }
        (reply.unwrap_or_default(), others)
    }

    fn error_code(reply: &[u8]) -> Option<u16> {
        let m = Message::parse(reply).expect("reply parses");
        let value = m.get(attr::ERROR_CODE)?.value;
        Some(u16::from(value[2]) * 100 + u16::from(value[3]))
    }

    /// The 401 dance: get a nonce.
    fn learn_nonce(&mut self) {
        self.learn_nonce_for(CLIENT);
    }

    /// Nonces are bound to the client's address.
    fn learn_nonce_for(&mut self, client: &str) {
        let (reply, _) = self.request(client, method::ALLOCATE, false, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(Self::error_code(&reply), Some(401));
        let m = Message::parse(&reply).expect("parse");
        assert_eq!(m.text(attr::REALM), Some(REALM));
        assert!(!m.has(attr::SOFTWARE), "unauthenticated answers stay small");
        self.nonce = m.text(attr::NONCE).expect("nonce").to_string();
    }

    /// Allocates for `client` and binds the relay; returns the relayed address.
    fn allocate(&mut self, client: &str) -> SocketAddr {
        let (reply, outputs) = self.request(client, method::ALLOCATE, true, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert!(reply.is_empty(), "the answer waits for the relay socket");
        let Some(Output::BindRelay { port, .. }) = outputs.first().cloned() else {
            panic!("expected BindRelay, got {outputs:?}");
        };
        self.server.relay_bound(self.now, port, Ok(SocketAddr::new("127.0.0.1".parse().expect("ip"), port)));
        let Some(Output::Reply { data, .. }) = self.server.poll_output() else {
            panic!("no allocate answer");
        };
        let m = Message::parse(&data).expect("parse");
        assert_eq!(m.class, Class::Success);
        assert!(m.integrity_ok(&self.key));
        assert_eq!(m.fingerprint_ok(), Some(true));
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(addr(client))));
        assert_eq!(m.u32(attr::LIFETIME), Some(600));
        m.xor_address(attr::XOR_RELAYED_ADDRESS).expect("relayed").expect("valid")
    }
}

fn allowing_loopback() -> ServerConfig {
    let mut config = config();
    config.policy.allowed = vec!["127.0.0.1/32".parse().expect("net")];
    config
}

#[test]
fn binding_answers_with_the_mapped_address() {
    let mut h = Harness::new(config());
    let (reply, _) = h.request(CLIENT, method::BINDING, false, |_| {});
    let m = Message::parse(&reply).expect("parse");
    assert_eq!((m.class, m.method), (Class::Success, method::BINDING));
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(addr(CLIENT))));
    assert_eq!(m.fingerprint_ok(), Some(true));
    assert!(reply.len() <= 40, "no amplification: {} bytes", reply.len());
}

#[test]
fn a_whole_allocation_relays_both_ways() {
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    let relayed = h.allocate(CLIENT);
    assert_eq!(relayed.port(), 50000);

    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    assert_eq!(Harness::error_code(&reply), None, "permission granted");

    // Send indication → to the peer, zero-copy.
    let mut send = Vec::new();
    Writer::new(&mut send, Class::Indication, method::SEND, [9; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, addr(PEER))
        .attr(attr::DATA, b"hello peer");
    match h.server.handle_client_packet(h.now, udp(CLIENT), &send) {
        Forward::ToPeer { relay_port, peer, payload } => {
            assert_eq!((relay_port, peer, payload), (50000, addr(PEER), &b"hello peer"[..]));
        }
        other => panic!("{other:?}"),
    }

    // The peer answers → a Data indication framed in place.
    let mut buf = vec![0u8; HEADROOM + 1500 + TAILROOM];
    buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hi 42");
    match h.server.handle_peer_packet(h.now, 50000, addr(PEER), &mut buf, 5) {
        Forward::ToClient { tuple, packet } => {
            assert_eq!(tuple, udp(CLIENT));
            let m = Message::parse(packet).expect("data indication parses");
            assert_eq!((m.class, m.method), (Class::Indication, method::DATA));
            assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(addr(PEER))));
            assert_eq!(m.get(attr::DATA).map(|a| a.value), Some(&b"hi 42"[..]));
        }
        other => panic!("{other:?}"),
    }

    // A channel: ChannelData both ways.
    let (reply, _) = h.request(CLIENT, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    assert_eq!(Harness::error_code(&reply), None);
    let channel_data = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    assert_eq!(
        h.server.handle_client_packet(h.now, udp(CLIENT), &channel_data),
        Forward::ToPeer { relay_port: 50000, peer: addr(PEER), payload: b"abc" }
    );
    buf[HEADROOM..HEADROOM + 2].copy_from_slice(b"ok");
    match h.server.handle_peer_packet(h.now, 50000, addr(PEER), &mut buf, 2) {
        Forward::ToClient { packet, .. } => assert_eq!(packet, &[0x40, 0x01, 0x00, 0x02, b'o', b'k']),
        other => panic!("{other:?}"),
    }
    // The same channel for another peer is refused.
    let (reply, _) = h.request(CLIENT, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.1:6666"));
    });
    assert_eq!(Harness::error_code(&reply), Some(400));

    let info = h.server.allocations(h.now);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].to_peer.packets, 2);
    assert_eq!(info[0].to_client.packets, 2);

    // Refresh with lifetime 0 deletes it and closes the relay socket.
    let (reply, others) = h.request(CLIENT, method::REFRESH, true, |w| {
        w.u32(attr::LIFETIME, 0);
    });
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(others, vec![Output::CloseRelay { port: 50000 }]);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn internal_peers_are_refused_by_default() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    h.allocate(CLIENT);
    for peer in ["127.0.0.1:5555", "[::ffff:127.0.0.1]:5555", "10.0.0.1:5555", "0.0.0.0:5555", "192.168.1.1:9"] {
        let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, addr(peer));
        });
        assert_eq!(Harness::error_code(&reply), Some(403), "{peer}");
    }
    // Nothing installed: the peer's packets are dropped.
    let mut buf = vec![0u8; HEADROOM + 100 + TAILROOM];
    assert_eq!(h.server.handle_peer_packet(h.now, 50000, addr(PEER), &mut buf, 10), Forward::None);
    assert!(h.server.stats.denied_peers >= 5);
}

#[test]
fn zero_is_refused_even_when_everything_is_allowed() {
    let mut config = config();
    config.policy.allowed = vec!["0.0.0.0/0".parse().expect("net")];
    let mut h = Harness::new(config);
    h.learn_nonce();
    h.allocate(CLIENT);
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr("0.0.0.0:5555"));
    });
    assert_eq!(Harness::error_code(&reply), Some(403));
}

#[test]
fn bad_credentials_stale_nonces_and_quotas() {
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    // Wrong password.
    h.key = long_term_key("test", REALM, "wrong");
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(401));
    assert_eq!(h.server.stats.auth_failures, 1);
    h.key = long_term_key("test", REALM, "secret");
    // Unknown user.
    h.username = "nobody".into();
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(401));
    h.username = "test".into();
    // A TCP relay over UDP is a bad request (RFC 6062 §5.1); an unknown transport is 442.
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(400));
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(442));
    // The nonce goes stale after its lifetime: 438 with a new one.
    h.now += Duration::from_secs(601);
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(438));
    let fresh = Message::parse(&reply).expect("parse").text(attr::NONCE).expect("nonce").to_string();
    assert_ne!(fresh, h.nonce);
    h.nonce = fresh;
    // Two allocations per user, then 486.
    h.allocate("192.0.2.50:40001");
    h.allocate("192.0.2.50:40002");
    let (reply, _) = h.request("192.0.2.50:40003", method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(486));
    // A second Allocate on the same 5-tuple is a mismatch.
    let (reply, _) = h.request("192.0.2.50:40001", method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(437));
}

#[test]
fn rest_credentials_work_until_they_expire() {
    let mut config = allowing_loopback();
    config.rest_secret = Some(b"rest-secret".to_vec());
    let mut h = Harness::new(config);
    h.learn_nonce();
    let (username, password) = rest_credential(b"rest-secret", "app", 1_800_000_000, 60);
    h.key = long_term_key(&username, REALM, &password);
    h.username = username;
    h.allocate(CLIENT);
    // An expired one is refused.
    let (username, password) = rest_credential(b"rest-secret", "app", 1_799_990_000, 60);
    h.key = long_term_key(&username, REALM, &password);
    h.username = username;
    let (reply, _) = h.request("192.0.2.50:40009", method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(401));
}

#[test]
fn allocations_and_permissions_expire() {
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    h.allocate(CLIENT);
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    assert_eq!(Harness::error_code(&reply), None);
    let mut buf = vec![0u8; HEADROOM + 100 + TAILROOM];
    h.now += Duration::from_secs(301);
    h.server.handle_timeout(h.now);
    assert_eq!(
        h.server.handle_peer_packet(h.now, 50000, addr(PEER), &mut buf, 10),
        Forward::None,
        "permission expired"
    );
    assert_eq!(h.server.poll_timeout(), Some(h.now - Duration::from_secs(301) + Duration::from_secs(600)));
    h.now += Duration::from_secs(300);
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_output(), Some(Output::CloseRelay { port: 50000 }));
}

#[test]
fn a_taken_relay_port_is_replaced() {
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    let (_, outputs) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(outputs, vec![Output::BindRelay { ip: "127.0.0.1".parse().expect("ip"), port: 50000, tcp: false }]);
    h.server.relay_bound(h.now, 50000, Err(()));
    assert_eq!(
        h.server.poll_output(),
        Some(Output::BindRelay { ip: "127.0.0.1".parse().expect("ip"), port: 50001, tcp: false })
    );
    h.server.relay_bound(h.now, 50001, Ok(addr("127.0.0.1:50001")));
    let Some(Output::Reply { data, .. }) = h.server.poll_output() else { panic!("no answer") };
    let m = Message::parse(&data).expect("parse");
    assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS), Some(Ok(addr("127.0.0.1:50001"))));
}

#[test]
fn garbage_from_clients_is_dropped() {
    let mut h = Harness::new(config());
    for junk in [&b""[..], b"\x40", b"\x40\x00\xff\xff", b"\x00\x01\x00\x00\x21\x12\xa4\x42", &[0u8; 64]] {
        assert_eq!(h.server.handle_client_packet(h.now, udp(CLIENT), junk), Forward::None);
    }
    assert_eq!(h.server.poll_output(), None);
}

#[test]
fn stream_framing_and_padding() {
    assert_eq!(frame_len(&[0x00, 0x01]), Ok(None));
    let binding = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xAA];
    assert_eq!(frame_len(&binding), Ok(Some(20)));
    assert_eq!(frame_len(&binding[..19]), Ok(None));
    assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]), Ok(Some(12)), "ChannelData padded to 4");
    assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0]), Ok(None));
    assert_eq!(frame_len(&[0xC0, 0, 0, 0]), Err(()));
    // Over TCP, ChannelData to the client is padded too.
    let mut h = Harness::new(allowing_loopback());
    let tcp = FiveTuple { client: addr(CLIENT), listener: addr(LISTENER), transport: Transport::Tcp };
    let send = |h: &mut Harness, method: u16, authenticated: bool, fill: &dyn Fn(&mut Writer<'_>)| {
        let tid = h.next_tid();
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, Class::Request, method, tid);
        fill(&mut w);
        if authenticated {
            w.attr(attr::USERNAME, b"test")
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, h.nonce.as_bytes())
                .integrity(&h.key);
        }
        let _ = h.server.handle_client_packet(h.now, tcp, &buf);
        let mut outputs = Vec::new();
        while let Some(o) = h.server.poll_output() {
            outputs.push(o);
        }
        outputs
    };
    let outputs = send(&mut h, method::ALLOCATE, false, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let Some(Output::Reply { data, .. }) = outputs.first() else { panic!("challenge") };
    h.nonce = Message::parse(data).expect("parse").text(attr::NONCE).expect("nonce").to_string();
    let outputs = send(&mut h, method::ALLOCATE, true, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let Some(Output::BindRelay { port, .. }) = outputs.first().cloned() else { panic!("bind") };
    h.server.relay_bound(h.now, port, Ok(addr("127.0.0.1:50000")));
    let _ = h.server.poll_output();
    send(&mut h, method::CHANNEL_BIND, true, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    let mut buf = vec![0xEEu8; HEADROOM + 100 + TAILROOM];
    buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
    match h.server.handle_peer_packet(h.now, port, addr(PEER), &mut buf, 5) {
        Forward::ToClient { packet, .. } => {
            assert_eq!(packet, &[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0])
        }
        other => panic!("{other:?}"),
    }
    // Closing the connection deletes the allocation.
    h.server.connection_closed(tcp);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_output(), Some(Output::CloseRelay { port }));
}

#[test]
fn repeated_bad_credentials_are_rate_limited() {
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    let good_key = h.key;
    h.key = long_term_key("test", REALM, "guess");
    for _ in 0..branchgate_turn::server::AUTH_FAILURE_LIMIT {
        let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(Harness::error_code(&reply), Some(401));
    }
    // Now even the right password gets no answer from this address...
    h.key = good_key;
    let (reply, others) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert!(reply.is_empty() && others.is_empty(), "dropped unanswered");
    // ...while another address is served,
    h.learn_nonce_for("198.51.100.7:4000");
    h.allocate("198.51.100.7:4000");
    // and after the window the first one is too.
    h.now += branchgate_turn::server::AUTH_FAILURE_WINDOW;
    h.server.handle_timeout(h.now);
    h.learn_nonce();
    h.allocate(CLIENT);
}

#[test]
fn the_boxs_own_services_stay_closed_even_with_loopback_allowed() {
    let mut config = allowing_loopback();
    config.policy.own_ports = vec![8443, 5060];
    let mut h = Harness::new(config);
    h.learn_nonce();
    h.allocate(CLIENT);
    let (reply, _) = h.request(CLIENT, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.1:8443"));
    });
    assert_eq!(Harness::error_code(&reply), Some(403));
    // A permission for the address (any port) does not open the admin port to Send.
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    assert_eq!(Harness::error_code(&reply), None);
    let mut send = Vec::new();
    Writer::new(&mut send, Class::Indication, method::SEND, [9; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.1:5060"))
        .attr(attr::DATA, b"INVITE sip:...");
    assert_eq!(h.server.handle_client_packet(h.now, udp(CLIENT), &send), Forward::None);
}

/// RFC 8489 clients: USERHASH instead of USERNAME, PASSWORD-ALGORITHM SHA-256,
/// MESSAGE-INTEGRITY-SHA256; the answer is protected the same way.
#[test]
fn rfc8489_sha256_and_userhash() {
    use branchgate_turn::auth::{long_term_key_sha256, userhash};
    let mut h = Harness::new(allowing_loopback());
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, false, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let challenge = Message::parse(&reply).expect("parse");
    let nonce = challenge.text(attr::NONCE).expect("nonce").to_string();
    assert!(nonce.starts_with("obMatJos2"), "security feature cookie: {nonce}");
    let offered = challenge.get(attr::PASSWORD_ALGORITHMS).expect("password algorithms").value.to_vec();
    let key = long_term_key_sha256("test", REALM, "secret");
    let send = |h: &mut Harness, offered: &[u8], algorithm: &[u8]| {
        let tid = h.next_tid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, Class::Request, method::ALLOCATE, tid)
            .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::USERHASH, &userhash("test", REALM))
            .attr(attr::NONCE, nonce.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::PASSWORD_ALGORITHMS, offered)
            .attr(attr::PASSWORD_ALGORITHM, algorithm)
            .integrity_sha256(&key);
        let _ = h.server.handle_client_packet(h.now, udp(CLIENT), &buf);
        let mut outputs = Vec::new();
        while let Some(o) = h.server.poll_output() {
            outputs.push(o);
        }
        outputs
    };
    // A tampered algorithm list is a downgrade attempt: 400.
    let outputs = send(&mut h, &[0, 1, 0, 0], &[0, 1, 0, 0]);
    let Some(Output::Reply { data, .. }) = outputs.first() else { panic!("answer") };
    assert_eq!(Harness::error_code(data), Some(400));
    let outputs = send(&mut h, &offered, &[0, 2, 0, 0]);
    let Some(Output::BindRelay { port, .. }) = outputs.first().cloned() else {
        panic!("expected BindRelay: {outputs:?}")
    };
    h.server.relay_bound(h.now, port, Ok(addr("127.0.0.1:50000")));
    let Some(Output::Reply { data, .. }) = h.server.poll_output() else { panic!("allocate answer") };
    let m = Message::parse(&data).expect("parse");
    assert_eq!(m.class, Class::Success);
    assert!(m.integrity_sha256_ok(&key), "answered with MESSAGE-INTEGRITY-SHA256");
    assert!(!m.has(attr::MESSAGE_INTEGRITY));
}

#[test]
fn permissions_per_allocation_are_capped() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    h.allocate(CLIENT);
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        for i in 0..65u8 {
            w.xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new([198, 51, 100, i].into(), 9));
        }
    });
    // 198.51.100.0/24 is documentation space, refused by policy first: use public-looking addresses.
    assert!(Harness::error_code(&reply).is_some());
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        for i in 0..65u8 {
            w.xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new([93, 184, 1, i].into(), 9));
        }
    });
    assert_eq!(Harness::error_code(&reply), Some(508));
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        for i in 0..64u8 {
            w.xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new([93, 184, 1, i].into(), 9));
        }
    });
    assert_eq!(Harness::error_code(&reply), None);
}

/// A request from `tuple` (authenticated with the harness's credentials) and everything it caused.
fn request_on(
    h: &mut Harness,
    tuple: FiveTuple,
    method: u16,
    fill: impl Fn(&mut Writer<'_>),
) -> (Option<Vec<u8>>, Vec<Output>) {
    let tid = h.next_tid();
    let mut buf = Vec::new();
    {
        let mut w = Writer::new(&mut buf, Class::Request, method, tid);
        fill(&mut w);
        w.attr(attr::USERNAME, h.username.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, h.nonce.as_bytes())
            .integrity(&h.key);
        w.fingerprint();
    }
    assert_eq!(h.server.handle_client_packet(h.now, tuple, &buf), Forward::None);
    let mut reply = None;
    let mut others = Vec::new();
    while let Some(output) = h.server.poll_output() {
        match output {
            Output::Reply { data, tuple: to } if to == tuple && reply.is_none() => reply = Some(data),
            other => others.push(other),
        }
    }
    (reply, others)
}

#[test]
fn rfc6062_tcp_allocations_connect_bind_and_accept() {
    let mut config = allowing_loopback();
    config.policy.allowed.push("127.0.0.2/32".parse().expect("net"));
    let mut h = Harness::new(config);
    h.learn_nonce();
    let tcp_tuple =
        |client: &str| FiveTuple { client: addr(client), listener: addr(LISTENER), transport: Transport::Tcp };
    let control = tcp_tuple(CLIENT);
    // A TCP relay needs a TCP (or TLS) control connection.
    let (reply, _) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(Harness::error_code(&reply), Some(400));
    let (reply, outputs) = request_on(&mut h, control, method::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert!(reply.is_none());
    let Some(Output::BindRelay { port, tcp: true, .. }) = outputs.first().cloned() else {
        panic!("a TCP relay listener, got {outputs:?}");
    };
    h.server.relay_bound(h.now, port, Ok(SocketAddr::new("127.0.0.1".parse().expect("ip"), port)));
    let Some(Output::Reply { data, .. }) = h.server.poll_output() else { panic!("allocate answer") };
    assert_eq!(Message::parse(&data).expect("parse").class, Class::Success);

    // No channels on a TCP allocation; no Connect without a permission.
    let peer = addr(PEER);
    let (reply, _) = request_on(&mut h, control, method::CHANNEL_BIND, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    assert_eq!(Harness::error_code(&reply.expect("reply")), Some(400));
    let (reply, _) = request_on(&mut h, control, method::CONNECT, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    assert_eq!(Harness::error_code(&reply.expect("reply")), Some(403));
    let (reply, _) = request_on(&mut h, control, method::CREATE_PERMISSION, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    assert!(Harness::error_code(&reply.expect("reply")).is_none());

    // Connect: the driver connects, then the answer carries the CONNECTION-ID.
    let (reply, outputs) = request_on(&mut h, control, method::CONNECT, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    assert!(reply.is_none(), "the answer waits for the connection");
    let Some(Output::ConnectPeer { connection, peer: to, .. }) = outputs.first().cloned() else {
        panic!("ConnectPeer, got {outputs:?}");
    };
    assert_eq!(to, peer);
    let (reply, _) = request_on(&mut h, control, method::CONNECT, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    assert_eq!(Harness::error_code(&reply.expect("reply")), Some(446), "one connection per peer");
    h.server.peer_connect_result(h.now, connection, true);
    let Some(Output::Reply { data, tuple }) = h.server.poll_output() else { panic!("connect answer") };
    assert_eq!(tuple, control);
    let m = Message::parse(&data).expect("parse");
    assert!(m.integrity_ok(&h.key));
    assert_eq!(m.get(attr::CONNECTION_ID).map(|a| a.value.to_vec()), Some(connection.to_be_bytes().to_vec()));

    // ConnectionBind on a new connection joins it to the peer connection.
    let data_tuple = tcp_tuple("192.0.2.50:40001");
    let (reply, _) = request_on(&mut h, data_tuple, method::CONNECTION_BIND, |w| {
        w.attr(attr::CONNECTION_ID, &(connection ^ 1).to_be_bytes());
    });
    assert_eq!(Harness::error_code(&reply.expect("reply")), Some(400), "unknown CONNECTION-ID");
    let (reply, outputs) = request_on(&mut h, data_tuple, method::CONNECTION_BIND, |w| {
        w.attr(attr::CONNECTION_ID, &connection.to_be_bytes());
    });
    assert_eq!(Message::parse(&reply.expect("reply")).expect("parse").class, Class::Success);
    assert_eq!(outputs, vec![Output::JoinData { connection, data: data_tuple }]);

    // A peer connecting to the relay: only with a permission; the client hears a ConnectionAttempt.
    assert_eq!(h.server.peer_connection(h.now, port, addr("127.0.0.3:6000")), None, "no permission");
    let (_, _) = request_on(&mut h, control, method::CREATE_PERMISSION, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.2:1"));
    });
    let incoming = h.server.peer_connection(h.now, port, addr("127.0.0.2:6000")).expect("accepted");
    let Some(Output::Reply { data, tuple }) = h.server.poll_output() else { panic!("ConnectionAttempt") };
    assert_eq!(tuple, control);
    let m = Message::parse(&data).expect("parse");
    assert_eq!((m.class, m.method), (Class::Indication, method::CONNECTION_ATTEMPT));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(addr("127.0.0.2:6000"))));
    // Never bound: closed after 30 s.
    h.now += Duration::from_secs(31);
    h.server.handle_timeout(h.now);
    let closed: Vec<Output> = std::iter::from_fn(|| h.server.poll_output()).collect();
    assert!(closed.contains(&Output::ClosePeer { connection: incoming }));
    assert!(!closed.contains(&Output::ClosePeer { connection }), "the bound one stays");
    // The control connection goes: the allocation and its peer connections with it.
    h.server.connection_closed(control);
    let closed: Vec<Output> = std::iter::from_fn(|| h.server.poll_output()).collect();
    assert!(closed.contains(&Output::ClosePeer { connection }) && closed.contains(&Output::CloseRelay { port }));
}

#[test]
fn challenges_to_one_address_are_rate_limited() {
    let mut h = Harness::new(config());
    let mut answered = 0;
    for _ in 0..(branchgate_turn::server::CHALLENGE_LIMIT + 20) {
        let (reply, _) = h.request(CLIENT, method::ALLOCATE, false, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        answered += usize::from(!reply.is_empty());
    }
    assert_eq!(answered, branchgate_turn::server::CHALLENGE_LIMIT as usize, "no amplifier for a spoofed source");
    h.now += branchgate_turn::server::CHALLENGE_WINDOW;
    h.server.handle_timeout(h.now);
    h.learn_nonce();
}

#[test]
fn an_allocation_beyond_its_bandwidth_cap_is_dropped_each_way_and_recovers_with_time() {
    let mut config = allowing_loopback();
    // 10 000 bytes a second each way, a second of it at once.
    config.max_allocation_bytes_per_second = 10_000;
    let mut h = Harness::new(config);
    h.learn_nonce();
    h.allocate(CLIENT);
    let (reply, _) = h.request(CLIENT, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    assert_eq!(Harness::error_code(&reply), None);
    let mut channel_data = vec![0x40, 0x01, 0x03, 0xe8];
    channel_data.extend([7u8; 1000]);
    let mut buf = vec![0u8; HEADROOM + 1500 + TAILROOM];
    let mut relayed = |h: &mut Harness| {
        let to_peer = (0..30)
            .filter(|_| {
                matches!(h.server.handle_client_packet(h.now, udp(CLIENT), &channel_data), Forward::ToPeer { .. })
            })
            .count();
        let to_client = (0..30)
            .filter(|_| {
                matches!(
                    h.server.handle_peer_packet(h.now, 50000, addr(PEER), &mut buf, 1000),
                    Forward::ToClient { .. }
                )
            })
            .count();
        (to_peer, to_client)
    };
    assert_eq!(relayed(&mut h), (10, 10), "a second's worth passes at once, the rest is dropped");
    h.now += Duration::from_millis(500);
    assert_eq!(relayed(&mut h), (5, 5), "half a second later, half a second's worth");
    h.now += Duration::from_secs(10);
    assert_eq!(relayed(&mut h), (10, 10), "the budget holds at most a second");
    assert_eq!(h.server.stats.dropped, 3 * 2 * 30 - 50);
}

// ----- IPv6 and dual allocations (RFC 8656 §7.2, §7.3, §9, §12; RFC 6156) ---------------------

const PEER6: &str = "[::1]:6666";

/// Loopback of both families allowed (a lab), with an IPv6 relay beside the IPv4 one.
fn dual_stack() -> ServerConfig {
    let mut config = allowing_loopback();
    config.relay_ipv6 = Some("::1".parse().expect("ip"));
    config.policy.allowed.push("::1/128".parse().expect("net"));
    config
}

/// REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY with `family`.
fn family_attr(kind: u16, family: u8) -> impl Fn(&mut Writer<'_>) {
    move |w| {
        w.attr(kind, &[family, 0, 0, 0]);
    }
}

/// Attributes a test case adds to a request.
type FillRequest = Box<dyn Fn(&mut Writer<'_>)>;

/// Every XOR-RELAYED-ADDRESS of an answer, in order.
fn relayed_addresses(reply: &[u8]) -> Vec<SocketAddr> {
    let m = Message::parse(reply).expect("parse");
    let tid = m.transaction_id();
    m.all(attr::XOR_RELAYED_ADDRESS)
        .map(|a| branchgate_turn::stun::decode_xor_address(a.value, &tid).expect("valid address"))
        .collect()
}

impl Harness {
    /// An Allocate with `fill`'s attributes beside REQUESTED-TRANSPORT UDP: every relay socket it
    /// asks for is bound where asked; the answer (success or error) and the BindRelay outputs.
    fn allocate_with(&mut self, client: &str, fill: impl Fn(&mut Writer<'_>)) -> (Vec<u8>, Vec<Output>) {
        let (reply, outputs) = self.request(client, method::ALLOCATE, true, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            fill(w);
        });
        if !reply.is_empty() {
            return (reply, outputs);
        }
        for output in &outputs {
            let Output::BindRelay { ip, port, .. } = output else { panic!("unexpected {output:?}") };
            self.server.relay_bound(self.now, *port, Ok(SocketAddr::new(*ip, *port)));
        }
        let Some(Output::Reply { data, .. }) = self.server.poll_output() else { panic!("no allocate answer") };
        (data, outputs)
    }

    fn permit(&mut self, peer: &str) -> Option<u16> {
        let (reply, _) = self.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, addr(peer));
        });
        Self::error_code(&reply)
    }

    fn send_to(&mut self, peer: &str, data: &[u8]) -> Option<(u16, SocketAddr)> {
        let mut send = Vec::new();
        Writer::new(&mut send, Class::Indication, method::SEND, [9; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, addr(peer))
            .attr(attr::DATA, data);
        match self.server.handle_client_packet(self.now, udp(CLIENT), &send) {
            Forward::ToPeer { relay_port, peer, payload } => {
                assert_eq!(payload, data);
                Some((relay_port, peer))
            }
            _ => None,
        }
    }
}

#[test]
fn a_dual_allocation_relays_each_family_on_its_own_address() {
    use branchgate_turn::stun::family;
    let mut h = Harness::new(dual_stack());
    h.learn_nonce();
    let (reply, binds) = h.allocate_with(CLIENT, family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, family::IPV6));
    assert_eq!(
        binds,
        vec![
            Output::BindRelay { ip: "127.0.0.1".parse().expect("ip"), port: 50000, tcp: false },
            Output::BindRelay { ip: "::1".parse().expect("ip"), port: 50000, tcp: false },
        ],
        "one socket per family on one port"
    );
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(relayed_addresses(&reply), [addr("127.0.0.1:50000"), addr("[::1]:50000")], "IPv4 first");
    let m = Message::parse(&reply).expect("parse");
    assert!(m.integrity_ok(&h.key));
    assert_eq!(m.address_error_code(), None);

    // Permissions for a peer of each family, in one request and one at a time.
    let (reply, _) = h.request(CLIENT, method::CREATE_PERMISSION, true, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER)).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER6));
    });
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(h.permit(PEER6), None);

    // Send indications go out on the socket of the peer's family.
    assert_eq!(h.send_to(PEER, b"four"), Some((50000, addr(PEER))));
    assert_eq!(h.send_to(PEER6, b"six"), Some((50000, addr(PEER6))));

    // Data from the IPv6 peer reaches the client as a Data indication naming it.
    let mut buf = vec![0u8; HEADROOM + 1500 + TAILROOM];
    buf[HEADROOM..HEADROOM + 3].copy_from_slice(b"v6!");
    match h.server.handle_peer_packet(h.now, 50000, addr(PEER6), &mut buf, 3) {
        Forward::ToClient { tuple, packet } => {
            assert_eq!(tuple, udp(CLIENT));
            let m = Message::parse(packet).expect("data indication parses");
            assert_eq!((m.class, m.method), (Class::Indication, method::DATA));
            assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(addr(PEER6))));
            assert_eq!(m.get(attr::DATA).map(|a| a.value), Some(&b"v6!"[..]));
        }
        other => panic!("{other:?}"),
    }

    // A channel to the IPv6 peer: ChannelData both ways.
    let (reply, _) = h.request(CLIENT, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x06, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER6));
    });
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(
        h.server.handle_client_packet(h.now, udp(CLIENT), &[0x40, 0x06, 0x00, 0x02, b'h', b'i', 0, 0]),
        Forward::ToPeer { relay_port: 50000, peer: addr(PEER6), payload: b"hi" }
    );
    buf[HEADROOM..HEADROOM + 2].copy_from_slice(b"ok");
    match h.server.handle_peer_packet(h.now, 50000, addr(PEER6), &mut buf, 2) {
        Forward::ToClient { packet, .. } => assert_eq!(packet, &[0x40, 0x06, 0x00, 0x02, b'o', b'k']),
        other => panic!("{other:?}"),
    }

    let info = h.server.allocations(h.now);
    assert_eq!(info[0].relays, [addr("127.0.0.1:50000"), addr("[::1]:50000")]);
    assert_eq!(info[0].relay, Some(addr("127.0.0.1:50000")));

    // A refresh naming either family keeps both; one of neither family is refused (RFC 8656 §7.3).
    for family in [family::IPV6, family::IPV4] {
        h.now += Duration::from_secs(500);
        h.learn_nonce(); // the old one is stale by now
        let (reply, _) = h.request(CLIENT, method::REFRESH, true, family_attr(attr::REQUESTED_ADDRESS_FAMILY, family));
        assert_eq!(Harness::error_code(&reply), None);
    }
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.allocation_count(), 1, "refreshed, not expired");
    let (reply, _) = h.request(CLIENT, method::REFRESH, true, family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x03));
    assert_eq!(Harness::error_code(&reply), Some(443));
    // Lifetime 0 frees both addresses: their port closes, both sockets with it.
    let (reply, others) = h.request(CLIENT, method::REFRESH, true, |w| {
        w.u32(attr::LIFETIME, 0);
    });
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(others, vec![Output::CloseRelay { port: 50000 }]);
    assert_eq!(h.server.allocation_count(), 0);
    let mut buf = vec![0u8; HEADROOM + 100 + TAILROOM];
    assert_eq!(h.server.handle_peer_packet(h.now, 50000, addr(PEER6), &mut buf, 3), Forward::None);
}

#[test]
fn peers_of_a_family_the_allocation_does_not_relay_get_443() {
    use branchgate_turn::stun::family;
    let mut h = Harness::new(dual_stack());
    h.learn_nonce();
    // IPv6 only.
    let (reply, binds) = h.allocate_with(CLIENT, family_attr(attr::REQUESTED_ADDRESS_FAMILY, family::IPV6));
    assert_eq!(binds, vec![Output::BindRelay { ip: "::1".parse().expect("ip"), port: 50000, tcp: false }]);
    assert_eq!(relayed_addresses(&reply), [addr("[::1]:50000")]);
    assert_eq!(h.permit(PEER), Some(443));
    assert_eq!(h.permit("[::ffff:127.0.0.1]:5555"), Some(443), "IPv4-mapped is IPv4 on the wire");
    let (reply, _) = h.request(CLIENT, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    assert_eq!(Harness::error_code(&reply), Some(443));
    assert_eq!(h.permit(PEER6), None);
    assert_eq!(h.send_to(PEER6, b"x"), Some((50000, addr(PEER6))));
    let dropped = h.server.stats.dropped;
    assert_eq!(h.send_to(PEER, b"x"), None, "a Send to the other family is dropped silently");
    assert_eq!(h.server.stats.dropped, dropped + 1);
    let (reply, _) =
        h.request(CLIENT, method::REFRESH, true, family_attr(attr::REQUESTED_ADDRESS_FAMILY, family::IPV4));
    assert_eq!(Harness::error_code(&reply), Some(443));
    let (reply, _) =
        h.request(CLIENT, method::REFRESH, true, family_attr(attr::REQUESTED_ADDRESS_FAMILY, family::IPV6));
    assert_eq!(Harness::error_code(&reply), None);

    // IPv4 only (no family asked for), though the box has IPv6: IPv6 peers are refused, and an
    // IPv4-mapped peer is relayed to its plain IPv4 address.
    let client = "192.0.2.51:40000";
    h.learn_nonce_for(client);
    let (reply, outputs) = h.request(client, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert!(reply.is_empty());
    let [Output::BindRelay { ip, port, .. }] = outputs[..] else { panic!("one bind: {outputs:?}") };
    assert_eq!(ip, "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"));
    h.server.relay_bound(h.now, port, Ok(SocketAddr::new(ip, port)));
    assert!(matches!(h.server.poll_output(), Some(Output::Reply { .. })));
    let (reply, _) = h.request(client, method::CREATE_PERMISSION, true, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, addr(PEER6));
    });
    assert_eq!(Harness::error_code(&reply), Some(443));
    let (reply, _) = h.request(client, method::CHANNEL_BIND, true, |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02, 0, 0])
            .xor_address(attr::XOR_PEER_ADDRESS, addr("[::ffff:127.0.0.1]:5555"));
    });
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(
        h.server.handle_client_packet(h.now, udp(client), &[0x40, 0x02, 0x00, 0x01, b'm', 0, 0, 0]),
        Forward::ToPeer { relay_port: port, peer: addr(PEER), payload: b"m" },
        "sent to the plain IPv4 address, from the IPv4 socket"
    );
    // ...and the peer's answers from that plain address find the channel.
    let mut buf = vec![0u8; HEADROOM + 100 + TAILROOM];
    match h.server.handle_peer_packet(h.now, port, addr(PEER), &mut buf, 1) {
        Forward::ToClient { packet, .. } => assert_eq!(&packet[..2], &[0x40, 0x02]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn address_family_requests_the_server_refuses_or_narrows() {
    use branchgate_turn::stun::{AddressError, family};
    // Without an IPv6 relay.
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    for bad in [family::IPV6, 0x03, 0x00] {
        let (reply, binds) = h.allocate_with(CLIENT, family_attr(attr::REQUESTED_ADDRESS_FAMILY, bad));
        assert_eq!((Harness::error_code(&reply), binds), (Some(440), vec![]), "family {bad}");
    }
    // A dual request gets IPv4 alone and ADDRESS-ERROR-CODE saying why not IPv6 (RFC 8656 §7.2).
    let (reply, _) = h.allocate_with(CLIENT, family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, family::IPV6));
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(relayed_addresses(&reply), [addr("127.0.0.1:50000")]);
    let m = Message::parse(&reply).expect("parse");
    assert!(m.integrity_ok(&h.key), "ADDRESS-ERROR-CODE is covered by the integrity");
    assert_eq!(
        m.address_error_code(),
        Some(Ok(AddressError { family: family::IPV6, code: 440, reason: "Address Family not Supported" }))
    );

    // With one: malformed combinations are 400 (RFC 8656 §7.2).
    let mut h = Harness::new(dual_stack());
    h.learn_nonce();
    let cases: [(&str, FillRequest); 6] = [
        ("IPv4 in ADDITIONAL-ADDRESS-FAMILY", Box::new(family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, family::IPV4))),
        (
            "both family attributes",
            Box::new(|w: &mut Writer<'_>| {
                w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0])
                    .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0]);
            }),
        ),
        (
            "dual with EVEN-PORT reserving the next port",
            Box::new(|w: &mut Writer<'_>| {
                w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0]).attr(attr::EVEN_PORT, &[0x80]);
            }),
        ),
        (
            "dual with RESERVATION-TOKEN",
            Box::new(|w: &mut Writer<'_>| {
                w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0])
                    .attr(attr::RESERVATION_TOKEN, &[1; 8]);
            }),
        ),
        (
            "REQUESTED-ADDRESS-FAMILY with RESERVATION-TOKEN",
            Box::new(|w: &mut Writer<'_>| {
                w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family::IPV4, 0, 0, 0]).attr(attr::RESERVATION_TOKEN, &[1; 8]);
            }),
        ),
        (
            "an empty ADDITIONAL-ADDRESS-FAMILY",
            Box::new(|w: &mut Writer<'_>| {
                w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[]);
            }),
        ),
    ];
    for (case, fill) in cases {
        let (reply, binds) = h.allocate_with(CLIENT, fill);
        assert_eq!((Harness::error_code(&reply), binds), (Some(400), vec![]), "{case}");
    }
    assert_eq!(h.server.allocation_count(), 0);
    // An IPv4 request is still IPv4 alone.
    let (reply, _) = h.allocate_with(CLIENT, family_attr(attr::REQUESTED_ADDRESS_FAMILY, family::IPV4));
    assert_eq!(relayed_addresses(&reply), [addr("127.0.0.1:50000")]);
}

#[test]
fn the_drafts_additional_address_family_code_point_works_too() {
    use branchgate_turn::stun::family;
    // coturn 4.6's turnutils_uclient -Z sends ADDITIONAL-ADDRESS-FAMILY as 0x8032 (the draft's).
    let mut h = Harness::new(dual_stack());
    h.learn_nonce();
    let (reply, _) = h.allocate_with(CLIENT, family_attr(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, family::IPV6));
    assert_eq!(Harness::error_code(&reply), None);
    let relayed = relayed_addresses(&reply);
    assert!(relayed.len() == 2 && relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    // With EVEN-PORT (no reservation), as turnutils_uclient -Z sends it: an even port in both families.
    let client = "192.0.2.50:40001";
    h.learn_nonce_for(client);
    let (reply, _) = h.allocate_with(client, |w| {
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, &[family::IPV6, 0, 0, 0]).attr(attr::EVEN_PORT, &[0]);
    });
    assert_eq!(Harness::error_code(&reply), None);
    let relayed = relayed_addresses(&reply);
    assert!(relayed.len() == 2 && relayed.iter().all(|a| a.port().is_multiple_of(2)), "{relayed:?}");
    // Without an IPv6 relay the refusal of IPv6 comes back in the draft's attribute too.
    let mut h = Harness::new(allowing_loopback());
    h.learn_nonce();
    let (reply, _) = h.allocate_with(CLIENT, family_attr(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, family::IPV6));
    let m = Message::parse(&reply).expect("parse");
    assert_eq!(relayed_addresses(&reply).len(), 1);
    assert!(m.get(attr::ADDRESS_ERROR_CODE).is_none());
    assert_eq!(m.address_error_code().and_then(Result::ok).map(|e| (e.family, e.code)), Some((family::IPV6, 440)));
    let draft = m.get(attr::ADDRESS_ERROR_CODE_DRAFT).expect("the draft's ADDRESS-ERROR-CODE");
    assert_eq!(&draft.value[..4], &[family::IPV6, 0, 4, 40]);
}

#[test]
fn a_reserved_port_keeps_the_family_of_the_allocation_that_reserved_it() {
    use branchgate_turn::stun::family;
    // turnutils_uclient -x: an IPv6 allocation with EVEN-PORT (R set) for RTP, then one with
    // the RESERVATION-TOKEN for RTCP, which may not name a family (RFC 8656 §7.2).
    let mut h = Harness::new(dual_stack());
    h.learn_nonce();
    let (reply, _) = h.allocate_with(CLIENT, |w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0]).attr(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(Harness::error_code(&reply), None);
    let rtp = relayed_addresses(&reply);
    assert!(rtp.len() == 1 && rtp[0].is_ipv6() && rtp[0].port().is_multiple_of(2), "{rtp:?}");
    let token = Message::parse(&reply).expect("parse").get(attr::RESERVATION_TOKEN).expect("token").value.to_vec();
    let rtcp_client = "192.0.2.50:40001";
    h.learn_nonce_for(rtcp_client);
    let (reply, _) = h.allocate_with(rtcp_client, |w| {
        w.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(Harness::error_code(&reply), None);
    assert_eq!(relayed_addresses(&reply), [SocketAddr::new(rtp[0].ip(), rtp[0].port() + 1)]);
}

#[test]
fn a_dual_allocation_counts_once_in_the_quotas() {
    use branchgate_turn::stun::family;
    let mut config = dual_stack();
    config.max_allocations = 2;
    let mut h = Harness::new(config);
    for client in ["192.0.2.50:40000", "192.0.2.50:40001"] {
        h.learn_nonce_for(client);
        let (reply, _) = h.allocate_with(client, family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, family::IPV6));
        assert_eq!(relayed_addresses(&reply).len(), 2, "{client}");
    }
    assert_eq!(h.server.allocation_count(), 2);
    // The user's quota (2) is reached with two dual allocations, not one.
    h.learn_nonce_for("192.0.2.50:40002");
    let (reply, _) = h.allocate_with("192.0.2.50:40002", |_| {});
    assert_eq!(Harness::error_code(&reply), Some(486));
}

#[test]
fn a_dual_allocation_moves_both_sockets_when_one_port_is_taken() {
    use branchgate_turn::stun::family;
    let mut h = Harness::new(dual_stack());
    h.learn_nonce();
    let (reply, outputs) = h.request(CLIENT, method::ALLOCATE, true, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0]);
    });
    assert!(reply.is_empty());
    assert_eq!(outputs.len(), 2);
    // IPv4 binds, IPv6 finds the port taken: the IPv4 socket is closed and both move on.
    h.server.relay_bound(h.now, 50000, Ok(addr("127.0.0.1:50000")));
    assert_eq!(h.server.poll_output(), None, "no answer before both are bound");
    h.server.relay_bound(h.now, 50000, Err(()));
    let outputs: Vec<Output> = std::iter::from_fn(|| h.server.poll_output()).collect();
    assert_eq!(
        outputs,
        vec![
            Output::CloseRelay { port: 50000 },
            Output::BindRelay { ip: "127.0.0.1".parse().expect("ip"), port: 50001, tcp: false },
            Output::BindRelay { ip: "::1".parse().expect("ip"), port: 50001, tcp: false },
        ]
    );
    // A late answer for the old port changes nothing.
    h.server.relay_bound(h.now, 50000, Ok(addr("[::1]:50000")));
    assert_eq!(h.server.poll_output(), None);
    h.server.relay_bound(h.now, 50001, Ok(addr("[::1]:50001")));
    h.server.relay_bound(h.now, 50001, Ok(addr("127.0.0.1:50001")));
    let Some(Output::Reply { data, .. }) = h.server.poll_output() else { panic!("no answer") };
    assert_eq!(relayed_addresses(&data), [addr("127.0.0.1:50001"), addr("[::1]:50001")]);
}

#[test]
fn internal_ipv6_peers_are_refused_by_default() {
    use branchgate_turn::stun::family;
    let mut config = config();
    config.relay_ipv6 = Some("::1".parse().expect("ip"));
    let mut h = Harness::new(config);
    h.learn_nonce();
    h.allocate_with(CLIENT, family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, family::IPV6));
    for peer in [
        "[::1]:5555",
        "[::]:5555",
        "[fe80::1]:5555",
        "[febf::1]:5555",
        "[ff02::1]:5555",
        "[ff0e::1]:5555",
        "[fc00::1]:5555",
        "[fd12:3456::1]:5555",
        "[::ffff:127.0.0.1]:5555",
        "[::ffff:10.0.0.1]:5555",
        "[::127.0.0.1]:5555",
        "[64:ff9b::7f00:1]:5555",
        "[2002:7f00:1::1]:5555",
    ] {
        assert_eq!(h.permit(peer), Some(403), "{peer}");
    }
    assert_eq!(h.permit("[2a00:1450:4001:80b::200e]:5555"), None, "a public IPv6 peer");
}
