//! Validation of a whole configuration, reported field by field so that the UI
//! can show each message next to its input and the API can return them as 422.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

use crate::schema::{ADMIN_USERNAME, AddressMode, Config, KNOWN_CODECS, SipTransport, TurnConfig};
use crate::secret::SecretState;

/// One problem with one field. `path` is dotted with indices, e.g. `sip.trunks[0].port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }
}

#[derive(Default)]
struct Report(Vec<FieldError>);

impl Report {
    fn check(&mut self, ok: bool, path: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.0.push(FieldError::new(path, message));
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits and hyphens (RFC 1123).
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Usernames for logins, SIP and TURN: what fits in a SIP URI user part and a
/// TURN USERNAME without escaping.
pub fn is_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

fn is_dial_string(text: &str) -> bool {
    !text.is_empty() && text.len() <= 32 && text.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | '*' | '#'))
}

fn is_timezone(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.contains("..")
        && !name.starts_with('/')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

fn is_http_url(text: &str) -> bool {
    let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            !host.is_empty() && !text.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

impl Config {
    /// Every problem of the configuration; empty when it may be applied.
    ///
    /// Secrets must already be sealed (see [`Config::seal`]).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.validate_system(&mut r);
        self.validate_network(&mut r);
        self.validate_admin(&mut r);
        self.validate_sip(&mut r);
        self.validate_turn(&mut r);
        self.validate_media(&mut r);
        self.validate_audio_update(&mut r);
        self.validate_cameras(&mut r);
        self.validate_port_clashes(&mut r);
        r.0
    }

    fn validate_system(&self, r: &mut Report) {
        let s = &self.system;
        r.check(
            is_hostname(&s.hostname) && !s.hostname.contains('.'),
            "system.hostname",
            "a host name is 1-63 letters, digits or hyphens, not starting or ending with a hyphen",
        );
        r.check(is_timezone(&s.timezone), "system.timezone", "use an IANA time zone name such as UTC or Europe/Berlin");
    }

    fn validate_network(&self, r: &mut Report) {
        let n = &self.network;
        if n.mode == AddressMode::Static {
            match n.address {
                None => r.check(false, "network.address", "a static address is required in static mode"),
                Some(net) => {
                    r.check(
                        !net.addr().is_unspecified() && !net.addr().is_multicast() && !net.addr().is_loopback(),
                        "network.address",
                        "not a usable host address",
                    );
                    if let Some(gw) = n.gateway {
                        r.check(
                            net.contains(&gw) && gw != net.addr(),
                            "network.gateway",
                            format!("the gateway must be another address inside {}", net.trunc()),
                        );
                    }
                }
            }
        }
        r.check(n.admin_https_port != 0, "network.admin_https_port", "the HTTPS port cannot be 0");
        r.check(
            n.admin_http_port != n.admin_https_port,
            "network.admin_http_port",
            "must differ from the HTTPS port (0 turns the redirect off)",
        );
        for (i, dns) in n.dns.iter().enumerate() {
            r.check(
                !dns.is_unspecified() && !dns.is_multicast(),
                format!("network.dns[{i}]"),
                "not a usable DNS server address",
            );
        }
        if let Some(listen) = n.metrics_listen {
            r.check(listen.port() != 0, "network.metrics_listen", "give a port");
        }
    }

    fn validate_admin(&self, r: &mut Report) {
        let a = &self.admin;
        r.check(a.password.state() == SecretState::Argon2, "admin.password", "the admin password is required");
        r.check(
            (1..=24 * 60).contains(&a.session_idle_minutes),
            "admin.session_idle_minutes",
            "between 1 and 1440 minutes",
        );
        r.check(
            (1..=24 * 30).contains(&a.session_absolute_hours),
            "admin.session_absolute_hours",
            "between 1 and 720 hours",
        );
        r.check((1..=100).contains(&a.lockout_threshold), "admin.lockout_threshold", "between 1 and 100 failed logins");
        r.check((1..=24 * 60).contains(&a.lockout_minutes), "admin.lockout_minutes", "between 1 and 1440 minutes");
        r.check(
            (10..=3600).contains(&a.confirm_timeout_seconds),
            "admin.confirm_timeout_seconds",
            "between 10 and 3600 seconds",
        );
        match (&a.tls_certificate, &a.tls_private_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                r.check(
                    cert.contains("-----BEGIN CERTIFICATE-----"),
                    "admin.tls_certificate",
                    "expected a PEM certificate chain",
                );
                r.check(
                    key.expose().contains("-----BEGIN") && key.expose().contains("PRIVATE KEY-----"),
                    "admin.tls_private_key",
                    "expected a PEM private key",
                );
            }
            (Some(_), None) => r.check(false, "admin.tls_private_key", "the certificate needs its private key"),
            (None, Some(_)) => r.check(false, "admin.tls_certificate", "the private key needs its certificate"),
        }
        let mut seen = HashSet::new();
        for (i, user) in a.users.iter().enumerate() {
            let path = format!("admin.users[{i}]");
            r.check(
                is_username(&user.username),
                format!("{path}.username"),
                "1-64 letters, digits, '.', '_', '-' or '+'",
            );
            r.check(
                user.username != ADMIN_USERNAME,
                format!("{path}.username"),
                "'admin' is the built-in account (admin.password)",
            );
            r.check(seen.insert(user.username.as_str()), format!("{path}.username"), "this username is used twice");
            r.check(user.password.state() == SecretState::Argon2, format!("{path}.password"), "a password is required");
        }
    }

    fn validate_sip(&self, r: &mut Report) {
        let s = &self.sip;
        r.check(is_hostname(&s.domain), "sip.domain", "a domain name such as branch.example");
        r.check(s.udp_port != 0, "sip.udp_port", "cannot be 0");
        r.check(s.tcp_port != 0, "sip.tcp_port", "cannot be 0");
        r.check(s.tls_port != 0, "sip.tls_port", "cannot be 0");
        r.check(s.tls_port != s.tcp_port, "sip.tls_port", "must differ from the TCP port");
        for (i, origin) in s.ws_allowed_origins.iter().enumerate() {
            r.check(
                is_http_url(origin) && !origin.trim_end_matches('/').contains(['?', '#']),
                format!("sip.ws_allowed_origins[{i}]"),
                "an origin such as https://app.example.com",
            );
        }
        let users = s.users.iter().map(|u| (u.username.as_str(), &u.password));
        check_digest_users(r, "sip.users", users, &s.domain, "sip.domain");
        let mut trunk_names = HashSet::new();
        for (i, trunk) in s.trunks.iter().enumerate() {
            let path = format!("sip.trunks[{i}]");
            r.check(is_username(&trunk.name), format!("{path}.name"), "1-64 letters, digits, '.', '_', '-' or '+'");
            r.check(trunk_names.insert(trunk.name.as_str()), format!("{path}.name"), "this trunk name is used twice");
            r.check(
                trunk.host.parse::<IpAddr>().is_ok() || is_hostname(&trunk.host),
                format!("{path}.host"),
                "an IP address or a host name",
            );
            r.check(trunk.port != 0, format!("{path}.port"), "cannot be 0");
            if trunk.register {
                r.check(
                    trunk.username.as_deref().is_some_and(is_username),
                    format!("{path}.username"),
                    "registration needs a username",
                );
                r.check(
                    trunk.password.as_ref().is_some_and(|p| !p.expose().is_empty()),
                    format!("{path}.password"),
                    "registration needs a password",
                );
            }
            // A TLS trunk's certificate must name `host` (a DNS name, or an IP address in its
            // subjectAltName): checked when the box connects.
            if let Some(pem) = &trunk.tls_ca {
                r.check(
                    trunk.transport == SipTransport::Tls,
                    format!("{path}.tls_ca"),
                    "only TLS trunks use a CA certificate",
                );
                r.check(
                    pem.contains("-----BEGIN CERTIFICATE-----") && pem.len() <= 64 * 1024,
                    format!("{path}.tls_ca"),
                    "PEM certificate(s) (-----BEGIN CERTIFICATE-----), at most 64 KiB",
                );
            }
            r.check(
                !trunk.tls_client_certificate || trunk.transport == SipTransport::Tls,
                format!("{path}.tls_client_certificate"),
                "only TLS trunks take a client certificate",
            );
        }
        for (i, route) in s.routes.iter().enumerate() {
            let path = format!("sip.routes[{i}]");
            r.check(
                route.prefix.is_empty() || is_dial_string(&route.prefix),
                format!("{path}.prefix"),
                "digits, '+', '*' or '#' (empty matches every number)",
            );
            r.check(route.strip <= 32, format!("{path}.strip"), "at most 32 digits");
            r.check(
                trunk_names.contains(route.trunk.as_str()),
                format!("{path}.trunk"),
                format!("no trunk is named '{}'", route.trunk),
            );
        }
        for (i, number) in s.emergency_numbers.iter().enumerate() {
            r.check(is_dial_string(number), format!("sip.emergency_numbers[{i}]"), "digits, '+', '*' or '#'");
        }
    }

    fn validate_turn(&self, r: &mut Report) {
        let t = &self.turn;
        r.check(
            !t.realm.is_empty() && t.realm.len() <= 127 && !t.realm.contains('"'),
            "turn.realm",
            "1-127 characters without quotes",
        );
        r.check(t.udp_port != 0, "turn.udp_port", "cannot be 0");
        r.check(t.tcp_port != 0, "turn.tcp_port", "cannot be 0");
        r.check(t.tls_port != 0 && t.tls_port != t.tcp_port, "turn.tls_port", "cannot be 0 or the TCP port");
        let users = t.users.iter().map(|u| (u.username.as_str(), &u.password));
        check_digest_users(r, "turn.users", users, &t.realm, "turn.realm");
        if let Some(secret) = &t.auth_secret {
            r.check(secret.expose().len() >= 8, "turn.auth_secret", "use at least 8 characters");
        }
        for (i, net) in t.allowed_peers.iter().enumerate() {
            let never = match net.addr() {
                IpAddr::V4(v4) => v4.octets()[0] == 0,
                IpAddr::V6(v6) => v6.is_unspecified(),
            };
            r.check(
                !never && net.prefix_len() > 0,
                format!("turn.allowed_peers[{i}]"),
                "0.0.0.0/8, :: and whole address families cannot be opened",
            );
        }
        check_listen_ips(r, &t.listen_ips);
        for (path, ip) in [("turn.relay_ipv6", t.relay_ipv6), ("turn.external_ipv6", t.external_ipv6)] {
            if let Some(ip) = ip {
                r.check(usable_ipv6(&ip), path, IPV6_RELAY_RULE);
            }
        }
        // One IPv6 relay address: with relay_ipv6 set, an IPv6 relay_ip would be a second one.
        r.check(
            !(t.relay_ipv6.is_some() && t.relay_ip.is_some_and(|ip| ip.is_ipv6())),
            "turn.relay_ip",
            "an IPv4 address when turn.relay_ipv6 is set (it holds the IPv6 relay address)",
        );
        r.check(t.external_ipv6.is_none() || t.relay_ipv6.is_some(), "turn.external_ipv6", "needs turn.relay_ipv6");
        r.check(
            t.relay_port_min >= 1024 && t.relay_port_min < t.relay_port_max,
            "turn.relay_port_min",
            "the relay range needs min >= 1024 and min < max",
        );
        r.check((1..=100_000).contains(&t.user_quota), "turn.user_quota", "between 1 and 100000 allocations");
        r.check(
            t.total_quota >= t.user_quota && t.total_quota <= 100_000,
            "turn.total_quota",
            "at least the per-user quota, at most 100000",
        );
        r.check(
            t.max_allocation_kbps == 0 || (64..=10_000_000).contains(&t.max_allocation_kbps),
            "turn.max_allocation_kbps",
            "0 (no cap) or between 64 kbit/s (one voice call) and 10000000",
        );
        let media = &self.media;
        r.check(
            t.relay_port_max < media.rtp_port_min || t.relay_port_min > media.rtp_port_max,
            "turn.relay_port_min",
            "the TURN relay range overlaps the media port range",
        );
    }

    fn validate_media(&self, r: &mut Report) {
        let m = &self.media;
        r.check(
            m.rtp_port_min >= 1024 && m.rtp_port_min.is_multiple_of(2),
            "media.rtp_port_min",
            "an even port of 1024 or above",
        );
        r.check(
            u32::from(m.rtp_port_max) >= u32::from(m.rtp_port_min) + 3,
            "media.rtp_port_max",
            "the range needs room for at least two RTP/RTCP pairs",
        );
        r.check(!m.codecs.is_empty(), "media.codecs", "list at least one codec");
        r.check((5..=86_400).contains(&m.timeout_seconds), "media.timeout_seconds", "between 5 seconds and a day");
        r.check(m.max_transcoded_calls <= 10_000, "media.max_transcoded_calls", "at most 10000");
        if let Some(ip) = m.public_ip {
            r.check(
                !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast()),
                "media.public_ip",
                "the NAT's public unicast address (not 0.0.0.0, loopback or multicast)",
            );
        }
        r.check(m.local_networks.len() <= 64, "media.local_networks", "at most 64 networks");
        let mut seen = HashSet::new();
        for (i, codec) in m.codecs.iter().enumerate() {
            r.check(
                KNOWN_CODECS.contains(&codec.as_str()),
                format!("media.codecs[{i}]"),
                format!("unknown codec; choose from {}", KNOWN_CODECS.join(", ")),
            );
            r.check(seen.insert(codec.as_str()), format!("media.codecs[{i}]"), "listed twice");
        }
    }

    fn validate_audio_update(&self, r: &mut Report) {
        let a = &self.audio;
        r.check(!a.capture_device.is_empty(), "audio.capture_device", "a device name or auto");
        r.check(!a.playback_device.is_empty(), "audio.playback_device", "a device name or auto");
        r.check(a.playback_volume <= 100, "audio.playback_volume", "0-100 percent");
        r.check(a.capture_gain <= 100, "audio.capture_gain", "0-100 percent");
        let u = &self.update;
        if let Some(url) = &u.hawkbit_url {
            r.check(is_http_url(url), "update.hawkbit_url", "an http:// or https:// URL");
        }
        r.check(is_username(&u.hawkbit_tenant), "update.hawkbit_tenant", "letters, digits, '.', '_', '-' or '+'");
        if let Some(id) = &u.hawkbit_controller_id {
            // It is a path segment of every DDI URL.
            r.check(is_username(id), "update.hawkbit_controller_id", "letters, digits, '.', '_', '-' or '+'");
        }
        if let Some(token) = &u.hawkbit_target_token {
            let token = token.expose();
            r.check(
                !token.is_empty() && token.len() <= 256 && token.chars().all(|c| c.is_ascii_graphic()),
                "update.hawkbit_target_token",
                "the token from the hawkBit server (printable characters, no spaces)",
            );
        }
        r.check(
            (60..=7 * 24 * 3600).contains(&u.poll_interval_seconds),
            "update.poll_interval_seconds",
            "between 60 seconds and a week",
        );
    }

    fn validate_cameras(&self, r: &mut Report) {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.cameras.devices.iter().enumerate() {
            let at = |field: &str| format!("cameras.devices[{i}].{field}");
            r.check(is_username(&c.id), at("id"), "a camera id such as video0");
            r.check(seen.insert(c.id.as_str()), at("id"), "listed twice");
            r.check(
                (16..=4096).contains(&c.width) && c.width % 2 == 0,
                at("width"),
                "an even number of pixels, 16-4096",
            );
            r.check(
                (16..=2160).contains(&c.height) && c.height % 2 == 0,
                at("height"),
                "an even number of pixels, 16-2160",
            );
            r.check(c.fps <= 120, at("fps"), "0 (the device's rate) to 120");
            r.check((64..=50_000).contains(&c.bitrate_kbps), at("bitrate_kbps"), "64-50000 kbit/s");
            r.check(
                crate::schema::CAMERA_ENCODERS.contains(&c.encoder.as_str()),
                at("encoder"),
                format!("one of {}", crate::schema::CAMERA_ENCODERS.join(", ")),
            );
        }
        let recording = &self.cameras.recording;
        for (i, id) in recording.cameras.iter().enumerate() {
            r.check(is_username(id), format!("cameras.recording.cameras[{i}]"), "a camera id such as video0");
        }
        r.check(
            (10..=3600).contains(&recording.segment_seconds),
            "cameras.recording.segment_seconds",
            "10-3600 seconds",
        );
        r.check(
            crate::schema::RECORDING_FORMATS.contains(&recording.format.as_str()),
            "cameras.recording.format",
            format!("one of {}", crate::schema::RECORDING_FORMATS.join(", ")),
        );
        r.check(
            (16..=10_000_000).contains(&recording.max_total_mb),
            "cameras.recording.max_total_mb",
            "16 MB to 10 TB",
        );
        r.check(recording.max_age_hours <= 24 * 366, "cameras.recording.max_age_hours", "0 (no limit) to a year");
    }

    /// Two services cannot listen on the same port and protocol.
    fn validate_port_clashes(&self, r: &mut Report) {
        let mut tcp: HashMap<u16, &str> = HashMap::new();
        let mut udp: HashMap<u16, &str> = HashMap::new();
        let metrics_port = self.network.metrics_listen.map_or(0, |a| a.port());
        let listeners: [(&str, u16, bool); 10] = [
            ("network.metrics_listen", metrics_port, true),
            ("network.admin_https_port", self.network.admin_https_port, true),
            ("network.admin_http_port", self.network.admin_http_port, true),
            ("network.rtsp_port", self.network.rtsp_port, true),
            ("sip.tcp_port", self.sip.tcp_port, true),
            ("sip.tls_port", self.sip.tls_port, true),
            ("turn.tcp_port", self.turn.tcp_port, true),
            ("turn.tls_port", self.turn.tls_port, true),
            ("sip.udp_port", self.sip.udp_port, false),
            ("turn.udp_port", self.turn.udp_port, false),
        ];
        for (path, port, is_tcp) in listeners {
            if port == 0 {
                continue;
            }
            let table = if is_tcp { &mut tcp } else { &mut udp };
            if let Some(other) = table.insert(port, path) {
                r.check(false, path, format!("port {port} is already used by {other}"));
            }
            let in_media = (self.media.rtp_port_min..=self.media.rtp_port_max).contains(&port);
            let in_relay = (self.turn.relay_port_min..=self.turn.relay_port_max).contains(&port);
            r.check(
                !in_media && !in_relay,
                path,
                format!("port {port} lies inside the media or TURN relay port range"),
            );
        }
    }
}

