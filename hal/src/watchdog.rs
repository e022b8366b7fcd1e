//! Watchdogs: the kernel's `/dev/watchdog` (a hardware timer that resets the
//! board when nobody pets it), systemd's service watchdog (`WatchdogSec=`,
//! petted with `WATCHDOG=1`), and a simulated one that only counts.
//!
//! Petting is the caller's decision: the daemon pets from its health loop
//! only while its services are healthy, so a hung or failing box is reset.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogKind {
    /// A kernel watchdog device (`/dev/watchdog`).
    Device,
    /// systemd's per-service watchdog.
    Systemd,
    Simulated,
}

/// What the devices API shows of a watchdog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchdogInfo {
    pub kind: WatchdogKind,
    pub simulated: bool,
    /// The device node, for [`WatchdogKind::Device`].
    pub device: Option<String>,
    /// The driver's identity (`i6300ESB timer`), from sysfs.
    pub identity: Option<String>,
    /// Seconds without a pet before the reset (the device's, or systemd's `WatchdogSec=`).
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("{device}: {what}: {source}")]
    Io {
        device: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("systemd watchdog: {0}")]
    Notify(std::io::Error),
}

pub trait Watchdog: Send {
    fn info(&self) -> WatchdogInfo;
    /// Tells the watchdog all is well.
    fn pet(&mut self) -> Result<(), WatchdogError>;
    /// How often to pet: a third of the timeout, so one late pet is not a reset.
    fn pet_interval(&self) -> Duration;
    /// A clean stop: disarms what can be disarmed (the device's magic close).
    fn stop(self: Box<Self>) -> Result<(), WatchdogError>;
}

// ---------------------------------------------------------------- /dev/watchdog

// <linux/watchdog.h>: WDIOC_KEEPALIVE = _IOR('W', 5, int), WDIOC_SETTIMEOUT = _IOWR('W', 6, int),
// WDIOC_GETTIMEOUT = _IOR('W', 7, int).
mod ioctl {
    #![allow(unsafe_code)]
    nix::ioctl_read!(keepalive, b'W', 5, libc::c_int);
    nix::ioctl_readwrite!(set_timeout, b'W', 6, libc::c_int);
    nix::ioctl_read!(get_timeout, b'W', 7, libc::c_int);

    /// WDIOC_KEEPALIVE on an open watchdog device.
    pub fn pet(fd: std::os::fd::RawFd) -> nix::Result<()> {
        let mut dummy: libc::c_int = 0;
        // SAFETY: `fd` is an open watchdog device owned by the caller for the
        // call's duration, and the pointer is to a live c_int, the size the
        // ioctl number encodes.
        unsafe { keepalive(fd, &mut dummy) }.map(|_| ())
    }

    /// WDIOC_SETTIMEOUT; returns the timeout the driver chose (it may round).
    pub fn set(fd: std::os::fd::RawFd, seconds: libc::c_int) -> nix::Result<libc::c_int> {
        let mut value = seconds;
        // SAFETY: as above; the driver reads and writes back one c_int.
        unsafe { set_timeout(fd, &mut value) }?;
        Ok(value)
    }

    /// WDIOC_GETTIMEOUT.
    pub fn get(fd: std::os::fd::RawFd) -> nix::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        // SAFETY: as above; the driver writes one c_int.
        unsafe { get_timeout(fd, &mut value) }?;
        Ok(value)
    }
}

/// A kernel watchdog device. Opening it starts the timer; dropping it without
/// [`Watchdog::stop`] leaves the timer running (an unexpected exit — a crash —
/// then resets the box, which is the point).
#[derive(Debug)]
pub struct DeviceWatchdog {
    path: PathBuf,
    file: Option<File>,
    timeout: u64,
    identity: Option<String>,
}

