//! The JSON API under `/api/v1` (see `openapi.rs` for the document).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use branchgate_config::{
    ADMIN_USERNAME, AdminUser, ApplyOptions, ApplyOutcome, AuditEntry, Config, ConfigError, HashedSecret, Redaction,
    Role, SECTIONS, diff, to_document,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{ApiUser, User, check_password, clear_cookie, session_cookie};
use crate::{AppState, now_ms, rfc3339};

pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The HTTP answer to a configuration error: 422 with field errors for
/// validation, 404 for unknown things, 500 for storage failures.
pub fn config_error_response(error: &ConfigError) -> Response {
    match error {
        ConfigError::Invalid(fields) => {
            (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": "validation failed", "fields": fields })))
                .into_response()
        }
        ConfigError::Document(message) => {
            let path = message.split_once(": ").map(|(p, _)| p).filter(|p| !p.contains(' '));
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": message, "fields": path.map(|p| vec![json!({"path": p, "message": message})]).unwrap_or_default() })),
            )
                .into_response()
        }
        ConfigError::UnknownSection(_) | ConfigError::NoSuchRevision(_) => {
            json_error(StatusCode::NOT_FOUND, &error.to_string())
        }
        ConfigError::Conflict(_) => json_error(StatusCode::CONFLICT, &error.to_string()),
        ConfigError::Locked(_) | ConfigError::Storage(_) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
    }
}

fn outcome_response(outcome: &ApplyOutcome) -> Response {
    Json(json!({
        "revision": outcome.revision,
        "changed": outcome.changed,
        "pending_confirm": outcome.pending_confirm,
    }))
    .into_response()
}

/// Parses a JSON request body; `expected` tells the client what shape was wanted.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("expected {expected}: {e}")))
}

impl AppState {
    /// Restoring a revision that changes an admin-only section (other logins, other update
    /// policy) is admin only, like changing that section directly.
    pub fn restore_needs_admin(&self, rev: u64) -> bool {
        let Ok(Some(old)) = self.store.revision(rev) else { return false };
        let current = self.store.current();
        ADMIN_SECTIONS
            .iter()
            .any(|section| section_value(&old.config, section) != section_value(&current.config, section))
    }

    pub fn audit(&self, user: &str, peer: Option<SocketAddr>, action: &str, detail: impl Into<String>) {
        self.store.record_audit(&AuditEntry {
            time_ms: now_ms(),
            user: user.to_string(),
            peer: peer.map(|p| p.ip().to_string()),
            action: action.to_string(),
            detail: detail.into(),
        });
    }

    /// Checks credentials under the peer's lockout; the error is the response
    /// to send. Failures are counted, logged and audited; successes are not
    /// audited here (a login is, a metrics scrape is not).
    pub async fn verify_credentials(
        &self,
        peer: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<(Role, bool), Response> {
        if let Some(left) = self.lockout.locked(peer.ip()) {
            let mut response = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many failed logins from {}; try again in {} s", peer.ip(), left.as_secs() + 1),
            );
            if let Ok(value) = (left.as_secs() + 1).to_string().parse() {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            return Err(response);
        }
        // Names that cannot exist are refused without hashing and never logged as
        // given (a password typed into the username field must not reach the logs).
        if username != ADMIN_USERNAME && !branchgate_config::is_username(username) {
            return Err(self.failed_login(peer, "(invalid username)"));
        }
        let admin = self.store.current().config.admin.clone();
        let result = check_password(&admin, username, password).await;
        // Checks queue for a slot: the peer may have been locked out meanwhile.
        if self.lockout.locked(peer.ip()).is_some() {
            return Err(json_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many failed logins from {}", peer.ip()),
            ));
        }
        // A success leaves the peer's failure count alone (see `Lockout`).
        result.ok_or_else(|| self.failed_login(peer, username))
    }

