//! The admin application in-process: every route against every role, the CSRF
//! guard, the login lockout (and that `X-Forwarded-For` changes nothing),
//! cookie attributes, security headers and bad backups.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use branchgate_config::{AdminUser, ApplyOptions, Config, ConfigStore, Confirm, HashedSecret, Role};
use branchgate_web_admin::logs::LogRing;
use branchgate_web_admin::status::ServiceBoard;
use branchgate_web_admin::{AppState, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "box.test:8443";
const ADMIN_PW: &str = "admin-password-1";
const INSTALLER_PW: &str = "installer-password-1";
const VIEWER_PW: &str = "viewer-password-1";

struct Harness {
    app: Router,
    store: Arc<ConfigStore>,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ConfigStore::open(dir.path(), 1).expect("store"));
    let mut config = Config::default();
    config.admin.password = HashedSecret::new(ADMIN_PW);
    config.admin.must_change_password = false;
    config.system.setup_complete = true;
    for (name, role, pw) in [("inst", Role::Installer, INSTALLER_PW), ("view", Role::Viewer, VIEWER_PW)] {
        config.admin.users.push(AdminUser {
            username: name.into(),
            role,
            password: HashedSecret::new(pw),
            must_change_password: false,
        });
    }
    store.apply(config, ApplyOptions::new("test", "initial").confirm(Confirm::Never), 1).expect("initial");
    let state = AppState::new(store.clone(), ServiceBoard::default(), LogRing::new(100), dir.path().to_path_buf());
    Harness { app: router(state), store, _dir: dir }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn peer(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], 40000))
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn call(&self, method: Method, path: &str, cookie: Option<&str>, body: Option<Value>) -> Reply {
        self.call_from(peer(1), method, path, cookie, body, &[]).await
    }

    async fn call_from(
        &self,
        from: SocketAddr,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, HOST);
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).expect("request");
        request.extensions_mut().insert(ConnectInfo(from));
        self.send(request).await
    }

    async fn login(&self, username: &str, password: &str) -> String {
        let reply = self
            .call(Method::POST, "/api/v1/session", None, Some(json!({"username": username, "password": password})))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let cookie = reply.headers.get(header::SET_COOKIE).and_then(|v| v.to_str().ok()).expect("cookie");
        cookie.split(';').next().expect("pair").to_string()
    }
}

/// A backup document that keeps the test's logins (passwords left out are kept).
fn backup_keeping_logins() -> Value {
    json!({
        "system": {"setup_complete": true},
        "admin": {"must_change_password": false, "users": [
            {"username": "inst", "role": "installer", "must_change_password": false},
            {"username": "view", "role": "viewer", "must_change_password": false}
        ]}
    })
}

