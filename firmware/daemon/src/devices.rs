//! The box's devices in the daemon: the health loop that pets the watchdogs
//! while the services are healthy, the status LED and reset button task, and
//! `branchgate hal selftest` (what the VM test runs against real drivers).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use branchgate_hal::audio::{self, StreamFormat};
use branchgate_hal::button::{ButtonEvent, ResetButton};
use branchgate_hal::gpio::{BUTTON_LINE_NAME, LED_LINE_NAME, Pin};
use branchgate_hal::led::{LedPattern, StatusLed};
use branchgate_hal::watchdog::Watchdog;
use branchgate_hal::{DeviceBoard, WatchdogState};
use branchgate_web_admin::now_ms;
use branchgate_web_admin::status::{ServiceBoard, ServiceState};
use embedded_hal::digital::InputPin;
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long a service may sit in restart before the box stops petting its
/// watchdogs (and is reset by them): a crash loop that backoff cannot fix.
pub const UNHEALTHY_AFTER_SECONDS: u64 = 120;

/// Whether the services are healthy enough to pet the watchdogs.
pub fn healthy(services: &ServiceBoard) -> bool {
    services.list().iter().all(|s| s.state != ServiceState::Restarting || s.since_seconds < UNHEALTHY_AFTER_SECONDS)
}

