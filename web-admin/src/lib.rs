//! The installer's HTTPS admin UI and JSON API.
//!
//! Server-rendered pages (askama) with a little progressive JavaScript, the
//! JSON API under `/api/v1`, Prometheus `/metrics`, all over rustls on the
//! admin port; the plain HTTP port only redirects.

pub mod api;
pub mod auth;
pub mod firmware;
pub mod logs;
mod openapi;
mod pages;
mod phone;
pub mod recordings;
pub mod security;
pub mod sip_ws;
pub mod status;
pub mod tls;
pub mod whep;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine;
use branchgate_config::{ConfigStore, Role};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::auth::{Lockout, SessionTable};
use crate::logs::LogRing;
use crate::status::{CpuSampler, ServiceBoard};

/// Largest request body (a configuration backup is a few KiB; certificates too).
pub const BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("admin server failed: {0}")]
    Serve(std::io::Error),
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub login_failures: AtomicU64,
}

/// Everything the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Arc<ConfigStore>,
    pub sessions: Arc<SessionTable>,
    pub lockout: Arc<Lockout>,
    pub services: ServiceBoard,
    pub logs: LogRing,
    pub started: Instant,
    pub data_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// The TURN service's live state (empty until it runs).
    pub turn: branchgate_turn_relay::TurnMonitor,
    /// The SIP service's live registrations.
    pub sip: branchgate_gateway::SipMonitor,
    /// Firmware updates: slots, keyring, `compatible`, the install in progress. By default
    /// the simulated slots in `DATA_DIR/firmware` and the keyring `DATA_DIR/firmware/keyring.pem`.
    pub firmware: branchgate_update::Agent,
    /// Camera pipelines and WHEP viewers.
    pub whep: branchgate_capture::whep::Whep,
    /// Signs and checks WHEP viewer tokens (`DATA_DIR/viewer-token.key`).
    pub viewer_key: whep::ViewerKey,
    /// What the daemon's device tasks run: GPIO pins and LED pattern, watchdogs.
    pub devices: branchgate_hal::DeviceBoard,
    /// Asks the daemon to stop its services and start again (after a factory reset request):
    /// the daemon waits on it beside the stop signals.
    pub restart: Arc<tokio::sync::Notify>,
    cpu: Arc<Mutex<CpuSampler>>,
}

impl AppState {
    pub fn new(store: Arc<ConfigStore>, services: ServiceBoard, logs: LogRing, data_dir: PathBuf) -> Self {
        AppState {
            store,
            sessions: Arc::default(),
            lockout: Arc::default(),
            services,
            logs,
            started: Instant::now(),
            metrics: Arc::default(),
            turn: Default::default(),
            sip: Default::default(),
            firmware: branchgate_update::Agent {
                backend: Arc::new(branchgate_update::SimulatedSlots::new(
                    firmware::firmware_dir(&data_dir),
                    env!("CARGO_PKG_VERSION"),
                )),
                keyring: firmware::firmware_dir(&data_dir).join("keyring.pem"),
                compatible: branchgate_update::DEFAULT_COMPATIBLE.to_string(),
                running_version: env!("CARGO_PKG_VERSION").to_string(),
                tracker: Default::default(),
                history: branchgate_update::UpdateHistory::new(&firmware::firmware_dir(&data_dir)),
                fleet: Default::default(),
                usb: Default::default(),
            },
            whep: Default::default(),
            viewer_key: whep::ViewerKey::load_or_create(&data_dir),
            devices: Default::default(),
            restart: Arc::default(),
            data_dir,
            cpu: Arc::default(),
        }
    }

