//! The B2BUA, sans-IO: every call is two SIP dialogs (leg A towards the
//! caller, leg B towards the callee) joined by the box. Nothing of one leg's
//! SIP reaches the other except what is rebuilt here (topology hiding:
//! new Call-ID, tags, Via, Contact; SDP addresses replaced by the box's
//! relay), and media is anchored on relay ports the driver opens on request.
//!
//! Driven like the other protocol cores: [`B2bua::handle_input`] with each
//! SIP message, [`B2bua::handle_timeout`] at [`B2bua::poll_timeout`],
//! [`B2bua::handle_media_timeout`] when the relay reports a dead call; SIP
//! to send comes out of [`B2bua::poll_output`], media and call records out
//! of [`B2bua::poll_action`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use branchgate_sdp::{Direction, RtpMap, SessionDescription};
use branchgate_sip::message::param;
use branchgate_sip::server::{Binding, uri_of, user_of, with_warning};
use branchgate_sip::transaction::{ClientKey, ServerKey};
use branchgate_sip::{Flow, Incoming, Message, Output, Server, StartLine, Transport};
use branchgate_webrtc::WebRtcLeg;

use crate::webrtc::{self, CodecPreferences, PayloadMap};

/// A trunk as the core uses it (its host already resolved by the driver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkTarget {
    pub name: String,
    pub addr: SocketAddr,
    pub transport: Transport,
    pub priority: u32,
    /// OPTIONS keepalive interval; `None`: never probed, always taken as up.
    pub keepalive: Option<Duration>,
    /// Digest credentials the trunk challenges the box for (username, password).
    pub credentials: Option<(String, String)>,
    /// Register to the trunk with the credentials.
    pub register: bool,
    /// DTMF reaches the trunk as SIP INFO (`sip.trunks[].dtmf = "info"`), not RFC 4733.
    pub dtmf_info: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub prefix: String,
    pub strip: usize,
    pub trunk: String,
}

#[derive(Clone, Debug)]
pub struct CallConfig {
    pub domain: String,
    pub trunks: Vec<TrunkTarget>,
    pub routes: Vec<RouteRule>,
    pub emergency_numbers: Vec<String>,
    /// The box's address in SIP and SDP towards peers that are not on loopback.
    pub advertise_ip: IpAddr,
    /// `media.public_ip` and `media.local_networks`: behind a one-to-one NAT, peers outside
    /// the local networks get the NAT's public address instead of `advertise_ip`.
    pub public_ip: Option<IpAddr>,
    pub local_networks: Vec<branchgate_config::IpNet>,
    /// The port SIP listens on (Via and Contact of requests the box sends).
    pub sip_port: u16,
    /// First and last port of the media relay range.
    pub rtp_ports: (u16, u16),
    /// Without any answer from a callee (or a trunk's keepalive) in this time
    /// the next target is tried (the trunk is marked down).
    pub failover_after: Duration,
    /// `media.codecs`: codec order for offers, and which codecs may be used.
    pub codecs: Vec<String>,
    /// `media.max_transcoded_calls`: calls transcoded at once, at most.
    pub max_transcoded: usize,
}

impl CallConfig {
    pub fn new(domain: impl Into<String>) -> Self {
        CallConfig {
            domain: domain.into(),
            trunks: Vec::new(),
            routes: Vec::new(),
            emergency_numbers: Vec::new(),
            advertise_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            local_networks: Vec::new(),
            sip_port: 5060,
            rtp_ports: (20000, 29999),
            failover_after: Duration::from_secs(4),
            codecs: ["opus", "G722", "PCMU", "PCMA"].map(String::from).to_vec(),
            max_transcoded: 100,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    /// Where a per-side array keeps this side.
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    pub(crate) fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Relay ports of one media stream: the box's port facing each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPorts {
    pub a_port: u16,
    pub b_port: u16,
}

/// A browser's media session built by the core, handed over to the relay
/// that runs it (it has no meaningful equality: compared by identity).
#[derive(Debug)]
pub struct LegHandoff(pub Box<WebRtcLeg>);

impl PartialEq for LegHandoff {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(&*self.0, &*other.0)
    }
}

impl Eq for LegHandoff {}

/// What the driver does besides sending SIP.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Open relay sockets (RTP on the even port, RTCP on the next) for a new stream.
    OpenStream { call: u64, index: usize, ports: StreamPorts },
    /// Open a stream whose `side` is a browser: the box's WebRTC session on
    /// that side's port, plain RTP/RTCP on the other side's ports.
    /// `dtmf_as_info`: the other side takes DTMF as SIP INFO, so the browser's
    /// telephone events are reported ([`B2bua::handle_dtmf`]) instead of relayed.
    OpenWebRtc {
        call: u64,
        index: usize,
        ports: StreamPorts,
        side: Side,
        leg: LegHandoff,
        payloads: PayloadMap,
        dtmf_as_info: bool,
    },
    /// `toward` takes DTMF as SIP INFO (`info`), or as RFC 4733 events: the relays take the
    /// other side's events out of plain streams and report them (see `handle_dtmf`).
    DtmfMode { call: u64, toward: Side, info: bool },
    /// Send a DTMF key as RFC 4733 telephone events to `toward` on a stream
    /// (converted from a SIP INFO the other side sent).
    SendDtmf { call: u64, index: usize, toward: Side, event: u8, duration_ms: u32 },
    /// Where one side receives a stream, as its SDP and SIP say.
    Peer { call: u64, index: usize, side: Side, peer: MediaPeer },
    /// A browser's new offer (ICE restart) for the WebRTC session of a stream;
    /// its answer comes back through [`B2bua::handle_renegotiated`].
    Renegotiate { call: u64, index: usize, offer: String },
    /// Close every relay of the call.
    Close { call: u64 },
    /// The call's record, once it ended.
    Record(CallRecord),
}

/// Where one side of a stream is, as its SDP and SIP say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaPeer {
    /// The address its SDP announces for the stream (used until its media arrives and latches).
    pub destination: Option<SocketAddr>,
    /// Where that side's SIP comes from: media may come from and go to only there, or to a
    /// LAN address its SDP names (see [`branchgate_rtp::Latch`]).
    pub signalling: IpAddr,
    /// The payload formats its SDP names (call details: codec, and the clock for the jitter).
    pub formats: Vec<RtpMap>,
}

impl MediaPeer {
    /// The announced RTCP address: the RTP port + 1 (RFC 3550 §11).
    pub fn rtcp_destination(&self) -> Option<SocketAddr> {
        self.destination.map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1)))
    }
}

/// A call detail record (times relative: the driver stamps wall-clock time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub call: u64,
    pub caller: String,
    pub callee: String,
    /// Where leg B went: a user or a trunk's name.
    pub destination: String,
    /// From the INVITE to the end.
    pub total: Duration,
    /// From the answer to the end (zero when never answered).
    pub talk: Duration,
    pub answered: bool,
    /// Final SIP status of the setup (200 when answered).
    pub status: u16,
    /// Why it ended: "caller-bye", "callee-bye", "cancelled", "no-answer", "rejected", "media-timeout", ...
    pub cause: String,
}

/// A call as the admin UI lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    pub id: u64,
    pub caller: String,
    pub callee: String,
    pub destination: String,
    pub state: &'static str,
    pub age: Duration,
}

#[derive(Clone, Debug)]
enum Target {
    User { user: String, binding: Binding },
    Trunk { trunk: TrunkTarget, number: String },
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::User { user, .. } => user.clone(),
            Target::Trunk { trunk, .. } => trunk.name.clone(),
        }
    }
}

/// One SIP dialog of a call, as the box sees it.
#[derive(Clone, Debug)]
struct Leg {
    flow: Flow,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// The box's own URI in this dialog (From on leg B, To on leg A), without tag.
    local_uri: String,
    remote_uri: String,
    remote_target: String,
    local_cseq: u32,
    /// The CSeq of the box's last INVITE in this dialog: its ACK carries it (a PRACK in
    /// between advances `local_cseq`).
    invite_cseq: u32,
    /// The RSeq of the last reliable provisional response the box PRACKed (RFC 3262).
    prack_rseq: Option<u32>,
    /// Where the box says it is (Via, Contact, SDP).
    local_ip: IpAddr,
}

/// An in-dialog request passed from one leg to the other, waiting for its answer.
#[derive(Debug)]
struct Relay {
    origin: ServerKey,
    request: Message,
    /// The side the relayed request went to (the answer comes from there).
    to: Side,
    /// Its final answer went back already (a retransmitted 2xx is only ACKed again).
    answered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    /// Trying targets; leg B (if any) not answered.
    Setup,
    Answered,
    /// Cancelled by the caller; waiting for leg B's final answer to clean up.
    Cancelled,
}

#[derive(Debug)]
struct Call {
    state: CallState,
    a: Leg,
    a_invite: ServerKey,
    a_request: Message,
    b: Option<Leg>,
    b_invite: Option<ClientKey>,
    /// The INVITE sent on leg B (resent with credentials when the trunk challenges).
    b_request: Option<Message>,
    /// Credentials of the current target, and whether they were already sent.
    b_credentials: Option<(String, String)>,
    b_authenticated: bool,
    /// Leg B's 2xx carried an offer (late offer): its ACK waits for the caller's answer.
    b_ack_waits_for_answer: bool,
    /// A relayed offerless re-INVITE was answered with an offer by this side: its ACK
    /// waits for the asker's answer (the 2xx kept for the ACK's CSeq).
    relay_ack_waits: Option<(Side, Message)>,
    /// When the current attempt gives up if nothing at all came back.
    attempt_deadline: Option<Instant>,
    targets: VecDeque<Target>,
    destination: String,
    offer: Option<SessionDescription>,
    streams: Vec<StreamPorts>,
    caller: String,
    callee: String,
    /// The caller is a trunk (it may reach the box's users only).
    from_trunk: bool,
    /// A 3xx was followed already (once per call).
    redirected: bool,
    started: Instant,
    answered: Option<Instant>,
    last_status: u16,
    /// In-dialog requests relayed to the other leg, by the relayed request's transaction.
    relays: HashMap<ClientKey, Relay>,
    /// An INVITE server transaction (A's or a re-INVITE's) whose 2xx waits for an ACK.
    awaiting_ack: Vec<ServerKey>,
    browser: Option<BrowserMedia>,
    /// Per side (A, B): that side is a trunk taking DTMF as SIP INFO.
    dtmf_info: [bool; 2],
    /// The caller requires reliable provisional responses (`Require: 100rel`, RFC 3262).
    a_reliable: Option<ReliableProvisionals>,
}

/// The box's reliable provisional responses to a caller that requires them (RFC 3262 §3).
#[derive(Debug)]
struct ReliableProvisionals {
    /// The RSeq of the next one (the first is random, below 2^31).
    next_rseq: u32,
    /// The one sent and not PRACKed yet: retransmitted until it is.
    unacked: Option<Unacked>,
    /// Answers that wait for that PRACK: the latest provisional (one reliable provisional at a
    /// time) and a 2xx (not before the PRACK of a provisional with SDP).
    queued_provisional: Option<QueuedAnswer>,
    queued_final: Option<QueuedAnswer>,
}

