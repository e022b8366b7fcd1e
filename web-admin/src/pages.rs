//! Server-rendered pages. Forms post back to the page itself and redirect on
//! success (so a reload never resubmits); errors re-render the form with each
//! message next to its field. JavaScript only adds live updates.

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Multipart, Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use branchgate_config::{ApplyOptions, Config, ConfigError, PendingConfirm, REDACTED, Redaction, Role, SECTIONS};
use rust_embed::RustEmbed;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::{self, NewUser, TlsBody, password_problem, section_role, section_value};
use crate::auth::{PageUser, User, check_password, clear_cookie, redirect, session_cookie};
use crate::{AppState, ROLES, now_ms, rfc3339};

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
        .route("/password", get(password_page).post(password_submit))
        .route("/setup", get(setup_page).post(setup_submit))
        .route("/settings/{section}", get(settings_page).post(settings_submit))
        .route("/history", get(history_page))
        .route("/history/{rev}", get(revision_page))
        .route("/history/{rev}/restore", post(restore_submit))
        .route("/confirm", post(confirm_submit))
        .route("/backup", get(backup_page))
        .route("/backup/download", get(backup_download))
        .route("/backup/restore", post(backup_restore))
        .route("/logs", get(logs_page))
        .route("/users", get(users_page).post(users_submit))
        .route("/users/{username}/delete", post(user_delete))
        .route("/audit", get(audit_page))
        .route("/tls", get(tls_page).post(tls_submit))
        .route("/turn", get(turn_page))
        .route("/calls", get(calls_page))
        .route("/calls/{id}/hangup", post(call_hang_up))
        .route("/recordings", get(recordings_page))
        .route("/devices", get(devices_page))
        .route("/recordings/{camera}/{name}/delete", post(recording_delete))
        .route("/firmware", get(firmware_page))
        // A bundle is some 100 MiB: the upload streams to disk (see `firmware::receive_bundle`).
        .route("/firmware/upload", post(firmware_upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/firmware/slots/{slot}/activate", post(firmware_activate))
        .route("/firmware/reboot", post(firmware_reboot))
        .route("/firmware/usb/install", post(firmware_usb_install))
        .route("/firmware/factory-reset", post(firmware_factory_reset))
        .route("/phone", get(phone_page))
        .route("/phone/ice-servers", post(crate::phone::ice_servers))
        .route("/assets/{*file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    match Assets::get(&file) {
        Some(content) => {
            let mime = match file.rsplit('.').next() {
                Some("css") => "text/css; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("svg") => "image/svg+xml",
                _ => "application/octet-stream",
            };
            let mut response = (StatusCode::OK, [(CONTENT_TYPE, mime)], content.data.into_owned()).into_response();
            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            response
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// What every page's frame shows.
pub struct Layout {
    pub title: String,
    pub user: Option<User>,
    pub pending: Option<PendingView>,
    pub notice: Option<String>,
    pub flash: Option<String>,
    pub sections: Vec<(&'static str, String)>,
    pub hostname: String,
}

pub struct PendingView {
    pub revision: u64,
    pub previous_revision: u64,
    pub deadline_ms: u64,
    pub seconds_left: u64,
}

impl Layout {
    fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role >= Role::Admin)
    }

    fn can_change(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role >= Role::Installer)
    }
}

/// `udp_port` → `UDP port`: a label from a field or section name.
fn humanize(name: &str) -> String {
    const ACRONYMS: &[&str] =
        &["sip", "turn", "udp", "tcp", "tls", "rtp", "dns", "http", "https", "ip", "ws", "tz", "url", "cpu"];
    let words: Vec<String> = name
        .split('_')
        .enumerate()
        .map(|(i, word)| {
            if ACRONYMS.contains(&word) {
                word.to_uppercase()
            } else if i == 0 {
                sentence(word)
            } else {
                word.to_string()
            }
        })
        .collect();
    words.join(" ")
}

/// A message with its first letter capitalised.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn layout(state: &AppState, title: &str, user: Option<&User>, flash: Option<String>) -> Layout {
    let pending = state.store.pending().map(|p: PendingConfirm| PendingView {
        revision: p.revision,
        previous_revision: p.previous_revision,
        deadline_ms: p.deadline_ms,
        seconds_left: p.deadline_ms.saturating_sub(now_ms()) / 1000,
    });
    Layout {
        title: title.to_string(),
        user: user.cloned(),
        pending,
        notice: state.store.recovery_notice().map(str::to_string),
        flash,
        sections: SECTIONS.iter().map(|s| (*s, humanize(s))).collect(),
        hostname: state.store.current().config.system.hostname.clone(),
    }
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response()
        }
    }
}

fn render_status(status: StatusCode, template: &impl Template) -> Response {
    let mut response = render(template);
    *response.status_mut() = status;
    response
}

#[derive(Deserialize, Default)]
struct Flash {
    done: Option<String>,
    rev: Option<u64>,
}

impl Flash {
    fn message(&self) -> Option<String> {
        let rev = self.rev.map(|r| format!(" (revision {r})")).unwrap_or_default();
        let text = match self.done.as_deref()? {
            "saved" => format!("Saved{rev}."),
            "unchanged" => "Nothing changed.".to_string(),
            "restored" => format!("Restored{rev}."),
            "confirmed" => "Change confirmed; it stays.".to_string(),
            "password" => "Password changed.".to_string(),
            "user-added" => format!("User added{rev}; they choose their own password at first login."),
            "user-deleted" => format!("User deleted{rev}."),
            "tls" => format!("Certificate installed{rev}. Reload the page to check it, then confirm."),
            "setup" => "Setup complete. Welcome!".to_string(),
            "hung-up" => "Call hung up.".to_string(),
            "recording-deleted" => "Recording deleted.".to_string(),
            "firmware-installing" => "Bundle accepted; it is installing into the other slot.".to_string(),
            "slot-activated" => "Done: that slot starts at the next reboot.".to_string(),
            "rebooting" => "Reboot asked for.".to_string(),
            _ => return None,
        };
        Some(text)
    }
}

fn done(path: &str, what: &str, rev: Option<u64>) -> Response {
    match rev {
        Some(rev) => redirect(&format!("{path}?done={what}&rev={rev}")),
        None => redirect(&format!("{path}?done={what}")),
    }
}

fn forbidden(state: &AppState, user: &User, why: &str) -> Response {
    let page = MessagePage { layout: layout(state, "Not allowed", Some(user), None), message: why.to_string() };
    render_status(StatusCode::FORBIDDEN, &page)
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    message: String,
}

// ----- the softphone ------------------------------------------------------------

/// The JsSIP bundle the page loads (`./x vendor-jssip` writes it; the name carries the version
/// so a new one is never mixed with a cached old one).
const JSSIP_ASSET: &str = "vendor/jssip-3.13.8.min.js";

#[derive(Template)]
#[template(path = "phone.html")]
struct PhonePage {
    layout: Layout,
    /// The SIP domain users register in (`sip:<extension>@<domain>`).
    domain: String,
    jssip: &'static str,
}

/// `/phone`: public on purpose. The page holds no secret and grants nothing; the SIP user's
/// digest on `/sip` is what authenticates, as for any other SIP-over-WebSocket client.
async fn phone_page(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    // An installer who is logged in keeps the admin navigation on this page.
    let user = crate::auth::session_user(&headers, &state);
    let domain = state.store.current().config.sip.domain.clone();
    render(&PhonePage { layout: layout(&state, "Phone", user.as_ref(), None), domain, jssip: JSSIP_ASSET })
}

