//! Audio: ALSA sound cards (through libasound) and, where the box has none,
//! a simulated card whose capture is a sine tone and whose playback is a
//! sink that measures what it is given.
//!
//! Samples are always S16LE (native `i16`), interleaved; the caller asks for
//! a rate and a channel count. [`backend()`] picks ALSA when `/dev/snd` has a
//! control device, the simulated card otherwise.

use std::f64::consts::TAU;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One PCM device: what `PCM::new` opens (`hw:CARD,DEV`), with what it can do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PcmDevice {
    /// ALSA device name to open: `hw:Loopback,0` (card id, not index: stable across boots).
    pub id: String,
    /// The card's id (`Loopback`), its index and its long name.
    pub card: String,
    pub card_index: i32,
    pub card_name: String,
    /// The PCM's own name (`Loopback PCM`).
    pub name: String,
    pub capture: bool,
    pub playback: bool,
    pub simulated: bool,
}

/// What a stream carries: S16LE at `rate` Hz with `channels` interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StreamFormat {
    pub rate: u32,
    pub channels: u16,
}

impl StreamFormat {
    pub const fn new(rate: u32, channels: u16) -> Self {
        StreamFormat { rate, channels }
    }
}

/// A mixer control's state, volume in percent of its range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MixerState {
    pub card: String,
    pub control: String,
    pub volume_percent: u8,
    /// `None` when the control has no switch.
    pub muted: Option<bool>,
    pub simulated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("ALSA: {what} on {device}: {source}")]
    Alsa {
        device: String,
        what: &'static str,
        #[source]
        source: alsa::Error,
    },
    #[error("no audio device {0}")]
    NoSuchDevice(String),
    #[error("{device}: {message}")]
    Unsupported { device: String, message: String },
    #[error("card {card} has no mixer control with a playback volume")]
    NoMixerControl { card: String },
    #[error("no simulated mixer control {0}")]
    NoSuchControl(String),
}

/// A capture stream: `read` fills whole frames of interleaved samples.
pub trait AudioCapture: Send {
    fn format(&self) -> StreamFormat;
    /// Reads into `buf` (a multiple of the channel count); returns the frames read.
    fn read(&mut self, buf: &mut [i16]) -> Result<usize, AudioError>;
}

/// A playback stream.
pub trait AudioPlayback: Send {
    fn format(&self) -> StreamFormat;
    /// Writes interleaved samples; returns the frames written.
    fn write(&mut self, buf: &[i16]) -> Result<usize, AudioError>;
    /// Plays out what is queued, then stops.
    fn drain(&mut self) -> Result<(), AudioError>;
}

/// The box's audio devices, real or simulated.
pub trait AudioBackend: Send + Sync {
    /// `alsa` or `simulated`.
    fn kind(&self) -> &'static str;
    fn simulated(&self) -> bool;
    fn devices(&self) -> Result<Vec<PcmDevice>, AudioError>;
    fn open_capture(&self, device: &str, format: StreamFormat) -> Result<Box<dyn AudioCapture>, AudioError>;
    fn open_playback(&self, device: &str, format: StreamFormat) -> Result<Box<dyn AudioPlayback>, AudioError>;
    /// The playback volume control of `card` (`control`, or the first of
    /// Master/PCM/Speaker/Headphone, else any with a playback volume).
    fn mixer(&self, card: &str, control: Option<&str>) -> Result<MixerState, AudioError>;
    /// Sets what is given of volume (percent, clamped to 100) and mute; returns the new state.
    fn set_mixer(
        &self,
        card: &str,
        control: Option<&str>,
        volume_percent: Option<u8>,
        muted: Option<bool>,
    ) -> Result<MixerState, AudioError>;
}

/// Where the kernel puts ALSA's device nodes.
pub const DEV_SND: &str = "/dev/snd";

/// ALSA when `dev_snd` holds a control device (`controlC*`), else the simulated card.
pub fn backend_at(dev_snd: &Path) -> Box<dyn AudioBackend> {
    let has_card = std::fs::read_dir(dev_snd)
        .map(|entries| entries.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with("controlC")))
        .unwrap_or(false);
    if has_card { Box::new(AlsaBackend) } else { Box::new(SimulatedAudio::default()) }
}

