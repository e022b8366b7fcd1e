//! The update agent: accepts a bundle (signature, payload, compatible, version) and installs
//! it into the inactive slot in the background, one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::{self, BundleError, Keyring, PolicyError};
use crate::history::{HistoryEntry, HistoryEvent, UpdateHistory};
use crate::manifest::Manifest;
use crate::slots::{InstallState, InstallTracker, SlotBackend};

/// Written (durably) next to the bundle before an install starts and removed when it ends: found
/// at start, it means the machine stopped during an install (power loss, reset, crash).
pub const PENDING_FILE: &str = "install-pending.json";

/// What [`PENDING_FILE`] records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PendingInstall {
    version: String,
    /// The bundle, to remove after an interrupted install when the install would have.
    bundle: PathBuf,
    remove_after: bool,
}

/// Largest bundle accepted (an image for the box is some 100 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024 * 1024;

/// Space a bundle coming in leaves free on the data partition (configuration store, logs, CDRs).
pub const KEEP_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes a bundle written into `dir` may take: what the file system has free beyond
/// [`KEEP_FREE_BYTES`] (unknown: no limit beyond [`MAX_BUNDLE_BYTES`]).
pub fn bundle_budget(dir: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(stat) => stat.blocks_available().saturating_mul(stat.fragment_size()).saturating_sub(KEEP_FREE_BYTES),
        Err(_) => u64::MAX,
    }
}

/// A bundle being received (web upload, hawkBit download) that has not reached the install:
/// unless handed over with [`ReceiveGuard::disarm`], dropping it (client gone, error, shutdown)
/// marks the tracker failed and removes the partial file.
pub struct ReceiveGuard {
    tracker: InstallTracker,
    path: PathBuf,
    armed: bool,
}

impl ReceiveGuard {
    /// Call after [`InstallTracker::try_begin`] succeeded.
    pub fn new(tracker: InstallTracker, path: PathBuf) -> ReceiveGuard {
        ReceiveGuard { tracker, path, armed: true }
    }

