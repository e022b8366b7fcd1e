//! The box's end of a WebRTC media session, sans-IO: one audio stream (a
//! call) or one send-only video stream (a WHEP camera viewer) over one UDP
//! port (ICE-lite, DTLS-SRTP, RTCP-mux, BUNDLE), built on webrtc-rs's
//! `rtc` peer connection. The driver owns the socket and the clock: it feeds
//! datagrams to [`WebRtcLeg::handle_datagram`], sends what
//! [`WebRtcLeg::poll_transmit`] gives, and calls [`WebRtcLeg::handle_timeout`]
//! at [`WebRtcLeg::poll_timeout`]. Decrypted RTP comes out of
//! [`WebRtcLeg::poll_rtp`]; RTP to send goes into [`WebRtcLeg::send_rtp`].
//!
//! The box is ICE-lite (RFC 8445 §2.5): it has one address per call that the
//! browser must reach anyway (directly or through a TURN relay), so it only
//! answers checks; the browser's full agent picks the pair, and media goes
//! only to the address the browser proved with a check (consent, RFC 7675).

use std::net::SocketAddr;
use std::time::Instant;

use branchgate_sdp::SessionDescription;
use bytes::{Bytes, BytesMut};
use rand::Rng;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("WebRTC session: {0}")]
    Session(String),
    #[error("no audio codec in common")]
    NoCommonCodec,
    #[error("the offer has no video section this box can send to ({0})")]
    NoVideo(&'static str),
}

fn session_error(e: impl std::fmt::Display) -> WebRtcError {
    WebRtcError::Session(e.to_string())
}

/// An audio codec as both legs of a call name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioCodec {
    /// Encoding name as in `a=rtpmap` (`PCMU`, `PCMA`, `G722`, `opus`, `telephone-event`).
    pub name: String,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub channels: u16,
    /// `a=fmtp` parameters, empty when none.
    pub fmtp: String,
}

impl AudioCodec {
    fn parameters(&self) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: format!("audio/{}", self.name),
                clock_rate: self.clock_rate,
                channels: self.channels,
                sdp_fmtp_line: self.fmtp.clone(),
                rtcp_feedback: vec![],
            },
            payload_type: self.payload_type,
        }
    }
}

/// The video codec the box sends: H.264 as its encoder makes it (packetization
/// mode 1; constrained baseline, which every WebRTC browser decodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoCodec {
    /// The offer's payload type for it (the answer must reuse it).
    pub payload_type: u8,
    /// `a=fmtp` as the box answers it.
    pub fmtp: String,
}

/// The H.264 parameters the box's encoder produces.
pub const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

impl VideoCodec {
    /// The offer's H.264 payload type the box can send: packetization mode 1
    /// and a constrained-baseline profile (`42e0..`, or baseline `4200..`, which
    /// decodes constrained baseline too). Pure: unit-tested on browser offers.
    pub fn h264_in_offer(offer: &str) -> Result<VideoCodec, WebRtcError> {
        let sdp = SessionDescription::parse(offer.as_bytes()).map_err(session_error)?;
        let video = sdp.media.iter().find(|m| m.kind == "video").ok_or(WebRtcError::NoVideo("no m=video"))?;
        let attribute = |name: &str, format: &str| -> Option<String> {
            video.lines.iter().filter(|l| l.kind == 'a').find_map(|l| {
                let rest = l.value.strip_prefix(name)?.strip_prefix(':')?;
                let (pt, value) = rest.split_once(' ')?;
                (pt == format).then(|| value.trim().to_string())
            })
        };
        let mut best: Option<(u8, u8)> = None;
        for format in &video.formats {
            let Ok(payload_type) = format.parse::<u8>() else { continue };
            let is_h264 = attribute("rtpmap", format).is_some_and(|m| m.eq_ignore_ascii_case("H264/90000"));
            let fmtp = attribute("fmtp", format).unwrap_or_default().to_ascii_lowercase();
            let param = |key: &str| fmtp.split(';').find_map(|p| p.trim().strip_prefix(key)?.strip_prefix('='));
            if !is_h264 || param("packetization-mode") != Some("1") {
                continue;
            }
            let rank = match param("profile-level-id").map(|p| p.get(..4).unwrap_or("")) {
                Some("42e0") => 2,
                Some("4200") => 1,
                _ => continue,
            };
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((payload_type, rank));
            }
        }
        let (payload_type, _) = best.ok_or(WebRtcError::NoVideo("no H264 with packetization-mode=1 in baseline"))?;
        Ok(VideoCodec { payload_type, fmtp: H264_FMTP.to_string() })
    }

    fn parameters(&self) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "video/H264".to_string(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: self.fmtp.clone(),
                // No `nack`: the box keeps no retransmission buffer; a loss
                // makes the browser ask for a keyframe (PLI) instead.
                rtcp_feedback: vec![
                    RTCPFeedback { typ: "nack".into(), parameter: "pli".into() },
                    RTCPFeedback { typ: "ccm".into(), parameter: "fir".into() },
                ],
            },
            payload_type: self.payload_type,
        }
    }
}