    /// Counts, audits and logs a failed login; the response to send.
    fn failed_login(&self, peer: SocketAddr, username: &str) -> Response {
        self.metrics.login_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let admin = &self.store.current().config.admin;
        let locked = self.lockout.fail(
            peer.ip(),
            admin.lockout_threshold,
            Duration::from_secs(u64::from(admin.lockout_minutes) * 60),
        );
        let detail = if locked { "failed; peer locked out" } else { "failed" };
        self.audit(username, Some(peer), "login", detail);
        tracing::warn!(%username, peer = %peer.ip(), locked, "failed login");
        json_error(StatusCode::UNAUTHORIZED, "wrong username or password")
    }

    /// Logs a user in: a new session; the error is the response to send.
    pub async fn login(&self, peer: SocketAddr, username: &str, password: &str) -> Result<(String, User), Response> {
        let (role, must_change) = self.verify_credentials(peer, username, password).await?;
        let id = self.sessions.create(username, role, must_change);
        self.audit(username, Some(peer), "login", format!("role {}", role.as_str()));
        let user = User { session_id: id.clone(), username: username.into(), role, must_change_password: must_change };
        Ok((id, user))
    }

    /// Sets the password of `username` (the caller has checked the right to).
    pub fn set_password(&self, author: &User, username: &str, new_password: &str) -> Result<ApplyOutcome, ConfigError> {
        let mut config = self.store.current().config.clone();
        if username == ADMIN_USERNAME {
            config.admin.password = HashedSecret::new(new_password);
            config.admin.must_change_password = false;
        } else if let Some(user) = config.admin.users.iter_mut().find(|u| u.username == username) {
            user.password = HashedSecret::new(new_password);
            user.must_change_password = author.username != username;
        } else {
            return Err(ConfigError::Document(format!("no user named '{username}'")));
        }
        let outcome = self.store.apply(
            config,
            ApplyOptions::new(&author.username, format!("password of {username} changed")),
            now_ms(),
        )?;
        self.sessions.remove_user(username, Some(&author.session_id));
        if author.username == username {
            self.sessions.clear_must_change(&author.session_id);
        }
        Ok(outcome)
    }
}

/// Password rules: long enough, not the username, not the current one.
pub fn password_problem(username: &str, new_password: &str, current_password: Option<&str>) -> Option<&'static str> {
    if new_password.chars().count() < 10 {
        Some("use at least 10 characters")
    } else if new_password.len() > 256 {
        Some("use at most 256 characters")
    } else if new_password.eq_ignore_ascii_case(username) {
        Some("the password cannot be the username")
    } else if current_password == Some(new_password) {
        Some("choose a password different from the current one")
    } else {
        None
    }
}

#[derive(Deserialize)]
pub struct LoginBody {
    username: String,
    password: String,
}

pub async fn post_session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let body: LoginBody = match parse_body(&body, r#"{"username", "password"}"#) {
        Ok(parsed) => parsed,
        Err(r) => return r,
    };
    match state.login(peer, &body.username, &body.password).await {
        Ok((id, user)) => (
            [(SET_COOKIE, session_cookie(&id))],
            Json(json!({
                "username": user.username,
                "role": user.role,
                "must_change_password": user.must_change_password,
            })),
        )
            .into_response(),
        Err(response) => response,
    }
}

pub async fn get_session(ApiUser(user): ApiUser) -> Response {
    Json(json!({ "username": user.username, "role": user.role, "must_change_password": user.must_change_password }))
        .into_response()
}

pub async fn delete_session(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    state.sessions.remove(&user.session_id);
    ([(SET_COOKIE, clear_cookie())], StatusCode::NO_CONTENT).into_response()
}

#[derive(Deserialize)]
pub struct PasswordBody {
    current_password: String,
    new_password: String,
}

pub async fn put_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    let body: PasswordBody = match parse_body(&body, r#"{"current_password", "new_password"}"#) {
        Ok(parsed) => parsed,
        Err(r) => return r,
    };
    let admin = state.store.current().config.admin.clone();
    if check_password(&admin, &user.username, &body.current_password).await.is_none() {
        return json_error(StatusCode::FORBIDDEN, "the current password is wrong");
    }
    if let Some(problem) = password_problem(&user.username, &body.new_password, Some(&body.current_password)) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": problem, "fields": [{"path": "new_password", "message": problem}]})),
        )
            .into_response();
    }
    match state.set_password(&user, &user.username, &body.new_password) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "password", "own password changed");
            outcome_response(&outcome)
        }
        Err(e) => config_error_response(&e),
    }
}

