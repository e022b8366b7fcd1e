//! The update history: what happened to the box's firmware (installs, refusals, reboots, boots,
//! fallbacks, factory resets), oldest first, one JSON object per line in
//! `DATA_DIR/firmware/history.jsonl`. A field tech reads it to learn why a box runs the version
//! it runs; the daemon reads it at start to notice that the bootloader fell back.
//!
//! Lines are appended and synced (an entry survives a power cut right after the event); the
//! file is cut to the newest [`KEEP_ENTRIES`] when it passes [`MAX_BYTES`]. A damaged line
//! (power cut in the middle of a write) is skipped, never fatal.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::slots::SlotsStatus;

/// The history file in the firmware directory.
pub const HISTORY_FILE: &str = "history.jsonl";

/// Past this size the file is cut to the newest [`KEEP_ENTRIES`].
pub const MAX_BYTES: u64 = 256 * 1024;

/// Entries kept when the file is cut.
pub const KEEP_ENTRIES: usize = 500;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// A bundle was refused before installing (signature, compatible, version, ...).
    Refused,
    /// An accepted bundle started installing into the inactive slot.
    Installing,
    /// The install finished; the slot boots after a reboot.
    Installed,
    InstallFailed,
    /// An install the machine did not live through (power loss, reset).
    Interrupted,
    /// A reboot was asked for (into `slot`).
    Reboot,
    /// The next boot was pointed at `slot` by hand.
    SlotActivated,
    /// The box came up in `slot` running `version` (recorded when either changed).
    Booted,
    /// The booted slot passed its health check and was marked good.
    MarkedGood,
    /// The booted slot failed its health check: the box restarts without marking it good.
    HealthFailed,
    /// The box came up in another slot than the reboot asked for: the bootloader fell back.
    Fallback,
    FactoryReset,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub event: HistoryEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Who asked (an admin user, `reset-button`, `hawkbit`), when someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// For a person: what happened and why.
    pub message: String,
    /// A reboot that only was recorded (simulated slots): no boot follows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
}

/// Milliseconds since the Unix epoch (0 before it: a clock that has not been set yet).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl HistoryEntry {
    /// An entry stamped now.
    pub fn now(event: HistoryEvent, message: impl Into<String>) -> HistoryEntry {
        HistoryEntry {
            at_ms: now_ms(),
            event,
            version: None,
            slot: None,
            by: None,
            message: message.into(),
            simulated: false,
        }
    }

    pub fn version(mut self, version: impl Into<String>) -> HistoryEntry {
        self.version = Some(version.into());
        self
    }

    pub fn slot(mut self, slot: impl Into<String>) -> HistoryEntry {
        self.slot = Some(slot.into());
        self
    }

    pub fn by(mut self, who: impl Into<String>) -> HistoryEntry {
        self.by = Some(who.into());
        self
    }

    pub fn simulated(mut self, simulated: bool) -> HistoryEntry {
        self.simulated = simulated;
        self
    }
}

/// The history file, shared by the upload handler, the install thread and the daemon.
#[derive(Debug, Clone)]
pub struct UpdateHistory {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl UpdateHistory {
    /// The history in `dir` (normally `DATA_DIR/firmware`); nothing is read or made yet.
    pub fn new(dir: &Path) -> UpdateHistory {
        UpdateHistory { path: dir.join(HISTORY_FILE), lock: Arc::new(Mutex::new(())) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an entry (blocking: it syncs). A failure only loses the entry: callers log it.
    pub fn record(&self, entry: &HistoryEntry) -> io::Result<()> {
        let _guard = self.guard();
        self.append(entry)
    }

    fn append(&self, entry: &HistoryEntry) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        // A line cut short by a power loss must not swallow this one.
        let mut line = Vec::new();
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1)?;
            if last[0] != b'\n' {
                line.push(b'\n');
            }
        }
        line.extend(serde_json::to_vec(entry).map_err(io::Error::other)?);
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()?;
        if file.metadata()?.len() > MAX_BYTES {
            drop(file);
            let entries = self.read_unlocked()?;
            let keep = &entries[entries.len().saturating_sub(KEEP_ENTRIES)..];
            let mut bytes = Vec::new();
            for entry in keep {
                bytes.extend(serde_json::to_vec(entry).map_err(io::Error::other)?);
                bytes.push(b'\n');
            }
            branchgate_config::write_atomically(&self.path, &bytes, 0o644)?;
        }
        Ok(())
    }