/// Pets every watchdog while [`healthy`], each at its own interval; on
/// shutdown stops them cleanly (magic close), so a clean stop is no reset.
pub async fn health_loop(
    mut dogs: Vec<Box<dyn Watchdog>>,
    services: ServiceBoard,
    board: DeviceBoard,
    mut shutdown: watch::Receiver<bool>,
) {
    board.set_watchdogs(
        dogs.iter()
            .map(|d| WatchdogState { info: d.info(), pets: 0, last_pet_unix_ms: None, petting: true, last_error: None })
            .collect(),
    );
    let tick =
        dogs.iter().map(|d| d.pet_interval()).min().unwrap_or(Duration::from_secs(10)).max(Duration::from_millis(100));
    let mut was_ok = true;
    loop {
        let ok = healthy(&services);
        if ok != was_ok {
            if ok {
                tracing::info!("services healthy again: petting the watchdog");
            } else {
                tracing::error!("a service has been failing for {UNHEALTHY_AFTER_SECONDS} s: not petting the watchdog");
            }
            was_ok = ok;
        }
        for (i, dog) in dogs.iter_mut().enumerate() {
            let result = if ok { Some(dog.pet()) } else { None };
            board.update_watchdog(i, |w| {
                w.petting = ok;
                match result {
                    Some(Ok(())) => {
                        w.pets += 1;
                        w.last_pet_unix_ms = Some(now_ms());
                        w.last_error = None;
                    }
                    Some(Err(e)) => w.last_error = Some(e.to_string()),
                    None => {}
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => break,
        }
    }
    for dog in dogs {
        if let Err(e) = dog.stop() {
            tracing::error!(error = %e, "stopping the watchdog");
        }
    }
}

/// Where the LED and the button are (`--led-line`, `--button-line`; by
/// default the lines the device tree names `status-led` and `reset-button`).
pub struct GpioLines {
    pub led: Option<String>,
    pub button: Option<String>,
}

/// Opens the LED and button pins (in-memory where the box has no such line)
/// and registers them on the board.
pub fn open_pins(lines: &GpioLines, board: &DeviceBoard) -> (Pin, Pin) {
    let (led, led_error) = Pin::or_memory("led", lines.led.as_deref(), LED_LINE_NAME, true);
    let (button, button_error) = Pin::or_memory("button", lines.button.as_deref(), BUTTON_LINE_NAME, false);
    for (what, error) in [("LED", led_error), ("reset button", button_error)] {
        if let Some(e) = error {
            tracing::error!(error = %e, "{what}: GPIO line unavailable; using an in-memory pin");
        }
    }
    board.add_pin(led.monitor());
    board.add_pin(button.monitor());
    (led, button)
}

/// The LED pattern for the box's state.
pub fn pattern_for(ready: bool, services: &ServiceBoard, updating: bool) -> LedPattern {
    if !ready {
        LedPattern::Boot
    } else if updating {
        LedPattern::Updating
    } else if services.list().iter().any(|s| s.state == ServiceState::Restarting) {
        LedPattern::Error
    } else {
        LedPattern::Ok
    }
}

/// Drives the LED and polls the button every 50 ms until shutdown; a confirmed long press
/// calls `factory_reset`, a short press with nothing armed `short_press`.
pub async fn gpio_loop(
    (led, mut button): (Pin, Pin),
    board: DeviceBoard,
    factory_reset: impl Fn() + Send,
    short_press: impl Fn() + Send,
    mut state: impl FnMut() -> LedPattern + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let origin = Instant::now();
    let ms = |t: Instant| t.duration_since(origin).as_millis() as u64;
    let mut led = StatusLed::new(led, 0);
    let mut reset = ResetButton::default();
    let mut reported = None;
    loop {
        let now = Instant::now();
        let pattern = state();
        led.set(pattern, ms(now));
        if reported != Some(pattern) {
            board.set_led_pattern(pattern);
            reported = Some(pattern);
        }
        if let Err(e) = led.tick(ms(now)) {
            tracing::warn!(error = %e, "status LED");
        }
        match button.is_high() {
            Ok(pressed) => match reset.handle_input(now.duration_since(origin), pressed) {
                Some(ButtonEvent::ResetArmed) => {
                    tracing::warn!("reset button held: factory reset armed; a short press within 30 s confirms");
                }
                Some(ButtonEvent::ResetConfirmed) => {
                    tracing::warn!("factory reset confirmed with the reset button: wiping the configuration");
                    factory_reset();
                }
                Some(ButtonEvent::ResetCancelled) => tracing::info!("factory reset not confirmed: cancelled"),
                Some(ButtonEvent::ShortPress) => short_press(),
                None => {}
            },
            Err(e) => tracing::warn!(error = %e, "reset button"),
        }
        board.set_reset_armed(reset.armed());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.changed() => break,
        }
    }
    let mut pin = led.release();
    let _ = embedded_hal::digital::OutputPin::set_low(&mut pin);
}

// ---------------------------------------------------------------- selftest

/// What `branchgate hal selftest` does.
pub struct SelftestOptions {
    pub playback: Option<String>,
    pub capture: Option<String>,
    pub tone_hz: f64,
    pub tone_ms: u64,
    pub mixer_card: Option<String>,
    pub camera_frames: u32,
    /// Seconds of each camera's encoded stream to watch (0: none).
    pub camera_encode_secs: u64,
    pub camera_encode_size: (u32, u32),
    /// Reconfigure to this size half-way through the encode check (the pipeline restarts).
    pub camera_restart_size: Option<(u32, u32)>,
    /// Snapshot each real camera from its encoded stream (`branchgate_capture::snapshot`).
    pub camera_snapshot: bool,
    pub watchdog: Option<PathBuf>,
    pub watchdog_timeout: u64,
    pub pets: u32,
    pub leave_armed: bool,
}

/// Enumerates and exercises every device; the report is JSON, with an
/// `errors` list (empty when everything asked for worked).
pub fn selftest(options: &SelftestOptions) -> Value {
    let mut errors: Vec<String> = Vec::new();

    let cameras = crate::devices::camera_report(options, &mut errors);

    let backend = audio::backend();
    let devices = backend.devices().unwrap_or_else(|e| {
        errors.push(format!("audio devices: {e}"));
        Vec::new()
    });
    let loopback = match (&options.playback, &options.capture) {
        (Some(playback), Some(capture)) => {
            let format = StreamFormat::new(48_000, 2);
            match audio::loopback_tone(
                backend.as_ref(),
                playback,
                capture,
                format,
                options.tone_hz,
                Duration::from_millis(options.tone_ms),
            ) {
                Ok(r) => {
                    if !r.detected_hz.is_some_and(|hz| (hz - options.tone_hz).abs() < options.tone_hz * 0.01) {
                        errors
                            .push(format!("audio loopback: sent {} Hz, detected {:?}", options.tone_hz, r.detected_hz));
                    }
                    json!(r)
                }
                Err(e) => {
                    errors.push(format!("audio loopback: {e}"));
                    json!({ "error": e.to_string() })
                }
            }
        }
        _ => Value::Null,
    };
    let mixer = match &options.mixer_card {
        Some(card) => mixer_round_trip(backend.as_ref(), card, &mut errors),
        None => Value::Null,
    };

    let watchdog = match &options.watchdog {
        Some(path) => watchdog_report(path, options, &mut errors),
        None => Value::Null,
    };

    json!({
        "cameras": cameras,
        "audio": { "backend": backend.kind(), "simulated": backend.simulated(), "devices": devices,
                   "loopback": loopback, "mixer": mixer },
        "watchdog": watchdog,
        "errors": errors,
        "ok": errors.is_empty(),
    })
}

/// Sets the volume to 40 % and mute on, reads them back, then restores.
fn mixer_round_trip(backend: &dyn audio::AudioBackend, card: &str, errors: &mut Vec<String>) -> Value {
    let result = (|| {
        let before = backend.mixer(card, None)?;
        let changed = backend.set_mixer(card, Some(&before.control), Some(40), before.muted.map(|_| true))?;
        let restored = backend.set_mixer(card, Some(&before.control), Some(before.volume_percent), before.muted)?;
        Ok::<_, audio::AudioError>((before, changed, restored))
    })();
    match result {
        Ok((before, changed, restored)) => {
            if changed.volume_percent.abs_diff(40) > 2 || changed.muted.is_some_and(|m| !m) {
                errors.push(format!("mixer {card}: set 40 % muted, read back {changed:?}"));
            }
            json!({ "before": before, "changed": changed, "restored": restored })
        }
        Err(e) => {
            errors.push(format!("mixer {card}: {e}"));
            json!({ "error": e.to_string() })
        }
    }
}

fn watchdog_report(path: &Path, options: &SelftestOptions, errors: &mut Vec<String>) -> Value {
    let mut dog: Box<dyn Watchdog> =
        match branchgate_hal::watchdog::DeviceWatchdog::open(path, Duration::from_secs(options.watchdog_timeout)) {
            Ok(d) => Box::new(d),
            Err(e) => {
                errors.push(e.to_string());
                return json!({ "error": e.to_string() });
            }
        };
    let info = dog.info();
    let mut pets = 0;
    for _ in 0..options.pets {
        match dog.pet() {
            Ok(()) => pets += 1,
            Err(e) => errors.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stopped = if options.leave_armed {
        // Closed without the magic 'V': the timer keeps running and resets the machine.
        drop(dog);
        false
    } else {
        match dog.stop() {
            Ok(()) => true,
            Err(e) => {
                errors.push(e.to_string());
                false
            }
        }
    };
    json!({ "info": info, "pets": pets, "stopped": stopped, "armed": !stopped })
}

/// The cameras, with formats, controls and captured frames where V4L2 gives
/// them, and what their pipeline encodes in `camera_encode_secs`.
pub fn camera_report(options: &SelftestOptions, errors: &mut Vec<String>) -> Value {
    let frames = options.camera_frames;
    let cameras = branchgate_capture::cameras();
    let mut out = Vec::new();
    for camera in &cameras {
        let mut entry =
            json!({ "id": camera.id, "name": camera.name, "simulated": camera.simulated, "device": camera.device });
        if let Some(device) = camera.device.as_deref().filter(|_| !camera.simulated) {
            match branchgate_hal::v4l2::details(Path::new(device)) {
                Ok(details) => entry["v4l2"] = json!(details),
                Err(e) => errors.push(format!("camera {}: {e}", camera.id)),
            }
        }
        let captured = branchgate_hal::v4l2::open(camera)
            .and_then(|mut source| (0..frames).map(|_| source.next_frame()).collect::<Result<Vec<_>, _>>());
        match captured {
            Ok(list) => {
                entry["frames"] = json!(
                    list.iter()
                        .map(|f| json!({ "fourcc": f.fourcc, "width": f.width, "height": f.height,
                                     "sequence": f.sequence, "bytes": f.data.len(),
                                     "nonzero": f.data.iter().any(|b| *b != 0) }))
                        .collect::<Vec<_>>()
                );
            }
            Err(e) => errors.push(format!("camera {} capture: {e}", camera.id)),
        }
        if options.camera_encode_secs > 0 {
            let (width, height) = options.camera_encode_size;
            let settings = branchgate_capture::CameraSettings { width, height, ..Default::default() };
            let then = options.camera_restart_size.map(|(width, height)| branchgate_capture::CameraSettings {
                width,
                height,
                ..settings.clone()
            });
            let duration = Duration::from_secs(options.camera_encode_secs);
            match branchgate_capture::encode_check(camera, settings, duration, then) {
                Ok(check) => {
                    if options.camera_restart_size.is_some() && check.frames_after_restart == 0 {
                        errors.push(format!("camera {} encode: no frames after the restart", camera.id));
                    }
                    if check.frames == 0 || check.keyframes == 0 {
                        errors.push(format!(
                            "camera {} encode: {} frames, {} keyframes in {} s",
                            camera.id, check.frames, check.keyframes, options.camera_encode_secs
                        ));
                    }
                    entry["encode"] = json!({
                        "input": check.input, "encoder": check.encoder, "size": check.size,
                        "seconds": options.camera_encode_secs, "packets": check.packets, "bytes": check.bytes,
                        "frames": check.frames, "keyframes": check.keyframes,
                        "first_packet_ms": check.first_packet_ms,
                        "restarted_size": check.restarted_size,
                        "frames_after_restart": check.frames_after_restart,
                        "keyframes_after_restart": check.keyframes_after_restart,
                    });
                }
                Err(e) => errors.push(format!("camera {} encode: {e}", camera.id)),
            }
        }
        if options.camera_snapshot && !camera.simulated {
            let hub = branchgate_capture::CaptureHub::default();
            let (width, height) = options.camera_encode_size;
            hub.configure(&camera.id, branchgate_capture::CameraSettings { width, height, ..Default::default() });
            let snapshot = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|runtime| {
                    runtime.block_on(branchgate_capture::snapshot::snapshot(&hub, camera)).map_err(|e| e.to_string())
                });
            match snapshot {
                Ok(jpeg) => {
                    let size = branchgate_capture::snapshot::jpeg_size(&jpeg);
                    entry["snapshot"] = json!({ "bytes": jpeg.len(), "size": size });
                }
                Err(e) => errors.push(format!("camera {} snapshot: {e}", camera.id)),
            }
        }
        out.push(entry);
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use branchgate_hal::watchdog::SimulatedWatchdog;
    use std::sync::atomic::Ordering;

    #[tokio::test(start_paused = true)]
    async fn the_health_loop_pets_while_healthy_and_publishes_it() {
        let sim = SimulatedWatchdog::default();
        let pets = sim.pets();
        let board = DeviceBoard::default();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(health_loop(vec![Box::new(sim)], ServiceBoard::default(), board.clone(), rx));
        // The simulated watchdog wants a pet every 10 s: at 0, 10 and 20 s.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(pets.load(Ordering::Relaxed), 3);
        let state = &board.watchdogs()[0];
        assert!(state.petting && state.info.simulated && state.pets == 3 && state.last_pet_unix_ms.is_some());
        tx.send(true).expect("send");
        task.await.expect("stops on shutdown");
    }

    #[test]
    fn the_led_says_what_the_box_is_doing() {
        let services = ServiceBoard::default();
        assert_eq!(pattern_for(false, &services, false), LedPattern::Boot);
        services.set("sip", ServiceState::Running, None);
        assert_eq!(pattern_for(true, &services, false), LedPattern::Ok);
        assert_eq!(pattern_for(true, &services, true), LedPattern::Updating);
        services.set("sip", ServiceState::Restarting, Some("boom".into()));
        assert_eq!(pattern_for(true, &services, false), LedPattern::Error);
        assert!(healthy(&services), "a fresh restart is not yet a reason to stop petting");
    }

    #[test]
    fn the_selftest_without_hardware_reports_the_simulated_devices() {
        let report = selftest(&SelftestOptions {
            playback: Some(audio::SIM_DEVICE.into()),
            capture: Some(audio::SIM_DEVICE.into()),
            tone_hz: 1000.0,
            tone_ms: 200,
            mixer_card: Some(audio::SIM_CARD.into()),
            camera_frames: 1,
            camera_encode_secs: 0,
            camera_encode_size: (640, 360),
            camera_restart_size: None,
            camera_snapshot: false,
            watchdog: None,
            watchdog_timeout: 10,
            pets: 0,
            leave_armed: false,
        });
        if std::path::Path::new(audio::DEV_SND).exists() {
            return; // a machine with sound cards: the simulated device names do not apply
        }
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(report["audio"]["simulated"], true);
        assert_eq!(report["audio"]["loopback"]["detected_hz"], 1000.0);
        assert_eq!(report["audio"]["mixer"]["changed"]["volume_percent"], 40);
    }
}
