//! The gateway: the B2BUA ([`b2bua`], sans-IO) and its tokio driver — SIP
//! on UDP and TCP (`sip.udp_port`, `sip.tcp_port`), the media relay
//! ([`relay`]), call records. TLS and WebSocket transports come next.

pub mod b2bua;
pub mod relay;
pub mod webrtc;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use b2bua::{Action, B2bua, CallConfig, CallRecord, RouteRule, TrunkTarget};
use branchgate_config::{SipConfig, SipTransport, Snapshot};
use branchgate_sip::server::RegistrationInfo;
use branchgate_sip::{Flow, Server, ServerConfig, Transport, UserKeys};
pub use branchgate_streams::CertificateSource;
use branchgate_streams::{Connection, StreamEvent, TlsClient, spawn_accept_loop, spawn_connect, tls_acceptor};
use rand::RngCore;
pub use relay::LegQuality;
use relay::{BrowserLeg, MediaEvent, MediaRelay, RelaySettings};
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
    let transport = match (c.websocket, c.tls) {
        (true, _) => Transport::Ws,
        (false, true) => Transport::Tls,
        (false, false) => Transport::Tcp,
    };
    Flow { transport, local: c.local, remote: c.remote }
}

/// How the box opens TLS to the trunk at `remote`: the trunk's configured host name is what its
/// certificate must name; trusted are the system's CAs and the trunk's own `tls_ca`.
fn trunk_tls_client(
    b2bua: &B2bua,
    config: &watch::Receiver<Arc<Snapshot>>,
    certificates: &CertificateSource,
    remote: SocketAddr,
) -> Result<TlsClient, String> {
    let name = b2bua.config().trunks.iter().find(|t| t.addr == remote).map(|t| t.name.clone());
    let snapshot = config.borrow();
    let trunk = name
        .and_then(|name| snapshot.config.sip.trunks.iter().find(|t| t.name == name))
        .ok_or("not a configured TLS trunk")?;
    // Mutual TLS: the box's own certificate, the one its admin and SIP listeners serve.
    let identity = if trunk.tls_client_certificate {
        Some(certificates().map_err(|e| format!("no certificate of the box's to present: {e}"))?)
    } else {
        None
    };
    TlsClient::new(&trunk.host, trunk.tls_ca.as_deref(), identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))
}

/// What each TLS connection to a trunk was opened trusting: the trunk's address, the name its
/// certificate must carry, its `tls_ca`, and whether the box presented its certificate. When
/// that changes, the connection must go.
fn tls_trust(b2bua: &B2bua, sip: &SipConfig) -> Vec<(SocketAddr, String, Option<String>, bool)> {
    b2bua
        .config()
        .trunks
        .iter()
        .filter(|t| t.transport == Transport::Tls)
        .filter_map(|t| {
            let trunk = sip.trunks.iter().find(|c| c.name == t.name)?;
            Some((t.addr, trunk.host.clone(), trunk.tls_ca.clone(), trunk.tls_client_certificate))
        })
        .collect()
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
    config.offer_sha256 = sip.digest_sha256;
    config
}

