//! The TURN server state machine (RFC 8656 over UDP, STUN Binding per RFC 8489).
//!
//! Sans-IO: the driver hands in datagrams and the time, and carries out what
//! comes back. The relay data path is zero-copy: a packet from a client is
//! forwarded as a slice of the received buffer; a packet from a peer is
//! framed in place, in headroom the driver leaves before the payload.
//! Control traffic (requests and their responses, relay sockets to open or
//! close) goes through [`Server::poll_output`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::auth::{NonceCheck, Nonces, long_term_key, long_term_key_sha256, rest_expiry, rest_password, userhash};
use crate::policy::{PeerPolicy, RelayProtocol, canonical};
use crate::stun::{Class, HEADER_LEN, Message, Writer, attr, family, method, reason};

/// Bytes the driver leaves free before a peer's payload: the largest Data
/// indication header (STUN header + XOR-PEER-ADDRESS for IPv6 + DATA header).
pub const HEADROOM: usize = HEADER_LEN + 4 + 20 + 4;
/// Bytes the driver leaves free after a peer's payload (attribute padding).
pub const TAILROOM: usize = 3;

const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Peers one allocation may have permissions for (508 beyond, RFC 8656 §9.2);
/// a call needs a handful, and the list is searched per packet.
const MAX_PERMISSIONS: usize = 64;
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 narrowed channels to 0x4000-0x4FFF; RFC 5766 clients (coturn's
/// own tools among them) still use up to 0x7FFF, which ChannelData framing allows.
const CHANNELS: RangeInclusive<u16> = 0x4000..=0x7FFF;
const UDP: u8 = 17;
const TCP: u8 = 6;
/// A peer connection waits this long for its client's ConnectionBind (RFC 6062 §5.2, §5.3).
const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Peer connections one TCP allocation may have at once.
const MAX_PEER_CONNECTIONS: usize = 64;
/// Failed authentications from one address within [`AUTH_FAILURE_WINDOW`]
/// after which its requests are dropped unanswered until the window ends.
pub const AUTH_FAILURE_LIMIT: u32 = 20;
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Challenges answered per client address within [`CHALLENGE_WINDOW`] over UDP.
pub const CHALLENGE_LIMIT: u32 = 200;
pub const CHALLENGE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE sent in responses to authenticated requests (never to unauthenticated ones).
    pub software: Option<String>,
    /// Long-term keys by username.
    pub users: HashMap<String, UserKey>,
    /// Shared secret for TURN REST credentials.
    pub rest_secret: Option<Vec<u8>>,
    pub policy: PeerPolicy,
    /// Address relay sockets bind to: the IPv4 relay, or the IPv6 one on an IPv6-only box.
    pub relay_ip: IpAddr,
    /// Address announced in XOR-RELAYED-ADDRESS (the public one when behind NAT).
    pub advertised_relay_ip: Option<IpAddr>,
    /// The IPv6 relay address beside an IPv4 `relay_ip`: allocations asking for IPv6
    /// (REQUESTED-ADDRESS-FAMILY, or ADDITIONAL-ADDRESS-FAMILY for both) relay from it.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Announced for relays on `relay_ipv6` (its public form, if it differs).
    pub advertised_relay_ipv6: Option<Ipv6Addr>,
    pub relay_ports: RangeInclusive<u16>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub nonce_lifetime_secs: u64,
    /// Bytes per second one allocation may relay in each direction (0: no cap). Beyond it
    /// datagrams are dropped, as a congested link would, so one user cannot starve the box.
    pub max_allocation_bytes_per_second: u64,
}

impl ServerConfig {
    pub fn new(realm: impl Into<String>, relay_ip: IpAddr) -> Self {
        ServerConfig {
            realm: realm.into(),
            software: Some(concat!("branchgate ", env!("CARGO_PKG_VERSION")).into()),
            users: HashMap::new(),
            rest_secret: None,
            policy: PeerPolicy::default(),
            relay_ip,
            advertised_relay_ip: None,
            relay_ipv6: None,
            advertised_relay_ipv6: None,
            relay_ports: 49152..=65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations: 10_000,
            max_allocations_per_user: 100,
            nonce_lifetime_secs: 600,
            max_allocation_bytes_per_second: 0,
        }
    }
}

impl ServerConfig {
    /// Where relays of `family` bind and the address announced for them; `None` when the box
    /// relays no such family.
    fn relay_for(&self, family: Family) -> Option<(IpAddr, Option<IpAddr>)> {
        match family {
            Family::V4 => self.relay_ip.is_ipv4().then_some((self.relay_ip, self.advertised_relay_ip)),
            Family::V6 => match self.relay_ipv6 {
                Some(v6) => Some((IpAddr::V6(v6), self.advertised_relay_ipv6.map(IpAddr::V6))),
                None => self.relay_ip.is_ipv6().then_some((self.relay_ip, self.advertised_relay_ip)),
            },
        }
    }
}