/// The backend for this machine (see [`backend_at`]).
pub fn backend() -> Box<dyn AudioBackend> {
    backend_at(Path::new(DEV_SND))
}

// ---------------------------------------------------------------- signal helpers

/// `frames` of a sine at `hz` (amplitude `amplitude` of full scale), the same
/// in every channel, starting at `*phase` (radians, advanced for the next call).
pub fn sine(hz: f64, amplitude: f64, format: StreamFormat, frames: usize, phase: &mut f64) -> Vec<i16> {
    let step = TAU * hz / f64::from(format.rate.max(1));
    let mut out = Vec::with_capacity(frames * usize::from(format.channels));
    for _ in 0..frames {
        let v = (phase.sin() * amplitude * f64::from(i16::MAX)).round() as i16;
        out.extend(std::iter::repeat_n(v, usize::from(format.channels)));
        *phase = (*phase + step) % TAU;
    }
    out
}

/// RMS level of the first channel in dBFS (a full-scale sine is -3 dBFS); `None` for silence.
pub fn level_dbfs(samples: &[i16], channels: u16) -> Option<f64> {
    let channels = usize::from(channels.max(1));
    let (sum, n) = samples.iter().step_by(channels).fold((0f64, 0usize), |(s, n), &v| {
        let x = f64::from(v) / f64::from(i16::MAX);
        (s + x * x, n + 1)
    });
    if n == 0 || sum == 0.0 {
        return None;
    }
    Some(10.0 * (sum / n as f64).log10())
}

/// The frequency of a tone in the first channel, from the spacing of its
/// rising zero crossings (interpolated between samples). Good for the single
/// test tone a loopback check sends; `None` when there is no clear tone.
pub fn tone_frequency(samples: &[i16], format: StreamFormat) -> Option<f64> {
    let channels = usize::from(format.channels.max(1));
    let mono: Vec<f64> = samples.iter().step_by(channels).map(|&v| f64::from(v)).collect();
    // A little hysteresis against noise: the signal must have been below -threshold.
    let peak = mono.iter().fold(0f64, |m, v| m.max(v.abs()));
    if peak < 100.0 {
        return None;
    }
    let threshold = peak * 0.1;
    let mut crossings = Vec::new();
    let mut armed = false;
    for i in 1..mono.len() {
        if mono[i - 1] < -threshold {
            armed = true;
        }
        if armed && mono[i - 1] < 0.0 && mono[i] >= 0.0 {
            let fraction = -mono[i - 1] / (mono[i] - mono[i - 1]);
            crossings.push((i - 1) as f64 + fraction);
            armed = false;
        }
    }
    if crossings.len() < 3 {
        return None;
    }
    let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
    let period = (last - first) / (crossings.len() - 1) as f64;
    (period > 0.0).then(|| f64::from(format.rate) / period)
}

// ---------------------------------------------------------------- simulated card

/// The simulated card: capture gives a 1 kHz tone at -10 dBFS (paced in real
/// time unless built with [`SimulatedAudio::unpaced`]); playback goes to a
/// sink that counts frames and measures level and frequency.
#[derive(Clone, Debug)]
pub struct SimulatedAudio {
    pub tone_hz: f64,
    pub paced: bool,
    sink: Arc<Mutex<SinkStats>>,
    mixer: Arc<Mutex<(u8, bool)>>,
}

/// What the simulated sink was given.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SinkStats {
    pub frames: u64,
    pub level_dbfs: Option<f64>,
    pub frequency_hz: Option<f64>,
}

pub const SIM_CARD: &str = "sim";
pub const SIM_DEVICE: &str = "sim:0";
const SIM_CONTROL: &str = "Master";

impl Default for SimulatedAudio {
    fn default() -> Self {
        SimulatedAudio { tone_hz: 1000.0, paced: true, sink: Arc::default(), mixer: Arc::new(Mutex::new((80, false))) }
    }
}

impl SimulatedAudio {
    /// A card that produces and consumes as fast as asked (tests).
    pub fn unpaced() -> Self {
        SimulatedAudio { paced: false, ..Default::default() }
    }