// ----- login, logout, password -------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    username: String,
    error: Option<String>,
}

async fn login_page(State(state): State<AppState>) -> Response {
    render(&LoginPage { layout: layout(&state, "Log in", None, None), username: String::new(), error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    match state.login(peer, &form.username, &form.password).await {
        Ok((id, user)) => {
            let next = if user.must_change_password { "/password" } else { "/" };
            let mut response = redirect(next);
            if let Ok(cookie) = HeaderValue::from_str(&session_cookie(&id)) {
                response.headers_mut().insert(SET_COOKIE, cookie);
            }
            response
        }
        Err(api_response) => {
            let status = api_response.status();
            let error = if status == StatusCode::TOO_MANY_REQUESTS {
                "Too many failed logins from your address. Wait a while and try again."
            } else {
                "Wrong username or password."
            };
            let page = LoginPage {
                layout: layout(&state, "Log in", None, None),
                username: form.username,
                error: Some(error.into()),
            };
            render_status(status, &page)
        }
    }
}

async fn logout(State(state): State<AppState>, PageUser(user): PageUser) -> Response {
    state.sessions.remove(&user.session_id);
    let mut response = redirect("/login");
    if let Ok(cookie) = HeaderValue::from_str(&clear_cookie()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    layout: Layout,
    forced: bool,
    errors: HashMap<String, String>,
}

impl PasswordPage {
    fn error(&self, field: &str) -> Option<&String> {
        self.errors.get(field)
    }
}

async fn password_page(State(state): State<AppState>, PageUser(user): PageUser) -> Response {
    render(&PasswordPage {
        forced: user.must_change_password,
        layout: layout(&state, "Change password", Some(&user), None),
        errors: HashMap::new(),
    })
}

#[derive(Deserialize)]
struct PasswordForm {
    current_password: String,
    new_password: String,
    repeat_password: String,
}

async fn password_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    axum::Form(form): axum::Form<PasswordForm>,
) -> Response {
    let mut errors = HashMap::new();
    let admin = state.store.current().config.admin.clone();
    if check_password(&admin, &user.username, &form.current_password).await.is_none() {
        errors.insert("current_password".to_string(), "This is not your current password.".to_string());
    } else if let Some(problem) = password_problem(&user.username, &form.new_password, Some(&form.current_password)) {
        errors.insert("new_password".to_string(), format!("{}.", sentence(problem)));
    } else if form.new_password != form.repeat_password {
        errors.insert("repeat_password".to_string(), "The two new passwords differ.".to_string());
    }
    if errors.is_empty() {
        match state.set_password(&user, &user.username, &form.new_password) {
            Ok(_) => {
                state.audit(&user.username, Some(peer), "password", "own password changed");
                let setup_done = state.store.current().config.system.setup_complete;
                return if user.role >= Role::Admin && !setup_done {
                    redirect("/setup")
                } else {
                    done("/", "password", None)
                };
            }
            Err(e) => {
                errors.insert("new_password".to_string(), e.to_string());
            }
        }
    }
    let page = PasswordPage {
        forced: user.must_change_password,
        layout: layout(&state, "Change password", Some(&user), None),
        errors,
    };
    render_status(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

// ----- dashboard ----------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    layout: Layout,
    status: Value,
    services: Vec<crate::status::ServiceStatus>,
}

impl DashboardPage {
    fn field(&self, name: &str) -> String {
        match &self.status[name] {
            Value::Null => "–".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn memory_mib(&self, name: &str) -> String {
        self.status["memory"][name].as_u64().map(|b| format!("{} MiB", b / (1024 * 1024))).unwrap_or_default()
    }
}

async fn dashboard(State(state): State<AppState>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    if user.role >= Role::Admin && !state.store.current().config.system.setup_complete {
        return redirect("/setup");
    }
    let page = DashboardPage {
        layout: layout(&state, "Dashboard", Some(&user), flash.message()),
        status: state.status_json(),
        services: state.services.list(),
    };
    render(&page)
}

// ----- first-boot wizard ----------------------------------------------------------

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    layout: Layout,
    hostname: String,
    timezone: String,
    sip_domain: String,
    interfaces: Vec<(String, String)>,
    errors: HashMap<String, String>,
}

impl SetupPage {
    fn error(&self, field: &str) -> Option<&String> {
        self.errors.get(field)
    }
}

/// Interfaces and their addresses as the kernel reports them.
fn interfaces() -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = Vec::new();
    if let Ok(entries) = if_addrs::get_if_addrs() {
        for entry in entries {
            let addr = match &entry.addr {
                if_addrs::IfAddr::V4(v4) => format!("{}/{}", v4.ip, u32::from(v4.netmask).count_ones()),
                if_addrs::IfAddr::V6(v6) => format!("{}/{}", v6.ip, u128::from(v6.netmask).count_ones()),
            };
            match list.iter_mut().find(|(name, _)| *name == entry.name) {
                Some((_, addrs)) => {
                    addrs.push_str(", ");
                    addrs.push_str(&addr);
                }
                None => list.push((entry.name.clone(), addr)),
            }
        }
    }
    list
}

fn setup_view(state: &AppState, user: &User, config: &Config, errors: HashMap<String, String>) -> SetupPage {
    SetupPage {
        layout: layout(state, "First-time setup", Some(user), None),
        hostname: config.system.hostname.clone(),
        timezone: config.system.timezone.clone(),
        sip_domain: config.sip.domain.clone(),
        interfaces: interfaces(),
        errors,
    }
}

async fn setup_page(State(state): State<AppState>, PageUser(user): PageUser) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "The setup wizard needs the admin role.");
    }
    let config = state.store.current().config.clone();
    render(&setup_view(&state, &user, &config, HashMap::new()))
}

#[derive(Deserialize)]
struct SetupForm {
    hostname: String,
    timezone: String,
    sip_domain: String,
}

async fn setup_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    axum::Form(form): axum::Form<SetupForm>,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "The setup wizard needs the admin role.");
    }
    let mut config = state.store.current().config.clone();
    config.system.hostname = form.hostname.trim().to_string();
    config.system.timezone = form.timezone.trim().to_string();
    config.system.setup_complete = true;
    let domain = form.sip_domain.trim().to_string();
    if config.turn.realm == config.sip.domain {
        config.turn.realm = domain.clone();
    }
    config.sip.domain = domain;
    match state.store.apply(config.clone(), ApplyOptions::new(&user.username, "first-time setup"), now_ms()) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "setup", format!("revision {}", outcome.revision));
            done("/", "setup", None)
        }
        Err(ConfigError::Invalid(fields)) => {
            let errors = fields
                .into_iter()
                .map(|f| {
                    let key = match f.path.as_str() {
                        "system.hostname" => "hostname",
                        "system.timezone" => "timezone",
                        _ => "sip_domain",
                    };
                    (key.to_string(), format!("{}.", sentence(&f.message)))
                })
                .collect();
            render_status(StatusCode::UNPROCESSABLE_ENTITY, &setup_view(&state, &user, &config, errors))
        }
        Err(e) => forbidden(&state, &user, &e.to_string()),
    }
}

// ----- settings, generated from the schema ------------------------------------------