/// SIP and TURN users: valid, unique usernames with a digest key for `realm`.
fn check_digest_users<'a>(
    r: &mut Report,
    list: &str,
    users: impl Iterator<Item = (&'a str, &'a crate::secret::HashedSecret)>,
    realm: &str,
    realm_field: &str,
) {
    let mut seen = HashSet::new();
    for (i, (username, password)) in users.enumerate() {
        let path = format!("{list}[{i}]");
        r.check(is_username(username), format!("{path}.username"), "1-64 letters, digits, '.', '_', '-' or '+'");
        r.check(seen.insert(username), format!("{path}.username"), "this username is used twice");
        check_digest(r, password, realm, format!("{path}.password"), realm_field);
    }
}

fn check_digest(r: &mut Report, secret: &crate::secret::HashedSecret, realm: &str, path: String, realm_field: &str) {
    match secret.digest_key() {
        None => r.check(false, path, "a password is required"),
        Some(key) => r.check(
            key.realm == realm,
            path,
            format!("{realm_field} changed since this password was stored; enter the password again"),
        ),
    }
}

/// `turn.listen_ips`: addresses a listener can bind to, each once, at most
/// [`TurnConfig::MAX_LISTEN_IPS`]; a family's wildcard already covers its other addresses (binding
/// both on one port fails).
fn check_listen_ips(r: &mut Report, listen_ips: &[IpAddr]) {
    r.check(
        listen_ips.len() <= TurnConfig::MAX_LISTEN_IPS,
        "turn.listen_ips",
        format!("at most {} addresses", TurnConfig::MAX_LISTEN_IPS),
    );
    let has_wildcard = |ipv4: bool| listen_ips.iter().any(|ip| ip.is_ipv4() == ipv4 && ip.is_unspecified());
    for (i, ip) in listen_ips.iter().enumerate() {
        let path = format!("turn.listen_ips[{i}]");
        let message = match ip {
            IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => Some("not a multicast or broadcast address"),
            IpAddr::V6(v6) if v6.is_multicast() => Some("not a multicast address"),
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                Some("not an IPv4-mapped ::ffff:a.b.c.d address: list the IPv4 address itself")
            }
            // No scope (interface) can be given with the address, so the bind would fail.
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("not a link-local address (fe80::/10)"),
            _ if listen_ips[..i].contains(ip) => Some("listed twice"),
            IpAddr::V4(_) if !ip.is_unspecified() && has_wildcard(true) => {
                Some("0.0.0.0 in the list already covers every IPv4 address")
            }
            IpAddr::V6(_) if !ip.is_unspecified() && has_wildcard(false) => {
                Some(":: in the list already covers every IPv6 address")
            }
            _ => None,
        };
        if let Some(message) = message {
            r.0.push(FieldError::new(path, message));
        }
    }
}

