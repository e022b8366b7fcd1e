//! The typed configuration of the box, one struct per section.
//!
//! Every struct takes `#[serde(default)]` so that a provisioning file or an API
//! client may give only the fields it cares about, and `deny_unknown_fields` so
//! that a typo is an error instead of a silently ignored setting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::secret::{HashedSecret, PlainSecret};

/// Names of the sections, in the order the UI lists them.
pub const SECTIONS: &[&str] = &["system", "network", "admin", "sip", "turn", "media", "audio", "cameras", "update"];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub system: SystemConfig,
    pub network: NetworkConfig,
    pub admin: AdminConfig,
    pub sip: SipConfig,
    pub turn: TurnConfig,
    pub media: MediaConfig,
    pub audio: AudioConfig,
    pub cameras: CamerasConfig,
    pub update: UpdateConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    pub hostname: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Set once the installer has been through the first-boot wizard.
    pub setup_complete: bool,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self { hostname: "branchgate".into(), timezone: "UTC".into(), setup_complete: false }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    #[default]
    Dhcp,
    Static,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub mode: AddressMode,
    /// Static address with prefix length, e.g. `192.168.1.10/24`.
    pub address: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    /// Address the admin listeners bind to.
    pub admin_bind: IpAddr,
    pub admin_https_port: u16,
    /// Plain HTTP port that only redirects to HTTPS; 0 turns it off.
    pub admin_http_port: u16,
    /// Optional unauthenticated Prometheus listener (e.g. on a management VLAN).
    pub metrics_listen: Option<SocketAddr>,
    /// RTSP for players that do not speak WebRTC (`rtsp://<box>:<port>/<camera>`); 0 turns it off.
    pub rtsp_port: u16,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            mode: AddressMode::Dhcp,
            address: None,
            gateway: None,
            dns: Vec::new(),
            admin_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            admin_https_port: 8443,
            admin_http_port: 8080,
            metrics_listen: None,
            rtsp_port: 8554,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: dashboard, status, logs.
    Viewer,
    /// Configures services; cannot manage users or restore backups.
    Installer,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Installer => "installer",
            Role::Admin => "admin",
        }
    }
}

/// The built-in `admin` account is `admin.password`; further accounts live in `admin.users`.
pub const ADMIN_USERNAME: &str = "admin";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Password of the built-in `admin` account (argon2 hash once stored).
    pub password: HashedSecret,
    pub must_change_password: bool,
    pub users: Vec<AdminUser>,
    pub session_idle_minutes: u32,
    pub session_absolute_hours: u32,
    /// Failed logins from one peer address before it is locked out.
    pub lockout_threshold: u32,
    pub lockout_minutes: u32,
    /// How long a change that may cut the installer off waits for confirmation
    /// before it rolls back by itself.
    pub confirm_timeout_seconds: u32,
    /// Installer-supplied certificate chain (PEM); a self-signed one is used when absent.
    pub tls_certificate: Option<String>,
    pub tls_private_key: Option<PlainSecret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            password: HashedSecret::default(),
            must_change_password: true,
            users: Vec::new(),
            session_idle_minutes: 30,
            session_absolute_hours: 12,
            lockout_threshold: 5,
            lockout_minutes: 15,
            confirm_timeout_seconds: 90,
            tls_certificate: None,
            tls_private_key: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminUser {
    pub username: String,
    pub role: Role,
    pub password: HashedSecret,
    pub must_change_password: bool,
}

