//! Logins, sessions and the lockout of peers that guess passwords.
//!
//! Sessions live in memory (a restart logs everyone out, which is what an
//! installer expects of a reboot). The cookie is `__Host-` prefixed, Secure,
//! HttpOnly and SameSite=Strict; a new id is issued at every login.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use branchgate_config::{ADMIN_USERNAME, AdminConfig, HashedSecret, Role};
use rand::RngCore;

use crate::AppState;
use crate::api::json_error;

pub const SESSION_COOKIE: &str = "__Host-branchgate";

#[derive(Clone, Debug)]
pub struct Session {
    pub username: String,
    pub role: Role,
    pub must_change_password: bool,
    created: Instant,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: Mutex<HashMap<String, Session>>,
}

impl SessionTable {
    /// Creates a session and returns its id.
    pub fn create(&self, username: &str, role: Role, must_change_password: bool) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        let now = Instant::now();
        let session = Session { username: username.into(), role, must_change_password, created: now, last_seen: now };
        self.lock().insert(id.clone(), session);
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session for `id`, refreshing its idle timer; expired ones are removed.
    pub fn touch(&self, id: &str, idle: Duration, absolute: Duration) -> Option<Session> {
        let mut sessions = self.lock();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_seen) < idle && now.duration_since(s.created) < absolute);
        let session = sessions.get_mut(id)?;
        session.last_seen = now;
        Some(session.clone())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Whether the session is still there (without refreshing its idle timer).
    pub fn exists(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Ends every session of `username` except `keep` (after a password change or deletion).
    pub fn remove_user(&self, username: &str, keep: Option<&str>) {
        self.lock().retain(|id, s| s.username != username || Some(id.as_str()) == keep);
    }

    pub fn clear_must_change(&self, id: &str) {
        if let Some(s) = self.lock().get_mut(id) {
            s.must_change_password = false;
        }
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Failed logins per peer. IPv6 peers are grouped by /64, since one host
/// usually owns a whole /64 and could rotate through it. A success does not
/// wipe the peer's failures (otherwise any account it holds, or a metrics
/// scrape, would reset the count for guessing another); they age out after
/// the lockout period.
#[derive(Debug, Default)]
pub struct Lockout {
    peers: Mutex<HashMap<IpAddr, PeerFailures>>,
}

#[derive(Debug)]
struct PeerFailures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Lockout {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, PeerFailures>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time left on the peer's lockout, if it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let peers = self.lock();
        let until = peers.get(&peer_key(ip))?.locked_until?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Records a failure; true when this one locks the peer out.
    pub fn fail(&self, ip: IpAddr, threshold: u32, lock_for: Duration) -> bool {
        let mut peers = self.lock();
        let now = Instant::now();
        let entry = peers.entry(peer_key(ip)).or_insert(PeerFailures { count: 0, last: now, locked_until: None });
        // Failures older than the lockout period are forgotten.
        if now.duration_since(entry.last) > lock_for || entry.locked_until.is_some_and(|u| u <= now) {
            entry.count = 0;
            entry.locked_until = None;
        }
        entry.count += 1;
        entry.last = now;
        if entry.count >= threshold {
            entry.locked_until = Some(now + lock_for);
            return true;
        }
        false
    }
}

/// The stored credentials of `username`: role, password hash, forced change.
pub fn find_account(admin: &AdminConfig, username: &str) -> Option<(Role, HashedSecret, bool)> {
    if username == ADMIN_USERNAME {
        return Some((Role::Admin, admin.password.clone(), admin.must_change_password));
    }
    admin.users.iter().find(|u| u.username == username).map(|u| (u.role, u.password.clone(), u.must_change_password))
}

/// An argon2 hash of nothing useful, verified for unknown usernames so that a
/// wrong username takes as long as a wrong password.
fn decoy_hash() -> &'static HashedSecret {
    static DECOY: std::sync::OnceLock<HashedSecret> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| HashedSecret::argon2("decoy password").unwrap_or_default())
}

