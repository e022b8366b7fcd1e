//! `POST /phone/ice-servers`: the box's TURN server for the `/phone` page.
//!
//! A browser behind a firewall that lets no UDP out reaches the box's calls
//! only through TURN over TCP or TLS. The page may not carry a TURN secret
//! (it is public), so it asks here with the SIP user's own credentials (the
//! ones it registers with) and gets short-lived TURN REST credentials
//! (`turn.auth_secret`, coturn's `use-auth-secret` scheme) for the box's own
//! TURN listeners. Wrong credentials count towards the same per-address
//! lockout as admin logins.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::header::{CACHE_CONTROL, HOST};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use branchgate_config::DigestKey;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::api::json_error;

/// How long the TURN credentials stay valid: a working day of calls from one login.
const CREDENTIAL_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Deserialize)]
pub struct PhoneLogin {
    username: String,
    password: String,
}

/// The host name the browser reached the box by (its TURN URLs must use the same, or the
/// public address the installer configured): `Host`, or HTTP/2's `:authority`.
fn box_host(headers: &HeaderMap, uri: &Uri, external: Option<std::net::IpAddr>) -> Option<String> {
    if let Some(ip) = external {
        return Some(match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        });
    }
    let host = match headers.get(HOST) {
        Some(value) => value.to_str().ok()?,
        None => uri.authority()?.as_str(),
    };
    crate::bare_host(host)
}

pub async fn ice_servers(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(login) = serde_json::from_slice::<PhoneLogin>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "expected {\"username\": ..., \"password\": ...}");
    };
    if let Some(left) = state.lockout.locked(peer.ip()) {
        let message = format!("too many failed logins from {}; try again in {} s", peer.ip(), left.as_secs() + 1);
        return json_error(StatusCode::TOO_MANY_REQUESTS, &message);
    }
    let config = state.store.current().config.clone();
    let known = config.sip.users.iter().find(|u| u.username == login.username).and_then(|u| u.password.digest_key());
    let given = DigestKey::derive(&login.username, &config.sip.domain, &login.password);
    // The stored HA1 against the given password's: the plain password is never kept.
    if !known.is_some_and(|key| key.realm == config.sip.domain && key.md5 == given.md5) {
        let admin = &config.admin;
        let locked = state.lockout.fail(
            peer.ip(),
            admin.lockout_threshold,
            Duration::from_secs(u64::from(admin.lockout_minutes) * 60),
        );
        tracing::warn!(user = %login.username, peer = %peer.ip(), locked, "phone: wrong SIP credentials");
        return json_error(StatusCode::UNAUTHORIZED, "wrong SIP username or password");
    }
    let turn = &config.turn;
    let (Some(secret), true, Some(host)) =
        (turn.auth_secret.as_ref(), turn.enabled, box_host(&headers, &uri, turn.external_ip))
    else {
        // No TURN to offer (off, or no REST secret to mint credentials with): direct media only.
        return no_store(json!({ "iceServers": [] }));
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (username, credential) = branchgate_turn::auth::rest_credential(
        secret.expose().as_bytes(),
        &login.username,
        now,
        CREDENTIAL_TTL.as_secs(),
    );
    let mut urls = Vec::new();
    if turn.udp_port != 0 {
        urls.push(format!("turn:{host}:{}?transport=udp", turn.udp_port));
    }
    if turn.tcp_port != 0 {
        urls.push(format!("turn:{host}:{}?transport=tcp", turn.tcp_port));
    }
    if turn.tls_port != 0 {
        urls.push(format!("turns:{host}:{}?transport=tcp", turn.tls_port));
    }
    no_store(json!({ "iceServers": [{ "urls": urls, "username": username, "credential": credential }] }))
}

/// Credentials are not for caches.
fn no_store(body: serde_json::Value) -> Response {
    ([(CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls_use_the_host_the_browser_used() {
        let headers = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(HOST, host.parse().expect("header"));
            h
        };
        let path = Uri::from_static("/phone/ice-servers");
        assert_eq!(box_host(&headers("box.example:8443"), &path, None).as_deref(), Some("box.example"));
        assert_eq!(box_host(&headers("10.0.0.2"), &path, None).as_deref(), Some("10.0.0.2"));
        assert_eq!(box_host(&headers("[2001:db8::1]:8443"), &path, None).as_deref(), Some("[2001:db8::1]"));
        assert_eq!(box_host(&headers("evil.example/x?"), &path, None), None);
        let public = "203.0.113.7".parse().ok();
        assert_eq!(box_host(&headers("10.0.0.2"), &path, public).as_deref(), Some("203.0.113.7"));
        // HTTP/2 has no Host header: the request's authority.
        let h2 = Uri::from_static("https://box.example:8443/phone/ice-servers");
        assert_eq!(box_host(&HeaderMap::new(), &h2, None).as_deref(), Some("box.example"));
    }
}
