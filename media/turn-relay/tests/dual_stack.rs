//! The TURN driver over real sockets, loopback only (127.0.0.1 and ::1): a dual allocation
//! (RFC 8656 ADDITIONAL-ADDRESS-FAMILY) relays to an IPv4 and an IPv6 peer, each way, each
//! from the relay socket of its own family.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use branchgate_config::{Config, PlainSecret, Snapshot};
use branchgate_turn::auth::{long_term_key, rest_credential};
use branchgate_turn::stun::{Class, Message, Writer, attr, decode_xor_address, family, method};
use branchgate_turn_relay::{CertificateSource, TurnMonitor, run_on};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::time::timeout;

const REALM: &str = "branch.example";
const SECRET: &str = "loopback-lab-secret";
const WAIT: Duration = Duration::from_secs(5);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// A port free on loopback right now (for the listeners, which the driver binds itself).
async fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0").await.expect("udp").local_addr().expect("addr").port()
    } else {
        TcpListener::bind("127.0.0.1:0").await.expect("tcp").local_addr().expect("addr").port()
    }
}

/// A TURN client over UDP speaking just enough of the protocol for the test.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    key: [u8; 16],
    nonce: String,
    tid: u8,
}

impl Client {
    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        [self.tid; 12]
    }

    async fn receive(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let (len, from) = timeout(WAIT, self.socket.recv_from(&mut buf)).await.expect("in time").expect("recv");
        assert_eq!(from, self.server);
        buf.truncate(len);
        buf
    }

    /// An authenticated request and its answer (success or error).
    async fn request(&mut self, method: u16, fill: impl Fn(&mut Writer<'_>)) -> Vec<u8> {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, Class::Request, method, tid);
        fill(&mut w);
        w.attr(attr::USERNAME, self.username.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, self.nonce.as_bytes())
            .integrity(&self.key)
            .fingerprint();
        self.socket.send_to(&buf, self.server).await.expect("send");
        let reply = self.receive().await;
        let m = Message::parse(&reply).expect("reply parses");
        assert_eq!(m.transaction_id(), tid);
        reply
    }

    /// Asks until the server answers (it may still be starting) and keeps its nonce.
    async fn learn_nonce(&mut self) {
        for _ in 0..50 {
            let mut buf = Vec::new();
            Writer::new(&mut buf, Class::Request, method::ALLOCATE, [0xEE; 12])
                .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            self.socket.send_to(&buf, self.server).await.expect("send");
            let mut reply = vec![0u8; 2048];
            if let Ok(Ok((len, _))) = timeout(Duration::from_millis(100), self.socket.recv_from(&mut reply)).await {
                let m = Message::parse(&reply[..len]).expect("challenge parses");
                self.nonce = m.text(attr::NONCE).expect("nonce").to_string();
                return;
            }
        }
        panic!("the TURN server never answered");
    }
}

fn error_code(reply: &[u8]) -> Option<u16> {
    let m = Message::parse(reply).expect("parse");
    let value = m.get(attr::ERROR_CODE)?.value;
    Some(u16::from(value[2]) * 100 + u16::from(value[3]))
}

async fn peer_receives(peer: &UdpSocket, from: SocketAddr, payload: &[u8]) {
    let mut buf = vec![0u8; 2048];
    let (len, source) = timeout(WAIT, peer.recv_from(&mut buf)).await.expect("in time").expect("recv");
    assert_eq!((source, &buf[..len]), (from, payload), "from the relayed address of the peer's family");
}