/// An address family of relayed transport addresses (RFC 8656 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family a datagram to `ip` travels in: an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is IPv4 on the wire. Other embeddings (NAT64, 6to4) are
    /// IPv6 packets, although the peer policy judges them by the IPv4 address inside.
    pub fn of(ip: IpAddr) -> Family {
        if ip.to_canonical().is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The value in REQUESTED-/ADDITIONAL-ADDRESS-FAMILY and ADDRESS-ERROR-CODE.
    fn code(self) -> u8 {
        match self {
            Family::V4 => family::IPV4,
            Family::V6 => family::IPV6,
        }
    }

    fn from_code(code: u8) -> Option<Family> {
        match code {
            family::IPV4 => Some(Family::V4),
            family::IPV6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// A peer address as the relay socket sends to it: IPv4-mapped IPv6 unwrapped, so it goes
/// from the IPv4 relay and matches the plain IPv4 source its answers come from.
fn on_the_wire(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// A user's long-term keys, `H(user:realm:password)` with MD5 and SHA-256
/// (RFC 8489 §9.2.2; PASSWORD-ALGORITHM picks one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserKey {
    pub md5: [u8; 16],
    pub sha256: [u8; 32],
}

impl UserKey {
    pub fn from_password(username: &str, realm: &str, password: &str) -> Self {
        UserKey {
            md5: long_term_key(username, realm, password),
            sha256: long_term_key_sha256(username, realm, password),
        }
    }
}

/// The key and MAC a request was authenticated with; its responses use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrityKey {
    bytes: [u8; 32],
    len: usize,
    /// MESSAGE-INTEGRITY-SHA256 rather than MESSAGE-INTEGRITY.
    sha256_mac: bool,
}

impl IntegrityKey {
    fn new(key: &[u8], sha256_mac: bool) -> Self {
        let mut bytes = [0u8; 32];
        let len = key.len().min(32);
        bytes[..len].copy_from_slice(&key[..len]);
        IntegrityKey { bytes, len, sha256_mac }
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn verify(&self, msg: &Message<'_>) -> bool {
        if self.sha256_mac { msg.integrity_sha256_ok(self.key()) } else { msg.integrity_ok(self.key()) }
    }

    fn sign(&self, w: &mut Writer<'_>) {
        if self.sha256_mac {
            w.integrity_sha256(self.key());
        } else {
            w.integrity(self.key());
        }
    }
}

/// PASSWORD-ALGORITHMS the server offers (RFC 8489 §14.11): MD5 (1) and SHA-256 (2), no parameters.
const PASSWORD_ALGORITHMS: [u8; 8] = [0, 1, 0, 0, 0, 2, 0, 0];
/// The nonce cookie announcing RFC 8489 security features (§9.2): "obMatJos2" and
/// base64 of 24 feature bits, here "password algorithms" (bit 0) and "username anonymity" (bit 1).
const NONCE_COOKIE: &str = "obMatJos2AAAD";

/// Control traffic for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `data` to the client of `tuple` (for TCP/TLS: on its connection).
    Reply { tuple: FiveTuple, data: Vec<u8> },
    /// Open a relay socket on `ip:port` and report with [`Server::relay_bound`]: UDP, or
    /// with `tcp` a listener accepting peers ([`Server::peer_connection`], RFC 6062). A dual
    /// allocation asks for two, one per family, on the same port number.
    BindRelay { ip: IpAddr, port: u16, tcp: bool },
    /// The allocation on this relay port is gone: close its sockets (of either family).
    CloseRelay { port: u16 },
    /// Connect to `peer` over TCP from the relay's address and report with
    /// [`Server::peer_connect_result`] (RFC 6062 Connect).
    ConnectPeer { connection: u32, from: IpAddr, peer: SocketAddr },
    /// From now on the client connection `data` carries the raw bytes of peer connection
    /// `connection`, both ways (RFC 6062 ConnectionBind succeeded; its answer precedes this).
    JoinData { connection: u32, data: FiveTuple },
    /// Close peer connection `connection` (and its client data connection, if joined).
    ClosePeer { connection: u32 },
}

/// The families an allocation relays (by [`Family::index`]), and the one asked for but not
/// given (family, error code, and the ADDRESS-ERROR-CODE attribute type to say it with).
type AllocationFamilies = ([bool; 2], Option<(Family, u16, u16)>);

/// A TCP connection between a relay and a peer (RFC 6062).
#[derive(Debug)]
struct PeerConnection {
    allocation: u32,
    peer: SocketAddr,
    state: PeerState,
}

#[derive(Debug)]
enum PeerState {
    /// The driver connects on the client's Connect; its answer waits.
    Connecting { tid: [u8; 12], fingerprint: bool },
    /// Connected; the client's ConnectionBind must come by this time.
    AwaitingBind { until: Instant },
    /// Joined with this client data connection.
    Bound { data: FiveTuple },
}

/// What to do with a data packet, right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward<'a> {
    None,
    /// Send `payload` from relay port `relay_port` to `peer`, on the socket of the
    /// peer's family (IPv4 or IPv6; `peer` is never IPv4-mapped).
    ToPeer {
        relay_port: u16,
        peer: SocketAddr,
        payload: &'a [u8],
    },
    /// Send `packet` to the client of `tuple`.
    ToClient {
        tuple: FiveTuple,
        packet: &'a [u8],
    },
}

/// How the client reaches the server (the relay towards peers is always UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Stream transports frame ChannelData with padding (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The 5-tuple of an allocation (RFC 8656 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub transport: Transport,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    tuple: FiveTuple,
    username: String,
    key: IntegrityKey,
    /// The one port number of every relayed address of the allocation.
    relay_port: u16,
    /// The families relayed: IPv4, IPv6 or both (RFC 8656 dual allocation), by [`Family::index`].
    families: [bool; 2],
    /// The relayed transport address of each family once its socket is bound.
    relayed: [Option<SocketAddr>; 2],
    /// A family asked for (ADDITIONAL-ADDRESS-FAMILY) that could not be given, and why:
    /// the answer's ADDRESS-ERROR-CODE (RFC 8656 §7.2).
    address_error: Option<(Family, u16, u16)>,
    expires: Instant,
    created: Instant,
    /// Installed permissions: canonical peer IP and expiry.
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
    /// The Allocate transaction (for retransmissions and the deferred answer).
    transaction_id: [u8; 12],
    request_had_fingerprint: bool,
    lifetime: Duration,
    bind_attempts: u8,
    /// A TCP relay (RFC 6062): peers are reached over TCP connections.
    tcp: bool,
    /// RESERVATION-TOKEN for the odd port kept for a later allocation (EVEN-PORT R bit).
    reservation_token: Option<[u8; 8]>,
    to_peer: Counter,
    to_client: Counter,
    /// The bandwidth cap's budget toward the peer and toward the client.
    to_peer_budget: Budget,
    to_client_budget: Budget,
}

/// A token bucket over bytes: refilled at the cap's rate, holding at most one second of it
/// (a video keyframe may burst; a sustained flood may not). Datagrams over the budget are
/// dropped ([`Budget::take`]); a stream (RFC 6062) waits instead ([`Budget::wait`]).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    bytes: u64,
    refilled: Instant,
}

impl Budget {
    pub fn full(now: Instant, rate: u64) -> Budget {
        Budget { bytes: rate, refilled: now }
    }

    /// How long a stream must wait before sending `len` bytes (at most `rate`: one second's
    /// worth); zero when they are taken now. `rate` 0 means no cap.
    pub fn wait(&mut self, now: Instant, rate: u64, len: usize) -> Duration {
        if self.take(now, rate, len) {
            return Duration::ZERO;
        }
        let missing = (len as u64).saturating_sub(self.bytes);
        // Rounded up: waking a microsecond early would only wait again.
        Duration::from_micros(missing.saturating_mul(1_000_000).div_ceil(rate.max(1)))
    }

    /// Takes `len` bytes from the budget; `false` (nothing taken) when there are not enough.
    /// `rate` 0 means no cap.
    pub fn take(&mut self, now: Instant, rate: u64, len: usize) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned =
            u64::try_from(elapsed.as_micros().saturating_mul(u128::from(rate)) / 1_000_000).unwrap_or(u64::MAX);
        // The instant moves only when whole bytes were earned: fractions keep accruing.
        if earned > 0 {
            self.bytes = self.bytes.saturating_add(earned).min(rate);
            self.refilled = now;
        }
        let len = len as u64;
        if self.bytes < len {
            return false;
        }
        self.bytes -= len;
        true
    }
}

impl Allocation {
    fn relay_protocol(&self) -> RelayProtocol {
        if self.tcp { RelayProtocol::Tcp } else { RelayProtocol::Udp }
    }

    /// The relayed address of `family`, once bound.
    fn relayed(&self, family: Family) -> Option<SocketAddr> {
        self.relayed[family.index()]
    }

    /// Every family asked for has its socket: the allocation is answered and usable.
    fn ready(&self) -> bool {
        Family::ALL.iter().all(|f| !self.families[f.index()] || self.relayed(*f).is_some())
    }

    fn dual(&self) -> bool {
        self.families == [true, true]
    }

    /// The relayed addresses, IPv4 first.
    fn relayed_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.relayed.iter().flatten().copied()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// A live allocation as the admin UI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    pub username: String,
    pub client: SocketAddr,
    /// The first relayed address (IPv4 first); `None` while binding.
    pub relay: Option<SocketAddr>,
    /// Every relayed address, IPv4 first (two for a dual allocation).
    pub relays: Vec<SocketAddr>,
    pub peers: Vec<IpAddr>,
    pub age: Duration,
    pub to_peer: Counter,
    pub to_client: Counter,
}

/// Server-wide counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub auth_failures: u64,
    pub denied_peers: u64,
    pub dropped: u64,
    pub to_peer: Counter,
    pub to_client: Counter,
}