/// One RTP packet's fields that cross between legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtp {
    /// The sender's SSRC on a received packet; ignored when sending (a leg sends with its own).
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegState {
    Connecting,
    Connected,
    /// ICE or DTLS failed, or consent was lost: the call's media is gone.
    Failed,
    Closed,
}

/// The box's end of one browser's audio session.
pub struct WebRtcLeg {
    connection: RTCPeerConnection,
    local: SocketAddr,
    sender: RTCRtpSenderId,
    ssrc: u32,
    state: LegState,
    /// The browser asked for a keyframe (PLI/FIR), or just connected and has
    /// none yet; taken by [`WebRtcLeg::take_keyframe_request`].
    keyframe_wanted: bool,
    /// What the session speaks (payload types of `kind`), so a re-offer is
    /// narrowed as the first offer was.
    kind: RtpCodecKind,
    formats: Vec<u8>,
    /// The box's host candidates (`candidate:` values), written into every answer.
    candidates: Vec<String>,
}

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg").field("local", &self.local).field("state", &self.state).finish()
    }
}

impl WebRtcLeg {
    /// Answers a browser's offer: the box receives and sends `codecs` (the
    /// first is the voice codec; `telephone-event` may follow) on `local`,
    /// the address and port the browser must reach. Returns the answer SDP.
    pub fn answer(
        now: Instant,
        offer: &str,
        local: SocketAddr,
        codecs: &[AudioCodec],
    ) -> Result<(WebRtcLeg, String), WebRtcError> {
        let parameters = audio_parameters(codecs)?;
        let keep: Vec<u8> = codecs.iter().map(|c| c.payload_type).collect();
        Self::answer_with(now, only_formats(offer, "audio", &keep)?, &[local], RtpCodecKind::Audio, &parameters)
    }

    /// Answers a WHEP viewer's offer: the box only sends `codec` (from
    /// [`VideoCodec::h264_in_offer`]) and has one host candidate per address
    /// in `locals` (all on the same port), plus one per address in
    /// `announced` — where a one-to-one NAT in front of the box maps that
    /// port (`media.public_ip`): checks sent there arrive on a local socket.
    /// Returns the answer SDP.
    pub fn answer_video(
        now: Instant,
        offer: &str,
        locals: &[SocketAddr],
        announced: &[SocketAddr],
        codec: &VideoCodec,
    ) -> Result<(WebRtcLeg, String), WebRtcError> {
        let offer = only_formats(offer, "video", &[codec.payload_type])?;
        let candidates: Vec<SocketAddr> =
            locals.iter().chain(announced.iter().filter(|a| !locals.contains(a))).copied().collect();
        Self::answer_with(now, offer, &candidates, RtpCodecKind::Video, &[codec.parameters()])
    }

    /// The answer to an offer already narrowed to `parameters`: the common
    /// connection setup of calls and viewers.
    fn answer_with(
        now: Instant,
        offer: String,
        locals: &[SocketAddr],
        kind: RtpCodecKind,
        parameters: &[RTCRtpCodecParameters],
    ) -> Result<(WebRtcLeg, String), WebRtcError> {
        let local = *locals.first().ok_or_else(|| WebRtcError::Session("no local address".into()))?;
        let mut connection = connection(now, kind, parameters)?;
        let offer = RTCSessionDescription::offer(offer).map_err(session_error)?;
        connection.set_remote_description(now, offer).map_err(session_error)?;
        let (sender, ssrc) = add_track(&mut connection, kind, parameters)?;
        let mut candidates = Vec::with_capacity(locals.len());
        for local in locals {
            candidates.push(add_host_candidate(&mut connection, *local)?);
        }
        let answer = connection.create_answer(None).map_err(session_error)?;
        let sdp = candidates_in_first_accepted_section(&answer.sdp, &candidates)?;
        connection.set_local_description(now, answer).map_err(session_error)?;
        let formats = parameters.iter().map(|p| p.payload_type).collect();
        let session = Session { connection, local, sender, ssrc, kind, formats, candidates };
        Ok((WebRtcLeg::new(session), sdp))
    }