#[derive(Debug)]
struct Unacked {
    rseq: u32,
    response: Message,
    has_sdp: bool,
    next_at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

#[derive(Debug)]
struct QueuedAnswer {
    code: u16,
    reason: String,
    body: Option<Vec<u8>>,
}

/// A call with a browser on one side: its media ends on the box.
#[derive(Debug)]
struct BrowserMedia {
    side: Side,
    /// The caller's offer as it came (a browser's, or the SIP caller's for a browser callee).
    offer: SessionDescription,
    /// The answer the caller got (again in a 2xx after an 18x with SDP).
    answer: Option<Vec<u8>>,
    /// For a browser callee: the box's session that offered, until the browser answers.
    offering: Option<Box<WebRtcLeg>>,
    /// The payload map the relay got, once the session went to it.
    payloads: Option<PayloadMap>,
    /// The browser's latest SDP (its offer, or its answer to the box's), for hold:
    /// a re-offer with the same ICE credentials and fingerprint only changes direction.
    remote: Option<SessionDescription>,
    /// The box's SDP as each side last got it, re-sent with another direction on hold/resume.
    to_browser: Option<Vec<u8>>,
    to_sip: Option<Vec<u8>>,
    /// The answer a browser's hold/resume gets once the SIP side took it.
    pending_answer: Option<Vec<u8>>,
    /// A browser's re-INVITE the box's WebRTC session is answering (ICE restart).
    renegotiating: Option<Renegotiation>,
}

/// A browser's re-INVITE waiting for its WebRTC session's answer.
#[derive(Debug)]
struct Renegotiation {
    key: ServerKey,
    request: Message,
    offer: SessionDescription,
}

impl BrowserMedia {
    fn new(side: Side, offer: SessionDescription) -> BrowserMedia {
        BrowserMedia {
            side,
            offer,
            answer: None,
            offering: None,
            payloads: None,
            remote: None,
            to_browser: None,
            to_sip: None,
            pending_answer: None,
            renegotiating: None,
        }
    }
}

/// Calls the box carries at once, and per user (a stolen password cannot take them all).
const MAX_CALLS: usize = 2000;
const MAX_CALLS_PER_USER: usize = 16;
/// Media streams (m-lines) per call: each takes two relay port pairs.
const MAX_STREAMS: usize = 8;

/// Headers passed from one leg to the other; everything else is rebuilt or dropped.
const PASSED_HEADERS: &[&str] = &["Subject", "Priority", "Alert-Info", "Accept-Language", "Date"];

/// SIP status codes after which the next target of a call is tried: the
/// target did not answer, failed, or (401/407 still after the box's
/// credentials) will not take calls from the box.
fn fails_over(code: u16) -> bool {
    matches!(code, 401 | 407 | 408) || (500..=599).contains(&code)
}

#[derive(Debug, Default)]
struct TrunkHealth {
    up: bool,
    probe: Option<(ClientKey, Instant)>,
    next_probe: Option<Instant>,
    registration: Option<TrunkRegistration>,
}

/// The box's registration at a trunk (RFC 3261 §10.2, as a client).
#[derive(Debug)]
struct TrunkRegistration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The REGISTER waiting for its answer, and whether it carried credentials.
    pending: Option<ClientKey>,
    authenticated: bool,
    registered_until: Option<Instant>,
    next_at: Instant,
}

/// Requested registration lifetime at trunks; refreshed at 80 % of what the trunk grants.
const TRUNK_REGISTER_EXPIRES: u32 = 3600;
/// Wait before registering again after a failure.
const TRUNK_REGISTER_RETRY: Duration = Duration::from_secs(30);

/// A trunk's state as the admin UI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkState {
    /// Answers OPTIONS keepalives (or is not probed).
    pub up: bool,
    /// `None` when the box does not register there.
    pub registered: Option<bool>,
}

/// Even ports of the relay range, handed out in turn.
#[derive(Debug)]
struct PortPool {
    first: u16,
    last: u16,
    next: u16,
    used: HashSet<u16>,
}

impl PortPool {
    fn new((first, last): (u16, u16)) -> Self {
        let first = first + first % 2;
        PortPool { first, last, next: first, used: HashSet::new() }
    }

    /// Starts handing out ports at a random place (ports in order are easy to guess).
    fn shuffle(&mut self, random: &mut rand::rngs::StdRng) {
        use rand::Rng;
        let pairs = (self.last.saturating_sub(self.first) / 2).max(1);
        self.next = self.first + 2 * random.gen_range(0..pairs);
    }

    /// An even port whose next port is free too (RTP + RTCP).
    fn allocate(&mut self) -> Option<u16> {
        let count = usize::from(self.last.saturating_sub(self.first) / 2);
        for _ in 0..count {
            let port = self.next;
            self.next = if port.saturating_add(3) > self.last { self.first } else { port + 2 };
            if port.checked_add(1).is_some_and(|p| p <= self.last) && self.used.insert(port) {
                return Some(port);
            }
        }
        None
    }

    fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

#[derive(Debug)]
pub struct B2bua {
    sip: Server,
    config: CallConfig,
    calls: HashMap<u64, Call>,
    next_call: u64,
    /// Both legs' Call-IDs to their call.
    dialogs: HashMap<String, (u64, Side)>,
    /// Requests the box sent, to the call they belong to.
    sent: HashMap<ClientKey, u64>,
    trunks: HashMap<String, TrunkHealth>,
    ports: PortPool,
    actions: VecDeque<Action>,
    /// SIP messages for the network, once those for the box itself ([`Transport::Loop`]) are
    /// taken out and delivered.
    outbox: VecDeque<Output>,
    /// The time of the latest input: internal deliveries happen at it.
    now: Instant,
    /// Tags, branches, Call-IDs and relay ports come from here: unpredictable
    /// (ChaCha seeded by the driver), so nobody off the path can forge answers or media.
    random: rand::rngs::StdRng,
    /// Calls set up since start (Prometheus derives calls per second from it).
    pub calls_started: u64,
}

impl B2bua {
    pub fn new(sip: Server, config: CallConfig, seed: [u8; 32], now: Instant) -> Self {
        use rand::SeedableRng;
        let mut random = rand::rngs::StdRng::from_seed(seed);
        let mut ports = PortPool::new(config.rtp_ports);
        ports.shuffle(&mut random);
        let mut b2bua = B2bua {
            sip,
            config: CallConfig::new(""),
            calls: HashMap::new(),
            next_call: 1,
            dialogs: HashMap::new(),
            sent: HashMap::new(),
            trunks: HashMap::new(),
            ports,
            actions: VecDeque::new(),
            outbox: VecDeque::new(),
            now,
            random,
            calls_started: 0,
        };
        b2bua.set_config(config, now);
        b2bua
    }

    /// New routing, trunks or addresses; calls in progress continue.
    pub fn set_config(&mut self, config: CallConfig, now: Instant) {
        if config.rtp_ports != self.config.rtp_ports {
            let used = std::mem::take(&mut self.ports.used);
            self.ports = PortPool::new(config.rtp_ports);
            self.ports.shuffle(&mut self.random);
            self.ports.used = used;
        }
        self.trunks.retain(|name, _| config.trunks.iter().any(|t| &t.name == name));
        for trunk in &config.trunks {
            let health = self.trunks.entry(trunk.name.clone()).or_insert_with(|| TrunkHealth {
                up: true,
                probe: None,
                next_probe: None,
                registration: None,
            });
            match trunk.keepalive {
                Some(_) if health.probe.is_none() && health.next_probe.is_none() => health.next_probe = Some(now),
                Some(_) => {}
                None => (health.up, health.probe, health.next_probe) = (true, None, None),
            }
            match (trunk.register && trunk.credentials.is_some(), &health.registration) {
                (true, None) => {
                    health.registration = Some(TrunkRegistration {
                        call_id: String::new(),
                        from_tag: String::new(),
                        cseq: 0,
                        pending: None,
                        authenticated: false,
                        registered_until: None,
                        next_at: now,
                    });
                }
                (false, Some(_)) => health.registration = None,
                _ => {}
            }
        }
        self.config = config;
    }

    pub fn config(&self) -> &CallConfig {
        &self.config
    }

    pub fn sip(&self) -> &Server {
        &self.sip
    }

    pub fn sip_mut(&mut self) -> &mut Server {
        &mut self.sip
    }

    pub fn trunk_state(&self, name: &str, now: Instant) -> Option<TrunkState> {
        self.trunks.get(name).map(|t| TrunkState {
            up: t.up,
            registered: t.registration.as_ref().map(|r| r.registered_until.is_some_and(|u| u > now)),
        })
    }