    /// The dashboard's figures.
    pub fn status_json(&self) -> Value {
        let current = self.store.current();
        let cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner()).sample();
        json!({
            "status": if self.services.all_running() { "ok" } else { "degraded" },
            "hostname": current.config.system.hostname,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "uptime": status::format_duration(self.started.elapsed()),
            "revision": current.revision,
            "pending_confirm": self.store.pending(),
            "recovery_notice": self.store.recovery_notice(),
            "cpu_percent": cpu.map(|c| (c * 10.0).round() / 10.0),
            "memory": status::memory(),
            "temperature_celsius": status::temperature_celsius(),
            "services": self.services.list(),
            "sessions": self.sessions.count(),
        })
    }

    fn metrics_text(&self) -> String {
        let current = self.store.current();
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        metric("branchgate_up", "The daemon is running.", "gauge", vec![(String::new(), "1".into())]);
        metric(
            "branchgate_uptime_seconds",
            "Seconds since the daemon started.",
            "gauge",
            vec![(String::new(), self.started.elapsed().as_secs().to_string())],
        );
        metric(
            "branchgate_config_revision",
            "Current configuration revision.",
            "gauge",
            vec![(String::new(), current.revision.to_string())],
        );
        let services = self.services.list();
        metric(
            "branchgate_service_up",
            "1 when the supervised service runs.",
            "gauge",
            services
                .iter()
                .map(|s| {
                    (
                        format!("{{service=\"{}\"}}", s.name),
                        u8::from(s.state == status::ServiceState::Running).to_string(),
                    )
                })
                .collect(),
        );
        metric(
            "branchgate_service_restarts_total",
            "Restarts of the supervised service after a failure.",
            "counter",
            services.iter().map(|s| (format!("{{service=\"{}\"}}", s.name), s.restarts.to_string())).collect(),
        );
        metric(
            "branchgate_admin_login_failures_total",
            "Failed admin logins.",
            "counter",
            vec![(String::new(), self.metrics.login_failures.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "branchgate_admin_sessions",
            "Live admin sessions.",
            "gauge",
            vec![(String::new(), self.sessions.count().to_string())],
        );
        let turn = self.turn.snapshot();
        let gauge = |v: u64| vec![(String::new(), v.to_string())];
        metric("branchgate_turn_allocations", "Live TURN allocations.", "gauge", gauge(turn.allocations.len() as u64));
        metric(
            "branchgate_turn_relayed_packets_total",
            "Datagrams relayed, by direction.",
            "counter",
            vec![
                ("{direction=\"to_peer\"}".into(), turn.stats.to_peer.packets.to_string()),
                ("{direction=\"to_client\"}".into(), turn.stats.to_client.packets.to_string()),
            ],
        );
        metric(
            "branchgate_turn_relayed_bytes_total",
            "Payload bytes relayed, by direction.",
            "counter",
            vec![
                ("{direction=\"to_peer\"}".into(), turn.stats.to_peer.bytes.to_string()),
                ("{direction=\"to_client\"}".into(), turn.stats.to_client.bytes.to_string()),
            ],
        );
        metric(
            "branchgate_turn_auth_failures_total",
            "TURN requests with wrong credentials.",
            "counter",
            gauge(turn.stats.auth_failures),
        );
        metric(
            "branchgate_turn_denied_peers_total",
            "Peers refused by the relay policy.",
            "counter",
            gauge(turn.stats.denied_peers),
        );
        metric(
            "branchgate_turn_dropped_total",
            "Datagrams dropped (malformed, no allocation or permission).",
            "counter",
            gauge(turn.stats.dropped),
        );
        metric(
            "branchgate_sip_registrations",
            "Registered SIP contacts.",
            "gauge",
            gauge(self.sip.registrations().len() as u64),
        );
        metric("branchgate_sip_calls", "Calls in progress.", "gauge", gauge(self.sip.calls().len() as u64));
        metric(
            "branchgate_sip_calls_total",
            "Calls ended since start, by cause.",
            "counter",
            self.sip
                .calls_ended()
                .into_iter()
                .map(|(cause, count)| (label("cause", &cause), count.to_string()))
                .collect(),
        );
        metric(
            "branchgate_sip_calls_started_total",
            "Calls set up since start (rate() of it is the calls per second).",
            "counter",
            gauge(self.sip.calls_started()),
        );
        metric(
            "branchgate_sip_auth_failures_total",
            "Failed SIP digest checks since start.",
            "counter",
            gauge(self.sip.auth_failures()),
        );
        metric(
            "branchgate_sip_trunk_up",
            "Trunk answers OPTIONS keepalives (1) or not (0).",
            "gauge",
            self.sip.trunks().iter().map(|t| (label("trunk", &t.name), u8::from(t.up).to_string())).collect(),
        );
        metric(
            "branchgate_camera_encoders_running",
            "Camera pipelines encoding now (one per watched camera, however many viewers).",
            "gauge",
            gauge(self.whep.hub.encoders_running() as u64),
        );
        metric("branchgate_whep_viewers", "WHEP viewer sessions now.", "gauge", gauge(self.whep.count() as u64));
        metric(
            "branchgate_process_resident_memory_bytes",
            "Resident memory of the daemon.",
            "gauge",
            vec![(String::new(), status::memory().process_rss_bytes.to_string())],
        );
        out
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

async fn openapi_json() -> Response {
    axum::Json(openapi::document()).into_response()
}

/// `/metrics`: an admin session, or HTTP Basic credentials of any login (for Prometheus).
/// A Prometheus label set of one label; characters the exposition format would need
/// escaped are replaced (values come from the configuration and the network).
fn label(name: &str, value: &str) -> String {
    format!("{{{name}=\"{}\"}}", value.replace(['"', '\\', '\n'], "_"))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap, request: Request) -> Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    // The Basic credentials are checked (argon2) only when there is no session.
    let allowed = auth::session_user(&headers, &state).is_some()
        || match (basic_credentials(&headers), peer) {
            (Some((user, pass)), Some(peer)) => state.verify_credentials(peer, &user, &pass).await.is_ok(),
            _ => false,
        };
    if !allowed {
        return (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, "Basic realm=\"branchgate metrics\"")], "log in\n")
            .into_response();
    }
    metrics_body(&state)
}

