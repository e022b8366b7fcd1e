//! The encodings the box decodes and encodes, behind one decoder and one
//! encoder type: G.711 μ-law and A-law (ITU-T G.711), G.722 (ITU-T G.722,
//! 64 kbit/s, [`crate::g722`]) and Opus (RFC 6716, libopus). Opus runs at the
//! PCM rate of the other side of the call (libopus resamples inside the
//! codec), so a G.711 ↔ Opus call needs no separate resampler: 8 kHz PCM in
//! the middle, 48 kHz RTP clock on the Opus side (RFC 7587 §4.1); G.722 ↔
//! Opus likewise at 16 kHz. G.722's RTP clock is 8000 Hz although its audio
//! is 16 kHz (RFC 3551 §4.5.2): half a tick per sample.

use crate::g711;
use crate::g722::{G722Decoder, G722Encoder};

#[derive(Debug, thiserror::Error)]
pub enum DspError {
    #[error("{codec} cannot run with {rate} Hz PCM")]
    Rate { codec: Codec, rate: u32 },
    #[error("Opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("a {codec} frame must be {expected} samples, not {got}")]
    FrameSize { codec: Codec, expected: usize, got: usize },
    #[error("transcoding {from} to {to} is not supported")]
    Unsupported { from: Codec, to: Codec },
    #[error("{ptime_ms} ms of {codec} is not a whole number of RTP clock ticks")]
    Ptime { codec: Codec, ptime_ms: u32 },
}

/// An audio encoding the box can transcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
    G722,
    Opus,
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Codec {
    /// The codec an `a=rtpmap` names (encoding name case-insensitive, as RFC 4855 says).
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name) && c.rtp_clock() == clock_rate)
    }

    /// The encoding name in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP timestamp clock (8000 for G.722: RFC 3551 §4.5.2 keeps the
    /// clock G.722's first RTP profile had by mistake).
    pub fn rtp_clock(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// The static payload type of RFC 3551 Table 4, none for Opus (dynamic).
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus => None,
        }
    }

    /// The rate of the codec's own audio: 8 kHz for G.711, 16 kHz for
    /// G.722, 48 kHz for Opus (which can also run at the lower rates).
    pub fn pcm_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// Whether the codec can work with PCM at `rate`.
    pub fn supports_rate(self, rate: u32) -> bool {
        match self {
            Codec::Pcmu | Codec::Pcma => rate == 8000,
            Codec::G722 => rate == 16000,
            Codec::Opus => matches!(rate, 8000 | 12000 | 16000 | 24000 | 48000),
        }
    }
}

/// The longest Opus packet (120 ms) at the highest rate, in samples.
const OPUS_MAX_FRAME: usize = 5760;

enum DecoderKind {
    Pcmu,
    Pcma,
    G722(Box<G722Receiver>),
    Opus(Box<opus::Decoder>),
}

/// G.722 has no loss concealment of its own (its Appendices III/IV are
/// separate algorithms): a loss is filled from the last [`G722_FADE`]
/// samples played, read backwards from the point of loss — so the
/// concealment starts at the very sample the audio stopped at (no click) and
/// has the spectrum of what was just heard — with a linear fade to silence
/// over those [`G722_FADE`] samples (20 ms), then silence. What was concealed
/// joins the history, so a second loss right after fades from where the
/// first left off. The ADPCM state is left as it was: the codes after the
/// loss are decoded against a state the encoder has moved on from, so the
/// first milliseconds are off (measured on two tones after 20 ms lost: error
/// at -4 dB of the signal in the first 5 ms, -20 dB after 10 ms, in step
/// again bit for bit after ~0.3 s, see `g722.rs`); the audio after a loss
/// therefore fades in over [`G722_FADE_IN`] samples (10 ms).
const G722_FADE: usize = 320;
const G722_FADE_IN: usize = 160;

struct G722Receiver {
    decoder: G722Decoder,
    /// The last `G722_FADE` samples played, oldest first (zeros before the first).
    history: [i16; G722_FADE],
    /// Samples still to fade in after a loss.
    fade_in: usize,
}

impl G722Receiver {
    fn decode(&mut self, payload: &[u8], pcm: &mut Vec<i16>) -> usize {
        let start = pcm.len();
        let samples = self.decoder.decode_to_vec(payload, pcm);
        for x in &mut pcm[start..] {
            if self.fade_in == 0 {
                break;
            }
            let gain = (G722_FADE_IN - self.fade_in) as i32;
            *x = (i32::from(*x) * gain / G722_FADE_IN as i32) as i16;
            self.fade_in -= 1;
        }
        self.remember(&pcm[start..]);
        samples
    }

