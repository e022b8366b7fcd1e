//! The TURN server's sockets and clock: a thin tokio driver around the
//! sans-IO [`branchgate_turn::Server`].
//!
//! Today: one UDP listener and one UDP socket per relay, a task per relay
//! socket feeding the main loop. Batched IO (recvmmsg/sendmmsg, GSO),
//! per-core SO_REUSEPORT listeners, TCP/TLS listeners and RFC 6062 come next.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use branchgate_config::{Snapshot, TurnConfig};
use branchgate_turn::server::{HEADROOM, TAILROOM};
use branchgate_turn::{Forward, Output, Server, ServerConfig};
use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Largest UDP payload relayed (what fits a 1500-byte MTU path is typical; allow jumbo-ish).
const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TURN listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The address relays bind to when `turn.relay_ip` is not set: the first
/// non-loopback IPv4 address, else loopback (a box without a network).
fn default_relay_ip() -> IpAddr {
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|list| list.into_iter().map(|i| i.ip()).find(|ip| ip.is_ipv4() && !ip.is_loopback()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The sans-IO server's configuration from the box's.
pub fn server_config(turn: &TurnConfig) -> ServerConfig {
    let relay_ip = turn.relay_ip.unwrap_or_else(default_relay_ip);
    let mut config = ServerConfig::new(turn.realm.clone(), relay_ip);
    config.users = turn
        .users
        .iter()
        .filter_map(|u| u.password.digest_key().filter(|k| k.realm == turn.realm).map(|k| (u.username.clone(), k.md5)))
        .collect();
    config.rest_secret = turn.auth_secret.as_ref().map(|s| s.expose().as_bytes().to_vec());
    config.policy.allowed = turn.allowed_peers.clone();
    config.policy.own_addresses = turn.external_ip.into_iter().collect();
    config.advertised_relay_ip = turn.external_ip;
    config.relay_ports = turn.relay_port_min..=turn.relay_port_max;
    config.max_allocations_per_user = turn.user_quota as usize;
    config.max_allocations = turn.total_quota as usize;
    config
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Relay {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

/// A datagram from a peer, with room to frame it for the client in place.
struct PeerPacket {
    port: u16,
    peer: SocketAddr,
    buf: Vec<u8>,
    len: usize,
}

/// Runs the TURN server until `shutdown` turns true. A configuration change
/// that keeps the listener applies at once, allocations kept; a new listener
/// port restarts the server.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    loop {
        let turn = config_rx.borrow_and_update().config.turn.clone();
        if !turn.enabled {
            tokio::select! {
                _ = config_rx.changed() => continue,
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), turn.udp_port);
        let listener = UdpSocket::bind(addr).await.map_err(|source| RelayError::Bind { addr, source })?;
        tracing::info!(%addr, realm = %turn.realm, "TURN listening");
        let restart = serve(&listener, &turn, &mut config_rx, &mut shutdown).await?;
        if !restart {
            return Ok(());
        }
        tracing::info!("TURN listener changed; restarting");
    }
}

/// The main loop on one listener; true when the configuration asks for a restart.
async fn serve(
    listener: &UdpSocket,
    turn: &TurnConfig,
    config_rx: &mut watch::Receiver<Arc<Snapshot>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, RelayError> {
    let local = listener.local_addr()?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let mut server = Server::new(server_config(turn), secret, Instant::now(), unix_now());
    let mut relays: HashMap<u16, Relay> = HashMap::new();
    let (peer_tx, mut peer_rx) = mpsc::channel::<PeerPacket>(1024);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let restart = loop {
        tokio::select! {
            received = listener.recv_from(&mut buf) => {
                let (len, client) = received?;
                let listener_addr = SocketAddr::new(local.ip(), local.port());
                match server.handle_client_packet(Instant::now(), listener_addr, client, &buf[..len]) {
                    Forward::ToPeer { relay_port, peer, payload } => {
                        if let Some(relay) = relays.get(&relay_port) {
                            // Non-blocking: a full socket buffer drops, like any router.
                            let _ = relay.socket.try_send_to(payload, peer);
                        }
                    }
                    Forward::ToClient { client, packet, .. } => {
                        let _ = listener.try_send_to(packet, client);
                    }
                    Forward::None => {}
                }
            }
            Some(mut packet) = peer_rx.recv() => {
                let forward = server.handle_peer_packet(Instant::now(), packet.port, packet.peer, &mut packet.buf, packet.len);
                if let Forward::ToClient { client, packet, .. } = forward {
                    let _ = listener.try_send_to(packet, client);
                }
            }
            _ = tick.tick() => server.handle_timeout(Instant::now()),
            changed = config_rx.changed() => {
                if changed.is_err() { break false; }
                let new = config_rx.borrow_and_update().config.turn.clone();
                if new.udp_port != turn.udp_port || !new.enabled {
                    break true;
                }
                server.set_config(server_config(&new));
                tracing::info!("TURN configuration applied; allocations kept");
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break false; }
            }
        }
        drain(&mut server, listener, &mut relays, &peer_tx).await;
    };
    for (_, relay) in relays.drain() {
        relay.reader.abort();
    }
    Ok(restart)
}

/// Carries out the server's control outputs.
async fn drain(
    server: &mut Server,
    listener: &UdpSocket,
    relays: &mut HashMap<u16, Relay>,
    peer_tx: &mpsc::Sender<PeerPacket>,
) {
    while let Some(output) = server.poll_output() {
        match output {
            Output::Reply { to, data, .. } => {
                if let Err(e) = listener.send_to(&data, to).await {
                    tracing::debug!(%to, error = %e, "TURN reply not sent");
                }
            }
            Output::BindRelay { ip, port } => {
                let result = open_relay(ip, port, peer_tx.clone());
                match result {
                    Ok((relay, bound)) => {
                        relays.insert(port, relay);
                        server.relay_bound(Instant::now(), port, Ok(bound));
                    }
                    Err(e) => {
                        tracing::debug!(%ip, port, error = %e, "relay port unavailable");
                        server.relay_bound(Instant::now(), port, Err(()));
                    }
                }
            }
            Output::CloseRelay { port } => {
                if let Some(relay) = relays.remove(&port) {
                    relay.reader.abort();
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
            let mut buf = vec![0u8; HEADROOM + MAX_DATAGRAM + TAILROOM];
            let Ok((len, peer)) = reader_socket.recv_from(&mut buf[HEADROOM..HEADROOM + MAX_DATAGRAM]).await else {
                return;
            };
            if peer_tx.send(PeerPacket { port, peer, buf, len }).await.is_err() {
                return;
            }
        }
    });
    Ok((Relay { socket, reader }, bound))
}
