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

/// Where `--usb-automount` mounts sticks (one directory per partition, read-only).
pub const AUTOMOUNT_DIR: &str = "/run/branchgate/usb";

/// The media roots and what was found there.
#[derive(Debug, Clone)]
pub struct UsbWatcher {
    roots: Arc<Vec<PathBuf>>,
    checked: Arc<Mutex<HashMap<FileKey, UsbBundle>>>,
    /// Mount USB partitions here before each scan (the box has no automounter).
    automount: Option<Arc<Automount>>,
}

impl Default for UsbWatcher {
    fn default() -> Self {
        UsbWatcher::new(DEFAULT_ROOTS.iter().map(PathBuf::from).collect())
    }
}

impl UsbWatcher {
    pub fn new(roots: Vec<PathBuf>) -> UsbWatcher {
        UsbWatcher { roots: Arc::new(roots), checked: Arc::default(), automount: None }
    }

    /// Also mounts the partitions of USB block devices read-only under `mount_dir` (which
    /// becomes a root) before each scan, and unmounts those of sticks pulled out.
    pub fn with_automount(mut self, mount_dir: PathBuf) -> UsbWatcher {
        let mut roots = self.roots.as_ref().clone();
        if !roots.contains(&mount_dir) {
            roots.push(mount_dir.clone());
        }
        self.roots = Arc::new(roots);
        self.automount = Some(Arc::new(Automount::new(mount_dir)));
        self
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The bundles on the media now, each checked by `agent` (blocking: a new file is read whole).
    pub fn list(&self, agent: &Agent, allow_downgrade: bool) -> Vec<UsbBundle> {
        if let Some(automount) = &self.automount {
            automount.sync();
        }
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
                let entry = crate::history::HistoryEntry::now(
                    crate::history::HistoryEvent::Refused,
                    format!("bundle from USB refused: {e}"),
                )
                .by(by);
                agent.record(entry);
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

/// Mounts USB sticks on a box without an automounter: each partition (or a whole disk
/// without a partition table) of a block device on a USB bus goes read-only, without device
/// files, set-uid or exec, to `<dir>/<name>`; gone devices are unmounted lazily.
#[derive(Debug)]
pub struct Automount {
    dir: PathBuf,
    sys_block: PathBuf,
    dev: PathBuf,
    /// One sync at a time (the page, the API and the button may ask at once).
    lock: Mutex<()>,
}

/// File systems tried, in order (what sticks come formatted with).
const STICK_FILESYSTEMS: &[&str] = &["vfat", "exfat", "ext4", "iso9660"];

impl Automount {
    pub fn new(dir: PathBuf) -> Automount {
        Automount { dir, sys_block: PathBuf::from("/sys/block"), dev: PathBuf::from("/dev"), lock: Mutex::new(()) }
    }

    /// Mounts what is new, unmounts what went; failures are logged (a stick of an unknown
    /// file system must not stop the scan of the others).
    pub fn sync(&self) {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let present = usb_partitions(&self.sys_block);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mounted = mounted_under(&mounts, &self.dir, &self.dev);
        for (name, target) in &mounted {
            if !present.contains(name) {
                match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) => tracing::info!(device = %name, "USB stick gone: unmounted"),
                    Err(e) => tracing::warn!(device = %name, error = %e, "cannot unmount the pulled USB stick"),
                }
                let _ = std::fs::remove_dir(target);
            }
        }
        for name in present.iter().filter(|name| !mounted.iter().any(|(m, _)| m == *name)) {
            let target = self.dir.join(name);
            if let Err(e) = std::fs::create_dir_all(&target) {
                tracing::warn!(error = %e, path = %target.display(), "cannot create the USB mount point");
                continue;
            }
            let source = self.dev.join(name);
            let flags = nix::mount::MsFlags::MS_RDONLY
                | nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC;
            let mounted = STICK_FILESYSTEMS
                .iter()
                .find(|fs| nix::mount::mount(Some(&source), &target, Some(**fs), flags, None::<&str>).is_ok());
            match mounted {
                Some(fs) => {
                    tracing::info!(device = %name, filesystem = fs, path = %target.display(), "USB stick mounted read-only")
                }
                None => {
                    tracing::warn!(device = %name, "USB partition not mounted: no known file system (vfat, exfat, ext4, iso9660)");
                    let _ = std::fs::remove_dir(&target);
                }
            }
        }
    }
}

/// The partitions (`sda1`) of block devices on a USB bus under `sys_block` (`/sys/block`),
/// or the whole device (`sda`) when it has none.
fn usb_partitions(sys_block: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_block) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        // /sys/block/sda -> ../devices/pci0000:00/.../usb2/2-1/2-1:1.0/host0/.../block/sda
        let on_usb = std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().contains("/usb"));
        if !on_usb {
            continue;
        }
        let disk = entry.file_name().to_string_lossy().into_owned();
        let mut partitions: Vec<String> = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|part| part.path().join("partition").exists())
            .map(|part| part.file_name().to_string_lossy().into_owned())
            .collect();
        if partitions.is_empty() {
            partitions.push(disk);
        }
        found.extend(partitions);
    }
    found.sort();
    found
}