/// The B2BUA's configuration from the box's; trunk hosts that are names are
/// resolved here (a trunk that does not resolve is left out, and said so).
pub async fn call_config(config: &branchgate_config::Config) -> CallConfig {
    let sip = &config.sip;
    let mut call = CallConfig::new(sip.domain.clone());
    call.codecs = config.media.codecs.clone();
    call.max_transcoded = config.media.max_transcoded_calls as usize;
    for trunk in &sip.trunks {
        let transport = match trunk.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
            SipTransport::Tls => Transport::Tls,
        };
        let addr = match trunk.host.parse::<IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, trunk.port)),
            Err(_) => tokio::net::lookup_host((trunk.host.as_str(), trunk.port)).await.ok().and_then(|mut a| a.next()),
        };
        match addr {
            Some(addr) => call.trunks.push(TrunkTarget {
                name: trunk.name.clone(),
                addr,
                transport,
                priority: trunk.priority,
                keepalive: (trunk.keepalive_seconds > 0)
                    .then(|| Duration::from_secs(u64::from(trunk.keepalive_seconds))),
                credentials: match (&trunk.username, &trunk.password) {
                    (Some(user), Some(password)) => Some((user.clone(), password.expose().to_string())),
                    _ => None,
                },
                register: trunk.register,
                dtmf_info: trunk.dtmf == branchgate_config::DtmfMode::Info,
            }),
            None => {
                tracing::warn!(trunk = %trunk.name, host = %trunk.host, "trunk host does not resolve; trunk unused")
            }
        }
    }
    call.routes = sip
        .routes
        .iter()
        .map(|r| RouteRule { prefix: r.prefix.clone(), strip: r.strip as usize, trunk: r.trunk.clone() })
        .collect();
    call.emergency_numbers = sip.emergency_numbers.clone();
    call.advertise_ip = branchgate_streams::primary_ip();
    call.public_ip = config.media.public_ip;
    call.local_networks = config.media.local_networks.clone();
    call.sip_port = sip.udp_port;
    call.rtp_ports = config.media.call_ports();
    call
}

/// A call in the admin UI's table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CallView {
    pub id: u64,
    pub caller: String,
    pub callee: String,
    pub destination: String,
    pub state: &'static str,
    pub age_seconds: u64,
    pub packets_a_to_b: u64,
    pub packets_b_to_a: u64,
    /// What the box receives from the caller (side A) and from the callee (side B): codec,
    /// WebRTC or plain RTP, transcoded, loss, jitter, MOS. `None` until media flows.
    pub caller_media: Option<relay::LegQuality>,
    pub callee_media: Option<relay::LegQuality>,
}

/// A trunk's keepalive state for the admin UI.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrunkView {
    pub name: String,
    pub address: String,
    pub up: bool,
    /// Registered at the trunk (`None`: the box does not register there).
    pub registered: Option<bool>,
}

#[derive(Debug, Default)]
struct MonitorState {
    registrations: Vec<RegistrationInfo>,
    calls: Vec<CallView>,
    trunks: Vec<TrunkView>,
    hangups: Option<mpsc::UnboundedSender<u64>>,
    /// Where SIP-over-WebSocket connections (served by the admin listener) report.
    websocket: Option<mpsc::Sender<StreamEvent>>,
    /// Ended calls by cause, and failed digest checks, since the daemon started.
    calls_ended: std::collections::BTreeMap<String, u64>,
    auth_failures: u64,
    calls_started: u64,
}

/// Live registrations, calls and trunk states for the admin UI, refreshed
/// every second, and the way back for a hang-up button.
#[derive(Clone, Debug, Default)]
pub struct SipMonitor(Arc<Mutex<MonitorState>>);

impl SipMonitor {
    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        self.lock().registrations.clone()
    }

    pub fn calls(&self) -> Vec<CallView> {
        self.lock().calls.clone()
    }

    pub fn trunks(&self) -> Vec<TrunkView> {
        self.lock().trunks.clone()
    }

    /// The running gateway's stream events, for a SIP-over-WebSocket connection
    /// accepted elsewhere; `None` while SIP is not running.
    pub fn websocket_events(&self) -> Option<mpsc::Sender<StreamEvent>> {
        self.lock().websocket.clone()
    }

    /// Calls ended since start, by cause (`caller-bye`, `cancelled`, `rejected`...).
    pub fn calls_ended(&self) -> Vec<(String, u64)> {
        self.lock().calls_ended.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Calls set up since start (their rate is the CPS).
    pub fn calls_started(&self) -> u64 {
        self.lock().calls_started
    }

    /// Failed SIP digest checks since start.
    pub fn auth_failures(&self) -> u64 {
        self.lock().auth_failures
    }

    /// Whether the SIP service runs (it publishes its channels while it does).
    pub fn is_running(&self) -> bool {
        self.lock().hangups.is_some()
    }

    /// Asks the gateway to hang up a call; `false` when SIP is not running.
    pub fn hang_up(&self, call: u64) -> bool {
        self.lock().hangups.as_ref().is_some_and(|tx| tx.send(call).is_ok())
    }
}

