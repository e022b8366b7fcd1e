//! WHEP viewers (RFC 9725): each one a send-only video [`WebRtcLeg`] on
//! its own UDP port, driven by a tokio task that forwards the camera's
//! shared encode to it.
//!
//! The leg has one host candidate per box address, all on the same port (a
//! socket bound to each address, so the leg knows which candidate a
//! datagram reached and answers from it). The session ends on `DELETE`,
//! when ICE consent is lost (no check from the viewer for
//! [`CONSENT_TIMEOUT`]; browsers send one every ~5 s, RFC 7675), or when DTLS
//! fails.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use branchgate_hal::camera::CameraInfo;
use branchgate_webrtc::{LegState, Rtp, VideoCodec, WebRtcError, WebRtcLeg};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use crate::{CaptureError, CaptureHub, Subscription};

/// No STUN check (or any datagram) from the viewer for this long ends the session.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("the offer is not usable SDP: {0}")]
    BadOffer(String),
    #[error("{0}")]
    NoVideo(String),
    #[error("at most {0} viewers at a time")]
    TooManyViewers(usize),
    #[error("no free UDP port in the media range {0}-{1}")]
    NoPort(u16, u16),
    #[error("no address to offer a candidate on")]
    NoAddress,
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("the WebRTC session could not be set up: {0}")]
    Session(String),
}

/// An answered viewer.
#[derive(Debug)]
pub struct WhepAnswer {
    /// The session's id (the last path segment of its `Location`).
    pub session: String,
    pub sdp: String,
}

/// Where viewers' UDP ports come from and how many may watch.
#[derive(Clone, Copy, Debug)]
pub struct WhepLimits {
    pub port_min: u16,
    pub port_max: u16,
    pub max_viewers: usize,
}

/// The box's WHEP viewers.
#[derive(Clone, Debug, Default)]
pub struct Whep {
    pub hub: CaptureHub,
    sessions: Arc<Mutex<HashMap<String, Viewer>>>,
}

#[derive(Debug)]
struct Viewer {
    camera: String,
    task: tokio::task::AbortHandle,
}

impl Whep {
    /// Answers `offer` for `camera` with candidates on `addresses`, and on
    /// `public_ip` (`media.public_ip`: a one-to-one NAT's address for the box)
    /// at the same port.
    pub async fn open(
        &self,
        camera: &CameraInfo,
        offer: &str,
        addresses: &[IpAddr],
        public_ip: Option<IpAddr>,
        limits: WhepLimits,
    ) -> Result<WhepAnswer, WhepError> {
        // Checked first: a bad offer costs no port and starts no encoder.
        let codec = VideoCodec::h264_in_offer(offer).map_err(|e| match e {
            WebRtcError::NoVideo(why) => WhepError::NoVideo(format!("no video the box can send: {why}")),
            other => WhepError::BadOffer(other.to_string()),
        })?;
        if self.count() >= limits.max_viewers {
            return Err(WhepError::TooManyViewers(limits.max_viewers));
        }
        let sockets = bind_viewer_port(addresses, limits.port_min, limits.port_max).await?;
        let locals: Vec<SocketAddr> = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        let announced: Vec<SocketAddr> =
            public_ip.zip(locals.first()).map(|(ip, local)| SocketAddr::new(ip, local.port())).into_iter().collect();
        let (leg, sdp) = WebRtcLeg::answer_video(Instant::now(), offer, &locals, &announced, &codec)
            .map_err(|e| WhepError::BadOffer(e.to_string()))?;
        let ice_password = ice_password(&sdp).ok_or(WhepError::Session("the answer has no ICE password".into()))?;
        let subscription = self.hub.subscribe(camera)?;
        let session = new_session_id();
        let mut sessions = self.lock();
        // Checked again under the lock: two offers may have raced past the first check.
        if sessions.len() >= limits.max_viewers {
            return Err(WhepError::TooManyViewers(limits.max_viewers));
        }
        let task = tokio::spawn(run_viewer(
            self.clone(),
            session.clone(),
            sockets,
            Box::new(leg),
            ViewerMedia { payload_type: codec.payload_type, ice_password },
            subscription,
        ));
        sessions.insert(session.clone(), Viewer { camera: camera.id.clone(), task: task.abort_handle() });
        tracing::info!(camera = %camera.id, session = %session, "WHEP viewer answered");
        Ok(WhepAnswer { session, sdp })
    }

