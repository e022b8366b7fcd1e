//! Bundles on a USB stick. The field tech plugs in a stick holding a `.raucb`; the box lists
//! what it finds on mounted media (each checked as an upload would be: signature, `compatible`,
//! version) and installs one after a confirmation in the UI or a short press of the reset
//! button. The stick's file is copied to the data partition first, so pulling the stick
//! during the install cannot leave a half-read bundle behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::agent::{AcceptError, Agent, ReceiveGuard, bundle_budget};
use crate::manifest::Manifest;

/// Where removable media get mounted on Linux systems (udisks: `/run/media/<user>/<label>`,
/// older automounters `/media/<label>`; `/mnt` by hand).
pub const DEFAULT_ROOTS: &[&str] = &["/media", "/run/media", "/mnt"];
/// How deep below a root bundles are looked for (`/run/media/<user>/<label>/x.raucb` is 3).
const MAX_DEPTH: usize = 3;
/// Entries looked at per scan at most: a stick full of photos must not stall the box.
const MAX_ENTRIES: usize = 5000;
/// Where the chosen bundle is copied before it is checked again and installed.
const COPY_FILE: &str = "usb.raucb";

/// A bundle found on removable media.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsbBundle {
    /// Its full path: the name the install asks for (only paths of the last scan are accepted).
    pub path: String,
    pub size: u64,
    pub modified_ms: u64,
    pub version: Option<String>,
    pub compatible: Option<String>,
    /// Why the box would refuse it; none: it can be installed.
    pub refused: Option<String>,
    /// The refusal's short code (`untrusted`, `incompatible`, `downgrade`, ...).
    pub reason: Option<String>,
}

/// Why a USB install did not start.
#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    #[error("there is no bundle {0} on the inserted media (any more)")]
    NotFound(String),
    #[error("another bundle is being received or installed")]
    Busy,
    #[error("copying the bundle from the stick failed: {0}")]
    Copy(String),
    #[error(transparent)]
    Refused(#[from] AcceptError),
}

/// Files ending in `.raucb` under `roots`, at most [`MAX_DEPTH`] levels down; hidden entries
/// and symbolic links are skipped (a link could point anywhere on the box).
pub fn scan(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut budget = MAX_ENTRIES;
    for root in roots {
        walk(root, 0, &mut budget, &mut found);
    }
    found.sort();
    found
}

fn walk(dir: &Path, depth: usize, budget: &mut usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() && depth < MAX_DEPTH {
            walk(&entry.path(), depth + 1, budget, found);
        } else if kind.is_file() && name.ends_with(".raucb") {
            found.push(entry.path());
        }
    }
}

/// What the box decided about one file, kept while its size and time stay the same (checking
/// a bundle reads all of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    size: u64,
    modified_ms: u64,
    allow_downgrade: bool,
}

/// The media roots and what was found there.
#[derive(Debug, Clone)]
pub struct UsbWatcher {
    roots: Arc<Vec<PathBuf>>,
    checked: Arc<Mutex<HashMap<FileKey, UsbBundle>>>,
}

impl Default for UsbWatcher {
    fn default() -> Self {
        UsbWatcher::new(DEFAULT_ROOTS.iter().map(PathBuf::from).collect())
    }
}

