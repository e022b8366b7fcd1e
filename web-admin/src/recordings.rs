//! Camera recordings (`DATA_DIR/recordings`, written by `branchgate_capture::recording`):
//! list, download (streamed from disk), delete. The page is in `pages.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use branchgate_capture::recording::{self, Container, RecordingFile};
use branchgate_config::Role;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::AppState;
use crate::api::json_error;
use crate::auth::ApiUser;

/// Read at a time when a recording is downloaded.
const CHUNK: usize = 64 * 1024;

pub fn root(state: &AppState) -> PathBuf {
    state.data_dir.join(recording::RECORDINGS_DIR)
}

/// Every recording, newest first (reads the directory: call off the async threads).
pub fn newest_first(state: &AppState) -> Vec<RecordingFile> {
    let mut files = recording::list(&root(state));
    files.reverse();
    files
}

/// When a file was last written, as RFC 3339.
pub fn modified(file: &RecordingFile) -> String {
    let ms = file.modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    crate::rfc3339(ms)
}

/// `GET /api/v1/recordings`: the files, newest first, with the recording settings.
pub async fn list(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let reader = state.clone();
    let Ok(files) = tokio::task::spawn_blocking(move || newest_first(&reader)).await else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "could not read the recordings");
    };
    let total: u64 = files.iter().map(|f| f.size).sum();
    let settings = state.store.current().config.cameras.recording.clone();
    let recordings: Vec<_> = files
        .iter()
        .map(|f| {
            json!({
                "camera": f.camera,
                "name": f.name,
                "size_bytes": f.size,
                "modified": modified(f),
                "url": format!("/api/v1/recordings/{}/{}", f.camera, f.name),
            })
        })
        .collect();
    Json(json!({ "recordings": recordings, "total_bytes": total, "settings": settings })).into_response()
}

/// The file of `camera`'s recording `name`, or the 4xx that says why not.
fn file_of(state: &AppState, camera: &str, name: &str) -> Result<(PathBuf, Container), Response> {
    let bad = || json_error(StatusCode::BAD_REQUEST, "not a recording name (camera id / YYYYMMDDTHHMMSSZ.mp4|mkv)");
    let path = recording::path_of(&root(state), camera, name).ok_or_else(bad)?;
    let container = name.rsplit_once('.').and_then(|(_, e)| Container::from_extension(e)).ok_or_else(bad)?;
    Ok((path, container))
}

/// `GET /api/v1/recordings/{camera}/{name}`: the file, streamed from disk.
pub async fn download(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path((camera, name)): Path<(String, String)>,
) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let (path, container) = match file_of(&state, &camera, &name) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return json_error(StatusCode::NOT_FOUND, &format!("no recording {camera}/{name}"));
        }
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read {name}: {e}")),
    };
    let length = file.metadata().await.map(|m| m.len()).ok();
    // The file being written grows while it is read: what was there when the length was taken.
    let limited = file.take(length.unwrap_or(u64::MAX));
    let chunks = futures_util::stream::unfold(limited, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static(container.content_type()));
    if let Some(length) = length {
        headers.insert(CONTENT_LENGTH, length.into());
    }
    // Both parts are checked names (letters, digits, `-`, `_`, `.`): safe in the header.
    if let Ok(value) = format!("attachment; filename=\"{camera}-{name}\"").parse() {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

/// Removes `camera`'s recording `name`; the outcome as the API says it.
pub async fn remove(state: &AppState, camera: &str, name: &str) -> Result<(), Response> {
    let (path, _) = file_of(state, camera, name)?;
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(json_error(StatusCode::NOT_FOUND, &format!("no recording {camera}/{name}")))
        }
        Err(e) => Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot remove {name}: {e}"))),
    }
}

/// `DELETE /api/v1/recordings/{camera}/{name}` (installer).
pub async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Path((camera, name)): Path<(String, String)>,
) -> Response {
    if let Err(r) = user.require_change(Role::Installer) {
        return r;
    }
    if let Err(r) = remove(&state, &camera, &name).await {
        return r;
    }
    state.audit(&user.username, Some(peer), "recording", format!("recording {camera}/{name} deleted"));
    StatusCode::NO_CONTENT.into_response()
}
