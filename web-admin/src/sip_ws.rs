//! SIP over WebSocket (RFC 7118) at `wss://<box>:8443/sip`, on the admin
//! listener: each WebSocket message is one SIP message, handed to the
//! gateway like a TCP/TLS connection's (so requests to a user registered
//! here go back over this connection). Digest authenticates SIP here; the
//! admin session cookie is never looked at.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use branchgate_streams::{Connection, StreamEvent};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::json_error;

/// Largest SIP message accepted over WebSocket (as on TCP).
const MAX_MESSAGE: usize = 64 * 1024;
/// SIP-over-WebSocket connections at once (before any digest: keep them bounded).
const MAX_CONNECTIONS: usize = 1000;
/// A connection silent this long is closed (browsers' SIP stacks send keep-alives).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether a browser page from `origin` may connect, per `sip.ws_allowed_origins`
/// (empty: any origin, digest authenticates; web apps on other origins are expected).
/// The box's own origin (`https://` + the `Host` asked for, `authority`) is always allowed:
/// the `/phone` page must keep working when an operator narrows the list to their web apps.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>, authority: Option<&str>) -> bool {
    let own = origin
        .and_then(|o| o.strip_prefix("https://"))
        .is_some_and(|host| authority.is_some_and(|a| a.eq_ignore_ascii_case(host)));
    allowed.is_empty()
        || own
        || origin.is_some_and(|o| allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o)))
}

pub async fn sip_websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let config = state.store.current().config.clone();
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    // HTTP/1.1 upgrades name the host in `Host`; HTTP/2 (RFC 8441) in the URI's authority.
    let authority = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()));
    if !origin_allowed(&config.sip.ws_allowed_origins, origin, authority.as_deref()) {
        return json_error(
            StatusCode::FORBIDDEN,
            "this origin may not use SIP over WebSocket (sip.ws_allowed_origins)",
        );
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("SIP here is over WebSocket only: {e}")),
    };
    let offers_sip = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !offers_sip {
        return json_error(StatusCode::BAD_REQUEST, "the WebSocket subprotocol must be \"sip\" (RFC 7118)");
    }
    let Some(events) = state.sip.websocket_events() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "the SIP service is not running");
    };
    if CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CONNECTIONS {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "too many SIP-over-WebSocket connections");
    }
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), config.network.admin_https_port);
    let connection = Connection { local, remote: peer, tls: true, websocket: true };
    upgrade
        .protocols(["sip"])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, connection, events))
        .into_response()
}

async fn serve(socket: WebSocket, connection: Connection, events: mpsc::Sender<StreamEvent>) {
    CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pipe(socket, connection, events).await;
    CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn pipe(mut socket: WebSocket, connection: Connection, events: mpsc::Sender<StreamEvent>) {
    let (writer, mut outgoing) = mpsc::channel::<Vec<u8>>(256);
    let raw = branchgate_streams::RawSwitch::default();
    if events.send(StreamEvent::Opened { connection, writer, raw }).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            received = tokio::time::timeout(IDLE_TIMEOUT, socket.recv()) => {
                let Ok(received) = received else { break };
                let data = match received {
                    Some(Ok(Message::Text(text))) => text.as_str().as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                if events.send(StreamEvent::Frame { connection, data }).await.is_err() {
                    break;
                }
            }
            Some(data) = outgoing.recv() => {
                if data.is_empty() {
                    break; // the gateway closes the connection
                }
                // SIP is text; a body that is not UTF-8 goes as a binary message (RFC 7118 §5.1).
                let message = match String::from_utf8(data) {
                    Ok(text) => Message::Text(text.into()),
                    Err(e) => Message::Binary(e.into_bytes().into()),
                };
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = events.send(StreamEvent::Closed { connection }).await;
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let host = Some("box.example:8443");
        assert!(origin_allowed(&[], None, host));
        assert!(origin_allowed(&[], Some("https://app.example"), host));
        let list = vec!["https://app.example/".to_string()];
        assert!(origin_allowed(&list, Some("https://app.example"), host));
        assert!(!origin_allowed(&list, Some("https://evil.example"), host));
        assert!(!origin_allowed(&list, None, host));
        // The box's own /phone page, whatever the list says; not over plain http, not another port.
        assert!(origin_allowed(&list, Some("https://box.example:8443"), host));
        assert!(origin_allowed(&list, Some("https://BOX.example:8443"), host));
        assert!(!origin_allowed(&list, Some("http://box.example:8443"), host));
        assert!(!origin_allowed(&list, Some("https://box.example:9443"), host));
        assert!(!origin_allowed(&list, Some("https://box.example:8443"), None));
    }
}