    pub fn calls(&self, now: Instant) -> Vec<CallInfo> {
        let mut list: Vec<CallInfo> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state != CallState::Cancelled)
            .map(|(id, c)| CallInfo {
                id: *id,
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                destination: c.destination.clone(),
                state: match (c.state, c.b.as_ref().and_then(|b| b.remote_tag.as_ref())) {
                    (CallState::Answered, _) => "answered",
                    (_, Some(_)) => "ringing",
                    _ => "trying",
                },
                age: now.saturating_duration_since(c.started),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.deliver_internal();
        self.outbox.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.deliver_internal();
        self.actions.pop_front()
    }

    /// Hands the messages the box sent to itself (a browser-to-browser call's internal leg)
    /// back to its SIP server, and keeps the rest for the network. Both polls start here, so
    /// the actions an internal message leads to are out before the driver looks for them.
    fn deliver_internal(&mut self) {
        while let Some(output) = self.sip.poll_output() {
            if output.flow.transport != Transport::Loop {
                self.outbox.push_back(output);
                continue;
            }
            // What one end of the loop sends, the other receives.
            let flow = Flow { transport: Transport::Loop, local: output.flow.remote, remote: output.flow.local };
            let now = self.now;
            self.sip.handle_input(now, flow, &output.data);
            self.drain(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let attempts = self.calls.values().filter_map(|c| c.attempt_deadline);
        let trunks = self
            .trunks
            .values()
            .flat_map(|t| [t.next_probe, t.probe.as_ref().map(|p| p.1), t.registration.as_ref().map(|r| r.next_at)])
            .flatten();
        let reliable = self
            .calls
            .values()
            .filter_map(|c| c.a_reliable.as_ref()?.unacked.as_ref())
            .map(|u| u.next_at.min(u.give_up_at));
        attempts.chain(trunks).chain(reliable).chain(self.sip.poll_timeout()).min()
    }

    fn token(&mut self) -> String {
        use rand::RngCore;
        format!("{:016x}", self.random.next_u64())
    }

    /// The box's address as seen from `remote`.
    fn local_ip_toward(&self, remote: IpAddr) -> IpAddr {
        let remote = remote.to_canonical();
        if remote.is_loopback() {
            return remote;
        }
        branchgate_config::announced_address(
            self.config.public_ip,
            &self.config.local_networks,
            remote,
            self.config.advertise_ip,
        )
    }

    pub fn handle_input(&mut self, now: Instant, flow: Flow, bytes: &[u8]) {
        self.now = now;
        // Only the box itself speaks on its internal leg.
        if flow.transport == Transport::Loop {
            return;
        }
        self.sip.handle_input(now, flow, bytes);
        self.drain(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.sip.handle_timeout(now);
        let stalled: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.attempt_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            if let Some(call) = self.calls.get_mut(&id) {
                call.attempt_deadline = None;
                tracing::info!("{}", format!("call {id}: no answer from {}, trying the next target", call.destination));
            }
            self.attempt_failed(now, id, 408);
        }
        self.retransmit_reliable_provisionals(now);
        self.probe_trunks(now);
        self.register_trunks(now);
        self.drain(now);
    }

    /// The relay saw no media on a call for too long: hang it up.
    pub fn handle_media_timeout(&mut self, now: Instant, call: u64) {
        self.now = now;
        if self.calls.get(&call).is_some_and(|c| c.state == CallState::Answered) {
            self.send_in_dialog(now, call, Side::A, "BYE", None);
            self.send_in_dialog(now, call, Side::B, "BYE", None);
            self.end(now, call, 200, "media-timeout");
        }
    }

    /// A DTMF key the relay took out of `from`'s telephone events because the
    /// other side takes DTMF as SIP INFO (`sip.trunks[].dtmf = "info"`):
    /// sent there as INFO `application/dtmf-relay` (its answer is the box's).
    pub fn handle_dtmf(&mut self, now: Instant, call: u64, from: Side, event: u8, duration_ms: u32) {
        self.now = now;
        let toward = from.other();
        let Some(c) = self.calls.get(&call) else { return };
        if c.state != CallState::Answered || !c.dtmf_info[toward.index()] {
            return;
        }
        let Some(key) = branchgate_rtp::dtmf_key(event) else { return };
        let Some(flow) = leg(c, toward).filter(|l| l.remote_tag.is_some()).map(|l| l.flow) else { return };
        let Some(mut info) = self.dialog_request(call, toward, "INFO", None) else { return };
        info.push("Content-Type", "application/dtmf-relay");
        info.body = format!("Signal={key}\r\nDuration={duration_ms}\r\n").into_bytes();
        let sent = self.sip.send_request(now, flow, info);
        self.sent.insert(sent, call);
    }

    /// Whether DTMF can reach `toward` as RFC 4733 events the box sends: the
    /// SIP side of a browser stream that negotiated them, not an INFO trunk.
    /// (Plain SIP-to-SIP streams are relayed untouched, so INFO passes there.)
    fn takes_dtmf_in_media(&self, call: u64, toward: Side) -> bool {
        let Some(c) = self.calls.get(&call) else { return false };
        let browser = c.browser.as_ref().filter(|b| b.side != toward);
        !c.dtmf_info[toward.index()] && browser.and_then(|b| b.payloads).is_some_and(|p| p.dtmf.is_some())
    }

    /// Hangs up a call from the admin UI; `false` when there is no such call.
    pub fn hang_up(&mut self, now: Instant, call: u64) -> bool {
        self.now = now;
        let Some(state) = self.calls.get(&call).map(|c| c.state) else { return false };
        match state {
            CallState::Answered => {
                self.send_in_dialog(now, call, Side::A, "BYE", None);
                self.send_in_dialog(now, call, Side::B, "BYE", None);
                self.end(now, call, 200, "admin-hangup");
            }
            CallState::Setup => {
                self.answer_a(now, call, 480, "Temporarily Unavailable", None);
                self.cancel_b(now, call);
                self.end(now, call, 480, "admin-hangup");
            }
            CallState::Cancelled => return false,
        }
        self.drain(now);
        true
    }

    fn drain(&mut self, now: Instant) {
        while let Some(incoming) = self.sip.poll_incoming() {
            match incoming {
                Incoming::Request { key, flow, request } => self.on_request(now, key, flow, request),
                Incoming::Ack { request, flow } => self.on_ack(&request, &flow),
                Incoming::Response { key, response } => self.on_response(now, &key, response),
                Incoming::Timeout { key } => self.on_timeout(now, &key),
                Incoming::NoAck { key } => self.on_no_ack(now, &key),
            }
        }
    }

    fn reply(&mut self, now: Instant, key: &ServerKey, request: &Message, code: u16, reason: &str) {
        let mut response = request.response(code, reason);
        if code >= 200
            && let Some(to) = response.get("To")
            && param(to, "tag").is_none()
        {
            let tagged = format!("{to};tag={}", self.token());
            response.set("To", tagged);
        }
        self.sip.respond(now, key, response);
    }

    fn on_request(&mut self, now: Instant, key: ServerKey, flow: Flow, request: Message) {
        let method = request.method().unwrap_or("").to_string();
        let call_id = request.get("Call-ID").unwrap_or("").to_string();
        let to_tag = request.get("To").and_then(|t| param(t, "tag")).map(str::to_string);
        if method == "CANCEL" {
            return self.on_cancel(now, key, &request);
        }
        if to_tag.is_some() {
            return match self.dialogs.get(&dialog_key(&call_id, &flow)).copied() {
                Some((call, side)) if self.leg_matches(call, side, &request) => {
                    self.on_in_dialog(now, key, call, side, request)
                }
                _ => self.reply(now, &key, &request, 481, "Call/Transaction Does Not Exist"),
            };
        }
        match method.as_str() {
            "INVITE" => self.on_invite(now, key, flow, request),
            "BYE" | "UPDATE" | "INFO" | "PRACK" => {
                self.reply(now, &key, &request, 481, "Call/Transaction Does Not Exist")
            }
            // Methods the box knows but does not serve get 405; others 501 (RFC 3261 §8.2.1).
            other => {
                let (code, reason) = if ["MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "PUBLISH"].contains(&other) {
                    (405, "Method Not Allowed")
                } else {
                    (501, "Not Implemented")
                };
                let mut response = request.response(code, reason);
                response.push("Allow", branchgate_sip::server::ALLOW);
                self.sip.respond(now, &key, response);
            }
        }
    }

    /// An in-dialog request must carry the dialog's tags (RFC 3261 §12.2.2).
    fn leg_matches(&self, call: u64, side: Side, request: &Message) -> bool {
        let Some(leg) = self.calls.get(&call).and_then(|c| leg(c, side)) else { return false };
        let from_tag = request.get("From").and_then(|f| param(f, "tag"));
        let to_tag = request.get("To").and_then(|t| param(t, "tag"));
        to_tag == Some(leg.local_tag.as_str()) && (leg.remote_tag.is_none() || from_tag == leg.remote_tag.as_deref())
    }

    fn on_invite(&mut self, now: Instant, key: ServerKey, flow: Flow, request: Message) {
        self.reply(now, &key, &request, 100, "Trying");
        let number = match &request.start {
            StartLine::Request { uri, .. } => user_of(uri).map(str::to_string),
            StartLine::Response { .. } => None,
        };
        let Some(number) = number.filter(|n| !n.is_empty()) else {
            return self.reply(now, &key, &request, 404, "Not Found");
        };
        // What the box cannot handle is refused before anyone is asked for credentials.
        let accepts_sdp = request.get_all("Accept").is_empty()
            || request.get_all("Accept").iter().any(|a| {
                let kind = a.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                matches!(kind.as_str(), "application/sdp" | "application/*" | "*/*")
            });
        if !accepts_sdp {
            let mut response = request.response(406, "Not Acceptable");
            response.push("Accept", "application/sdp");
            return self.sip.respond(now, &key, response);
        }
        let sdp_body = request.body.is_empty() || media_type(&request).as_deref() == Some("application/sdp");
        if !sdp_body {
            let mut response = request.response(415, "Unsupported Media Type");
            response.push("Accept", "application/sdp");
            return self.sip.respond(now, &key, response);
        }
        // Callers: a trunk (by its address and port: trunks send from where they
        // listen, RFC 3261 §18.2.1 symmetric SIP) may reach users only; anyone else
        // proves who they are with digest (RFC 3261 §22.3) and may call anything routable.
        // The box's own internal leg (the second half of a browser-to-browser call) is trusted
        // like a trunk: its caller was authenticated on the first half.
        let from_trunk = self.config.trunks.iter().find(|t| t.addr == flow.remote).cloned();
        let trusted = from_trunk.is_some() || flow.transport == Transport::Loop;
        let caller = if trusted {
            request.get("From").map(uri_of).and_then(user_of).unwrap_or("anonymous").to_string()
        } else {
            match self.sip.authenticate(now, &key, flow, &request, true) {
                Some(user) => user,
                None => return,
            }
        };
        let offer = match sdp_of(&request) {
            Ok(offer) => offer,
            Err(reason) => {
                let response = with_warning(request.response(488, "Not Acceptable Here"), &reason);
                return self.sip.respond(now, &key, response);
            }
        };
        // A browser's offer is terminated here; the SIP side is offered plain RTP.
        let browser = offer.as_ref().filter(|o| webrtc::is_browser_offer(o)).cloned();
        let offer = match &browser {
            Some(browser) => match webrtc::sip_offer(browser, CodecPreferences(&self.codec_preferences())) {
                Ok(plain) => Some(plain),
                Err(reason) => {
                    let response = with_warning(request.response(488, "Not Acceptable Here"), reason);
                    return self.sip.respond(now, &key, response);
                }
            },
            None => offer,
        };
        // A Call-ID already in a call here is a merged or looped request (RFC 3261 §8.2.2.2).
        if self.dialogs.contains_key(&dialog_key(request.get("Call-ID").unwrap_or(""), &flow)) {
            return self.reply(now, &key, &request, 482, "Loop Detected");
        }
        // Bounded resources: calls in all, calls per user, relay streams per call.
        let per_caller = self.calls.values().filter(|c| c.caller == caller && !c.from_trunk).count();
        if self.calls.len() >= MAX_CALLS || (!trusted && per_caller >= MAX_CALLS_PER_USER) {
            return self.reply(now, &key, &request, 503, "Service Unavailable");
        }
        if offer.as_ref().is_some_and(|o| o.media.len() > MAX_STREAMS) {
            let response = with_warning(request.response(488, "Not Acceptable Here"), "too many media streams");
            return self.sip.respond(now, &key, response);
        }
        let mut targets = match self.route(now, &number, trusted) {
            Ok(targets) => targets,
            Err((code, reason)) => return self.reply(now, &key, &request, code, reason),
        };
        // A callee registered over WebSocket is a browser: the box terminates its WebRTC.
        let to_browser =
            matches!(targets.first(), Some(Target::User { binding, .. }) if binding.flow.transport == Transport::Ws);
        let browser_media = match (browser, to_browser, &offer) {
            // Browser to browser: the box terminates both WebRTC sessions. The call goes to
            // the box itself over an internal SIP leg with plain RTP (passthrough codecs the
            // browser offered, else G.722/G.711 transcoded); the second call that leg makes
            // reaches the callee's browser like any SIP caller does.
            (Some(offer), true, _) => {
                targets = vec![self.internal_target(now, &number)];
                Some(BrowserMedia::new(Side::A, offer))
            }
            (Some(offer), false, _) => Some(BrowserMedia::new(Side::A, offer)),
            (None, true, Some(offer)) => {
                if let Err(reason) = webrtc::browser_offer_codecs(offer, CodecPreferences(&self.codec_preferences())) {
                    let response = with_warning(request.response(488, "Not Acceptable Here"), reason);
                    return self.sip.respond(now, &key, response);
                }
                Some(BrowserMedia::new(Side::B, offer.clone()))
            }
            (None, true, None) => {
                let response = with_warning(
                    request.response(488, "Not Acceptable Here"),
                    "calls without an offer cannot reach a browser yet",
                );
                return self.sip.respond(now, &key, response);
            }
            (None, false, _) => None,
        };
        let a_reliable = requires(&request, "100rel").then(|| ReliableProvisionals {
            next_rseq: rand::Rng::gen_range(&mut self.random, 1..1 << 31),
            unacked: None,
            queued_provisional: None,
            queued_final: None,
        });
        let id = self.next_call;
        self.next_call += 1;
        self.calls_started += 1;
        let local_ip = self.local_ip_toward(flow.remote.ip());
        let a = Leg {
            flow,
            call_id: request.get("Call-ID").unwrap_or("").to_string(),
            local_tag: self.token(),
            remote_tag: request.get("From").and_then(|f| param(f, "tag")).map(str::to_string),
            local_uri: request.get("To").map(strip_tag).unwrap_or_default(),
            remote_uri: request.get("From").map(strip_tag).unwrap_or_default(),
            remote_target: request.get("Contact").map(uri_of).unwrap_or("").to_string(),
            local_cseq: 0,
            invite_cseq: 0,
            prack_rseq: None,
            local_ip,
        };
        self.dialogs.insert(dialog_key(&a.call_id, &a.flow), (id, Side::A));
        self.calls.insert(
            id,
            Call {
                state: CallState::Setup,
                a,
                a_invite: key,
                a_request: request,
                b: None,
                b_invite: None,
                b_request: None,
                b_credentials: None,
                b_authenticated: false,
                b_ack_waits_for_answer: false,
                relay_ack_waits: None,
                attempt_deadline: None,
                targets: targets.into(),
                destination: String::new(),
                offer: None,
                streams: Vec::new(),
                caller,
                callee: number,
                from_trunk: trusted,
                redirected: false,
                started: now,
                answered: None,
                last_status: 0,
                relays: HashMap::new(),
                awaiting_ack: Vec::new(),
                browser: browser_media,
                dtmf_info: [from_trunk.as_ref().is_some_and(|t| t.dtmf_info), false],
                a_reliable,
            },
        );
        if from_trunk.as_ref().is_some_and(|t| t.dtmf_info) {
            self.actions.push_back(Action::DtmfMode { call: id, toward: Side::A, info: true });
        }
        if let Some(offer) = offer {
            match self.anchor(id, Side::A, offer) {
                Some(anchored) => {
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.offer = Some(anchored);
                    }
                }
                None => {
                    self.answer_a(now, id, 503, "Service Unavailable", None);
                    return self.end(now, id, 503, "no-media-ports");
                }
            }
        }
        self.try_next_target(now, id);
    }

    /// Where a dialled number goes, in order: emergency numbers, the box's users, then trunk routes.
    fn route(&self, now: Instant, number: &str, from_trunk: bool) -> Result<Vec<Target>, (u16, &'static str)> {
        let trunk_targets = |number: &str| -> Vec<Target> {
            // The longest matching prefix wins; its trunks go in priority order.
            let best =
                self.config.routes.iter().filter(|r| number.starts_with(&r.prefix)).map(|r| r.prefix.len()).max();
            let mut list: Vec<(u32, Target)> = self
                .config
                .routes
                .iter()
                .filter(|r| Some(r.prefix.len()) == best && number.starts_with(&r.prefix))
                .filter_map(|r| {
                    let trunk = self.config.trunks.iter().find(|t| t.name == r.trunk)?;
                    let number = number.get(r.strip..).unwrap_or("").to_string();
                    Some((trunk.priority, Target::Trunk { trunk: trunk.clone(), number }))
                })
                .collect();
            list.sort_by_key(|(priority, _)| *priority);
            list.into_iter().map(|(_, t)| t).collect()
        };
        if !from_trunk && self.config.emergency_numbers.iter().any(|n| n == number) {
            let mut targets = trunk_targets(number);
            if targets.is_empty() {
                let mut all: Vec<&TrunkTarget> = self.config.trunks.iter().collect();
                all.sort_by_key(|t| t.priority);
                targets =
                    all.into_iter().map(|t| Target::Trunk { trunk: t.clone(), number: number.to_string() }).collect();
            }
            // Emergency calls try every trunk, even one marked down.
            return if targets.is_empty() { Err((503, "Service Unavailable")) } else { Ok(targets) };
        }
        if self.sip.config().users.contains_key(number) {
            let contacts = self.sip.contacts(number, now);
            return match contacts.into_iter().next() {
                Some(binding) => Ok(vec![Target::User { user: number.to_string(), binding }]),
                None => Err((480, "Temporarily Unavailable")),
            };
        }
        if from_trunk {
            return Err((404, "Not Found"));
        }
        let targets = trunk_targets(number);
        if targets.is_empty() {
            return Err((404, "Not Found"));
        }
        let alive: Vec<Target> = targets
            .into_iter()
            .filter(|t| match t {
                Target::Trunk { trunk, .. } => self.trunks.get(&trunk.name).is_none_or(|h| h.up),
                Target::User { .. } => true,
            })
            .collect();
        if alive.is_empty() { Err((503, "Service Unavailable")) } else { Ok(alive) }
    }

    /// The box itself as the callee of `user`, reached over its internal leg.
    fn internal_target(&self, now: Instant, user: &str) -> Target {
        let (caller_end, callee_end) = internal_ends();
        Target::User {
            user: user.to_string(),
            binding: Binding {
                contact: format!("sip:{user}@{}", self.config.domain),
                expires: now + Duration::from_secs(3600),
                flow: Flow { transport: Transport::Loop, local: caller_end, remote: callee_end },
                call_id: String::new(),
                cseq: 0,
            },
        }
    }

    fn try_next_target(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(target) = call.targets.pop_front() else {
            let (code, reason) = match call.last_status {
                408 => (504, "Server Time-out"),
                _ => (503, "Service Unavailable"),
            };
            self.answer_a(now, id, code, reason, None);
            return self.end(now, id, code, "no-route-answered");
        };
        if let Some(old) = call.b.take() {
            self.dialogs.remove(&dialog_key(&old.call_id, &old.flow));
        }
        let (flow, request_uri, to_uri) = match &target {
            Target::User { binding, user } => {
                (user_flow(binding), binding.contact.clone(), format!("<sip:{user}@{}>", self.config.domain))
            }
            Target::Trunk { trunk, number } => {
                let flow = self.trunk_flow(trunk);
                let host = host_port(trunk.addr);
                (flow, format!("sip:{number}@{host}"), format!("<sip:{number}@{host}>"))
            }
        };
        let local_ip = self.local_ip_toward(flow.remote.ip());
        let call_id = format!("{}@{}", self.token(), ip_text(local_ip));
        let local_tag = self.token();
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.destination = target.name();
        let info = matches!(&target, Target::Trunk { trunk, .. } if trunk.dtmf_info);
        call.dtmf_info[Side::B.index()] = info;
        self.actions.push_back(Action::DtmfMode { call: id, toward: Side::B, info });
        let display = call
            .a_request
            .get("From")
            .and_then(|f| f.split('<').next())
            .map(str::trim)
            .filter(|d| d.starts_with('"'))
            .map(|d| format!("{d} "))
            .unwrap_or_default();
        let from_uri = format!("{display}<sip:{}@{}>", call.caller, ip_text(local_ip));
        let leg = Leg {
            flow,
            call_id: call_id.clone(),
            local_tag,
            remote_tag: None,
            local_uri: from_uri,
            remote_uri: to_uri,
            remote_target: request_uri,
            local_cseq: 0,
            invite_cseq: 0,
            prack_rseq: None,
            local_ip,
        };
        let max_forwards =
            call.a_request.get("Max-Forwards").and_then(|m| m.trim().parse::<u32>().ok()).unwrap_or(70).clamp(1, 71)
                - 1;
        let mut passed: Vec<(String, String)> = Vec::new();
        for name in PASSED_HEADERS {
            for value in call.a_request.lines(name) {
                passed.push((name.to_string(), value.to_string()));
            }
        }
        let offer = call.offer.clone();
        let browser_callee = call.browser.as_ref().is_some_and(|b| b.side == Side::B);
        call.b = Some(leg);
        self.dialogs.insert(dialog_key(&call_id, &flow), (id, Side::B));
        let body = if browser_callee {
            match self.offer_browser(now, id, local_ip) {
                Ok(body) => Some(body),
                Err(reason) => {
                    tracing::info!(call = id, reason, "no WebRTC offer for the browser");
                    self.answer_a(now, id, 488, "Not Acceptable Here", None);
                    return self.end(now, id, 488, "no-common-codec");
                }
            }
        } else {
            offer.map(|mut sdp| {
                let ports: Vec<u16> =
                    self.calls.get(&id).map(|c| c.streams.iter().map(|s| s.b_port).collect()).unwrap_or_default();
                sdp.anchor(local_ip, &ports);
                sdp.to_bytes()
            })
        };
        let Some(mut request) = self.dialog_request(id, Side::B, "INVITE", body) else { return };
        request.set("Max-Forwards", max_forwards.to_string());
        // Early media from gateways often comes reliably (RFC 3262): the box PRACKs it itself
        // and passes it to the caller unreliably, so callers need not support 100rel.
        request.push("Supported", "100rel");
        for (name, value) in passed {
            request.push(&name, value);
        }
        let key = self.sip.send_request(now, flow, request.clone());
        self.sent.insert(key.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            call.b_invite = Some(key);
            call.b_request = Some(request);
            call.b_credentials = match &target {
                Target::Trunk { trunk, .. } => trunk.credentials.clone(),
                Target::User { .. } => None,
            };
            call.b_authenticated = false;
            call.attempt_deadline = Some(now + self.config.failover_after);
        }
    }

    /// Answers a trunk's 401/407 to leg B's INVITE once: the same INVITE with
    /// credentials, a new branch and the next CSeq. `false` when it cannot.
    fn authenticate_b(&mut self, now: Instant, id: u64, response: &Message) -> bool {
        let branch = format!("z9hG4bK{}", self.token());
        let cnonce = self.token();
        let Some(call) = self.calls.get_mut(&id) else { return false };
        let (Some((username, password)), Some(mut request), Some(leg)) =
            (call.b_credentials.clone(), call.b_request.clone(), call.b.as_mut())
        else {
            return false;
        };
        if call.b_authenticated {
            return false;
        }
        let (challenge_header, answer_header) = match response.start {
            StartLine::Response { code: 407, .. } => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => ("WWW-Authenticate", "Authorization"),
        };
        let uri = match &request.start {
            StartLine::Request { uri, .. } => uri.clone(),
            StartLine::Response { .. } => return false,
        };
        let Some(authorization) = response.lines(challenge_header).find_map(|c| {
            branchgate_sip::digest::client_authorization(c, "INVITE", &uri, &username, &password, &cnonce)
        }) else {
            return false;
        };
        leg.local_cseq += 1;
        leg.invite_cseq = leg.local_cseq;
        let via = request.get("Via").unwrap_or("").to_string();
        let old_branch = param(&via, "branch").unwrap_or("").to_string();
        request.set("Via", via.replace(&old_branch, &branch));
        request.set("CSeq", format!("{} INVITE", leg.local_cseq));
        request.push(answer_header, authorization);
        let flow = leg.flow;
        call.b_authenticated = true;
        call.b_request = Some(request.clone());
        call.attempt_deadline = Some(now + self.config.failover_after);
        let key = self.sip.send_request(now, flow, request);
        self.sent.insert(key.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            call.b_invite = Some(key);
        }
        true
    }

    /// A request in the dialog of `side` (its CSeq advanced), ready to send.
    fn dialog_request(&mut self, id: u64, side: Side, method: &str, body: Option<Vec<u8>>) -> Option<Message> {
        let branch = format!("z9hG4bK{}", self.token());
        let call = self.calls.get_mut(&id)?;
        let leg = leg_mut(call, side)?;
        if method != "ACK" {
            leg.local_cseq += 1;
        }
        if method == "INVITE" {
            leg.invite_cseq = leg.local_cseq;
        }
        let mut m = Message {
            start: StartLine::Request { method: method.into(), uri: leg.remote_target.clone() },
            headers: Vec::new(),
            body: Vec::new(),
        };
        let sent_by = SocketAddr::new(leg.local_ip, leg.flow.local.port());
        m.push(
            "Via",
            format!("SIP/2.0/{} {};branch={branch};rport", leg.flow.transport.via_name(), host_port(sent_by)),
        );
        m.push("Max-Forwards", "70");
        let (from, to) = (
            format!("{};tag={}", leg.local_uri, leg.local_tag),
            match &leg.remote_tag {
                Some(tag) => format!("{};tag={tag}", leg.remote_uri),
                None => leg.remote_uri.clone(),
            },
        );
        m.push("From", from);
        m.push("To", to);
        m.push("Call-ID", leg.call_id.clone());
        let cseq = if method == "ACK" { leg.invite_cseq } else { leg.local_cseq };
        m.push("CSeq", format!("{} {method}", cseq.max(1)));
        m.push("Contact", contact_of(leg));
        if method == "INVITE" {
            m.push("Allow", branchgate_sip::server::ALLOW);
        }
        m.push("User-Agent", self.sip.config().user_agent.clone());
        if let Some(body) = body {
            m.push("Content-Type", "application/sdp");
            m.body = body;
        }
        Some(m)
    }

    fn send_in_dialog(
        &mut self,
        now: Instant,
        id: u64,
        side: Side,
        method: &str,
        body: Option<Vec<u8>>,
    ) -> Option<ClientKey> {
        let flow = self.calls.get(&id).and_then(|c| leg(c, side)).filter(|l| l.remote_tag.is_some())?.flow;
        let request = self.dialog_request(id, side, method, body)?;
        let key = self.sip.send_request(now, flow, request);
        self.sent.insert(key.clone(), id);
        Some(key)
    }

    /// A response to the caller's INVITE, from the box's A-leg dialog.
    fn answer_a(&mut self, now: Instant, id: u64, code: u16, reason: &str, body: Option<Vec<u8>>) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if !self.sip.is_pending(&call.a_invite) {
            return;
        }
        // A caller that requires 100rel: one reliable provisional at a time, and no 2xx
        // before the PRACK of one that carried SDP (RFC 3262 §3).
        let mut rseq = None;
        if let Some(reliable) = call.a_reliable.as_mut() {
            let queued = QueuedAnswer { code, reason: reason.to_string(), body: body.clone() };
            match (code, &reliable.unacked) {
                (101..=199, Some(_)) => return reliable.queued_provisional = Some(queued),
                (200..=299, Some(unacked)) if unacked.has_sdp => return reliable.queued_final = Some(queued),
                (101..=199, None) => {
                    rseq = Some(reliable.next_rseq);
                    reliable.next_rseq = reliable.next_rseq.wrapping_add(1);
                }
                _ => {
                    // A final answer ends the reliable provisionals.
                    reliable.unacked = None;
                    reliable.queued_provisional = None;
                    reliable.queued_final = None;
                }
            }
        }
        let Some(call) = self.calls.get(&id) else { return };
        let mut response = call.a_request.response(code, reason);
        if let Some(to) = response.get("To") {
            let tagged = format!("{};tag={}", strip_tag(to), call.a.local_tag);
            response.set("To", tagged);
        }
        if (101..300).contains(&code) {
            response.push("Contact", contact_of(&call.a));
            response.push("Allow", branchgate_sip::server::ALLOW);
        }
        if let Some(rseq) = rseq {
            response.push("Require", "100rel");
            response.push("RSeq", rseq.to_string());
        }
        if let Some(body) = body {
            response.push("Content-Type", "application/sdp");
            response.body = body;
        }
        let key = call.a_invite.clone();
        if let Some(rseq) = rseq
            && let Some(reliable) = self.calls.get_mut(&id).and_then(|c| c.a_reliable.as_mut())
        {
            reliable.unacked = Some(Unacked {
                rseq,
                response: response.clone(),
                has_sdp: !response.body.is_empty(),
                next_at: now + branchgate_sip::transaction::T1,
                interval: branchgate_sip::transaction::T1,
                give_up_at: now + 64 * branchgate_sip::transaction::T1,
            });
        }
        self.sip.respond(now, &key, response);
        if (200..300).contains(&code)
            && let Some(call) = self.calls.get_mut(&id)
        {
            call.awaiting_ack.push(key);
        }
    }

    /// Records the media addresses `from` announced, opens relays for new
    /// streams, and returns the SDP as the other side must see it.
    fn anchor(&mut self, id: u64, from: Side, mut sdp: SessionDescription) -> Option<SessionDescription> {
        let count = sdp.media.len();
        if count > MAX_STREAMS {
            return None;
        }
        let call = self.calls.get(&id)?;
        let have = call.streams.len();
        // A browser's side has no relay of its own: its WebRTC session opens with the stream.
        let browser_side = call.browser.as_ref().map(|b| b.side);
        for index in have..count {
            let a_port = self.ports.allocate()?;
            let Some(b_port) = self.ports.allocate() else {
                self.ports.release(a_port);
                return None;
            };
            let ports = StreamPorts { a_port, b_port };
            self.calls.get_mut(&id)?.streams.push(ports);
            if browser_side.is_none() {
                self.actions.push_back(Action::OpenStream { call: id, index, ports });
            }
        }
        let signalling = leg(self.calls.get(&id)?, from)?.flow.remote.ip();
        for index in (0..count).filter(|_| browser_side != Some(from)) {
            let peer = MediaPeer {
                destination: sdp.media_destination(index),
                signalling,
                formats: sdp.media.get(index).map(|m| m.rtp_maps()).unwrap_or_default(),
            };
            self.actions.push_back(Action::Peer { call: id, index, side: from, peer });
        }
        let call = self.calls.get(&id)?;
        let to = from.other();
        let ports: Vec<u16> = call.streams.iter().map(|s| if to == Side::A { s.a_port } else { s.b_port }).collect();
        let local_ip = match to {
            Side::A => call.a.local_ip,
            Side::B => call.b.as_ref().map(|b| b.local_ip).unwrap_or(self.config.advertise_ip),
        };
        sdp.anchor(local_ip, &ports);
        Some(sdp)
    }

    /// SDP from `from` rewritten for the other side (None: no SDP; Err: bad SDP).
    fn relay_body(&mut self, id: u64, from: Side, message: &Message) -> Result<Option<Vec<u8>>, String> {
        match sdp_of(message)? {
            None => Ok(None),
            Some(_) if self.calls.get(&id).is_some_and(|c| c.browser.is_some()) => {
                Err("renegotiating a call with a WebRTC side is not supported yet".to_string())
            }
            Some(sdp) => {
                self.anchor(id, from, sdp).map(|s| Some(s.to_bytes())).ok_or_else(|| "no media ports left".to_string())
            }
        }
    }

    /// `media.codecs` for a new browser call: without Opus (the codec the box transcodes to and
    /// from) while `media.max_transcoded_calls` calls are transcoded, so the call gets only
    /// codecs that pass through, or is refused with 488 if there are none.
    fn codec_preferences(&self) -> Vec<String> {
        let transcoded = self
            .calls
            .values()
            .filter(|c| c.browser.as_ref().and_then(|b| b.payloads).is_some_and(|p| p.transcode.is_some()))
            .count();
        let mut codecs = self.config.codecs.clone();
        if transcoded >= self.config.max_transcoded {
            codecs.retain(|c| !c.eq_ignore_ascii_case(branchgate_dsp::Codec::Opus.name()));
            if codecs.is_empty() {
                // An empty list would allow every codec: a name no codec has allows none.
                codecs.push("-".into());
            }
        }
        codecs
    }

    /// The box's WebRTC offer to a browser callee, on the stream's B port.
    fn offer_browser(&mut self, now: Instant, id: u64, local_ip: IpAddr) -> Result<Vec<u8>, &'static str> {
        let preferences = self.codec_preferences();
        let call = self.calls.get_mut(&id).ok_or("call gone")?;
        let ports = *call.streams.first().ok_or("no media stream")?;
        let browser = call.browser.as_mut().ok_or("no browser")?;
        let codecs = webrtc::browser_offer_codecs(&browser.offer, CodecPreferences(&preferences))?;
        let (leg, offer) = WebRtcLeg::offer(now, SocketAddr::new(local_ip, ports.b_port), &codecs)
            .map_err(|_| "the WebRTC session could not be set up")?;
        browser.offering = Some(Box::new(leg));
        browser.to_browser = Some(offer.clone().into_bytes());
        Ok(offer.into_bytes())
    }