    /// What playback streams have been given so far.
    pub fn sink_stats(&self) -> SinkStats {
        self.sink.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn check(&self, device: &str) -> Result<(), AudioError> {
        if device == SIM_DEVICE || device == "default" || device == "auto" {
            Ok(())
        } else {
            Err(AudioError::NoSuchDevice(device.to_string()))
        }
    }

    fn mixer_state(&self) -> MixerState {
        let (volume, muted) = self.mixer.lock().map(|m| *m).unwrap_or((0, true));
        MixerState {
            card: SIM_CARD.into(),
            control: SIM_CONTROL.into(),
            volume_percent: volume,
            muted: Some(muted),
            simulated: true,
        }
    }
}

/// Keeps a simulated stream in real time: sleeps until `frames` at `rate` have elapsed since `start`.
fn pace(start: Instant, frames: u64, rate: u32) {
    let due = start + Duration::from_secs_f64(frames as f64 / f64::from(rate.max(1)));
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

struct ToneCapture {
    format: StreamFormat,
    hz: f64,
    phase: f64,
    paced: Option<Instant>,
    frames: u64,
}

impl AudioCapture for ToneCapture {
    fn format(&self) -> StreamFormat {
        self.format
    }
    fn read(&mut self, buf: &mut [i16]) -> Result<usize, AudioError> {
        let frames = buf.len() / usize::from(self.format.channels.max(1));
        // -10 dBFS peak: loud enough to measure, never clipping.
        let samples = sine(self.hz, 0.316, self.format, frames, &mut self.phase);
        buf[..samples.len()].copy_from_slice(&samples);
        self.frames += frames as u64;
        if let Some(start) = self.paced {
            pace(start, self.frames, self.format.rate);
        }
        Ok(frames)
    }
}

struct MeasuringSink {
    format: StreamFormat,
    stats: Arc<Mutex<SinkStats>>,
    /// The last second, for level and frequency.
    recent: Vec<i16>,
    paced: Option<Instant>,
    frames: u64,
}

impl AudioPlayback for MeasuringSink {
    fn format(&self) -> StreamFormat {
        self.format
    }
    fn write(&mut self, buf: &[i16]) -> Result<usize, AudioError> {
        let channels = usize::from(self.format.channels.max(1));
        let frames = buf.len() / channels;
        self.recent.extend_from_slice(&buf[..frames * channels]);
        let keep = self.format.rate as usize * channels;
        if self.recent.len() > keep {
            self.recent.drain(..self.recent.len() - keep);
        }
        self.frames += frames as u64;
        if let Ok(mut stats) = self.stats.lock() {
            stats.frames += frames as u64;
            stats.level_dbfs = level_dbfs(&self.recent, self.format.channels);
            stats.frequency_hz = tone_frequency(&self.recent, self.format);
        }
        if let Some(start) = self.paced {
            pace(start, self.frames, self.format.rate);
        }
        Ok(frames)
    }
    fn drain(&mut self) -> Result<(), AudioError> {
        Ok(())
    }
}

impl AudioBackend for SimulatedAudio {
    fn kind(&self) -> &'static str {
        "simulated"
    }
    fn simulated(&self) -> bool {
        true
    }
    fn devices(&self) -> Result<Vec<PcmDevice>, AudioError> {
        Ok(vec![PcmDevice {
            id: SIM_DEVICE.into(),
            card: SIM_CARD.into(),
            card_index: 0,
            card_name: "Simulated audio (1 kHz tone capture, measuring playback sink)".into(),
            name: "Simulated PCM".into(),
            capture: true,
            playback: true,
            simulated: true,
        }])
    }
    fn open_capture(&self, device: &str, format: StreamFormat) -> Result<Box<dyn AudioCapture>, AudioError> {
        self.check(device)?;
        Ok(Box::new(ToneCapture {
            format,
            hz: self.tone_hz,
            phase: 0.0,
            paced: self.paced.then(Instant::now),
            frames: 0,
        }))
    }
    fn open_playback(&self, device: &str, format: StreamFormat) -> Result<Box<dyn AudioPlayback>, AudioError> {
        self.check(device)?;
        Ok(Box::new(MeasuringSink {
            format,
            stats: self.sink.clone(),
            recent: Vec::new(),
            paced: self.paced.then(Instant::now),
            frames: 0,
        }))
    }
    fn mixer(&self, card: &str, control: Option<&str>) -> Result<MixerState, AudioError> {
        if card != SIM_CARD {
            return Err(AudioError::NoSuchDevice(card.into()));
        }
        if let Some(c) = control.filter(|c| *c != SIM_CONTROL) {
            return Err(AudioError::NoSuchControl(c.into()));
        }
        Ok(self.mixer_state())
    }
    fn set_mixer(
        &self,
        card: &str,
        control: Option<&str>,
        volume_percent: Option<u8>,
        muted: Option<bool>,
    ) -> Result<MixerState, AudioError> {
        self.mixer(card, control)?;
        if let Ok(mut m) = self.mixer.lock() {
            if let Some(v) = volume_percent {
                m.0 = v.min(100);
            }
            if let Some(x) = muted {
                m.1 = x;
            }
        }
        Ok(self.mixer_state())
    }
}

// ---------------------------------------------------------------- ALSA

/// Real sound cards through libasound.
#[derive(Debug, Default)]
pub struct AlsaBackend;

fn alsa_err(device: &str, what: &'static str) -> impl FnOnce(alsa::Error) -> AudioError + use<> {
    let device = device.to_string();
    move |source| AudioError::Alsa { device, what, source }
}

/// Opens `device` with S16LE interleaved at `format`; the rate must be exact
/// (no silent resampling: `hw:` devices refuse, `plughw:` devices convert).
fn open_pcm(device: &str, direction: alsa::Direction, format: StreamFormat) -> Result<alsa::PCM, AudioError> {
    use alsa::pcm::{Access, Format, HwParams};
    let pcm = alsa::PCM::new(device, direction, false).map_err(alsa_err(device, "open"))?;
    {
        let hw = HwParams::any(&pcm).map_err(alsa_err(device, "hw params"))?;
        hw.set_access(Access::RWInterleaved).map_err(alsa_err(device, "interleaved access"))?;
        hw.set_format(Format::s16()).map_err(alsa_err(device, "format S16_LE"))?;
        hw.set_channels(u32::from(format.channels)).map_err(alsa_err(device, "channels"))?;
        hw.set_rate(format.rate, alsa::ValueOr::Nearest).map_err(alsa_err(device, "rate"))?;
        // 20 ms periods, 4 of them: the latency a voice path wants.
        let period = (format.rate / 50).max(32);
        hw.set_period_size_near(period as alsa::pcm::Frames, alsa::ValueOr::Nearest)
            .map_err(alsa_err(device, "period size"))?;
        hw.set_buffer_size_near((period * 4) as alsa::pcm::Frames).map_err(alsa_err(device, "buffer size"))?;
        pcm.hw_params(&hw).map_err(alsa_err(device, "apply hw params"))?;
    }
    let actual = pcm.hw_params_current().and_then(|h| h.get_rate()).map_err(alsa_err(device, "read rate"))?;
    if actual != format.rate {
        return Err(AudioError::Unsupported {
            device: device.into(),
            message: format!("asked for {} Hz, the device runs at {actual} Hz", format.rate),
        });
    }
    Ok(pcm)
}

struct AlsaStream {
    device: String,
    pcm: alsa::PCM,
    format: StreamFormat,
}

impl AlsaStream {
    /// An xrun (EPIPE) or suspend (ESTRPIPE) is recovered once; anything else is an error.
    fn recover(&self, e: alsa::Error, what: &'static str) -> Result<(), AudioError> {
        self.pcm.try_recover(e, true).map_err(alsa_err(&self.device, what))
    }
}

impl AudioCapture for AlsaStream {
    fn format(&self) -> StreamFormat {
        self.format
    }
    fn read(&mut self, buf: &mut [i16]) -> Result<usize, AudioError> {
        let io = self.pcm.io_i16().map_err(alsa_err(&self.device, "capture io"))?;
        match io.readi(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.recover(e, "capture")?;
                let io = self.pcm.io_i16().map_err(alsa_err(&self.device, "capture io"))?;
                io.readi(buf).map_err(alsa_err(&self.device, "capture"))
            }
        }
    }
}

