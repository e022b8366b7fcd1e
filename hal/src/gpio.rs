//! GPIO pins for the status LED and the reset button: a line of the GPIO
//! character device (`/dev/gpiochipN`, uAPI v2 through `gpiocdev`) or an
//! in-memory pin where the box has no such line. Both are embedded-hal 1.0
//! `OutputPin`/`InputPin`, so `led.rs` and `button.rs` do not know which.
//!
//! A line is named `CHIP:OFFSET` (`gpiochip0:17`, `/dev/gpiochip0:17`) or by
//! its name from the device tree (`status-led`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use embedded_hal::digital::{ErrorKind, ErrorType, InputPin, OutputPin};
use gpiocdev::line::Value;
use serde::Serialize;

/// The line names the box's device tree gives the LED and the button.
pub const LED_LINE_NAME: &str = "status-led";
pub const BUTTON_LINE_NAME: &str = "reset-button";

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO: {0}")]
    Cdev(#[from] gpiocdev::Error),
    #[error("no GPIO line named {0}")]
    NoSuchLine(String),
    #[error("GPIO line {0}: expected CHIP:OFFSET or a line name")]
    BadSpec(String),
}

impl embedded_hal::digital::Error for GpioError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// What the devices API shows of a pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinInfo {
    /// `led` or `button`.
    pub role: String,
    /// `gpio-cdev` or `memory`.
    pub backend: String,
    pub simulated: bool,
    pub chip: Option<String>,
    pub offset: Option<u32>,
    /// The line's name, when it has one.
    pub name: Option<String>,
}

/// A pin's info and its live level, for showing without owning the pin.
#[derive(Clone, Debug)]
pub struct PinMonitor {
    pub info: PinInfo,
    level: Arc<AtomicBool>,
}

impl PinMonitor {
    /// The logical level (`true`: LED lit / button pressed).
    pub fn level(&self) -> bool {
        self.level.load(Ordering::Relaxed)
    }
    /// Drives an in-memory input (a simulated button press); no effect on a real line's reading.
    pub fn set_level(&self, high: bool) {
        self.level.store(high, Ordering::Relaxed)
    }
}

enum Backend {
    Cdev { request: gpiocdev::Request, offset: u32 },
    Memory,
}

/// One GPIO line, real or in memory.
pub struct Pin {
    backend: Backend,
    monitor: PinMonitor,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin").field("info", &self.monitor.info).finish()
    }
}

/// Where a line spec points: chip path and offset (and the line's name if looked up by it).
fn resolve(spec: &str) -> Result<(PathBuf, u32, Option<String>), GpioError> {
    if let Some((chip, offset)) = spec.rsplit_once(':')
        && let Ok(offset) = offset.parse::<u32>()
    {
        if chip.is_empty() {
            return Err(GpioError::BadSpec(spec.into()));
        }
        let chip = if chip.starts_with('/') { PathBuf::from(chip) } else { PathBuf::from("/dev").join(chip) };
        return Ok((chip, offset, None));
    }
    if spec.is_empty() || spec.contains(':') {
        return Err(GpioError::BadSpec(spec.into()));
    }
    let found = gpiocdev::find_named_line(spec).ok_or_else(|| GpioError::NoSuchLine(spec.into()))?;
    Ok((found.chip, found.info.offset, Some(spec.to_string())))
}

impl Pin {
    /// An in-memory pin (the box has no such line): `level` is what was set,
    /// or what [`PinMonitor::set_level`] put there for an input.
    pub fn memory(role: &str) -> Pin {
        Pin {
            backend: Backend::Memory,
            monitor: PinMonitor {
                info: PinInfo {
                    role: role.into(),
                    backend: "memory".into(),
                    simulated: true,
                    chip: None,
                    offset: None,
                    name: None,
                },
                level: Arc::default(),
            },
        }
    }

    fn cdev(role: &str, spec: &str, output: bool, active_low: bool) -> Result<Pin, GpioError> {
        let (chip, offset, name) = resolve(spec)?;
        let mut builder = gpiocdev::Request::builder();
        builder.on_chip(chip.clone()).with_consumer(format!("branchgate-{role}")).with_line(offset);
        if output {
            builder.as_output(Value::Inactive);
        } else {
            builder.as_input();
        }
        if active_low {
            builder.as_active_low();
        }
        let request = builder.request()?;
        Ok(Pin {
            backend: Backend::Cdev { request, offset },
            monitor: PinMonitor {
                info: PinInfo {
                    role: role.into(),
                    backend: "gpio-cdev".into(),
                    simulated: false,
                    chip: Some(chip.display().to_string()),
                    offset: Some(offset),
                    name,
                },
                level: Arc::default(),
            },
        })
    }