pub async fn get_config(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let current = state.store.current();
    Json(to_document(&current.config.redacted(Redaction::All), current.revision, &rfc3339(now_ms()))).into_response()
}

/// Sections an installer may change; `admin` holds logins and needs the admin role.
/// Sections only an admin may change.
const ADMIN_SECTIONS: &[&str] = &["admin", "update"];

/// `admin` decides who may log in; `update` can open the box to older (possibly vulnerable)
/// firmware and points it at a fleet server: both are the owner's decision, not an installer's.
pub fn section_role(section: &str) -> Role {
    if ADMIN_SECTIONS.contains(&section) { Role::Admin } else { Role::Installer }
}

pub fn section_value(config: &Config, section: &str) -> Option<Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(mut map)) => map.remove(section),
        _ => None,
    }
}

pub async fn get_section(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(section): Path<String>,
) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let current = state.store.current();
    match section_value(&current.config.redacted(Redaction::All), &section) {
        Some(Value::Object(mut map)) => {
            map.insert("revision".into(), current.revision.into());
            Json(Value::Object(map)).into_response()
        }
        _ => json_error(StatusCode::NOT_FOUND, &format!("no configuration section named '{section}'")),
    }
}

#[derive(Deserialize)]
pub struct ChangeQuery {
    comment: Option<String>,
}

pub async fn put_section(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Path(section): Path<String>,
    Query(query): Query<ChangeQuery>,
    body: Bytes,
) -> Response {
    if !SECTIONS.contains(&section.as_str()) {
        return json_error(StatusCode::NOT_FOUND, &format!("no configuration section named '{section}'"));
    }
    if let Err(r) = user.require_change(section_role(&section)) {
        return r;
    }
    let mut patch: Value = match parse_body(&body, "a JSON object with the section's fields") {
        Ok(v) => v,
        Err(r) => return r,
    };
    // A section read from GET carries the revision it came from: refuse to
    // overwrite a newer change made meanwhile.
    if let Some(base) = patch.as_object_mut().and_then(|m| m.remove("revision")) {
        let current = state.store.current().revision;
        if base.as_u64() != Some(current) {
            return json_error(
                StatusCode::CONFLICT,
                &format!(
                    "the configuration changed meanwhile (now revision {current}, you sent {base}); reload and retry"
                ),
            );
        }
    }
    let comment = query.comment.unwrap_or_else(|| format!("{section} changed"));
    match state.store.apply_section(&section, patch, ApplyOptions::new(&user.username, &comment), now_ms()) {
        Ok(outcome) => {
            if outcome.changed {
                state.audit(
                    &user.username,
                    Some(peer),
                    "config",
                    format!("{section}: {comment} (revision {})", outcome.revision),
                );
            }
            outcome_response(&outcome)
        }
        Err(e) => config_error_response(&e),
    }
}

pub async fn list_revisions(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    match state.store.history(500) {
        Ok(history) => Json(json!({ "current": state.store.current().revision, "revisions": history })).into_response(),
        Err(e) => config_error_response(&e),
    }
}

pub async fn get_revision(State(state): State<AppState>, ApiUser(user): ApiUser, Path(rev): Path<u64>) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    match revision_with_diff(&state, rev) {
        Ok(Some(value)) => Json(value).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, &format!("revision {rev} does not exist")),
        Err(e) => config_error_response(&e),
    }
}