    fn new(session: Session) -> WebRtcLeg {
        let Session { connection, local, sender, ssrc, kind, formats, candidates } = session;
        let mut leg = WebRtcLeg {
            connection,
            local,
            sender,
            ssrc,
            state: LegState::Connecting,
            keyframe_wanted: false,
            kind,
            formats,
            candidates,
        };
        leg.drain_events();
        leg
    }

    /// Answers the browser's new offer on the running session: an ICE restart
    /// (new credentials: the box answers with new ones of its own, RFC 8839
    /// §4.4.1.1.1, and keeps its candidates), or the same session saying
    /// another direction. DTLS and SRTP go on; a new fingerprint (a new DTLS
    /// session) is refused. Returns the answer SDP.
    pub fn renegotiate(&mut self, now: Instant, offer: &str) -> Result<String, WebRtcError> {
        let kind = if self.kind == RtpCodecKind::Video { "video" } else { "audio" };
        let offer = only_formats(offer, kind, &self.formats)?;
        let before = self.connection.remote_description().and_then(|d| fingerprint(&d.sdp));
        if before.is_none() || before != fingerprint(&offer) {
            return Err(WebRtcError::Session("a new DTLS fingerprint (a new session) cannot be renegotiated".into()));
        }
        let offered = SessionDescription::parse(offer.as_bytes()).map_err(session_error)?;
        let offer = RTCSessionDescription::offer(offer).map_err(session_error)?;
        self.connection.set_remote_description(now, offer).map_err(session_error)?;
        let answer = self.connection.create_answer(None).map_err(session_error)?;
        let sdp = candidates_in_first_accepted_section(&answer.sdp, &self.candidates)?;
        self.connection.set_local_description(now, answer).map_err(session_error)?;
        self.drain_events();
        // `rtc` answers a renegotiation in the transceiver's direction (sendrecv) whatever
        // the offer says; RFC 3264 §6.1 wants the offer's turned around (hold: recvonly).
        let mut sdp = SessionDescription::parse(sdp.as_bytes()).map_err(session_error)?;
        for (answered, offered) in sdp.media.iter_mut().zip(&offered.media).filter(|(a, _)| a.port != 0) {
            if let Some(direction) = offered.direction() {
                answered.set_direction(direction.answer());
            }
        }
        Ok(sdp.to_string())
    }

    /// Offers a browser `codecs` (in preference order; `telephone-event`
    /// may be among them) on `local`. Returns the offer SDP; the browser's
    /// answer goes to [`WebRtcLeg::accept_answer`].
    pub fn offer(now: Instant, local: SocketAddr, codecs: &[AudioCodec]) -> Result<(WebRtcLeg, String), WebRtcError> {
        let parameters = audio_parameters(codecs)?;
        let mut connection = connection(now, RtpCodecKind::Audio, &parameters)?;
        let (sender, ssrc) = add_track(&mut connection, RtpCodecKind::Audio, &parameters)?;
        let candidate = add_host_candidate(&mut connection, local)?;
        let offer = connection.create_offer(None).map_err(session_error)?;
        let sdp = offer.sdp.clone();
        connection.set_local_description(now, offer).map_err(session_error)?;
        let formats = parameters.iter().map(|p| p.payload_type).collect();
        let session = Session {
            connection,
            local,
            sender,
            ssrc,
            kind: RtpCodecKind::Audio,
            formats,
            candidates: vec![candidate],
        };
        Ok((WebRtcLeg::new(session), sdp))
    }

