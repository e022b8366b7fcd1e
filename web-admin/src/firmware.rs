//! Firmware updates over the API: slot status, bundle upload (streamed to the data
//! directory, verified, installed in the background), install progress, update history,
//! choosing the slot the next boot starts, reboot, factory reset.
//!
//! Roles: uploads need `installer` (the field tech's job in the design; what gets installed is
//! decided by the vendor's signature, the `compatible` string and the version rule, not by the
//! uploader; forcing a downgrade needs `admin`); reboot, slot switch and factory reset need
//! `admin`.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use branchgate_config::Role;
use branchgate_update::usb::{UsbBundle, UsbError};
use branchgate_update::{
    AcceptError, HistoryEntry, HistoryEvent, MAX_BUNDLE_BYTES, Manifest, RebootPlan, ReceiveGuard, SlotError,
    SlotsStatus, bundle_budget,
};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::AppState;
use crate::api::{json_error, parse_body};
use crate::auth::{ApiUser, User};

/// Where uploads land while they are checked and installed (`DATA_DIR/firmware`).
pub fn firmware_dir(data_dir: &FsPath) -> PathBuf {
    data_dir.join("firmware")
}

fn refused(status: StatusCode, reason: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "reason": reason }))).into_response()
}

/// `GET /api/v1/firmware`: the slots (version, state, booted, good) and what the box accepts.
pub async fn get_firmware(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let agent = &state.firmware;
    match slot_status(&state).await {
        Ok(status) => Json(json!({
            "backend": status.backend,
            "compatible": agent.compatible,
            "running_version": agent.running_version,
            "booted": status.booted,
            "pending_reboot": status.pending_reboot,
            "slots": status.slots,
            "install": agent.tracker.status(),
            "hawkbit": agent.fleet.status(),
        }))
        .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `GET /api/v1/firmware/install`: progress 0–100, state, last error.
pub async fn get_install(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    Json(state.firmware.tracker.status()).into_response()
}

#[derive(Deserialize, Default)]
pub struct BundleQuery {
    /// Install even an older version (admin only).
    #[serde(default)]
    force: bool,
}

/// How long an upload may go without a byte arriving.
const UPLOAD_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn accept_status(error: &AcceptError) -> StatusCode {
    if error.is_internal() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match error.reason() {
        "not_a_bundle" => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// Why an operation did not happen: the API answers `{error, reason}` with the status, the
/// firmware page shows the message.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, reason, message: message.into() }
    }

    fn internal(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<SlotError> for Refusal {
    fn from(error: SlotError) -> Refusal {
        let (status, reason) = match error {
            SlotError::NothingInstalled => (StatusCode::CONFLICT, "nothing_installed"),
            SlotError::NoSuchSlot(_) => (StatusCode::NOT_FOUND, "no_such_slot"),
            SlotError::NotBootable { .. } => (StatusCode::CONFLICT, "not_bootable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Refusal::new(status, reason, error.to_string())
    }
}

impl From<tokio::task::JoinError> for Refusal {
    fn from(error: tokio::task::JoinError) -> Refusal {
        Refusal::internal(error.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refused(self.status, self.reason, &self.message)
    }
}

fn busy(what: &str) -> Refusal {
    Refusal::new(StatusCode::CONFLICT, "busy", format!("an install is running; {what} when it is done"))
}

/// The slots as the backend reports them.
pub(crate) async fn slot_status(state: &AppState) -> Result<SlotsStatus, Refusal> {
    let backend = state.firmware.backend.clone();
    Ok(tokio::task::spawn_blocking(move || backend.status()).await??)
}

/// The update history, newest first.
pub(crate) async fn newest_history(state: &AppState, limit: usize) -> Result<Vec<HistoryEntry>, Refusal> {
    let history = state.firmware.history.clone();
    let entries = tokio::task::spawn_blocking(move || history.entries())
        .await?
        .map_err(|e| Refusal::internal(format!("reading the update history: {e}")))?;
    Ok(entries.into_iter().rev().take(limit).collect())
}

/// A bundle that passed every check and is installing.
pub(crate) struct Accepted {
    pub manifest: Manifest,
    pub bytes: u64,
}

/// Receives a bundle from `body` (the API's raw body or the page's file field) into
/// `DATA_DIR/firmware/upload.raucb` (never held in memory), verifies it, then installs it
/// into the inactive slot in the background. The caller has checked the roles
/// (`force`, installing an older version, is the admin's).
pub(crate) async fn receive_bundle<S, E>(
    state: &AppState,
    user: &User,
    peer: SocketAddr,
    force: bool,
    declared: Option<u64>,
    mut body: S,
) -> Result<Accepted, Refusal>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if declared.is_some_and(|len| len > MAX_BUNDLE_BYTES) {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a bundle may have at most {MAX_BUNDLE_BYTES} bytes"),
        ));
    }
    let agent = state.firmware.clone();
    if !agent.tracker.try_begin() {
        return Err(Refusal::new(StatusCode::CONFLICT, "busy", "another bundle is being received or installed"));
    }
    let dir = firmware_dir(&state.data_dir);
    let path = dir.join("upload.raucb");
    let guard = ReceiveGuard::new(agent.tracker.clone(), path.clone());
    let fail = |guard: ReceiveGuard, refusal: Refusal| {
        guard.fail(&refusal.message);
        Err(refusal)
    };
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return fail(guard, Refusal::internal(format!("cannot create {}: {e}", dir.display())));
    }
    // The data partition also holds the configuration store: an upload leaves room for it.
    let budget = bundle_budget(&dir);
    if let Some(len) = declared.filter(|len| *len > budget) {
        let message = format!(
            "not enough space on the data partition for this bundle ({} MB; {} MB can be used)",
            len / 1_000_000,
            budget / 1_000_000
        );
        return fail(guard, Refusal::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message));
    }
    let mut file = match tokio::fs::File::create(&path).await {
        Ok(file) => file,
        Err(e) => return fail(guard, Refusal::internal(format!("cannot write {}: {e}", path.display()))),
    };
    let mut received = 0u64;
    loop {
        // A client that stops sending would hold the one upload slot for ever.
        let chunk = match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, body.next()).await {
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => {
                let message = format!("the upload broke off after {received} bytes: {e}");
                return fail(guard, Refusal::new(StatusCode::BAD_REQUEST, "upload", message));
            }
            Err(_) => {
                let message = format!(
                    "the upload stalled: nothing arrived for {} s after {received} bytes",
                    UPLOAD_IDLE_TIMEOUT.as_secs()
                );
                return fail(guard, Refusal::new(StatusCode::REQUEST_TIMEOUT, "upload", message));
            }
        };
        received += chunk.len() as u64;
        if received > MAX_BUNDLE_BYTES {
            let message = format!("a bundle may have at most {MAX_BUNDLE_BYTES} bytes");
            return fail(guard, Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
        }
        if received > budget {
            let message = format!(
                "not enough space on the data partition: the upload passed the {} MB that can be used",
                budget / 1_000_000
            );
            return fail(guard, Refusal::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message));
        }
        if let Err(e) = file.write_all(&chunk).await {
            let message = format!("cannot write {}: {e}", path.display());
            return fail(guard, Refusal::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message));
        }
    }
    if let Err(e) = file.flush().await {
        let message = format!("cannot write {}: {e}", path.display());
        return fail(guard, Refusal::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message));
    }
    drop(file);

    agent.verifying();
    let allow_downgrade = force || state.store.current().config.update.allow_downgrade;
    let checked = {
        let agent = agent.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || agent.accept(&path, allow_downgrade)).await
    };
    let manifest = match checked {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(e)) => {
            let message = e.to_string();
            state.audit(&user.username, Some(peer), "firmware", format!("bundle refused: {message}"));
            let entry =
                HistoryEntry::now(HistoryEvent::Refused, format!("bundle refused: {message}")).by(&user.username);
            state.firmware.record_async(entry).await;
            tracing::warn!(user = %user.username, reason = e.reason(), "firmware bundle refused: {message}");
            return fail(guard, Refusal::new(accept_status(&e), e.reason(), message));
        }
        Err(e) => return fail(guard, Refusal::internal(format!("verification stopped: {e}"))),
    };
    state.audit(
        &user.username,
        Some(peer),
        "firmware",
        format!("bundle {} ({received} bytes) accepted; installing", manifest.version),
    );
    tracing::info!(version = %manifest.version, bytes = received, "firmware bundle accepted; installing");
    guard.disarm();
    agent.install_in_background(path, manifest.clone(), true, &user.username);
    Ok(Accepted { manifest, bytes: received })
}