    /// A browser callee's answer: the box's session takes it and goes to the
    /// relay; the SIP caller is answered with the codec the browser chose.
    fn browser_answered(&mut self, now: Instant, id: u64, sdp: SessionDescription) -> Result<Option<Vec<u8>>, String> {
        let call = self.calls.get_mut(&id).ok_or("call gone")?;
        let ports = *call.streams.first().ok_or("no media stream")?;
        let a_ip = call.a.local_ip;
        let signalling = call.a.flow.remote.ip();
        let dtmf_as_info = call.dtmf_info[Side::A.index()];
        let browser = call.browser.as_mut().ok_or("no browser")?;
        if let Some(answer) = browser.answer.clone() {
            return Ok(Some(answer));
        }
        let (mut answer, payloads) = webrtc::sip_answer(&browser.offer, &sdp)?;
        browser.payloads = Some(payloads);
        let mut leg = browser.offering.take().ok_or("no WebRTC offer was made")?;
        leg.accept_answer(now, &sdp.to_string()).map_err(|e| e.to_string())?;
        let destination = browser.offer.media_destination(0);
        let formats = browser.offer.media.first().map(|m| m.rtp_maps()).unwrap_or_default();
        answer.anchor(a_ip, &[ports.a_port]);
        let answer = answer.to_bytes();
        browser.answer = Some(answer.clone());
        browser.to_sip = Some(answer.clone());
        browser.remote = Some(sdp);
        self.actions.push_back(Action::OpenWebRtc {
            call: id,
            index: 0,
            ports,
            side: Side::B,
            leg: LegHandoff(leg),
            payloads,
            dtmf_as_info,
        });
        // The caller's address, given again now that the relay exists.
        let peer = MediaPeer { destination, signalling, formats };
        self.actions.push_back(Action::Peer { call: id, index: 0, side: Side::A, peer });
        Ok(Some(answer))
    }

