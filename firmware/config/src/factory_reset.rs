//! Factory reset: the box forgets what it learned on site. Asked for by the admin UI or the
//! reset button, it is written down first ([`request_factory_reset`]) and carried out by the
//! next start, with the data directory locked and before the store opens — nothing is running
//! on the files it removes, and a power cut in the middle only means it runs again.
//!
//! What stays: the firmware (slots, the vendor keyring, the update history) always; with
//! `keep_config` also the configuration store and what belongs to it (its last-known-good copy,
//! the box certificate, a not yet changed initial password). Everything else in the data
//! directory goes: recordings, call records, viewer-token key, databases moved aside.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::write_atomically;
use crate::store::{LKG_FILE, LOCK_FILE, SLED_DIR};

/// The request, in the data directory until the reset is done.
pub const FACTORY_RESET_FILE: &str = "factory-reset.json";

/// Kept through every reset: the firmware directory (slots, keyring, history), the lock.
const ALWAYS_KEPT: &[&str] = &["firmware", LOCK_FILE, FACTORY_RESET_FILE];

/// Kept when the configuration is: the store, its copy, the box certificate (`tls/`, the
/// identity browsers have accepted), the initial password while it is the admin's.
const CONFIGURATION: &[&str] = &[SLED_DIR, LKG_FILE, "tls", "initial-admin-password"];

/// A factory reset asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactoryReset {
    /// Keep the configuration (and admin password); otherwise the box starts as new.
    pub keep_config: bool,
    /// Who asked: a user name or `reset-button`.
    pub by: String,
    pub requested_ms: u64,
}

/// What a start did about a pending reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactoryResetDone {
    pub request: FactoryReset,
    /// The names removed from the data directory.
    pub removed: Vec<String>,
}

/// Writes the request durably; the next start carries it out.
pub fn request_factory_reset(data_dir: &Path, request: &FactoryReset) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(request).map_err(io::Error::other)?;
    write_atomically(&data_dir.join(FACTORY_RESET_FILE), &bytes, 0o600)
}

/// Carries out a pending reset (the caller holds the data directory's lock). A request that
/// cannot be read is removed without wiping anything: only a clear request erases data.
pub(crate) fn apply_pending(data_dir: &Path) -> io::Result<Option<FactoryResetDone>> {
    let path = data_dir.join(FACTORY_RESET_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Ok(request) = serde_json::from_slice::<FactoryReset>(&bytes) else {
        tracing::error!(path = %path.display(), "unreadable factory reset request ignored; nothing was wiped");
        std::fs::remove_file(&path)?;
        return Ok(None);
    };
    let mut removed = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(data_dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ALWAYS_KEPT.contains(&name.as_str()) || (request.keep_config && CONFIGURATION.contains(&name.as_str())) {
            continue;
        }
        let target = entry.path();
        // A symlink is removed, never followed.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&target)?;
        } else {
            std::fs::remove_file(&target)?;
        }
        removed.push(name);
    }
    // Last: until here a power cut means the reset runs again.
    std::fs::remove_file(&path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(Some(FactoryResetDone { request, removed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["firmware", SLED_DIR, "tls", "recordings/front", "config.sled.damaged-1"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dir");
        }
        for f in [
            "firmware/keyring.pem",
            "firmware/history.jsonl",
            LOCK_FILE,
            LKG_FILE,
            "tls/self-signed.key",
            "recordings/front/20261206T000000Z.mp4",
            "cdr.jsonl",
            "viewer-token.key",
            "initial-admin-password",
        ] {
            std::fs::write(dir.path().join(f), b"x").expect("file");
        }
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn nothing_happens_without_a_request() {
        let dir = data_dir();
        let before = names(dir.path());
        assert_eq!(apply_pending(dir.path()).expect("apply"), None);
        assert_eq!(names(dir.path()), before);
    }

    #[test]
    fn keeping_the_configuration_removes_only_site_data() {
        let dir = data_dir();
        let request = FactoryReset { keep_config: true, by: "admin".into(), requested_ms: 1 };
        request_factory_reset(dir.path(), &request).expect("request");
        let done = apply_pending(dir.path()).expect("apply").expect("done");
        assert_eq!(done.request, request);
        assert_eq!(done.removed, ["cdr.jsonl", "config.sled.damaged-1", "recordings", "viewer-token.key"]);
        assert_eq!(
            names(dir.path()),
            ["branchgate.lock", "config-lkg.json", "config.sled", "firmware", "initial-admin-password", "tls"]
        );
        assert_eq!(apply_pending(dir.path()).expect("again"), None, "once");
    }

    #[test]
    fn a_full_reset_keeps_only_the_firmware() {
        let dir = data_dir();
        request_factory_reset(
            dir.path(),
            &FactoryReset { keep_config: false, by: "reset-button".into(), requested_ms: 1 },
        )
        .expect("request");
        apply_pending(dir.path()).expect("apply").expect("done");
        assert_eq!(names(dir.path()), ["branchgate.lock", "firmware"]);
        assert!(dir.path().join("firmware/keyring.pem").exists() && dir.path().join("firmware/history.jsonl").exists());
    }

    #[test]
    fn an_unreadable_request_wipes_nothing() {
        let dir = data_dir();
        std::fs::write(dir.path().join(FACTORY_RESET_FILE), b"{\"keep_con").expect("write");
        let before: Vec<String> = names(dir.path()).into_iter().filter(|n| n != FACTORY_RESET_FILE).collect();
        assert_eq!(apply_pending(dir.path()).expect("apply"), None);
        assert_eq!(names(dir.path()), before);
    }
}
