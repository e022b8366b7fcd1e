//! The RTP/RTCP relay that anchors a call's media on the box: per stream
//! one task with four sockets (RTP and RTCP facing each side). What side A
//! sends to the box's A-facing port goes out of the B-facing port to where
//! side B really is (latched, see [`branchgate_rtp::Latch`]), and back.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use branchgate_dsp::{Codec, Frame, InbandKeys, JitterBuffer, Transcoder};
use branchgate_rtp::{
    Latch, ReceptionStats, RtpHeader, TelephoneEvent, build_rtp, is_rtcp, parse_rtp, rtp_payload,
    telephone_event_packets,
};
use branchgate_sdp::RtpMap;
use branchgate_webrtc::{LegState, Rtp, WebRtcLeg};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::b2bua::{MediaPeer, Side, StreamPorts};
use crate::webrtc::PayloadMap;

/// Packets relayed per direction of one call (for the calls table and metrics),
/// and when the call last carried any media (RTP or RTCP, on any stream).
#[derive(Debug)]
pub struct Counters {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
    epoch: Instant,
    last_activity_ms: AtomicU64,
    /// What the box receives from each side (A, B), as the relays last published it.
    quality: std::sync::Mutex<[Option<LegQuality>; 2]>,
}

/// The media the box receives from one side of a call, for the call details.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LegQuality {
    /// The codec that side sends (its SDP's name for the payload type, e.g. `PCMU`, `opus`).
    pub codec: String,
    /// A browser (ICE, DTLS-SRTP) rather than plain RTP.
    pub webrtc: bool,
    /// The box transcodes between this side's codec and the other side's.
    pub transcoded: bool,
    pub packets: u64,
    pub lost: u64,
    pub loss_percent: f64,
    pub jitter_ms: f64,
    /// ITU-T G.107 E-model estimate from the loss and jitter (see [`branchgate_rtp::mos`]).
    pub mos: f64,
}

impl Counters {
    fn new() -> Self {
        Counters {
            a_to_b: AtomicU64::new(0),
            b_to_a: AtomicU64::new(0),
            epoch: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            quality: std::sync::Mutex::new([None, None]),
        }
    }

    /// What the box receives from each side: `[A, B]`.
    pub fn quality(&self) -> [Option<LegQuality>; 2] {
        self.quality.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, side: Side, quality: LegQuality) {
        self.quality.lock().unwrap_or_else(|p| p.into_inner())[side_index(side)] = Some(quality);
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// No media on any stream of the call for `timeout` (`media.timeout_seconds`).
    fn idle(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last) >= timeout
    }
}

#[derive(Debug)]
enum Control {
    Peer {
        side: Side,
        peer: MediaPeer,
    },
    /// `toward` takes DTMF as SIP INFO (or no longer does).
    DtmfMode {
        toward: Side,
        info: bool,
    },
    /// A DTMF key to send to `toward` as RFC 4733 events.
    Dtmf {
        toward: Side,
        event: u8,
        duration_ms: u32,
    },
    /// The browser's new offer on its running session (ICE restart): answered
    /// with [`MediaEvent::Renegotiated`].
    Renegotiate {
        offer: String,
    },
}

/// What the relays tell the B2BUA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The call's media went silent (`media.timeout_seconds`) or its browser is gone.
    Timeout(u64),
    /// A key from `from`'s telephone events, for a side that takes DTMF as SIP INFO.
    Dtmf { call: u64, from: Side, event: u8, duration_ms: u32 },
    /// The browser session's answer to a new offer, or why there is none.
    Renegotiated { call: u64, answer: Result<String, String> },
}

/// A browser's end of a stream as the B2BUA hands it over.
pub struct BrowserLeg {
    /// Which side of the call the browser is.
    pub side: Side,
    pub leg: Box<WebRtcLeg>,
    pub payloads: PayloadMap,
    /// The other side takes DTMF as SIP INFO: report the browser's events instead of relaying them.
    pub dtmf_as_info: bool,
}

#[derive(Debug)]
struct CallMedia {
    streams: HashMap<usize, (mpsc::UnboundedSender<Control>, JoinHandle<()>)>,
    counters: Arc<Counters>,
    /// Per side (A, B): it takes DTMF as SIP INFO, so the other side's telephone events
    /// are taken out of plain streams and reported instead of relayed.
    dtmf_info: [bool; 2],
}

impl CallMedia {
    fn new() -> CallMedia {
        CallMedia { streams: HashMap::new(), counters: Arc::new(Counters::new()), dtmf_info: [false; 2] }
    }
}

/// Every call's relays; the driver's main loop owns it.
#[derive(Debug)]
pub struct MediaRelay {
    calls: HashMap<u64, CallMedia>,
    /// What the relays report to the B2BUA (silent calls, DTMF for INFO trunks).
    events: mpsc::UnboundedSender<MediaEvent>,
    settings: RelaySettings,
}

/// What the configuration says about relaying (`media.*`); streams opened from then on follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelaySettings {
    /// How long a call may go without media.
    pub timeout: Duration,
    /// Listen for keys sent as audio tones on plain streams (`media.inband_dtmf`).
    pub inband_dtmf: bool,
}