    /// Leg B's SDP in an answer to the caller's INVITE, as the caller must see
    /// it: anchored, or for a browser the box's WebRTC answer (built once, when
    /// the SIP side first names its codec).
    fn setup_body(&mut self, now: Instant, id: u64, response: &Message) -> Result<Option<Vec<u8>>, String> {
        let Some(browser) = self.calls.get(&id).and_then(|c| c.browser.as_ref()) else {
            return self.relay_body(id, Side::B, response);
        };
        let Some(sdp) = sdp_of(response)? else { return Ok(None) };
        if browser.side == Side::B {
            return self.browser_answered(now, id, sdp);
        }
        if let Some(answer) = browser.answer.clone() {
            self.anchor(id, Side::B, sdp).ok_or("no media ports left")?;
            return Ok(Some(answer));
        }
        let (codecs, payloads) = webrtc::browser_codecs(&browser.offer, &sdp)?;
        let offer = browser.offer.to_string();
        let call = self.calls.get_mut(&id).ok_or("call gone")?;
        let ports = *call.streams.first().ok_or("no media stream")?;
        let local = SocketAddr::new(call.a.local_ip, ports.a_port);
        let dtmf_as_info = call.dtmf_info[Side::B.index()];
        if let Some(browser) = call.browser.as_mut() {
            browser.payloads = Some(payloads);
        }
        let (leg, answer) = WebRtcLeg::answer(now, &offer, local, &codecs).map_err(|e| e.to_string())?;
        // The relay must exist before leg B's address is given to it.
        self.actions.push_back(Action::OpenWebRtc {
            call: id,
            index: 0,
            ports,
            side: Side::A,
            leg: LegHandoff(Box::new(leg)),
            payloads,
            dtmf_as_info,
        });
        self.anchor(id, Side::B, sdp).ok_or("no media ports left")?;
        let answer = answer.into_bytes();
        if let Some(call) = self.calls.get_mut(&id) {
            let to_sip = call.offer.as_ref().map(SessionDescription::to_bytes);
            if let Some(browser) = call.browser.as_mut() {
                browser.answer = Some(answer.clone());
                browser.to_browser = Some(answer.clone());
                browser.to_sip = to_sip;
                browser.remote = Some(browser.offer.clone());
            }
        }
        Ok(Some(answer))
    }

    /// The trunk whose keepalive this transaction is.
    fn probed_trunk(&self, key: &ClientKey) -> Option<String> {
        self.trunks.iter().find(|(_, h)| h.probe.as_ref().is_some_and(|(k, _)| k == key)).map(|(n, _)| n.clone())
    }

    fn on_response(&mut self, now: Instant, key: &ClientKey, response: Message) {
        if let Some(name) = self.probed_trunk(key) {
            // Any answer, even an error, shows the trunk is alive.
            return self.trunk_probe_result(now, &name, true);
        }
        if let Some(name) = self.registering_trunk(key) {
            return self.trunk_register_answer(now, &name, &response);
        }
        let Some(&id) = self.sent.get(key) else { return };
        let StartLine::Response { code, ref reason } = response.start else { return };
        let reason = reason.clone();
        // A 2xx to an INVITE may come again (lost ACK): keep its key until the call goes.
        let invite_2xx = (200..300).contains(&code) && response.cseq().map(|(_, m)| m) == Some("INVITE");
        if code >= 200 && !invite_2xx {
            self.sent.remove(key);
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.relays.contains_key(key) {
            return self.relay_response(now, id, key, code, &reason, &response);
        }
        if call.b_invite.as_ref() != Some(key) {
            // A late answer to an abandoned attempt: a 2xx must still be ACKed and hung up.
            // (Answers to the box's own in-dialog requests — INFO, BYE — end here too.)
            if invite_2xx {
                self.ack_and_bye_stray(now, key, &response);
            }
            return;
        }
        call.attempt_deadline = None;
        if let Some(b) = call.b.as_mut()
            && code > 100
            && code < 300
        {
            if let Some(tag) = response.get("To").and_then(|t| param(t, "tag")) {
                b.remote_tag = Some(tag.to_string());
            }
            if let Some(contact) = response.get("Contact") {
                b.remote_target = uri_of(contact).to_string();
            }
        }
        if call.state == CallState::Setup && matches!(code, 401 | 407) && self.authenticate_b(now, id, &response) {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        match (call.state, code) {
            (_, 100) => {}
            (CallState::Cancelled, 200..=299) => {
                self.ack_b(id);
                self.send_in_dialog(now, id, Side::B, "BYE", None);
                self.forget(now, id);
            }
            (CallState::Cancelled, _) if code >= 200 => self.forget(now, id),
            (CallState::Setup, 101..=199) => {
                if let Some(rseq) = reliable_rseq(&response)
                    && !self.prack_b(now, id, rseq, &response)
                {
                    return; // a retransmission, relayed already
                }
                match self.setup_body(now, id, &response) {
                    Ok(body) => self.answer_a(now, id, code, &reason, body),
                    Err(e) => tracing::info!("{}", format!("call {id}: bad SDP in {code}: {e}")),
                }
            }
            (CallState::Setup, 200..=299) => {
                call.b_ack_waits_for_answer = call.offer.is_none() && !response.body.is_empty();
                self.ack_b(id);
                let body = match self.setup_body(now, id, &response) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::info!("{}", format!("call {id}: bad SDP in 2xx: {e}"));
                        self.send_in_dialog(now, id, Side::B, "BYE", None);
                        self.answer_a(now, id, 502, "Bad Gateway", None);
                        return self.end(now, id, 502, "bad-sdp");
                    }
                };
                self.answer_a(now, id, 200, &reason, body);
                if let Some(call) = self.calls.get_mut(&id) {
                    call.state = CallState::Answered;
                    call.answered = Some(now);
                    call.last_status = 200;
                }
            }
            (CallState::Answered, 200..=299) => self.ack_b(id), // a retransmitted 2xx
            (CallState::Setup, 300..=699) => {
                call.last_status = code;
                if fails_over(code) {
                    return self.attempt_failed(now, id, code);
                }
                // A 3xx names addresses the caller must not learn or be sent to: the box
                // follows it itself, once, by routing the number it names like a dialled one
                // (with the caller's own rights); otherwise the caller gets 480.
                if code < 400 && self.follow_redirect(now, id, &response) {
                    return;
                }
                let (code, reason) =
                    if code < 400 { (480, "Temporarily Unavailable") } else { (code, reason.as_str()) };
                self.answer_a(now, id, code, reason, None);
                self.end(now, id, code, "rejected");
            }
            _ => {}
        }
    }

    /// The caller's PRACK of the box's reliable provisional response (its RAck names the
    /// RSeq and the INVITE's CSeq): 200, and what waited for it goes; anything else 481.
    fn on_prack(&mut self, now: Instant, key: ServerKey, id: u64, side: Side, request: Message) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let invite_cseq = call.a_request.cseq().map(|(n, _)| n);
        let rack = request.get("RAck").map(|v| v.split_whitespace().collect::<Vec<_>>());
        let acknowledged = match (side, call.a_reliable.as_mut(), rack.as_deref()) {
            (Side::A, Some(reliable), Some([rseq, cseq, method]))
                if reliable.unacked.as_ref().is_some_and(|u| rseq.parse() == Ok(u.rseq))
                    && cseq.parse().ok() == invite_cseq
                    && method.eq_ignore_ascii_case("INVITE") =>
            {
                reliable.unacked = None;
                Some((reliable.queued_final.take(), reliable.queued_provisional.take()))
            }
            _ => None,
        };
        let Some((queued_final, queued_provisional)) = acknowledged else {
            return self.reply(now, &key, &request, 481, "Call/Transaction Does Not Exist");
        };
        if let Some(response) = self.dialog_response(id, Side::A, &request, 200, "OK", None) {
            self.sip.respond(now, &key, response);
        }
        if let Some(QueuedAnswer { code, reason, body }) = queued_final.or(queued_provisional) {
            self.answer_a(now, id, code, &reason, body);
        }
    }