/// A revision with its (redacted) configuration and the changes from the one before.
pub fn revision_with_diff(state: &AppState, rev: u64) -> Result<Option<Value>, ConfigError> {
    let Some(revision) = state.store.revision(rev)? else {
        return Ok(None);
    };
    let new = serde_json::to_value(revision.config.redacted(Redaction::All)).unwrap_or(Value::Null);
    let old = match rev.checked_sub(1).filter(|r| *r > 0) {
        Some(prev) => state.store.revision(prev)?.map(|r| r.config.redacted(Redaction::All)),
        None => None,
    };
    let old = old.map(|c| serde_json::to_value(c).unwrap_or(Value::Null)).unwrap_or(json!({}));
    Ok(Some(json!({ "info": revision.info, "config": new, "changes": diff(&old, &new) })))
}

pub async fn restore_revision(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Path(rev): Path<u64>,
) -> Response {
    if let Err(r) = user.require_change(Role::Installer) {
        return r;
    }
    if state.restore_needs_admin(rev) && user.role < Role::Admin {
        return json_error(
            StatusCode::FORBIDDEN,
            "that revision has other logins or another update policy; restoring it needs the admin role",
        );
    }
    match state.store.restore(rev, &user.username, now_ms()) {
        Ok(outcome) => {
            state.audit(
                &user.username,
                Some(peer),
                "restore",
                format!("revision {rev} restored as {}", outcome.revision),
            );
            outcome_response(&outcome)
        }
        Err(e) => config_error_response(&e),
    }
}

#[derive(Deserialize, Default)]
pub struct ConfirmBody {
    /// The pending revision being confirmed (recommended): 409 if another is pending.
    #[serde(default)]
    pub revision: Option<u64>,
}

pub async fn confirm(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Installer) {
        return r;
    }
    let body: ConfirmBody = if body.is_empty() {
        ConfirmBody::default()
    } else {
        match parse_body(&body, r#"{"revision": N} or nothing"#) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        }
    };
    match state.store.confirm(body.revision) {
        Ok(true) => {
            state.audit(&user.username, Some(peer), "confirm", "pending change confirmed");
            Json(json!({ "confirmed": true })).into_response()
        }
        Ok(false) => json_error(StatusCode::CONFLICT, "no change is waiting for confirmation"),
        Err(e) => config_error_response(&e),
    }
}

#[derive(Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    include_secrets: bool,
}

pub fn export_response(state: &AppState, include_secrets: bool) -> Response {
    let redaction = if include_secrets { Redaction::None } else { Redaction::PlainSecrets };
    let doc = state.store.export(redaction, &rfc3339(now_ms()));
    let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let hostname = state.store.current().config.system.hostname.clone();
    (
        [
            (CONTENT_TYPE, "application/json".to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{hostname}-config-r{}.json\"", state.store.current().revision),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn export(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Query(query): Query<ExportQuery>,
) -> Response {
    if let Err(r) = user.require(Role::Admin) {
        return r;
    }
    state.audit(
        &user.username,
        Some(peer),
        "export",
        if query.include_secrets { "with secrets" } else { "secrets hashed or redacted" },
    );
    export_response(&state, query.include_secrets)
}

pub async fn import(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    match state.store.import(&body, ApplyOptions::new(&user.username, "backup restored"), now_ms()) {
        Ok(outcome) => {
            state.audit(
                &user.username,
                Some(peer),
                "import",
                format!("backup restored as revision {}", outcome.revision),
            );
            outcome_response(&outcome)
        }
        Err(e) => config_error_response(&e),
    }
}

pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if crate::auth::session_user(&headers, &state).is_some() {
        Json(state.status_json()).into_response()
    } else {
        Json(json!({
            "status": if state.services.all_running() { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs(),
        }))
        .into_response()
    }
}

#[derive(Deserialize)]
pub struct LogQuery {
    limit: Option<usize>,
    level: Option<String>,
}

pub async fn logs(State(state): State<AppState>, ApiUser(user): ApiUser, Query(query): Query<LogQuery>) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let level = query.level.map(|l| l.to_ascii_uppercase());
    Json(json!({ "lines": state.logs.tail(query.limit.unwrap_or(200).min(5000), level.as_deref()) })).into_response()
}

pub async fn audit(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Admin) {
        return r;
    }
    Json(json!({ "entries": state.store.audit_log(1000) })).into_response()
}

pub async fn list_users(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Admin) {
        return r;
    }
    let admin = &state.store.current().config.admin;
    let mut users = vec![
        json!({"username": ADMIN_USERNAME, "role": Role::Admin, "must_change_password": admin.must_change_password}),
    ];
    users.extend(
        admin
            .users
            .iter()
            .map(|u| json!({"username": u.username, "role": u.role, "must_change_password": u.must_change_password})),
    );
    Json(json!({ "users": users })).into_response()
}