/// Boots the slot installed last (the simulated backend records the request only).
pub(crate) async fn reboot(state: &AppState, user: &User, peer: SocketAddr) -> Result<RebootPlan, Refusal> {
    if state.firmware.tracker.busy() {
        return Err(busy("reboot"));
    }
    let backend = state.firmware.backend.clone();
    let plan = tokio::task::spawn_blocking(move || backend.reboot()).await??;
    let entry = HistoryEntry::now(HistoryEvent::Reboot, format!("reboot into slot {}", plan.slot))
        .slot(&plan.slot)
        .by(&user.username)
        .simulated(plan.simulated);
    state.firmware.record_async(entry).await;
    state.audit(
        &user.username,
        Some(peer),
        "reboot",
        format!("reboot into slot {}{}", plan.slot, if plan.simulated { " (simulated)" } else { "" }),
    );
    tracing::warn!(slot = %plan.slot, simulated = plan.simulated, "reboot requested");
    Ok(plan)
}

/// Points the next boot at `slot` (on trial, as after an install: it must pass its health
/// check or the bootloader comes back). The booted slot cancels a pending switch. The box does
/// not reboot by itself.
pub(crate) async fn activate(state: &AppState, user: &User, peer: SocketAddr, slot: &str) -> Result<(), Refusal> {
    if state.firmware.tracker.busy() {
        return Err(busy("choose the slot"));
    }
    let backend = state.firmware.backend.clone();
    let target = slot.to_string();
    tokio::task::spawn_blocking(move || backend.activate(&target)).await??;
    state.audit(&user.username, Some(peer), "firmware", format!("slot {slot} boots next"));
    let entry = HistoryEntry::now(HistoryEvent::SlotActivated, format!("slot {slot} chosen for the next boot"))
        .slot(slot)
        .by(&user.username);
    state.firmware.record_async(entry).await;
    Ok(())
}