impl AudioPlayback for AlsaStream {
    fn format(&self) -> StreamFormat {
        self.format
    }
    fn write(&mut self, buf: &[i16]) -> Result<usize, AudioError> {
        let io = self.pcm.io_i16().map_err(alsa_err(&self.device, "playback io"))?;
        match io.writei(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.recover(e, "playback")?;
                let io = self.pcm.io_i16().map_err(alsa_err(&self.device, "playback io"))?;
                io.writei(buf).map_err(alsa_err(&self.device, "playback"))
            }
        }
    }
    fn drain(&mut self) -> Result<(), AudioError> {
        self.pcm.drain().map_err(alsa_err(&self.device, "drain"))
    }
}

/// The mixer element a volume request means on `card`.
fn find_selem<'m>(
    mixer: &'m alsa::mixer::Mixer,
    card: &str,
    control: Option<&str>,
) -> Result<alsa::mixer::Selem<'m>, AudioError> {
    use alsa::mixer::Selem;
    let elems: Vec<Selem<'m>> = mixer.iter().filter_map(Selem::new).filter(|s| s.has_playback_volume()).collect();
    let name = |s: &Selem<'_>| s.get_id().get_name().map(str::to_string).unwrap_or_default();
    let chosen = match control {
        Some(wanted) => elems.into_iter().find(|s| name(s) == wanted),
        None => {
            let rank = |s: &Selem<'_>| {
                ["Master", "PCM", "Speaker", "Headphone"].iter().position(|n| *n == name(s)).unwrap_or(usize::MAX)
            };
            elems.into_iter().min_by_key(rank)
        }
    };
    chosen.ok_or_else(|| AudioError::NoMixerControl { card: card.into() })
}

