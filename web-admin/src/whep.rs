//! WHEP camera viewing (RFC 9725): `POST /whep/{camera}` takes an SDP offer
//! and answers `201` with the SDP answer (every candidate in it: the box does
//! not trickle) and `Location: /whep/{camera}/{session}`; `DELETE` on that
//! location ends the session.
//!
//! Authorisation, either of:
//! - the admin session cookie (viewer role or higher), from the box's own
//!   origin only (the CSRF guard refuses it from elsewhere, as for every
//!   state-changing request);
//! - `Authorization: Bearer <viewer token>`, from any origin (players on a
//!   customer's page). A viewer token is minted by a logged-in viewer at
//!   `POST /api/v1/cameras/{id}/viewer-token` and is
//!   `{camera}.{expires_unix}.{hex HMAC-SHA256(key, "whep:{camera}:{expires_unix}")}`:
//!   bound to one camera, expiring (at most [`MAX_TOKEN_TTL`]), checked in
//!   constant time, with nothing stored per token. The key is 32 random bytes
//!   in `DATA_DIR/viewer-token.key` (0600); deleting it revokes every token.
//!   When a bearer token is present it alone decides (a cookie is not a fallback).
//!
//! Cross-origin players need CORS: `/whep` answers preflights and exposes
//! `Location`. `Access-Control-Allow-Origin: *` is safe here because the
//! cookie is never honoured cross-origin (no `Allow-Credentials`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use branchgate_capture::whep::{WhepError, WhepLimits};
use branchgate_config::Role;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::AppState;
use crate::api::json_error;
use crate::auth::ApiUser;

/// Viewers at a time, all cameras together: each costs a UDP port, a DTLS
/// session and its share of the uplink; the encode is shared anyway.
pub const MAX_VIEWERS: usize = 16;
/// Longest lifetime of a viewer token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The key viewer tokens are signed with.
#[derive(Clone)]
pub struct ViewerKey(std::sync::Arc<[u8; 32]>);

impl std::fmt::Debug for ViewerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewerKey(..)")
    }
}

impl ViewerKey {
    /// The key in `dir/viewer-token.key`, created (0600) on first use. If it
    /// cannot be read or written the key lives in memory only: tokens then
    /// stop working at the next restart, which is safe.
    pub fn load_or_create(dir: &Path) -> ViewerKey {
        let path = dir.join("viewer-token.key");
        if let Some(key) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| hex::decode(text.trim()).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        {
            return ViewerKey(std::sync::Arc::new(key));
        }
        let key: [u8; 32] = rand::random();
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            file.write_all(hex::encode(key).as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "viewer token key kept in memory only");
        }
        ViewerKey(std::sync::Arc::new(key))
    }

    fn mac(&self, camera: &str, expires: u64) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]).unwrap_or_else(|_| unreachable!());
        mac.update(format!("whep:{camera}:{expires}").as_bytes());
        mac
    }

    /// A token for `camera` valid until `expires` (Unix seconds).
    pub fn mint(&self, camera: &str, expires: u64) -> String {
        format!("{camera}.{expires}.{}", hex::encode(self.mac(camera, expires).finalize().into_bytes()))
    }

    /// Whether `token` lets its bearer watch `camera` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, camera: &str, now: u64) -> bool {
        let mut parts = token.rsplitn(3, '.');
        let (Some(signature), Some(expires), Some(token_camera)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (Ok(expires), Ok(signature)) = (expires.parse::<u64>(), hex::decode(signature)) else {
            return false;
        };
        token_camera == camera && now < expires && self.mac(camera, expires).verify_slice(&signature).is_ok()
    }
}

fn unix_now() -> u64 {
    crate::now_ms() / 1000
}

/// Headers every `/whep` answer carries for cross-origin players.
fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "POST, DELETE, OPTIONS"),
        ("access-control-allow-headers", "authorization, content-type"),
        ("access-control-expose-headers", "location"),
        ("access-control-max-age", "600"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The bearer token of a request, if it names one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Ok when the request may watch `camera` (see the module documentation).
fn authorize(state: &AppState, headers: &HeaderMap, camera: &str) -> Result<(), Response> {
    let refused = |status: StatusCode, message: &str| {
        let mut response = json_error(status, message);
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"branchgate\""));
        Err(response)
    };
    if let Some(token) = bearer(headers) {
        if state.viewer_key.verify(token, camera, unix_now()) {
            return Ok(());
        }
        return refused(StatusCode::UNAUTHORIZED, "the viewer token is not valid for this camera (or has expired)");
    }
    match crate::auth::session_user(headers, state) {
        Some(user) => user.require(Role::Viewer),
        None => refused(StatusCode::UNAUTHORIZED, "log in or send Authorization: Bearer <viewer token>"),
    }
}