impl MediaRelay {
    pub fn new(events: mpsc::UnboundedSender<MediaEvent>, settings: RelaySettings) -> Self {
        MediaRelay { calls: HashMap::new(), events, settings }
    }

    /// New settings for streams opened from now on.
    pub fn set_settings(&mut self, settings: RelaySettings) {
        self.settings = settings;
    }

    pub fn counters(&self, call: u64) -> Option<Arc<Counters>> {
        self.calls.get(&call).map(|c| c.counters.clone())
    }

    pub async fn open(&mut self, call: u64, index: usize, ports: StreamPorts) -> std::io::Result<()> {
        let bind = |port: u16| UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        let sockets = [
            bind(ports.a_port).await?,
            bind(ports.a_port + 1).await?,
            bind(ports.b_port).await?,
            bind(ports.b_port + 1).await?,
        ];
        let entry = self.calls.entry(call).or_insert_with(CallMedia::new);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(relay_stream(
            sockets,
            control_rx,
            entry.counters.clone(),
            self.events.clone(),
            call,
            self.settings,
            entry.dtmf_info,
        ));
        if let Some((_, old)) = entry.streams.insert(index, (control_tx, task)) {
            old.abort();
        }
        Ok(())
    }

    /// A stream whose `side` is a browser: `leg` (the box's WebRTC session)
    /// runs on that side's port; the other side gets plain RTP and RTCP.
    pub async fn open_webrtc(
        &mut self,
        call: u64,
        index: usize,
        ports: StreamPorts,
        browser: BrowserLeg,
    ) -> std::io::Result<()> {
        let BrowserLeg { side, leg, payloads, dtmf_as_info } = browser;
        let bind = |port: u16| UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        let (browser_port, sip_port) = match side {
            Side::A => (ports.a_port, ports.b_port),
            Side::B => (ports.b_port, ports.a_port),
        };
        let sockets = BrowserSockets {
            browser: bind(browser_port).await?,
            sip_rtp: bind(sip_port).await?,
            sip_rtcp: bind(sip_port + 1).await?,
        };
        let entry = self.calls.entry(call).or_insert_with(CallMedia::new);
        let (to_sip, to_browser) = match payloads.transcode {
            Some(t) => (
                Some(Transcoder::new(t.browser, t.sip, PTIME_MS).map_err(std::io::Error::other)?),
                Some(Transcoder::new(t.sip, t.browser, PTIME_MS).map_err(std::io::Error::other)?),
            ),
            None => (None, None),
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        // Transcoding needs the SIP side's packets in order (a passed-through stream is put in
        // order by the browser's own jitter buffer).
        let sip_jitter = to_browser.is_some().then(|| JitterBuffer::new(branchgate_dsp::jitter::DEFAULT_MAX_WAIT));
        let transcoded = payloads.transcode.is_some();
        let mut from_browser = Reception::new(side, true, transcoded);
        if let Some(t) = payloads.transcode {
            from_browser.formats.push(RtpMap {
                payload_type: payloads.voice.browser,
                name: t.browser.name().to_string(),
                clock_rate: t.browser.rtp_clock(),
                channels: 1,
            });
            from_browser.formats.extend(payloads.dtmf.map(|d| RtpMap {
                payload_type: d.browser,
                name: "telephone-event".into(),
                clock_rate: payloads.browser_event_clock(),
                channels: 1,
            }));
        }
        let stream = BrowserStream {
            leg,
            payloads,
            sip_jitter,
            from_browser,
            from_sip: Reception::new(side.other(), false, transcoded),
            to_sip: Crossing::new(to_sip),
            to_browser: Crossing::new(to_browser),
            dtmf_as_info,
            keys: KeyReporter::default(),
            injected: VecDeque::new(),
            browser_side: side,
            counters: entry.counters.clone(),
            events: self.events.clone(),
            call,
            timeout: self.settings.timeout,
        };
        let task = tokio::spawn(relay_browser_stream(sockets, stream, control_rx));
        if let Some((_, old)) = entry.streams.insert(index, (control_tx, task)) {
            old.abort();
        }
        Ok(())
    }

    /// Sends a DTMF key to `toward` on a browser stream as RFC 4733 events.
    pub fn send_dtmf(&mut self, call: u64, index: usize, toward: Side, event: u8, duration_ms: u32) {
        if let Some((control, _)) = self.calls.get(&call).and_then(|c| c.streams.get(&index)) {
            let _ = control.send(Control::Dtmf { toward, event, duration_ms });
        }
    }

    /// Hands a browser's new offer to its stream's WebRTC session; the answer
    /// comes back as [`MediaEvent::Renegotiated`] (at once, with an error, when
    /// the stream is gone).
    pub fn renegotiate(&mut self, call: u64, index: usize, offer: String) {
        let control = self.calls.get(&call).and_then(|c| c.streams.get(&index)).map(|(control, _)| control);
        if control.is_none_or(|control| control.send(Control::Renegotiate { offer }).is_err()) {
            let answer = Err("the call's browser stream is gone".to_string());
            let _ = self.events.send(MediaEvent::Renegotiated { call, answer });
        }
    }

    pub fn peer(&mut self, call: u64, index: usize, side: Side, peer: MediaPeer) {
        if let Some((control, _)) = self.calls.get(&call).and_then(|c| c.streams.get(&index)) {
            let _ = control.send(Control::Peer { side, peer });
        }
    }

    /// Whether `toward` takes DTMF as SIP INFO (a trunk with `dtmf = "info"`): the other
    /// side's telephone events on plain streams are then reported, not relayed. Given before
    /// the streams open, and again when the call fails over to another trunk.
    pub fn dtmf_mode(&mut self, call: u64, toward: Side, info: bool) {
        let entry = self.calls.entry(call).or_insert_with(CallMedia::new);
        entry.dtmf_info[side_index(toward)] = info;
        for (control, _) in entry.streams.values() {
            let _ = control.send(Control::DtmfMode { toward, info });
        }
    }

    pub fn close(&mut self, call: u64) {
        if let Some(media) = self.calls.remove(&call) {
            for (_, (_, task)) in media.streams {
                task.abort();
            }
        }
    }

    pub fn close_all(&mut self) {
        let calls: Vec<u64> = self.calls.keys().copied().collect();
        for call in calls {
            self.close(call);
        }
    }
}

/// Where RTCP goes when its own source has not been seen: the RTP destination's next port.
fn rtcp_destination(rtcp: &Latch, rtp: &Latch) -> Option<SocketAddr> {
    rtcp.destination().or_else(|| rtp.destination().map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1))))
}

