//! What the driver's loopback tests share: a lab configuration, the driver started on it, and a
//! TURN client over UDP speaking just enough of the protocol.

// Each test file uses a part of this.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use branchgate_config::{Config, PlainSecret, Snapshot};
use branchgate_turn::auth::{long_term_key, rest_credential};
use branchgate_turn::stun::{Class, Message, Writer, attr, method};
use branchgate_turn_relay::{CertificateSource, RelayError, TurnMonitor, run};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

pub const REALM: &str = "branch.example";
pub const SECRET: &str = "loopback-lab-secret";
pub const WAIT: Duration = Duration::from_secs(5);

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// A port free on loopback right now (for the listeners, which the driver binds itself).
pub async fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0").await.expect("udp").local_addr().expect("addr").port()
    } else {
        TcpListener::bind("127.0.0.1:0").await.expect("tcp").local_addr().expect("addr").port()
    }
}

/// TURN for a lab on loopback: listeners on `listen_ips`, REST credentials, IPv4 relays on
/// 127.0.0.1 in `relay_ports`, loopback peers opened (the exact hosts, as the e2e tests do).
pub async fn lab_config(listen_ips: &[&str], relay_ports: (u16, u16)) -> Config {
    let mut config = Config::default();
    let turn = &mut config.turn;
    turn.realm = REALM.into();
    turn.listen_ips = listen_ips.iter().map(|text| ip(text)).collect();
    turn.udp_port = free_port(true).await;
    turn.tcp_port = free_port(false).await;
    turn.tls_port = free_port(false).await;
    turn.auth_secret = Some(PlainSecret::new(SECRET));
    turn.relay_ip = Some(ip("127.0.0.1"));
    (turn.relay_port_min, turn.relay_port_max) = relay_ports;
    turn.allowed_peers = vec!["127.0.0.1/32".parse().expect("net"), "::1/128".parse().expect("net")];
    config
}

/// The driver running on a configuration that the test may change.
pub struct Lab {
    pub config_tx: watch::Sender<Arc<Snapshot>>,
    shutdown_tx: watch::Sender<bool>,
    driver: JoinHandle<Result<(), RelayError>>,
}

impl Lab {
    pub fn start(config: Config) -> Lab {
        let (config_tx, config_rx) = watch::channel(Arc::new(Snapshot { revision: 1, config }));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let no_certificate: CertificateSource = Arc::new(|| Err("no certificate in this test".into()));
        let driver = tokio::spawn(run(config_rx, shutdown_rx, no_certificate, TurnMonitor::default()));
        Lab { config_tx, shutdown_tx, driver }
    }

    /// Stops the driver, which must have run without error.
    pub async fn stop(self) {
        let _ = self.shutdown_tx.send(true);
        timeout(WAIT, self.driver).await.expect("driver stops").expect("joined").expect("ran without error");
    }
}

/// A TURN client over UDP.
pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub key: [u8; 16],
    pub nonce: String,
    tid: u8,
}

impl Client {
    /// A client on loopback of `server`'s family, with REST credentials for [`SECRET`].
    pub async fn new(server: SocketAddr) -> Client {
        let local = if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
        let (username, password) = rest_credential(SECRET.as_bytes(), "lab", 4_000_000_000, 3600);
        Client {
            socket: UdpSocket::bind(local).await.expect("client"),
            server,
            key: long_term_key(&username, REALM, &password),
            username,
            nonce: String::new(),
            tid: 0,
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        [self.tid; 12]
    }

    /// The next datagram, which must come from the address the client talks to.
    pub async fn receive(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let (len, from) = timeout(WAIT, self.socket.recv_from(&mut buf)).await.expect("in time").expect("recv");
        assert_eq!(from, self.server, "from the address the client sent to");
        buf.truncate(len);
        buf
    }

    /// An authenticated request and its answer (success or error).
    pub async fn request(&mut self, method: u16, fill: impl Fn(&mut Writer<'_>)) -> Vec<u8> {
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

    /// A Binding answered; asks until the server answers (it may still be starting).
    pub async fn binding(&mut self) -> Vec<u8> {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, Class::Request, method::BINDING, tid).fingerprint();
        for _ in 0..50 {
            self.socket.send_to(&buf, self.server).await.expect("send");
            let mut reply = vec![0u8; 2048];
            if let Ok(Ok((len, from))) = timeout(Duration::from_millis(100), self.socket.recv_from(&mut reply)).await {
                assert_eq!(from, self.server, "from the address the client sent to");
                reply.truncate(len);
                let m = Message::parse(&reply).expect("reply parses");
                assert_eq!(m.transaction_id(), tid);
                return reply;
            }
        }
        panic!("the TURN server never answered on {}", self.server);
    }

    /// Asks until the server answers (it may still be starting) and keeps its nonce.
    pub async fn learn_nonce(&mut self) {
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

pub fn error_code(reply: &[u8]) -> Option<u16> {
    let m = Message::parse(reply).expect("parse");
    let value = m.get(attr::ERROR_CODE)?.value;
    Some(u16::from(value[2]) * 100 + u16::from(value[3]))
}

/// A datagram `peer` receives, which must be `payload` from `from`.
pub async fn peer_receives(peer: &UdpSocket, from: SocketAddr, payload: &[u8]) {
    let mut buf = vec![0u8; 2048];
    let (len, source) = timeout(WAIT, peer.recv_from(&mut buf)).await.expect("in time").expect("recv");
    assert_eq!((source, &buf[..len]), (from, payload), "from the relayed address");
}