/// Addresses the box offers candidates on: every interface address except
/// IPv6 link-local ones (they need a scope the SDP cannot carry).
fn candidate_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|interfaces| {
            interfaces
                .into_iter()
                .map(|i| i.ip())
                .filter(|ip| match ip {
                    IpAddr::V4(_) => true,
                    IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
                })
                .collect()
        })
        .unwrap_or_default();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        addresses.push(IpAddr::from([127, 0, 0, 1]));
    }
    addresses
}

/// `OPTIONS /whep/...`: the CORS preflight of a player on another origin.
pub async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

/// `POST /whep/{camera}`: a viewer's offer in, the answer out.
pub async fn post_offer(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    cors(offer(&state, &id, &headers, &body).await)
}

async fn offer(state: &AppState, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let cameras = branchgate_capture::cameras();
    let Some(camera) = cameras.iter().find(|c| c.id == id) else {
        return json_error(StatusCode::NOT_FOUND, &format!("no camera {id}"));
    };
    if let Err(response) = authorize(state, headers, id) {
        return response;
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/sdp") {
        return json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the SDP offer as Content-Type: application/sdp");
    }
    let Ok(offer) = std::str::from_utf8(body) else {
        return json_error(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    let media = &state.store.current().config.media;
    let (port_min, port_max) = media.viewer_ports();
    let limits = WhepLimits { port_min, port_max, max_viewers: MAX_VIEWERS };
    match state.whep.open(camera, offer, &candidate_addresses(), media.public_ip, limits).await {
        Ok(answer) => (
            StatusCode::CREATED,
            [(CONTENT_TYPE, "application/sdp".to_string()), (LOCATION, format!("/whep/{id}/{}", answer.session))],
            answer.sdp,
        )
            .into_response(),
        Err(e @ WhepError::BadOffer(_)) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ WhepError::NoVideo(_)) => json_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        Err(e) => {
            tracing::warn!(camera = id, error = %e, "WHEP viewer refused");
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

/// `DELETE /whep/{camera}/{session}`: the viewer leaves.
pub async fn delete_session(
    State(state): State<AppState>,
    UrlPath((id, session)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&state, &headers, &id) {
        return cors(response);
    }
    cors(if state.whep.close(&id, &session) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_error(StatusCode::NOT_FOUND, "no such viewer session")
    })
}

/// `PATCH /whep/{camera}/{session}`: trickle ICE and ICE restarts are not
/// supported (every candidate is in the answer); RFC 9725 §4.3 allows 405.
pub async fn patch_session() -> Response {
    cors(json_error(StatusCode::METHOD_NOT_ALLOWED, "trickle ICE is not supported: the answer has every candidate"))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    ttl_seconds: Option<u64>,
}

/// `POST /api/v1/cameras/{id}/viewer-token`: a bearer token for a player.
pub async fn post_viewer_token(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Viewer) {
        return r;
    }
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
        }
    };
    if !branchgate_capture::cameras().iter().any(|c| c.id == id) {
        return json_error(StatusCode::NOT_FOUND, &format!("no camera {id}"));
    }
    let ttl = request.ttl_seconds.map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("ttl_seconds must be 1..={}", MAX_TOKEN_TTL.as_secs()),
        );
    }
    let expires = unix_now() + ttl.as_secs();
    Json(json!({
        "token": state.viewer_key.mint(&id, expires),
        "camera": id,
        "expires_at": crate::rfc3339(expires * 1000),
        "whep_url": format!("/whep/{id}"),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_camera_and_time_and_key() {
        let dir = tempfile::tempdir().expect("dir");
        let key = ViewerKey::load_or_create(dir.path());
        let token = key.mint("sim0", 1000);
        assert!(key.verify(&token, "sim0", 999));
        assert!(!key.verify(&token, "sim0", 1000), "expired");
        assert!(!key.verify(&token, "video0", 999), "another camera");
        assert!(!key.verify(&token.replace(".1000.", ".2000."), "sim0", 999), "extended expiry");
        assert!(!key.verify("sim0.1000.zz", "sim0", 999));
        assert!(!key.verify("", "sim0", 0));
        let again = ViewerKey::load_or_create(dir.path());
        assert!(again.verify(&token, "sim0", 999), "the key survives a restart");
        let other = ViewerKey::load_or_create(tempfile::tempdir().expect("dir").path());
        assert!(!other.verify(&token, "sim0", 999), "another box's key");
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc.1.ff"));
        assert_eq!(bearer(&headers), Some("abc.1.ff"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }
}