/// One side of a plain stream: the box's sockets facing it, where it is, what it sends.
struct PlainSide {
    side: Side,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    latch: Latch,
    rtcp_latch: Latch,
    reception: Reception,
    keys: KeyReporter,
    /// Keys this side sends as audio tones, heard while the other side takes SIP INFO.
    inband: Option<InbandKeys>,
}

/// Datagrams read from one socket per wakeup at most: a busy socket cannot starve the others.
const BURST: usize = 32;

/// What every packet of a plain stream reports to.
struct StreamContext<'a> {
    counters: &'a Counters,
    events: &'a mpsc::UnboundedSender<MediaEvent>,
    call: u64,
    /// Listen for keys sent as audio tones (`media.inband_dtmf`).
    inband_dtmf: bool,
}

impl PlainSide {
    fn new(side: Side, rtp: UdpSocket, rtcp: UdpSocket) -> PlainSide {
        PlainSide {
            side,
            rtp,
            rtcp,
            latch: Latch::new(),
            rtcp_latch: Latch::new(),
            reception: Reception::new(side, false, false),
            keys: KeyReporter::default(),
            inband: None,
        }
    }

    /// Where RTP for this side goes: the box's socket facing it and its address once known.
    fn rtp_out(&self) -> (&UdpSocket, Option<SocketAddr>) {
        (&self.rtp, self.latch.destination())
    }

    /// Where RTCP for this side goes.
    fn rtcp_out(&self) -> (&UdpSocket, Option<SocketAddr>) {
        (&self.rtcp, rtcp_destination(&self.rtcp_latch, &self.latch))
    }

    fn signal(&mut self, peer: MediaPeer) {
        self.latch.signal(peer.destination, peer.signalling);
        self.rtcp_latch.signal(peer.rtcp_destination(), peer.signalling);
        self.reception.formats = peer.formats;
    }

    /// The RTP waiting from this side, relayed to `other` — every datagram already there (up to
    /// [`BURST`]), read without waiting: one wakeup serves a burst, and no read is tried on an
    /// idle socket.
    /// `other_takes_info`: the other side wants DTMF as SIP INFO (this side's events are reported).
    /// (The other side comes as its socket and address, not as a whole: its key listener
    /// holds codec state that must not be shared across the await.)
    async fn relay_rtp(
        &mut self,
        (other_rtp, other_destination): (&UdpSocket, Option<SocketAddr>),
        other_takes_info: bool,
        buf: &mut [u8],
        context: &StreamContext<'_>,
    ) {
        for _ in 0..BURST {
            let Ok((len, source)) = self.rtp.try_recv_from(buf) else { return };
            let now = Instant::now();
            // Latched even while the other side is unknown: its answer may come any moment.
            let accepted = self.latch.accept(now, source);
            let Some(to) = other_destination.filter(|_| accepted) else { continue };
            let packet = &buf[..len];
            if let (false, Ok(header)) = (is_rtcp(packet), parse_rtp(packet)) {
                self.reception.received(now, &header, context.counters);
                if other_takes_info && let Some(clock) = self.reception.event_clock(header.payload_type) {
                    context.counters.touch();
                    if let Some(key) = key_event(&mut self.keys, packet, &header, clock, context.call, self.side) {
                        let _ = context.events.send(key);
                    }
                    continue;
                }
                if other_takes_info && context.inband_dtmf {
                    self.listen_for_keys(packet, &header, context);
                }
            }
            context.counters.touch();
            let counter = if self.side == Side::A { &context.counters.a_to_b } else { &context.counters.b_to_a };
            counter.fetch_add(1, Ordering::Relaxed);
            branchgate_streams::send_datagram(other_rtp, packet, to).await;
        }
    }