/// Writes the factory reset request down durably, then has the daemon restart, which wipes
/// the data directory before anything opens it (see `branchgate_config::request_factory_reset`).
pub(crate) async fn factory_reset(
    state: &AppState,
    user: &User,
    peer: SocketAddr,
    keep_config: bool,
) -> Result<(), Refusal> {
    if state.firmware.tracker.busy() {
        return Err(busy("reset"));
    }
    let request =
        branchgate_config::FactoryReset { keep_config, by: user.username.clone(), requested_ms: crate::now_ms() };
    let data_dir = state.data_dir.clone();
    tokio::task::spawn_blocking(move || branchgate_config::request_factory_reset(&data_dir, &request))
        .await?
        .map_err(|e| Refusal::internal(format!("cannot record the reset: {e}")))?;
    let what = if keep_config { "keeping the configuration" } else { "configuration wiped too" };
    state.audit(&user.username, Some(peer), "factory-reset", format!("factory reset asked for ({what})"));
    tracing::warn!(user = %user.username, keep_config, "factory reset asked for; restarting");
    // The answer leaves before the services stop.
    let restart = state.restart.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        restart.notify_one();
    });
    Ok(())
}

/// The bundles on inserted USB media, checked.
pub(crate) async fn usb_bundles(state: &AppState) -> Result<Vec<UsbBundle>, Refusal> {
    let agent = state.firmware.clone();
    let allow_downgrade = state.store.current().config.update.allow_downgrade;
    Ok(tokio::task::spawn_blocking(move || agent.usb.list(&agent, allow_downgrade)).await?)
}

/// Copies the USB bundle at `path` to the data partition, checks it and installs it.
pub(crate) async fn install_from_usb(
    state: &AppState,
    user: &User,
    peer: SocketAddr,
    path: &str,
) -> Result<Manifest, Refusal> {
    let agent = state.firmware.clone();
    let allow_downgrade = state.store.current().config.update.allow_downgrade;
    let dir = firmware_dir(&state.data_dir);
    let (chosen, by) = (path.to_string(), user.username.clone());
    let result =
        tokio::task::spawn_blocking(move || agent.usb.install(&agent, &chosen, &dir, allow_downgrade, &by)).await?;
    match result {
        Ok(manifest) => {
            state.audit(
                &user.username,
                Some(peer),
                "firmware",
                format!("bundle {} from USB ({path}) accepted; installing", manifest.version),
            );
            Ok(manifest)
        }
        Err(UsbError::NotFound(_)) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("there is no bundle {path} on the inserted media (any more)"),
        )),
        Err(UsbError::Busy) => {
            Err(Refusal::new(StatusCode::CONFLICT, "busy", "another bundle is being received or installed"))
        }
        Err(e @ UsbError::Copy(_)) => Err(Refusal::new(StatusCode::INSUFFICIENT_STORAGE, "copy", e.to_string())),
        Err(UsbError::Refused(e)) => {
            // The history has it already (`UsbWatcher::install`).
            let message = e.to_string();
            state.audit(&user.username, Some(peer), "firmware", format!("USB bundle refused: {message}"));
            Err(Refusal::new(accept_status(&e), e.reason(), message))
        }
    }
}