/// Checks a username and password (slow: argon2 runs on a blocking thread).
/// At most two argon2 checks at once: each takes ~19 MiB and real CPU, and a
/// flood of parallel logins must neither exhaust the box nor race the lockout.
static ARGON2_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub async fn check_password(admin: &AdminConfig, username: &str, password: &str) -> Option<(Role, bool)> {
    let account = find_account(admin, username);
    let hash = account.as_ref().map(|(_, h, _)| h.clone()).unwrap_or_else(|| decoy_hash().clone());
    let password = password.to_string();
    let Ok(_slot) = ARGON2_SLOTS.acquire().await else {
        return None;
    };
    let ok = tokio::task::spawn_blocking(move || hash.verify_argon2(&password)).await.unwrap_or(false);
    match account {
        Some((role, _, must_change)) if ok => Some((role, must_change)),
        _ => None,
    }
}

pub fn session_cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The logged-in user of a request.
#[derive(Clone, Debug)]
pub struct User {
    pub session_id: String,
    pub username: String,
    pub role: Role,
    pub must_change_password: bool,
}

impl User {
    /// Ok when the user has at least `role` (and has set their own password).
    pub fn require(&self, role: Role) -> Result<(), Response> {
        if self.role < role {
            return Err(json_error(StatusCode::FORBIDDEN, &format!("this needs the {} role", role.as_str())));
        }
        Ok(())
    }

    /// Like [`User::require`], for changes: refused until the initial password is changed.
    pub fn require_change(&self, role: Role) -> Result<(), Response> {
        if self.must_change_password {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "change the initial password first (PUT /api/v1/session/password)",
            ));
        }
        self.require(role)
    }
}

/// The logged-in user of a request with these headers, if any.
pub fn session_user(headers: &HeaderMap, state: &AppState) -> Option<User> {
    let id = cookie_value(headers, SESSION_COOKIE)?;
    let config = state.store.current();
    let admin = &config.config.admin;
    let session = state.sessions.touch(
        id,
        Duration::from_secs(u64::from(admin.session_idle_minutes) * 60),
        Duration::from_secs(u64::from(admin.session_absolute_hours) * 3600),
    )?;
    // The account as configured now: a deleted account (e.g. by a restored
    // backup) ends its sessions, a changed role applies at once.
    let Some((role, _, _)) = find_account(admin, &session.username) else {
        state.sessions.remove(id);
        return None;
    };
    Some(User {
        session_id: id.to_string(),
        username: session.username,
        role,
        must_change_password: session.must_change_password,
    })
}

/// Extractor for JSON routes: 401 without a session.
#[derive(Clone, Debug)]
pub struct ApiUser(pub User);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        session_user(&parts.headers, state)
            .map(ApiUser)
            .ok_or_else(|| json_error(StatusCode::UNAUTHORIZED, "log in first (POST /api/v1/session)"))
    }
}

/// Extractor for pages: redirects to the login page without a session, and
/// to the password page while the initial password is unchanged.
#[derive(Clone, Debug)]
pub struct PageUser(pub User);

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(user) = session_user(&parts.headers, state) else {
            return Err(redirect("/login"));
        };
        if user.must_change_password && parts.uri.path() != "/password" {
            return Err(redirect("/password"));
        }
        Ok(PageUser(user))
    }
}

pub fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_string())]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_after_threshold_and_reset_on_success() {
        let lockout = Lockout::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        for _ in 0..4 {
            assert!(!lockout.fail(ip, 5, Duration::from_secs(60)));
        }
        assert!(lockout.locked(ip).is_none());
        assert!(lockout.fail(ip, 5, Duration::from_secs(60)));
        assert!(lockout.locked(ip).is_some());
        assert!(lockout.locked(ip).is_some());
    }

    #[test]
    fn ipv6_peers_are_grouped_by_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::ffff:2".parse().expect("ip");
        assert_eq!(peer_key(a), peer_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(peer_key(mapped), "192.0.2.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn sessions_expire_when_idle() {
        let table = SessionTable::default();
        let id = table.create("admin", Role::Admin, false);
        assert!(table.touch(&id, Duration::from_secs(60), Duration::from_secs(60)).is_some());
        assert!(table.touch(&id, Duration::ZERO, Duration::from_secs(60)).is_none());
        assert_eq!(table.count(), 0);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; __Host-branchgate=abc; b=2".parse().expect("header"));
        assert_eq!(cookie_value(&headers, SESSION_COOKIE), Some("abc"));
    }
}