    fn remember(&mut self, played: &[i16]) {
        let keep = played.len().min(G722_FADE);
        self.history.copy_within(keep.., 0);
        self.history[G722_FADE - keep..].copy_from_slice(&played[played.len() - keep..]);
    }

    fn conceal(&mut self, samples: usize, pcm: &mut Vec<i16>) {
        let start = pcm.len();
        let fade = G722_FADE as i32;
        pcm.extend((0..samples).map(|n| {
            if n >= G722_FADE {
                return 0;
            }
            let x = i32::from(self.history[G722_FADE - 1 - n]);
            (x * (fade - n as i32) / fade) as i16
        }));
        if samples > 0 {
            self.fade_in = G722_FADE_IN;
        }
        self.remember(&pcm[start..]);
    }
}

/// Payloads of one RTP stream to 16-bit mono PCM.
pub struct Decoder {
    kind: DecoderKind,
    rate: u32,
    scratch: Vec<i16>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("codec", &self.codec()).field("rate", &self.rate).finish()
    }
}

impl Decoder {
    /// A decoder producing PCM at `rate` Hz.
    pub fn new(codec: Codec, rate: u32) -> Result<Decoder, DspError> {
        if !codec.supports_rate(rate) {
            return Err(DspError::Rate { codec, rate });
        }
        let kind = match codec {
            Codec::Pcmu => DecoderKind::Pcmu,
            Codec::Pcma => DecoderKind::Pcma,
            Codec::G722 => {
                let decoder = G722Decoder::new();
                DecoderKind::G722(Box::new(G722Receiver { decoder, history: [0; G722_FADE], fade_in: 0 }))
            }
            // Browsers send opus/48000/2 with mono content; libopus downmixes a stereo packet.
            Codec::Opus => DecoderKind::Opus(Box::new(opus::Decoder::new(rate, opus::Channels::Mono)?)),
        };
        Ok(Decoder { kind, rate, scratch: Vec::new() })
    }

    pub fn codec(&self) -> Codec {
        match self.kind {
            DecoderKind::Pcmu => Codec::Pcmu,
            DecoderKind::Pcma => Codec::Pcma,
            DecoderKind::G722(_) => Codec::G722,
            DecoderKind::Opus(_) => Codec::Opus,
        }
    }

    /// Decodes one payload, appending its samples to `pcm`; returns how many.
    pub fn decode(&mut self, payload: &[u8], pcm: &mut Vec<i16>) -> Result<usize, DspError> {
        match &mut self.kind {
            DecoderKind::Pcmu => pcm.extend(payload.iter().map(|&b| g711::ulaw_decode(b))),
            DecoderKind::Pcma => pcm.extend(payload.iter().map(|&b| g711::alaw_decode(b))),
            DecoderKind::G722(receiver) => return Ok(receiver.decode(payload, pcm)),
            DecoderKind::Opus(decoder) => {
                if payload.is_empty() {
                    // An empty payload would ask libopus to conceal a loss; that is `conceal`'s job.
                    return Ok(0);
                }
                self.scratch.resize(OPUS_MAX_FRAME, 0);
                let samples = decoder.decode(payload, &mut self.scratch, false)?;
                pcm.extend_from_slice(&self.scratch[..samples]);
                return Ok(samples);
            }
        }
        Ok(payload.len())
    }

    /// Samples one payload decodes to, without decoding it.
    pub fn samples_in(&self, payload: &[u8]) -> Result<usize, DspError> {
        match &self.kind {
            DecoderKind::Pcmu | DecoderKind::Pcma => Ok(payload.len()),
            DecoderKind::G722(_) => Ok(2 * payload.len()),
            DecoderKind::Opus(_) => Ok(opus::packet::get_nb_samples(payload, self.rate)?),
        }
    }