/// `GET /api/v1/firmware/usb`: the bundles on inserted USB media.
pub async fn get_usb(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    match usb_bundles(&state).await {
        Ok(bundles) => Json(json!({ "roots": state.firmware.usb.roots(), "bundles": bundles })).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsbInstallBody {
    path: String,
}

/// `POST /api/v1/firmware/usb/install` `{"path": "..."}`: 202 while it installs.
pub async fn post_usb_install(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Installer) {
        return r;
    }
    let body: UsbInstallBody = match parse_body(&body, r#"{"path": "<a path from GET /api/v1/firmware/usb>"}"#) {
        Ok(body) => body,
        Err(r) => return r,
    };
    match install_from_usb(&state, &user, peer, &body.path).await {
        Ok(manifest) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "version": manifest.version,
                "compatible": manifest.compatible,
                "path": body.path,
                "progress": "/api/v1/firmware/install",
            })),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /api/v1/firmware/bundle`: the bundle as the raw body (see [`receive_bundle`]); 202
/// while it installs, refusals are 4xx `{error, reason}`.
pub async fn post_bundle(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Query(query): Query<BundleQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = user.require_change(Role::Installer) {
        return r;
    }
    if query.force
        && let Err(r) = user.require(Role::Admin)
    {
        return r;
    }
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match receive_bundle(&state, &user, peer, query.force, declared, body.into_data_stream()).await {
        Ok(Accepted { manifest, bytes }) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "version": manifest.version,
                "compatible": manifest.compatible,
                "build": manifest.build,
                "bytes": bytes,
                "progress": "/api/v1/firmware/install",
            })),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /api/v1/system/reboot`: boots the slot installed last. The simulated backend only
/// records the request (`pending_reboot` in `GET /api/v1/firmware`): there is no bootloader
/// to switch and the daemon keeps serving (tests and a development box stay up).
pub async fn post_reboot(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    match reboot(&state, &user, peer).await {
        Ok(plan) => {
            (StatusCode::ACCEPTED, Json(json!({ "slot": plan.slot, "simulated": plan.simulated }))).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    /// Newest entries to return (default 100, 1 to 500). A string so that a bad value gets
    /// the JSON error every other endpoint gives, not axum's plain-text rejection.
    limit: Option<String>,
}

/// `GET /api/v1/firmware/history`: what happened to the firmware, newest first.
pub async fn get_history(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<HistoryQuery>,
) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(limit @ 1..=500)) => limit,
        Some(_) => return json_error(StatusCode::BAD_REQUEST, "limit must be a number from 1 to 500"),
    };
    match newest_history(&state, limit).await {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /api/v1/firmware/slots/{slot}/activate`: the next boot starts `slot` (on trial, as
/// after an install: it must pass its health check or the bootloader comes back). Activating
/// the booted slot cancels a pending switch. The box does not reboot by itself.
pub async fn post_activate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Path(slot): Path<String>,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    match activate(&state, &user, peer, &slot).await {
        Ok(()) => Json(json!({ "next_boot": slot })).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FactoryResetBody {
    /// Keep the configuration (users, trunks, admin password); otherwise the box starts as new.
    keep_config: bool,
}

/// `POST /api/v1/system/factory-reset` `{"keep_config": bool}`: written down durably, then the
/// daemon restarts and wipes the data directory before anything opens it (see
/// `branchgate_config::request_factory_reset`). 202; the session ends with the restart.
pub async fn post_factory_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    let body: FactoryResetBody = match parse_body(&body, r#"{"keep_config": true|false}"#) {
        Ok(body) => body,
        Err(r) => return r,
    };
    match factory_reset(&state, &user, peer, body.keep_config).await {
        Ok(()) => {
            (StatusCode::ACCEPTED, Json(json!({ "keep_config": body.keep_config, "restarting": true }))).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}