    /// Retransmits the reliable provisional responses not PRACKed yet (T1, doubling); one
    /// unacknowledged for 64·T1 ends the call with 504 (RFC 3262 §3).
    fn retransmit_reliable_provisionals(&mut self, now: Instant) {
        let mut gave_up = Vec::new();
        for (id, call) in self.calls.iter_mut() {
            let Some(unacked) = call.a_reliable.as_mut().and_then(|r| r.unacked.as_mut()) else { continue };
            if unacked.give_up_at <= now {
                gave_up.push((*id, call.state));
            } else if unacked.next_at <= now {
                unacked.interval *= 2;
                unacked.next_at = now + unacked.interval;
                let response = unacked.response.clone();
                let key = call.a_invite.clone();
                self.sip.respond(now, &key, response);
            }
        }
        for (id, state) in gave_up {
            tracing::info!(call = id, "the caller did not PRACK a reliable provisional response");
            if let Some(reliable) = self.calls.get_mut(&id).and_then(|c| c.a_reliable.as_mut()) {
                reliable.unacked = None;
            }
            self.answer_a(now, id, 504, "Server Time-out", None);
            if state == CallState::Answered {
                self.send_in_dialog(now, id, Side::B, "BYE", None);
            } else {
                self.cancel_b(now, id);
            }
            self.end(now, id, 504, "no-prack");
        }
    }

    /// PRACKs a reliable provisional response on leg B (RFC 3262 §7.2), once per RSeq;
    /// `false` for one PRACKed already (a retransmission, which is dropped).
    fn prack_b(&mut self, now: Instant, id: u64, rseq: u32, response: &Message) -> bool {
        let Some(leg) = self.calls.get_mut(&id).and_then(|c| c.b.as_mut()) else { return false };
        if leg.prack_rseq.is_some_and(|last| rseq <= last) {
            return false;
        }
        leg.prack_rseq = Some(rseq);
        let flow = leg.flow;
        let Some((invite_cseq, _)) = response.cseq() else { return false };
        let Some(mut prack) = self.dialog_request(id, Side::B, "PRACK", None) else { return false };
        prack.push("RAck", format!("{rseq} {invite_cseq} INVITE"));
        let key = self.sip.send_request(now, flow, prack);
        self.sent.insert(key, id);
        true
    }

    /// Routes the number a 3xx's Contact names, once per call; `false` when it cannot.
    fn follow_redirect(&mut self, now: Instant, id: u64, response: &Message) -> bool {
        let Some(call) = self.calls.get(&id) else { return false };
        if call.redirected {
            return false;
        }
        let number = response.get("Contact").map(uri_of).and_then(user_of).map(str::to_string);
        let Some(number) = number.filter(|n| !n.is_empty()) else { return false };
        let Ok(targets) = self.route(now, &number, call.from_trunk) else { return false };
        let Some(call) = self.calls.get_mut(&id) else { return false };
        tracing::info!(call = id, to = %number, "following a redirect");
        call.redirected = true;
        call.targets = targets.into();
        call.b_invite = None;
        self.try_next_target(now, id);
        true
    }