#[derive(Deserialize)]
pub struct NewUser {
    pub username: String,
    pub role: Role,
    pub password: String,
}

/// Adds a login; the error is the response to send.
pub fn add_user(state: &AppState, author: &User, new: NewUser) -> Result<ApplyOutcome, Response> {
    if let Some(problem) = password_problem(&new.username, &new.password, None) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": problem, "fields": [{"path": "password", "message": problem}]})),
        )
            .into_response());
    }
    let mut config = state.store.current().config.clone();
    if new.username == ADMIN_USERNAME || config.admin.users.iter().any(|u| u.username == new.username) {
        return Err(json_error(StatusCode::CONFLICT, &format!("a user named '{}' exists", new.username)));
    }
    config.admin.users.push(AdminUser {
        username: new.username.clone(),
        role: new.role,
        password: HashedSecret::new(new.password),
        must_change_password: true,
    });
    state
        .store
        .apply(config, ApplyOptions::new(&author.username, format!("user {} added", new.username)), now_ms())
        .map_err(|e| config_error_response(&e))
}

pub fn delete_user_by_name(state: &AppState, author: &User, username: &str) -> Result<ApplyOutcome, Response> {
    if username == ADMIN_USERNAME {
        return Err(json_error(StatusCode::UNPROCESSABLE_ENTITY, "the built-in admin account cannot be deleted"));
    }
    let mut config = state.store.current().config.clone();
    let before = config.admin.users.len();
    config.admin.users.retain(|u| u.username != username);
    if config.admin.users.len() == before {
        return Err(json_error(StatusCode::NOT_FOUND, &format!("no user named '{username}'")));
    }
    let outcome = state
        .store
        .apply(config, ApplyOptions::new(&author.username, format!("user {username} deleted")), now_ms())
        .map_err(|e| config_error_response(&e))?;
    state.sessions.remove_user(username, None);
    Ok(outcome)
}

pub async fn post_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    let new: NewUser = match parse_body(&body, r#"{"username", "role", "password"}"#) {
        Ok(parsed) => parsed,
        Err(r) => return r,
    };
    let name = new.username.clone();
    match add_user(&state, &user, new) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "user", format!("{name} added"));
            (StatusCode::CREATED, Json(json!({"revision": outcome.revision}))).into_response()
        }
        Err(r) => r,
    }
}

pub async fn delete_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Path(username): Path<String>,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    match delete_user_by_name(&state, &user, &username) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "user", format!("{username} deleted"));
            outcome_response(&outcome)
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct TlsBody {
    pub certificate: String,
    pub private_key: String,
}

/// Installs the installer's certificate (checked first); it applies without a
/// restart and waits for confirmation like any change that may cut the installer off.
pub fn set_certificate(state: &AppState, author: &User, body: TlsBody) -> Result<ApplyOutcome, Response> {
    if let Err(problem) = crate::tls::check_pair(&body.certificate, &body.private_key) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": problem, "fields": [{"path": "admin.tls_certificate", "message": problem}]})),
        )
            .into_response());
    }
    let mut config = state.store.current().config.clone();
    config.admin.tls_certificate = Some(body.certificate);
    config.admin.tls_private_key = Some(branchgate_config::PlainSecret::new(body.private_key));
    state
        .store
        .apply(config, ApplyOptions::new(&author.username, "admin certificate installed"), now_ms())
        .map_err(|e| config_error_response(&e))
}