#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    nonces: Nonces,
    start: Instant,
    unix_at_start: u64,
    allocations: HashMap<u32, Allocation>,
    by_tuple: HashMap<FiveTuple, u32>,
    /// Allocations by relay port: every relayed address of an allocation (IPv4 and IPv6 of a
    /// dual one) has the same port, and no two allocations share a port whatever their families.
    by_port: HashMap<u16, u32>,
    next_id: u32,
    next_port: u16,
    /// Ports held by RESERVATION-TOKEN (RFC 8656 §14.9), with their expiry.
    /// Port reserved by EVEN-PORT, the families of the allocation that reserved it (the token's
    /// allocation gets the same: its request may not name one), until when.
    reservations: HashMap<[u8; 8], (u16, [bool; 2], Instant)>,
    reservation_counter: u64,
    /// Usernames by their USERHASH for this realm (RFC 8489 §14.4), kept with the config.
    users_by_hash: HashMap<[u8; 32], String>,
    /// Failed authentications per client address: count and start of the window.
    auth_failures: HashMap<IpAddr, (u32, Instant)>,
    /// Challenges (401/438) sent per client address in the current window: an
    /// unauthenticated request earns a larger answer, so a spoofed source must not
    /// turn the server into an amplifier aimed at it.
    challenges: HashMap<IpAddr, (u32, Instant)>,
    out: VecDeque<Output>,
    /// Reused for building responses.
    scratch: Vec<u8>,
    /// RFC 6062 peer connections by CONNECTION-ID, and the counter that makes the IDs.
    connections: HashMap<u32, PeerConnection>,
    connection_counter: u64,
    pub stats: Stats,
}

/// An authenticated request's user and key.
struct Credentials {
    username: String,
    key: IntegrityKey,
}

fn xor_peer<'a>(msg: &Message<'a>) -> Option<SocketAddr> {
    msg.xor_address(attr::XOR_PEER_ADDRESS).and_then(Result::ok)
}

impl Server {
    /// `nonce_secret` must be random (it authenticates the nonces); `unix_now`
    /// anchors `now` to wall-clock time for REST credential expiry.
    pub fn new(config: ServerConfig, nonce_secret: [u8; 32], now: Instant, unix_now: u64) -> Self {
        let next_port = *config.relay_ports.start();
        let mut server = Server {
            nonces: Nonces::new(nonce_secret, config.nonce_lifetime_secs, '-'),
            config,
            start: now,
            unix_at_start: unix_now,
            allocations: HashMap::new(),
            by_tuple: HashMap::new(),
            by_port: HashMap::new(),
            next_id: 1,
            next_port,
            reservations: HashMap::new(),
            reservation_counter: 0,
            auth_failures: HashMap::new(),
            challenges: HashMap::new(),
            users_by_hash: HashMap::new(),
            out: VecDeque::new(),
            scratch: Vec::with_capacity(256),
            connections: HashMap::new(),
            connection_counter: 0,
            stats: Stats::default(),
        };
        server.index_user_hashes();
        server
    }