    /// Listens to a voice packet for keys sent as tones; a key heard goes to the B2BUA (as a
    /// telephone event would). The packet itself is relayed unchanged.
    fn listen_for_keys(&mut self, packet: &[u8], header: &RtpHeader, context: &StreamContext<'_>) {
        let Some(codec) =
            self.reception.format(header.payload_type).and_then(|f| Codec::from_rtpmap(&f.name, f.clock_rate))
        else {
            return;
        };
        if self.inband.as_ref().is_none_or(|k| k.codec() != codec) {
            self.inband = InbandKeys::new(codec).ok();
        }
        if let (Some(keys), Ok(payload)) = (self.inband.as_mut(), rtp_payload(packet))
            && let Some((event, duration_ms)) = keys.listen(payload)
        {
            let _ = context.events.send(MediaEvent::Dtmf { call: context.call, from: self.side, event, duration_ms });
        }
    }

    /// The RTCP waiting from this side, relayed to `other`.
    async fn relay_rtcp(
        &mut self,
        (other_rtcp, other_destination): (&UdpSocket, Option<SocketAddr>),
        buf: &mut [u8],
        context: &StreamContext<'_>,
    ) {
        for _ in 0..BURST {
            let Ok((len, source)) = self.rtcp.try_recv_from(buf) else { return };
            if self.rtcp_latch.accept(Instant::now(), source)
                && let Some(to) = other_destination
            {
                context.counters.touch();
                branchgate_streams::send_datagram(other_rtcp, &buf[..len], to).await;
            }
        }
    }
}