pub async fn put_tls(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    body: Bytes,
) -> Response {
    if let Err(r) = user.require_change(Role::Admin) {
        return r;
    }
    let body: TlsBody = match parse_body(&body, r#"{"certificate", "private_key"} in PEM"#) {
        Ok(parsed) => parsed,
        Err(r) => return r,
    };
    match set_certificate(&state, &user, body) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "tls", "certificate installed");
            outcome_response(&outcome)
        }
        Err(r) => r,
    }
}

pub async fn fallback() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such API path; see /api/v1/openapi.json")
}

/// Live TURN allocations as the allocations table shows them.
pub fn turn_allocations_json(state: &AppState) -> Value {
    let turn = state.turn.snapshot();
    let allocations: Vec<Value> = turn
        .allocations
        .iter()
        .map(|a| {
            json!({
                "username": a.username,
                "client": a.client.to_string(),
                "relay": a.relay.map(|r| r.to_string()),
                // A dual-stack allocation relays from an IPv4 and an IPv6 address.
                "relays": a.relays.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "peers": a.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "age_seconds": a.age.as_secs(),
                "to_peer": {"packets": a.to_peer.packets, "bytes": a.to_peer.bytes},
                "to_client": {"packets": a.to_client.packets, "bytes": a.to_client.bytes},
            })
        })
        .collect();
    json!({ "running": turn.running, "allocations": allocations })
}

pub async fn turn_allocations(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    Json(turn_allocations_json(&state)).into_response()
}

/// Live SIP registrations.
pub async fn sip_registrations(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let list: Vec<Value> = state
        .sip
        .registrations()
        .iter()
        .map(|r| {
            json!({
                "user": r.user,
                "contact": r.contact,
                "source": r.source.to_string(),
                "transport": r.transport.via_name(),
                "expires_in": r.expires_in.as_secs(),
            })
        })
        .collect();
    Json(json!({ "registrations": list })).into_response()
}

/// Live calls and the trunks' keepalive state.
pub async fn sip_calls(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    Json(json!({ "calls": state.sip.calls(), "trunks": state.sip.trunks() })).into_response()
}

/// Hangs up a live call (both legs get a BYE, or the caller a 480 before answer).
pub async fn hang_up_call(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiUser(user): ApiUser,
    Path(id): Path<u64>,
) -> Response {
    if let Err(r) = user.require_change(Role::Installer) {
        return r;
    }
    if !state.sip.calls().iter().any(|c| c.id == id) {
        return json_error(StatusCode::NOT_FOUND, &format!("no call {id}"));
    }
    if !state.sip.hang_up(id) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "the SIP service is not running");
    }
    state.audit(&user.username, Some(peer), "call", format!("call {id} hung up"));
    StatusCode::NO_CONTENT.into_response()
}

/// Call detail records as CSV (from `<data dir>/cdr.jsonl`, oldest first).
pub async fn cdr_csv(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let text = match std::fs::read_to_string(state.data_dir.join("cdr.jsonl")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read call records: {e}")),
    };
    (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8"),
            (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"cdr.csv\""),
        ],
        cdr_to_csv(&text),
    )
        .into_response()
}

/// Columns of the CDR export, in order.
const CDR_COLUMNS: &[&str] =
    &["call", "start", "answer", "end", "duration_seconds", "caller", "callee", "destination", "status", "cause"];