/// One input of a generated settings form.
pub struct FieldView {
    pub name: String,
    pub label: String,
    /// `text`, `number`, `checkbox`, `select`, `secret`, `json`; `lines` for a list of
    /// values (one per line); `table` for a list of records (a row each, plus a blank one to add).
    pub kind: &'static str,
    pub value: String,
    pub checked: bool,
    pub options: Vec<String>,
    pub error: Option<String>,
    pub optional: bool,
    pub columns: Vec<ColumnView>,
    pub rows: Vec<Vec<CellView>>,
}

/// A column of a `table` field: one key of the records.
#[derive(Clone, Debug)]
pub struct ColumnView {
    pub name: String,
    pub label: String,
    /// `text`, `number`, `checkbox`, `select`, `secret` or `pem` (a multi-line certificate).
    pub kind: &'static str,
    pub options: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct CellView {
    pub value: String,
    pub checked: bool,
}

/// The columns of a list of records, from the example record.
fn columns_of(path: &str, sample: &Map<String, Value>) -> Vec<ColumnView> {
    sample
        .iter()
        .map(|(name, value)| {
            let column_path = format!("{path}.{name}");
            let kind = if name == "password" {
                "secret"
            } else if PEM_COLUMNS.contains(&column_path.as_str()) {
                "pem"
            } else if choices(&column_path).is_some() {
                "select"
            } else {
                match value {
                    Value::Bool(_) => "checkbox",
                    Value::Number(_) => "number",
                    _ => "text",
                }
            };
            ColumnView {
                name: name.clone(),
                label: humanize(name),
                kind,
                options: choices(&column_path).map(|c| c.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
            }
        })
        .collect()
}

/// The cells of one record (an empty record gives the blank row).
fn cells_of(columns: &[ColumnView], record: Option<&Map<String, Value>>) -> Vec<CellView> {
    columns
        .iter()
        .map(|c| {
            let value = record.and_then(|r| r.get(&c.name)).cloned().unwrap_or(Value::Null);
            CellView {
                checked: value.as_bool().unwrap_or(false),
                value: match (&value, c.kind) {
                    (Value::Null, _) | (_, "secret") => String::new(),
                    (Value::String(s), _) => s.clone(),
                    (v, _) => v.to_string(),
                },
            }
        })
        .collect()
}

/// Fields with their own pages, or that the installer does not set by hand.
const HIDDEN_FIELDS: &[&str] = &[
    "admin.password",
    "admin.users",
    "admin.must_change_password",
    "admin.tls_certificate",
    "admin.tls_private_key",
    "system.setup_complete",
];

const SECRET_FIELDS: &[&str] = &["turn.auth_secret", "update.hawkbit_target_token"];

/// Record columns holding PEM text: a text box keeps its line breaks, a text field would not.
const PEM_COLUMNS: &[&str] = &["sip.trunks.tls_ca"];

fn choices(path: &str) -> Option<&'static [&'static str]> {
    match path {
        "network.mode" => Some(&["dhcp", "static"]),
        "sip.trunks.transport" => Some(&["udp", "tcp", "tls"]),
        "sip.trunks.dtmf" => Some(&["rfc4733", "info"]),
        "cameras.recording.format" => Some(branchgate_config::RECORDING_FORMATS),
        _ => None,
    }
}

fn field_views(section: &str, current: &Map<String, Value>) -> Vec<FieldView> {
    let example = section_value(&Config::example(), section).unwrap_or(Value::Null);
    let defaults = section_value(&Config::default(), section).unwrap_or(Value::Null);
    let mut fields = Vec::new();
    let (Some(example), Some(defaults)) = (example.as_object(), defaults.as_object()) else {
        return fields;
    };
    push_field_views(&mut fields, section, "", example, current, defaults);
    fields
}

/// The fields of one object of a section: `prefix` names where it is (`recording.` for
/// `cameras.recording`); a nested object's fields follow, named with its prefix (a group of
/// fields rather than a JSON text box).
fn push_field_views(
    fields: &mut Vec<FieldView>,
    section: &str,
    prefix: &str,
    example: &Map<String, Value>,
    current: &Map<String, Value>,
    defaults: &Map<String, Value>,
) {
    for (key, sample) in example {
        let name = format!("{prefix}{key}");
        let path = format!("{section}.{name}");
        if HIDDEN_FIELDS.contains(&path.as_str()) {
            continue;
        }
        if let (Value::Object(sample), Some(Value::Object(defaults))) = (sample, defaults.get(key)) {
            let empty = Map::new();
            let current = current.get(key).and_then(Value::as_object).unwrap_or(&empty);
            push_field_views(fields, section, &format!("{name}."), sample, current, defaults);
            continue;
        }
        let value = current.get(key).cloned().unwrap_or(Value::Null);
        let optional = defaults.get(key).is_some_and(Value::is_null);
        let record = match sample {
            Value::Array(items) => items.first().and_then(Value::as_object),
            _ => None,
        };
        let kind = if SECRET_FIELDS.contains(&path.as_str()) {
            "secret"
        } else if choices(&path).is_some() {
            "select"
        } else {
            match sample {
                Value::Bool(_) => "checkbox",
                Value::Number(_) => "number",
                Value::Array(_) if record.is_some() => "table",
                Value::Array(items) if items.iter().all(|i| i.is_string() || i.is_number()) => "lines",
                Value::Array(_) | Value::Object(_) => "json",
                _ => "text",
            }
        };
        let (columns, rows) = match record {
            Some(record) if kind == "table" => {
                let columns = columns_of(&path, record);
                let mut rows: Vec<Vec<CellView>> = value
                    .as_array()
                    .map(|items| items.iter().map(|i| cells_of(&columns, i.as_object())).collect())
                    .unwrap_or_default();
                rows.push(cells_of(&columns, None));
                (columns, rows)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let text = match (&value, kind) {
            (Value::Null, _) => String::new(),
            (Value::String(s), "secret") if s == REDACTED => String::new(),
            (Value::String(s), _) => s.clone(),
            (v, "json") => serde_json::to_string_pretty(v).unwrap_or_default(),
            (Value::Array(items), "lines") => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                .collect::<Vec<_>>()
                .join("\n"),
            (v, _) => v.to_string(),
        };
        fields.push(FieldView {
            label: humanize(&name.replace('.', " ")),
            name,
            kind,
            checked: value.as_bool().unwrap_or(false),
            value: text,
            options: choices(&path).map(|c| c.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
            error: None,
            optional,
            columns,
            rows,
        });
    }
}

/// The records of a `table` field from the form (`{field}.{row}.{column}`); blank rows
/// and rows marked for removal are left out; an empty password keeps the stored one.
fn table_from_form(field: &FieldView, form: &HashMap<String, String>) -> Result<Value, String> {
    let prefix = format!("{}.", field.name);
    let rows = form
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1)
        .min(1000);
    let mut records = Vec::new();
    for row in 0..rows {
        let get = |column: &str| form.get(&format!("{}.{row}.{column}", field.name)).map(|v| v.trim().to_string());
        if get("remove").is_some() {
            continue;
        }
        // Checkboxes and selects always have a value: a row is blank when nothing was typed.
        let blank = field
            .columns
            .iter()
            .all(|c| matches!(c.kind, "checkbox" | "select") || get(&c.name).unwrap_or_default().is_empty());
        if blank {
            continue;
        }
        let mut record = Map::new();
        for c in &field.columns {
            let input = get(&c.name).unwrap_or_default();
            let value = match c.kind {
                "checkbox" => Value::Bool(get(&c.name).is_some()),
                "number" => match input.parse::<i64>() {
                    Ok(n) => Value::from(n),
                    Err(_) if input.is_empty() => continue,
                    Err(_) => return Err(format!("row {}: {} must be a whole number", row + 1, c.label)),
                },
                "secret" if input.is_empty() => Value::String(REDACTED.to_string()),
                // Left out: the schema's default (none, or empty for validation to name).
                _ if input.is_empty() => continue,
                _ => Value::String(input),
            };
            record.insert(c.name.clone(), value);
        }
        records.push(Value::Object(record));
    }
    Ok(Value::Array(records))
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    layout: Layout,
    section: String,
    fields: Vec<FieldView>,
    errors_above: Vec<String>,
    revision: u64,
    read_only: bool,
}

fn settings_view(state: &AppState, user: &User, section: &str, flash: Option<String>) -> Option<SettingsPage> {
    let current = state.store.current();
    let value = section_value(&current.config.redacted(Redaction::All), section)?;
    let map = value.as_object()?;
    Some(SettingsPage {
        layout: layout(state, &format!("{} settings", humanize(section)), Some(user), flash),
        section: section.to_string(),
        fields: field_views(section, map),
        errors_above: Vec::new(),
        revision: current.revision,
        read_only: user.role < section_role(section),
    })
}

async fn settings_page(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    Path(section): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    match settings_view(&state, &user, &section, flash.message()) {
        Some(page) => render(&page),
        None => (StatusCode::NOT_FOUND, "no such settings page").into_response(),
    }
}

/// Turns the submitted form into a section patch; field errors for input that
/// cannot even be typed (a number that is not one, JSON that does not parse).
fn form_to_patch(
    fields: &[FieldView],
    form: &HashMap<String, String>,
) -> (Map<String, Value>, HashMap<String, String>) {
    let mut patch = Map::new();
    let mut errors = HashMap::new();
    for field in fields {
        let input = form.get(&field.name).map(|s| s.trim()).unwrap_or("");
        let value = match field.kind {
            "checkbox" => Value::Bool(form.contains_key(&field.name)),
            "number" if input.is_empty() && field.optional => Value::Null,
            "number" => match input.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    errors.insert(field.name.clone(), "Enter a whole number.".to_string());
                    continue;
                }
            },
            "json" => match serde_json::from_str(input) {
                Ok(v) => v,
                Err(e) => {
                    errors.insert(field.name.clone(), format!("Not valid JSON: {e}."));
                    continue;
                }
            },
            "lines" => Value::Array(
                input.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| Value::String(l.to_string())).collect(),
            ),
            "table" => match table_from_form(field, form) {
                Ok(v) => v,
                Err(e) => {
                    errors.insert(field.name.clone(), format!("{e}."));
                    continue;
                }
            },
            // An empty secret input keeps the stored secret.
            "secret" if input.is_empty() => continue,
            _ if input.is_empty() && field.optional => Value::Null,
            _ => Value::String(input.to_string()),
        };
        insert_at(&mut patch, &field.name, value);
    }
    (patch, errors)
}

