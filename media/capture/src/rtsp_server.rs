//! The RTSP listener (`network.rtsp_port`, 8554): a thin tokio driver around
//! the sans-IO [`crate::rtsp`]. One task per player connection reads its
//! requests, answers them, and once it plays, sends the camera's RTP — the
//! same packets every WHEP viewer gets from the one encode — interleaved on
//! the connection or over UDP from a port pair of the viewers' part of the
//! media range.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use branchgate_config::Snapshot;
use branchgate_hal::camera::CameraInfo;
use branchgate_rtp::{RtpHeader, build_rtp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, watch};

use crate::rtsp::{self, Camera, Connection, Effect, Input, Response, SESSION_TIMEOUT_SECONDS, Transport};
use crate::{CaptureHub, Subscription};

/// Players sending at once, at most (each costs the box its upload bandwidth, not an encode).
pub const MAX_PLAYERS: usize = 16;
/// A player whose connection takes no data for this long is dropped (it would hold up nothing
/// else, but its buffers and its place among [`MAX_PLAYERS`]).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The box's cameras as RTSP may serve them (the driver asks on every request).
pub type CameraSource = Arc<dyn Fn() -> Vec<CameraInfo> + Send + Sync>;

/// Serves RTSP until `shutdown`; restarts its listener when `network.rtsp_port` changes.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    hub: CaptureHub,
    cameras: CameraSource,
) -> std::io::Result<()> {
    let players = Arc::new(AtomicUsize::new(0));
    loop {
        let (port, udp_ports) = {
            let snapshot = config_rx.borrow_and_update();
            (snapshot.config.network.rtsp_port, snapshot.config.media.viewer_ports())
        };
        if port == 0 {
            tokio::select! {
                changed = config_rx.changed() => if changed.is_err() { return Ok(()) } else { continue },
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
        tracing::info!(port, "RTSP listening");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let player = Player { hub: hub.clone(), cameras: cameras.clone(), udp_ports, players: players.clone() };
                    tokio::spawn(player.serve(stream, peer));
                }
                changed = config_rx.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snapshot = config_rx.borrow().clone();
                    if snapshot.config.network.rtsp_port != port {
                        tracing::info!("RTSP port changed; restarting the listener");
                        break;
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

/// What one player's task needs.
struct Player {
    hub: CaptureHub,
    cameras: CameraSource,
    udp_ports: (u16, u16),
    players: Arc<AtomicUsize>,
}

/// A player that is being sent video.
struct Playing {
    subscription: Subscription,
    transport: Transport,
    ssrc: u32,
    /// Counted in [`MAX_PLAYERS`] until dropped.
    _slot: Slot,
}

/// One place among [`MAX_PLAYERS`], given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The UDP pair a UDP player is sent from (RTP, RTCP).
struct UdpPair {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl UdpPair {
    fn ports(&self) -> (u16, u16) {
        let port = |s: &UdpSocket| s.local_addr().map_or(0, |a| a.port());
        (port(&self.rtp), port(&self.rtcp))
    }
}

/// An even/odd port pair from `range`, starting at a random place.
async fn bind_pair((min, max): (u16, u16)) -> Option<UdpPair> {
    let first = min + min % 2;
    let pairs = max.saturating_sub(first).saturating_add(1) / 2;
    if pairs == 0 {
        return None;
    }
    let start = rand::random::<u16>() % pairs;
    for i in 0..pairs.min(64) {
        let port = first + 2 * ((start + i) % pairs);
        let any = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p);
        if let (Ok(rtp), Ok(rtcp)) = (UdpSocket::bind(any(port)).await, UdpSocket::bind(any(port + 1)).await) {
            return Some(UdpPair { rtp, rtcp });
        }
    }
    None
}

fn camera_list(source: &CameraSource) -> Vec<Camera> {
    source().into_iter().map(|c| Camera { id: c.id, name: c.name }).collect()
}

/// The next video packet for a player that plays; never ready otherwise.
async fn next_packet(playing: &mut Option<Playing>) -> Result<crate::VideoPacket, broadcast::error::RecvError> {
    match playing {
        Some(playing) => playing.subscription.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for a datagram on a UDP player's RTCP port (its receiver reports keep it alive).
async fn rtcp_from(udp: &Option<UdpPair>, buf: &mut [u8]) -> Option<SocketAddr> {
    match udp {
        Some(pair) => pair.rtcp.recv_from(buf).await.ok().map(|(_, from)| from),
        None => std::future::pending().await,
    }
}

impl Player {
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        let mut connection = Connection::new(format!("{:016x}", rand::random::<u64>()));
        let mut input = Vec::with_capacity(2048);
        let mut read_buf = [0u8; 4096];
        let mut rtcp_buf = [0u8; 1500];
        let mut packet = Vec::with_capacity(1500);
        let mut udp: Option<UdpPair> = None;
        let mut playing: Option<Playing> = None;
        let idle = Duration::from_secs(SESSION_TIMEOUT_SECONDS);
        let mut deadline = tokio::time::Instant::now() + idle;
        let why = loop {
            tokio::select! {
                read = stream.read(&mut read_buf) => {
                    let n = match read {
                        Ok(0) => break "closed by the player",
                        Ok(n) => n,
                        Err(_) => break "connection error",
                    };
                    input.extend_from_slice(&read_buf[..n]);
                    deadline = tokio::time::Instant::now() + idle;
                    match self.answer(&mut connection, &mut input, &mut stream, &mut udp, &mut playing).await {
                        Ok(()) => {}
                        Err(why) => break why,
                    }
                }
                received = next_packet(&mut playing) => match received {
                    Ok(video) => {
                        let Some(now_playing) = playing.as_ref() else { continue };
                        let header = RtpHeader {
                            payload_type: now_playing.subscription.payload_type(),
                            marker: video.marker,
                            sequence: video.sequence,
                            timestamp: video.timestamp,
                            ssrc: now_playing.ssrc,
                        };
                        match now_playing.transport {
                            Transport::Interleaved(channel, _) => {
                                // `$`, channel, length, then the RTP packet (RFC 2326 §10.12).
                                packet.clear();
                                packet.push(b'$');
                                packet.push(channel);
                                let mut rtp = Vec::with_capacity(12 + video.payload.len());
                                build_rtp(&header, &video.payload, &mut rtp);
                                packet.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
                                packet.extend_from_slice(&rtp);
                                match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&packet)).await {
                                    Ok(Ok(())) => {}
                                    Ok(Err(_)) => break "connection error",
                                    Err(_) => break "the player stopped taking video",
                                }
                            }
                            Transport::Udp(rtp_port, _) => {
                                build_rtp(&header, &video.payload, &mut packet);
                                if let Some(pair) = &udp {
                                    // A full socket buffer drops, as a router would.
                                    let _ = pair.rtp.try_send_to(&packet, SocketAddr::new(peer.ip(), rtp_port));
                                }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(playing) = &playing {
                            playing.subscription.request_keyframe();
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break "the camera stopped",
                },
                from = rtcp_from(&udp, &mut rtcp_buf) => {
                    if from.is_some_and(|f| f.ip() == peer.ip()) {
                        deadline = tokio::time::Instant::now() + idle;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break "no keepalive from the player",
            }
        };
        tracing::debug!(%peer, why, "RTSP player gone");
    }

    /// Joins `camera`'s stream (its one encode).
    fn start(&self, camera: &str) -> Option<Subscription> {
        let info = (self.cameras)().into_iter().find(|c| c.id == camera)?;
        self.hub.subscribe(&info).map_err(|e| tracing::warn!(camera, error = %e, "RTSP: the camera cannot stream")).ok()
    }

    /// Answers every whole request in `input` (and skips the player's interleaved RTCP).
    async fn answer(
        &self,
        connection: &mut Connection,
        input: &mut Vec<u8>,
        stream: &mut TcpStream,
        udp: &mut Option<UdpPair>,
        playing: &mut Option<Playing>,
    ) -> Result<(), &'static str> {
        loop {
            let request = match rtsp::parse(input) {
                Ok(Input::Incomplete) => return Ok(()),
                Ok(Input::Interleaved(used)) => {
                    input.drain(..used);
                    continue;
                }
                Ok(Input::Request(request, used)) => {
                    input.drain(..used);
                    request
                }
                Err(e) => {
                    // Nothing after a malformed request can be trusted to be framed: answer and close.
                    let mut response = Response { status: 400, headers: Vec::new(), body: Vec::new() };
                    response.body = format!("{e}\r\n").into_bytes();
                    response.headers.push(("Content-Type", "text/plain".into()));
                    let _ = stream.write_all(&response.to_bytes()).await;
                    return Err("malformed request");
                }
            };
            let wants_udp = request.method == "SETUP"
                && matches!(request.header("Transport").and_then(Transport::choose), Some(Transport::Udp(..)));
            if wants_udp && udp.is_none() {
                *udp = bind_pair(self.udp_ports).await;
            }
            let full = request.method == "PLAY"
                && !connection.playing()
                && self.players.load(Ordering::Relaxed) >= MAX_PLAYERS;
            let (response, effect) = if (wants_udp && udp.is_none()) || full {
                // No port pair left, or too many players: the player may try again later.
                let status = if full { 453 } else { 503 };
                let cseq = request.header("CSeq").unwrap_or("0").to_string();
                (Response { status, headers: vec![("CSeq", cseq)], body: Vec::new() }, Effect::None)
            } else {
                let ports = udp.as_ref().map_or((0, 0), UdpPair::ports);
                connection.handle(&request, &camera_list(&self.cameras), ports)
            };
            // A camera that cannot stream turns the PLAY into a 503 before anything is sent.
            let (response, started) = match effect {
                Effect::Play { camera, transport } => match self.start(&camera) {
                    Some(subscription) => (response, Some((subscription, transport))),
                    None => {
                        let cseq = request.header("CSeq").unwrap_or("0").to_string();
                        (Response { status: 503, headers: vec![("CSeq", cseq)], body: Vec::new() }, None)
                    }
                },
                Effect::Stop => {
                    *playing = None;
                    (response, None)
                }
                Effect::None => (response, None),
            };
            let failed = response.status == 503;
            match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&response.to_bytes())).await {
                Ok(Ok(())) => {}
                _ => return Err("connection error"),
            }
            if failed {
                return Err("the camera cannot stream");
            }
            if let Some((subscription, transport)) = started {
                self.players.fetch_add(1, Ordering::Relaxed);
                let slot = Slot(self.players.clone());
                *playing = Some(Playing { subscription, transport, ssrc: rand::random(), _slot: slot });
            }
        }
    }
}