async fn relay_stream(
    sockets: [UdpSocket; 4],
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<MediaEvent>,
    call: u64,
    settings: RelaySettings,
    mut dtmf_info: [bool; 2],
) {
    let [a_rtp, a_rtcp, b_rtp, b_rtcp] = sockets;
    let (mut a, mut b) = (PlainSide::new(Side::A, a_rtp, a_rtcp), PlainSide::new(Side::B, b_rtp, b_rtcp));
    let timeout = settings.timeout;
    let context = StreamContext { counters: &counters, events: &events, call, inband_dtmf: settings.inband_dtmf };
    let mut buf = [0u8; 2048];
    let mut reported = false;
    let mut check = tokio::time::interval((timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(5)));
    loop {
        // Readiness, then non-blocking reads: polling a `recv_from` on each of the four sockets
        // at every wakeup cost a failed read on the idle ones.
        tokio::select! {
            Ok(()) = a.rtp.readable() => a.relay_rtp(b.rtp_out(), dtmf_info[1], &mut buf, &context).await,
            Ok(()) = b.rtp.readable() => b.relay_rtp(a.rtp_out(), dtmf_info[0], &mut buf, &context).await,
            Ok(()) = a.rtcp.readable() => a.relay_rtcp(b.rtcp_out(), &mut buf, &context).await,
            Ok(()) = b.rtcp.readable() => b.relay_rtcp(a.rtcp_out(), &mut buf, &context).await,
            command = control.recv() => match command {
                Some(Control::Peer { side: Side::A, peer }) => a.signal(peer),
                Some(Control::Peer { side: Side::B, peer }) => b.signal(peer),
                Some(Control::DtmfMode { toward, info }) => dtmf_info[side_index(toward)] = info,
                // Plain streams pass the callers' own events; the B2BUA relays INFO there.
                Some(Control::Dtmf { .. }) => {}
                Some(Control::Renegotiate { .. }) => {
                    let answer = Err("a plain stream has no WebRTC session".to_string());
                    let _ = events.send(MediaEvent::Renegotiated { call, answer });
                }
                None => return,
            },
            _ = check.tick() => {
                // The call's liveness, not this stream's: a declined or held stream is quiet.
                if counters.idle(timeout) && !reported {
                    let _ = events.send(MediaEvent::Timeout(call));
                    reported = true;
                }
            }
        }
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// Telephone events taken out of a stream for a side that takes DTMF as SIP INFO:
/// one report per key, at its end (sent three times, RFC 4733 §2.5.1.4).
#[derive(Debug, Default)]
struct KeyReporter {
    /// The timestamp of the last key reported.
    last: Option<u32>,
}

impl KeyReporter {
    /// The key and its duration in ms, once per key; `clock` is the events' RTP clock.
    fn report(&mut self, payload: &[u8], timestamp: u32, clock: u32) -> Option<(u8, u32)> {
        let event = TelephoneEvent::parse(payload)?;
        if !event.end || self.last == Some(timestamp) {
            return None;
        }
        self.last = Some(timestamp);
        Some((event.event, u32::from(event.duration) * 1000 / clock.max(1)))
    }
}

/// How often a relay publishes its reception statistics (a per-packet lock would cost
/// more than the rest of the forwarding).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Reception statistics of what one side sends, published to the call's counters.
#[derive(Debug)]
struct Reception {
    side: Side,
    stats: ReceptionStats,
    /// The side's payload formats (from its SDP).
    formats: Vec<RtpMap>,
    /// The payload type of the side's last voice packet.
    payload_type: Option<u8>,
    webrtc: bool,
    transcoded: bool,
    published: Option<Instant>,
}

impl Reception {
    fn new(side: Side, webrtc: bool, transcoded: bool) -> Reception {
        Reception {
            side,
            stats: ReceptionStats::default(),
            formats: Vec::new(),
            payload_type: None,
            webrtc,
            transcoded,
            published: None,
        }
    }

    fn format(&self, payload_type: u8) -> Option<&RtpMap> {
        self.formats.iter().find(|f| f.payload_type == payload_type)
    }

    /// The clock of `payload_type` when it is this side's telephone events.
    fn event_clock(&self, payload_type: u8) -> Option<u32> {
        self.format(payload_type).filter(|f| f.name.eq_ignore_ascii_case("telephone-event")).map(|f| f.clock_rate)
    }

    /// A packet from this side (telephone events count for loss, not for the codec).
    fn received(&mut self, now: Instant, header: &RtpHeader, counters: &Counters) {
        let format = self.format(header.payload_type);
        let clock = format.map_or(8000, |f| f.clock_rate);
        if !format.is_some_and(|f| f.name.eq_ignore_ascii_case("telephone-event")) {
            self.payload_type = Some(header.payload_type);
        }
        self.stats.received(now, header.ssrc, header.sequence, header.timestamp, clock);
        if self.published.is_none_or(|at| now.saturating_duration_since(at) >= PUBLISH_EVERY) {
            self.published = Some(now);
            counters.publish(self.side, self.snapshot());
        }
    }

    fn snapshot(&self) -> LegQuality {
        let quality = self.stats.quality();
        let codec = match self.payload_type {
            Some(pt) => self.format(pt).map_or_else(|| format!("PT {pt}"), |f| f.name.clone()),
            None => String::new(),
        };
        LegQuality {
            mos: branchgate_rtp::mos(&codec, &quality),
            codec,
            webrtc: self.webrtc,
            transcoded: self.transcoded,
            packets: quality.packets,
            lost: quality.lost,
            loss_percent: (quality.loss_percent * 100.0).round() / 100.0,
            jitter_ms: (quality.jitter_ms * 10.0).round() / 10.0,
        }
    }
}

/// A telephone event from `from` on a plain stream whose other side takes SIP INFO: not
/// relayed; the key, once (at its end), for the B2BUA to send as INFO.
fn key_event(
    keys: &mut KeyReporter,
    packet: &[u8],
    header: &RtpHeader,
    clock: u32,
    call: u64,
    from: Side,
) -> Option<MediaEvent> {
    let (event, duration_ms) = keys.report(rtp_payload(packet).ok()?, header.timestamp, clock)?;
    Some(MediaEvent::Dtmf { call, from, event, duration_ms })
}

/// Packets of the box's own DTMF waiting to be sent on one stream: 32 keys (7 packets each).
/// SIP INFOs arrive faster than keys play out; beyond this they are dropped, not queued.
const MAX_QUEUED_DTMF_PACKETS: usize = 32 * 7;

/// Silence between two keys the box sends back to back.
const DTMF_GAP: Duration = Duration::from_millis(60);

/// Sends one RTP packet to a plain SIP side under the box's SSRC.
async fn send_plain(socket: &UdpSocket, packet: &mut Vec<u8>, ssrc: u32, rtp: &Rtp, to: SocketAddr) {
    let header = RtpHeader {
        payload_type: rtp.payload_type,
        marker: rtp.marker,
        sequence: rtp.sequence,
        timestamp: rtp.timestamp,
        ssrc,
    };
    build_rtp(&header, &rtp.payload, packet);
    let _ = socket.send_to(packet, to).await;
}

struct BrowserSockets {
    browser: UdpSocket,
    sip_rtp: UdpSocket,
    sip_rtcp: UdpSocket,
}

/// Packetisation of transcoded voice, both ways (what `a=ptime` says the box sends).
const PTIME_MS: u32 = 20;

/// What a packet crossing between the legs carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    Voice,
    /// An RFC 4733 telephone event.
    Event,
    /// Voice already in the other leg's codec on a transcoded call.
    Direct,
}

/// What crosses one way between a browser and a SIP leg: packets as they
/// are with the payload type renumbered, or, on a transcoded call, voice
/// re-encoded and telephone events moved to the other leg's clock, under
/// the box's own sequence numbers.
struct Crossing {
    transcoder: Option<Transcoder>,
    /// Added to the sequence numbers of packets passed through: the box's own
    /// packets in between (DTMF it sends) shift the rest.
    offset: u16,
    /// The newest sequence number sent.
    /// (None until the first packet: the first one sets it, whatever its number.)
    last_sequence: Option<u16>,
    /// The timestamp of the newest voice sent (where the box's own events start).
    last_timestamp: u32,
    /// The timestamp every packet of the event the box is sending carries (RFC 4733 §2.5.1.2).
    event_timestamp: u32,
    /// The SSRC of the packets crossing: another one (a PBX transferring the call or
    /// restarting its media) continues the box's sequence instead of jumping it.
    source: Option<u32>,
    frames: Vec<Frame>,
}

impl Crossing {
    fn new(transcoder: Option<Transcoder>) -> Crossing {
        Crossing {
            transcoder,
            offset: rand::random(),
            last_sequence: None,
            last_timestamp: 0,
            event_timestamp: 0,
            source: None,
            frames: Vec::new(),
        }
    }

    fn next_sequence(&mut self) -> u16 {
        let next = self.last_sequence.map_or_else(rand::random, |last| last.wrapping_add(1));
        self.last_sequence = Some(next);
        next
    }

    /// A packet passed through keeps its place in the sequence (gaps and reordering show).
    fn passed_sequence(&mut self, sequence: u16) -> u16 {
        let shifted = sequence.wrapping_add(self.offset);
        if self.last_sequence.is_none_or(|last| (shifted.wrapping_sub(last) as i16) > 0) {
            self.last_sequence = Some(shifted);
        }
        shifted
    }

    /// One of the box's own packets (a DTMF event; `marker` on its first), between the ones passed.
    fn own(&mut self, payload_type: u8, marker: bool, payload: &[u8]) -> Rtp {
        if marker {
            self.event_timestamp = self.last_timestamp;
        }
        self.offset = self.offset.wrapping_add(1);
        let sequence = self.next_sequence();
        Rtp {
            ssrc: self.source.unwrap_or_default(),
            payload_type,
            sequence,
            timestamp: self.event_timestamp,
            marker,
            payload: bytes::Bytes::copy_from_slice(payload),
        }
    }

    /// `rtp` for the other leg, where it is `payload_type`; what to send is
    /// appended to `out`.
    fn cross(&mut self, mut rtp: Rtp, payload_type: u8, kind: Payload, out: &mut Vec<Rtp>) {
        if self.source.is_some_and(|source| source != rtp.ssrc)
            && let Some(last) = self.last_sequence
        {
            // Passed packets of the new source follow the last one sent, marked as a new talkspurt.
            self.offset = last.wrapping_add(1).wrapping_sub(rtp.sequence);
            rtp.marker = true;
        }
        self.source = Some(rtp.ssrc);
        if kind != Payload::Event {
            self.last_timestamp = rtp.timestamp;
        }
        let Some(transcoder) = self.transcoder.as_mut() else {
            let sequence = self.passed_sequence(rtp.sequence);
            out.push(Rtp { payload_type, sequence, ..rtp });
            return;
        };
        if kind == Payload::Direct {
            // Already the other leg's codec: only the sequence is the box's.
            let sequence = self.next_sequence();
            out.push(Rtp { payload_type, sequence, ..rtp });
            return;
        }
        if kind == Payload::Event {
            let timeline = transcoder.timeline();
            let timestamp = timeline.map(rtp.timestamp);
            let mut payload = rtp.payload.to_vec();
            if let Some(mut event) = TelephoneEvent::parse(&payload) {
                event.duration = timeline.scale(u32::from(event.duration)) as u16;
                payload[..4].copy_from_slice(&event.to_bytes());
            }
            let sequence = self.next_sequence();
            out.push(Rtp {
                ssrc: rtp.ssrc,
                payload_type,
                sequence,
                timestamp,
                marker: rtp.marker,
                payload: payload.into(),
            });
            return;
        }
        self.frames.clear();
        if let Err(e) = transcoder.push(rtp.ssrc, rtp.sequence, rtp.timestamp, &rtp.payload, &mut self.frames) {
            tracing::debug!(error = %e, "undecodable voice packet dropped");
            return;
        }
        let mut frames = std::mem::take(&mut self.frames);
        for frame in frames.drain(..) {
            let sequence = self.next_sequence();
            self.last_timestamp = frame.timestamp;
            out.push(Rtp {
                ssrc: rtp.ssrc,
                payload_type,
                sequence,
                timestamp: frame.timestamp,
                marker: frame.marker,
                payload: frame.payload.into(),
            });
        }
        self.frames = frames;
    }
}

struct BrowserStream {
    leg: Box<WebRtcLeg>,
    payloads: PayloadMap,
    /// The SIP side's packets (voice and events: one sequence) put back in order before
    /// transcoding; `None` when the stream is passed through.
    sip_jitter: Option<JitterBuffer<(Rtp, u8, Payload)>>,
    from_browser: Reception,
    from_sip: Reception,
    to_sip: Crossing,
    to_browser: Crossing,
    browser_side: Side,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<MediaEvent>,
    call: u64,
    timeout: Duration,
    /// The other side takes DTMF as SIP INFO: the browser's events are reported, not relayed.
    dtmf_as_info: bool,
    /// The browser's keys reported for SIP INFO.
    keys: KeyReporter,
    /// The box's own DTMF packets to the SIP side, with when each is due.
    injected: VecDeque<(Instant, u8, bool, [u8; 4])>,
}

impl BrowserStream {
    /// A browser's telephone event, reported once per key (at its end) for
    /// the B2BUA to send as SIP INFO.
    fn report_event(&mut self, rtp: &Rtp) {
        let clock = self.payloads.browser_event_clock();
        if let Some((event, duration_ms)) = self.keys.report(&rtp.payload, rtp.timestamp, clock) {
            let _ = self.events.send(MediaEvent::Dtmf { call: self.call, from: self.browser_side, event, duration_ms });
        }
    }

    /// What is ready for the browser: the packets crossed, and those the jitter buffer lets go.
    fn send_to_browser(&mut self, crossing: &mut Vec<Rtp>) {
        let now = Instant::now();
        while let Some((rtp, payload_type, kind)) = self.sip_jitter.as_mut().and_then(|jitter| jitter.pop(now)) {
            self.to_browser.cross(rtp, payload_type, kind, crossing);
        }
        for rtp in crossing.drain(..) {
            if let Err(e) = self.leg.send_rtp(now, rtp) {
                tracing::debug!(call = self.call, error = %e, "RTP not sent to the browser");
            }
        }
    }

    /// Counts one packet from the browser (`true`) or to it.
    fn count(&self, from_browser: bool) {
        self.counters.touch();
        let a_to_b = from_browser == (self.browser_side == Side::A);
        let counter = if a_to_b { &self.counters.a_to_b } else { &self.counters.b_to_a };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One browser stream: the WebRTC session on one socket, the SIP side's
/// plain RTP on two. RTP crosses with its payload type renumbered and the
/// box's own SSRC towards the SIP side; RTCP does not cross (each leg gets
/// the box's own reports from its end).
async fn relay_browser_stream(
    sockets: BrowserSockets,
    mut stream: BrowserStream,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let BrowserSockets { browser, sip_rtp, sip_rtcp } = sockets;
    let (mut sip_latch, mut sip_rtcp_latch) = (Latch::new(), Latch::new());
    let sip_ssrc: u32 = rand::random();
    let (mut buf_browser, mut buf_sip, mut buf_rtcp) = ([0u8; 2048], [0u8; 2048], [0u8; 1500]);
    let mut packet = Vec::with_capacity(1500);
    let mut crossing: Vec<Rtp> = Vec::with_capacity(4);
    let mut reported = false;
    let mut check = tokio::time::interval((stream.timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(5)));
    loop {
        while let Some((to, data)) = stream.leg.poll_transmit() {
            let _ = browser.send_to(&data, to).await;
        }
        while let Some(rtp) = stream.leg.poll_rtp() {
            let header = RtpHeader {
                payload_type: rtp.payload_type,
                marker: rtp.marker,
                sequence: rtp.sequence,
                timestamp: rtp.timestamp,
                ssrc: rtp.ssrc,
            };
            stream.from_browser.received(Instant::now(), &header, &stream.counters);
            let (Some(payload_type), Some(to)) = (stream.payloads.to_sip(rtp.payload_type), sip_latch.destination())
            else {
                continue;
            };
            let kind = if stream.payloads.dtmf.is_some_and(|d| d.browser == rtp.payload_type) {
                Payload::Event
            } else if stream.payloads.transcodes_from_browser(rtp.payload_type) {
                Payload::Voice
            } else {
                Payload::Direct
            };
            stream.count(true);
            if kind == Payload::Event && stream.dtmf_as_info {
                stream.report_event(&rtp);
                continue;
            }
            // While the box sends a key of its own, the voice it would interleave is left out
            // (RFC 4733 §2.5.1.1, as browsers do): receivers play one packet per frame from
            // their jitter buffers, and the extra packets would back them up until they flush.
            if kind != Payload::Event && !stream.injected.is_empty() {
                continue;
            }
            stream.to_sip.cross(rtp, payload_type, kind, &mut crossing);
            for rtp in crossing.drain(..) {
                send_plain(&sip_rtp, &mut packet, sip_ssrc, &rtp, to).await;
            }
        }
        // The box's own DTMF packets that are due (a SIP INFO from the browser, as RFC 4733).
        let now = Instant::now();
        while let Some(&(due, payload_type, marker, payload)) = stream.injected.front() {
            if due > now {
                break;
            }
            stream.injected.pop_front();
            let rtp = stream.to_sip.own(payload_type, marker, &payload);
            if let Some(to) = sip_latch.destination() {
                send_plain(&sip_rtp, &mut packet, sip_ssrc, &rtp, to).await;
            }
        }
        if matches!(stream.leg.state(), LegState::Failed | LegState::Closed) && !reported {
            // The browser is gone (ICE consent lost or DTLS failed): the call has no media.
            let _ = stream.events.send(MediaEvent::Timeout(stream.call));
            reported = true;
        }
        let wake = stream.leg.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let wake = stream.injected.front().map_or(wake, |(due, ..)| wake.min(*due));
        let wake = stream.sip_jitter.as_ref().and_then(JitterBuffer::deadline).map_or(wake, |due| wake.min(due));
        tokio::select! {
            received = browser.recv_from(&mut buf_browser) => {
                let Ok((len, source)) = received else { continue };
                stream.leg.handle_datagram(Instant::now(), source, &buf_browser[..len]);
            }
            received = sip_rtp.recv_from(&mut buf_sip) => {
                let Ok((len, source)) = received else { continue };
                let data = &buf_sip[..len];
                if !sip_latch.accept(Instant::now(), source) || is_rtcp(data) {
                    continue;
                }
                let (Ok(header), Ok(payload)) = (parse_rtp(data), rtp_payload(data)) else { continue };
                stream.from_sip.received(Instant::now(), &header, &stream.counters);
                let Some(payload_type) = stream.payloads.to_browser(header.payload_type) else { continue };
                let rtp = Rtp {
                    ssrc: header.ssrc,
                    payload_type: header.payload_type,
                    sequence: header.sequence,
                    timestamp: header.timestamp,
                    marker: header.marker,
                    payload: bytes::Bytes::copy_from_slice(payload),
                };
                let kind = if stream.payloads.dtmf.is_some_and(|d| d.sip == header.payload_type) {
                    Payload::Event
                } else {
                    Payload::Voice
                };
                stream.count(false);
                match stream.sip_jitter.as_mut() {
                    Some(jitter) => jitter.push(Instant::now(), header.ssrc, header.sequence, (rtp, payload_type, kind)),
                    None => stream.to_browser.cross(rtp, payload_type, kind, &mut crossing),
                }
                stream.send_to_browser(&mut crossing);
            }
            received = sip_rtcp.recv_from(&mut buf_rtcp) => {
                let Ok((_, source)) = received else { continue };
                if sip_rtcp_latch.accept(Instant::now(), source) {
                    stream.counters.touch();
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                stream.leg.handle_timeout(Instant::now());
                stream.send_to_browser(&mut crossing);
            }
            command = control.recv() => match command {
                Some(Control::Peer { side, peer }) if side != stream.browser_side => {
                    sip_latch.signal(peer.destination, peer.signalling);
                    sip_rtcp_latch.signal(peer.rtcp_destination(), peer.signalling);
                    if stream.payloads.transcode.is_none() {
                        // Passed through: the browser sends the SIP side's codecs under its own numbers.
                        stream.from_browser.formats = peer
                            .formats
                            .iter()
                            .filter_map(|f| {
                                let browser = stream.payloads.to_browser(f.payload_type)?;
                                Some(RtpMap { payload_type: browser, ..f.clone() })
                            })
                            .collect();
                    }
                    stream.from_sip.formats = peer.formats;
                }
                Some(Control::Peer { .. }) => {}
                Some(Control::Dtmf { toward, event, duration_ms }) if toward != stream.browser_side => {
                    // The SIP side's telephone events are always 8 kHz (see `webrtc::is_dtmf`).
                    if stream.injected.len() >= MAX_QUEUED_DTMF_PACKETS {
                        tracing::info!(call = stream.call, "DTMF key dropped: too many keys queued (INFO flood?)");
                    } else if let Some(dtmf) = stream.payloads.dtmf {
                        let start = stream.injected.back().map_or_else(Instant::now, |(due, ..)| *due + DTMF_GAP);
                        for (after, marker, payload) in telephone_event_packets(event, duration_ms, 8000) {
                            stream.injected.push_back((start + after, dtmf.sip, marker, payload));
                        }
                    }
                }
                Some(Control::Dtmf { .. }) => {}
                // A browser stream's DTMF mode is fixed when it opens (`dtmf_as_info`).
                Some(Control::DtmfMode { .. }) => {}
                Some(Control::Renegotiate { offer }) => {
                    let answer = stream.leg.renegotiate(Instant::now(), &offer).map_err(|e| e.to_string());
                    if let Err(e) = &answer {
                        tracing::info!(call = stream.call, error = %e, "browser's new offer refused");
                    }
                    let _ = stream.events.send(MediaEvent::Renegotiated { call: stream.call, answer });
                }
                None => return,
            },
            _ = check.tick() => {
                if stream.counters.idle(stream.timeout) && !reported {
                    let _ = stream.events.send(MediaEvent::Timeout(stream.call));
                    reported = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty PCMU packet of `ssrc` with `sequence`.
    fn packet(ssrc: u32, sequence: u16) -> Rtp {
        Rtp { ssrc, payload_type: 0, sequence, timestamp: 0, marker: false, payload: bytes::Bytes::new() }
    }

    #[test]
    fn the_boxs_own_packets_follow_the_passed_ones_whatever_their_numbers() {
        for first in [0u16, 1000, 32768, 40000, 65535] {
            let mut crossing = Crossing::new(None);
            let rtp = |sequence| packet(7, sequence);
            let mut out = Vec::new();
            crossing.cross(rtp(first), 0, Payload::Voice, &mut out);
            let own = crossing.own(101, true, &[1, 10, 0, 0]);
            crossing.cross(rtp(first.wrapping_add(1)), 0, Payload::Voice, &mut out);
            assert_eq!(own.sequence, out[0].sequence.wrapping_add(1), "first {first}");
            assert_eq!(out[1].sequence, own.sequence.wrapping_add(1), "first {first}");
        }
    }

    #[test]
    fn a_new_source_passed_through_continues_the_sequence() {
        let mut crossing = Crossing::new(None);
        let rtp = packet;
        let mut out = Vec::new();
        crossing.cross(rtp(1, 5000), 0, Payload::Voice, &mut out);
        crossing.cross(rtp(1, 5001), 0, Payload::Voice, &mut out);
        crossing.cross(rtp(2, 17), 0, Payload::Voice, &mut out);
        crossing.cross(rtp(2, 18), 0, Payload::Voice, &mut out);
        let sequences: Vec<u16> = out.iter().map(|r| r.sequence.wrapping_sub(out[0].sequence)).collect();
        assert_eq!(sequences, [0, 1, 2, 3]);
        assert!(out[2].marker && !out[3].marker);
    }
}