    /// `samples` samples in place of a lost packet, appended to `pcm`. With
    /// `next` (the packet after the loss), Opus rebuilds the lost audio from
    /// the in-band FEC that packet carries (RFC 6716 §2.1.7) where it has
    /// some, and conceals (PLC) otherwise; G.711 has neither and gives
    /// silence; G.722 fades out what came before and fades the audio after
    /// back in (see [`G722_FADE`]).
    pub fn conceal(&mut self, samples: usize, next: Option<&[u8]>, pcm: &mut Vec<i16>) -> Result<(), DspError> {
        match &mut self.kind {
            DecoderKind::Pcmu | DecoderKind::Pcma => pcm.resize(pcm.len() + samples, 0),
            DecoderKind::G722(receiver) => receiver.conceal(samples, pcm),
            DecoderKind::Opus(decoder) => {
                // libopus conceals in multiples of 2.5 ms, at most 120 ms at a time.
                let step = self.rate as usize / 400;
                let samples = (samples / step * step).min(OPUS_MAX_FRAME);
                if samples == 0 {
                    return Ok(());
                }
                self.scratch.resize(samples, 0);
                let decoded = decoder.decode(next.unwrap_or(&[]), &mut self.scratch[..samples], next.is_some())?;
                pcm.extend_from_slice(&self.scratch[..decoded]);
            }
        }
        Ok(())
    }
}

enum EncoderKind {
    Pcmu,
    Pcma,
    G722(Box<G722Encoder>),
    Opus(Box<opus::Encoder>),
}

/// 16-bit mono PCM frames to payloads of one RTP stream.
pub struct Encoder {
    kind: EncoderKind,
    frame: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("codec", &self.codec()).field("frame", &self.frame).finish()
    }
}

/// Opus settings for a voice leg towards a browser: VoIP mode, in-band FEC
/// for the losses the browser's network has, and complexity 5, which costs
/// ~1 % of a core per call here against ~1.2 % at 10 for no audible gain on
/// telephone-band input (measured, see FIELD-NOTES).
const OPUS_BITRATE: i32 = 24_000;
const OPUS_COMPLEXITY: i32 = 5;
const OPUS_EXPECTED_LOSS_PERCENT: i32 = 5;

