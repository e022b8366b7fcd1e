//! The status LED: what the box is doing, as a blink pattern on one
//! embedded-hal output pin (a GPIO line on the box; an in-memory pin where
//! there is none).

use embedded_hal::digital::OutputPin;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LedPattern {
    /// Starting: fast blink (5 Hz).
    Boot,
    /// Running and healthy: steady on.
    Ok,
    /// A service failed: two short flashes every second.
    Error,
    /// Installing an update: slow blink (1 Hz).
    Updating,
}

impl LedPattern {
    /// Whether the LED is lit `ms` into the pattern.
    pub fn lit(self, ms: u64) -> bool {
        match self {
            LedPattern::Boot => ms % 200 < 100,
            LedPattern::Ok => true,
            LedPattern::Error => matches!(ms % 1000, 0..=99 | 200..=299),
            LedPattern::Updating => ms % 1000 < 500,
        }
    }
}

/// Drives a pin with the current pattern; call [`StatusLed::tick`] often (every 50 ms).
#[derive(Debug)]
pub struct StatusLed<P: OutputPin> {
    pin: P,
    pattern: LedPattern,
    since_ms: u64,
    lit: Option<bool>,
}

impl<P: OutputPin> StatusLed<P> {
    pub fn new(pin: P, now_ms: u64) -> Self {
        StatusLed { pin, pattern: LedPattern::Boot, since_ms: now_ms, lit: None }
    }

    pub fn pattern(&self) -> LedPattern {
        self.pattern
    }

    pub fn set(&mut self, pattern: LedPattern, now_ms: u64) {
        if pattern != self.pattern {
            self.pattern = pattern;
            self.since_ms = now_ms;
        }
    }

    /// Sets the pin for `now_ms`; writes only when the level changes.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), P::Error> {
        let lit = self.pattern.lit(now_ms.saturating_sub(self.since_ms));
        if self.lit != Some(lit) {
            if lit {
                self.pin.set_high()?
            } else {
                self.pin.set_low()?
            }
            self.lit = Some(lit);
        }
        Ok(())
    }

    pub fn release(self) -> P {
        self.pin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    #[test]
    fn boot_blinks_then_ok_is_steady() {
        let expectations = [
            Transaction::set(State::High),
            Transaction::set(State::Low),
            Transaction::set(State::High),
            // Ok: on, and nothing more however often it ticks.
        ];
        let mut led = StatusLed::new(Mock::new(&expectations), 0);
        for ms in [0, 50, 100, 150] {
            led.tick(ms).expect("pin");
        }
        led.set(LedPattern::Ok, 200);
        for ms in [200, 250, 5000] {
            led.tick(ms).expect("pin");
        }
        led.release().done();
    }

    #[test]
    fn error_flashes_twice_a_second() {
        let lit: Vec<bool> = (0..10).map(|i| LedPattern::Error.lit(i * 100)).collect();
        assert_eq!(lit, [true, false, true, false, false, false, false, false, false, false]);
        assert!(LedPattern::Updating.lit(100) && !LedPattern::Updating.lit(600));
    }
}
