//! A/B slots: the seam between the update agent and whatever installs and boots.
//!
//! [`SlotBackend`] is what the agent needs from a slot manager. Two backends are meant:
//! - [`SimulatedSlots`] (here): for machines without RAUC's D-Bus service (development, CI,
//!   the e2e tests). State in `DATA_DIR/firmware/slots.json`, written atomically; an install
//!   copies the bundle's rootfs image into `DATA_DIR/firmware/slot-<X>.img`.
//! - [`crate::rauc::RaucSlots`]: RAUC's D-Bus service on a real box (`InstallBundle`,
//!   `Progress`, `Completed`, `LastError`, `GetSlotStatus`, `Mark("good", "booted")` after the
//!   daemon's boot health check); reboot with reboot(2) after a sync.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("slot state {}: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error("the bundle has no rootfs image")]
    NoRootfs,
    #[error("extracting the image: {0}")]
    Extract(String),
    #[error("the installed image does not match the manifest: {0}")]
    Mismatch(String),
    #[error("no installed slot to boot into: install a bundle first")]
    NothingInstalled,
    #[error("there is no slot {0}")]
    NoSuchSlot(String),
    #[error("slot {slot} cannot boot: {reason}")]
    NotBootable { slot: String, reason: String },
    #[error("RAUC: {0}")]
    Rauc(String),
    #[error("reboot: {0}")]
    Reboot(String),
}

/// One slot as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    pub name: String,
    pub version: Option<String>,
    /// `booted`, `inactive`, `empty`, `installing`, `installed` (waiting for a reboot into it),
    /// `failed` (an install that did not finish).
    pub state: String,
    pub booted: bool,
    /// Marked good by a health check after booting it.
    pub good: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotsStatus {
    /// `simulated` or `rauc`.
    pub backend: String,
    pub booted: String,
    /// The slot the next reboot starts, when one was asked for.
    pub pending_reboot: Option<String>,
    pub slots: Vec<SlotInfo>,
}

/// What a reboot request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebootPlan {
    pub slot: String,
    /// True when nothing really reboots (the simulated backend records the request only).
    pub simulated: bool,
}

/// A slot manager: status, install into the inactive slot, reboot into it.
pub trait SlotBackend: Send + Sync + fmt::Debug {
    fn status(&self) -> Result<SlotsStatus, SlotError>;
    /// Installs a bundle that [`crate::bundle::verify`] accepted into the inactive slot;
    /// `progress` gets 0–100. Returns the slot's name.
    fn install(&self, bundle: &Path, manifest: &Manifest, progress: &mut dyn FnMut(u8)) -> Result<String, SlotError>;
    /// Boots the slot installed last (or arranges for it).
    fn reboot(&self) -> Result<RebootPlan, SlotError>;
    /// Makes `slot` the one the next boot starts (the booted slot: stay where it is). A slot
    /// without a complete install is refused. It boots on trial, as after an install.
    fn activate(&self, slot: &str) -> Result<(), SlotError>;
    /// Whether the booted slot is marked good. False after booting a new (or fallen-back-to)
    /// slot until the boot health check marks it: the bootloader tries an unmarked slot once.
    /// Backends without a bootloader (simulated) have nothing to check.
    fn booted_is_good(&self) -> Result<bool, SlotError> {
        Ok(true)
    }
    /// Marks the booted slot good after a passed health check; returns the slot's name.
    fn mark_booted_good(&self) -> Result<String, SlotError> {
        Ok(self.status()?.booted)
    }
    /// Names this boot of the machine (the kernel's random `boot_id`): what was decided before
    /// a reboot can tell that the reboot has happened since.
    fn boot_id(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
    }
}