impl Encoder {
    /// An encoder for PCM at `rate` Hz in frames of `ptime_ms` milliseconds.
    pub fn new(codec: Codec, rate: u32, ptime_ms: u32) -> Result<Encoder, DspError> {
        if !codec.supports_rate(rate) {
            return Err(DspError::Rate { codec, rate });
        }
        let kind = match codec {
            Codec::Pcmu => EncoderKind::Pcmu,
            Codec::Pcma => EncoderKind::Pcma,
            Codec::G722 => EncoderKind::G722(Box::default()),
            Codec::Opus => {
                let mut encoder = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)?;
                encoder.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
                encoder.set_complexity(OPUS_COMPLEXITY)?;
                encoder.set_inband_fec(true)?;
                encoder.set_packet_loss_perc(OPUS_EXPECTED_LOSS_PERCENT)?;
                EncoderKind::Opus(Box::new(encoder))
            }
        };
        Ok(Encoder { kind, frame: (rate * ptime_ms / 1000) as usize })
    }

    pub fn codec(&self) -> Codec {
        match self.kind {
            EncoderKind::Pcmu => Codec::Pcmu,
            EncoderKind::Pcma => Codec::Pcma,
            EncoderKind::G722(_) => Codec::G722,
            EncoderKind::Opus(_) => Codec::Opus,
        }
    }

    /// Samples in one frame.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Encodes exactly one frame, replacing `payload`'s contents.
    pub fn encode(&mut self, pcm: &[i16], payload: &mut Vec<u8>) -> Result<(), DspError> {
        if pcm.len() != self.frame {
            return Err(DspError::FrameSize { codec: self.codec(), expected: self.frame, got: pcm.len() });
        }
        payload.clear();
        match &mut self.kind {
            EncoderKind::Pcmu => payload.extend(pcm.iter().map(|&s| g711::ulaw_encode(s))),
            EncoderKind::Pcma => payload.extend(pcm.iter().map(|&s| g711::alaw_encode(s))),
            // A frame is 16 samples per millisecond, always a whole number of codes.
            EncoderKind::G722(encoder) => _ = encoder.encode_to_vec(pcm, payload),
            EncoderKind::Opus(encoder) => {
                // RFC 7587 recommends at most 1275 bytes per frame; a voice frame is far below.
                payload.resize(1275, 0);
                let length = encoder.encode(pcm, payload)?;
                payload.truncate(length);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resample::tests::{amplitude, sine};

    /// Signal-to-noise ratio of `output` against `input` delayed by `delay`, in dB.
    fn snr(input: &[i16], output: &[i16], delay: usize) -> f64 {
        let (mut signal, mut noise) = (0.0f64, 0.0f64);
        for (x, y) in input.iter().zip(&output[delay..]) {
            signal += f64::from(*x).powi(2);
            noise += (f64::from(*x) - f64::from(*y)).powi(2);
        }
        10.0 * (signal / noise.max(1.0)).log10()
    }

    fn round_trip(codec: Codec, rate: u32, input: &[i16]) -> Vec<i16> {
        let mut encoder = Encoder::new(codec, rate, 20).expect("encoder");
        let mut decoder = Decoder::new(codec, rate).expect("decoder");
        let (mut payload, mut output) = (Vec::new(), Vec::new());
        for frame in input.chunks_exact(encoder.frame_samples()) {
            encoder.encode(frame, &mut payload).expect("encode");
            assert_eq!(decoder.samples_in(&payload).expect("samples"), frame.len());
            decoder.decode(&payload, &mut output).expect("decode");
        }
        output
    }

    #[test]
    fn names_and_clocks_follow_the_rtp_profiles() {
        assert_eq!(Codec::from_rtpmap("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PCMA", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap("opus", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 8000), None);
        assert_eq!(Codec::from_rtpmap("G729", 8000), None);
        // G.722's RTP clock is 8000 although it samples at 16 kHz (RFC 3551 §4.5.2).
        assert_eq!(Codec::from_rtpmap("g722", 8000), Some(Codec::G722));
        assert_eq!(Codec::from_rtpmap("G722", 16000), None);
        assert_eq!(Codec::G722.static_payload_type(), Some(9));
        assert_eq!(Codec::Pcma.static_payload_type(), Some(8));
        assert_eq!(Codec::Opus.static_payload_type(), None);
        assert_eq!(Codec::G722.pcm_rate(), 16000);
        assert!(Decoder::new(Codec::G722, 8000).is_err());
        assert!(Encoder::new(Codec::G722, 48000, 20).is_err());
        assert!(Decoder::new(Codec::Pcmu, 16000).is_err());
        assert!(Encoder::new(Codec::Opus, 44100, 20).is_err());
    }

    #[test]
    fn g711_round_trip_keeps_a_tone_above_30_db() {
        let tone = sine(1000.0, 8000, 8000, 8000.0);
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let output = round_trip(codec, 8000, &tone);
            assert_eq!(output.len(), tone.len());
            let snr = snr(&tone, &output, 0);
            // G.711's SQNR for a loud sine is ~38 dB.
            assert!(snr > 30.0, "{codec}: {snr:.1} dB");
        }
    }

    #[test]
    fn opus_round_trip_at_8_and_48_khz_keeps_the_tone() {
        for rate in [8000, 48000] {
            let tone = sine(440.0, rate, rate as usize * 2, 8000.0);
            let output = round_trip(Codec::Opus, rate, &tone);
            assert_eq!(output.len(), tone.len());
            // Past the codec's start-up, the tone is there at its level and nothing else is loud.
            let settled = &output[rate as usize / 2..];
            let level = amplitude(settled, rate, 440.0);
            assert!((6000.0..10000.0).contains(&level), "{rate} Hz: 440 Hz at {level:.0}");
            let other = amplitude(settled, rate, 1000.0);
            assert!(other < 200.0, "{rate} Hz: 1 kHz at {other:.0}");
        }
    }

    #[test]
    fn opus_conceals_a_lost_frame_and_rebuilds_it_from_fec() {
        let rate = 8000;
        let tone = sine(300.0, rate, rate as usize, 8000.0);
        let mut encoder = Encoder::new(Codec::Opus, rate, 20).expect("encoder");
        let mut packets = Vec::new();
        for frame in tone.chunks_exact(160) {
            let mut payload = Vec::new();
            encoder.encode(frame, &mut payload).expect("encode");
            packets.push(payload);
        }
        for use_fec in [false, true] {
            let mut decoder = Decoder::new(Codec::Opus, rate).expect("decoder");
            let mut output = Vec::new();
            for (i, packet) in packets.iter().enumerate() {
                if i == 30 {
                    let next = use_fec.then_some(packets[31].as_slice());
                    decoder.conceal(160, next, &mut output).expect("conceal");
                } else {
                    decoder.decode(packet, &mut output).expect("decode");
                }
            }
            assert_eq!(output.len(), tone.len(), "fec {use_fec}");
            // The lost 20 ms still carries the tone (FEC or PLC), not a hole.
            let lost = &output[30 * 160..31 * 160];
            let level = amplitude(lost, rate, 300.0);
            assert!(level > 2000.0, "fec {use_fec}: {level:.0}");
        }
        let mut g711 = Decoder::new(Codec::Pcmu, rate).expect("decoder");
        let mut silence = Vec::new();
        g711.conceal(160, None, &mut silence).expect("conceal");
        assert_eq!(silence, vec![0; 160]);
    }

    #[test]
    fn g722_round_trip_keeps_wideband_tones() {
        for frequency in [1000.0, 6000.0] {
            let tone = sine(frequency, 16000, 16000, 8000.0);
            let output = round_trip(Codec::G722, 16000, &tone);
            assert_eq!(output.len(), tone.len());
            // 20 ms of 16 kHz audio is 160 bytes: one per RTP tick.
            let mut payload = Vec::new();
            Encoder::new(Codec::G722, 16000, 20).expect("encoder").encode(&tone[..320], &mut payload).expect("encode");
            assert_eq!(payload.len(), 160);
            // G.711 would have nothing left at 6 kHz.
            let level = amplitude(&output[1600..], 16000, frequency);
            assert!((7000.0..9000.0).contains(&level), "{frequency} Hz at {level:.0}");
            // The codec delays by 22 samples (its two QMFs).
            let snr = snr(&tone, &output, 22);
            assert!(snr > 20.0, "{frequency} Hz: {snr:.1} dB");
        }
    }

    #[test]
    fn g722_conceals_with_a_fade_from_where_the_audio_stopped() {
        let tone = sine(440.0, 16000, 3200, 8000.0);
        let mut encoder = Encoder::new(Codec::G722, 16000, 20).expect("encoder");
        let mut decoder = Decoder::new(Codec::G722, 16000).expect("decoder");
        let (mut payload, mut pcm) = (Vec::new(), Vec::new());
        for frame in tone.chunks_exact(320).take(5) {
            encoder.encode(frame, &mut payload).expect("encode");
            decoder.decode(&payload, &mut pcm).expect("decode");
        }
        let played = pcm.clone();
        decoder.conceal(960, None, &mut pcm).expect("conceal");
        assert_eq!(pcm.len(), played.len() + 960);
        let concealed = &pcm[played.len()..];
        // It starts at the last sample played, read backwards, and fades out within 20 ms.
        assert_eq!(concealed[0], played[played.len() - 1]);
        assert_eq!(concealed[1], (i32::from(played[played.len() - 2]) * 319 / 320) as i16);
        assert!(concealed[..160].iter().any(|&x| x.abs() > 2000));
        assert!(concealed[320..].iter().all(|&x| x == 0));
        // A second loss right after fades from the silence the first left.
        let before = pcm.len();
        decoder.conceal(160, None, &mut pcm).expect("conceal");
        assert!(pcm[before..].iter().all(|&x| x == 0));
        // Decoding carries on after the loss, faded in over 10 ms.
        encoder.encode(&tone[1600..1920], &mut payload).expect("encode");
        let before = pcm.len();
        assert_eq!(decoder.decode(&payload, &mut pcm).expect("decode"), 320);
        // Concealment leaves the ADPCM state alone: a decoder that never lost anything gives the
        // same samples, unfaded.
        let mut unfaded = Vec::new();
        let mut reference = Decoder::new(Codec::G722, 16000).expect("decoder");
        let mut encoder = Encoder::new(Codec::G722, 16000, 20).expect("encoder");
        for frame in tone.chunks_exact(320).take(5).chain([&tone[1600..1920]]) {
            encoder.encode(frame, &mut payload).expect("encode");
            unfaded.clear();
            reference.decode(&payload, &mut unfaded).expect("decode");
        }
        for (n, (&faded, &full)) in pcm[before..].iter().zip(&unfaded).enumerate() {
            let expected = if n < 160 { (i32::from(full) * n as i32 / 160) as i16 } else { full };
            assert_eq!(faded, expected, "sample {n}");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut decoder = Decoder::new(Codec::Opus, 8000).expect("decoder");
        let mut pcm = Vec::new();
        // A TOC byte announcing a code-3 packet with no frame count.
        assert!(decoder.decode(&[0x03], &mut pcm).is_err());
        assert_eq!(decoder.decode(&[], &mut pcm).expect("empty"), 0);
        let mut encoder = Encoder::new(Codec::Pcmu, 8000, 20).expect("encoder");
        assert!(encoder.encode(&[0; 100], &mut Vec::new()).is_err());
        let mut g722 = Decoder::new(Codec::G722, 16000).expect("decoder");
        assert_eq!(g722.decode(&[], &mut pcm).expect("empty"), 0);
        assert_eq!(g722.decode(&[0xff; 3], &mut pcm).expect("any bytes"), 6);
        let mut encoder = Encoder::new(Codec::G722, 16000, 20).expect("encoder");
        assert!(encoder.encode(&[0; 319], &mut Vec::new()).is_err());
    }
}