#[tokio::test]
async fn a_dual_allocation_relays_to_an_ipv4_and_an_ipv6_peer_both_ways() {
    let peer4 = UdpSocket::bind("127.0.0.1:0").await.expect("IPv4 peer");
    let peer6 = UdpSocket::bind("[::1]:0").await.expect("IPv6 peer (loopback ::1)");
    let (peer4_addr, peer6_addr) = (peer4.local_addr().expect("addr"), peer6.local_addr().expect("addr"));

    let mut config = Config::default();
    let turn = &mut config.turn;
    turn.realm = REALM.into();
    turn.udp_port = free_port(true).await;
    turn.tcp_port = free_port(false).await;
    turn.tls_port = free_port(false).await;
    turn.auth_secret = Some(PlainSecret::new(SECRET));
    turn.relay_ip = Some(ip("127.0.0.1"));
    turn.relay_ipv6 = Some("::1".parse().expect("ip"));
    turn.relay_port_min = 47000;
    turn.relay_port_max = 47999;
    // A lab on loopback: the exact hosts opened, as the e2e tests do.
    turn.allowed_peers = vec!["127.0.0.1/32".parse().expect("net"), "::1/128".parse().expect("net")];
    let server = SocketAddr::new(ip("127.0.0.1"), turn.udp_port);
    let (_config_tx, config_rx) = watch::channel(Arc::new(Snapshot { revision: 1, config }));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let no_certificate: CertificateSource = Arc::new(|| Err("no certificate in this test".into()));
    let driver = tokio::spawn(run_on(ip("127.0.0.1"), config_rx, shutdown_rx, no_certificate, TurnMonitor::default()));

    let (username, password) = rest_credential(SECRET.as_bytes(), "lab", 4_000_000_000, 3600);
    let mut client = Client {
        socket: UdpSocket::bind("127.0.0.1:0").await.expect("client"),
        server,
        key: long_term_key(&username, REALM, &password),
        username,
        nonce: String::new(),
        tid: 0,
    };
    client.learn_nonce().await;

    let reply = client
        .request(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0]);
        })
        .await;
    assert_eq!(error_code(&reply), None);
    let m = Message::parse(&reply).expect("parse");
    assert!(m.integrity_ok(&client.key));
    let relayed: Vec<SocketAddr> = m
        .all(attr::XOR_RELAYED_ADDRESS)
        .map(|a| decode_xor_address(a.value, &m.transaction_id()).expect("address"))
        .collect();
    let [relay4, relay6] = relayed[..] else { panic!("two relayed addresses: {relayed:?}") };
    assert_eq!((relay4.ip(), relay6.ip()), (ip("127.0.0.1"), ip("::1")), "IPv4 first");
    assert_eq!(relay4.port(), relay6.port());
    assert!(m.address_error_code().is_none(), "both families given");

    let reply = client
        .request(method::CREATE_PERMISSION, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer4_addr).xor_address(attr::XOR_PEER_ADDRESS, peer6_addr);
        })
        .await;
    assert_eq!(error_code(&reply), None, "permissions for both peers");

    // Client → peers: each gets the datagram from the relayed address of its family.
    for (peer, peer_addr, relay, payload) in
        [(&peer4, peer4_addr, relay4, &b"to the IPv4 peer"[..]), (&peer6, peer6_addr, relay6, &b"to the IPv6 peer"[..])]
    {
        let mut send = Vec::new();
        Writer::new(&mut send, Class::Indication, method::SEND, [0x55; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .attr(attr::DATA, payload);
        client.socket.send_to(&send, server).await.expect("send");
        peer_receives(peer, relay, payload).await;
    }

    // Peers → client: Data indications naming each peer.
    for (peer, peer_addr, relay, payload) in [
        (&peer4, peer4_addr, relay4, &b"from the IPv4 peer"[..]),
        (&peer6, peer6_addr, relay6, &b"from the IPv6 peer"[..]),
    ] {
        peer.send_to(payload, relay).await.expect("peer send");
        let data = client.receive().await;
        let m = Message::parse(&data).expect("data indication");
        assert_eq!((m.class, m.method), (Class::Indication, method::DATA));
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(peer_addr)));
        assert_eq!(m.get(attr::DATA).map(|a| a.value), Some(payload));
    }

    // Deleting the allocation closes both relay sockets.
    let reply = client.request(method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 0);
    });
    assert_eq!(error_code(&reply.await), None);
    let _ = shutdown_tx.send(true);
    timeout(WAIT, driver).await.expect("driver stops").expect("joined").expect("ran without error");
}