fn metrics_body(state: &AppState) -> Response {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics_text()).into_response()
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

async fn events(State(state): State<AppState>, auth::PageUser(user): auth::PageUser) -> Response {
    let stream = status_stream(state, user.session_id);
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

/// Status every 2 s for as long as the session lives (logout or account deletion ends it).
fn status_stream(state: AppState, session_id: String) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((state, true), move |(state, first)| {
        let session_id = session_id.clone();
        async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !state.sessions.exists(&session_id) {
                    return None;
                }
            }
            let event = Event::default().event("status").json_data(state.status_json()).unwrap_or_default();
            Some((Ok(event), (state, false)))
        }
    })
}

/// The whole admin application.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/session", post(api::post_session).get(api::get_session).delete(api::delete_session))
        .route("/session/password", put(api::put_password))
        .route("/config", get(api::get_config))
        .route("/config/export", get(api::export))
        .route("/config/import", post(api::import))
        .route("/config/confirm", post(api::confirm))
        .route("/config/revisions", get(api::list_revisions))
        .route("/config/revisions/{rev}", get(api::get_revision))
        .route("/config/revisions/{rev}/restore", post(api::restore_revision))
        .route("/config/{section}", get(api::get_section).put(api::put_section))
        .route("/status", get(api::status))
        .route("/logs", get(api::logs))
        .route("/audit", get(api::audit))
        .route("/users", get(api::list_users).post(api::post_user))
        .route("/users/{username}", axum::routing::delete(api::delete_user))
        .route("/tls", put(api::put_tls))
        .route("/turn/allocations", get(api::turn_allocations))
        .route("/sip/registrations", get(api::sip_registrations))
        .route("/sip/calls", get(api::sip_calls))
        .route("/sip/calls/{id}", axum::routing::delete(api::hang_up_call))
        .route("/sip/cdr.csv", get(api::cdr_csv))
        .route("/cameras", get(api::cameras))
        .route("/devices", get(api::devices))
        .route("/cameras/{id}/snapshot.jpg", get(api::camera_snapshot))
        .route("/cameras/{id}/viewer-token", post(whep::post_viewer_token))
        .route("/recordings", get(recordings::list))
        .route("/recordings/{camera}/{name}", get(recordings::download).delete(recordings::delete))
        .route("/firmware", get(firmware::get_firmware))
        .route(
            "/firmware/bundle",
            // Streamed to a file with its own cap (branchgate_update::MAX_BUNDLE_BYTES).
            post(firmware::post_bundle).layer(DefaultBodyLimit::disable()),
        )
        .route("/firmware/install", get(firmware::get_install))
        .route("/firmware/history", get(firmware::get_history))
        .route("/firmware/usb", get(firmware::get_usb))
        .route("/firmware/usb/install", post(firmware::post_usb_install))
        .route("/firmware/slots/{slot}/activate", post(firmware::post_activate))
        .route("/system/reboot", post(firmware::post_reboot))
        .route("/system/factory-reset", post(firmware::post_factory_reset))
        .route("/openapi.json", get(openapi_json))
        .fallback(api::fallback);
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .route("/sip", get(sip_ws::sip_websocket))
        .route("/whep/{id}", post(whep::post_offer).options(whep::preflight))
        .route(
            "/whep/{id}/{session}",
            axum::routing::delete(whep::delete_session).patch(whep::patch_session).options(whep::preflight),
        )
        .route("/events", get(events))
        .merge(pages::routes())
        .layer(axum::middleware::from_fn(security::csrf_guard))
        .layer(axum::middleware::from_fn(security::security_headers))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn current_pem(state: &AppState) -> Result<tls::PemPair, WebError> {
    tls::box_certificate(&state.store.current().config, &state.data_dir)
}

