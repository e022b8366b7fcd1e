//! Firmware updates over the API: slot status, bundle upload (streamed to the data
//! directory, verified, installed in the background), install progress, reboot.
//!
//! Roles: uploads need `installer` (the field tech's job in the design; what gets installed is
//! decided by the vendor's signature, the `compatible` string and the version rule, not by the
//! uploader; forcing a downgrade needs `admin`); a reboot needs `admin`.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use branchgate_config::Role;
use branchgate_update::{AcceptError, InstallTracker, SlotError};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::AppState;
use crate::api::json_error;
use crate::auth::ApiUser;

/// Largest bundle accepted (an image for the box is some 100 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024 * 1024;

/// Where uploads land while they are checked and installed (`DATA_DIR/firmware`).
pub fn firmware_dir(data_dir: &FsPath) -> PathBuf {
    data_dir.join("firmware")
}

fn refused(status: StatusCode, reason: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "reason": reason }))).into_response()
}

fn slot_error_response(error: &SlotError) -> Response {
    match error {
        SlotError::NothingInstalled => refused(StatusCode::CONFLICT, "nothing_installed", &error.to_string()),
        _ => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

/// `GET /api/v1/firmware`: the slots (version, state, booted, good) and what the box accepts.
pub async fn get_firmware(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let agent = state.firmware.clone();
    let backend = agent.backend.clone();
    match tokio::task::spawn_blocking(move || backend.status()).await {
        Ok(Ok(status)) => Json(json!({
            "backend": status.backend,
            "compatible": agent.compatible,
            "running_version": agent.running_version,
            "booted": status.booted,
            "pending_reboot": status.pending_reboot,
            "slots": status.slots,
            "install": agent.tracker.status(),
        }))
        .into_response(),
        Ok(Err(e)) => slot_error_response(&e),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /api/v1/firmware/install`: progress 0–100, state, last error.
pub async fn get_install(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    Json(state.firmware.tracker.status()).into_response()
}

/// Ends an upload that did not reach the install (client gone, refused, error): the
/// tracker says why and the partial file goes.
struct UploadGuard {
    tracker: InstallTracker,
    path: PathBuf,
    armed: bool,
}

impl UploadGuard {
    fn fail(mut self, message: &str) {
        self.tracker.fail(message);
        let _ = std::fs::remove_file(&self.path);
        self.armed = false;
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if self.armed {
            self.tracker.fail("the upload was interrupted");
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Deserialize, Default)]
pub struct BundleQuery {
    /// Install even an older version (admin only).
    #[serde(default)]
    force: bool,
}

/// How long an upload may go without a byte arriving.
const UPLOAD_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Space an upload leaves free on the data partition (configuration store, logs, CDRs).
const KEEP_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

fn accept_status(error: &AcceptError) -> StatusCode {
    if error.is_internal() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match error.reason() {
        "not_a_bundle" => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// `POST /api/v1/firmware/bundle`: the bundle as the raw body, streamed to
/// `DATA_DIR/firmware/upload.raucb` (never held in memory), verified, then installed into
/// the inactive slot in the background (202). Refusals are 4xx `{error, reason}`.
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
    if declared.is_some_and(|len| len > MAX_BUNDLE_BYTES) {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("a bundle may have at most {MAX_BUNDLE_BYTES} bytes"),
        );
    }
    let agent = state.firmware.clone();
    if !agent.tracker.try_begin() {
        return refused(StatusCode::CONFLICT, "busy", "another bundle is being received or installed");
    }
    let dir = firmware_dir(&state.data_dir);
    let path = dir.join("upload.raucb");
    let guard = UploadGuard { tracker: agent.tracker.clone(), path: path.clone(), armed: true };
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        let message = format!("cannot create {}: {e}", dir.display());
        guard.fail(&message);
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, &message);
    }
    // The data partition also holds the configuration store: an upload leaves room for it.
    let budget = match free_bytes(&dir) {
        Some(free) => free.saturating_sub(KEEP_FREE_BYTES),
        None => u64::MAX,
    };
    if declared.is_some_and(|len| len > budget) {
        let message = format!(
            "not enough space on the data partition for this bundle ({} MB; {} MB can be used)",
            declared.unwrap_or(0) / 1_000_000,
            budget / 1_000_000
        );
        guard.fail(&message);
        return refused(StatusCode::INSUFFICIENT_STORAGE, "no_space", &message);
    }
    let mut file = match tokio::fs::File::create(&path).await {
        Ok(file) => file,
        Err(e) => {
            let message = format!("cannot write {}: {e}", path.display());
            guard.fail(&message);
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, &message);
        }
    };
    let mut received = 0u64;
    let mut stream = body.into_data_stream();
    loop {
        // A client that stops sending would hold the one upload slot for ever.
        let chunk = match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, stream.next()).await {
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => {
                let message = format!("the upload broke off after {received} bytes: {e}");
                guard.fail(&message);
                return refused(StatusCode::BAD_REQUEST, "upload", &message);
            }
            Err(_) => {
                let message = format!(
                    "the upload stalled: nothing arrived for {} s after {received} bytes",
                    UPLOAD_IDLE_TIMEOUT.as_secs()
                );
                guard.fail(&message);
                return refused(StatusCode::REQUEST_TIMEOUT, "upload", &message);
            }
        };
        received += chunk.len() as u64;
        if received > MAX_BUNDLE_BYTES {
            let message = format!("a bundle may have at most {MAX_BUNDLE_BYTES} bytes");
            guard.fail(&message);
            return refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &message);
        }
        if received > budget {
            let message = format!(
                "not enough space on the data partition: the upload passed the {} MB that can be used",
                budget / 1_000_000
            );
            guard.fail(&message);
            return refused(StatusCode::INSUFFICIENT_STORAGE, "no_space", &message);
        }
        if let Err(e) = file.write_all(&chunk).await {
            let message = format!("cannot write {}: {e}", path.display());
            guard.fail(&message);
            return json_error(StatusCode::INSUFFICIENT_STORAGE, &message);
        }
    }
    if let Err(e) = file.flush().await {
        let message = format!("cannot write {}: {e}", path.display());
        guard.fail(&message);
        return json_error(StatusCode::INSUFFICIENT_STORAGE, &message);
    }
    drop(file);

    agent.verifying();
    let allow_downgrade = query.force || state.store.current().config.update.allow_downgrade;
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
            tracing::warn!(user = %user.username, reason = e.reason(), "firmware bundle refused: {message}");
            guard.fail(&message);
            return refused(accept_status(&e), e.reason(), &message);
        }
        Err(e) => {
            let message = format!("verification stopped: {e}");
            guard.fail(&message);
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, &message);
        }
    };
    state.audit(
        &user.username,
        Some(peer),
        "firmware",
        format!("bundle {} ({received} bytes) accepted; installing", manifest.version),
    );
    tracing::info!(version = %manifest.version, bytes = received, "firmware bundle accepted; installing");
    guard.disarm();
    agent.install_in_background(path, manifest.clone(), true);
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "version": manifest.version,
            "compatible": manifest.compatible,
            "build": manifest.build,
            "bytes": received,
            "progress": "/api/v1/firmware/install",
        })),
    )
        .into_response()
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
    let agent = state.firmware.clone();
    if matches!(
        agent.tracker.status().state,
        branchgate_update::InstallState::Receiving
            | branchgate_update::InstallState::Verifying
            | branchgate_update::InstallState::Installing
    ) {
        return refused(StatusCode::CONFLICT, "busy", "an install is running; reboot when it is done");
    }
    let backend = agent.backend.clone();
    match tokio::task::spawn_blocking(move || backend.reboot()).await {
        Ok(Ok(plan)) => {
            state.audit(
                &user.username,
                Some(peer),
                "reboot",
                format!("reboot into slot {}{}", plan.slot, if plan.simulated { " (simulated)" } else { "" }),
            );
            tracing::warn!(slot = %plan.slot, simulated = plan.simulated, "reboot requested");
            (StatusCode::ACCEPTED, Json(json!({ "slot": plan.slot, "simulated": plan.simulated }))).into_response()
        }
        Ok(Err(e)) => slot_error_response(&e),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