fn io_err(device: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WatchdogError + use<> {
    let device = device.display().to_string();
    move |source| WatchdogError::Io { device, what, source }
}

/// The driver's identity for `/dev/watchdogN` (`/dev/watchdog` is watchdog0's legacy node).
fn identity(path: &Path, sysfs: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let name = if name == "watchdog" { "watchdog0".to_string() } else { name };
    std::fs::read_to_string(sysfs.join(name).join("identity")).ok().map(|s| s.trim().to_string())
}

impl DeviceWatchdog {
    /// Opens `path` (which starts the timer) and asks for `timeout`; a driver
    /// that cannot set it keeps its own, which is then what is reported.
    pub fn open(path: &Path, timeout: Duration) -> Result<Self, WatchdogError> {
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(path, "open"))?;
        let fd = file.as_raw_fd();
        let wanted = libc::c_int::try_from(timeout.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
        let timeout = match ioctl::set(fd, wanted) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(device = %path.display(), error = %e, "WDIOC_SETTIMEOUT failed; keeping the driver's timeout");
                match ioctl::get(fd) {
                    Ok(t) => t,
                    Err(e) => {
                        // Not usable: disarm what opening armed (magic close) before giving up.
                        let mut file = file;
                        let _ = file.write_all(b"V");
                        return Err(io_err(path, "WDIOC_GETTIMEOUT")(e.into()));
                    }
                }
            }
        };
        Ok(DeviceWatchdog {
            path: path.to_path_buf(),
            file: Some(file),
            timeout: u64::try_from(timeout).unwrap_or(0),
            identity: identity(path, Path::new("/sys/class/watchdog")),
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

impl Watchdog for DeviceWatchdog {
    fn info(&self) -> WatchdogInfo {
        WatchdogInfo {
            kind: WatchdogKind::Device,
            simulated: false,
            device: Some(self.path.display().to_string()),
            identity: self.identity.clone(),
            timeout_seconds: Some(self.timeout),
        }
    }

    fn pet(&mut self) -> Result<(), WatchdogError> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        if ioctl::pet(file.as_raw_fd()).is_err() {
            // Every driver accepts a write as a keepalive, even without the ioctl.
            file.write_all(b"\0").map_err(io_err(&self.path, "keepalive"))?;
        }
        Ok(())
    }

    fn pet_interval(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1)).div_f64(3.0)
    }

    fn stop(mut self: Box<Self>) -> Result<(), WatchdogError> {
        // Magic close: 'V' just before close disarms the timer (unless the driver is nowayout).
        if let Some(mut file) = self.file.take() {
            file.write_all(b"V").map_err(io_err(&self.path, "magic close"))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- systemd

/// The watchdog interval systemd asks for, with sd_watchdog_enabled(3)'s
/// rules: `WATCHDOG_USEC` set and positive, and `WATCHDOG_PID`, when set, ours.
/// (The sd-notify crate also insists on `WATCHDOG_PID` being set.)
pub fn watchdog_usec(usec: Option<String>, pid: Option<String>) -> Option<u64> {
    let usec = usec?.parse::<u64>().ok().filter(|u| *u > 0)?;
    match pid {
        Some(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(usec),
    }
}

/// systemd's service watchdog: `WATCHDOG=1` on the notify socket.
#[derive(Debug)]
pub struct SystemdWatchdog {
    usec: u64,
}

impl SystemdWatchdog {
    /// The service watchdog when systemd set one up for this process.
    pub fn from_env() -> Option<Self> {
        watchdog_usec(std::env::var("WATCHDOG_USEC").ok(), std::env::var("WATCHDOG_PID").ok())
            .map(|usec| SystemdWatchdog { usec })
    }
}

impl Watchdog for SystemdWatchdog {
    fn info(&self) -> WatchdogInfo {
        WatchdogInfo {
            kind: WatchdogKind::Systemd,
            simulated: false,
            device: None,
            identity: Some("systemd WatchdogSec".into()),
            timeout_seconds: Some(self.usec / 1_000_000),
        }
    }
    fn pet(&mut self) -> Result<(), WatchdogError> {
        sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]).map_err(WatchdogError::Notify)
    }
    fn pet_interval(&self) -> Duration {
        // sd_watchdog_enabled(3) recommends half the interval.
        Duration::from_micros(self.usec / 2)
    }
    fn stop(self: Box<Self>) -> Result<(), WatchdogError> {
        Ok(())
    }
}

// ---------------------------------------------------------------- simulated

/// Counts pets; resets nothing. Shares its counter with clones of [`SimulatedWatchdog::pets`].
#[derive(Debug, Default)]
pub struct SimulatedWatchdog {
    pets: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SimulatedWatchdog {
    pub fn pets(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.pets.clone()
    }
}

/// The simulated watchdog's pretend timeout.
const SIM_TIMEOUT: Duration = Duration::from_secs(30);

impl Watchdog for SimulatedWatchdog {
    fn info(&self) -> WatchdogInfo {
        WatchdogInfo {
            kind: WatchdogKind::Simulated,
            simulated: true,
            device: None,
            identity: Some("simulated (counts pets, resets nothing)".into()),
            timeout_seconds: Some(SIM_TIMEOUT.as_secs()),
        }
    }
    fn pet(&mut self) -> Result<(), WatchdogError> {
        self.pets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn pet_interval(&self) -> Duration {
        SIM_TIMEOUT / 3
    }
    fn stop(self: Box<Self>) -> Result<(), WatchdogError> {
        Ok(())
    }
}

/// The watchdogs to pet: the device when one is named (it is opt-in: opening
/// `/dev/watchdog` on a developer's machine would arm its hardware timer),
/// systemd's when systemd set one up, and the simulated one when neither.
pub fn select(device: Option<&Path>, timeout: Duration) -> Result<Vec<Box<dyn Watchdog>>, WatchdogError> {
    let mut out: Vec<Box<dyn Watchdog>> = Vec::new();
    if let Some(path) = device {
        out.push(Box::new(DeviceWatchdog::open(path, timeout)?));
    }
    if let Some(systemd) = SystemdWatchdog::from_env() {
        out.push(Box::new(systemd));
    }
    if out.is_empty() {
        out.push(Box::new(SimulatedWatchdog::default()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_follows_sd_watchdog_enabled() {
        let me = std::process::id().to_string();
        assert_eq!(watchdog_usec(Some("30000000".into()), None), Some(30_000_000));
        assert_eq!(watchdog_usec(Some("30000000".into()), Some(me)), Some(30_000_000));
        assert_eq!(watchdog_usec(Some("30000000".into()), Some("1".into())), None, "another process's watchdog");
        assert_eq!(watchdog_usec(Some("0".into()), None), None);
        assert_eq!(watchdog_usec(Some("soon".into()), None), None);
        assert_eq!(watchdog_usec(None, None), None);
    }

    #[test]
    fn the_simulated_watchdog_counts_pets() {
        let sim = SimulatedWatchdog::default();
        let pets = sim.pets();
        let mut dog: Box<dyn Watchdog> = Box::new(sim);
        for _ in 0..3 {
            dog.pet().expect("pet");
        }
        assert_eq!(pets.load(std::sync::atomic::Ordering::Relaxed), 3);
        let info = dog.info();
        assert!(info.simulated && info.kind == WatchdogKind::Simulated);
        assert_eq!(dog.pet_interval(), Duration::from_secs(10));
        dog.stop().expect("stop");
    }

    #[test]
    fn a_device_that_is_not_a_watchdog_is_refused_and_a_missing_one_named() {
        let err =
            DeviceWatchdog::open(Path::new("/nonexistent/watchdog"), Duration::from_secs(5)).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/watchdog: open"), "{err}");
        // /dev/null opens but answers the ioctls with ENOTTY.
        assert!(DeviceWatchdog::open(Path::new("/dev/null"), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn identity_comes_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("bg-hal-wd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("watchdog0")).expect("dir");
        std::fs::write(dir.join("watchdog0/identity"), "i6300ESB timer\n").expect("write");
        let found = identity(Path::new("/dev/watchdog"), &dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.as_deref(), Some("i6300ESB timer"));
    }

    #[test]
    fn without_device_or_systemd_the_simulated_one_is_chosen() {
        // Run under a systemd unit with WatchdogSec=, systemd's would be chosen.
        if std::env::var_os("WATCHDOG_USEC").is_some() {
            return;
        }
        let dogs = select(None, Duration::from_secs(10)).expect("select");
        assert_eq!(dogs.len(), 1);
        assert_eq!(dogs[0].info().kind, WatchdogKind::Simulated);
    }
}