/// What one admin listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serves {
    Https,
    /// Redirects to HTTPS on this port.
    Redirect {
        https_port: u16,
    },
    Metrics,
}

/// One running listener: what it serves, where, and how to stop it.
struct Slot {
    role: Serves,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    handle: Handle,
}

impl Slot {
    fn start(
        state: &AppState,
        role: Serves,
        listener: std::net::TcpListener,
        rustls: &RustlsConfig,
    ) -> std::io::Result<Slot> {
        let addr = listener.local_addr()?;
        let handle = Handle::new();
        let task = match role {
            Serves::Https => tokio::spawn(
                axum_server::from_tcp_rustls(listener, rustls.clone())
                    .handle(handle.clone())
                    .serve(router(state.clone()).into_make_service_with_connect_info::<SocketAddr>()),
            ),
            Serves::Redirect { https_port } => {
                let app = Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
                    redirect_to_https(&headers, &uri, https_port)
                });
                tokio::spawn(axum_server::from_tcp(listener).handle(handle.clone()).serve(app.into_make_service()))
            }
            Serves::Metrics => {
                let app = Router::new()
                    .route("/metrics", get(|State(state): State<AppState>| async move { metrics_body(&state) }))
                    .with_state(state.clone());
                tokio::spawn(axum_server::from_tcp(listener).handle(handle.clone()).serve(app.into_make_service()))
            }
        };
        Ok(Slot { role, addr, task, handle })
    }

    /// Stops accepting at once; open connections get a few seconds to finish.
    async fn stop(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(3)));
        let _ = self.task.await;
    }
}

fn same_kind(a: Serves, b: Serves) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// The listeners a `network` configuration asks for.
fn wanted_slots(network: &branchgate_config::NetworkConfig) -> Vec<(Serves, SocketAddr)> {
    let mut slots = vec![(Serves::Https, SocketAddr::new(network.admin_bind, network.admin_https_port))];
    if network.admin_http_port != 0 {
        slots.push((
            Serves::Redirect { https_port: network.admin_https_port },
            SocketAddr::new(network.admin_bind, network.admin_http_port),
        ));
    }
    if let Some(addr) = network.metrics_listen {
        slots.push((Serves::Metrics, addr));
    }
    slots
}