    /// The browser's answer to [`WebRtcLeg::offer`].
    pub fn accept_answer(&mut self, now: Instant, answer: &str) -> Result<(), WebRtcError> {
        let answer = RTCSessionDescription::answer(answer.to_string()).map_err(session_error)?;
        self.connection.set_remote_description(now, answer).map_err(session_error)?;
        self.drain_events();
        Ok(())
    }

    pub fn state(&self) -> LegState {
        self.state
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A datagram that arrived on the leg's port (STUN, DTLS, SRTP or SRTCP).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_datagram_at(now, self.local, from, data);
    }

    /// A datagram that arrived at `local`, one of the leg's candidates.
    pub fn handle_datagram_at(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        // A bad or unexpected datagram is dropped; the session goes on.
        let _ = self.connection.handle_read(message);
        self.drain_events();
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.connection.poll_write().map(|m| (m.transport.peer_addr, m.message))
    }

    /// The next datagram to send: from which of the leg's candidates, to where.
    pub fn poll_transmit_from(&mut self) -> Option<(SocketAddr, SocketAddr, BytesMut)> {
        self.connection.poll_write().map(|m| (m.transport.local_addr, m.transport.peer_addr, m.message))
    }

    /// True once per keyframe request since the last call: the browser sent
    /// a PLI or FIR, or the session has just connected (media sent before
    /// DTLS completed was dropped, so the picture needs a fresh start).
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    /// The next decrypted RTP packet from the browser. RTCP read on the way
    /// is handled here (keyframe requests are noted).
    pub fn poll_rtp(&mut self) -> Option<Rtp> {
        while let Some(TaggedRTCMessage { message, .. }) = self.connection.poll_read() {
            if let RTCMessage::RtcpPacket(_, packets) = &message {
                self.keyframe_wanted |= packets.iter().any(|p| {
                    p.as_any().is::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                        || p.as_any().is::<rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
                });
            }
            if let RTCMessage::RtpPacket(_, packet) = message {
                return Some(Rtp {
                    ssrc: packet.header.ssrc,
                    payload_type: packet.header.payload_type,
                    sequence: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    marker: packet.header.marker,
                    payload: packet.payload,
                });
            }
        }
        None
    }

    /// Sends one RTP packet to the browser (encrypted; dropped until connected).
    pub fn send_rtp(&mut self, now: Instant, rtp: Rtp) -> Result<(), WebRtcError> {
        if self.state != LegState::Connected {
            return Ok(());
        }
        let mut packet = rtc::rtp::Packet::default();
        packet.header.version = 2;
        packet.header.payload_type = rtp.payload_type;
        packet.header.sequence_number = rtp.sequence;
        packet.header.timestamp = rtp.timestamp;
        packet.header.marker = rtp.marker;
        packet.header.ssrc = self.ssrc;
        packet.payload = rtp.payload;
        let mut sender = self.connection.rtp_sender(self.sender).ok_or(WebRtcError::NoCommonCodec)?;
        sender.write_rtp(now, packet).map_err(session_error)
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.connection.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.connection.handle_timeout(now);
        self.drain_events();
    }

    pub fn close(&mut self) {
        let _ = self.connection.close();
        self.state = LegState::Closed;
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.connection.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                self.state = match state {
                    RTCPeerConnectionState::Connected => {
                        self.keyframe_wanted = true;
                        LegState::Connected
                    }
                    RTCPeerConnectionState::Failed => LegState::Failed,
                    RTCPeerConnectionState::Closed => LegState::Closed,
                    _ => self.state,
                };
            }
        }
    }
}

/// The DTLS fingerprint a description names (in a media section or for the session).
fn fingerprint(sdp: &str) -> Option<String> {
    let sdp = SessionDescription::parse(sdp.as_bytes()).ok()?;
    let in_media = sdp.media.iter().find_map(|m| m.attributes("fingerprint").next());
    let in_session = || sdp.session.iter().filter(|l| l.kind == 'a').find_map(|l| l.value.strip_prefix("fingerprint:"));
    in_media.or_else(in_session).map(str::to_string)
}

/// A peer connection as set up, before it becomes a [`WebRtcLeg`].
struct Session {
    connection: RTCPeerConnection,
    local: SocketAddr,
    sender: RTCRtpSenderId,
    ssrc: u32,
    kind: RtpCodecKind,
    formats: Vec<u8>,
    candidates: Vec<String>,
}