/// (method, path, body, least role, page?)
fn routes() -> Vec<(Method, &'static str, Option<Value>, Role, bool)> {
    use Method as M;
    vec![
        (M::GET, "/api/v1/session", None, Role::Viewer, false),
        (M::GET, "/api/v1/config", None, Role::Viewer, false),
        (M::GET, "/api/v1/config/sip", None, Role::Viewer, false),
        (M::PUT, "/api/v1/config/audio", Some(json!({"playback_volume": 60})), Role::Installer, false),
        (M::GET, "/api/v1/config/revisions", None, Role::Viewer, false),
        (M::GET, "/api/v1/config/revisions/1", None, Role::Viewer, false),
        (M::POST, "/api/v1/config/revisions/1/restore", None, Role::Installer, false),
        (M::POST, "/api/v1/config/confirm", None, Role::Installer, false),
        (M::PUT, "/api/v1/config/update", Some(json!({"allow_downgrade": true})), Role::Admin, false),
        (M::GET, "/api/v1/config/export", None, Role::Admin, false),
        (M::POST, "/api/v1/config/import", Some(backup_keeping_logins()), Role::Admin, false),
        (M::GET, "/api/v1/logs", None, Role::Viewer, false),
        (M::GET, "/api/v1/audit", None, Role::Admin, false),
        (M::GET, "/api/v1/users", None, Role::Admin, false),
        (
            M::POST,
            "/api/v1/users",
            Some(json!({"username": "extra", "role": "viewer", "password": "extra-password-1"})),
            Role::Admin,
            false,
        ),
        (M::DELETE, "/api/v1/users/extra", None, Role::Admin, false),
        (M::PUT, "/api/v1/tls", Some(json!({"certificate": "x", "private_key": "y"})), Role::Admin, false),
        (M::GET, "/metrics", None, Role::Viewer, false),
        (M::GET, "/", None, Role::Viewer, true),
        (M::GET, "/settings/sip", None, Role::Viewer, true),
        (M::GET, "/history", None, Role::Viewer, true),
        (M::GET, "/history/1", None, Role::Viewer, true),
        (M::GET, "/logs", None, Role::Viewer, true),
        (M::GET, "/turn", None, Role::Viewer, true),
        (M::GET, "/api/v1/turn/allocations", None, Role::Viewer, false),
        (M::GET, "/api/v1/sip/registrations", None, Role::Viewer, false),
        (M::GET, "/api/v1/sip/calls", None, Role::Viewer, false),
        (M::DELETE, "/api/v1/sip/calls/7", None, Role::Installer, false),
        (M::GET, "/api/v1/sip/cdr.csv", None, Role::Viewer, false),
        (M::GET, "/calls", None, Role::Viewer, true),
        (M::GET, "/api/v1/cameras", None, Role::Viewer, false),
        (M::GET, "/api/v1/devices", None, Role::Viewer, false),
        (M::GET, "/api/v1/firmware", None, Role::Viewer, false),
        (M::GET, "/api/v1/firmware/install", None, Role::Viewer, false),
        // Not a bundle: 400 (checked before the keyring, which this harness has none of).
        (M::POST, "/api/v1/firmware/bundle", Some(json!({"not": "a bundle"})), Role::Installer, false),
        // Nothing installed: 409.
        (M::POST, "/api/v1/system/reboot", None, Role::Admin, false),
        (M::GET, "/api/v1/cameras/sim0/snapshot.jpg", None, Role::Viewer, false),
        (M::POST, "/api/v1/cameras/sim0/viewer-token", Some(json!({"ttl_seconds": 60})), Role::Viewer, false),
        // A JSON body is not an offer: 415 once authorised.
        (M::POST, "/whep/sim0", Some(json!({})), Role::Viewer, false),
        (M::DELETE, "/whep/sim0/00000000000000000000000000000000", None, Role::Viewer, false),
        (M::POST, "/calls/7/hangup", None, Role::Installer, true),
        (M::GET, "/backup", None, Role::Admin, true),
        (M::GET, "/backup/download", None, Role::Admin, true),
        (M::GET, "/users", None, Role::Admin, true),
        (M::GET, "/audit", None, Role::Admin, true),
        (M::GET, "/tls", None, Role::Admin, true),
        (M::GET, "/setup", None, Role::Admin, true),
        (M::POST, "/history/1/restore", None, Role::Installer, true),
        // Last: it changes the logins, after which restoring revision 1 needs the admin role.
        (M::PUT, "/api/v1/config/admin", Some(json!({"lockout_minutes": 20})), Role::Admin, false),
    ]
}