/// Puts `value` at the dotted `name` of `patch` (`recording.enabled` inside `recording`).
fn insert_at(patch: &mut Map<String, Value>, name: &str, value: Value) {
    match name.split_once('.') {
        None => {
            patch.insert(name.to_string(), value);
        }
        Some((head, rest)) => {
            let inner = patch.entry(head.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert_at(inner, rest, value);
            }
        }
    }
}

async fn settings_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Path(section): Path<String>,
    body: Bytes,
) -> Response {
    let Some(mut page) = settings_view(&state, &user, &section, None) else {
        return (StatusCode::NOT_FOUND, "no such settings page").into_response();
    };
    if user.role < section_role(&section) {
        return forbidden(
            &state,
            &user,
            &format!("Changing {section} settings needs the {} role.", section_role(&section).as_str()),
        );
    }
    let form: HashMap<String, String> = serde_urlencoded_pairs(&body);
    let (patch, type_errors) = form_to_patch(&page.fields, &form);
    // Keep what the installer typed, so a mistake costs one correction.
    for field in &mut page.fields {
        if let Some(input) = form.get(&field.name) {
            field.value = input.clone();
        }
        if field.kind == "table"
            && let Some(Value::Array(records)) = patch.get(&field.name)
        {
            let mut rows: Vec<Vec<CellView>> =
                records.iter().map(|r| cells_of(&field.columns, r.as_object())).collect();
            rows.push(cells_of(&field.columns, None));
            field.rows = rows;
        }
        if field.kind == "checkbox" {
            field.checked = form.contains_key(&field.name);
        }
        if field.kind == "secret" {
            field.value.clear();
        }
    }
    let mut errors: Vec<(String, String)> = type_errors.into_iter().collect();
    if errors.is_empty() {
        let comment = form.get("comment").map(|c| c.trim()).filter(|c| !c.is_empty()).unwrap_or("changed in the UI");
        let options = ApplyOptions::new(&user.username, format!("{section}: {comment}"));
        match state.store.apply_section(&section, Value::Object(patch), options, now_ms()) {
            Ok(outcome) if outcome.changed => {
                state.audit(&user.username, Some(peer), "config", format!("{section} (revision {})", outcome.revision));
                return done(&format!("/settings/{section}"), "saved", Some(outcome.revision));
            }
            Ok(_) => return done(&format!("/settings/{section}"), "unchanged", None),
            Err(ConfigError::Invalid(fields)) => {
                for f in fields {
                    errors.push((f.path, f.message));
                }
            }
            Err(e) => errors.push((String::new(), e.to_string())),
        }
    }
    let prefix = format!("{section}.");
    for (path, message) in errors {
        let local = path.strip_prefix(&prefix).unwrap_or(&path);
        // The field the path is in: `recording.segment_seconds`, or `trunks` for `trunks[0].port`.
        let field_name = page
            .fields
            .iter()
            .map(|f| f.name.clone())
            .filter(|n| local == n || local.starts_with(&format!("{n}.")) || local.starts_with(&format!("{n}[")))
            .max_by_key(String::len)
            .unwrap_or_else(|| local.split(['.', '[']).next().unwrap_or(local).to_string());
        match page.fields.iter_mut().find(|f| f.name == field_name) {
            Some(field) => {
                let text = if local == field_name { message } else { format!("{local}: {message}") };
                field.error = Some(match field.error.take() {
                    Some(previous) => format!("{previous} {text}"),
                    None => text,
                });
            }
            None => page.errors_above.push(if path.is_empty() { message } else { format!("{path}: {message}") }),
        }
    }
    render_status(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

/// Decodes `application/x-www-form-urlencoded`; the last value of a repeated name wins.
fn serde_urlencoded_pairs(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default().into_iter().collect()
}

// ----- history --------------------------------------------------------------------

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage {
    layout: Layout,
    current: u64,
    revisions: Vec<branchgate_config::RevisionInfo>,
}

fn time_text(ms: &u64) -> String {
    rfc3339(*ms).replace('T', " ").chars().take(19).collect()
}

async fn history_page(State(state): State<AppState>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    let revisions = state.store.history(200).unwrap_or_default();
    render(&HistoryPage {
        layout: layout(&state, "Configuration history", Some(&user), flash.message()),
        current: state.store.current().revision,
        revisions,
    })
}

pub struct ChangeView {
    pub path: String,
    pub old: String,
    pub new: String,
}

#[derive(Template)]
#[template(path = "revision.html")]
struct RevisionPage {
    layout: Layout,
    info: branchgate_config::RevisionInfo,
    changes: Vec<ChangeView>,
    current: u64,
}

async fn revision_page(State(state): State<AppState>, PageUser(user): PageUser, Path(rev): Path<u64>) -> Response {
    let Ok(Some(value)) = api::revision_with_diff(&state, rev) else {
        return (StatusCode::NOT_FOUND, "no such revision").into_response();
    };
    let Ok(info) = serde_json::from_value::<branchgate_config::RevisionInfo>(value["info"].clone()) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "unreadable revision").into_response();
    };
    let show = |v: &Value| match v {
        Value::Null => "(none)".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let changes = value["changes"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| ChangeView {
                    path: c["path"].as_str().unwrap_or("").to_string(),
                    old: if c["old"].is_null() { "(absent)".into() } else { show(&c["old"]) },
                    new: if c["new"].is_null() { "(absent)".into() } else { show(&c["new"]) },
                })
                .collect()
        })
        .unwrap_or_default();
    render(&RevisionPage {
        layout: layout(&state, &format!("Revision {rev}"), Some(&user), None),
        info,
        changes,
        current: state.store.current().revision,
    })
}