    /// Every readable entry, oldest first (none when there is no file yet).
    pub fn entries(&self) -> io::Result<Vec<HistoryEntry>> {
        let _guard = self.guard();
        self.read_unlocked()
    }

    fn read_unlocked(&self) -> io::Result<Vec<HistoryEntry>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(bytes.split(|b| *b == b'\n').filter_map(|line| serde_json::from_slice(line).ok()).collect())
    }

    /// At the daemon's start: records the boot when the slot or the version changed since the
    /// last one, and a [`HistoryEvent::Fallback`] when a real reboot asked for since then went
    /// to another slot than the one that came up. Returns the entries it added.
    pub fn observe_boot(&self, status: &SlotsStatus, running_version: &str) -> io::Result<Vec<HistoryEntry>> {
        let _guard = self.guard();
        let entries = self.read_unlocked()?;
        let added = boot_entries(&entries, status, running_version);
        for entry in &added {
            self.append(entry)?;
        }
        Ok(added)
    }
}

/// What [`UpdateHistory::observe_boot`] adds to `entries` (pure: the tested part).
fn boot_entries(entries: &[HistoryEntry], status: &SlotsStatus, running_version: &str) -> Vec<HistoryEntry> {
    let booted = status.booted.as_str();
    let last_boot = entries.iter().rposition(|e| e.event == HistoryEvent::Booted);
    let since_boot = &entries[last_boot.map_or(0, |i| i + 1)..];
    let mut added = Vec::new();
    // What ended the last run: a real reboot into a slot, or a failed health check of one.
    let ending = since_boot
        .iter()
        .rev()
        .find(|e| (e.event == HistoryEvent::Reboot && !e.simulated) || e.event == HistoryEvent::HealthFailed);
    if let Some((ending, left)) = ending.and_then(|e| Some(e).zip(e.slot.as_deref())).filter(|(_, s)| *s != booted) {
        let version = status
            .slots
            .iter()
            .find(|s| s.name == left)
            .and_then(|s| s.version.clone())
            .map(|v| format!(" ({v})"))
            .unwrap_or_default();
        let why = if ending.event == HistoryEvent::HealthFailed {
            "failed its health check"
        } else {
            "did not come up healthy"
        };
        added.push(
            HistoryEntry::now(
                HistoryEvent::Fallback,
                format!("slot {left}{version} {why}: the bootloader went back to slot {booted} ({running_version})"),
            )
            .slot(booted)
            .version(running_version),
        );
    }
    let previous = last_boot.map(|i| &entries[i]);
    let changed =
        previous.is_none_or(|p| p.slot.as_deref() != Some(booted) || p.version.as_deref() != Some(running_version));
    if changed || !added.is_empty() {
        added.push(
            HistoryEntry::now(HistoryEvent::Booted, format!("running {running_version} from slot {booted}"))
                .slot(booted)
                .version(running_version),
        );
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::SlotInfo;

    fn status(booted: &str, other_version: Option<&str>) -> SlotsStatus {
        let other = if booted == "A" { "B" } else { "A" };
        SlotsStatus {
            backend: "rauc".into(),
            booted: booted.into(),
            pending_reboot: None,
            slots: vec![
                SlotInfo {
                    name: booted.into(),
                    version: Some("1.0.0".into()),
                    state: "booted".into(),
                    booted: true,
                    good: true,
                },
                SlotInfo {
                    name: other.into(),
                    version: other_version.map(str::to_owned),
                    state: "inactive".into(),
                    booted: false,
                    good: false,
                },
            ],
        }
    }

    fn events(entries: &[HistoryEntry]) -> Vec<HistoryEvent> {
        entries.iter().map(|e| e.event).collect()
    }

    #[test]
    fn entries_survive_a_damaged_line_and_keep_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = UpdateHistory::new(dir.path());
        assert!(history.entries().expect("read").is_empty(), "no file yet");
        history
            .record(&HistoryEntry::now(HistoryEvent::Installing, "installing 2.0.0").version("2.0.0"))
            .expect("write");
        // A power cut in the middle of a line.
        let mut file = OpenOptions::new().append(true).open(history.path()).expect("open");
        file.write_all(b"{\"at_ms\":1,\"event\":\"insta").expect("write");
        drop(file);
        history.record(&HistoryEntry::now(HistoryEvent::Installed, "installed").slot("B")).expect("write");
        let entries = history.entries().expect("read");
        assert_eq!(events(&entries), [HistoryEvent::Installing, HistoryEvent::Installed]);
        assert_eq!(entries[0].version.as_deref(), Some("2.0.0"));
        assert_eq!(entries[1].slot.as_deref(), Some("B"));
    }

    #[test]
    fn a_long_history_is_cut_to_the_newest_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = UpdateHistory::new(dir.path());
        let filler = "x".repeat(400);
        let mut n = 0;
        while std::fs::metadata(history.path()).map(|m| m.len()).unwrap_or(0) <= MAX_BYTES / 2 || n < KEEP_ENTRIES {
            history.record(&HistoryEntry::now(HistoryEvent::Refused, format!("{n} {filler}"))).expect("write");
            n += 1;
        }
        for _ in 0..KEEP_ENTRIES {
            history.record(&HistoryEntry::now(HistoryEvent::Refused, format!("{n} {filler}"))).expect("write");
            n += 1;
        }
        let entries = history.entries().expect("read");
        assert!(entries.len() <= KEEP_ENTRIES * 2, "{} entries", entries.len());
        assert!(std::fs::metadata(history.path()).expect("file").len() <= MAX_BYTES + 1024);
        assert!(entries.last().expect("last").message.starts_with(&format!("{} ", n - 1)), "the newest stays");
    }

    #[test]
    fn a_boot_is_recorded_when_slot_or_version_change() {
        let first = boot_entries(&[], &status("A", None), "1.0.0");
        assert_eq!(events(&first), [HistoryEvent::Booted]);
        assert_eq!(first[0].slot.as_deref(), Some("A"));
        assert!(boot_entries(&first, &status("A", None), "1.0.0").is_empty(), "a restart of the same");
        assert_eq!(events(&boot_entries(&first, &status("A", None), "1.0.1")), [HistoryEvent::Booted]);
        assert_eq!(events(&boot_entries(&first, &status("B", None), "1.0.0")), [HistoryEvent::Booted]);
    }

    #[test]
    fn a_reboot_that_came_up_elsewhere_is_a_fallback() {
        let mut entries = boot_entries(&[], &status("A", None), "1.0.0");
        entries.push(HistoryEntry::now(HistoryEvent::Installed, "installed").slot("B").version("3.0.0"));
        entries.push(HistoryEntry::now(HistoryEvent::Reboot, "reboot").slot("B"));
        let added = boot_entries(&entries, &status("A", Some("3.0.0")), "1.0.0");
        assert_eq!(events(&added), [HistoryEvent::Fallback, HistoryEvent::Booted]);
        assert!(added[0].message.contains("slot B (3.0.0) did not come up healthy"), "{}", added[0].message);
        assert!(added[0].message.contains("slot A (1.0.0)"), "{}", added[0].message);

        // The reboot went where it should: a plain boot.
        let added = boot_entries(&entries, &status("B", Some("1.0.0")), "3.0.0");
        assert_eq!(events(&added), [HistoryEvent::Booted]);

        // B came up but failed its health check (the daemon restarted the box unmarked).
        let mut tried = entries.clone();
        tried.extend(boot_entries(&entries, &status("B", Some("1.0.0")), "3.0.0"));
        tried.push(HistoryEntry::now(HistoryEvent::HealthFailed, "admin UI down").slot("B").version("3.0.0"));
        let added = boot_entries(&tried, &status("A", Some("3.0.0")), "1.0.0");
        assert_eq!(events(&added), [HistoryEvent::Fallback, HistoryEvent::Booted]);
        assert!(added[0].message.contains("slot B (3.0.0) failed its health check"), "{}", added[0].message);

        // A simulated reboot (no bootloader) never counts as a fallback.
        entries.pop();
        entries.push(HistoryEntry::now(HistoryEvent::Reboot, "reboot").slot("B").simulated(true));
        assert!(boot_entries(&entries, &status("A", Some("3.0.0")), "1.0.0").is_empty());
    }
}