fn audio_parameters(codecs: &[AudioCodec]) -> Result<Vec<RTCRtpCodecParameters>, WebRtcError> {
    if codecs.is_empty() {
        return Err(WebRtcError::NoCommonCodec);
    }
    Ok(codecs.iter().map(AudioCodec::parameters).collect())
}

/// A peer connection that speaks `codecs` (of one `kind`) only, ICE-lite, with RTCP reports.
fn connection(
    now: Instant,
    kind: RtpCodecKind,
    codecs: &[RTCRtpCodecParameters],
) -> Result<RTCPeerConnection, WebRtcError> {
    let mut media = MediaEngine::default();
    for codec in codecs {
        media.register_codec(codec.clone(), kind).map_err(session_error)?;
    }
    let registry = configure_rtcp_reports(Registry::new());
    let settings = SettingEngineBuilder::new().with_lite(true).build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(session_error)
}

/// The box's track (sending the first of `codecs`), with a random SSRC.
fn add_track(
    connection: &mut RTCPeerConnection,
    kind: RtpCodecKind,
    codecs: &[RTCRtpCodecParameters],
) -> Result<(RTCRtpSenderId, u32), WebRtcError> {
    let first = codecs.first().ok_or(WebRtcError::NoCommonCodec)?;
    let ssrc: u32 = rand::thread_rng().r#gen();
    let token = || format!("{:016x}", rand::thread_rng().r#gen::<u64>());
    let track = MediaStreamTrack::new(
        token(),
        token(),
        "branchgate".to_string(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: first.rtp_codec.clone(),
            ..Default::default()
        }],
    );
    let sender = connection.add_track(track).map_err(session_error)?;
    // `add_track` narrows the transceiver to the track's one codec; an offer
    // must list all of them (a browser callee may pick Opus over G.711).
    let mut transceiver = connection.rtp_transceiver(sender.into()).ok_or(WebRtcError::NoCommonCodec)?;
    transceiver.set_codec_preferences(codecs.to_vec()).map_err(session_error)?;
    Ok((sender, ssrc))
}

/// `rtc` writes the candidates into the first media section only, even when
/// that section is declined (port 0: a WHEP player offering audio and video
/// to a camera without audio), which leaves the answer with none the browser
/// will use. They go into the first accepted section then (with BUNDLE, the
/// one the transport belongs to).
fn candidates_in_first_accepted_section(answer: &str, candidates: &[String]) -> Result<String, WebRtcError> {
    let sdp = SessionDescription::parse(answer.as_bytes()).map_err(session_error)?;
    let Some(index) = sdp.media.iter().position(|m| m.port != 0) else { return Ok(answer.to_string()) };
    if sdp.media[index].lines.iter().any(|l| l.kind == 'a' && l.value.starts_with("candidate:")) {
        return Ok(answer.to_string());
    }
    // Inserted in the text (not the model) right before the next section, so
    // every other line stays exactly as `rtc` wrote it.
    let mut out = String::with_capacity(answer.len() + candidates.len() * 80);
    let mut section = None::<usize>;
    let insert = |out: &mut String| {
        for candidate in candidates {
            out.push_str(&format!("a={candidate}\r\n"));
        }
        out.push_str("a=end-of-candidates\r\n");
    };
    for line in answer.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            if section == Some(index) {
                insert(&mut out);
            }
            section = Some(section.map_or(0, |s| s + 1));
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if section == Some(index) {
        insert(&mut out);
    }
    Ok(out)
}

/// One of the box's ICE candidates: the leg's port on an address the browser
/// may reach. Returns its `candidate:` attribute value.
fn add_host_candidate(connection: &mut RTCPeerConnection, local: SocketAddr) -> Result<String, WebRtcError> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_string(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(session_error)?;
    let init = RTCIceCandidate::from(&candidate).to_json().map_err(session_error)?;
    let attribute = init.candidate.clone();
    connection.add_local_candidate(init).map_err(session_error)?;
    Ok(attribute)
}