    /// Ends a viewer's session; false if there is no such session of `camera`.
    pub fn close(&self, camera: &str, session: &str) -> bool {
        let mut sessions = self.lock();
        if sessions.get(session).is_none_or(|v| v.camera != camera) {
            return false;
        }
        if let Some(viewer) = sessions.remove(session) {
            // Aborting drops the task's leg, sockets and subscription.
            viewer.task.abort();
        }
        true
    }

    /// Viewers connected or connecting now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Viewer>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The box's `a=ice-pwd` in its answer: the key of the viewer's ICE checks.
fn ice_password(answer: &str) -> Option<String> {
    answer.lines().find_map(|l| l.trim().strip_prefix("a=ice-pwd:")).map(str::to_string)
}

/// A STUN Binding request whose MESSAGE-INTEGRITY is keyed with the box's ICE password: the
/// viewer's consent (RFC 7675). Anything else — junk, or packets from someone who does not
/// know the password — must not keep the box streaming at the viewer's address.
fn is_consent(datagram: &[u8], ice_password: &str) -> bool {
    use branchgate_turn::stun;
    stun::is_stun(datagram)
        && stun::Message::parse(datagram).is_ok_and(|m| {
            m.class == stun::Class::Request
                && m.method == stun::method::BINDING
                && m.integrity_ok(ice_password.as_bytes())
        })
}

/// What the viewer's task needs besides its leg: the video payload type it was answered
/// with, and the box's ICE password (consent checks).
struct ViewerMedia {
    payload_type: u8,
    ice_password: String,
}

/// 128 random bits: the session's URL is unguessable.
fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One UDP port for the viewer, bound on every address, from the viewers' part
/// of the media range (`MediaConfig::viewer_ports`: calls have the rest), starting
/// at a random port; ports another program holds are skipped.
async fn bind_viewer_port(addresses: &[IpAddr], min: u16, max: u16) -> Result<Vec<Arc<UdpSocket>>, WhepError> {
    if addresses.is_empty() {
        return Err(WhepError::NoAddress);
    }
    let span = u32::from(max.saturating_sub(min)) + 1;
    let start = rand::random::<u32>() % span;
    for i in 0..span.min(200) {
        let port = max - ((start + i) % span) as u16;
        let mut sockets = Vec::with_capacity(addresses.len());
        let mut taken = false;
        for address in addresses {
            match UdpSocket::bind(SocketAddr::new(*address, port)).await {
                Ok(socket) => sockets.push(Arc::new(socket)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    taken = true;
                    break;
                }
                // An address that cannot carry UDP at all (e.g. IPv6 going
                // away) gets no candidate rather than failing every port.
                Err(e) => tracing::debug!(%address, error = %e, "no candidate on this address"),
            }
        }
        if !taken && !sockets.is_empty() {
            return Ok(sockets);
        }
    }
    Err(WhepError::NoPort(min, max))
}

/// Drives one viewer until it leaves, then removes its session.
async fn run_viewer(
    whep: Whep,
    session: String,
    sockets: Vec<Arc<UdpSocket>>,
    mut leg: Box<WebRtcLeg>,
    media: ViewerMedia,
    mut video: Subscription,
) {
    let payload_type = media.payload_type;
    // One reader per socket feeding the leg's loop; they end with it.
    let (datagrams, mut incoming) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(256);
    let mut readers = tokio::task::JoinSet::new();
    for socket in &sockets {
        let (socket, datagrams) = (socket.clone(), datagrams.clone());
        readers.spawn(async move {
            let Ok(local) = socket.local_addr() else { return };
            let mut buf = vec![0u8; 2048];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if datagrams.send((local, from, buf[..len].to_vec())).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(datagrams);
    let mut last_heard = Instant::now();
    let why = loop {
        while let Some((from, to, data)) = leg.poll_transmit_from() {
            let socket = sockets.iter().find(|s| s.local_addr().is_ok_and(|l| l == from)).or(sockets.first());
            if let Some(socket) = socket {
                let _ = socket.send_to(&data, to).await;
            }
        }
        // Incoming RTP is not expected (send-only); reading drains RTCP and notes keyframe requests.
        while leg.poll_rtp().is_some() {}
        if leg.take_keyframe_request() {
            video.request_keyframe();
        }
        match leg.state() {
            LegState::Failed => break "ICE or DTLS failed",
            LegState::Closed => break "closed",
            _ => {}
        }
        if last_heard.elapsed() > CONSENT_TIMEOUT {
            break "ICE consent lost";
        }
        let wake = leg.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let wake = wake.min(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            datagram = incoming.recv() => {
                let Some((local, from, data)) = datagram else { break "sockets closed" };
                if is_consent(&data, &media.ice_password) {
                    last_heard = Instant::now();
                }
                leg.handle_datagram_at(Instant::now(), local, from, &data);
            }
            packet = video.recv() => match packet {
                Ok(packet) => {
                    let rtp = Rtp {
                        ssrc: 0,
                        payload_type,
                        sequence: packet.sequence,
                        timestamp: packet.timestamp,
                        marker: packet.marker,
                        payload: packet.payload,
                    };
                    if let Err(e) = leg.send_rtp(Instant::now(), rtp) {
                        tracing::debug!(session = %session, error = %e, "video not sent");
                    }
                }
                // Fell behind the encoder: the picture is broken until a keyframe.
                Err(broadcast::error::RecvError::Lagged(_)) => video.request_keyframe(),
                Err(broadcast::error::RecvError::Closed) => break "camera pipeline stopped",
            },
            _ = tokio::time::sleep_until(wake.into()) => leg.handle_timeout(Instant::now()),
        }
    };
    tracing::info!(session = %session, reason = why, "WHEP viewer ended");
    leg.close();
    while let Some((from, to, data)) = leg.poll_transmit_from() {
        if let Some(socket) = sockets.iter().find(|s| s.local_addr().is_ok_and(|l| l == from)) {
            let _ = socket.send_to(&data, to).await;
        }
    }
    whep.lock().remove(&session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checks_keyed_with_the_boxs_ice_password_are_consent() {
        use branchgate_turn::stun::{Class, Writer, attr, method};
        let check = |class, key: &str| {
            let mut buf = Vec::new();
            Writer::new(&mut buf, class, method::BINDING, [7; 12])
                .attr(attr::USERNAME, b"box:viewer")
                .integrity(key.as_bytes())
                .fingerprint();
            buf
        };
        assert!(is_consent(&check(Class::Request, "box-ice-password"), "box-ice-password"));
        assert!(!is_consent(&check(Class::Request, "guessed"), "box-ice-password"), "wrong key");
        assert!(!is_consent(&check(Class::Indication, "box-ice-password"), "box-ice-password"));
        assert!(!is_consent(&[0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "box-ice-password"), "RTP is no consent");
        assert_eq!(ice_password("v=0\r\na=ice-ufrag:u\r\na=ice-pwd:secret123\r\n").as_deref(), Some("secret123"));
    }

    #[tokio::test]
    async fn a_viewer_port_is_bound_on_every_address_in_the_range() {
        let addresses = [IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])];
        let sockets = bind_viewer_port(&addresses, 40000, 40009).await.expect("port");
        let ports: Vec<u16> = sockets.iter().map(|s| s.local_addr().expect("addr").port()).collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0], ports[1], "one port for every candidate");
        assert!((40000..=40009).contains(&ports[0]));
        assert!(matches!(bind_viewer_port(&[], 40000, 40009).await, Err(WhepError::NoAddress)));
    }

    #[tokio::test]
    async fn offers_without_usable_video_are_refused_before_anything_starts() {
        let whep = Whep::default();
        let camera = branchgate_hal::camera::enumerate(std::path::Path::new("/nonexistent")).remove(0);
        let limits = WhepLimits { port_min: 40010, port_max: 40019, max_viewers: 4 };
        let localhost = [IpAddr::from([127, 0, 0, 1])];
        let audio_only = include_str!("../../webrtc/tests/chromium-offer.sdp");
        assert!(matches!(whep.open(&camera, audio_only, &localhost, None, limits).await, Err(WhepError::NoVideo(_))));
        assert!(matches!(whep.open(&camera, "hello", &localhost, None, limits).await, Err(WhepError::BadOffer(_))));
        assert_eq!(whep.hub.encoders_running(), 0);
        assert_eq!(whep.count(), 0);
    }
}