    /// An output line (starts inactive).
    pub fn output(role: &str, spec: &str) -> Result<Pin, GpioError> {
        Pin::cdev(role, spec, true, false)
    }

    /// An input line; `active_low` for a button that pulls the line to ground.
    pub fn input(role: &str, spec: &str, active_low: bool) -> Result<Pin, GpioError> {
        Pin::cdev(role, spec, false, active_low)
    }

    /// The line `spec` names, else the line named `default_name` if the box has
    /// one, else an in-memory pin; a named line that cannot be had is reported
    /// in the returned error text and replaced by memory so the box still runs.
    pub fn or_memory(role: &str, spec: Option<&str>, default_name: &str, output: bool) -> (Pin, Option<GpioError>) {
        let open = |s: &str| if output { Pin::output(role, s) } else { Pin::input(role, s, true) };
        match spec {
            Some(s) => match open(s) {
                Ok(pin) => (pin, None),
                Err(e) => (Pin::memory(role), Some(e)),
            },
            None => match gpiocdev::find_named_line(default_name) {
                Some(_) => match open(default_name) {
                    Ok(pin) => (pin, None),
                    Err(e) => (Pin::memory(role), Some(e)),
                },
                None => (Pin::memory(role), None),
            },
        }
    }

    pub fn monitor(&self) -> PinMonitor {
        self.monitor.clone()
    }
}

impl ErrorType for Pin {
    type Error = GpioError;
}

impl OutputPin for Pin {
    fn set_low(&mut self) -> Result<(), GpioError> {
        if let Backend::Cdev { request, offset } = &self.backend {
            request.set_value(*offset, Value::Inactive)?;
        }
        self.monitor.level.store(false, Ordering::Relaxed);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), GpioError> {
        if let Backend::Cdev { request, offset } = &self.backend {
            request.set_value(*offset, Value::Active)?;
        }
        self.monitor.level.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl InputPin for Pin {
    fn is_high(&mut self) -> Result<bool, GpioError> {
        if let Backend::Cdev { request, offset } = &self.backend {
            let active = request.value(*offset)? == Value::Active;
            self.monitor.level.store(active, Ordering::Relaxed);
        }
        Ok(self.monitor.level.load(Ordering::Relaxed))
    }
    fn is_low(&mut self) -> Result<bool, GpioError> {
        self.is_high().map(|h| !h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::button::{ButtonEvent, ResetButton};
    use crate::led::{LedPattern, StatusLed};
    use std::time::Duration;

    #[test]
    fn line_specs() {
        let (chip, offset, name) = resolve("gpiochip0:17").expect("spec");
        assert_eq!((chip, offset, name), (PathBuf::from("/dev/gpiochip0"), 17, None));
        let (chip, offset, _) = resolve("/dev/gpiochip3:4").expect("spec");
        assert_eq!((chip, offset), (PathBuf::from("/dev/gpiochip3"), 4));
        assert!(matches!(resolve(":4"), Err(GpioError::BadSpec(_))));
        assert!(matches!(resolve("gpiochip0:x"), Err(GpioError::BadSpec(_))));
        assert!(matches!(resolve("no-such-line-here"), Err(GpioError::NoSuchLine(_))));
    }

    #[test]
    fn without_lines_the_pins_are_in_memory() {
        let (pin, error) = Pin::or_memory("led", None, "no-such-line-here", true);
        assert!(error.is_none() && pin.monitor().info.simulated);
        let (pin, error) = Pin::or_memory("led", Some("/nonexistent/gpiochip9:1"), LED_LINE_NAME, true);
        assert!(error.is_some(), "a named line that is missing is reported");
        assert_eq!(pin.monitor().info.backend, "memory");
    }

    #[test]
    fn the_led_drives_an_in_memory_pin_the_api_can_read() {
        let pin = Pin::memory("led");
        let monitor = pin.monitor();
        let mut led = StatusLed::new(pin, 0);
        led.tick(0).expect("tick");
        assert!(monitor.level(), "boot pattern starts lit");
        led.tick(150).expect("tick");
        assert!(!monitor.level());
        led.set(LedPattern::Ok, 200);
        led.tick(200).expect("tick");
        assert!(monitor.level());
    }

    #[test]
    fn an_in_memory_button_is_pressed_through_its_monitor() {
        let mut pin = Pin::memory("button");
        let monitor = pin.monitor();
        let mut button = ResetButton::default();
        let mut events = Vec::new();
        for (t, pressed) in [(0, true), (11, true), (12, false), (13, true), (14, false)] {
            monitor.set_level(pressed);
            let level = pin.is_high().expect("read");
            assert_eq!(pin.is_low().expect("read"), !level);
            events.extend(button.handle_input(Duration::from_secs(t), level));
        }
        assert_eq!(events, [ButtonEvent::ResetArmed, ButtonEvent::ResetConfirmed]);
    }
}