/// Moves the running listeners to `wanted`: unchanged ones keep serving
/// untouched; a moved one is bound at its new address before the old one
/// stops, so the UI is never unreachable in between. A listener that cannot
/// be bound is reported and the old one kept (an unconfirmed change rolls
/// back by itself); only HTTPS failing at start is fatal.
async fn reconcile(
    state: &AppState,
    running: Vec<Slot>,
    wanted: &[(Serves, SocketAddr)],
    rustls: &RustlsConfig,
) -> Vec<Slot> {
    let mut kept = Vec::new();
    let mut leaving = Vec::new();
    for slot in running {
        if wanted.iter().any(|(role, addr)| *role == slot.role && *addr == slot.addr) {
            kept.push(slot);
        } else {
            leaving.push(slot);
        }
    }
    for (role, addr) in wanted {
        if kept.iter().any(|s| s.role == *role && s.addr == *addr) {
            continue;
        }
        // The same port at another address of ours (or a changed redirect
        // target on the same port): free it first.
        let mut listener = bind_nonblocking(*addr);
        if matches!(&listener, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
            && let Some(pos) = leaving.iter().position(|s| s.addr.port() == addr.port())
        {
            leaving.swap_remove(pos).stop().await;
            listener = bind_nonblocking(*addr);
        }
        match listener.and_then(|l| Slot::start(state, *role, l, rustls)) {
            Ok(slot) => {
                tracing::info!(%addr, role = ?role, "admin listener up");
                // The listener it replaces (same role) goes now.
                if let Some(pos) = leaving.iter().position(|s| same_kind(s.role, *role)) {
                    leaving.swap_remove(pos).stop().await;
                }
                kept.push(slot);
            }
            Err(e) => {
                tracing::error!(%addr, role = ?role, error = %e, "cannot open the admin listener; keeping the old one");
                if let Some(pos) = leaving.iter().position(|s| same_kind(s.role, *role)) {
                    kept.push(leaving.swap_remove(pos));
                }
            }
        }
    }
    for slot in leaving {
        slot.stop().await;
    }
    kept
}

/// Runs the HTTPS admin server (and the HTTP redirect, and the optional
/// metrics listener) until `shutdown` turns true. A new certificate is loaded
/// without a restart; changed listeners move without a gap (see [`reconcile`]).
pub async fn run(
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    on_ready: impl Fn(SocketAddr),
) -> Result<(), WebError> {
    tls::install_crypto_provider();
    let mut config_rx = state.store.subscribe();
    let mut network = state.store.current().config.network.clone();
    let mut loaded_pem = current_pem(&state)?;
    let rustls = RustlsConfig::from_pem(
        loaded_pem.certificate.clone().into_bytes(),
        loaded_pem.private_key.clone().into_bytes(),
    )
    .await
    .map_err(|e| WebError::Tls(e.to_string()))?;
    let wanted = wanted_slots(&network);
    let https_addr = wanted[0].1;
    let https = bind_nonblocking(https_addr).map_err(|source| WebError::Bind { addr: https_addr, source })?;
    let https = Slot::start(&state, Serves::Https, https, &rustls).map_err(WebError::Serve)?;
    let mut slots = reconcile(&state, vec![https], &wanted, &rustls).await;
    if let Some(addr) = slots.iter().find(|s| s.role == Serves::Https).map(|s| s.addr) {
        tracing::info!(%addr, "admin UI listening");
        on_ready(addr);
    }
    loop {
        let https_task = slots.iter_mut().find(|s| s.role == Serves::Https).map(|s| &mut s.task);
        let https_stopped = async {
            match https_task {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break; }
            }
            changed = config_rx.changed() => {
                if changed.is_err() { break; }
                let current = state.store.current().config.network.clone();
                if current != network {
                    slots = reconcile(&state, slots, &wanted_slots(&current), &rustls).await;
                    network = current;
                }
                match current_pem(&state) {
                    Ok(pem) if pem != loaded_pem => {
                        match rustls.reload_from_pem(pem.certificate.clone().into_bytes(), pem.private_key.clone().into_bytes()).await {
                            Ok(()) => { tracing::info!("admin certificate reloaded"); loaded_pem = pem; }
                            Err(e) => tracing::error!(error = %e, "new admin certificate refused; keeping the old one"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "cannot load the admin certificate"),
                }
            }
            result = https_stopped => {
                let error = match result {
                    Ok(Ok(())) => std::io::Error::other("the HTTPS server stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => std::io::Error::other(e.to_string()),
                };
                return Err(WebError::Serve(error));
            }
        }
    }
    for slot in slots {
        slot.stop().await;
    }
    Ok(())
}

fn bind_nonblocking(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A `Host` value without its port (IPv6 brackets kept), when it is a plausible host name
/// or address literal (it goes into URLs the box hands out).
pub(crate) fn bare_host(host: &str) -> Option<String> {
    let bare = if host.starts_with('[') {
        host.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or_else(|| host.to_string())
    } else {
        host.split(':').next().unwrap_or(host).to_string()
    };
    let valid =
        !bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    valid.then_some(bare)
}

fn redirect_to_https(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Response {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let bare = bare_host(host).unwrap_or_else(|| "localhost".to_string());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location =
        if https_port == 443 { format!("https://{bare}{path}") } else { format!("https://{bare}:{https_port}{path}") };
    (StatusCode::MOVED_PERMANENTLY, [(LOCATION, location)]).into_response()
}

/// The role names the UI offers.
pub const ROLES: &[Role] = &[Role::Viewer, Role::Installer, Role::Admin];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_and_path() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "box.local:8080".parse().expect("header"));
        let uri: Uri = "/settings/sip?x=1".parse().expect("uri");
        let response = redirect_to_https(&headers, &uri, 8443);
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(response.headers()[LOCATION], "https://box.local:8443/settings/sip?x=1");
        headers.insert(HOST, "[::1]:8080".parse().expect("header"));
        assert_eq!(redirect_to_https(&headers, &uri, 443).headers()[LOCATION], "https://[::1]/settings/sip?x=1");
        headers.insert(HOST, "evil\"host".parse().expect("header"));
        assert_eq!(
            redirect_to_https(&headers, &uri, 8443).headers()[LOCATION],
            "https://localhost:8443/settings/sip?x=1"
        );
    }
}