/// Appends one call record as a JSON line to `<data dir>/cdr.jsonl`.
fn write_record(path: &Path, record: &CallRecord) {
    let end = time::OffsetDateTime::now_utc();
    let start = end - record.total;
    let answer = record.answered.then(|| end - record.talk);
    let format = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let line = serde_json::json!({
        "call": record.call,
        "start": format(start),
        "answer": answer.map(format),
        "end": format(end),
        "duration_seconds": record.talk.as_secs(),
        "caller": record.caller,
        "callee": record.callee,
        "destination": record.destination,
        "status": record.status,
        "cause": record.cause,
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "call record not written");
    }
}

/// Runs SIP until `shutdown` turns true; a new port restarts it, other
/// changes apply with registrations and calls kept.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    monitor: SipMonitor,
    data_dir: PathBuf,
    certificates: CertificateSource,
) -> Result<(), GatewayError> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let cdr_path = data_dir.join("cdr.jsonl");
    loop {
        let snapshot = config_rx.borrow_and_update().clone();
        let sip = snapshot.config.sip.clone();
        let certificate = snapshot.config.admin.tls_certificate.clone();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sip.udp_port);
        let socket = UdpSocket::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
        let local = socket.local_addr()?;
        let tcp_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sip.tcp_port);
        let tcp = TcpListener::bind(tcp_addr).await.map_err(|source| GatewayError::Bind { addr: tcp_addr, source })?;
        let tls_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), sip.tls_port);
        let tls = TcpListener::bind(tls_addr).await.map_err(|source| GatewayError::Bind { addr: tls_addr, source })?;
        let (stream_tx, mut stream_rx) = mpsc::channel::<StreamEvent>(1024);
        let mut accept = vec![spawn_accept_loop(tcp, None, branchgate_sip::frame_len, stream_tx.clone())];
        match tls_acceptor(&certificates) {
            Ok(acceptor) => {
                accept.push(spawn_accept_loop(tls, Some(acceptor), branchgate_sip::frame_len, stream_tx.clone()))
            }
            Err(e) => tracing::warn!(error = %e, "SIP over TLS unavailable: no usable certificate"),
        }
        let mut streams: HashMap<Flow, mpsc::Sender<Vec<u8>>> = HashMap::new();
        // Messages waiting for an outgoing connection to open.
        let mut connecting: HashMap<(Transport, SocketAddr), Vec<Vec<u8>>> = HashMap::new();
        tracing::info!(udp = %addr, tcp = %tcp_addr, tls = %tls_addr, domain = %sip.domain, "SIP listening");
        let server = Server::new(server_config(&sip), secret, Instant::now());
        let mut b2bua =
            B2bua::new(server, call_config(&snapshot.config).await, rand::random::<[u8; 32]>(), Instant::now());
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let relay_settings = |c: &branchgate_config::Config| RelaySettings {
            timeout: Duration::from_secs(u64::from(c.media.timeout_seconds)),
            inband_dtmf: c.media.inband_dtmf,
        };
        let mut relay = MediaRelay::new(events_tx, relay_settings(&snapshot.config));
        let (hangup_tx, mut hangup_rx) = mpsc::unbounded_channel();
        {
            let mut state = monitor.lock();
            state.hangups = Some(hangup_tx);
            state.websocket = Some(stream_tx.clone());
        }
        let mut trusted = tls_trust(&b2bua, &sip);
        let mut buf = vec![0u8; 65536];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let restart = loop {
            let wake = b2bua.poll_timeout().map(tokio::time::Instant::from_std);
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    let (len, remote) = received?;
                    let flow = Flow { transport: Transport::Udp, local, remote };
                    b2bua.handle_input(Instant::now(), flow, &buf[..len]);
                }
                Some(event) = stream_rx.recv() => match event {
                    StreamEvent::Opened { connection, writer, .. } => {
                        let flow = flow_of(connection);
                        // What waited for this outgoing connection goes now.
                        for data in connecting.remove(&(flow.transport, flow.remote)).unwrap_or_default() {
                            let _ = writer.try_send(data);
                        }
                        streams.insert(flow, writer);
                    }
                    StreamEvent::Frame { connection, data } => b2bua.handle_input(Instant::now(), flow_of(connection), &data),
                    StreamEvent::Closed { connection } => { streams.remove(&flow_of(connection)); }
                    StreamEvent::ConnectFailed { remote } => {
                        // The transaction layer times the requests out (and the B2BUA fails over).
                        tracing::info!(%remote, "SIP connection failed");
                        connecting.remove(&(Transport::Tcp, remote));
                        connecting.remove(&(Transport::Tls, remote));
                    }
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far)) => b2bua.handle_timeout(Instant::now()),
                Some(event) = events_rx.recv() => match event {
                    MediaEvent::Timeout(call) => b2bua.handle_media_timeout(Instant::now(), call),
                    MediaEvent::Dtmf { call, from, event, duration_ms } => {
                        b2bua.handle_dtmf(Instant::now(), call, from, event, duration_ms)
                    }
                    MediaEvent::Renegotiated { call, answer } => b2bua.handle_renegotiated(Instant::now(), call, answer),
                },
                Some(call) = hangup_rx.recv() => { b2bua.hang_up(Instant::now(), call); }
                _ = tick.tick() => {
                    let now = Instant::now();
                    b2bua.handle_timeout(now);
                    publish(&monitor, &b2bua, &relay, now);
                }
                changed = config_rx.changed() => {
                    if changed.is_err() { break false; }
                    let snapshot = config_rx.borrow_and_update().clone();
                    let new = &snapshot.config.sip;
                    let certificate_changed = snapshot.config.admin.tls_certificate != certificate;
                    if new.udp_port != sip.udp_port || new.tcp_port != sip.tcp_port || new.tls_port != sip.tls_port
                        || certificate_changed { break true; }
                    b2bua.sip_mut().set_config(server_config(new));
                    b2bua.set_config(call_config(&snapshot.config).await, Instant::now());
                    // A TLS connection opened under a trust the installer withdrew (another
                    // tls_ca, host or address) is closed; the next request opens one under the new.
                    let trust = tls_trust(&b2bua, new);
                    for (addr, ..) in trusted.iter().filter(|old| !trust.contains(old)) {
                        streams.retain(|flow, writer| {
                            let stale = flow.transport == Transport::Tls && flow.remote == *addr;
                            if stale {
                                tracing::info!(to = %addr, "trunk's TLS trust changed: connection closed");
                                let _ = writer.try_send(Vec::new()); // an empty message closes it
                            }
                            !stale
                        });
                    }
                    trusted = trust;
                    relay.set_settings(relay_settings(&snapshot.config));
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() { break false; }
                }
            }
            while let Some(action) = b2bua.poll_action() {
                match action {
                    Action::OpenStream { call, index, ports } => {
                        if let Err(e) = relay.open(call, index, ports).await {
                            tracing::warn!(call, error = %e, "media relay ports unavailable");
                        }
                    }
                    Action::OpenWebRtc { call, index, ports, side, leg, payloads, dtmf_as_info } => {
                        let browser = BrowserLeg { side, leg: leg.0, payloads, dtmf_as_info };
                        if let Err(e) = relay.open_webrtc(call, index, ports, browser).await {
                            tracing::warn!(call, error = %e, "media relay ports unavailable");
                        }
                    }
                    Action::DtmfMode { call, toward, info } => relay.dtmf_mode(call, toward, info),
                    Action::Peer { call, index, side, peer } => relay.peer(call, index, side, peer),
                    Action::Renegotiate { call, index, offer } => relay.renegotiate(call, index, offer),
                    Action::SendDtmf { call, index, toward, event, duration_ms } => {
                        relay.send_dtmf(call, index, toward, event, duration_ms)
                    }
                    Action::Close { call } => relay.close(call),
                    Action::Record(record) => {
                        *monitor.lock().calls_ended.entry(record.cause.clone()).or_default() += 1;
                        write_record(&cdr_path, &record);
                    }
                }
            }
            while let Some(output) = b2bua.poll_output() {
                match output.flow.transport {
                    Transport::Udp => {
                        if let Err(e) = socket.send_to(&output.data, output.flow.remote).await {
                            tracing::debug!(to = %output.flow.remote, error = %e, "SIP message not sent");
                        }
                    }
                    transport => {
                        // The exact connection, else any to that peer over that transport (RFC 5923
                        // reuse), else — the box as a client, to a trunk over TCP — a new one.
                        let writer = streams.get(&output.flow).or_else(|| {
                            streams
                                .iter()
                                .find(|(f, _)| f.transport == transport && f.remote == output.flow.remote)
                                .map(|(_, w)| w)
                        });
                        match (writer, transport) {
                            (Some(writer), _) => {
                                let _ = writer.try_send(output.data);
                            }
                            (None, Transport::Tcp | Transport::Tls) => {
                                let remote = output.flow.remote;
                                let queue = connecting.entry((transport, remote)).or_default();
                                if queue.is_empty() {
                                    let tls = match transport {
                                        Transport::Tls => {
                                            match trunk_tls_client(&b2bua, &config_rx, &certificates, remote) {
                                                Ok(client) => Some(client),
                                                Err(e) => {
                                                    tracing::warn!(to = %remote, error = %e, "no TLS to this trunk; message dropped");
                                                    continue;
                                                }
                                            }
                                        }
                                        _ => None,
                                    };
                                    spawn_connect(remote, tls, branchgate_sip::frame_len, stream_tx.clone());
                                }
                                // Retransmissions while connecting need not pile up.
                                if queue.len() < 32 {
                                    queue.push(output.data);
                                }
                            }
                            // The B2BUA delivers its internal leg's messages itself.
                            (None, Transport::Loop) => {}
                            (None, _) => {
                                tracing::debug!(to = %output.flow.remote, "SIP connection gone; message dropped")
                            }
                        }
                    }
                }
            }
        };
        for task in accept {
            task.abort();
        }
        relay.close_all();
        {
            // Counters live as long as the daemon; the rest goes with the service.
            let mut state = monitor.lock();
            let (ended, failures, started) =
                (std::mem::take(&mut state.calls_ended), state.auth_failures, state.calls_started);
            *state = MonitorState {
                calls_ended: ended,
                auth_failures: failures,
                calls_started: started,
                ..MonitorState::default()
            };
        }
        if !restart {
            return Ok(());
        }
        tracing::info!("SIP ports or certificate changed; restarting the listeners");
    }
}