    fn attempt_failed(&mut self, now: Instant, id: u64, code: u16) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.state != CallState::Setup {
            return;
        }
        call.last_status = code;
        call.attempt_deadline = None;
        // A silent target has sent nothing a CANCEL could follow: forget the attempt
        // (a late 2xx is ACKed and hung up in on_response).
        call.b_invite = None;
        self.try_next_target(now, id);
    }

    fn on_timeout(&mut self, now: Instant, key: &ClientKey) {
        if let Some(name) = self.probed_trunk(key) {
            return self.trunk_probe_result(now, &name, false);
        }
        if let Some(name) = self.registering_trunk(key)
            && let Some(registration) = self.trunks.get_mut(&name).and_then(|h| h.registration.as_mut())
        {
            tracing::warn!(trunk = %name, "no answer to REGISTER");
            registration.pending = None;
            registration.registered_until = None;
            registration.next_at = now + TRUNK_REGISTER_RETRY;
            return;
        }
        let Some(id) = self.sent.remove(key) else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        if let Some(relay) = call.relays.remove(key) {
            return self.reply(now, &relay.origin, &relay.request, 408, "Request Timeout");
        }
        if call.b_invite.as_ref() == Some(key) {
            if call.state == CallState::Cancelled {
                // Leg B never answered its CANCEL: nothing more will come.
                return self.forget(now, id);
            }
            self.attempt_failed(now, id, 408);
        }
    }

    /// ACKs leg B's 2xx; with a late offer (INVITE without SDP) the ACK must
    /// carry the caller's answer, so it waits for the caller's ACK.
    fn ack_b(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id) else { return };
        if call.b_ack_waits_for_answer {
            return;
        }
        self.send_ack_b(id, None);
    }

    fn send_ack_b(&mut self, id: u64, body: Option<Vec<u8>>) {
        let Some(flow) = self.calls.get(&id).and_then(|c| c.b.as_ref()).map(|b| b.flow) else { return };
        if let Some(ack) = self.dialog_request(id, Side::B, "ACK", body) {
            self.sip.send_raw(flow, &ack);
        }
    }

    /// ACK and BYE for a 2xx from an attempt the call no longer follows
    /// (RFC 3261 §13.2.2.4: a UAC that does not want the dialog still ACKs, then BYEs).
    fn ack_and_bye_stray(&mut self, now: Instant, key: &ClientKey, response: &Message) {
        let Some((flow, invite)) = self.sip.client_request(key).map(|(f, m)| (f, m.clone())) else { return };
        let Some(number) = invite.cseq().map(|(n, _)| n) else { return };
        let target = response.get("Contact").map(uri_of).unwrap_or("").to_string();
        for (method, cseq) in [("ACK", number), ("BYE", number + 1)] {
            let mut m = Message {
                start: StartLine::Request { method: method.into(), uri: target.clone() },
                headers: Vec::new(),
                body: Vec::new(),
            };
            let via = invite.get("Via").unwrap_or("").to_string();
            let branch = format!("z9hG4bK{}", self.token());
            m.push("Via", via.replace(branchgate_sip::transaction::top_branch(&invite).unwrap_or("-"), &branch));
            m.push("Max-Forwards", "70");
            for name in ["From", "To", "Call-ID"] {
                let value = if name == "To" { response.get("To") } else { invite.get(name) };
                m.push(name, value.unwrap_or(""));
            }
            m.push("CSeq", format!("{cseq} {method}"));
            if method == "ACK" {
                self.sip.send_raw(flow, &m);
            } else {
                self.sip.send_request(now, flow, m);
            }
        }
    }

    fn on_cancel(&mut self, now: Instant, key: ServerKey, request: &Message) {
        let Some(invite) = self.sip.invite_of_cancel(&key) else {
            return self.reply(now, &key, request, 481, "Call/Transaction Does Not Exist");
        };
        self.reply(now, &key, request, 200, "OK");
        let Some(id) = self.calls.iter().find(|(_, c)| c.a_invite == invite).map(|(id, _)| *id) else { return };
        if self.calls.get(&id).map(|c| c.state) != Some(CallState::Setup) {
            return;
        }
        self.answer_a(now, id, 487, "Request Terminated", None);
        self.cancel_b(now, id);
        self.end(now, id, 487, "cancelled");
    }

    /// Cancels leg B's pending INVITE; the call stays until B's final answer.
    fn cancel_b(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.state = CallState::Cancelled;
        call.attempt_deadline = None;
        if let Some(key) = call.b_invite.clone() {
            self.sip.cancel(now, &key);
        }
    }

    fn on_in_dialog(&mut self, now: Instant, key: ServerKey, id: u64, side: Side, request: Message) {
        let method = request.method().unwrap_or("").to_string();
        if method == "PRACK" {
            return self.on_prack(now, key, id, side, request);
        }
        let Some(call) = self.calls.get(&id) else { return };
        if call.state != CallState::Answered {
            let code = if method == "BYE" { 481 } else { 491 };
            return self.reply(
                now,
                &key,
                &request,
                code,
                if code == 481 { "Call/Transaction Does Not Exist" } else { "Request Pending" },
            );
        }
        if method == "BYE" {
            self.reply(now, &key, &request, 200, "OK");
            self.send_in_dialog(now, id, side.other(), "BYE", None);
            let cause = if side == Side::A { "caller-bye" } else { "callee-bye" };
            return self.end(now, id, 200, cause);
        }
        if method == "INVITE" && self.calls.get(&id).is_some_and(|c| c.browser.is_some()) {
            return self.browser_call_reinvite(now, key, id, side, request);
        }
        // A key sent as SIP INFO goes on as RFC 4733 events where the other side takes them.
        if method == "INFO"
            && let Some((event, duration_ms)) = dtmf_of_info(&request)
            && self.takes_dtmf_in_media(id, side.other())
        {
            self.reply(now, &key, &request, 200, "OK");
            let toward = side.other();
            return self.actions.push_back(Action::SendDtmf { call: id, index: 0, toward, event, duration_ms });
        }
        // SDP is anchored; DTMF bodies (SIP INFO) pass as they are; nothing else passes.
        let kind = media_type(&request);
        let passes_as_is = matches!(kind.as_deref(), Some("application/dtmf-relay" | "application/dtmf"));
        let body = if passes_as_is { Ok(Some(request.body.clone())) } else { self.relay_body(id, side, &request) };
        let body = match body {
            Ok(body) => body,
            Err(reason) => {
                let (code, text) = if kind.is_some_and(|k| k != "application/sdp") {
                    (415, "Unsupported Media Type")
                } else {
                    (488, "Not Acceptable Here")
                };
                let response = with_warning(request.response(code, text), &reason);
                return self.sip.respond(now, &key, response);
            }
        };
        let content_type = request.get("Content-Type").map(str::to_string);
        let Some(flow) = self.calls.get(&id).and_then(|c| leg(c, side.other())).map(|l| l.flow) else { return };
        let Some(mut relayed) = self.dialog_request(id, side.other(), &method, None) else { return };
        if !request.body.is_empty() {
            relayed.push("Content-Type", content_type.unwrap_or_else(|| "application/sdp".into()));
            relayed.body = body.unwrap_or_else(|| request.body.clone());
        }
        let sent = self.sip.send_request(now, flow, relayed);
        self.sent.insert(sent.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            call.relays.insert(sent, Relay { origin: key, request, to: side.other(), answered: false });
        }
    }

    /// The answer to a relayed in-dialog request goes back to the side that asked.
    fn relay_response(&mut self, now: Instant, id: u64, key: &ClientKey, code: u16, reason: &str, response: &Message) {
        if code == 100 {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(relay) = call.relays.get_mut(key) else { return };
        let (origin, request, from, already) = (relay.origin.clone(), relay.request.clone(), relay.to, relay.answered);
        if code >= 200 {
            relay.answered = true;
        }
        if already {
            // A retransmitted 2xx of a relayed re-INVITE: its ACK was lost; send it again
            // (unless it still waits for the asker's answer).
            let waiting = call.relay_ack_waits.as_ref().is_some_and(|(side, _)| *side == from);
            if (200..300).contains(&code) && request.method() == Some("INVITE") && !waiting {
                self.ack_relayed(id, from, response, None);
            }
            return;
        }
        // A browser's hold or resume: its answer is the box's, once the SIP side agreed.
        let held = call
            .browser
            .as_mut()
            .filter(|b| b.side == from.other() && code >= 200)
            .and_then(|b| b.pending_answer.take());
        let body = match held {
            Some(answer) if (200..300).contains(&code) => Some(answer),
            _ => self.relay_body(id, from, response).unwrap_or(None),
        };
        let Some(answer) = self.dialog_response(id, from.other(), &request, code, reason, body) else { return };
        let invite = request.method() == Some("INVITE");
        if invite && (200..300).contains(&code) {
            // The far side of a re-INVITE gets its ACK from the box at once and the asker's
            // ACK only stops the 2xx retransmissions — unless the re-INVITE had no offer: then
            // the 2xx carries one and the ACK must carry the asker's answer, so it waits.
            if request.body.is_empty() && !response.body.is_empty() {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.relay_ack_waits = Some((from, response.clone()));
                }
            } else {
                self.ack_relayed(id, from, response, None);
            }
            if let Some(call) = self.calls.get_mut(&id) {
                call.awaiting_ack.push(origin.clone());
            }
        }
        self.sip.respond(now, &origin, answer);
    }

    /// A response from the box's dialog with `side` to its request (To tag,
    /// Contact on 1xx/2xx, an SDP body when given).
    fn dialog_response(
        &self,
        id: u64,
        side: Side,
        request: &Message,
        code: u16,
        reason: &str,
        body: Option<Vec<u8>>,
    ) -> Option<Message> {
        let asker = self.calls.get(&id).and_then(|c| leg(c, side))?;
        let mut answer = request.response(code, reason);
        if let Some(to) = answer.get("To") {
            let tagged = format!("{};tag={}", strip_tag(to), asker.local_tag);
            answer.set("To", tagged);
        }
        if (101..300).contains(&code) {
            answer.push("Contact", contact_of(asker));
        }
        if let Some(body) = body {
            answer.push("Content-Type", "application/sdp");
            answer.body = body;
        }
        Some(answer)
    }

    /// A re-INVITE on a call with a browser. The box's WebRTC session is not
    /// renegotiated: a browser's hold or resume (the same ICE session, another
    /// direction) goes to the SIP side as a re-INVITE with the box's plain SDP
    /// in that direction, and the browser is answered once the SIP side agrees;
    /// a phone's hold or resume is answered by the box (the browser hears the
    /// phone's music on hold, or nothing). Anything else gets 488.
    fn browser_call_reinvite(&mut self, now: Instant, key: ServerKey, id: u64, side: Side, request: Message) {
        let refuse = |b2bua: &mut Self, reason: &str| {
            let response = with_warning(request.response(488, "Not Acceptable Here"), reason);
            b2bua.sip.respond(now, &key, response);
        };
        let offer = match sdp_of(&request) {
            Ok(Some(offer)) => offer,
            _ => return refuse(self, "a re-INVITE without an offer on a WebRTC call is not supported yet"),
        };
        let direction = webrtc::offered_direction(&offer);
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(browser) = call.browser.as_mut() else { return };
        let (Some(to_sip), Some(to_browser)) = (browser.to_sip.clone(), browser.to_browser.clone()) else {
            return refuse(self, "the call's media is not set up yet");
        };
        if side != browser.side {
            let Ok(answer) = webrtc::redirected(&to_sip, direction.answer()) else {
                return refuse(self, "the box could not answer the new direction");
            };
            browser.to_sip = Some(answer.clone());
            call.awaiting_ack.push(key.clone());
            if let Some(response) = self.dialog_response(id, side, &request, 200, "OK", Some(answer)) {
                self.sip.respond(now, &key, response);
            }
            return;
        }
        if browser.pending_answer.is_some() || browser.renegotiating.is_some() {
            // RFC 3261 §14.2: one offer at a time.
            return self.reply(now, &key, &request, 491, "Request Pending");
        }
        if !browser.remote.as_ref().is_some_and(|before| webrtc::same_session(before, &offer)) {
            // New ICE credentials (an ICE restart): the box's WebRTC session answers it.
            let offer_text = offer.to_string();
            browser.renegotiating = Some(Renegotiation { key, request, offer });
            return self.actions.push_back(Action::Renegotiate { call: id, index: 0, offer: offer_text });
        }
        let Ok(answer) = webrtc::redirected(&to_browser, direction.answer()) else {
            return refuse(self, "the box could not answer the new direction");
        };
        browser.remote = Some(offer);
        self.reoffer_direction(now, id, key, request, direction, answer);
    }

    /// The browser's new direction goes to the SIP side as a re-INVITE with
    /// the box's plain SDP saying it; `answer` goes to the browser once the
    /// SIP side agreed (see `relay_response`).
    fn reoffer_direction(
        &mut self,
        now: Instant,
        id: u64,
        key: ServerKey,
        request: Message,
        direction: Direction,
        answer: Vec<u8>,
    ) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(browser) = call.browser.as_mut() else { return };
        let Some(Ok(sip_offer)) = browser.to_sip.as_deref().map(|sdp| webrtc::redirected(sdp, direction)) else {
            let response =
                with_warning(request.response(488, "Not Acceptable Here"), "the box could not offer the new direction");
            return self.sip.respond(now, &key, response);
        };
        browser.to_sip = Some(sip_offer.clone());
        browser.to_browser = Some(answer.clone());
        browser.pending_answer = Some(answer);
        let other = browser.side.other();
        let Some(flow) = leg(call, other).map(|l| l.flow) else { return };
        let Some(relayed) = self.dialog_request(id, other, "INVITE", Some(sip_offer)) else { return };
        let sent = self.sip.send_request(now, flow, relayed);
        self.sent.insert(sent.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            call.relays.insert(sent, Relay { origin: key, request, to: other, answered: false });
        }
    }

    /// The browser session's answer to a re-INVITE handed to it (an ICE
    /// restart), or why it refused. The browser gets it at once; when the
    /// offer also changed the direction, once the SIP side took that too.
    pub fn handle_renegotiated(&mut self, now: Instant, call: u64, answer: Result<String, String>) {
        self.now = now;
        let Some(c) = self.calls.get_mut(&call) else { return };
        let Some(browser) = c.browser.as_mut() else { return };
        let Some(Renegotiation { key, request, offer }) = browser.renegotiating.take() else { return };
        let answer = match answer {
            Ok(answer) => answer.into_bytes(),
            Err(reason) => {
                let response = with_warning(request.response(488, "Not Acceptable Here"), &reason);
                return self.sip.respond(now, &key, response);
            }
        };
        let direction = webrtc::offered_direction(&offer);
        let before = browser.remote.as_ref().map(webrtc::offered_direction);
        browser.remote = Some(offer);
        if before.is_some_and(|before| before != direction) {
            return self.reoffer_direction(now, call, key, request, direction, answer);
        }
        browser.to_browser = Some(answer.clone());
        c.awaiting_ack.push(key.clone());
        let side = browser.side;
        if let Some(response) = self.dialog_response(call, side, &request, 200, "OK", Some(answer)) {
            self.sip.respond(now, &key, response);
        }
    }

    /// The ACK of a relayed re-INVITE's 2xx, on the side that answered.
    fn ack_relayed(&mut self, id: u64, side: Side, response: &Message, body: Option<Vec<u8>>) {
        if let Some(flow) = self.calls.get(&id).and_then(|c| leg(c, side)).map(|l| l.flow)
            && let Some(mut ack) = self.dialog_request(id, side, "ACK", body)
        {
            if let Some((number, _)) = response.cseq() {
                ack.set("CSeq", format!("{number} ACK"));
            }
            self.sip.send_raw(flow, &ack);
        }
    }

    /// The ACK of a 2xx the box sent on either leg: stop retransmitting it.
    /// (An ACK carrying the answer to a late offer is not relayed yet.)
    fn on_ack(&mut self, request: &Message, flow: &Flow) {
        let call_id = request.get("Call-ID").unwrap_or("");
        let Some(&(id, side)) = self.dialogs.get(&dialog_key(call_id, flow)) else { return };
        let Some(call) = self.calls.get_mut(&id) else { return };
        for key in std::mem::take(&mut call.awaiting_ack) {
            self.sip.ack_2xx(&key);
        }
        // Late offer: the caller's ACK carries the answer leg B waits for.
        if side == Side::A && std::mem::take(&mut call.b_ack_waits_for_answer) {
            let body = self.relay_body(id, Side::A, request).unwrap_or_else(|e| {
                tracing::info!(call = id, error = %e, "bad SDP answer in the caller's ACK");
                None
            });
            return self.send_ack_b(id, body);
        }
        // An offerless re-INVITE: the asker's ACK carries the answer the other side waits for.
        if let Some((answered_by, response)) = call.relay_ack_waits.take_if(|(by, _)| *by != side) {
            let body = self.relay_body(id, side, request).unwrap_or_else(|e| {
                tracing::info!(call = id, error = %e, "bad SDP answer in an ACK");
                None
            });
            self.ack_relayed(id, answered_by, &response, body);
        }
    }

    fn on_no_ack(&mut self, now: Instant, key: &ServerKey) {
        let Some(id) = self.calls.iter().find(|(_, c)| &c.a_invite == key).map(|(id, _)| *id) else { return };
        if self.calls.get(&id).map(|c| c.state) == Some(CallState::Answered) {
            self.send_in_dialog(now, id, Side::A, "BYE", None);
            self.send_in_dialog(now, id, Side::B, "BYE", None);
            self.end(now, id, 200, "no-ack");
        }
    }

    /// The call is over for the caller: record it and free its media.
    fn end(&mut self, now: Instant, id: u64, status: u16, cause: &str) {
        let Some(call) = self.calls.get(&id) else { return };
        let record = CallRecord {
            call: id,
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            destination: call.destination.clone(),
            total: now.saturating_duration_since(call.started),
            talk: call.answered.map(|a| now.saturating_duration_since(a)).unwrap_or_default(),
            answered: call.answered.is_some(),
            status: if call.answered.is_some() { 200 } else { status },
            cause: cause.to_string(),
        };
        self.actions.push_back(Action::Record(record));
        if call.state != CallState::Cancelled {
            self.forget(now, id);
        }
    }

    fn forget(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.remove(&id) else { return };
        self.sent.retain(|_, call| *call != id);
        // Requests still waiting for the other side's answer get one now.
        let now_pending: Vec<&Relay> = call.relays.values().filter(|r| !r.answered).collect();
        for relay in now_pending {
            let (code, reason) = if relay.request.method() == Some("INVITE") {
                (487, "Request Terminated")
            } else {
                (481, "Call/Transaction Does Not Exist")
            };
            let response = relay.request.response(code, reason);
            self.sip.respond(now, &relay.origin, response);
        }
        if let Some(Renegotiation { key, request, .. }) = call.browser.and_then(|b| b.renegotiating) {
            self.sip.respond(now, &key, request.response(487, "Request Terminated"));
        }
        self.dialogs.remove(&dialog_key(&call.a.call_id, &call.a.flow));
        if let Some(b) = &call.b {
            self.dialogs.remove(&dialog_key(&b.call_id, &b.flow));
        }
        for stream in &call.streams {
            self.ports.release(stream.a_port);
            self.ports.release(stream.b_port);
        }
        if !call.streams.is_empty() {
            self.actions.push_back(Action::Close { call: id });
        }
    }

    /// OPTIONS to each trunk every keepalive interval; no answer within
    /// `failover_after` marks it down, any answer marks it up.
    fn probe_trunks(&mut self, now: Instant) {
        let names: Vec<String> = self.trunks.keys().cloned().collect();
        for name in names {
            let Some(health) = self.trunks.get(&name) else { continue };
            if let Some((_, deadline)) = &health.probe
                && *deadline <= now
            {
                self.trunk_probe_result(now, &name, false);
            }
            let Some(health) = self.trunks.get(&name) else { continue };
            if health.probe.is_none() && health.next_probe.is_some_and(|t| t <= now) {
                let Some(trunk) = self.config.trunks.iter().find(|t| t.name == name).cloned() else { continue };
                let request = self.options_request(&trunk);
                let flow = self.trunk_flow(&trunk);
                let key = self.sip.send_request(now, flow, request);
                if let Some(health) = self.trunks.get_mut(&name) {
                    health.probe = Some((key, now + self.config.failover_after));
                    health.next_probe = None;
                }
            }
        }
    }

    /// How requests reach a trunk: from the box's SIP port.
    fn trunk_flow(&self, trunk: &TrunkTarget) -> Flow {
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.config.sip_port);
        Flow { transport: trunk.transport, local, remote: trunk.addr }
    }

    fn options_request(&mut self, trunk: &TrunkTarget) -> Message {
        let local_ip = self.local_ip_toward(trunk.addr.ip());
        let (call_id, tag) = (format!("{}@{}", self.token(), ip_text(local_ip)), self.token());
        self.trunk_request(trunk, "OPTIONS", "keepalive", None, &call_id, &tag, 1)
    }

    /// A request to a trunk outside any dialog (OPTIONS, REGISTER) from `user` at the box.
    #[allow(clippy::too_many_arguments)]
    fn trunk_request(
        &mut self,
        trunk: &TrunkTarget,
        method: &str,
        from_user: &str,
        to_user: Option<&str>,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
    ) -> Message {
        let local_ip = self.local_ip_toward(trunk.addr.ip());
        let host = host_port(trunk.addr);
        let mut m = Message {
            start: StartLine::Request { method: method.into(), uri: format!("sip:{host}") },
            headers: Vec::new(),
            body: Vec::new(),
        };
        let sent_by = SocketAddr::new(local_ip, self.config.sip_port);
        m.push(
            "Via",
            format!(
                "SIP/2.0/{} {};branch=z9hG4bK{};rport",
                trunk.transport.via_name(),
                host_port(sent_by),
                self.token()
            ),
        );
        m.push("Max-Forwards", "70");
        let from_host = if to_user.is_some() { host.clone() } else { ip_text(local_ip) };
        m.push("From", format!("<sip:{from_user}@{from_host}>;tag={from_tag}"));
        m.push(
            "To",
            match to_user {
                Some(user) => format!("<sip:{user}@{host}>"),
                None => format!("<sip:{host}>"),
            },
        );
        m.push("Call-ID", call_id);
        m.push("CSeq", format!("{cseq} {method}"));
        m.push("User-Agent", self.sip.config().user_agent.clone());
        m
    }

    fn registering_trunk(&self, key: &ClientKey) -> Option<String> {
        self.trunks
            .iter()
            .find(|(_, h)| h.registration.as_ref().is_some_and(|r| r.pending.as_ref() == Some(key)))
            .map(|(n, _)| n.clone())
    }

    /// REGISTERs to the trunks the box registers at, when due.
    fn register_trunks(&mut self, now: Instant) {
        let due: Vec<String> = self
            .trunks
            .iter()
            .filter(|(_, h)| h.registration.as_ref().is_some_and(|r| r.pending.is_none() && r.next_at <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.send_register(now, &name, None);
        }
    }

    fn send_register(&mut self, now: Instant, name: &str, authorization: Option<(&str, String)>) {
        let Some(trunk) = self.config.trunks.iter().find(|t| t.name == name).cloned() else { return };
        let Some((username, _)) = trunk.credentials.clone() else { return };
        let local_ip = self.local_ip_toward(trunk.addr.ip());
        let (fresh_call_id, fresh_tag) = (format!("{}@{}", self.token(), ip_text(local_ip)), self.token());
        let Some(registration) = self.trunks.get_mut(name).and_then(|h| h.registration.as_mut()) else { return };
        if registration.call_id.is_empty() {
            // One Call-ID for all of this box's registrations there (RFC 3261 §10.2.4).
            (registration.call_id, registration.from_tag) = (fresh_call_id, fresh_tag);
        }
        registration.cseq += 1;
        registration.authenticated = authorization.is_some();
        let (call_id, tag, cseq) = (registration.call_id.clone(), registration.from_tag.clone(), registration.cseq);
        let mut request = self.trunk_request(&trunk, "REGISTER", &username, Some(&username), &call_id, &tag, cseq);
        let contact = SocketAddr::new(local_ip, self.config.sip_port);
        request.push("Contact", format!("<sip:{username}@{}>", host_port(contact)));
        request.push("Expires", TRUNK_REGISTER_EXPIRES.to_string());
        if let Some((header, value)) = authorization {
            request.push(header, value);
        }
        let key = self.sip.send_request(now, self.trunk_flow(&trunk), request);
        if let Some(registration) = self.trunks.get_mut(name).and_then(|h| h.registration.as_mut()) {
            registration.pending = Some(key);
        }
    }

    fn trunk_register_answer(&mut self, now: Instant, name: &str, response: &Message) {
        let StartLine::Response { code, .. } = response.start else { return };
        let Some(trunk) = self.config.trunks.iter().find(|t| t.name == name).cloned() else { return };
        let Some(registration) = self.trunks.get_mut(name).and_then(|h| h.registration.as_mut()) else { return };
        if code < 200 {
            return;
        }
        registration.pending = None;
        match code {
            200..=299 => {
                // The lifetime granted: our Contact's expires, else Expires, else what we asked.
                let granted = response
                    .get_all("Contact")
                    .iter()
                    .find_map(|c| param(c, "expires").and_then(|e| e.parse::<u64>().ok()))
                    .or_else(|| response.get("Expires").and_then(|e| e.trim().parse().ok()))
                    .unwrap_or(u64::from(TRUNK_REGISTER_EXPIRES))
                    .clamp(10, 86_400);
                registration.registered_until = Some(now + Duration::from_secs(granted));
                registration.next_at = now + Duration::from_secs(granted * 4 / 5);
                tracing::info!(trunk = %name, expires = granted, "registered at the trunk");
            }
            401 | 407 if !registration.authenticated => {
                let (challenge_header, answer_header) = if code == 407 {
                    ("Proxy-Authenticate", "Proxy-Authorization")
                } else {
                    ("WWW-Authenticate", "Authorization")
                };
                let Some((username, password)) = trunk.credentials.clone() else { return };
                let uri = format!("sip:{}", host_port(trunk.addr));
                let cnonce = self.token();
                let answer = response.lines(challenge_header).find_map(|c| {
                    branchgate_sip::digest::client_authorization(c, "REGISTER", &uri, &username, &password, &cnonce)
                });
                match answer {
                    Some(value) => self.send_register(now, name, Some((answer_header, value))),
                    None => {
                        tracing::warn!(trunk = %name, "trunk asks for an authentication the box cannot do");
                        if let Some(r) = self.trunks.get_mut(name).and_then(|h| h.registration.as_mut()) {
                            r.next_at = now + TRUNK_REGISTER_RETRY;
                        }
                    }
                }
            }
            _ => {
                tracing::warn!(trunk = %name, code, "registration at the trunk refused");
                registration.registered_until = None;
                registration.next_at = now + TRUNK_REGISTER_RETRY;
            }
        }
    }

    fn trunk_probe_result(&mut self, now: Instant, name: &str, up: bool) {
        let interval = self.config.trunks.iter().find(|t| t.name == name).and_then(|t| t.keepalive);
        let Some(health) = self.trunks.get_mut(name) else { return };
        if health.up != up {
            tracing::info!("{}", format!("trunk {name} is {}", if up { "up" } else { "down" }));
        }
        health.up = up;
        health.probe = None;
        health.next_probe = interval.map(|i| now + i);
    }
}

