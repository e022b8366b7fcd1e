//! The TURN server's sockets and clock: a thin tokio driver around the
//! sans-IO [`branchgate_turn::Server`].
//!
//! Today: UDP, TCP and TLS listeners on each listen address ([`listen`]; TLS with the
//! box's certificate), one UDP socket per relay with a task feeding the main loop, a task
//! per TCP/TLS connection, RFC 6062 TCP relays ([`tcp`]). Batched IO (recvmmsg/sendmmsg,
//! GSO), per-core SO_REUSEPORT listeners and pooled buffers come next.

mod listen;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use branchgate_config::{Snapshot, TurnConfig};
use branchgate_streams::{Connection, StreamEvent};
use branchgate_turn::server::{HEADROOM, TAILROOM};
use branchgate_turn::{FiveTuple, Forward, Output, Server, ServerConfig, Transport};
use listen::{Listeners, bind_listeners};
use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Largest UDP payload relayed (what fits a 1500-byte MTU path is typical; allow jumbo-ish).
const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen on {transport} {addr}: {source}")]
    Bind { transport: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TURN listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The box's interface addresses and its public mappings.
fn own_addresses(external: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut list: Vec<IpAddr> =
        if_addrs::get_if_addrs().map(|l| l.into_iter().map(|i| i.ip()).collect()).unwrap_or_default();
    list.extend(external);
    list
}

/// The box's service ports, closed to relayed traffic aimed at the box itself.
pub fn own_ports(config: &branchgate_config::Config) -> Vec<u16> {
    let mut ports = vec![
        config.network.admin_https_port,
        config.network.admin_http_port,
        config.network.rtsp_port,
        config.sip.udp_port,
        config.sip.tcp_port,
        config.sip.tls_port,
        config.turn.udp_port,
        config.turn.tcp_port,
        config.turn.tls_port,
    ];
    ports.extend(config.network.metrics_listen.map(|a| a.port()));
    ports.retain(|p| *p != 0);
    ports
}

/// The sans-IO server's configuration from the box's.
pub fn server_config(box_config: &branchgate_config::Config) -> ServerConfig {
    let turn = &box_config.turn;
    // Relays bind to `turn.relay_ip`, else the box's primary address.
    let relay_ip = turn.relay_ip.unwrap_or_else(branchgate_streams::primary_ip);
    let mut config = ServerConfig::new(turn.realm.clone(), relay_ip);
    config.users = turn
        .users
        .iter()
        .filter_map(|u| {
            let key = u.password.digest_key().filter(|k| k.realm == turn.realm)?;
            Some((u.username.clone(), branchgate_turn::UserKey { md5: key.md5, sha256: key.sha256 }))
        })
        .collect();
    config.rest_secret = turn.auth_secret.as_ref().map(|s| s.expose().as_bytes().to_vec());
    config.policy.allowed = turn.allowed_peers.clone();
    config.policy.own_addresses = own_addresses(turn.external_ip.into_iter().chain(turn.external_ipv6.map(IpAddr::V6)));
    config.advertised_relay_ip = turn.external_ip;
    // IPv6 relays (RFC 8656 dual allocations) only where the operator names the address.
    config.relay_ipv6 = turn.relay_ipv6;
    config.advertised_relay_ipv6 = turn.external_ipv6;
    config.relay_ports = turn.relay_port_min..=turn.relay_port_max;
    config.max_allocations_per_user = turn.user_quota as usize;
    config.max_allocation_bytes_per_second = u64::from(turn.max_allocation_kbps) * 1000 / 8;
    config.max_allocations = turn.total_quota as usize;
    config.policy.own_ports = own_ports(box_config);
    config.policy.media_ports = Some((box_config.media.rtp_port_min, box_config.media.rtp_port_max));
    // Where the gateway and the camera viewers offer media: the address they advertise and
    // the public mapping browsers behind NAT are told about.
    config.policy.media_addresses =
        [Some(branchgate_streams::primary_ip()), turn.external_ip].into_iter().flatten().collect();
    config
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the TURN server is doing, refreshed every second for the admin UI and metrics.
#[derive(Clone, Debug, Default)]
pub struct TurnMonitor(Arc<std::sync::Mutex<TurnSnapshot>>);

#[derive(Clone, Debug, Default)]
pub struct TurnSnapshot {
    pub running: bool,
    pub stats: branchgate_turn::server::Stats,
    pub allocations: Vec<branchgate_turn::server::AllocationInfo>,
}

impl TurnMonitor {
    pub fn snapshot(&self) -> TurnSnapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, server: Option<&Server>, now: Instant) {
        let mut snapshot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match server {
            Some(server) => {
                snapshot.running = true;
                snapshot.stats = server.stats;
                snapshot.allocations = server.allocations(now);
            }
            None => *snapshot = TurnSnapshot::default(),
        }
    }
}

pub use branchgate_streams::CertificateSource;

struct Relay {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

/// The UDP relay sockets by port, one map per family: a dual allocation has a socket in
/// each on the same port, and a peer is reached from the socket of its own family.
#[derive(Default)]
struct Relays {
    v4: HashMap<u16, Relay>,
    v6: HashMap<u16, Relay>,
}

impl Relays {
    /// The socket on `port` that reaches `peer` (the server never hands out IPv4-mapped peers).
    fn socket_for(&self, port: u16, peer: SocketAddr) -> Option<&UdpSocket> {
        let family = if peer.is_ipv4() { &self.v4 } else { &self.v6 };
        family.get(&port).map(|relay| &*relay.socket)
    }

    fn insert(&mut self, bound: SocketAddr, relay: Relay) {
        let family = if bound.is_ipv4() { &mut self.v4 } else { &mut self.v6 };
        if let Some(old) = family.insert(bound.port(), relay) {
            old.reader.abort();
        }
    }

    /// Closes the sockets of both families on `port`.
    fn close(&mut self, port: u16) {
        for relay in [self.v4.remove(&port), self.v6.remove(&port)].into_iter().flatten() {
            relay.reader.abort();
        }
    }

    fn close_all(&mut self) {
        for (_, relay) in self.v4.drain().chain(self.v6.drain()) {
            relay.reader.abort();
        }
    }
}

/// A datagram from a peer, with room to frame it for the client in place.
struct PeerPacket {
    port: u16,
    peer: SocketAddr,
    buf: Vec<u8>,
    len: usize,
}

/// The TURN 5-tuple of a TCP/TLS connection.
fn tuple_of(c: Connection) -> FiveTuple {
    FiveTuple { client: c.remote, listener: c.local, transport: if c.tls { Transport::Tls } else { Transport::Tcp } }
}

/// Runs the TURN server until `shutdown` turns true. A configuration change
/// that keeps the listeners applies at once, allocations kept; new listen
/// addresses or ports restart the server.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    certificates: CertificateSource,
    monitor: TurnMonitor,
) -> Result<(), RelayError> {
    let result = run_inner(&mut config_rx, &mut shutdown, &certificates, &monitor).await;
    monitor.publish(None, Instant::now());
    result
}

async fn run_inner(
    config_rx: &mut watch::Receiver<Arc<Snapshot>>,
    shutdown: &mut watch::Receiver<bool>,
    certificates: &CertificateSource,
    monitor: &TurnMonitor,
) -> Result<(), RelayError> {
    loop {
        let turn = config_rx.borrow_and_update().config.turn.clone();
        if !turn.enabled {
            tokio::select! {
                _ = config_rx.changed() => continue,
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let restart = serve(&turn, certificates, config_rx, shutdown, monitor).await?;
        if !restart {
            return Ok(());
        }
        tracing::info!("TURN listeners changed; restarting");
    }
}

fn listeners_changed(old: &TurnConfig, new: &TurnConfig) -> bool {
    old.udp_port != new.udp_port
        || old.tcp_port != new.tcp_port
        || old.tls_port != new.tls_port
        || old.listen_ips != new.listen_ips
        || !new.enabled
}

/// Datagrams handled per wakeup at most, so one busy source cannot starve the rest.
const BURST: usize = 64;

/// Sends to a client on its transport: UDP waits for socket room (a burst is delayed, not lost);
/// a TCP/TLS client's queue drops when full, so one slow client never holds up the rest.
async fn to_client(
    listeners: &Listeners,
    streams: &HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    tuple: FiveTuple,
    data: &[u8],
) {
    match tuple.transport {
        // From the listener the client talks to: its reply must come from the address it asked.
        Transport::Udp => match listeners.udp_socket(tuple.listener) {
            Some(udp) => branchgate_streams::send_datagram(udp, data, tuple.client).await,
            None => tracing::debug!(listener = %tuple.listener, "no UDP listener for a client packet"),
        },
        Transport::Tcp | Transport::Tls => {
            if let Some(writer) = streams.get(&tuple) {
                let _ = writer.try_send(data.to_vec());
            }
        }
    }
}

async fn forward(
    forward: Forward<'_>,
    listeners: &Listeners,
    streams: &HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    relays: &Relays,
) {
    match forward {
        Forward::ToPeer { relay_port, peer, payload } => {
            if let Some(socket) = relays.socket_for(relay_port, peer) {
                branchgate_streams::send_datagram(socket, payload, peer).await;
            }
        }
        Forward::ToClient { tuple, packet } => to_client(listeners, streams, tuple, packet).await,
        Forward::None => {}
    }
}

/// The main loop on one set of listeners; true when the configuration asks for a restart.
async fn serve(
    turn: &TurnConfig,
    certificates: &CertificateSource,
    config_rx: &mut watch::Receiver<Arc<Snapshot>>,
    shutdown: &mut watch::Receiver<bool>,
    monitor: &TurnMonitor,
) -> Result<bool, RelayError> {
    let (stream_tx, mut stream_rx) = mpsc::channel::<StreamEvent>(1024);
    let listeners = bind_listeners(turn, certificates, &stream_tx)?;
    // The UDP listener asked first for datagrams next time round: the one after the last served.
    let mut next_udp = 0;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let mut server = Server::new(server_config(&config_rx.borrow().config), secret, Instant::now(), unix_now());
    let mut relays = Relays::default();
    let mut streams: HashMap<FiveTuple, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let (peer_tx, mut peer_rx) = mpsc::channel::<PeerPacket>(1024);
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<tcp::TcpEvent>(1024);
    let mut tcp_relays = tcp::TcpRelays::new(tcp_tx);
    tcp_relays.set_rate(server_config(&config_rx.borrow().config).max_allocation_bytes_per_second);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let restart = loop {
        tokio::select! {
            // Readiness, then every datagram already there (up to a burst): one wakeup serves
            // many, and the idle listener is not read at every turn of the loop.
            (index, readable) = std::future::poll_fn(|cx| listeners.poll_udp_ready(cx, next_udp)) => {
                readable?;
                next_udp = index + 1;
                let listener = &listeners.udp[index];
                for _ in 0..BURST {
                    let (len, client) = match listener.socket.try_recv_from(&mut buf) {
                        Ok(received) => received,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    };
                    let tuple = FiveTuple { client, listener: listener.local, transport: Transport::Udp };
                    let result = server.handle_client_packet(Instant::now(), tuple, &buf[..len]);
                    forward(result, &listeners, &streams, &relays).await;
                }
            }
            Some(event) = stream_rx.recv() => match event {
                StreamEvent::Opened { connection, writer, raw } => {
                    streams.insert(tuple_of(connection), writer);
                    tcp_relays.opened(tuple_of(connection), raw);
                }
                StreamEvent::Frame { connection, data } => {
                    let tuple = tuple_of(connection);
                    match tcp_relays.joined(&tuple) {
                        // A data connection (RFC 6062): bytes for its peer.
                        Some(peer) => if !tcp_relays.to_peer(peer, data) { server.peer_closed(peer) },
                        None => {
                            let result = server.handle_client_packet(Instant::now(), tuple, &data);
                            forward(result, &listeners, &streams, &relays).await;
                        }
                    }
                }
                StreamEvent::Closed { connection } => {
                    streams.remove(&tuple_of(connection));
                    tcp_relays.closed(&tuple_of(connection));
                    server.connection_closed(tuple_of(connection));
                }
                StreamEvent::ConnectFailed { .. } => {} // TURN makes no outgoing connections
            },
            Some(event) = tcp_rx.recv() => tcp::handle_event(&mut server, &mut tcp_relays, &streams, event),
            Some(mut packet) = peer_rx.recv() => {
                // This one and the others already queued, without going round the loop for each.
                for _ in 0..BURST {
                    let result =
                        server.handle_peer_packet(Instant::now(), packet.port, packet.peer, &mut packet.buf, packet.len);
                    forward(result, &listeners, &streams, &relays).await;
                    match peer_rx.try_recv() {
                        Ok(next) => packet = next,
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                server.handle_timeout(Instant::now());
                monitor.publish(Some(&server), Instant::now());
            }
            changed = config_rx.changed() => {
                if changed.is_err() { break false; }
                let snapshot = config_rx.borrow_and_update().clone();
                if listeners_changed(turn, &snapshot.config.turn) {
                    break true;
                }
                let config = server_config(&snapshot.config);
                tcp_relays.set_rate(config.max_allocation_bytes_per_second);
                server.set_config(config);
                tracing::info!("TURN configuration applied; allocations kept");
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break false; }
            }
        }
        drain(&mut server, &listeners, &streams, &mut relays, &mut tcp_relays, &peer_tx).await;
    };
    relays.close_all();
    Ok(restart)
}

/// Carries out the server's control outputs.
async fn drain(
    server: &mut Server,
    listeners: &Listeners,
    streams: &HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    relays: &mut Relays,
    tcp_relays: &mut tcp::TcpRelays,
    peer_tx: &mpsc::Sender<PeerPacket>,
) {
    while let Some(output) = server.poll_output() {
        match output {
            Output::Reply { tuple, data } => match tuple.transport {
                Transport::Udp => {
                    let sent = match listeners.udp_socket(tuple.listener) {
                        Some(udp) => udp.send_to(&data, tuple.client).await.map(drop),
                        None => Err(std::io::ErrorKind::NotFound.into()),
                    };
                    if let Err(e) = sent {
                        tracing::debug!(client = %tuple.client, listener = %tuple.listener, error = %e, "TURN reply not sent");
                    }
                }
                Transport::Tcp | Transport::Tls => {
                    // Never wait on one slow client: the main loop serves everyone.
                    if let Some(writer) = streams.get(&tuple) {
                        let _ = writer.try_send(data);
                    }
                }
            },
            Output::BindRelay { ip, port, tcp: false } => match open_relay(ip, port, peer_tx.clone()) {
                Ok((relay, bound)) => {
                    relays.insert(bound, relay);
                    server.relay_bound(Instant::now(), port, Ok(bound));
                }
                Err(e) => {
                    tracing::debug!(%ip, port, error = %e, "relay port unavailable");
                    server.relay_bound(Instant::now(), port, Err(()));
                }
            },
            Output::BindRelay { ip, port, tcp: true } => match tcp_relays.listen(ip, port) {
                Ok(bound) => server.relay_bound(Instant::now(), port, Ok(bound)),
                Err(e) => {
                    tracing::debug!(%ip, port, error = %e, "TCP relay port unavailable");
                    server.relay_bound(Instant::now(), port, Err(()));
                }
            },
            Output::CloseRelay { port } => {
                relays.close(port);
                tcp_relays.close_listener(port);
            }
            Output::ConnectPeer { connection, from, peer } => tcp_relays.connect(connection, from, peer),
            Output::JoinData { connection, data } => tcp_relays.join(connection, data),
            Output::ClosePeer { connection } => {
                if let Some(data) = tcp_relays.close_peer(connection)
                    && let Some(writer) = streams.get(&data)
                {
                    // An empty message closes the client's data connection.
                    let _ = writer.try_send(Vec::new());
                }
            }
        }
    }
}

fn open_relay(ip: IpAddr, port: u16, peer_tx: mpsc::Sender<PeerPacket>) -> std::io::Result<(Relay, SocketAddr)> {
    let std_socket = std::net::UdpSocket::bind((ip, port))?;
    std_socket.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(std_socket)?);
    let bound = socket.local_addr()?;
    let reader_socket = socket.clone();
    let reader = tokio::spawn(async move {
        loop {
            // The buffer is taken only once a datagram is there: an idle allocation holds
            // no packet buffer (thousands of idle allocations on a small box).
            if reader_socket.readable().await.is_err() {
                return;
            }
            // One byte more than relayed: a datagram that fills it was cut short, and a
            // truncated datagram must not reach the client as if whole: it is dropped.
            let mut buf = vec![0u8; HEADROOM + MAX_DATAGRAM + 1 + TAILROOM];
            let (len, peer) = match reader_socket.try_recv_from(&mut buf[HEADROOM..HEADROOM + MAX_DATAGRAM + 1]) {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            if len > MAX_DATAGRAM {
                tracing::debug!(%peer, "peer datagram larger than {MAX_DATAGRAM} bytes dropped");
                continue;
            }
            if peer_tx.send(PeerPacket { port, peer, buf, len }).await.is_err() {
                return;
            }
        }
    });
    Ok((Relay { socket, reader }, bound))
}