fn selem_state(card: &str, selem: &alsa::mixer::Selem<'_>) -> Result<MixerState, AudioError> {
    use alsa::mixer::SelemChannelId;
    let control = selem.get_id().get_name().map(str::to_string).unwrap_or_default();
    let (min, max) = selem.get_playback_volume_range();
    let raw = selem.get_playback_volume(SelemChannelId::mono()).map_err(alsa_err(card, "read volume"))?;
    let volume_percent =
        if max > min { (((raw - min) * 100 + (max - min) / 2) / (max - min)).clamp(0, 100) as u8 } else { 0 };
    let muted = if selem.has_playback_switch() {
        Some(selem.get_playback_switch(SelemChannelId::mono()).map_err(alsa_err(card, "read switch"))? == 0)
    } else {
        None
    };
    Ok(MixerState { card: card.into(), control, volume_percent, muted, simulated: false })
}

/// `hw:CARD` for a card id, index or `hw:` name.
fn card_ctl_name(card: &str) -> String {
    if card.starts_with("hw:") { card.to_string() } else { format!("hw:{card}") }
}

impl AudioBackend for AlsaBackend {
    fn kind(&self) -> &'static str {
        "alsa"
    }
    fn simulated(&self) -> bool {
        false
    }
    fn devices(&self) -> Result<Vec<PcmDevice>, AudioError> {
        let mut out = Vec::new();
        for card in alsa::card::Iter::new() {
            let card = card.map_err(alsa_err("cards", "list cards"))?;
            let index = card.get_index();
            let ctl_name = format!("hw:{index}");
            let ctl = match alsa::ctl::Ctl::new(&ctl_name, false) {
                Ok(ctl) => ctl,
                // A card that vanished or that we may not open is left out, not an error for the list.
                Err(_) => continue,
            };
            let info = ctl.card_info().map_err(alsa_err(&ctl_name, "card info"))?;
            let card_id = info.get_id().unwrap_or_default().to_string();
            let card_name = info.get_longname().unwrap_or_default().to_string();
            for device in alsa::ctl::DeviceIter::new(&ctl) {
                let Ok(device) = u32::try_from(device) else { continue };
                let capture = ctl.pcm_info(device, 0, alsa::Direction::Capture);
                let playback = ctl.pcm_info(device, 0, alsa::Direction::Playback);
                let name = capture
                    .as_ref()
                    .or(playback.as_ref())
                    .ok()
                    .and_then(|i| i.get_name().ok().map(str::to_string))
                    .unwrap_or_default();
                out.push(PcmDevice {
                    id: format!("hw:{},{device}", if card_id.is_empty() { index.to_string() } else { card_id.clone() }),
                    card: card_id.clone(),
                    card_index: index,
                    card_name: card_name.clone(),
                    name,
                    capture: capture.is_ok(),
                    playback: playback.is_ok(),
                    simulated: false,
                });
            }
        }
        Ok(out)
    }
    fn open_capture(&self, device: &str, format: StreamFormat) -> Result<Box<dyn AudioCapture>, AudioError> {
        let pcm = open_pcm(device, alsa::Direction::Capture, format)?;
        pcm.start().map_err(alsa_err(device, "start capture"))?;
        Ok(Box::new(AlsaStream { device: device.into(), pcm, format }))
    }
    fn open_playback(&self, device: &str, format: StreamFormat) -> Result<Box<dyn AudioPlayback>, AudioError> {
        let pcm = open_pcm(device, alsa::Direction::Playback, format)?;
        Ok(Box::new(AlsaStream { device: device.into(), pcm, format }))
    }
    fn mixer(&self, card: &str, control: Option<&str>) -> Result<MixerState, AudioError> {
        let name = card_ctl_name(card);
        let mixer = alsa::mixer::Mixer::new(&name, false).map_err(alsa_err(&name, "open mixer"))?;
        let selem = find_selem(&mixer, card, control)?;
        selem_state(card, &selem)
    }
    fn set_mixer(
        &self,
        card: &str,
        control: Option<&str>,
        volume_percent: Option<u8>,
        muted: Option<bool>,
    ) -> Result<MixerState, AudioError> {
        let name = card_ctl_name(card);
        let mixer = alsa::mixer::Mixer::new(&name, false).map_err(alsa_err(&name, "open mixer"))?;
        let selem = find_selem(&mixer, card, control)?;
        if let Some(percent) = volume_percent {
            let (min, max) = selem.get_playback_volume_range();
            let raw = min + (max - min) * i64::from(percent.min(100)) / 100;
            selem.set_playback_volume_all(raw).map_err(alsa_err(card, "set volume"))?;
        }
        if let Some(muted) = muted {
            if !selem.has_playback_switch() {
                return Err(AudioError::Unsupported {
                    device: card.into(),
                    message: "the control has no mute switch".into(),
                });
            }
            selem.set_playback_switch_all(i32::from(!muted)).map_err(alsa_err(card, "set switch"))?;
        }
        selem_state(card, &selem)
    }
}