async fn restore_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Path(rev): Path<u64>,
) -> Response {
    if user.role < Role::Installer {
        return forbidden(&state, &user, "Restoring needs the installer role.");
    }
    if state.restore_needs_admin(rev) && user.role < Role::Admin {
        return forbidden(
            &state,
            &user,
            "That revision has other logins or another update policy; restoring it needs the admin role.",
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
            done("/history", "restored", Some(outcome.revision))
        }
        Err(e) => forbidden(&state, &user, &format!("Cannot restore revision {rev}: {e}")),
    }
}

#[derive(Deserialize)]
struct ConfirmForm {
    revision: Option<u64>,
}

async fn confirm_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    axum::Form(form): axum::Form<ConfirmForm>,
) -> Response {
    if user.role < Role::Installer {
        return forbidden(&state, &user, "Confirming needs the installer role.");
    }
    match state.store.confirm(form.revision) {
        Ok(true) => {
            state.audit(&user.username, Some(peer), "confirm", "pending change confirmed");
            done("/history", "confirmed", None)
        }
        Ok(false) => redirect("/history"),
        Err(e) => forbidden(&state, &user, &e.to_string()),
    }
}

// ----- backup -----------------------------------------------------------------------

#[derive(Template)]
#[template(path = "backup.html")]
struct BackupPage {
    layout: Layout,
    error: Option<String>,
}

async fn backup_page(State(state): State<AppState>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Backups need the admin role.");
    }
    render(&BackupPage { layout: layout(&state, "Backup and restore", Some(&user), flash.message()), error: None })
}

#[derive(Deserialize)]
struct DownloadQuery {
    #[serde(default)]
    include_secrets: Option<String>,
}

async fn backup_download(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Query(query): Query<DownloadQuery>,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Backups need the admin role.");
    }
    let include = query.include_secrets.is_some();
    state.audit(
        &user.username,
        Some(peer),
        "export",
        if include { "with secrets" } else { "secrets hashed or redacted" },
    );
    api::export_response(&state, include)
}

async fn backup_restore(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    mut multipart: Multipart,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Backups need the admin role.");
    }
    let mut file = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("backup") => match field.bytes().await {
                Ok(bytes) => file = Some(bytes),
                Err(e) => {
                    return backup_error(&state, &user, e.status(), format!("The upload failed: {}", e.body_text()));
                }
            },
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return backup_error(&state, &user, e.status(), format!("The upload failed: {}", e.body_text())),
        }
    }
    let Some(bytes) = file.filter(|b| !b.is_empty()) else {
        return backup_error(&state, &user, StatusCode::BAD_REQUEST, "Choose a backup file first.".into());
    };
    match state.store.import(&bytes, ApplyOptions::new(&user.username, "backup restored"), now_ms()) {
        Ok(outcome) => {
            state.audit(
                &user.username,
                Some(peer),
                "import",
                format!("backup restored as revision {}", outcome.revision),
            );
            done("/history", "restored", Some(outcome.revision))
        }
        Err(e) => backup_error(
            &state,
            &user,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("The backup was not restored: {e}. Nothing was changed."),
        ),
    }
}

fn backup_error(state: &AppState, user: &User, status: StatusCode, error: String) -> Response {
    render_status(
        status,
        &BackupPage { layout: layout(state, "Backup and restore", Some(user), None), error: Some(error) },
    )
}

// ----- logs, audit ------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    layout: Layout,
    lines: Vec<crate::logs::LogLine>,
    level: String,
}

#[derive(Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

async fn logs_page(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    Query(query): Query<LevelQuery>,
) -> Response {
    let level = query.level.unwrap_or_else(|| "INFO".into()).to_ascii_uppercase();
    let lines = state.logs.tail(500, Some(&level));
    render(&LogsPage { layout: layout(&state, "Logs", Some(&user), None), lines, level })
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<branchgate_config::AuditEntry>,
}

async fn audit_page(State(state): State<AppState>, PageUser(user): PageUser) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "The audit log needs the admin role.");
    }
    render(&AuditPage { layout: layout(&state, "Audit log", Some(&user), None), entries: state.store.audit_log(500) })
}

// ----- users ------------------------------------------------------------------------------

pub struct UserRow {
    pub username: String,
    pub role: String,
    pub must_change_password: bool,
    pub builtin: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    layout: Layout,
    users: Vec<UserRow>,
    roles: Vec<&'static str>,
    error: Option<String>,
}

fn users_view(state: &AppState, user: &User, flash: Option<String>, error: Option<String>) -> UsersPage {
    let admin = state.store.current().config.admin.clone();
    let mut users = vec![UserRow {
        username: branchgate_config::ADMIN_USERNAME.into(),
        role: "admin".into(),
        must_change_password: admin.must_change_password,
        builtin: true,
    }];
    users.extend(admin.users.iter().map(|u| UserRow {
        username: u.username.clone(),
        role: u.role.as_str().into(),
        must_change_password: u.must_change_password,
        builtin: false,
    }));
    UsersPage {
        layout: layout(state, "Users", Some(user), flash),
        users,
        roles: ROLES.iter().map(|r| r.as_str()).collect(),
        error,
    }
}

async fn users_page(State(state): State<AppState>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Managing users needs the admin role.");
    }
    render(&users_view(&state, &user, flash.message(), None))
}

#[derive(Deserialize)]
struct UserForm {
    username: String,
    role: Role,
    password: String,
}

async fn users_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    axum::Form(form): axum::Form<UserForm>,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Managing users needs the admin role.");
    }
    let name = form.username.trim().to_string();
    match api::add_user(&state, &user, NewUser { username: name.clone(), role: form.role, password: form.password }) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "user", format!("{name} added"));
            done("/users", "user-added", Some(outcome.revision))
        }
        Err(response) => {
            let status = response.status();
            let message = error_text(response).await;
            render_status(status, &users_view(&state, &user, None, Some(message)))
        }
    }
}

async fn user_delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Path(username): Path<String>,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Managing users needs the admin role.");
    }
    match api::delete_user_by_name(&state, &user, &username) {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "user", format!("{username} deleted"));
            done("/users", "user-deleted", Some(outcome.revision))
        }
        Err(response) => {
            let status = response.status();
            let message = error_text(response).await;
            render_status(status, &users_view(&state, &user, None, Some(message)))
        }
    }
}

