//! The gateway's SIP side: today the registrar on UDP and TCP
//! (`sip.udp_port`, `sip.tcp_port`), driving [`branchgate_sip::Server`]. TLS
//! and WebSocket transports and the B2BUA call model come next.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use branchgate_config::{SipConfig, Snapshot};
use branchgate_sip::server::RegistrationInfo;
use branchgate_sip::{Flow, Server, ServerConfig, Transport, UserKeys};
use branchgate_streams::{Connection, StreamEvent, spawn_accept_loop};
use rand::RngCore;
use std::collections::HashMap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on SIP {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("SIP socket failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The SIP flow of a stream connection.
fn flow_of(c: Connection) -> Flow {
    Flow { transport: if c.tls { Transport::Tls } else { Transport::Tcp }, local: c.local, remote: c.remote }
}

/// The sans-IO server's configuration from the box's.
pub fn server_config(sip: &SipConfig) -> ServerConfig {
    let mut config = ServerConfig::new(sip.domain.clone());
    config.users = sip
        .users
        .iter()
        .filter_map(|u| {
            let key = u.password.digest_key().filter(|k| k.realm == sip.domain)?;
            Some((u.username.clone(), UserKeys { md5: hex::encode(key.md5), sha256: hex::encode(key.sha256) }))
        })
        .collect();
    config
}

/// Live registrations for the admin UI, refreshed every second.
#[derive(Clone, Debug, Default)]
pub struct SipMonitor(Arc<Mutex<Vec<RegistrationInfo>>>);

impl SipMonitor {
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, list: Vec<RegistrationInfo>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = list;
    }
}

/// Runs SIP until `shutdown` turns true; a new port restarts it, other
/// changes apply with registrations kept.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    monitor: SipMonitor,
) -> Result<(), GatewayError> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    loop {
        let sip = config_rx.borrow_and_update().config.sip.clone();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sip.udp_port);
        let socket = UdpSocket::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
        let local = socket.local_addr()?;
        let tcp_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sip.tcp_port);
        let tcp = TcpListener::bind(tcp_addr).await.map_err(|source| GatewayError::Bind { addr: tcp_addr, source })?;
        let (stream_tx, mut stream_rx) = mpsc::channel::<StreamEvent>(1024);
        let accept = spawn_accept_loop(tcp, None, branchgate_sip::frame_len, stream_tx);
        let mut streams: HashMap<Flow, mpsc::Sender<Vec<u8>>> = HashMap::new();
        tracing::info!(udp = %addr, tcp = %tcp_addr, domain = %sip.domain, "SIP listening");
        let mut server = Server::new(server_config(&sip), secret, Instant::now());
        let mut buf = vec![0u8; 65536];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let restart = loop {
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    let (len, remote) = received?;
                    let flow = Flow { transport: Transport::Udp, local, remote };
                    server.handle_input(Instant::now(), flow, &buf[..len]);
                }
                Some(event) = stream_rx.recv() => match event {
                    StreamEvent::Opened { connection, writer } => { streams.insert(flow_of(connection), writer); }
                    StreamEvent::Frame { connection, data } => server.handle_input(Instant::now(), flow_of(connection), &data),
                    StreamEvent::Closed { connection } => { streams.remove(&flow_of(connection)); }
                },
                _ = tick.tick() => {
                    server.handle_timeout(Instant::now());
                    monitor.publish(server.registrations(Instant::now()));
                }
                changed = config_rx.changed() => {
                    if changed.is_err() { break false; }
                    let new = config_rx.borrow_and_update().config.sip.clone();
                    if new.udp_port != sip.udp_port || new.tcp_port != sip.tcp_port { break true; }
                    server.set_config(server_config(&new));
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() { break false; }
                }
            }
            while let Some(output) = server.poll_output() {
                match output.flow.transport {
                    Transport::Udp => {
                        if let Err(e) = socket.send_to(&output.data, output.flow.remote).await {
                            tracing::debug!(to = %output.flow.remote, error = %e, "SIP message not sent");
                        }
                    }
                    _ => match streams.get(&output.flow) {
                        Some(writer) => {
                            let _ = writer.try_send(output.data);
                        }
                        None => tracing::debug!(to = %output.flow.remote, "SIP connection gone; message dropped"),
                    },
                }
            }
        };
        accept.abort();
        monitor.publish(Vec::new());
        if !restart {
            return Ok(());
        }
        tracing::info!("SIP port changed; restarting");
    }
}
