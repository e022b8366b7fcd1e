//! The box's hardware behind traits, each with a Linux backend and a
//! simulated one picked automatically where the hardware is absent, so the
//! box runs anywhere and says which devices are simulated.
//!
//! - `camera`: V4L2 devices from sysfs; a simulated camera that draws a moving
//!   test pattern with a clock, with JPEG snapshots; `v4l2`: formats, frame
//!   sizes, controls and mmap capture of V4L2 devices (`FrameSource`, also
//!   implemented by the simulated camera).
//! - `audio`: ALSA cards (capture/playback of S16LE, mixer volume/mute); a
//!   simulated tone source and measuring sink.
//! - `gpio`: GPIO character-device lines as embedded-hal 1.0 pins; in-memory pins.
//! - `led`, `button`: the status LED patterns and the reset button's long
//!   press, sans-IO over those pins.
//! - `watchdog`: `/dev/watchdog`, systemd's watchdog, a simulated one.
//! - [`DeviceBoard`]: what the daemon runs, for the devices API.

pub mod audio;
pub mod button;
pub mod camera;
pub mod font;
pub mod gpio;
pub mod led;
pub mod v4l2;
pub mod watchdog;

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One watchdog as the daemon runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchdogState {
    #[serde(flatten)]
    pub info: watchdog::WatchdogInfo,
    pub pets: u64,
    pub last_pet_unix_ms: Option<u64>,
    /// Whether the health loop is petting it (false while a service is failing).
    pub petting: bool,
    pub last_error: Option<String>,
}

/// What the daemon's device tasks publish: the GPIO pins with the LED pattern,
/// and the watchdogs. Cameras and audio devices are enumerated when asked.
#[derive(Clone, Debug, Default)]
pub struct DeviceBoard {
    inner: Arc<Mutex<BoardState>>,
}

#[derive(Debug, Default)]
struct BoardState {
    pins: Vec<gpio::PinMonitor>,
    led_pattern: Option<led::LedPattern>,
    reset_armed: bool,
    watchdogs: Vec<WatchdogState>,
}

/// A pin as the devices API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinState {
    #[serde(flatten)]
    pub info: gpio::PinInfo,
    pub level: bool,
}

impl DeviceBoard {
    fn with<R>(&self, f: impl FnOnce(&mut BoardState) -> R) -> R {
        // A poisoned lock only means a device task panicked mid-update: the data is still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn add_pin(&self, pin: gpio::PinMonitor) {
        self.with(|b| b.pins.push(pin));
    }
    pub fn set_led_pattern(&self, pattern: led::LedPattern) {
        self.with(|b| b.led_pattern = Some(pattern));
    }
    pub fn set_reset_armed(&self, armed: bool) {
        self.with(|b| b.reset_armed = armed);
    }
    pub fn set_watchdogs(&self, dogs: Vec<WatchdogState>) {
        self.with(|b| b.watchdogs = dogs);
    }
    pub fn update_watchdog(&self, index: usize, f: impl FnOnce(&mut WatchdogState)) {
        self.with(|b| {
            if let Some(w) = b.watchdogs.get_mut(index) {
                f(w)
            }
        });
    }

    pub fn pins(&self) -> Vec<PinState> {
        self.with(|b| b.pins.iter().map(|p| PinState { info: p.info.clone(), level: p.level() }).collect())
    }
    /// The pin that plays `role`, to drive a simulated button from tests or the UI.
    pub fn pin(&self, role: &str) -> Option<gpio::PinMonitor> {
        self.with(|b| b.pins.iter().find(|p| p.info.role == role).cloned())
    }
    pub fn led_pattern(&self) -> Option<led::LedPattern> {
        self.with(|b| b.led_pattern)
    }
    pub fn reset_armed(&self) -> bool {
        self.with(|b| b.reset_armed)
    }
    pub fn watchdogs(&self) -> Vec<WatchdogState> {
        self.with(|b| b.watchdogs.clone())
    }
}