/// The human text of a JSON error response from the API helpers.
async fn error_text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut text = value["error"].as_str().unwrap_or("The change was refused.").to_string();
    if let Some(fields) = value["fields"].as_array() {
        for f in fields {
            if let (Some(path), Some(message)) = (f["path"].as_str(), f["message"].as_str())
                && message != text
            {
                text.push_str(&format!(" {path}: {message}."));
            }
        }
    }
    sentence(&text)
}

// ----- TLS certificate ---------------------------------------------------------------------

#[derive(Template)]
#[template(path = "tls.html")]
struct TlsPage {
    layout: Layout,
    custom: bool,
    error: Option<String>,
}

async fn tls_page(State(state): State<AppState>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "The certificate needs the admin role.");
    }
    let custom = state.store.current().config.admin.tls_certificate.is_some();
    render(&TlsPage { layout: layout(&state, "Admin certificate", Some(&user), flash.message()), custom, error: None })
}

#[derive(Deserialize)]
struct TlsForm {
    certificate: String,
    private_key: String,
}

async fn tls_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    axum::Form(form): axum::Form<TlsForm>,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "The certificate needs the admin role.");
    }
    match api::set_certificate(&state, &user, TlsBody { certificate: form.certificate, private_key: form.private_key })
    {
        Ok(outcome) => {
            state.audit(&user.username, Some(peer), "tls", "certificate installed");
            done("/tls", "tls", Some(outcome.revision))
        }
        Err(response) => {
            let status = response.status();
            let message = error_text(response).await;
            let custom = state.store.current().config.admin.tls_certificate.is_some();
            render_status(
                status,
                &TlsPage {
                    layout: layout(&state, "Admin certificate", Some(&user), None),
                    custom,
                    error: Some(message),
                },
            )
        }
    }
}

// ----- TURN relay --------------------------------------------------------------------------

pub struct TurnRow {
    pub username: String,
    pub client: String,
    pub relay: String,
    pub peers: String,
    pub age: String,
    pub to_peer: String,
    pub to_client: String,
}

#[derive(Template)]
#[template(path = "turn.html")]
struct TurnPage {
    layout: Layout,
    running: bool,
    rows: Vec<TurnRow>,
    auth_failures: u64,
    denied_peers: u64,
}

fn traffic(counter: &branchgate_turn::server::Counter) -> String {
    format!("{} pkts / {} KiB", counter.packets, counter.bytes / 1024)
}

async fn turn_page(State(state): State<AppState>, PageUser(user): PageUser) -> Response {
    let turn = state.turn.snapshot();
    let rows = turn
        .allocations
        .iter()
        .map(|a| TurnRow {
            username: a.username.clone(),
            client: a.client.to_string(),
            relay: if a.relays.is_empty() {
                "binding".into()
            } else {
                a.relays.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
            },
            peers: a.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            age: crate::status::format_duration(a.age),
            to_peer: traffic(&a.to_peer),
            to_client: traffic(&a.to_client),
        })
        .collect();
    render(&TurnPage {
        layout: layout(&state, "TURN relay", Some(&user), None),
        running: turn.running,
        rows,
        auth_failures: turn.stats.auth_failures,
        denied_peers: turn.stats.denied_peers,
    })
}

struct CallRow {
    id: u64,
    caller: String,
    callee: String,
    destination: String,
    state: &'static str,
    age: String,
    caller_media: String,
    callee_media: String,
}

/// One side's media in a sentence for the calls table.
fn media_summary(packets: u64, media: Option<&branchgate_gateway::LegQuality>) -> String {
    match media {
        None => format!("{packets} pkts"),
        Some(m) => format!(
            "{} {}{}· {packets} pkts · loss {:.1}% · jitter {:.1} ms · MOS {:.1}",
            if m.codec.is_empty() { "?" } else { &m.codec },
            if m.webrtc { "(WebRTC) " } else { "" },
            if m.transcoded { "transcoded " } else { "" },
            m.loss_percent,
            m.jitter_ms,
            m.mos
        ),
    }
}

struct RegistrationRow {
    user: String,
    contact: String,
    source: String,
    transport: &'static str,
    expires_in: String,
}

#[derive(Template)]
#[template(path = "calls.html")]
struct CallsPage {
    layout: Layout,
    running: bool,
    can_hang_up: bool,
    calls: Vec<CallRow>,
    trunks: Vec<branchgate_gateway::TrunkView>,
    registrations: Vec<RegistrationRow>,
}

fn calls_view(state: &AppState, user: &User, flash: Option<String>) -> CallsPage {
    let calls = state
        .sip
        .calls()
        .into_iter()
        .map(|c| CallRow {
            id: c.id,
            caller: c.caller,
            callee: c.callee,
            destination: c.destination,
            state: c.state,
            age: crate::status::format_duration(std::time::Duration::from_secs(c.age_seconds)),
            caller_media: media_summary(c.packets_a_to_b, c.caller_media.as_ref()),
            callee_media: media_summary(c.packets_b_to_a, c.callee_media.as_ref()),
        })
        .collect();
    let registrations = state
        .sip
        .registrations()
        .into_iter()
        .map(|r| RegistrationRow {
            user: r.user,
            contact: r.contact,
            source: r.source.to_string(),
            transport: r.transport.via_name(),
            expires_in: crate::status::format_duration(r.expires_in),
        })
        .collect();
    CallsPage {
        layout: layout(state, "Calls", Some(user), flash),
        running: state.sip.is_running(),
        can_hang_up: user.role >= Role::Installer,
        calls,
        trunks: state.sip.trunks(),
        registrations,
    }
}