    pub fn fail(mut self, message: &str) {
        self.tracker.fail(message);
        let _ = std::fs::remove_file(&self.path);
        self.armed = false;
    }

    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ReceiveGuard {
    fn drop(&mut self) {
        if self.armed {
            self.tracker.fail("the transfer was interrupted");
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why a bundle was refused before installing.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl AcceptError {
    /// A short, stable reason code: `not_a_bundle`, `bad_signature`, `untrusted`, `tampered`,
    /// `manifest`, `unsupported`, `incompatible`, `downgrade`, `keyring`, ...
    pub fn reason(&self) -> &'static str {
        match self {
            AcceptError::Bundle(e) => e.reason(),
            AcceptError::Policy(e) => e.reason(),
        }
    }

    /// The box's fault (keyring missing, IO), not the bundle's.
    pub fn is_internal(&self) -> bool {
        matches!(self, AcceptError::Bundle(BundleError::Keyring { .. } | BundleError::Io { .. }))
    }
}

/// What the box installs with and into.
#[derive(Debug, Clone)]
pub struct Agent {
    pub backend: Arc<dyn SlotBackend>,
    /// PEM file of the vendor CA certificate(s).
    pub keyring: PathBuf,
    pub compatible: String,
    pub running_version: String,
    pub tracker: InstallTracker,
    /// What happened to the firmware, for the field tech (`GET /api/v1/firmware/history`).
    pub history: UpdateHistory,
    /// The hawkBit client's last contact with its server.
    pub fleet: crate::hawkbit::FleetMonitor,
    /// Bundles on inserted USB media.
    pub usb: crate::usb::UsbWatcher,
}

impl Agent {
    /// Verifies the bundle (blocking: reads it whole once) and checks it may be installed here.
    pub fn accept(&self, bundle_path: &Path, allow_downgrade: bool) -> Result<Manifest, AcceptError> {
        // Tell the uploader that a file is no bundle even on a box without a keyring.
        bundle::check_trailer(bundle_path)?;
        let keyring = Keyring::load(&self.keyring)?;
        let manifest = bundle::verify(bundle_path, &keyring)?;
        bundle::check_policy(&manifest, &self.compatible, &self.running_version, allow_downgrade)?;
        Ok(manifest)
    }

    /// Adds to the history (blocking: it syncs); a failure is logged, never fatal.
    pub fn record(&self, entry: HistoryEntry) {
        if let Err(e) = self.history.record(&entry) {
            tracing::warn!(error = %e, path = %self.history.path().display(), "cannot write the update history");
        }
    }

    /// [`Agent::record`] from async code, off the async threads.
    pub async fn record_async(&self, entry: HistoryEntry) {
        let agent = self.clone();
        let _ = tokio::task::spawn_blocking(move || agent.record(entry)).await;
    }

    /// Installs an accepted bundle on a thread of its own; the tracker shows progress. The
    /// bundle file is removed afterwards when `remove_after` is set. `by` says who asked (a
    /// user, `hawkbit`) in the history.
    pub fn install_in_background(&self, bundle_path: PathBuf, manifest: Manifest, remove_after: bool, by: &str) {
        let backend = self.backend.clone();
        let tracker = self.tracker.clone();
        tracker.installing(&manifest.version);
        let agent = self.clone();
        let by = by.to_string();
        let spawned = std::thread::Builder::new().name("firmware-install".into()).spawn({
            let tracker = tracker.clone();
            let bundle_path = bundle_path.clone();
            move || {
                // Durably on disk before the slot is touched (on this thread: it syncs).
                let pending = bundle_path.parent().map(|dir| dir.join(PENDING_FILE));
                if let Some(path) = &pending {
                    let record =
                        PendingInstall { version: manifest.version.clone(), bundle: bundle_path.clone(), remove_after };
                    let written = serde_json::to_vec(&record)
                        .map_err(std::io::Error::other)
                        .and_then(|bytes| branchgate_config::write_atomically(path, &bytes, 0o600));
                    if let Err(e) = written {
                        // Only the report after a power cut is lost; the install itself is safe.
                        tracing::warn!(error = %e, path = %path.display(), "cannot record the install in progress");
                    }
                }
                // One line for the history table: the full manifest is in the log and the audit.
                let build = manifest.build.as_deref().map(|b| format!(" (build {b})")).unwrap_or_default();
                agent.record(
                    HistoryEntry::now(
                        HistoryEvent::Installing,
                        format!("installing {}{build} for {}", manifest.version, manifest.compatible),
                    )
                    .version(&manifest.version)
                    .by(&by),
                );
                let result = backend.install(&bundle_path, &manifest, &mut |p| tracker.progress(p));
                if remove_after {
                    let _ = std::fs::remove_file(&bundle_path);
                }
                if let Some(path) = &pending {
                    let _ = std::fs::remove_file(path);
                }
                match result {
                    Ok(slot) => {
                        tracing::info!(version = %manifest.version, %slot, "firmware installed; reboot to use it");
                        agent.record(
                            HistoryEntry::now(
                                HistoryEvent::Installed,
                                format!("{} installed into slot {slot}; it runs after a reboot", manifest.version),
                            )
                            .version(&manifest.version)
                            .slot(&slot)
                            .by(&by),
                        );
                        tracker.done(&slot);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "firmware install failed");
                        agent.record(
                            HistoryEntry::now(
                                HistoryEvent::InstallFailed,
                                format!("the install of {} failed: {e}", manifest.version),
                            )
                            .version(&manifest.version)
                            .by(&by),
                        );
                        tracker.fail(&e.to_string());
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracker.fail(&format!("cannot start the install: {e}"));
            if remove_after {
                let _ = std::fs::remove_file(&bundle_path);
            }
        }
    }

    /// At start: an install into `dir` that the machine did not live through is reported as
    /// failed (`GET /api/v1/firmware/install`), its leftover bundle removed, once. Returns the
    /// message when there was one.
    pub fn recover_interrupted(&self, dir: &Path) -> Option<String> {
        let path = dir.join(PENDING_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let record = serde_json::from_slice::<PendingInstall>(&bytes).ok();
        let version = record.as_ref().map(|r| r.version.chars().take(64).collect::<String>());
        let message = format!(
            "the install{} was interrupted (power loss or restart) and did not finish; the slot that was running is still the one that boots",
            version.as_deref().map(|v| format!(" of {v}")).unwrap_or_default()
        );
        // Only a bundle in `dir` itself: the record is a file, not an authority on what to delete.
        if let Some(record) = record.filter(|r| r.remove_after && r.bundle.parent() == Some(dir)) {
            let _ = std::fs::remove_file(&record.bundle);
        }
        self.tracker.fail(&message);
        let mut entry = HistoryEntry::now(HistoryEvent::Interrupted, message.clone());
        if let Some(version) = version {
            self.tracker.set_version(&version);
            entry = entry.version(version);
        }
        self.record(entry);
        let _ = std::fs::remove_file(&path);
        Some(message)
    }

    /// Marks a refused or abandoned upload.
    pub fn refuse(&self, error: &str) {
        self.tracker.fail(error);
    }

    pub fn verifying(&self) {
        self.tracker.set_state(InstallState::Verifying);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::SimulatedSlots;

    fn agent(dir: &Path) -> Agent {
        Agent {
            backend: Arc::new(SimulatedSlots::new(dir, "1.0.0")),
            keyring: dir.join("keyring.pem"),
            compatible: "branchgate-test".into(),
            running_version: "1.0.0".into(),
            tracker: InstallTracker::default(),
            history: UpdateHistory::new(dir),
            fleet: Default::default(),
            usb: Default::default(),
        }
    }

    #[test]
    fn an_install_the_machine_did_not_live_through_is_reported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent(dir.path());
        assert_eq!(agent.recover_interrupted(dir.path()), None, "nothing pending");
        let bundle = dir.path().join("upload.raucb");
        std::fs::write(&bundle, b"bundle").expect("bundle");
        let record = PendingInstall { version: "4.0.0".into(), bundle: bundle.clone(), remove_after: true };
        std::fs::write(dir.path().join(PENDING_FILE), serde_json::to_vec(&record).expect("json")).expect("record");

        let message = agent.recover_interrupted(dir.path()).expect("reported");
        assert!(message.contains("4.0.0") && message.contains("interrupted"), "{message}");
        let status = agent.tracker.status();
        assert_eq!(status.state, InstallState::Failed);
        assert_eq!(status.version.as_deref(), Some("4.0.0"));
        assert_eq!(status.last_error.as_deref(), Some(message.as_str()));
        assert!(!bundle.exists(), "the leftover bundle is removed");
        assert!(!dir.path().join(PENDING_FILE).exists());
        assert_eq!(agent.recover_interrupted(dir.path()), None, "once");
        let history = agent.history.entries().expect("history");
        assert_eq!(history.last().map(|e| e.event), Some(HistoryEvent::Interrupted));
        assert_eq!(history.last().and_then(|e| e.version.as_deref()), Some("4.0.0"));
    }

    #[test]
    fn a_damaged_record_still_reports_and_never_deletes_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let agent = agent(dir.path());
        std::fs::write(dir.path().join(PENDING_FILE), b"{not json").expect("record");
        let message = agent.recover_interrupted(dir.path()).expect("reported");
        assert!(message.starts_with("the install was interrupted"), "{message}");

        let outside = other.path().join("keep.raucb");
        std::fs::write(&outside, b"keep").expect("file");
        let record = PendingInstall { version: "4.0.0".into(), bundle: outside.clone(), remove_after: true };
        std::fs::write(dir.path().join(PENDING_FILE), serde_json::to_vec(&record).expect("json")).expect("record");
        agent.recover_interrupted(dir.path()).expect("reported");
        assert!(outside.exists(), "only bundles in the firmware directory are removed");
    }

    #[test]
    fn a_finished_install_leaves_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent(dir.path());
        let bundle = dir.path().join("not-a-bundle.raucb");
        std::fs::write(&bundle, b"x").expect("bundle");
        let manifest = Manifest::parse(
            b"[update]\ncompatible=branchgate-test\nversion=2.0.0\n\n[image.rootfs]\n\
sha256=ed691eb1edb8193d4b73b82f789420df735f9a24942451af4f799de60d58fc97\nsize=20000\nfilename=rootfs.img\n",
        )
        .expect("manifest");
        agent.install_in_background(bundle, manifest, true, "tester");
        for _ in 0..500 {
            if matches!(agent.tracker.status().state, InstallState::Done | InstallState::Failed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(agent.tracker.status().state, InstallState::Failed, "no image in it");
        let history: Vec<_> = agent.history.entries().expect("history").iter().map(|e| e.event).collect();
        assert_eq!(history, [HistoryEvent::Installing, HistoryEvent::InstallFailed]);
        assert!(!dir.path().join(PENDING_FILE).exists());
        assert_eq!(agent.recover_interrupted(dir.path()), None);
    }
}