/// Restarts the machine now (sync, then reboot(2)); returns only on failure. For a box whose
/// daemon is its main program (no systemd to ask): the bootloader then picks the slot.
pub fn restart_machine() -> Result<(), SlotError> {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => Err(SlotError::Reboot(e.to_string())),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SlotRecord {
    version: Option<String>,
    state: String,
    good: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SimState {
    booted: String,
    pending_reboot: Option<String>,
    slots: BTreeMap<String, SlotRecord>,
}

/// Slots A and B in `dir` (normally `DATA_DIR/firmware`), for machines without RAUC.
#[derive(Debug)]
pub struct SimulatedSlots {
    dir: PathBuf,
    running_version: String,
    lock: Mutex<()>,
    /// A start of the daemon is the simulated machine's boot.
    boot_id: String,
}

pub const STATE_FILE: &str = "slots.json";

impl SimulatedSlots {
    /// No IO until used; the state file is made on first use (slot A booted and good with
    /// `running_version`, B empty).
    pub fn new(dir: impl Into<PathBuf>, running_version: impl Into<String>) -> SimulatedSlots {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let boot_id = format!("simulated-{}-{}", std::process::id(), started.as_nanos());
        SimulatedSlots { dir: dir.into(), running_version: running_version.into(), lock: Mutex::new(()), boot_id }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn image_path(&self, slot: &str) -> PathBuf {
        self.dir.join(format!("slot-{slot}.img"))
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> SlotError {
        let path = path.to_path_buf();
        move |source| SlotError::Io { path, source }
    }

    fn load(&self) -> Result<SimState, SlotError> {
        let path = self.state_path();
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<SimState>(&bytes)
                .map_err(|e| SlotError::State { path: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut slots = BTreeMap::new();
                slots.insert("A".into(), SlotRecord { version: None, state: "booted".into(), good: true });
                slots.insert("B".into(), SlotRecord { version: None, state: "empty".into(), good: false });
                SimState { booted: "A".into(), pending_reboot: None, slots }
            }
            Err(e) => return Err(SlotError::Io { path, source: e }),
        };
        if !state.slots.contains_key(&state.booted) || state.slots.len() != 2 {
            return Err(SlotError::State { path, message: "expected slots A and B and a booted one".into() });
        }
        // What runs is the booted slot's version, whatever was recorded.
        let booted = state.booted.clone();
        if let Some(record) = state.slots.get_mut(&booted) {
            record.version = Some(self.running_version.clone());
            record.state = "booted".into();
        }
        Ok(state)
    }

    fn save(&self, state: &SimState) -> Result<(), SlotError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| SlotError::State { path: path.clone(), message: e.to_string() })?;
        branchgate_config::write_atomically(&path, &bytes, 0o644).map_err(self.io(&path))
    }

    fn inactive(state: &SimState) -> String {
        state.slots.keys().find(|name| **name != state.booted).cloned().unwrap_or_else(|| "B".into())
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_slot(&self, slot: &str, record: SlotRecord) -> Result<(), SlotError> {
        let mut state = self.load()?;
        state.slots.insert(slot.to_string(), record);
        if state.pending_reboot.as_deref() == Some(slot) {
            state.pending_reboot = None;
        }
        self.save(&state)
    }

    /// Streams the image out of the bundle's squashfs (`unsquashfs -cat`) into `target`,
    /// hashing as it goes; checks size and SHA-256 against the signed manifest.
    fn extract(
        &self,
        bundle: &Path,
        filename: &str,
        size: u64,
        sha256: &str,
        target: &Path,
        progress: &mut dyn FnMut(u8),
    ) -> Result<(), SlotError> {
        let mut child = Command::new("unsquashfs")
            .arg("-cat")
            .arg(bundle)
            .arg(filename)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SlotError::Extract(format!("cannot run unsquashfs (install squashfs-tools): {e}")))?;
        let mut out =
            OpenOptions::new().write(true).create(true).truncate(true).open(target).map_err(self.io(target))?;
        let mut hasher = Sha256::new();
        let mut copied = 0u64;
        let mut buffer = vec![0u8; 1 << 16];
        let mut last_percent = 0u8;
        let copy_result: Result<(), SlotError> = (|| {
            let stdout = child.stdout.as_mut().ok_or_else(|| SlotError::Extract("no output from unsquashfs".into()))?;
            loop {
                let n = stdout.read(&mut buffer).map_err(|e| SlotError::Extract(e.to_string()))?;
                if n == 0 {
                    return Ok(());
                }
                copied += n as u64;
                if copied > size {
                    return Err(SlotError::Mismatch(format!("the image is larger than the {size} bytes signed")));
                }
                hasher.update(&buffer[..n]);
                out.write_all(&buffer[..n]).map_err(self.io(target))?;
                let percent = (copied * 99).checked_div(size).unwrap_or(99) as u8;
                if percent != last_percent {
                    last_percent = percent;
                    progress(percent);
                }
            }
        })();
        if copy_result.is_err() {
            let _ = child.kill();
        }
        let finished = child.wait_with_output().map_err(|e| SlotError::Extract(e.to_string()))?;
        copy_result?;
        if !finished.status.success() {
            return Err(SlotError::Extract(format!(
                "unsquashfs: {}",
                String::from_utf8_lossy(&finished.stderr).trim()
            )));
        }
        if copied != size {
            return Err(SlotError::Mismatch(format!("{copied} bytes, the manifest says {size}")));
        }
        let digest = hex::encode(hasher.finalize());
        if digest != sha256 {
            return Err(SlotError::Mismatch(format!("sha256 {digest}, the manifest says {sha256}")));
        }
        out.sync_all().map_err(self.io(target))
    }
}

impl SlotBackend for SimulatedSlots {
    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }

    fn status(&self) -> Result<SlotsStatus, SlotError> {
        let _guard = self.guard();
        let state = self.load()?;
        if !self.state_path().exists() {
            self.save(&state)?;
        }
        Ok(SlotsStatus {
            backend: "simulated".into(),
            booted: state.booted.clone(),
            pending_reboot: state.pending_reboot.clone(),
            slots: state
                .slots
                .iter()
                .map(|(name, record)| SlotInfo {
                    name: name.clone(),
                    version: record.version.clone(),
                    state: record.state.clone(),
                    booted: *name == state.booted,
                    good: record.good,
                })
                .collect(),
        })
    }

    fn install(&self, bundle: &Path, manifest: &Manifest, progress: &mut dyn FnMut(u8)) -> Result<String, SlotError> {
        let image = manifest.image("rootfs").ok_or(SlotError::NoRootfs)?;
        let slot = {
            let _guard = self.guard();
            let state = self.load()?;
            let slot = Self::inactive(&state);
            self.set_slot(&slot, SlotRecord { version: None, state: "installing".into(), good: false })?;
            slot
        };
        progress(0);
        let target = self.image_path(&slot);
        let mut part = target.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let result = self
            .extract(bundle, &image.filename, image.size, &image.sha256, &part, progress)
            .and_then(|()| std::fs::rename(&part, &target).map_err(self.io(&target)))
            .and_then(|()| File::open(&self.dir).and_then(|d| d.sync_all()).map_err(self.io(&self.dir)));
        let _guard = self.guard();
        match result {
            Ok(()) => {
                self.set_slot(
                    &slot,
                    SlotRecord { version: Some(manifest.version.clone()), state: "installed".into(), good: false },
                )?;
                progress(100);
                Ok(slot)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                self.set_slot(&slot, SlotRecord { version: None, state: "failed".into(), good: false })?;
                Err(e)
            }
        }
    }

    fn reboot(&self) -> Result<RebootPlan, SlotError> {
        let _guard = self.guard();
        let mut state = self.load()?;
        let slot = state
            .slots
            .iter()
            .find(|(name, record)| **name != state.booted && record.state == "installed")
            .map(|(name, _)| name.clone())
            .ok_or(SlotError::NothingInstalled)?;
        state.pending_reboot = Some(slot.clone());
        self.save(&state)?;
        Ok(RebootPlan { slot, simulated: true })
    }

    fn activate(&self, slot: &str) -> Result<(), SlotError> {
        let _guard = self.guard();
        let mut state = self.load()?;
        let booted = state.booted.clone();
        let record = state.slots.get_mut(slot).ok_or_else(|| SlotError::NoSuchSlot(slot.to_string()))?;
        if slot == booted {
            // Stay: the other slot no longer waits for a reboot.
            for other in state.slots.values_mut().filter(|r| r.state == "installed") {
                other.state = "inactive".into();
            }
            state.pending_reboot = None;
            return self.save(&state);
        }
        if record.version.is_none() || !matches!(record.state.as_str(), "installed" | "inactive") {
            let reason = match record.state.as_str() {
                "empty" => "nothing was ever installed into it".to_string(),
                "failed" => "its last install did not finish".to_string(),
                "installing" => "an install into it is running".to_string(),
                other => format!("it is {other}"),
            };
            return Err(SlotError::NotBootable { slot: slot.to_string(), reason });
        }
        // Booted on trial, as after an install: good only after its health check.
        record.state = "installed".into();
        record.good = false;
        state.pending_reboot = None;
        self.save(&state)
    }
}

/// Where an install stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstallState {
    #[default]
    Idle,
    Receiving,
    Verifying,
    Installing,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct InstallStatus {
    pub state: InstallState,
    /// 0–100 for the install into the slot.
    pub progress: u8,
    pub version: Option<String>,
    pub slot: Option<String>,
    pub last_error: Option<String>,
}

/// The one install at a time, shared between the upload handler and the install thread.
#[derive(Debug, Clone, Default)]
pub struct InstallTracker(Arc<Mutex<InstallStatus>>);

impl InstallTracker {
    fn with<T>(&self, f: impl FnOnce(&mut InstallStatus) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn status(&self) -> InstallStatus {
        self.with(|s| s.clone())
    }

    /// Whether a bundle is being received, checked or installed (a reboot, slot switch,
    /// factory reset or cancel must wait).
    pub fn busy(&self) -> bool {
        matches!(self.status().state, InstallState::Receiving | InstallState::Verifying | InstallState::Installing)
    }

    /// Starts receiving a bundle; false when another one is on its way or installing.
    pub fn try_begin(&self) -> bool {
        self.with(|s| {
            if matches!(s.state, InstallState::Receiving | InstallState::Verifying | InstallState::Installing) {
                return false;
            }
            *s = InstallStatus {
                state: InstallState::Receiving,
                last_error: s.last_error.clone(),
                ..Default::default()
            };
            true
        })
    }

    pub fn set_state(&self, state: InstallState) {
        self.with(|s| s.state = state);
    }

    pub fn installing(&self, version: &str) {
        self.with(|s| {
            s.state = InstallState::Installing;
            s.version = Some(version.to_string());
            s.progress = 0;
        });
    }

    pub fn progress(&self, percent: u8) {
        self.with(|s| s.progress = percent.min(100));
    }

    pub fn done(&self, slot: &str) {
        self.with(|s| {
            s.state = InstallState::Done;
            s.progress = 100;
            s.slot = Some(slot.to_string());
            s.last_error = None;
        });
    }

    pub fn fail(&self, error: &str) {
        self.with(|s| {
            s.state = InstallState::Failed;
            s.last_error = Some(error.to_string());
        });
    }

    pub fn set_version(&self, version: &str) {
        self.with(|s| s.version = Some(version.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_state_has_a_booted_good_and_an_empty_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = SimulatedSlots::new(dir.path().join("firmware"), "0.1.0");
        let status = slots.status().expect("status");
        assert_eq!(status.booted, "A");
        assert_eq!(
            status.slots[0],
            SlotInfo {
                name: "A".into(),
                version: Some("0.1.0".into()),
                state: "booted".into(),
                booted: true,
                good: true
            }
        );
        assert_eq!(status.slots[1].state, "empty");
        assert!(dir.path().join("firmware/slots.json").exists());
        assert!(matches!(slots.reboot(), Err(SlotError::NothingInstalled)));
        assert!(matches!(slots.activate("B"), Err(SlotError::NotBootable { .. })), "B is empty");
        assert!(matches!(slots.activate("C"), Err(SlotError::NoSuchSlot(_))));
        slots.activate("A").expect("staying is always allowed");
        // A newer daemon in the booted slot shows its own version.
        let newer = SimulatedSlots::new(dir.path().join("firmware"), "0.2.0");
        assert_eq!(newer.status().expect("status").slots[0].version.as_deref(), Some("0.2.0"));
    }

    #[test]
    fn the_next_boot_can_be_pointed_at_either_installed_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = SimulatedSlots::new(dir.path(), "1.0.0");
        slots.status().expect("status");
        slots
            .set_slot("B", SlotRecord { version: Some("2.0.0".into()), state: "installed".into(), good: false })
            .expect("installed");
        slots.activate("A").expect("stay");
        let status = slots.status().expect("status");
        assert_eq!(status.slots[1].state, "inactive", "B no longer waits for a reboot");
        assert!(matches!(slots.reboot(), Err(SlotError::NothingInstalled)));
        slots.activate("B").expect("B again");
        let status = slots.status().expect("status");
        assert_eq!((status.slots[1].state.as_str(), status.slots[1].good), ("installed", false), "on trial");
        assert_eq!(slots.reboot().expect("reboot").slot, "B");
        slots.set_slot("B", SlotRecord { version: None, state: "failed".into(), good: false }).expect("failed");
        let error = slots.activate("B").expect_err("failed install");
        assert!(error.to_string().contains("did not finish"), "{error}");
    }

    #[test]
    fn tracker_allows_one_install_at_a_time() {
        let tracker = InstallTracker::default();
        assert!(tracker.try_begin());
        assert!(!tracker.try_begin());
        tracker.fail("bad signature");
        assert!(tracker.try_begin(), "a failed install does not block the next");
        assert_eq!(tracker.status().last_error.as_deref(), Some("bad signature"));
        tracker.installing("1.0");
        tracker.progress(150);
        assert_eq!(tracker.status().progress, 100);
        tracker.done("B");
        assert_eq!(tracker.status().state, InstallState::Done);
        assert_eq!(tracker.status().last_error, None);
    }
}