/// A table of the devices page: one row per element of a JSON array, one column per key.
struct DeviceTable {
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl DeviceTable {
    /// `columns` are (heading, key) pairs; values shown as people read them.
    fn of(list: &Value, columns: &[(&'static str, &str)]) -> DeviceTable {
        let cell = |value: Option<&Value>| match value {
            None | Some(Value::Null) => "—".to_string(),
            Some(Value::Bool(true)) => "yes".to_string(),
            Some(Value::Bool(false)) => "no".to_string(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        let rows = list
            .as_array()
            .map(|items| {
                items.iter().map(|item| columns.iter().map(|(_, key)| cell(item.get(*key))).collect()).collect()
            })
            .unwrap_or_default();
        DeviceTable { columns: columns.iter().map(|(heading, _)| *heading).collect(), rows }
    }
}

struct CameraCard {
    id: String,
    name: String,
    simulated: bool,
    device: String,
    size: String,
    viewers: u64,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    layout: Layout,
    cameras: Vec<CameraCard>,
    rtsp_host: String,
    rtsp_port: u16,
    audio_backend: String,
    audio_error: Option<String>,
    audio_devices: DeviceTable,
    mixers: DeviceTable,
    pins: DeviceTable,
    led_pattern: String,
    reset_armed: bool,
    watchdogs: DeviceTable,
}

/// Every device of the box, as `GET /api/v1/devices` says, with a live preview of each camera
/// (WHEP, by `devices.js`; the page works without it).
async fn devices_page(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    headers: axum::http::HeaderMap,
) -> Response {
    let report = crate::api::devices_report(&state).await;
    // RTSP is on the address the installer reached this page at.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map(|a| a.host().to_string())
        .unwrap_or_else(|| state.store.current().config.system.hostname.clone());
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let cameras = report["cameras"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| CameraCard {
                    id: text(&c["id"]),
                    name: text(&c["name"]),
                    simulated: c["simulated"].as_bool().unwrap_or(false),
                    device: c["device"].as_str().unwrap_or("no device node").to_string(),
                    size: format!("{}x{}", c["width"], c["height"]),
                    viewers: c["viewers"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let audio = &report["audio"];
    let page = DevicesPage {
        layout: layout(&state, "Devices", Some(&user), None),
        cameras,
        rtsp_host: host,
        rtsp_port: state.store.current().config.network.rtsp_port,
        audio_backend: text(&audio["backend"]),
        audio_error: audio["error"].as_str().map(str::to_string),
        audio_devices: DeviceTable::of(
            &audio["devices"],
            &[
                ("Device", "id"),
                ("Card", "card_name"),
                ("Name", "name"),
                ("Capture", "capture"),
                ("Playback", "playback"),
                ("Simulated", "simulated"),
            ],
        ),
        mixers: DeviceTable::of(
            &audio["mixers"],
            &[("Card", "card"), ("Control", "control"), ("Volume %", "volume_percent"), ("Muted", "muted")],
        ),
        pins: DeviceTable::of(
            &report["gpio"]["pins"],
            &[
                ("Role", "role"),
                ("Backend", "backend"),
                ("Chip", "chip"),
                ("Line", "offset"),
                ("Name", "name"),
                ("Level", "level"),
                ("Simulated", "simulated"),
            ],
        ),
        led_pattern: text(&report["gpio"]["led_pattern"]),
        reset_armed: report["gpio"]["reset_armed"].as_bool().unwrap_or(false),
        watchdogs: DeviceTable::of(
            &report["watchdogs"],
            &[
                ("Kind", "kind"),
                ("Device", "identity"),
                ("Timeout (s)", "timeout_seconds"),
                ("Pets", "pets"),
                ("Petting", "petting"),
                ("Last error", "last_error"),
            ],
        ),
    };
    render(&page)
}

struct RecordingRow {
    camera: String,
    name: String,
    modified: String,
    size: String,
}

#[derive(Template)]
#[template(path = "recordings.html")]
struct RecordingsPage {
    layout: Layout,
    settings: branchgate_config::RecordingConfig,
    can_delete: bool,
    total: String,
    recordings: Vec<RecordingRow>,
}

/// A size for people: `1.4 MB`.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

async fn recordings_view(state: &AppState, user: &User, flash: Option<String>) -> RecordingsPage {
    let reader = state.clone();
    let files = tokio::task::spawn_blocking(move || crate::recordings::newest_first(&reader)).await.unwrap_or_default();
    RecordingsPage {
        layout: layout(state, "Recordings", Some(user), flash),
        settings: state.store.current().config.cameras.recording.clone(),
        can_delete: user.role >= Role::Installer,
        total: megabytes(files.iter().map(|f| f.size).sum()),
        recordings: files
            .iter()
            .map(|f| RecordingRow {
                camera: f.camera.clone(),
                name: f.name.clone(),
                modified: crate::recordings::modified(f),
                size: megabytes(f.size),
            })
            .collect(),
    }
}

async fn recordings_page(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    Query(flash): Query<Flash>,
) -> Response {
    render(&recordings_view(&state, &user, flash.message()).await)
}

async fn recording_delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Path((camera, name)): Path<(String, String)>,
) -> Response {
    if user.role < Role::Installer {
        return forbidden(&state, &user, "Deleting recordings needs the installer role.");
    }
    if crate::recordings::remove(&state, &camera, &name).await.is_err() {
        let message = format!("There is no recording {camera}/{name} (any more).");
        return render_status(StatusCode::NOT_FOUND, &recordings_view(&state, &user, Some(message)).await);
    }
    state.audit(&user.username, Some(peer), "recording", format!("recording {camera}/{name} deleted"));
    done("/recordings", "recording-deleted", None)
}

async fn calls_page(State(state): State<AppState>, PageUser(user): PageUser, Query(flash): Query<Flash>) -> Response {
    render(&calls_view(&state, &user, flash.message()))
}

async fn call_hang_up(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Path(id): Path<u64>,
) -> Response {
    if user.role < Role::Installer {
        return forbidden(&state, &user, "Hanging up calls needs the installer role.");
    }
    if !state.sip.calls().iter().any(|c| c.id == id) {
        return render_status(
            StatusCode::NOT_FOUND,
            &calls_view(&state, &user, Some(format!("There is no call {id} (any more)."))),
        );
    }
    state.sip.hang_up(id);
    state.audit(&user.username, Some(peer), "call", format!("call {id} hung up"));
    done("/calls", "hung-up", None)
}

// ----- firmware -----------------------------------------------------------------------

struct SlotRow {
    name: String,
    version: String,
    state: String,
    booted: bool,
    good: bool,
    /// Holds a version the bootloader can start (not an empty or half-written slot).
    bootable: bool,
}

struct UpdateRow {
    at: String,
    event: String,
    version: String,
    slot: String,
    by: String,
    message: String,
}

#[derive(Template)]
#[template(path = "firmware.html")]
struct FirmwarePage {
    layout: Layout,
    error: Option<String>,
    running_version: String,
    booted: String,
    compatible: String,
    backend: String,
    pending_reboot: Option<String>,
    slots: Vec<SlotRow>,
    /// Another slot than the running one starts at the next boot ("stay on this slot" undoes it).
    other_boots_next: bool,
    is_admin: bool,
    can_upload: bool,
    install_state: String,
    install_text: String,
    install_progress: u8,
    install_active: bool,
    history: Vec<UpdateRow>,
    /// The hawkBit client in one sentence, when `update.hawkbit_url` is set.
    fleet: Option<String>,
    usb: Vec<UsbRow>,
    usb_roots: String,
}

struct UsbRow {
    path: String,
    size: String,
    version: String,
    /// Why it would not install; empty: it can.
    refused: String,
}

/// The hawkBit client's state for people.
fn fleet_text(fleet: &branchgate_update::hawkbit::FleetStatus) -> Option<String> {
    let controller = fleet.controller.as_deref()?;
    let mut text = format!("Fleet updates from hawkBit ({controller})");
    match (fleet.last_poll_ms, &fleet.last_error) {
        (_, Some(error)) => text.push_str(&format!(": the last poll failed: {error}")),
        (Some(at), None) => text.push_str(&format!(": last contact {} UTC", time_text(&at))),
        (None, None) => text.push_str(": not contacted yet"),
    }
    if let Some(action) = &fleet.action {
        text.push_str(&format!(". {}", sentence(action)));
    }
    text.push('.');
    Some(text)
}

/// What the install tracker says, in words (the page's script says the same while it follows).
fn install_text(install: &branchgate_update::InstallStatus) -> String {
    use branchgate_update::InstallState;
    let version = install.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
    let slot = install.slot.as_deref().unwrap_or("?");
    match install.state {
        InstallState::Idle => "No install is running.".to_string(),
        InstallState::Receiving => format!("Receiving the bundle{version}…"),
        InstallState::Verifying => format!("Checking the signature and the payload{version}…"),
        InstallState::Installing => format!("Installing{version} into slot {slot}: {} %", install.progress),
        InstallState::Done => format!("Installed{version} into slot {slot}. Reboot to start it."),
        InstallState::Failed => {
            format!("The last install failed: {}", install.last_error.as_deref().unwrap_or("no reason given"))
        }
    }
}

async fn firmware_view(state: &AppState, user: &User, flash: Option<String>, error: Option<String>) -> FirmwarePage {
    use branchgate_update::InstallState;
    let agent = &state.firmware;
    let mut error = error;
    let status = match crate::firmware::slot_status(state).await {
        Ok(status) => Some(status),
        Err(refusal) => {
            error.get_or_insert(format!("The slots cannot be read: {}", refusal.message));
            None
        }
    };
    let history = match crate::firmware::newest_history(state, 50).await {
        Ok(entries) => entries,
        Err(refusal) => {
            error.get_or_insert(format!("The update history cannot be read: {}", refusal.message));
            Vec::new()
        }
    };
    let usb = match crate::firmware::usb_bundles(state).await {
        Ok(bundles) => bundles,
        Err(refusal) => {
            error.get_or_insert(format!("The USB media cannot be read: {}", refusal.message));
            Vec::new()
        }
    };
    let install = agent.tracker.status();
    // The names the API uses (`slot_activated`), for the page's script and for people.
    let wire_name = |value: serde_json::Result<Value>| match value {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    };
    let (booted, backend, pending_reboot, slots) = match status {
        Some(s) => (s.booted, s.backend, s.pending_reboot, s.slots),
        None => (String::new(), String::new(), None, Vec::new()),
    };
    let other_boots_next = slots.iter().any(|slot| !slot.booted && slot.state == "installed");
    FirmwarePage {
        layout: layout(state, "Firmware", Some(user), flash),
        error,
        running_version: agent.running_version.clone(),
        booted,
        compatible: agent.compatible.clone(),
        backend,
        pending_reboot,
        other_boots_next,
        slots: slots
            .into_iter()
            .map(|slot| SlotRow {
                bootable: slot.version.is_some() && matches!(slot.state.as_str(), "installed" | "inactive" | "booted"),
                version: slot.version.unwrap_or_else(|| "–".to_string()),
                name: slot.name,
                state: slot.state,
                booted: slot.booted,
                good: slot.good,
            })
            .collect(),
        is_admin: user.role >= Role::Admin,
        can_upload: user.role >= Role::Installer,
        install_state: wire_name(serde_json::to_value(install.state)),
        install_text: install_text(&install),
        install_progress: install.progress,
        install_active: matches!(install.state, InstallState::Receiving | InstallState::Installing),
        fleet: fleet_text(&agent.fleet.status()),
        usb: usb
            .into_iter()
            .map(|b| UsbRow {
                size: megabytes(b.size),
                version: b.version.unwrap_or_default(),
                refused: b.refused.map(|r| sentence(&r)).unwrap_or_default(),
                path: b.path,
            })
            .collect(),
        usb_roots: agent.usb.roots().iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "),
        history: history
            .into_iter()
            .map(|entry| UpdateRow {
                at: time_text(&entry.at_ms),
                event: humanize(&wire_name(serde_json::to_value(entry.event))),
                version: entry.version.unwrap_or_default(),
                slot: entry.slot.unwrap_or_default(),
                by: entry.by.unwrap_or_default(),
                message: entry.message,
            })
            .collect(),
    }
}

async fn firmware_page(
    State(state): State<AppState>,
    PageUser(user): PageUser,
    Query(flash): Query<Flash>,
) -> Response {
    render(&firmware_view(&state, &user, flash.message(), None).await)
}

/// The firmware page again, with why the operation did not happen.
async fn firmware_refused(state: &AppState, user: &User, refusal: crate::firmware::Refusal) -> Response {
    let error = format!("Not done: {}.", refusal.message);
    render_status(refusal.status, &firmware_view(state, user, None, Some(error)).await)
}

/// `/firmware/upload`: the form's way (without the page's script) — a multipart `bundle`
/// file and a `force` box, streamed to disk like the API's raw body.
async fn firmware_upload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    mut multipart: Multipart,
) -> Response {
    if user.role < Role::Installer {
        return forbidden(&state, &user, "Installing updates needs the installer role.");
    }
    let mut force = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                let error = format!("The upload failed: {}", e.body_text());
                return render_status(e.status(), &firmware_view(&state, &user, None, Some(error)).await);
            }
        };
        match field.name() {
            // The form puts `force` before the file.
            Some("force") => force = true,
            Some("bundle") => {
                if force && user.role < Role::Admin {
                    return forbidden(&state, &user, "Installing an older version needs the admin role.");
                }
                let stream = std::pin::pin!(field);
                return match crate::firmware::receive_bundle(&state, &user, peer, force, None, stream).await {
                    Ok(_) => done("/firmware", "firmware-installing", None),
                    Err(refusal) => firmware_refused(&state, &user, refusal).await,
                };
            }
            _ => {}
        }
    }
    let error = "Choose a bundle file first.".to_string();
    render_status(StatusCode::BAD_REQUEST, &firmware_view(&state, &user, None, Some(error)).await)
}

async fn firmware_activate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    Path(slot): Path<String>,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Choosing the boot slot needs the admin role.");
    }
    match crate::firmware::activate(&state, &user, peer, &slot).await {
        Ok(()) => done("/firmware", "slot-activated", None),
        Err(refusal) => firmware_refused(&state, &user, refusal).await,
    }
}

async fn firmware_reboot(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "Rebooting needs the admin role.");
    }
    match crate::firmware::reboot(&state, &user, peer).await {
        Ok(plan) if plan.simulated => done("/firmware", "rebooting", None),
        Ok(plan) => {
            let message = format!(
                "The box is rebooting into slot {}. This page comes back in a minute or two; log in again then.",
                plan.slot
            );
            render(&MessagePage { layout: layout(&state, "Rebooting", Some(&user), None), message })
        }
        Err(refusal) => firmware_refused(&state, &user, refusal).await,
    }
}