#[tokio::test]
async fn every_route_against_every_role() {
    let h = harness();
    let sessions = [
        (Role::Viewer, h.login("view", VIEWER_PW).await),
        (Role::Installer, h.login("inst", INSTALLER_PW).await),
        (Role::Admin, h.login("admin", ADMIN_PW).await),
    ];
    for (method, path, body, least, page) in routes() {
        let anonymous = h.call(method.clone(), path, None, body.clone()).await;
        if page {
            assert_eq!(anonymous.status, StatusCode::SEE_OTHER, "{method} {path} anonymous");
            assert_eq!(anonymous.headers[header::LOCATION], "/login");
        } else {
            assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{method} {path} anonymous: {}", anonymous.body);
        }
        for (role, cookie) in &sessions {
            let reply = h.call(method.clone(), path, Some(cookie), body.clone()).await;
            if *role >= least {
                assert!(
                    reply.status != StatusCode::UNAUTHORIZED && reply.status != StatusCode::FORBIDDEN,
                    "{method} {path} as {role:?}: {} {}",
                    reply.status,
                    reply.body
                );
                assert!(!reply.status.is_server_error(), "{method} {path} as {role:?}: {}", reply.body);
            } else {
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path} as {role:?}: {}", reply.body);
            }
        }
    }
    // Public routes.
    for path in [
        "/login",
        "/phone",
        "/api/v1/status",
        "/api/v1/openapi.json",
        "/assets/app.css",
        "/assets/app.js",
        "/assets/phone.js",
        "/assets/vendor/jssip-3.13.8.min.js",
    ] {
        assert_eq!(h.call(Method::GET, path, None, None).await.status, StatusCode::OK, "{path}");
    }
    assert_eq!(h.call(Method::GET, "/api/v1/nope", None, None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn changes_from_a_foreign_origin_are_refused() {
    let h = harness();
    let cookie = h.login("admin", ADMIN_PW).await;
    let before = h.store.current().revision;
    let body = Some(json!({"playback_volume": 10}));
    for headers in [
        &[("origin", "https://evil.example")][..],
        &[("origin", "null")][..],
        &[("origin", "http://box.test:8443")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site"), ("origin", "https://box.test:8443")][..],
    ] {
        let reply =
            h.call_from(peer(1), Method::PUT, "/api/v1/config/audio", Some(&cookie), body.clone(), headers).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert_eq!(h.store.current().revision, before, "nothing changed");
    // Login CSRF too.
    let reply = h
        .call_from(
            peer(1),
            Method::POST,
            "/api/v1/session",
            None,
            Some(json!({"username": "admin", "password": ADMIN_PW})),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // The same origin, and clients that send no Origin (curl), pass.
    let same = [("origin", "https://box.test:8443"), ("sec-fetch-site", "same-origin")];
    let reply = h.call_from(peer(1), Method::PUT, "/api/v1/config/audio", Some(&cookie), body.clone(), &same).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // Reading from anywhere is fine (it carries no state change).
    let reply = h
        .call_from(peer(1), Method::GET, "/api/v1/config", Some(&cookie), None, &[("origin", "https://evil.example")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn lockout_is_per_peer_and_ignores_forwarded_headers() {
    let h = harness();
    let attacker = peer(66);
    let wrong = json!({"username": "admin", "password": "guess"});
    for i in 0..5 {
        let reply = h.call_from(attacker, Method::POST, "/api/v1/session", None, Some(wrong.clone()), &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let right = json!({"username": "admin", "password": ADMIN_PW});
    let locked = h.call_from(attacker, Method::POST, "/api/v1/session", None, Some(right.clone()), &[]).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "even the right password is refused while locked");
    assert!(locked.headers.contains_key(header::RETRY_AFTER));
    for spoof in [("x-forwarded-for", "198.51.100.9"), ("x-real-ip", "198.51.100.9"), ("forwarded", "for=198.51.100.9")]
    {
        let reply = h.call_from(attacker, Method::POST, "/api/v1/session", None, Some(right.clone()), &[spoof]).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{spoof:?} must not reset the lockout");
    }
    // Another peer is not affected.
    let reply = h.call_from(peer(7), Method::POST, "/api/v1/session", None, Some(right.clone()), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    // The page login shows the lockout too.
    let form = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("username=admin&password={ADMIN_PW}")))
        .map(|mut r| {
            r.extensions_mut().insert(ConnectInfo(attacker));
            r
        })
        .expect("request");
    let reply = h.send(form).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.body.contains("Too many failed logins"));
}

#[tokio::test]
async fn session_cookie_attributes_and_fresh_ids() {
    let h = harness();
    let reply =
        h.call(Method::POST, "/api/v1/session", None, Some(json!({"username": "admin", "password": ADMIN_PW}))).await;
    let cookie = reply.headers[header::SET_COOKIE].to_str().expect("ascii").to_string();
    assert!(cookie.starts_with("__Host-branchgate="), "{cookie}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing in {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain="));
    let first = h.login("admin", ADMIN_PW).await;
    let second = h.login("admin", ADMIN_PW).await;
    assert_ne!(first, second, "a new session id at every login");
    // Logging out ends the session.
    let reply = h.call(Method::DELETE, "/api/v1/session", Some(&first), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, "/api/v1/config", Some(&first), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.call(Method::GET, "/api/v1/config", Some(&second), None).await.status, StatusCode::OK);
    // A made-up cookie is nobody.
    let fake = "__Host-branchgate=00112233";
    assert_eq!(h.call(Method::GET, "/api/v1/config", Some(fake), None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn security_headers_on_pages_and_api() {
    let h = harness();
    for path in ["/login", "/api/v1/status", "/api/v1/openapi.json"] {
        let reply = h.call(Method::GET, path, None, None).await;
        let csp = reply.headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(reply.headers["x-content-type-options"], "nosniff", "{path}");
        assert!(reply.headers["strict-transport-security"].to_str().expect("ascii").contains("max-age="), "{path}");
        assert_eq!(reply.headers["x-frame-options"], "DENY", "{path}");
    }
}

#[tokio::test]
async fn the_phone_page_is_public_and_alone_may_use_the_microphone() {
    let h = harness();
    let phone = h.call(Method::GET, "/phone", None, None).await;
    assert_eq!(phone.status, StatusCode::OK);
    assert_eq!(phone.headers["permissions-policy"], "camera=(), microphone=(self), geolocation=()");
    let csp = phone.headers["content-security-policy"].to_str().expect("ascii");
    assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe-inline"), "{csp}");
    // The page loads the vendored JsSIP the route serves, and names no secret.
    let jssip = phone
        .body
        .split("src=\"/assets/")
        .filter_map(|rest| rest.split('"').next())
        .find(|src| src.starts_with("vendor/jssip-"))
        .expect("the page loads the JsSIP bundle");
    assert_eq!(h.call(Method::GET, &format!("/assets/{jssip}"), None, None).await.status, StatusCode::OK);
    assert!(phone.body.contains("<script src=\"/assets/phone.js\" defer></script>"));
    assert!(!phone.body.contains("<script>") && !phone.body.contains("style="), "no inline script or style");
    for path in ["/login", "/api/v1/status"] {
        let reply = h.call(Method::GET, path, None, None).await;
        assert_eq!(reply.headers["permissions-policy"], "camera=(), microphone=(), geolocation=()", "{path}");
    }
    // The login page and the admin navigation lead to it.
    assert!(h.call(Method::GET, "/login", None, None).await.body.contains("href=\"/phone\""));
    let cookie = h.login("admin", ADMIN_PW).await;
    for page in ["/calls", "/phone"] {
        assert!(
            h.call(Method::GET, page, Some(&cookie), None).await.body.contains("<a href=\"/phone\">Phone</a>"),
            "{page}"
        );
    }
}

#[tokio::test]
async fn bad_backups_are_refused_and_change_nothing() {
    let h = harness();
    let cookie = h.login("admin", ADMIN_PW).await;
    let before = h.store.current();
    // Too big: refused before it is read.
    let big = vec![b' '; 2 * 1024 * 1024];
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/config/import")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("request");
    request.extensions_mut().insert(ConnectInfo(peer(1)));
    assert_eq!(h.send(request).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Malformed and invalid documents: 4xx with a message.
    for bad in [
        "{not json",
        "[1, 2]",
        r#"{"sip": {"domain": 5}}"#,
        r#"{"sip": {"routes": [{"prefix": "9", "trunk": "missing"}]}}"#,
        r#"{"schema_version": 99}"#,
        r#"{"unknown_section": {}}"#,
    ] {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/config/import")
            .header(header::HOST, HOST)
            .header(header::COOKIE, &cookie)
            .body(Body::from(bad))
            .expect("request");
        request.extensions_mut().insert(ConnectInfo(peer(1)));
        let reply = h.send(request).await;
        assert!(reply.status.is_client_error(), "{bad}: {}", reply.status);
        assert!(reply.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{bad}: {}", reply.body);
    }
    assert_eq!(h.store.current(), before, "nothing changed");
    // A good backup round-trips.
    let export = h.call(Method::GET, "/api/v1/config/export", Some(&cookie), None).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.headers[header::CONTENT_DISPOSITION].to_str().expect("ascii").contains("attachment"));
    let reply = h.call(Method::POST, "/api/v1/config/import", Some(&cookie), Some(export.json())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(h.store.current().config, before.config);
}

#[tokio::test]
async fn conditional_put_and_field_errors() {
    let h = harness();
    let cookie = h.login("inst", INSTALLER_PW).await;
    let sip = h.call(Method::GET, "/api/v1/config/sip", Some(&cookie), None).await.json();
    let revision = sip["revision"].as_u64().expect("revision");
    let mut edited = sip.clone();
    edited["domain"] = json!("shop.example");
    let reply = h.call(Method::PUT, "/api/v1/config/sip", Some(&cookie), Some(edited.clone())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["revision"], revision + 1);
    // The same stale document again: someone changed it meanwhile.
    let reply = h.call(Method::PUT, "/api/v1/config/sip", Some(&cookie), Some(edited)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let reply = h.call(Method::PUT, "/api/v1/config/sip", Some(&cookie), Some(json!({"udp_port": 70000}))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["fields"][0]["path"], "sip.udp_port");
    let reply = h.call(Method::PUT, "/api/v1/config/nope", Some(&cookie), Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri("/api/v1/config/sip")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .body(Body::from("{oops"))
        .expect("request");
    request.extensions_mut().insert(ConnectInfo(peer(1)));
    assert_eq!(h.send(request).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_risky_change_waits_for_confirmation() {
    let h = harness();
    let cookie = h.login("admin", ADMIN_PW).await;
    let reply =
        h.call(Method::PUT, "/api/v1/config/network", Some(&cookie), Some(json!({"admin_http_port": 8081}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json()["pending_confirm"]["deadline_ms"].as_u64().is_some());
    let page = h.call(Method::GET, "/history", Some(&cookie), None).await;
    assert!(page.body.contains("rolled back to revision"), "the banner shows");
    let reply = h.call(Method::POST, "/api/v1/config/confirm", Some(&cookie), None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.call(Method::POST, "/api/v1/config/confirm", Some(&cookie), None).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn firmware_uploads_are_capped_before_reading() {
    let h = harness();
    let cookie = h.login("inst", INSTALLER_PW).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/firmware/bundle")
        .header(header::HOST, HOST)
        .header(header::COOKIE, cookie.as_str())
        .header(header::CONTENT_LENGTH, (branchgate_update::MAX_BUNDLE_BYTES + 1).to_string())
        .body(Body::empty())
        .expect("request");
    let mut request = request;
    request.extensions_mut().insert(ConnectInfo(peer(1)));
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.body);
    assert_eq!(reply.json()["reason"], "too_large");
    // Not a bundle: 400 with the reason, and the install status says why.
    let reply = h.call(Method::POST, "/api/v1/firmware/bundle", Some(&cookie), Some(json!([1, 2, 3]))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.json()["reason"], "not_a_bundle");
    let status = h.call(Method::GET, "/api/v1/firmware/install", Some(&cookie), None).await.json();
    assert_eq!(status["state"], "failed");
    let slots = h.call(Method::GET, "/api/v1/firmware", Some(&cookie), None).await.json();
    assert_eq!(slots["slots"][0]["booted"], true);
    assert_eq!(slots["slots"][1]["name"], "B");
}

#[tokio::test]
async fn the_update_policy_is_the_admins_to_change_or_restore() {
    let h = harness();
    let admin = h.login("admin", ADMIN_PW).await;
    let installer = h.login("inst", INSTALLER_PW).await;
    let before = h.store.current().revision;
    let reply =
        h.call(Method::PUT, "/api/v1/config/update", Some(&installer), Some(json!({"allow_downgrade": true}))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    let reply =
        h.call(Method::PUT, "/api/v1/config/update", Some(&admin), Some(json!({"allow_downgrade": true}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(h.store.current().config.update.allow_downgrade);
    // Restoring the older revision would change the update policy back: not an installer's call either.
    let path = format!("/api/v1/config/revisions/{before}/restore");
    assert_eq!(h.call(Method::POST, &path, Some(&installer), None).await.status, StatusCode::FORBIDDEN);
    assert!(h.store.current().config.update.allow_downgrade, "nothing changed");
    assert_eq!(h.call(Method::POST, &path, Some(&admin), None).await.status, StatusCode::OK);
    assert!(!h.store.current().config.update.allow_downgrade);
}

#[tokio::test]
async fn the_phone_page_gets_turn_credentials_only_with_right_sip_credentials() {
    let h = harness();
    let ask = |password: &str| {
        let body = json!({"username": "1001", "password": password});
        h.call_from(
            peer(9),
            Method::POST,
            "/phone/ice-servers",
            None,
            Some(body),
            &[("Origin", "https://box.test:8443")],
        )
    };
    let mut config = h.store.current().config.clone();
    config.sip.domain = "branch.example".into();
    config.sip.users.push(branchgate_config::SipUser {
        username: "1001".into(),
        password: HashedSecret::new("pw-1001-secret"),
        display_name: None,
    });
    h.store.apply(config.clone(), ApplyOptions::new("test", "sip user").confirm(Confirm::Never), 2).expect("apply");
    assert_eq!(ask("wrong").await.status, StatusCode::UNAUTHORIZED);
    // No REST secret: nothing to mint credentials with, so no TURN (direct media only).
    let reply = ask("pw-1001-secret").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["iceServers"], json!([]));
    config.turn.auth_secret = Some(branchgate_config::PlainSecret::new("turn-secret"));
    h.store.apply(config, ApplyOptions::new("test", "turn secret").confirm(Confirm::Never), 3).expect("apply");
    let reply = ask("pw-1001-secret").await;
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    let server = &reply.json()["iceServers"][0];
    assert!(server["username"].as_str().is_some_and(|u| u.ends_with(":1001")), "{}", reply.body);
    let urls: Vec<&str> = server["urls"].as_array().expect("urls").iter().filter_map(Value::as_str).collect();
    assert!(urls.contains(&"turn:box.test:3478?transport=udp"), "{urls:?}");
    assert!(urls.iter().any(|u| u.starts_with("turns:box.test:")), "{urls:?}");
}