    /// New users, realm or policy; existing allocations stay.
    pub fn set_config(&mut self, config: ServerConfig) {
        if !config.relay_ports.contains(&self.next_port) {
            self.next_port = *config.relay_ports.start();
        }
        // Nonces stay valid across a configuration change: same secret.
        self.nonces = Nonces::new(self.nonces.secret(), config.nonce_lifetime_secs, '-');
        self.config = config;
        self.index_user_hashes();
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn now_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next time [`Server::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let binds = self.connections.values().filter_map(|c| match c.state {
            PeerState::AwaitingBind { until } => Some(until),
            _ => None,
        });
        self.allocations.values().map(|a| a.expires).chain(binds).min()
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    pub fn allocations(&self, now: Instant) -> Vec<AllocationInfo> {
        self.allocations
            .values()
            .map(|a| AllocationInfo {
                username: a.username.clone(),
                client: a.tuple.client,
                relay: a.relayed_addresses().next(),
                relays: a.relayed_addresses().collect(),
                peers: a.permissions.iter().map(|(ip, _)| *ip).collect(),
                age: now.saturating_duration_since(a.created),
                to_peer: a.to_peer,
                to_client: a.to_client,
            })
            .collect()
    }

    /// The TCP/TLS connection of `tuple` closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn connection_closed(&mut self, tuple: FiveTuple) {
        if let Some(id) = self.by_tuple.get(&tuple).copied() {
            self.remove(id);
        }
        // A client data connection (RFC 6062) takes its peer connection with it.
        let joined: Vec<u32> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.state, PeerState::Bound { data } if data == tuple))
            .map(|(id, _)| *id)
            .collect();
        for connection in joined {
            self.close_peer(connection);
        }
    }

    fn close_peer(&mut self, connection: u32) {
        if self.connections.remove(&connection).is_some() {
            self.out.push_back(Output::ClosePeer { connection });
        }
    }

    /// Expires allocations, permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u32> = self.allocations.iter().filter(|(_, a)| a.expires <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.remove(id);
        }
        self.reservations.retain(|_, (_, _, expires)| *expires > now);
        let unbound: Vec<u32> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.state, PeerState::AwaitingBind { until } if until <= now))
            .map(|(id, _)| *id)
            .collect();
        for connection in unbound {
            self.close_peer(connection);
        }
        self.auth_failures.retain(|_, (_, since)| now.saturating_duration_since(*since) < AUTH_FAILURE_WINDOW);
        self.challenges.retain(|_, (_, since)| now.saturating_duration_since(*since) < CHALLENGE_WINDOW);
        for allocation in self.allocations.values_mut() {
            allocation.permissions.retain(|(_, expires)| *expires > now);
            allocation.channels.retain(|c| c.expires > now);
        }
    }

    fn remove(&mut self, id: u32) {
        if let Some(allocation) = self.allocations.remove(&id) {
            self.by_tuple.remove(&allocation.tuple);
            self.by_port.remove(&allocation.relay_port);
            if allocation.relayed_addresses().next().is_some() {
                self.out.push_back(Output::CloseRelay { port: allocation.relay_port });
            }
            let peers: Vec<u32> = self
                .connections
                .iter()
                .filter(|(_, c)| c.allocation == id)
                .map(|(connection, _)| *connection)
                .collect();
            for connection in peers {
                self.close_peer(connection);
            }
        }
    }

    /// A datagram (or, on TCP/TLS, one frame: see [`frame_len`]) from the client of `tuple`.
    pub fn handle_client_packet<'a>(&mut self, now: Instant, tuple: FiveTuple, data: &'a [u8]) -> Forward<'a> {
        // ChannelData: the first two bits are 01 (RFC 8656 §12.4).
        if let Some(&first) = data.first()
            && (0x40..=0x7F).contains(&first)
        {
            return self.channel_data(now, tuple, data);
        }
        let Ok(msg) = Message::parse(data) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        if msg.fingerprint_ok() == Some(false) {
            self.stats.dropped += 1;
            return Forward::None;
        }
        match (msg.class, msg.method) {
            (Class::Indication, method::SEND) => self.send_indication(now, tuple, msg),
            (Class::Request, _) => {
                self.request(now, tuple, &msg);
                Forward::None
            }
            // Responses and other indications are not for a server.
            _ => Forward::None,
        }
    }

    fn live_allocation(&self, tuple: &FiveTuple, now: Instant) -> Option<u32> {
        let id = *self.by_tuple.get(tuple)?;
        let allocation = self.allocations.get(&id)?;
        (allocation.ready() && allocation.expires > now).then_some(id)
    }

    fn channel_data<'a>(&mut self, now: Instant, tuple: FiveTuple, data: &'a [u8]) -> Forward<'a> {
        let forward = (|| {
            if data.len() < 4 {
                return None;
            }
            let number = u16::from_be_bytes([data[0], data[1]]);
            let length = usize::from(u16::from_be_bytes([data[2], data[3]]));
            let payload = data.get(4..4 + length)?;
            let id = self.live_allocation(&tuple, now)?;
            let allocation = self.allocations.get_mut(&id)?;
            let channel = allocation.channels.iter().find(|c| c.number == number && c.expires > now)?;
            let peer = channel.peer;
            let ip = canonical(peer.ip());
            allocation.permissions.iter().any(|(p, e)| *p == ip && *e > now).then_some(())?;
            allocation
                .to_peer_budget
                .take(now, self.config.max_allocation_bytes_per_second, payload.len())
                .then_some(())?;
            allocation.to_peer.add(payload.len());
            Some(Forward::ToPeer { relay_port: allocation.relay_port, peer, payload })
        })();
        match forward {
            Some(Forward::ToPeer { relay_port, peer, payload }) => {
                self.stats.to_peer.add(payload.len());
                Forward::ToPeer { relay_port, peer, payload }
            }
            _ => {
                self.stats.dropped += 1;
                Forward::None
            }
        }
    }

    fn send_indication<'a>(&mut self, now: Instant, tuple: FiveTuple, msg: Message<'a>) -> Forward<'a> {
        let forward = (|| {
            let id = self.live_allocation(&tuple, now)?;
            let peer = on_the_wire(xor_peer(&msg)?);
            let payload = msg.get(attr::DATA)?.value;
            // Permissions are per address; the box's own service ports are checked per packet.
            let allocation = self.allocations.get_mut(&id)?;
            // No relay of the peer's family: dropped, as a Send cannot be answered (RFC 8656 §11.3).
            allocation.relayed(Family::of(peer.ip()))?;
            self.config.policy.check(peer, allocation.relay_protocol()).ok()?;
            let ip = canonical(peer.ip());
            allocation.permissions.iter().any(|(p, e)| *p == ip && *e > now).then_some(())?;
            allocation
                .to_peer_budget
                .take(now, self.config.max_allocation_bytes_per_second, payload.len())
                .then_some(())?;
            allocation.to_peer.add(payload.len());
            Some((allocation.relay_port, peer, payload))
        })();
        match forward {
            Some((relay_port, peer, payload)) => {
                self.stats.to_peer.add(payload.len());
                Forward::ToPeer { relay_port, peer, payload }
            }
            None => {
                self.stats.dropped += 1;
                Forward::None
            }
        }
    }

    /// A datagram from `peer` on relay port `relay_port`. The payload is
    /// `buf[HEADROOM..HEADROOM + len]`; the frame to the client is built in place.
    pub fn handle_peer_packet<'a>(
        &mut self,
        now: Instant,
        relay_port: u16,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Forward<'a> {
        if buf.len() < HEADROOM + len + TAILROOM {
            self.stats.dropped += 1;
            return Forward::None;
        }
        let Some(allocation) = self.by_port.get(&relay_port).and_then(|id| self.allocations.get_mut(id)) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        let ip = canonical(peer.ip());
        if allocation.expires <= now
            || !allocation.permissions.iter().any(|(p, e)| *p == ip && *e > now)
            || !allocation.to_client_budget.take(now, self.config.max_allocation_bytes_per_second, len)
        {
            self.stats.dropped += 1;
            return Forward::None;
        }
        allocation.to_client.add(len);
        self.stats.to_client.add(len);
        let tuple = allocation.tuple;
        if let Some(channel) = allocation.channels.iter().find(|c| c.peer == peer && c.expires > now) {
            let start = HEADROOM - 4;
            buf[start..start + 2].copy_from_slice(&channel.number.to_be_bytes());
            buf[start + 2..HEADROOM].copy_from_slice(&(len as u16).to_be_bytes());
            let padding = if tuple.transport.is_stream() { (4 - len % 4) % 4 } else { 0 };
            buf[HEADROOM + len..HEADROOM + len + padding].fill(0);
            return Forward::ToClient { tuple, packet: &buf[start..HEADROOM + len + padding] };
        }
        // A Data indication: header, XOR-PEER-ADDRESS, DATA, written backwards from the payload.
        let mut address = [0u8; 20];
        let transaction_id = data_indication_id(allocation.to_client.packets);
        let address_len = crate::stun::encode_xor_address(peer, &transaction_id, &mut address);
        let start = HEADROOM - (HEADER_LEN + 4 + address_len + 4);
        let padding = (4 - len % 4) % 4;
        let body_len = 4 + address_len + 4 + len + padding;
        let mut at = start;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&crate::stun::message_type(Class::Indication, method::DATA).to_be_bytes());
        put(&(body_len as u16).to_be_bytes());
        put(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        put(&transaction_id);
        put(&attr::XOR_PEER_ADDRESS.to_be_bytes());
        put(&(address_len as u16).to_be_bytes());
        put(&address[..address_len]);
        put(&attr::DATA.to_be_bytes());
        put(&(len as u16).to_be_bytes());
        debug_assert_eq!(at, HEADROOM);
        buf[HEADROOM + len..HEADROOM + len + padding].fill(0);
        Forward::ToClient { tuple, packet: &buf[start..HEADROOM + len + padding] }
    }

    /// The driver's answer to [`Output::BindRelay`].
    pub fn relay_bound(&mut self, now: Instant, port: u16, result: Result<SocketAddr, ()>) {
        let Some(&id) = self.by_port.get(&port) else {
            return;
        };
        match result {
            Ok(bound) => {
                let family = Family::of(bound.ip());
                let advertised = self.config.relay_for(family).and_then(|(_, advertised)| advertised);
                let Some(allocation) = self.allocations.get_mut(&id) else {
                    return;
                };
                if !allocation.families[family.index()] {
                    return;
                }
                allocation.relayed[family.index()] =
                    Some(SocketAddr::new(advertised.unwrap_or(bound.ip()), bound.port()));
                // A dual allocation answers once both of its sockets are there.
                if allocation.ready() {
                    allocation.expires = now + allocation.lifetime;
                    self.answer_allocate(id);
                }
            }
            Err(()) => {
                // Someone else holds that port: try another, a few times.
                self.by_port.remove(&port);
                let next = self.pick_port(false, false);
                let Some(allocation) = self.allocations.get_mut(&id) else {
                    return;
                };
                if allocation.dual() {
                    // The other family's socket on this port (bound already, or still to be
                    // bound: the driver carries out outputs in order) goes; both move together.
                    allocation.relayed = [None; 2];
                    self.out.push_back(Output::CloseRelay { port });
                }
                allocation.bind_attempts += 1;
                match next {
                    Some(next) if allocation.bind_attempts < 8 => {
                        allocation.relay_port = next;
                        self.by_port.insert(next, id);
                        let (tcp, families) = (allocation.tcp, allocation.families);
                        self.bind_relays(families, next, tcp);
                    }
                    _ => {
                        let (tuple, tid, key) = (allocation.tuple, allocation.transaction_id, allocation.key);
                        self.allocations.remove(&id);
                        self.by_tuple.remove(&tuple);
                        self.error(tuple, method::ALLOCATE, tid, 508, Some(&key), &[]);
                    }
                }
            }
        }
    }

    fn port_free(&self, port: u16) -> bool {
        self.config.relay_ports.contains(&port)
            && !self.by_port.contains_key(&port)
            && !self.reservations.values().any(|(reserved, _, _)| *reserved == port)
    }

    /// A free relay port; `even` asks for an even one, `pair` also for the odd one after it.
    fn pick_port(&mut self, even: bool, pair: bool) -> Option<u16> {
        let (lo, hi) = (*self.config.relay_ports.start(), *self.config.relay_ports.end());
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port >= hi { lo } else { port + 1 };
            let shape_ok = !even || port.is_multiple_of(2);
            let pair_ok = !pair || port.checked_add(1).is_some_and(|next| self.port_free(next));
            if shape_ok && pair_ok && self.port_free(port) {
                return Some(port);
            }
        }
        None
    }

    /// Asks the driver for the relay sockets of `families` on `port`, IPv4 first.
    fn bind_relays(&mut self, families: [bool; 2], port: u16, tcp: bool) {
        for family in Family::ALL {
            if families[family.index()]
                && let Some((ip, _)) = self.config.relay_for(family)
            {
                self.out.push_back(Output::BindRelay { ip, port, tcp });
            }
        }
    }

    fn new_reservation_token(&mut self) -> [u8; 8] {
        self.reservation_counter += 1;
        self.nonces.token(b"reservation", self.reservation_counter)
    }

    // ----- requests ---------------------------------------------------------------------

    fn reply(&mut self, tuple: FiveTuple) {
        let data = std::mem::take(&mut self.scratch);
        self.out.push_back(Output::Reply { tuple, data });
        self.scratch = Vec::with_capacity(256);
    }

    /// An error response; integrity-protected when the request was authenticated.
    fn error(
        &mut self,
        tuple: FiveTuple,
        method: u16,
        tid: [u8; 12],
        code: u16,
        key: Option<&IntegrityKey>,
        extra: &[(u16, &[u8])],
    ) {
        self.scratch.clear();
        let mut w = Writer::new(&mut self.scratch, Class::Error, method, tid);
        w.error(code, reason(code));
        for (kind, value) in extra {
            w.attr(*kind, value);
        }
        if let Some(key) = key {
            key.sign(&mut w);
        }
        self.reply(tuple);
    }

    fn challenge(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>, code: u16) {
        // Over UDP (where sources can be spoofed) a few challenges per second per address.
        if tuple.transport == Transport::Udp {
            let entry = self.challenges.entry(canonical(tuple.client.ip())).or_insert((0, now));
            if now.saturating_duration_since(entry.1) >= CHALLENGE_WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
            if entry.0 > CHALLENGE_LIMIT {
                self.stats.dropped += 1;
                return;
            }
        }
        let nonce = format!("{NONCE_COOKIE}{}", self.nonces.issue(self.now_secs(now), &ip_bytes(tuple.client.ip())));
        let realm = self.config.realm.clone();
        self.error(
            tuple,
            msg.method,
            msg.transaction_id(),
            code,
            None,
            &[
                (attr::REALM, realm.as_bytes()),
                (attr::NONCE, nonce.as_bytes()),
                (attr::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS),
            ],
        );
    }

    /// The user a USERHASH stands for (RFC 8489 §14.4).
    fn user_by_hash(&self, hash: &[u8]) -> Option<String> {
        self.users_by_hash.get(<&[u8; 32]>::try_from(hash).ok()?).cloned()
    }

    fn index_user_hashes(&mut self) {
        self.users_by_hash =
            self.config.users.keys().map(|user| (userhash(user, &self.config.realm), user.clone())).collect();
    }

    /// True while `ip` has failed to authenticate too often: its requests get no answer.
    fn rate_limited(&self, ip: IpAddr, now: Instant) -> bool {
        self.auth_failures.get(&canonical(ip)).is_some_and(|(count, since)| {
            *count >= AUTH_FAILURE_LIMIT && now.saturating_duration_since(*since) < AUTH_FAILURE_WINDOW
        })
    }

    fn auth_failed(&mut self, ip: IpAddr, now: Instant) {
        self.stats.auth_failures += 1;
        let entry = self.auth_failures.entry(canonical(ip)).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= AUTH_FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// Long-term credential check (RFC 8489 §9.2.4); on failure the response is queued.
    fn authenticate(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>) -> Option<Credentials> {
        if self.rate_limited(tuple.client.ip(), now) {
            self.stats.dropped += 1;
            return None;
        }
        let sha256_mac = msg.has(attr::MESSAGE_INTEGRITY_SHA256);
        if !sha256_mac && !msg.has(attr::MESSAGE_INTEGRITY) {
            self.challenge(now, tuple, msg, 401);
            return None;
        }
        let username = match (msg.text(attr::USERNAME), msg.get(attr::USERHASH)) {
            (Some(name), _) => Some(name.to_string()),
            (None, Some(hash)) => self.user_by_hash(hash.value),
            (None, None) => None,
        };
        let (Some(realm), Some(nonce)) = (msg.text(attr::REALM), msg.text(attr::NONCE)) else {
            self.error(tuple, msg.method, msg.transaction_id(), 400, None, &[]);
            return None;
        };
        let Some(username) = username.or_else(|| msg.has(attr::USERHASH).then(String::new)) else {
            self.error(tuple, msg.method, msg.transaction_id(), 400, None, &[]);
            return None;
        };
        let nonce = nonce.strip_prefix(NONCE_COOKIE).unwrap_or(nonce);
        if self.nonces.check(nonce, self.now_secs(now), &ip_bytes(tuple.client.ip())) != NonceCheck::Valid {
            self.challenge(now, tuple, msg, 438);
            return None;
        }
        // Downgrade protection (§9.2.4): the echoed PASSWORD-ALGORITHMS must be ours and the
        // chosen PASSWORD-ALGORITHM one of them; RFC 5389 clients send neither and get MD5.
        let sha256_key = match (msg.get(attr::PASSWORD_ALGORITHMS), msg.get(attr::PASSWORD_ALGORITHM)) {
            (None, None) => false,
            (Some(offered), Some(chosen)) if offered.value == PASSWORD_ALGORITHMS => match chosen.value.get(..2) {
                Some([0, 1]) => false,
                Some([0, 2]) => true,
                _ => {
                    self.error(tuple, msg.method, msg.transaction_id(), 400, None, &[]);
                    return None;
                }
            },
            _ => {
                self.error(tuple, msg.method, msg.transaction_id(), 400, None, &[]);
                return None;
            }
        };
        let user_key = if realm != self.config.realm {
            None
        } else if let Some(key) = self.config.users.get(&username) {
            Some(*key)
        } else if let Some(secret) = &self.config.rest_secret {
            let unix_now = self.unix_at_start + self.now_secs(now);
            rest_expiry(&username)
                .filter(|expiry| *expiry > unix_now)
                .map(|_| UserKey::from_password(&username, realm, &rest_password(secret, &username)))
        } else {
            None
        };
        let key = user_key.map(|k| {
            if sha256_key { IntegrityKey::new(&k.sha256, sha256_mac) } else { IntegrityKey::new(&k.md5, sha256_mac) }
        });
        match key {
            Some(key) if key.verify(msg) => Some(Credentials { username, key }),
            _ => {
                self.auth_failed(tuple.client.ip(), now);
                self.challenge(now, tuple, msg, 401);
                None
            }
        }
    }

    fn request(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>) {
        let tid = msg.transaction_id();
        if msg.method == method::BINDING {
            // Unauthenticated, so kept no larger than the request needs (no SOFTWARE).
            self.scratch.clear();
            let mut w = Writer::new(&mut self.scratch, Class::Success, method::BINDING, tid);
            w.xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            if msg.has(attr::FINGERPRINT) {
                w.fingerprint();
            }
            self.reply(tuple);
            return;
        }
        if !matches!(
            msg.method,
            method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND
        ) {
            self.error(tuple, msg.method, tid, 400, None, &[]);
            return;
        }
        let unknown: Vec<u8> = msg.unknown_required().flat_map(u16::to_be_bytes).collect();
        if !unknown.is_empty() {
            self.error(tuple, msg.method, tid, 420, None, &[(attr::UNKNOWN_ATTRIBUTES, &unknown)]);
            return;
        }
        let Some(credentials) = self.authenticate(now, tuple, msg) else {
            return;
        };
        match msg.method {
            method::ALLOCATE => self.allocate(now, tuple, msg, credentials),
            method::REFRESH => self.refresh(now, tuple, msg, credentials),
            method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, credentials),
            method::CONNECT => self.connect(tuple, msg, credentials),
            method::CONNECTION_BIND => self.connection_bind(now, tuple, msg, credentials),
            _ => self.channel_bind(now, tuple, msg, credentials),
        }
    }

    fn success(
        &mut self,
        tuple: FiveTuple,
        method: u16,
        tid: [u8; 12],
        key: &IntegrityKey,
        fingerprint: bool,
        fill: impl FnOnce(&mut Writer<'_>),
    ) {
        self.scratch.clear();
        let software = self.config.software.clone();
        let mut w = Writer::new(&mut self.scratch, Class::Success, method, tid);
        fill(&mut w);
        if let Some(software) = software {
            w.attr(attr::SOFTWARE, software.as_bytes());
        }
        key.sign(&mut w);
        if fingerprint {
            w.fingerprint();
        }
        self.reply(tuple);
    }

    /// The success answer to an allocation's Allocate request (also for retransmissions).
    fn answer_allocate(&mut self, id: u32) {
        let Some(a) = self.allocations.get(&id) else {
            return;
        };
        if !a.ready() {
            return; // still binding: the answer is on its way
        }
        let relayed: Vec<SocketAddr> = a.relayed_addresses().collect();
        let (tuple, tid, key, fingerprint, lifetime, token, address_error) = (
            a.tuple,
            a.transaction_id,
            a.key,
            a.request_had_fingerprint,
            a.lifetime,
            a.reservation_token,
            a.address_error,
        );
        self.success(tuple, method::ALLOCATE, tid, &key, fingerprint, |w| {
            // One XOR-RELAYED-ADDRESS per family, IPv4 first (RFC 8656 §7.2).
            for relay in relayed {
                w.xor_address(attr::XOR_RELAYED_ADDRESS, relay);
            }
            w.u32(attr::LIFETIME, lifetime.as_secs() as u32).xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            if let Some(token) = token {
                w.attr(attr::RESERVATION_TOKEN, &token);
            }
            if let Some((family, code, kind)) = address_error {
                w.address_error(kind, family.code(), code, reason(code));
            }
        });
    }

    fn granted_lifetime(&self, msg: &Message<'_>) -> Duration {
        match msg.u32(attr::LIFETIME) {
            Some(0) => Duration::ZERO,
            Some(secs) => {
                Duration::from_secs(u64::from(secs)).clamp(self.config.default_lifetime, self.config.max_lifetime)
            }
            None => self.config.default_lifetime,
        }
    }

    fn allocate(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>, credentials: Credentials) {
        let tid = msg.transaction_id();
        let key = credentials.key;
        if let Some(&id) = self.by_tuple.get(&tuple) {
            match self.allocations.get(&id).map(|a| a.transaction_id == tid) {
                Some(true) => self.answer_allocate(id),
                _ => self.error(tuple, method::ALLOCATE, tid, 437, Some(&key), &[]),
            }
            return;
        }
        let tcp = match msg.get(attr::REQUESTED_TRANSPORT).and_then(|a| a.value.first().copied()) {
            None => return self.error(tuple, method::ALLOCATE, tid, 400, Some(&key), &[]),
            Some(UDP) => false,
            // RFC 6062 §5.1: a TCP relay only over a TCP/TLS control connection,
            // without EVEN-PORT or RESERVATION-TOKEN.
            Some(TCP) if !tuple.transport.is_stream() => {
                return self.error(tuple, method::ALLOCATE, tid, 400, Some(&key), &[]);
            }
            Some(TCP) if msg.has(attr::EVEN_PORT) || msg.has(attr::RESERVATION_TOKEN) => {
                return self.error(tuple, method::ALLOCATE, tid, 400, Some(&key), &[]);
            }
            Some(TCP) => true,
            Some(_) => return self.error(tuple, method::ALLOCATE, tid, 442, Some(&key), &[]),
        };
        // DONT-FRAGMENT is honoured by the relay sockets (Linux sets DF on UDP
        // under path-MTU discovery, its default).
        let even_port = msg.get(attr::EVEN_PORT).map(|a| a.value.first().is_some_and(|b| b & 0x80 != 0));
        let token = msg.get(attr::RESERVATION_TOKEN).map(|a| a.value);
        if even_port.is_some() && token.is_some() {
            return self.error(tuple, method::ALLOCATE, tid, 400, Some(&key), &[]);
        }
        let (mut families, address_error) = match self.allocation_families(msg, tcp) {
            Ok(families) => families,
            Err(code) => return self.error(tuple, method::ALLOCATE, tid, code, Some(&key), &[]),
        };
        let per_user = self.allocations.values().filter(|a| a.username == credentials.username).count();
        if per_user >= self.config.max_allocations_per_user {
            return self.error(tuple, method::ALLOCATE, tid, 486, Some(&key), &[]);
        }
        if self.allocations.len() >= self.config.max_allocations {
            return self.error(tuple, method::ALLOCATE, tid, 508, Some(&key), &[]);
        }
        let mut reservation_token = None;
        let port = match (token, even_port) {
            (Some(token), _) => {
                let reserved = <[u8; 8]>::try_from(token).ok().and_then(|t| self.reservations.remove(&t));
                match reserved {
                    Some((port, reserved_families, _)) => {
                        families = reserved_families;
                        Some(port)
                    }
                    None => return self.error(tuple, method::ALLOCATE, tid, 508, Some(&key), &[]),
                }
            }
            (None, Some(reserve_next)) => {
                let port = self.pick_port(true, reserve_next);
                if let (Some(port), true) = (port, reserve_next) {
                    let token = self.new_reservation_token();
                    self.reservations.insert(token, (port + 1, families, now + Duration::from_secs(30)));
                    reservation_token = Some(token);
                }
                port
            }
            (None, None) => self.pick_port(false, false),
        };
        let Some(port) = port else {
            return self.error(tuple, method::ALLOCATE, tid, 508, Some(&key), &[]);
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let lifetime = match self.granted_lifetime(msg) {
            Duration::ZERO => self.config.default_lifetime,
            granted => granted,
        };
        self.allocations.insert(
            id,
            Allocation {
                tuple,
                username: credentials.username,
                key,
                relay_port: port,
                families,
                relayed: [None; 2],
                address_error,
                // Until the socket is bound; a bind that never answers does not leak.
                expires: now + Duration::from_secs(30),
                created: now,
                permissions: Vec::new(),
                channels: Vec::new(),
                transaction_id: tid,
                request_had_fingerprint: msg.has(attr::FINGERPRINT),
                lifetime,
                bind_attempts: 0,
                tcp,
                reservation_token,
                to_peer: Counter::default(),
                to_client: Counter::default(),
                to_peer_budget: Budget::full(now, self.config.max_allocation_bytes_per_second),
                to_client_budget: Budget::full(now, self.config.max_allocation_bytes_per_second),
            },
        );
        self.by_tuple.insert(tuple, id);
        self.by_port.insert(port, id);
        self.bind_relays(families, port, tcp);
    }

    /// The families an Allocate asks for (RFC 8656 §7.2, RFC 6156's rules kept there), and
    /// the ADDRESS-ERROR-CODE for one asked for beside IPv4 that the box cannot give;
    /// `Err` is the error code to answer with.
    fn allocation_families(&self, msg: &Message<'_>, tcp: bool) -> Result<AllocationFamilies, u16> {
        let requested = msg.get(attr::REQUESTED_ADDRESS_FAMILY).map(|a| a.value.first().copied());
        let (additional, error_kind) = match msg.get(attr::ADDITIONAL_ADDRESS_FAMILY) {
            Some(a) => (Some(a.value.first().copied()), attr::ADDRESS_ERROR_CODE),
            None => (
                msg.get(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT).map(|a| a.value.first().copied()),
                attr::ADDRESS_ERROR_CODE_DRAFT,
            ),
        };
        let offered = |family: Family| self.config.relay_for(family).is_some();
        match (requested, additional) {
            (Some(_), Some(_)) => Err(400),
            // A reserved port is for the family of the allocation that reserved it.
            (Some(_), None) if msg.has(attr::RESERVATION_TOKEN) => Err(400),
            (Some(code), None) => match code.and_then(Family::from_code) {
                Some(family) if offered(family) => {
                    let mut families = [false; 2];
                    families[family.index()] = true;
                    Ok((families, None))
                }
                _ => Err(440),
            },
            // The reservation names the families (see `allocate`).
            (None, None) if msg.has(attr::RESERVATION_TOKEN) => Ok(([true, false], None)),
            (None, None) if offered(Family::V4) => Ok(([true, false], None)),
            (None, None) => Err(440),
            // ADDITIONAL-ADDRESS-FAMILY asks for IPv6 beside IPv4; only IPv6 is valid in it, and
            // a dual allocation reserves no port (EVEN-PORT with R set) nor takes a reserved one
            // (RFC 8656 §7.2; an even port alone is fine, turnutils_uclient -Z asks for one). Nor
            // a TCP relay here: RFC 6062 allocations keep one family.
            (None, Some(code)) => {
                let reserves = msg.get(attr::EVEN_PORT).is_some_and(|a| a.value.first().is_some_and(|b| b & 0x80 != 0));
                if code != Some(family::IPV6) || reserves || msg.has(attr::RESERVATION_TOKEN) || tcp {
                    Err(400)
                } else if !offered(Family::V4) {
                    Err(440)
                } else if offered(Family::V6) {
                    Ok(([true, true], None))
                } else {
                    // IPv4 alone, and the answer says why not IPv6.
                    Ok(([true, false], Some((Family::V6, 440, error_kind))))
                }
            }
        }
    }

    fn owned_allocation(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        credentials: &Credentials,
    ) -> Option<u32> {
        let id = self.live_allocation(&tuple, now);
        let owned = id.filter(|id| self.allocations.get(id).is_some_and(|a| a.username == credentials.username));
        if owned.is_none() {
            let code = if id.is_some() { 441 } else { 437 };
            self.error(tuple, msg.method, msg.transaction_id(), code, Some(&credentials.key), &[]);
        }
        owned
    }

    fn refresh(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>, credentials: Credentials) {
        let Some(id) = self.owned_allocation(now, tuple, msg, &credentials) else {
            return;
        };
        // REQUESTED-ADDRESS-FAMILY must name a family the allocation relays (RFC 8656 §7.3);
        // the refresh (or deletion) then covers every relayed address of the allocation.
        if let Some(requested) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let relays = requested
                .value
                .first()
                .copied()
                .and_then(Family::from_code)
                .is_some_and(|family| self.allocations.get(&id).is_some_and(|a| a.relayed(family).is_some()));
            if !relays {
                return self.error(tuple, method::REFRESH, msg.transaction_id(), 443, Some(&credentials.key), &[]);
            }
        }
        let lifetime = self.granted_lifetime(msg);
        if lifetime.is_zero() {
            self.remove(id);
        } else if let Some(allocation) = self.allocations.get_mut(&id) {
            allocation.expires = now + lifetime;
        }
        let fingerprint = msg.has(attr::FINGERPRINT);
        self.success(tuple, method::REFRESH, msg.transaction_id(), &credentials.key, fingerprint, |w| {
            w.u32(attr::LIFETIME, lifetime.as_secs() as u32);
        });
    }

    /// Checks a peer for this allocation; the error code to answer when refused.
    fn check_peer(&mut self, id: u32, peer: SocketAddr) -> Result<(), u16> {
        let Some(allocation) = self.allocations.get(&id).filter(|a| a.ready()) else {
            return Err(437);
        };
        // A peer of a family the allocation has no relayed address for (RFC 8656 §9.1, §11.1).
        if allocation.relayed(Family::of(peer.ip())).is_none() {
            return Err(443);
        }
        let protocol = self.allocations.get(&id).map_or(RelayProtocol::Udp, Allocation::relay_protocol);
        if self.config.policy.check(peer, protocol).is_err() {
            self.stats.denied_peers += 1;
            return Err(403);
        }
        Ok(())
    }

    fn create_permission(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>, credentials: Credentials) {
        let Some(id) = self.owned_allocation(now, tuple, msg, &credentials) else {
            return;
        };
        let tid = msg.transaction_id();
        let peers: Vec<Option<SocketAddr>> =
            msg.all(attr::XOR_PEER_ADDRESS).map(|a| crate::stun::decode_xor_address(a.value, &tid).ok()).collect();
        if peers.is_empty() || peers.iter().any(Option::is_none) {
            return self.error(tuple, method::CREATE_PERMISSION, tid, 400, Some(&credentials.key), &[]);
        }
        // All or nothing (RFC 8656 §9.2).
        for peer in peers.iter().flatten() {
            if let Err(code) = self.check_peer(id, *peer) {
                return self.error(tuple, method::CREATE_PERMISSION, tid, code, Some(&credentials.key), &[]);
            }
        }
        if let Some(allocation) = self.allocations.get_mut(&id) {
            let new = peers
                .iter()
                .flatten()
                .filter(|p| !allocation.permissions.iter().any(|(ip, _)| *ip == canonical(p.ip())));
            if allocation.permissions.len() + new.count() > MAX_PERMISSIONS {
                return self.error(tuple, method::CREATE_PERMISSION, tid, 508, Some(&credentials.key), &[]);
            }
            for peer in peers.into_iter().flatten() {
                install_permission(allocation, canonical(peer.ip()), now);
            }
        }
        let fingerprint = msg.has(attr::FINGERPRINT);
        self.success(tuple, method::CREATE_PERMISSION, tid, &credentials.key, fingerprint, |_| {});
    }

    fn channel_bind(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>, credentials: Credentials) {
        let Some(id) = self.owned_allocation(now, tuple, msg, &credentials) else {
            return;
        };
        let tid = msg.transaction_id();
        let number =
            msg.get(attr::CHANNEL_NUMBER).and_then(|a| a.value.get(..2)).map(|v| u16::from_be_bytes([v[0], v[1]]));
        let (Some(number), Some(peer)) = (number, xor_peer(msg).map(on_the_wire)) else {
            return self.error(tuple, method::CHANNEL_BIND, tid, 400, Some(&credentials.key), &[]);
        };
        if !CHANNELS.contains(&number) {
            return self.error(tuple, method::CHANNEL_BIND, tid, 400, Some(&credentials.key), &[]);
        }
        if let Err(code) = self.check_peer(id, peer) {
            return self.error(tuple, method::CHANNEL_BIND, tid, code, Some(&credentials.key), &[]);
        }
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return;
        };
        if allocation.tcp {
            // No channels on TCP allocations (RFC 6062 §5.1).
            return self.error(tuple, method::CHANNEL_BIND, tid, 400, Some(&credentials.key), &[]);
        }
        // A channel is bound to one peer and a peer to one channel (RFC 8656 §11.2).
        let conflict = allocation.channels.iter().any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return self.error(tuple, method::CHANNEL_BIND, tid, 400, Some(&credentials.key), &[]);
        }
        match allocation.channels.iter_mut().find(|c| c.number == number) {
            Some(channel) => channel.expires = now + CHANNEL_LIFETIME,
            None => allocation.channels.push(Channel { number, peer, expires: now + CHANNEL_LIFETIME }),
        }
        install_permission(allocation, canonical(peer.ip()), now);
        let fingerprint = msg.has(attr::FINGERPRINT);
        self.success(tuple, method::CHANNEL_BIND, tid, &credentials.key, fingerprint, |_| {});
    }
}

impl Server {
    fn new_connection_id(&mut self) -> u32 {
        // Unguessable: a ConnectionBind names it (and must also authenticate).
        loop {
            self.connection_counter += 1;
            let token = self.nonces.token(b"connection", self.connection_counter);
            let id = u32::from_be_bytes([token[0], token[1], token[2], token[3]]);
            if id != 0 && !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    /// RFC 6062 §5.2: connect the TCP relay to a peer the client has a permission for.
    fn connect(&mut self, tuple: FiveTuple, msg: &Message<'_>, credentials: Credentials) {
        let tid = msg.transaction_id();
        let key = credentials.key;
        let Some(&id) = self.by_tuple.get(&tuple) else {
            return self.error(tuple, method::CONNECT, tid, 437, Some(&key), &[]);
        };
        let Some(allocation) = self.allocations.get(&id) else { return };
        if allocation.username != credentials.username {
            return self.error(tuple, method::CONNECT, tid, 441, Some(&key), &[]);
        }
        let Some(peer) = xor_peer(msg).map(on_the_wire).filter(|_| allocation.tcp) else {
            return self.error(tuple, method::CONNECT, tid, 400, Some(&key), &[]);
        };
        let permitted = allocation.permissions.iter().any(|(ip, _)| *ip == canonical(peer.ip()));
        // The connection leaves from the relay's own (bound) address of the peer's family.
        let family = Family::of(peer.ip());
        let relay_ip =
            allocation.relayed(family).and_then(|_| self.config.relay_for(family)).map(|(bind_ip, _)| bind_ip);
        if let Err(code) = self.check_peer(id, peer) {
            return self.error(tuple, method::CONNECT, tid, code, Some(&key), &[]);
        }
        if !permitted {
            self.stats.denied_peers += 1;
            return self.error(tuple, method::CONNECT, tid, 403, Some(&key), &[]);
        }
        let ours: Vec<&PeerConnection> = self.connections.values().filter(|c| c.allocation == id).collect();
        if ours.iter().any(|c| c.peer == peer) {
            return self.error(tuple, method::CONNECT, tid, 446, Some(&key), &[]);
        }
        if ours.len() >= MAX_PEER_CONNECTIONS {
            return self.error(tuple, method::CONNECT, tid, 508, Some(&key), &[]);
        }
        let Some(from) = relay_ip else { return };
        let connection = self.new_connection_id();
        let state = PeerState::Connecting { tid, fingerprint: msg.has(attr::FINGERPRINT) };
        self.connections.insert(connection, PeerConnection { allocation: id, peer, state });
        self.out.push_back(Output::ConnectPeer { connection, from, peer });
    }

    /// The driver's answer to [`Output::ConnectPeer`]: the Connect's answer goes out.
    /// `false`: the connection is no longer wanted (its allocation went): close it.
    pub fn peer_connect_result(&mut self, now: Instant, connection: u32, connected: bool) -> bool {
        let Some(c) = self.connections.get_mut(&connection) else { return false };
        let PeerState::Connecting { tid, fingerprint } = c.state else { return false };
        let Some((tuple, key)) = self.allocations.get(&c.allocation).map(|a| (a.tuple, a.key)) else {
            self.connections.remove(&connection);
            return false;
        };
        if connected {
            c.state = PeerState::AwaitingBind { until: now + CONNECTION_BIND_TIMEOUT };
            self.success(tuple, method::CONNECT, tid, &key, fingerprint, |w| {
                w.attr(attr::CONNECTION_ID, &connection.to_be_bytes());
            });
        } else {
            self.connections.remove(&connection);
            self.error(tuple, method::CONNECT, tid, 447, Some(&key), &[]);
        }
        connected
    }

    /// RFC 6062 §5.3: a peer connected to a TCP relay. `Some(id)` keeps the
    /// connection (the client is told with a ConnectionAttempt); `None` closes it.
    pub fn peer_connection(&mut self, now: Instant, relay_port: u16, peer: SocketAddr) -> Option<u32> {
        let id = *self.by_port.get(&relay_port)?;
        let allocation = self.allocations.get(&id).filter(|a| a.tcp && a.expires > now)?;
        let permitted = allocation.permissions.iter().any(|(ip, _)| *ip == canonical(peer.ip()));
        let count = self.connections.values().filter(|c| c.allocation == id).count();
        if !permitted || count >= MAX_PEER_CONNECTIONS {
            self.stats.denied_peers += 1;
            return None;
        }
        let tuple = allocation.tuple;
        let connection = self.new_connection_id();
        let state = PeerState::AwaitingBind { until: now + CONNECTION_BIND_TIMEOUT };
        self.connections.insert(connection, PeerConnection { allocation: id, peer, state });
        self.connection_counter += 1;
        let tid = data_indication_id(self.connection_counter | 1 << 63);
        self.scratch.clear();
        let mut w = Writer::new(&mut self.scratch, Class::Indication, method::CONNECTION_ATTEMPT, tid);
        w.attr(attr::CONNECTION_ID, &connection.to_be_bytes()).xor_address(attr::XOR_PEER_ADDRESS, peer);
        w.fingerprint();
        self.reply(tuple);
        Some(connection)
    }

    /// The peer side of a connection closed (or failed): the client's side goes too.
    pub fn peer_closed(&mut self, connection: u32) {
        self.close_peer(connection);
    }

    /// RFC 6062 §5.4: a new client connection binds itself to a peer connection.
    fn connection_bind(&mut self, now: Instant, tuple: FiveTuple, msg: &Message<'_>, credentials: Credentials) {
        let tid = msg.transaction_id();
        let key = credentials.key;
        let id = msg.get(attr::CONNECTION_ID).and_then(|a| <[u8; 4]>::try_from(a.value).ok()).map(u32::from_be_bytes);
        let bindable = id.and_then(|id| self.connections.get(&id).map(|c| (id, c))).filter(|(_, c)| {
            matches!(c.state, PeerState::AwaitingBind { until } if until > now)
                && self.allocations.get(&c.allocation).is_some_and(|a| a.username == credentials.username)
        });
        // Only a fresh connection (no allocation of its own) can become a data connection.
        let Some((connection, _)) =
            bindable.filter(|_| tuple.transport.is_stream() && !self.by_tuple.contains_key(&tuple))
        else {
            return self.error(tuple, method::CONNECTION_BIND, tid, 400, Some(&key), &[]);
        };
        if let Some(c) = self.connections.get_mut(&connection) {
            c.state = PeerState::Bound { data: tuple };
        }
        self.success(tuple, method::CONNECTION_BIND, tid, &key, msg.has(attr::FINGERPRINT), |_| {});
        self.out.push_back(Output::JoinData { connection, data: tuple });
    }
}

fn install_permission(allocation: &mut Allocation, ip: IpAddr, now: Instant) {
    match allocation.permissions.iter_mut().find(|(p, _)| *p == ip) {
        Some((_, expires)) => *expires = now + PERMISSION_LIFETIME,
        None => allocation.permissions.push((ip, now + PERMISSION_LIFETIME)),
    }
}

/// How many bytes of a TCP/TLS stream make the next frame: a STUN message
/// (20-byte header + length) or ChannelData (4 + length, padded to 4 on
/// streams). `Ok(None)`: not enough bytes yet; `Err(())`: not TURN, close.
#[allow(clippy::result_unit_err)]
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let total = match buf[0] >> 6 {
        0b00 => HEADER_LEN + length,
        0b01 => 4 + ((length + 3) & !3),
        _ => return Err(()),
    };
    Ok((buf.len() >= total).then_some(total))
}

/// A nonce is bound to the client's address.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Data indications need a transaction ID but no one answers them: a counter will do.
fn data_indication_id(counter: u64) -> [u8; 12] {
    let mut id = [0u8; 12];
    id[4..].copy_from_slice(&counter.to_be_bytes());
    id
}