/// What an IPv6 relay address must be.
const IPV6_RELAY_RULE: &str = "a unicast IPv6 address (not ::, multicast, link-local fe80::/10, or an IPv4-mapped \
     ::ffff:a.b.c.d: IPv4 goes in turn.relay_ip)";

/// A unicast IPv6 address a relay socket can bind to and peers can reach: an IPv4-mapped
/// address would be an IPv4 relay in disguise (the IPv4 relay is `turn.relay_ip`), and a
/// link-local one cannot be bound without a scope the field cannot carry.
fn usable_ipv6(ip: &Ipv6Addr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && !ip.is_unicast_link_local() && ip.to_ipv4_mapped().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::HashedSecret;

    /// A valid configuration to break one field at a time.
    fn valid() -> Config {
        let mut config = Config::example();
        config.admin.password = HashedSecret::new("a long admin password");
        let errors = config.seal(&Config::default());
        assert!(errors.is_empty());
        assert_eq!(config.validate(), Vec::new());
        config
    }

    fn paths(config: &Config) -> Vec<String> {
        config.validate().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn the_defaults_need_only_an_admin_password() {
        let config = Config::default();
        assert_eq!(paths(&config), ["admin.password"]);
    }

    #[test]
    fn camera_settings_are_checked_field_by_field() {
        let mut config = valid();
        let good = config.cameras.devices[0].clone();
        config.cameras.devices = vec![
            crate::schema::CameraDevice { width: 641, height: 0, fps: 500, ..good.clone() },
            crate::schema::CameraDevice { bitrate_kbps: 1, encoder: "vp8enc".into(), ..good.clone() },
            crate::schema::CameraDevice { id: "bad id".into(), ..good },
        ];
        assert_eq!(
            paths(&config),
            [
                "cameras.devices[0].width",
                "cameras.devices[0].height",
                "cameras.devices[0].fps",
                "cameras.devices[1].id",
                "cameras.devices[1].bitrate_kbps",
                "cameras.devices[1].encoder",
                "cameras.devices[2].id",
            ]
        );
    }

    #[test]
    fn recording_settings_are_checked_field_by_field() {
        let mut config = valid();
        config.cameras.recording = crate::schema::RecordingConfig {
            enabled: true,
            cameras: vec!["video0".into(), "../etc".into()],
            segment_seconds: 5,
            format: "avi".into(),
            max_total_mb: 1,
            max_age_hours: 24 * 400,
        };
        assert_eq!(
            paths(&config),
            [
                "cameras.recording.cameras[1]",
                "cameras.recording.segment_seconds",
                "cameras.recording.format",
                "cameras.recording.max_total_mb",
                "cameras.recording.max_age_hours",
            ]
        );
        config.cameras.recording =
            crate::schema::RecordingConfig { enabled: true, format: "mkv".into(), ..Default::default() };
        assert_eq!(paths(&config), Vec::<String>::new());
    }

    #[test]
    fn host_names_and_domains() {
        for bad in ["", "-x", "x-", "a b", "under_score", &"x".repeat(64), "dotted.name"] {
            let mut config = valid();
            config.system.hostname = bad.to_string();
            assert_eq!(paths(&config), ["system.hostname"], "{bad:?}");
        }
        let mut config = valid();
        config.sip.domain = "not a domain".into();
        assert!(paths(&config).contains(&"sip.domain".to_string()));
        assert!(is_hostname("branch.example"));
    }

    #[test]
    fn static_addressing_needs_an_address_and_a_gateway_inside_it() {
        let mut config = valid();
        config.network.mode = AddressMode::Static;
        config.network.address = None;
        assert_eq!(paths(&config), ["network.address"]);
        config.network.address = "192.168.1.10/24".parse().ok();
        config.network.gateway = "10.0.0.1".parse().ok();
        assert_eq!(paths(&config), ["network.gateway"]);
        config.network.gateway = "192.168.1.1".parse().ok();
        assert!(paths(&config).is_empty());
    }

    #[test]
    fn two_services_cannot_share_a_port() {
        let mut config = valid();
        config.turn.tcp_port = config.network.admin_https_port;
        assert!(paths(&config).contains(&"turn.tcp_port".to_string()), "{:?}", paths(&config));
        let mut config = valid();
        config.turn.udp_port = config.sip.udp_port;
        assert!(paths(&config).contains(&"turn.udp_port".to_string()));
        // SIP listens on 5060 over both UDP and TCP: different protocols do not clash.
        assert_eq!(valid().sip.udp_port, valid().sip.tcp_port);
        let mut config = valid();
        config.sip.tls_port = 20002;
        assert!(paths(&config).contains(&"sip.tls_port".to_string()), "inside the media range");
    }

    #[test]
    fn ipv6_relay_addresses() {
        let mut config = valid();
        config.turn.relay_ipv6 = "2001:db8::10".parse().ok();
        config.turn.external_ipv6 = "2001:db8:1::10".parse().ok();
        assert!(paths(&config).is_empty(), "{:?}", paths(&config));
        for bad in ["::", "ff02::1", "::ffff:192.0.2.1"] {
            let mut config = valid();
            config.turn.relay_ipv6 = bad.parse().ok();
            assert_eq!(paths(&config), ["turn.relay_ipv6"], "{bad}");
            let mut config = valid();
            config.turn.relay_ipv6 = "2001:db8::10".parse().ok();
            config.turn.external_ipv6 = bad.parse().ok();
            assert_eq!(paths(&config), ["turn.external_ipv6"], "{bad}");
        }
        let mut config = valid();
        config.turn.relay_ipv6 = None;
        assert_eq!(paths(&config), ["turn.external_ipv6"], "an external IPv6 address without an IPv6 relay");
        let mut config = valid();
        config.turn.relay_ipv6 = "2001:db8::10".parse().ok();
        config.turn.relay_ip = "2001:db8::11".parse().ok();
        assert_eq!(paths(&config), ["turn.relay_ip"], "two IPv6 relay addresses");
    }

    #[test]
    fn turn_listen_addresses() {
        let mut config = valid();
        config.turn.listen_ips = ["0.0.0.0", "::1", "2001:db8::10"].iter().map(|ip| ip.parse().expect("ip")).collect();
        assert!(paths(&config).is_empty(), "{:?}", paths(&config));
        config.turn.listen_ips.clear();
        assert!(paths(&config).is_empty(), "none: the wildcard of each family");
        for bad in ["224.0.0.1", "255.255.255.255", "ff02::1", "::ffff:192.0.2.1", "fe80::1"] {
            config.turn.listen_ips = vec!["127.0.0.1".parse().expect("ip"), bad.parse().expect("ip")];
            assert_eq!(paths(&config), ["turn.listen_ips[1]"], "{bad}");
        }
        config.turn.listen_ips = ["::1", "127.0.0.1", "::1"].iter().map(|ip| ip.parse().expect("ip")).collect();
        assert_eq!(paths(&config), ["turn.listen_ips[2]"], "listed twice");
        config.turn.listen_ips = ["127.0.0.1", "::1", "0.0.0.0"].iter().map(|ip| ip.parse().expect("ip")).collect();
        assert_eq!(paths(&config), ["turn.listen_ips[0]"], "an IPv4 address beside 0.0.0.0");
        config.turn.listen_ips = ["::", "::1", "127.0.0.1"].iter().map(|ip| ip.parse().expect("ip")).collect();
        assert_eq!(paths(&config), ["turn.listen_ips[1]"], "an IPv6 address beside ::");
        config.turn.listen_ips = (1..=17u8).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        assert_eq!(paths(&config), ["turn.listen_ips"], "more than 16");
    }

    #[test]
    fn port_ranges() {
        let mut config = valid();
        config.media.rtp_port_min = 20001;
        assert_eq!(paths(&config), ["media.rtp_port_min"]);
        let mut config = valid();
        config.turn.relay_port_min = 25000;
        config.turn.relay_port_max = 35000;
        assert_eq!(paths(&config), ["turn.relay_port_min"]);
    }

    #[test]
    fn routes_must_name_a_trunk_and_trunks_that_register_need_credentials() {
        let mut config = valid();
        config.sip.routes[0].trunk = "nowhere".into();
        config.sip.trunks[0].register = true;
        config.sip.trunks[0].password = None;
        assert_eq!(paths(&config), ["sip.trunks[0].password", "sip.routes[0].trunk"]);
    }

    #[test]
    fn turn_peers_can_never_open_the_unspecified_ranges() {
        for bad in ["0.0.0.0/8", "0.0.0.1/32", "::/128", "0.0.0.0/0", "::/0"] {
            let mut config = valid();
            config.turn.allowed_peers = vec![bad.parse().expect("cidr")];
            assert_eq!(paths(&config), ["turn.allowed_peers[0]"], "{bad}");
        }
        let mut config = valid();
        config.turn.allowed_peers = vec!["127.0.0.1/32".parse().expect("cidr"), "10.0.0.0/8".parse().expect("cidr")];
        assert!(paths(&config).is_empty());
    }

    #[test]
    fn duplicate_users_and_unknown_codecs() {
        let mut config = valid();
        let user = config.sip.users[0].clone();
        config.sip.users.push(user);
        config.media.codecs.push("speex".into());
        assert_eq!(paths(&config), ["sip.users[1].username", "media.codecs[4]"]);
    }

    #[test]
    fn calls_and_camera_viewers_share_the_media_range_without_overlap() {
        let mut config = Config::default();
        assert_eq!(config.media.call_ports(), (20000, 29967));
        assert_eq!(config.media.viewer_ports(), (29968, 29999));
        // The smallest range the validation accepts still has a call pair and a viewer port.
        config.media.rtp_port_max = 20003;
        assert_eq!(config.media.call_ports(), (20000, 20002));
        assert_eq!(config.media.viewer_ports(), (20003, 20003));
    }

    #[test]
    fn behind_a_one_to_one_nat_outside_peers_get_the_public_address() {
        let mut config = Config::default();
        let own: IpAddr = "192.168.1.10".parse().expect("ip");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(config.media.announced_to(ip("198.51.100.7"), own), own, "no NAT configured");
        config.media.public_ip = Some(ip("203.0.113.20"));
        assert_eq!(config.media.announced_to(ip("198.51.100.7"), own), ip("203.0.113.20"));
        assert_eq!(config.media.announced_to(ip("::ffff:198.51.100.7"), own), ip("203.0.113.20"));
        for local in ["192.168.1.50", "10.9.8.7", "172.20.0.1", "100.64.1.1", "127.0.0.1", "::ffff:10.0.0.1", "fd00::1"]
        {
            assert_eq!(config.media.announced_to(ip(local), own), own, "{local} is on the LAN");
        }
        let mut config = valid();
        config.media.public_ip = Some(ip("0.0.0.0"));
        assert_eq!(paths(&config), ["media.public_ip"]);
    }
}