// ---------------------------------------------------------------- loopback check

/// What a tone round trip measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoopbackResult {
    pub playback: String,
    pub capture: String,
    pub sent_hz: f64,
    pub detected_hz: Option<f64>,
    pub level_dbfs: Option<f64>,
    pub frames_captured: usize,
}

/// Plays a `hz` tone on `playback` for `duration` while capturing from
/// `capture` (e.g. the two ends of snd-aloop), and measures what came back.
/// The capture's first 100 ms are skipped (the loop fills with silence first).
pub fn loopback_tone(
    backend: &dyn AudioBackend,
    playback: &str,
    capture: &str,
    format: StreamFormat,
    hz: f64,
    duration: Duration,
) -> Result<LoopbackResult, AudioError> {
    let total = (duration.as_secs_f64() * f64::from(format.rate)) as usize;
    let period = (format.rate / 50).max(1) as usize;
    let channels = usize::from(format.channels.max(1));
    // Capture opens first so that it is running when the tone starts.
    let mut input = backend.open_capture(capture, format)?;
    let mut output = backend.open_playback(playback, format)?;
    let player = std::thread::spawn(move || -> Result<(), AudioError> {
        let mut phase = 0.0;
        let mut sent = 0;
        while sent < total + period * 10 {
            let chunk = sine(hz, 0.5, format, period, &mut phase);
            let mut at = 0;
            while at < chunk.len() {
                let n = output.write(&chunk[at..])?;
                at += n * channels;
            }
            sent += period;
        }
        output.drain()
    });
    let mut captured = Vec::with_capacity(total * channels);
    let mut buf = vec![0i16; period * channels];
    while captured.len() < total * channels {
        let n = input.read(&mut buf)?;
        captured.extend_from_slice(&buf[..n * channels]);
    }
    drop(input);
    match player.join() {
        Ok(result) => result?,
        Err(_) => {
            return Err(AudioError::Unsupported {
                device: playback.into(),
                message: "the playback thread panicked".into(),
            });
        }
    }
    let skip = (format.rate as usize / 10 * channels).min(captured.len());
    let measured = &captured[skip..];
    Ok(LoopbackResult {
        playback: playback.into(),
        capture: capture.into(),
        sent_hz: hz,
        detected_hz: tone_frequency(measured, format),
        level_dbfs: level_dbfs(measured, format.channels),
        frames_captured: captured.len() / channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: StreamFormat = StreamFormat::new(48_000, 2);

    #[test]
    fn a_sine_is_measured_back() {
        let mut phase = 0.0;
        let tone = sine(1000.0, 0.5, F, 4800, &mut phase);
        assert_eq!(tone.len(), 9600, "two channels");
        let hz = tone_frequency(&tone, F).expect("a tone");
        assert!((hz - 1000.0).abs() < 1.0, "{hz}");
        let db = level_dbfs(&tone, 2).expect("level");
        assert!((db - (-9.03)).abs() < 0.1, "half scale sine is -9 dBFS, got {db}");
        assert_eq!(tone_frequency(&[0; 1000], F), None, "silence has no tone");
        assert_eq!(level_dbfs(&[0; 1000], 2), None);
        let mut phase = 0.0;
        let low = sine(440.0, 0.3, StreamFormat::new(8000, 1), 8000, &mut phase);
        let hz = tone_frequency(&low, StreamFormat::new(8000, 1)).expect("a tone");
        assert!((hz - 440.0).abs() < 0.5, "{hz}");
    }

    #[test]
    fn the_simulated_card_captures_a_tone_and_measures_playback() {
        let sim = SimulatedAudio::unpaced();
        assert!(sim.simulated());
        let devices = sim.devices().expect("devices");
        assert!(devices[0].simulated && devices[0].capture && devices[0].playback);
        let mut capture = sim.open_capture(SIM_DEVICE, F).expect("capture");
        let mut buf = vec![0i16; 4800 * 2];
        assert_eq!(capture.read(&mut buf).expect("read"), 4800);
        let hz = tone_frequency(&buf, F).expect("tone");
        assert!((hz - 1000.0).abs() < 1.0);
        let mut playback = sim.open_playback(SIM_DEVICE, F).expect("playback");
        assert_eq!(playback.write(&buf).expect("write"), 4800);
        let stats = sim.sink_stats();
        assert_eq!(stats.frames, 4800);
        assert!((stats.frequency_hz.expect("hz") - 1000.0).abs() < 1.0);
        assert!((stats.level_dbfs.expect("level") - (-13.0)).abs() < 0.2, "{:?}", stats.level_dbfs);
        assert!(matches!(sim.open_capture("hw:0,0", F), Err(AudioError::NoSuchDevice(_))));
    }

    #[test]
    fn the_simulated_loopback_round_trip() {
        let sim = SimulatedAudio::unpaced();
        // The simulated capture is its own tone, not a loop: this checks the plumbing.
        let r = loopback_tone(&sim, SIM_DEVICE, SIM_DEVICE, F, 1000.0, Duration::from_millis(300)).expect("loop");
        assert_eq!(r.frames_captured, 14_400);
        assert!((r.detected_hz.expect("hz") - 1000.0).abs() < 1.0);
        assert!(sim.sink_stats().frames >= 14_400);
    }

    #[test]
    fn the_simulated_mixer_keeps_volume_and_mute() {
        let sim = SimulatedAudio::unpaced();
        let m = sim.set_mixer(SIM_CARD, None, Some(150), Some(true)).expect("set");
        assert_eq!((m.volume_percent, m.muted), (100, Some(true)), "clamped to 100");
        let m = sim.set_mixer(SIM_CARD, Some("Master"), Some(30), None).expect("set");
        assert_eq!((m.volume_percent, m.muted), (30, Some(true)));
        assert!(matches!(sim.mixer(SIM_CARD, Some("Bass")), Err(AudioError::NoSuchControl(_))));
        assert!(matches!(sim.mixer("hw:0", None), Err(AudioError::NoSuchDevice(_))));
    }

    #[test]
    fn no_sound_devices_means_the_simulated_card() {
        assert!(backend_at(Path::new("/nonexistent")).simulated());
        let dir = std::env::temp_dir().join(format!("bg-hal-snd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("timer"), "").expect("file");
        assert!(backend_at(&dir).simulated(), "only a timer: no card");
        std::fs::write(dir.join("controlC0"), "").expect("file");
        let b = backend_at(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(b.kind(), "alsa");
    }
}
