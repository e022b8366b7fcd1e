//! The reset button, sans-IO: a long press arms a factory reset, a short
//! press within the confirmation window confirms it (a stray long press
//! never wipes a branch office's box by itself).

use std::time::Duration;

/// How long the button must be held to arm a factory reset.
pub const LONG_PRESS: Duration = Duration::from_secs(10);
/// How long an armed factory reset waits for the confirming short press.
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ButtonEvent {
    /// A press shorter than [`LONG_PRESS`] with nothing armed (e.g. show the IP on the console).
    ShortPress,
    /// Held for [`LONG_PRESS`]: factory reset armed (the LED should say so).
    ResetArmed,
    /// Confirmed by a short press within [`CONFIRM_WINDOW`]: reset now.
    ResetConfirmed,
    /// The window passed without confirmation.
    ResetCancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Pressed {
        since: Duration,
        armed_by_this: bool,
    },
    Armed {
        until: Duration,
    },
    /// Pressed while armed.
    Confirming {
        until: Duration,
    },
}

/// Feed it the button level with the time (from any monotonic origin) and poll it.
#[derive(Debug)]
pub struct ResetButton {
    state: State,
}

impl Default for ResetButton {
    fn default() -> Self {
        ResetButton { state: State::Idle }
    }
}

impl ResetButton {
    /// The button's level at `now` (`true`: pressed); returns what that means, if anything.
    pub fn handle_input(&mut self, now: Duration, pressed: bool) -> Option<ButtonEvent> {
        let (state, event) = match (self.state, pressed) {
            (State::Idle, true) => (State::Pressed { since: now, armed_by_this: false }, None),
            (State::Pressed { since, armed_by_this: false }, true) if now.saturating_sub(since) >= LONG_PRESS => {
                (State::Pressed { since, armed_by_this: true }, Some(ButtonEvent::ResetArmed))
            }
            (State::Pressed { armed_by_this: true, .. }, false) => (State::Armed { until: now + CONFIRM_WINDOW }, None),
            (State::Pressed { armed_by_this: false, .. }, false) => (State::Idle, Some(ButtonEvent::ShortPress)),
            (State::Armed { until }, _) if now >= until => (State::Idle, Some(ButtonEvent::ResetCancelled)),
            (State::Armed { until }, true) => (State::Confirming { until }, None),
            (State::Confirming { .. }, false) => (State::Idle, Some(ButtonEvent::ResetConfirmed)),
            (state, _) => (state, None),
        };
        self.state = state;
        event
    }

    /// Whether a factory reset is armed and waiting for its confirmation.
    pub fn armed(&self) -> bool {
        matches!(self.state, State::Armed { .. } | State::Confirming { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::digital::InputPin;
    use embedded_hal_mock::eh1::digital::{Mock, State as Level, Transaction};

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// Samples a (mock) GPIO input pin like the box's button poller does.
    fn run(levels: &[(f64, Level)]) -> Vec<ButtonEvent> {
        let expectations: Vec<Transaction> = levels.iter().map(|(_, l)| Transaction::get(*l)).collect();
        let mut pin = Mock::new(&expectations);
        let mut button = ResetButton::default();
        let events = levels
            .iter()
            .filter_map(|(t, _)| {
                let pressed = pin.is_high().expect("pin");
                button.handle_input(s(*t), pressed)
            })
            .collect();
        pin.done();
        events
    }

    #[test]
    fn a_short_press_is_just_a_press() {
        assert_eq!(run(&[(0.0, Level::High), (0.5, Level::Low)]), [ButtonEvent::ShortPress]);
    }

    #[test]
    fn a_long_press_arms_and_a_short_press_confirms() {
        let events = run(&[
            (0.0, Level::High),
            (5.0, Level::High),
            (10.0, Level::High),
            (12.0, Level::Low),
            (20.0, Level::High),
            (20.3, Level::Low),
        ]);
        assert_eq!(events, [ButtonEvent::ResetArmed, ButtonEvent::ResetConfirmed]);
    }

    #[test]
    fn an_armed_reset_is_cancelled_after_the_window() {
        let events = run(&[(0.0, Level::High), (10.5, Level::High), (11.0, Level::Low), (45.0, Level::Low)]);
        assert_eq!(events, [ButtonEvent::ResetArmed, ButtonEvent::ResetCancelled]);
        // Held through the window does not confirm either.
        let mut button = ResetButton::default();
        button.handle_input(s(0.0), true);
        assert_eq!(button.handle_input(s(10.0), true), Some(ButtonEvent::ResetArmed));
        assert!(button.handle_input(s(60.0), true).is_none(), "still the arming press");
        assert_eq!(button.handle_input(s(61.0), false), None);
        assert!(button.armed());
    }
}