/// CSV (RFC 4180) of JSON-lines call records; lines that do not parse are skipped.
pub fn cdr_to_csv(jsonl: &str) -> String {
    let mut out = CDR_COLUMNS.join(",");
    out.push_str("\r\n");
    for record in jsonl.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let fields: Vec<String> = CDR_COLUMNS
            .iter()
            .map(|c| {
                let text = match &record[*c] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // Quote always-safe: fields starting with = + - @ would be formulas in a spreadsheet.
                let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text };
                format!("\"{}\"", text.replace('"', "\"\""))
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The box's cameras (real V4L2 devices, or the simulated one where there is none).
pub async fn cameras(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    Json(camera_list(&state)).into_response()
}

/// The cameras as `GET /api/v1/cameras` lists them (also part of `GET /api/v1/devices`).
fn camera_list(state: &AppState) -> Value {
    let list: Vec<Value> = branchgate_capture::cameras()
        .into_iter()
        .map(|c| {
            let viewers = state.whep.hub.viewers(&c.id);
            json!({ "id": c.id, "name": c.name, "simulated": c.simulated, "device": c.device,
                    "width": c.width, "height": c.height, "whep": format!("/whep/{}", c.id),
                    "encoder_running": viewers > 0, "viewers": viewers })
        })
        .collect();
    Value::Array(list)
}

/// Every device of the box and whether it is simulated: cameras (as
/// `/api/v1/cameras`), audio (ALSA PCMs or the simulated card, with the
/// playback mixer of each card), GPIO pins with the LED pattern, watchdogs.
pub async fn devices(State(state): State<AppState>, ApiUser(user): ApiUser) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    Json(devices_report(&state).await).into_response()
}

/// What `GET /api/v1/devices` says (the devices page shows the same).
pub async fn devices_report(state: &AppState) -> Value {
    // libasound calls block (and open device nodes): off the async workers.
    let audio = tokio::task::spawn_blocking(|| {
        let backend = branchgate_hal::audio::backend();
        let (devices, error) = match backend.devices() {
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let mut cards: Vec<String> = devices.iter().map(|d| d.card.clone()).collect();
        cards.dedup();
        let mixers: Vec<Value> =
            cards.iter().filter_map(|card| backend.mixer(card, None).ok()).map(|m| json!(m)).collect();
        json!({ "backend": backend.kind(), "simulated": backend.simulated(), "devices": devices,
                "mixers": mixers, "error": error })
    })
    .await
    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    let board = &state.devices;
    let watchdogs = board.watchdogs();
    let watchdog = watchdogs.first().map(|w| json!(w)).unwrap_or(json!({ "kind": "none", "simulated": true }));
    json!({
        "cameras": camera_list(state),
        "audio": audio,
        "gpio": { "pins": board.pins(), "led_pattern": board.led_pattern(), "reset_armed": board.reset_armed() },
        "watchdog": watchdog,
        "watchdogs": watchdogs,
    })
}

/// A JPEG snapshot of a camera: the simulated one's picture from `hal`, a real
/// one's decoded from its stream (`branchgate_capture::snapshot`).
pub async fn camera_snapshot(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = user.require(Role::Viewer) {
        return r;
    }
    let cameras = branchgate_capture::cameras();
    let Some(camera) = cameras.iter().find(|c| c.id == id) else {
        return json_error(StatusCode::NOT_FOUND, &format!("no camera {id}"));
    };
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let jpeg = if camera.simulated {
        branchgate_hal::camera::snapshot_jpeg(camera, unix_ms).map_err(|e| e.to_string())
    } else {
        branchgate_capture::snapshot::snapshot(&state.whep.hub, camera).await.map_err(|e| e.to_string())
    };
    match jpeg {
        Ok(jpeg) => {
            ([(CONTENT_TYPE, "image/jpeg"), (axum::http::header::CACHE_CONTROL, "no-store")], jpeg).into_response()
        }
        // The camera is busy, gone or cannot be decoded here: the box is fine, the picture is not.
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

#[cfg(test)]
mod cdr_tests {
    #[test]
    fn csv_quotes_and_neutralises_formulas() {
        let csv = super::cdr_to_csv(
            "{\"call\":1,\"caller\":\"=cmd\",\"callee\":\"9\\\"1\",\"status\":200,\"answer\":null}\nnot json\n",
        );
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("call,start,answer,end,duration_seconds,caller,callee,destination,status,cause"));
        assert_eq!(lines.next(), Some("\"1\",\"\",\"\",\"\",\"\",\"'=cmd\",\"9\"\"1\",\"\",\"200\",\"\""));
        assert_eq!(lines.next(), None);
    }
}