#[derive(Deserialize)]
struct UsbInstallForm {
    path: String,
}

async fn firmware_usb_install(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    body: Bytes,
) -> Response {
    if user.role < Role::Installer {
        return forbidden(&state, &user, "Installing updates needs the installer role.");
    }
    let Ok(form) = serde_urlencoded::from_bytes::<UsbInstallForm>(&body) else {
        let error = "Choose a bundle on the USB stick.".to_string();
        return render_status(StatusCode::BAD_REQUEST, &firmware_view(&state, &user, None, Some(error)).await);
    };
    match crate::firmware::install_from_usb(&state, &user, peer, &form.path).await {
        Ok(_) => done("/firmware", "firmware-installing", None),
        Err(refusal) => firmware_refused(&state, &user, refusal).await,
    }
}

#[derive(Deserialize)]
struct FactoryResetForm {
    keep_config: String,
}

async fn firmware_factory_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    PageUser(user): PageUser,
    body: Bytes,
) -> Response {
    if user.role < Role::Admin {
        return forbidden(&state, &user, "A factory reset needs the admin role.");
    }
    let keep_config = match serde_urlencoded::from_bytes::<FactoryResetForm>(&body) {
        Ok(form) if form.keep_config == "true" => true,
        Ok(form) if form.keep_config == "false" => false,
        _ => {
            let error = "Choose what the reset erases.".to_string();
            return render_status(StatusCode::BAD_REQUEST, &firmware_view(&state, &user, None, Some(error)).await);
        }
    };
    match crate::firmware::factory_reset(&state, &user, peer, keep_config).await {
        Ok(()) => {
            let message = if keep_config {
                "The box is erasing its recordings, call records and logs and restarting. Log in again in a minute."
            } else {
                "The box is erasing everything and restarting as new. Log in again in a minute with the first-login password."
            };
            render(&MessagePage {
                layout: layout(&state, "Factory reset", Some(&user), None),
                message: message.to_string(),
            })
        }
        Err(refusal) => firmware_refused(&state, &user, refusal).await,
    }
}