/// The offer with its `kind` sections narrowed to the payload types `keep`.
/// The peer connection's codec matching ignores clock rates for some codecs
/// (it pairs `telephone-event/8000` with an offered `telephone-event/48000`)
/// and H.264 profiles, so it only sees what the box will really send and receive.
fn only_formats(offer: &str, kind: &str, keep: &[u8]) -> Result<String, WebRtcError> {
    let mut sdp = SessionDescription::parse(offer.as_bytes()).map_err(session_error)?;
    let keep: Vec<String> = keep.iter().map(u8::to_string).collect();
    for media in sdp.media.iter_mut().filter(|m| m.kind == kind) {
        media.formats.retain(|f| keep.contains(f));
        media.lines.retain(|line| {
            let Some((name, value)) = line.value.split_once(':') else { return true };
            let format = value.split_whitespace().next().unwrap_or("");
            line.kind != 'a'
                || !matches!(name, "rtpmap" | "fmtp" | "rtcp-fb")
                || format == "*"
                || keep.iter().any(|k| k == format)
        });
    }
    Ok(sdp.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = include_str!("../tests/chromium-offer.sdp");

    fn pcmu() -> Vec<AudioCodec> {
        vec![
            AudioCodec { name: "PCMU".into(), payload_type: 0, clock_rate: 8000, channels: 1, fmtp: String::new() },
            AudioCodec {
                name: "telephone-event".into(),
                payload_type: 126,
                clock_rate: 8000,
                channels: 1,
                fmtp: "0-16".into(),
            },
        ]
    }

    #[test]
    fn answers_a_chromium_offer_with_the_chosen_codec_only() {
        let local: SocketAddr = "192.0.2.1:20000".parse().expect("addr");
        let (leg, answer) = WebRtcLeg::answer(Instant::now(), CHROMIUM_OFFER, local, &pcmu()).expect("answer");
        assert_eq!(leg.state(), LegState::Connecting);
        let m_line = answer.lines().find(|l| l.starts_with("m=audio")).expect("m=audio");
        assert!(m_line.contains("UDP/TLS/RTP/SAVPF"), "{m_line}");
        let formats: Vec<&str> = m_line.split_whitespace().skip(3).collect();
        assert_eq!(formats, ["0", "126"], "{answer}");
        assert!(answer.contains("a=ice-lite"), "{answer}");
        assert!(answer.contains("a=fingerprint:sha-256 "), "{answer}");
        assert!(answer.contains("a=rtcp-mux"), "{answer}");
        assert!(answer.contains("192.0.2.1 20000 typ host"), "{answer}");
        assert!(!answer.contains("setup:actpass"), "{answer}");
    }

    fn attribute<'a>(sdp: &'a str, name: &str) -> &'a str {
        let prefix = format!("a={name}:");
        sdp.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_default()
    }

    #[test]
    fn an_ice_restart_is_answered_with_new_credentials_on_the_same_candidate() {
        let local: SocketAddr = "192.0.2.1:20000".parse().expect("addr");
        let now = Instant::now();
        let (mut leg, first) = WebRtcLeg::answer(now, CHROMIUM_OFFER, local, &pcmu()).expect("answer");
        let restart = CHROMIUM_OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:R").replace("a=ice-pwd:", "a=ice-pwd:R");
        let second = leg.renegotiate(now, &restart).expect("restart answered");
        assert_ne!(attribute(&first, "ice-ufrag"), attribute(&second, "ice-ufrag"), "{second}");
        assert_ne!(attribute(&first, "ice-pwd"), attribute(&second, "ice-pwd"), "{second}");
        assert_eq!(attribute(&first, "fingerprint"), attribute(&second, "fingerprint"), "same DTLS session");
        assert!(second.contains("192.0.2.1 20000 typ host"), "{second}");
        let m_line = second.lines().find(|l| l.starts_with("m=audio")).expect("m=audio");
        assert_eq!(m_line.split_whitespace().skip(3).collect::<Vec<_>>(), ["0", "126"], "{second}");

        // The same session on hold: answered recvonly, credentials kept.
        let hold = restart.replace("a=sendrecv", "a=sendonly");
        let third = leg.renegotiate(now, &hold).expect("hold answered");
        assert!(third.contains("a=recvonly"), "{third}");
        assert_eq!(attribute(&second, "ice-ufrag"), attribute(&third, "ice-ufrag"), "{third}");

        // Another DTLS identity is another session, not a renegotiation.
        let fingerprint = attribute(CHROMIUM_OFFER, "fingerprint");
        let other = restart.replace(fingerprint, &fingerprint.replace(|c: char| c.is_ascii_hexdigit(), "A"));
        assert!(leg.renegotiate(now, &other).is_err());
    }

    /// Chromium 156's offer of a WHEP player: recvonly audio and video.
    const CHROMIUM_WHEP_OFFER: &str = include_str!("../tests/chromium-whep-offer.sdp");

    #[test]
    fn picks_the_constrained_baseline_packetization_mode_1_h264_of_an_offer() {
        let codec = VideoCodec::h264_in_offer(CHROMIUM_WHEP_OFFER).expect("h264");
        assert_eq!(codec.payload_type, 108, "42e01f with packetization-mode=1");
        let baseline_only = CHROMIUM_WHEP_OFFER.replace("profile-level-id=42e01f", "profile-level-id=640c1f");
        assert_eq!(VideoCodec::h264_in_offer(&baseline_only).expect("h264").payload_type, 102, "42001f next");
        let mode0_only = CHROMIUM_WHEP_OFFER.replace("packetization-mode=1", "packetization-mode=0");
        assert!(matches!(VideoCodec::h264_in_offer(&mode0_only), Err(WebRtcError::NoVideo(_))));
        assert!(matches!(VideoCodec::h264_in_offer(CHROMIUM_OFFER), Err(WebRtcError::NoVideo(_))), "audio only");
    }

    #[test]
    fn answers_a_whep_offer_send_only_with_every_candidate() {
        let codec = VideoCodec::h264_in_offer(CHROMIUM_WHEP_OFFER).expect("h264");
        let locals: Vec<SocketAddr> =
            vec!["192.0.2.1:20002".parse().expect("addr"), "127.0.0.1:20002".parse().expect("addr")];
        let public: SocketAddr = "203.0.113.7:20002".parse().expect("addr");
        let (leg, answer) =
            WebRtcLeg::answer_video(Instant::now(), CHROMIUM_WHEP_OFFER, &locals, &[public], &codec).expect("answer");
        assert_eq!(leg.state(), LegState::Connecting);
        let video = answer.split("m=video").nth(1).expect("m=video");
        let m_line = video.lines().next().expect("line");
        assert_eq!(m_line.split_whitespace().skip(1).collect::<Vec<_>>(), ["UDP/TLS/RTP/SAVPF", "108"], "{answer}");
        assert!(answer.contains("m=audio 0 "), "the audio the box does not send is declined: {answer}");
        assert!(video.contains("a=sendonly"), "{answer}");
        assert!(video.contains("a=rtcp-fb:108 nack pli"), "{answer}");
        assert!(video.contains("profile-level-id=42e01f"), "{answer}");
        assert!(answer.contains("192.0.2.1 20002 typ host"), "{answer}");
        assert!(answer.contains("127.0.0.1 20002 typ host"), "{answer}");
        assert!(answer.contains("203.0.113.7 20002 typ host"), "the NAT's public mapping: {answer}");
        assert!(answer.contains("a=ice-lite"), "{answer}");
    }

    #[test]
    fn refuses_an_offer_that_is_not_sdp() {
        let local: SocketAddr = "192.0.2.1:20000".parse().expect("addr");
        assert!(WebRtcLeg::answer(Instant::now(), "hello", local, &pcmu()).is_err());
        assert!(matches!(
            WebRtcLeg::answer(Instant::now(), CHROMIUM_OFFER, local, &[]),
            Err(WebRtcError::NoCommonCodec)
        ));
    }

    #[test]
    fn an_offer_lists_every_codec_in_order() {
        let local: SocketAddr = "192.0.2.1:20000".parse().expect("addr");
        let mut codecs = pcmu();
        codecs.insert(
            1,
            AudioCodec {
                name: "opus".into(),
                payload_type: 111,
                clock_rate: 48000,
                channels: 2,
                fmtp: "minptime=10;useinbandfec=1".into(),
            },
        );
        let (_, offer) = WebRtcLeg::offer(Instant::now(), local, &codecs).expect("offer");
        let m_line = offer.lines().find(|l| l.starts_with("m=audio")).expect("m=audio");
        let formats: Vec<&str> = m_line.split_whitespace().skip(3).collect();
        assert_eq!(formats, ["0", "111", "126"], "{offer}");
        assert!(offer.contains("a=rtpmap:111 opus/48000/2"), "{offer}");
    }
}