impl Default for AdminUser {
    fn default() -> Self {
        Self {
            username: String::new(),
            role: Role::Viewer,
            password: HashedSecret::default(),
            must_change_password: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// SIP domain and digest realm of the box's users.
    pub domain: String,
    pub udp_port: u16,
    pub tcp_port: u16,
    pub tls_port: u16,
    /// Origins allowed on `wss://<box>:8443/sip`; empty allows any (digest authenticates).
    pub ws_allowed_origins: Vec<String>,
    pub users: Vec<SipUser>,
    pub trunks: Vec<SipTrunk>,
    pub routes: Vec<SipRoute>,
    /// Numbers routed before anything else.
    pub emergency_numbers: Vec<String>,
    /// Offer SHA-256 digest (RFC 8760) besides MD5 to the box's SIP users.
    pub digest_sha256: bool,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            domain: "branch.example".into(),
            udp_port: 5060,
            tcp_port: 5060,
            tls_port: 5061,
            ws_allowed_origins: Vec::new(),
            users: Vec::new(),
            trunks: Vec::new(),
            routes: Vec::new(),
            emergency_numbers: vec!["112".into(), "911".into()],
            digest_sha256: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipUser {
    pub username: String,
    /// Digest credentials, kept as HA1 hashes for `sip.domain`.
    pub password: HashedSecret,
    pub display_name: Option<String>,
}

/// How DTMF reaches a trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DtmfMode {
    /// RFC 4733 telephone events in the media; SIP INFO from the other side is converted.
    #[default]
    #[serde(rename = "rfc4733")]
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay`); telephone events from the other side are converted.
    #[serde(rename = "info")]
    Info,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipTrunk {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub transport: SipTransport,
    /// Register to the trunk with `username`/`password`.
    pub register: bool,
    pub username: Option<String>,
    /// Kept in plain text: the box is the digest client here.
    pub password: Option<PlainSecret>,
    /// Lower is tried first among routes of equal prefix.
    pub priority: u32,
    /// Seconds between OPTIONS keepalives that mark the trunk up or down; 0 turns them off.
    pub keepalive_seconds: u32,
    /// How DTMF from the other side of a call reaches this trunk.
    pub dtmf: DtmfMode,
    /// With `transport: tls`: PEM certificate(s) trusted for this trunk besides the system's
    /// CAs — a private CA, or the trunk's self-signed certificate. The trunk's certificate
    /// must name `host` either way.
    pub tls_ca: Option<String>,
    /// With `transport: tls`: the box presents its own certificate (the admin certificate,
    /// `admin.tls_certificate` or the generated one) to a trunk that asks for a client
    /// certificate (mutual TLS).
    pub tls_client_certificate: bool,
}

impl Default for SipTrunk {
    fn default() -> Self {
        Self {
            name: String::new(),
            host: String::new(),
            port: 5060,
            transport: SipTransport::Udp,
            register: false,
            username: None,
            password: None,
            priority: 10,
            keepalive_seconds: 30,
            dtmf: DtmfMode::Rfc4733,
            tls_ca: None,
            tls_client_certificate: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipRoute {
    pub prefix: String,
    /// Digits removed from the front of the number before it goes to the trunk.
    pub strip: u32,
    pub trunk: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    pub enabled: bool,
    pub realm: String,
    pub udp_port: u16,
    pub tcp_port: u16,
    pub tls_port: u16,
    /// Addresses the UDP, TCP and TLS listeners bind to, each on the three ports. Empty: every
    /// address of each family (`0.0.0.0` and `::`, the latter IPv6 only, so IPv4 clients stay
    /// plain IPv4 and a host without IPv6 still serves IPv4).
    pub listen_ips: Vec<IpAddr>,
    pub users: Vec<TurnUser>,
    /// Shared secret for TURN REST ephemeral credentials (coturn `use-auth-secret`).
    pub auth_secret: Option<PlainSecret>,
    /// Peer ranges opened despite the default deny of internal addresses.
    pub allowed_peers: Vec<IpNet>,
    /// Public address announced for relays when the box sits behind NAT.
    pub external_ip: Option<IpAddr>,
    /// Address relay sockets bind to; none picks the box's first non-loopback IPv4 address.
    pub relay_ip: Option<IpAddr>,
    /// The box's IPv6 relay address: allocations asking for IPv6 (RFC 8656
    /// REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY) relay from it. None: IPv6 relaying
    /// only when `relay_ip` itself is IPv6.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Public IPv6 address announced for IPv6 relays (when the box's own differs, e.g. NPTv6).
    pub external_ipv6: Option<Ipv6Addr>,
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// Allocations one username may hold at once (486 beyond).
    pub user_quota: u32,
    /// Allocations the box holds at once (508 beyond).
    pub total_quota: u32,
    /// Bandwidth one allocation may relay in each direction, kbit/s (0: no cap); datagrams
    /// beyond it are dropped. The default leaves room for HD video, not for a flood.
    pub max_allocation_kbps: u32,
}

impl TurnConfig {
    /// Most addresses `listen_ips` may name (each one is three sockets and their tasks).
    pub const MAX_LISTEN_IPS: usize = 16;
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            realm: "branch.example".into(),
            udp_port: 3478,
            tcp_port: 3478,
            tls_port: 5349,
            listen_ips: Vec::new(),
            users: Vec::new(),
            auth_secret: None,
            allowed_peers: Vec::new(),
            external_ip: None,
            relay_ip: None,
            relay_ipv6: None,
            external_ipv6: None,
            relay_port_min: 49152,
            relay_port_max: 65535,
            user_quota: 100,
            total_quota: 5000,
            max_allocation_kbps: 20_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnUser {
    pub username: String,
    /// Long-term credential key, kept as `MD5(user:realm:pass)` and its SHA-256 variant.
    pub password: HashedSecret,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Codec preference order, most preferred first.
    pub codecs: Vec<String>,
    /// An answered call with no media (RTP or RTCP) either way for this long is hung up.
    pub timeout_seconds: u32,
    /// Calls the box may transcode at once (Opus <-> G.711/G.722 costs CPU; a core does
    /// ~150 in real time: `./x bench transcode`). Beyond it, browser calls are offered only
    /// the codecs that pass through. 0: never transcode.
    pub max_transcoded_calls: u32,
    /// The public address of the NAT in front of the box, when it forwards SIP and the media
    /// ports to the box one to one (a branch router's port forwarding): what peers outside
    /// `local_networks` get in SDP, Contact/Via and as the WebRTC candidate. None: the box's
    /// own address everywhere.
    pub public_ip: Option<IpAddr>,
    /// Networks that reach the box without that NAT: peers here get the box's own address.
    pub local_networks: Vec<IpNet>,
    /// Listen for DTMF keys sent as audio tones (analogue gateways, old phones) and pass them
    /// as SIP INFO to a side that takes INFO (`sip.trunks[].dtmf = "info"`). Off by default:
    /// speech or music can imitate a key (talk-off), and most phones send RFC 4733 events.
    pub inband_dtmf: bool,
}

/// The box's address as `peer` must see it (`media.public_ip`, `media.local_networks`): the
/// NAT's public one for a peer outside the local networks, else the box's `own`.
pub fn announced_address(public_ip: Option<IpAddr>, local_networks: &[IpNet], peer: IpAddr, own: IpAddr) -> IpAddr {
    let peer = peer.to_canonical();
    match public_ip {
        Some(public) if !peer.is_loopback() && !local_networks.iter().any(|n| n.contains(&peer)) => public,
        _ => own,
    }
}

/// Networks behind a branch router: private (RFC 1918, RFC 4193), shared (RFC 6598), link-local.
fn default_local_networks() -> Vec<IpNet> {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

impl MediaConfig {
    /// The address to announce to `peer`: see [`announced_address`].
    pub fn announced_to(&self, peer: IpAddr, own: IpAddr) -> IpAddr {
        announced_address(self.public_ip, &self.local_networks, peer, own)
    }

    /// How many ports at the top of the range are the camera viewers' (WHEP): a quarter of the
    /// range, at most 32 (two per viewer at the most viewers the box serves, and spare).
    fn viewer_port_count(&self) -> u16 {
        let span = u32::from(self.rtp_port_max.saturating_sub(self.rtp_port_min)) + 1;
        (span / 4).min(32) as u16
    }

    /// Ports for calls (RTP/RTCP pairs from the bottom of the range). Calls and camera viewers
    /// each have their own part: the gateway hands out ports without binding them first, so a
    /// port a viewer had taken would leave a call without media.
    pub fn call_ports(&self) -> (u16, u16) {
        (self.rtp_port_min, self.rtp_port_max - self.viewer_port_count())
    }

    /// Ports for camera viewers (WHEP), the top of the range.
    pub fn viewer_ports(&self) -> (u16, u16) {
        (self.rtp_port_max - self.viewer_port_count().max(1) + 1, self.rtp_port_max)
    }
}

/// Codec names the media engine knows.
pub const KNOWN_CODECS: &[&str] = &["opus", "G722", "PCMU", "PCMA", "telephone-event"];

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtp_port_min: 20000,
            rtp_port_max: 29999,
            codecs: vec!["opus".into(), "G722".into(), "PCMU".into(), "PCMA".into()],
            timeout_seconds: 60,
            max_transcoded_calls: 100,
            public_ip: None,
            local_networks: default_local_networks(),
            inband_dtmf: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// ALSA device name, or `auto` to pick the first one (a simulated one when none exists).
    pub capture_device: String,
    pub playback_device: String,
    /// Playback volume in percent.
    pub playback_volume: u8,
    pub capture_gain: u8,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self { capture_device: "auto".into(), playback_device: "auto".into(), playback_volume: 80, capture_gain: 50 }
    }
}

/// Capture and encoding of real (V4L2) cameras; a camera not listed uses the
/// defaults of [`CameraDevice`]. The simulated camera is fixed (640x360, 15 fps).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CamerasConfig {
    pub devices: Vec<CameraDevice>,
    pub recording: RecordingConfig,
}

/// Recording of camera streams to segment files on the data partition.
/// The recording is the stream viewers get (no second encode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    pub enabled: bool,
    /// The cameras recorded (ids as in `/api/v1/cameras`); empty: every camera.
    pub cameras: Vec<String>,
    /// Length of one file.
    pub segment_seconds: u32,
    /// One of [`RECORDING_FORMATS`]: fragmented MP4 (plays in browsers and
    /// stays readable up to the last second after a power cut) or Matroska.
    pub format: String,
    /// The oldest files go when all recordings together exceed this.
    pub max_total_mb: u32,
    /// Files older than this go; 0 keeps them until the size limit.
    pub max_age_hours: u32,
}

/// The container formats of recordings.
pub const RECORDING_FORMATS: &[&str] = &["mp4", "mkv"];

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cameras: Vec::new(),
            segment_seconds: 300,
            format: "mp4".into(),
            max_total_mb: 2048,
            max_age_hours: 0,
        }
    }
}

/// The H.264 encoders a camera may ask for (`auto`: the first the box has).
pub const CAMERA_ENCODERS: &[&str] = &["auto", "v4l2h264enc", "x264enc", "openh264enc"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CameraDevice {
    /// The camera's id as in `/api/v1/cameras` (`video0` for /dev/video0).
    pub id: String,
    /// The size wished for; the device's nearest is taken.
    pub width: u32,
    pub height: u32,
    /// Frames per second; 0 lets the device choose.
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// One of [`CAMERA_ENCODERS`]; a named one the box lacks falls back to `auto`'s order.
    pub encoder: String,
}

impl Default for CameraDevice {
    fn default() -> Self {
        Self { id: String::new(), width: 1280, height: 720, fps: 0, bitrate_kbps: 1500, encoder: "auto".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// Eclipse hawkBit server for fleet rollouts; none disables polling.
    pub hawkbit_url: Option<String>,
    pub hawkbit_tenant: String,
    /// The box's name on the hawkBit server; none: `system.hostname`.
    pub hawkbit_controller_id: Option<String>,
    /// The target security token hawkBit issued for this box (`Authorization: TargetToken`);
    /// none when the server lets targets in without one (anonymous download, a test server).
    pub hawkbit_target_token: Option<PlainSecret>,
    /// Reboot into the new slot as soon as a rollout's bundle is installed (else the next
    /// reboot starts it, and hawkBit hears the result then).
    pub hawkbit_reboot: bool,
    /// How often to ask the server when it says nothing itself (hawkBit's `polling.sleep` wins).
    pub poll_interval_seconds: u32,
    /// Accept bundles older than the running version.
    pub allow_downgrade: bool,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            hawkbit_url: None,
            hawkbit_tenant: "DEFAULT".into(),
            hawkbit_controller_id: None,
            hawkbit_target_token: None,
            hawkbit_reboot: true,
            poll_interval_seconds: 3600,
            allow_downgrade: false,
        }
    }
}

impl Config {
    /// A configuration with every optional field filled: the UI derives field
    /// types from it, and tests use it as a rich valid document.
    pub fn example() -> Config {
        let mut config = Config::default();
        config.network.address = "192.168.1.10/24".parse().ok();
        config.network.gateway = "192.168.1.1".parse().ok();
        config.network.metrics_listen = "127.0.0.1:9100".parse().ok();
        config.media.public_ip = "203.0.113.20".parse().ok();
        config.sip.users.push(SipUser {
            username: "1001".into(),
            password: HashedSecret::new("secret1001"),
            display_name: Some("Front desk".into()),
        });
        config.sip.trunks.push(SipTrunk {
            name: "pstn".into(),
            host: "127.0.0.1".into(),
            port: 5090,
            username: Some("branch".into()),
            password: Some(PlainSecret::new("trunkpass")),
            ..SipTrunk::default()
        });
        config.sip.routes.push(SipRoute { prefix: "9".into(), strip: 1, trunk: "pstn".into() });
        config.turn.users.push(TurnUser { username: "app".into(), password: HashedSecret::new("turnsecret") });
        config.turn.auth_secret = Some(PlainSecret::new("restsecret"));
        config.turn.external_ip = "203.0.113.10".parse().ok();
        config.turn.relay_ip = "192.168.1.10".parse().ok();
        config.turn.relay_ipv6 = "2001:db8:10::10".parse().ok();
        config.turn.external_ipv6 = "2001:db8:20::10".parse().ok();
        config.turn.listen_ips = ["192.168.1.10", "2001:db8:10::10"].iter().filter_map(|ip| ip.parse().ok()).collect();
        config.update.hawkbit_url = Some("https://hawkbit.example".into());
        config.update.hawkbit_controller_id = Some("branch-0042".into());
        config.update.hawkbit_target_token = Some(PlainSecret::new("0123456789abcdef0123456789abcdef"));
        config.cameras.devices.push(CameraDevice { id: "video0".into(), fps: 30, ..CameraDevice::default() });
        config
    }
}