impl UsbWatcher {
    pub fn new(roots: Vec<PathBuf>) -> UsbWatcher {
        UsbWatcher { roots: Arc::new(roots), checked: Arc::default() }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The bundles on the media now, each checked by `agent` (blocking: a new file is read whole).
    pub fn list(&self, agent: &Agent, allow_downgrade: bool) -> Vec<UsbBundle> {
        let mut bundles = Vec::new();
        let mut keep = std::collections::HashSet::new();
        for path in scan(&self.roots) {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            let key = FileKey { path: path.clone(), size: meta.len(), modified_ms, allow_downgrade };
            let known = self.lock().get(&key).cloned();
            let bundle = match known {
                Some(bundle) => bundle,
                None => {
                    let bundle = check(agent, &key);
                    self.lock().insert(key.clone(), bundle.clone());
                    bundle
                }
            };
            keep.insert(key);
            bundles.push(bundle);
        }
        // Media pulled out: forget them.
        self.lock().retain(|key, _| keep.contains(key));
        bundles
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, UsbBundle>> {
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the bundle at `path` (one of [`UsbWatcher::list`]'s) into `dir`, checks the copy
    /// and starts installing it. Blocking. `by` names who asked in the history.
    pub fn install(
        &self,
        agent: &Agent,
        path: &str,
        dir: &Path,
        allow_downgrade: bool,
        by: &str,
    ) -> Result<Manifest, UsbError> {
        let known = self.list(agent, allow_downgrade).into_iter().any(|b| b.path == path);
        if !known {
            return Err(UsbError::NotFound(path.to_string()));
        }
        if !agent.tracker.try_begin() {
            return Err(UsbError::Busy);
        }
        let copy = dir.join(COPY_FILE);
        let guard = ReceiveGuard::new(agent.tracker.clone(), copy.clone());
        let copied = std::fs::create_dir_all(dir).and_then(|()| {
            let size = std::fs::metadata(path)?.len();
            if size > bundle_budget(dir) {
                return Err(std::io::Error::other(format!("{size} bytes do not fit on the data partition")));
            }
            std::fs::copy(path, &copy)?;
            std::fs::File::open(&copy)?.sync_all()
        });
        if let Err(e) = copied {
            let error = UsbError::Copy(e.to_string());
            guard.fail(&error.to_string());
            return Err(error);
        }
        agent.verifying();
        match agent.accept(&copy, allow_downgrade) {
            Ok(manifest) => {
                guard.disarm();
                agent.install_in_background(copy, manifest.clone(), true, by);
                Ok(manifest)
            }
            Err(e) => {
                guard.fail(&e.to_string());
                Err(e.into())
            }
        }
    }
}

fn check(agent: &Agent, key: &FileKey) -> UsbBundle {
    let mut bundle = UsbBundle {
        path: key.path.to_string_lossy().into_owned(),
        size: key.size,
        modified_ms: key.modified_ms,
        version: None,
        compatible: None,
        refused: None,
        reason: None,
    };
    match agent.accept(&key.path, key.allow_downgrade) {
        Ok(manifest) => {
            bundle.version = Some(manifest.version);
            bundle.compatible = Some(manifest.compatible);
        }
        Err(e) => {
            bundle.refused = Some(e.to_string());
            bundle.reason = Some(e.reason().to_string());
        }
    }
    bundle
}

/// What a short press of the reset button installs: the one installable bundle on the media
/// (with two or more the tech must choose in the UI; with none the press does nothing).
pub fn button_choice(bundles: &[UsbBundle]) -> Option<&UsbBundle> {
    let mut installable = bundles.iter().filter(|b| b.refused.is_none());
    match (installable.next(), installable.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(path: &str, refused: Option<&str>) -> UsbBundle {
        UsbBundle {
            path: path.into(),
            size: 1,
            modified_ms: 0,
            version: refused.is_none().then(|| "2.0.0".to_string()),
            compatible: None,
            refused: refused.map(str::to_string),
            reason: None,
        }
    }

    #[test]
    fn the_button_installs_only_a_single_installable_bundle() {
        assert_eq!(button_choice(&[]), None);
        let good = bundle("/media/a/good.raucb", None);
        let bad = bundle("/media/a/bad.raucb", Some("downgrade refused"));
        assert_eq!(button_choice(&[bad.clone(), good.clone()]), Some(&good));
        assert_eq!(button_choice(std::slice::from_ref(&bad)), None);
        assert_eq!(button_choice(&[good, bundle("/media/b/other.raucb", None)]), None, "choose in the UI");
    }

    #[test]
    fn the_scan_finds_bundles_on_media_but_not_hidden_deep_or_linked_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        let stick = root.path().join("user").join("STICK");
        std::fs::create_dir_all(stick.join(".Trash")).expect("dirs");
        std::fs::create_dir_all(stick.join("a").join("b")).expect("dirs");
        std::fs::write(stick.join("update.raucb"), b"x").expect("write");
        std::fs::write(stick.join("notes.txt"), b"x").expect("write");
        std::fs::write(stick.join(".Trash").join("old.raucb"), b"x").expect("write");
        std::fs::write(stick.join("a").join("b").join("deep.raucb"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", stick.join("link.raucb")).expect("link");
        let found = scan(&[root.path().to_path_buf(), root.path().join("missing")]);
        assert_eq!(found, vec![stick.join("update.raucb")]);
    }
}