/// Whether `message` requires the SIP option `tag` (`Require: 100rel, timer`).
fn requires(message: &Message, tag: &str) -> bool {
    message.lines("Require").flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(tag))
}

/// The RSeq of a provisional response sent reliably (`Require: 100rel`, RFC 3262 §7.1).
fn reliable_rseq(response: &Message) -> Option<u32> {
    if !requires(response, "100rel") {
        return None;
    }
    response.get("RSeq")?.trim().parse().ok()
}

fn leg(call: &Call, side: Side) -> Option<&Leg> {
    match side {
        Side::A => Some(&call.a),
        Side::B => call.b.as_ref(),
    }
}

fn leg_mut(call: &mut Call, side: Side) -> Option<&mut Leg> {
    match side {
        Side::A => Some(&mut call.a),
        Side::B => call.b.as_mut(),
    }
}

/// A header value without its `;tag=` parameter.
fn strip_tag(value: &str) -> String {
    let (addr, params) = match value.rfind('>') {
        Some(end) => value.split_at(end + 1),
        None => match value.find(';') {
            Some(i) => value.split_at(i),
            None => (value, ""),
        },
    };
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| !p.trim().is_empty() && !p.trim().to_ascii_lowercase().starts_with("tag="))
        .collect();
    if kept.is_empty() { addr.trim().to_string() } else { format!("{};{}", addr.trim(), kept.join(";")) }
}

/// Where to reach a registered contact. Over UDP, a contact whose address
/// is the one the REGISTER came from is not behind NAT: its own port counts
/// (phones often register from another port than they listen on). Otherwise,
/// and on connections, the REGISTER's flow is the way back (NAT traversal).
/// The key of a leg in `B2bua::dialogs`: its Call-ID, and on the internal leg, where both ends
/// are the box's and share the Call-ID, which end.
fn dialog_key(call_id: &str, flow: &Flow) -> String {
    match flow.transport {
        Transport::Loop => format!("{call_id} loop:{}", flow.local.port()),
        _ => call_id.to_string(),
    }
}

/// The two ends of the box's internal leg (loopback addresses: its SDP anchors media on
/// 127.0.0.1, where the relays of both calls meet; no socket ever has these SIP addresses).
fn internal_ends() -> (SocketAddr, SocketAddr) {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    (SocketAddr::new(localhost, 1), SocketAddr::new(localhost, 2))
}

fn user_flow(binding: &Binding) -> Flow {
    let mut flow = binding.flow;
    if flow.transport == Transport::Udp
        && let Some(addr) = uri_socket_addr(&binding.contact)
        && addr.ip() == flow.remote.ip()
    {
        flow.remote = addr;
    }
    flow
}

/// `sip:user@192.0.2.1:5062;transport=udp` → 192.0.2.1:5062 (IP literals only).
fn uri_socket_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("sip:")?;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split([';', '?']).next()?;
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Some(addr);
    }
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (host_port, 5060),
    };
    let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn host_port(addr: SocketAddr) -> String {
    format!("{}:{}", ip_text(addr.ip()), addr.port())
}

fn contact_of(leg: &Leg) -> String {
    let transport = match leg.flow.transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
        Transport::Ws => ";transport=ws",
        Transport::Loop => ";transport=loop",
    };
    format!("<sip:{}{transport}>", host_port(SocketAddr::new(leg.local_ip, leg.flow.local.port())))
}

/// The longest key the box plays from a SIP INFO (a longer `Duration` is a mistake or abuse).
const MAX_INFO_KEY_MS: u32 = 5000;

/// The key and duration (ms) of a DTMF SIP INFO: `application/dtmf-relay`
/// (`Signal=5` / `Duration=160` lines) or `application/dtmf` (the key alone). A signal
/// is a key (`0`-`9`, `*`, `#`, `A`-`D`) or, as some PBXs send, its RFC 4733 event number
/// (`10` is `*`, `11` is `#`).
fn dtmf_of_info(request: &Message) -> Option<(u8, u32)> {
    let body = std::str::from_utf8(&request.body).ok()?;
    let (mut signal, mut duration) = (None, 160);
    match media_type(request).as_deref() {
        Some("application/dtmf-relay") => {
            for line in body.lines() {
                let Some((name, value)) = line.split_once('=') else { continue };
                match name.trim().to_ascii_lowercase().as_str() {
                    "signal" => signal = Some(value.trim()),
                    "duration" => duration = value.trim().parse().unwrap_or(160),
                    _ => {}
                }
            }
        }
        Some("application/dtmf") => signal = Some(body.trim()),
        _ => return None,
    }
    let event = match signal?.parse::<u8>() {
        Ok(number) => (number <= 15).then_some(number)?,
        Err(_) => {
            let mut chars = signal?.chars();
            let key = chars.next()?;
            chars.next().is_none().then_some(())?;
            branchgate_rtp::dtmf_event(key)?
        }
    };
    Some((event, duration.clamp(40, MAX_INFO_KEY_MS)))
}

/// The media type of a message's body (`Content-Type` without parameters, lower case).
fn media_type(message: &Message) -> Option<String> {
    message.get("Content-Type").map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The SDP body of a message, if it has one.
fn sdp_of(message: &Message) -> Result<Option<SessionDescription>, String> {
    if message.body.is_empty() {
        return Ok(None);
    }
    let sdp_type = media_type(message).is_none_or(|t| t == "application/sdp");
    if !sdp_type {
        return Err("only application/sdp bodies are relayed".into());
    }
    SessionDescription::parse(&message.body).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(content_type: &str, body: &str) -> Message {
        let text = format!(
            "INFO sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n\
To: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 2 INFO\r\nContent-Type: {content_type}\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Message::parse(text.as_bytes()).expect("message")
    }

    #[test]
    fn info_keys_by_name_or_event_number() {
        let relay = |body: &str| dtmf_of_info(&info("application/dtmf-relay", body));
        assert_eq!(relay("Signal=5\r\nDuration=160\r\n"), Some((5, 160)));
        assert_eq!(relay("Signal= #\r\nDuration=250\r\n"), Some((11, 250)));
        assert_eq!(relay("Signal=10\r\nDuration=100\r\n"), Some((10, 100)), "10 is *, not 1");
        assert_eq!(relay("Signal=11\r\n"), Some((11, 160)), "11 is #");
        assert_eq!(relay("Signal=16\r\n"), None, "16 is flash, not a key");
        assert_eq!(relay("Signal=12x\r\n"), None);
        assert_eq!(relay("Signal=5\r\nDuration=86400000\r\n"), Some((5, MAX_INFO_KEY_MS)), "capped");
        assert_eq!(dtmf_of_info(&info("application/dtmf", "*")), Some((10, 160)));
        assert_eq!(dtmf_of_info(&info("text/plain", "5")), None);
    }
}