/// Our mounts in `/proc/self/mounts` text: `<dev>/<name>` mounted on `<dir>/<name>`, as
/// (name, mount point). Anything else under `dir` is not ours to unmount.
fn mounted_under(mounts: &str, dir: &Path, dev: &Path) -> Vec<(String, PathBuf)> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((unescape_mount_path(fields.next()?), unescape_mount_path(fields.next()?)))
        })
        .filter_map(|(source, target)| {
            let target = PathBuf::from(target);
            let name = target.strip_prefix(dir).ok()?.to_str()?.to_string();
            let ours = !name.is_empty() && !name.contains('/') && Path::new(&source) == dev.join(&name);
            ours.then_some((name, target))
        })
        .collect()
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn usb_block_devices_are_found_by_their_bus_and_mounts_read_back() {
        let sys = tempfile::tempdir().expect("tempdir");
        let devices = sys.path().join("devices");
        // A stick with a partition table, a superfloppy stick, and a virtio disk.
        for (disk, bus, parts) in [
            ("sda", "pci0000:00/0000:00:04.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0/block", &["sda1"][..]),
            ("sdb", "pci0000:00/0000:00:04.0/usb2/2-2/2-2:1.0/host1/target1:0:0/1:0:0:0/block", &[][..]),
            ("vda", "pci0000:00/0000:00:03.0/virtio1/block", &["vda1", "vda2"][..]),
        ] {
            let dir = devices.join(bus).join(disk);
            std::fs::create_dir_all(&dir).expect("dirs");
            for part in parts {
                std::fs::create_dir_all(dir.join(part)).expect("dirs");
                std::fs::write(dir.join(part).join("partition"), "1").expect("write");
            }
            std::os::unix::fs::symlink(&dir, sys.path().join(disk)).expect("link");
        }
        assert_eq!(usb_partitions(sys.path()), ["sda1", "sdb"]);
        assert!(usb_partitions(&sys.path().join("missing")).is_empty());

        let mounts = "/dev/vda3 / ext4 ro 0 0\n/dev/sda1 /run/branchgate/usb/sda1 vfat ro 0 0\n\
                      /dev/sdb /run/branchgate/usb/my\\040stick vfat ro 0 0\n/dev/sdc /run/branchgate/usb/a/b vfat ro 0 0\n\
                      tmpfs /run/branchgate/usb/sdd tmpfs rw 0 0\n/dev/my\\040disk /run/branchgate/usb/my\\040disk vfat ro 0 0\n";
        let dir = Path::new(AUTOMOUNT_DIR);
        // Only a device mounted on its own name is ours (not the tmpfs someone put there).
        assert_eq!(
            mounted_under(mounts, dir, Path::new("/dev")),
            vec![("sda1".to_string(), dir.join("sda1")), ("my disk".to_string(), dir.join("my disk"))]
        );
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