fn publish(monitor: &SipMonitor, b2bua: &B2bua, relay: &MediaRelay, now: Instant) {
    let calls = b2bua
        .calls(now)
        .into_iter()
        .map(|c| {
            let counters = relay.counters(c.id);
            let count = |f: fn(&relay::Counters) -> &std::sync::atomic::AtomicU64| {
                counters.as_deref().map(|c| f(c).load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0)
            };
            let [caller_media, callee_media] = counters.as_deref().map(relay::Counters::quality).unwrap_or_default();
            CallView {
                id: c.id,
                caller: c.caller,
                callee: c.callee,
                destination: c.destination,
                state: c.state,
                age_seconds: c.age.as_secs(),
                packets_a_to_b: count(|c| &c.a_to_b),
                packets_b_to_a: count(|c| &c.b_to_a),
                caller_media,
                callee_media,
            }
        })
        .collect();
    let trunks = b2bua
        .config()
        .trunks
        .iter()
        .map(|t| {
            let state = b2bua.trunk_state(&t.name, now);
            TrunkView {
                name: t.name.clone(),
                address: t.addr.to_string(),
                up: state.as_ref().is_none_or(|s| s.up),
                registered: state.and_then(|s| s.registered),
            }
        })
        .collect();
    let mut state = monitor.lock();
    state.registrations = b2bua.sip().registrations(now);
    state.auth_failures = b2bua.sip().auth_failures;
    state.calls_started = b2bua.calls_started;
    state.calls = calls;
    state.trunks = trunks;
}
