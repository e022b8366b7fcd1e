//! In-band DTMF detection (ITU-T Q.23 tone pairs, Q.24-style acceptance): a
//! Goertzel filter per tone over short blocks, so that a phone or trunk that
//! sends its digits as audio can still dial through the box and reach peers
//! that only understand RFC 4733 events or SIP INFO.
//!
//! Pure: samples in, digit events out, positions counted in samples (the
//! caller knows the clock).

/// The low (row) group of DTMF frequencies, Hz.
const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// The high (column) group, Hz.
const COLUMNS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// RFC 4733 event codes by [row][column]: 1 2 3 A / 4 5 6 B / 7 8 9 C / * 0 # D.
const EVENTS: [[u8; 4]; 4] = [[1, 2, 3, 12], [4, 5, 6, 13], [7, 8, 9, 14], [10, 0, 11, 15]];

/// Block length at 8 kHz: 12.75 ms, short enough that two blocks fit in the
/// 40 ms a digit must last (Q.24), long enough to separate neighbouring tones.
const BLOCK_AT_8K: usize = 102;
/// Weakest tone accepted, as the amplitude of each of the two sines in 16-bit
/// linear samples: about -30 dBm0 (0 dBm0 is a sine of ~22 000 peak).
const MIN_AMPLITUDE: f32 = 700.0;
/// Largest level difference between the two tones (twist), as a power ratio: 8 dB.
const MAX_TWIST: f32 = 6.31;
/// How much the strongest tone of a group must exceed the others of its group: 8 dB.
const MIN_RELATIVE_PEAK: f32 = 6.31;
/// Share of the block's energy the two tones must carry (speech spreads its
/// energy; a DTMF digit is nearly all in its two tones).
const MIN_TONE_SHARE: f32 = 0.6;
/// Consecutive blocks that must agree before a digit begins, and consecutive
/// blocks without it before it ends (one dropout block is bridged).
const BLOCKS_TO_BEGIN: u32 = 2;
const BLOCKS_TO_END: u32 = 2;

/// What the detector found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtmfTone {
    /// A digit (RFC 4733 event code) began at this sample position.
    Began { event: u8, at_sample: u64 },
    /// The digit ended; it lasted this many samples.
    Ended { event: u8, duration_samples: u64 },
}

/// A streaming DTMF detector for one direction of one call.
#[derive(Debug)]
pub struct DtmfDetector {
    sample_rate: u32,
    block_len: usize,
    coefficients: [f32; 8],
    block: Vec<f32>,
    /// Samples consumed before the current block.
    position: u64,
    /// The digit the last blocks showed, and how many blocks in a row.
    candidate: Option<u8>,
    candidate_blocks: u32,
    candidate_since: u64,
    /// The digit reported as begun, where it began, and blocks since it was last seen.
    current: Option<(u8, u64)>,
    current_last_seen: u64,
    misses: u32,
    events: std::collections::VecDeque<DtmfTone>,
}

impl DtmfDetector {
    /// A detector for samples at `sample_rate` Hz (8000, 16000 or 48000 in the gateway).
    pub fn new(sample_rate: u32) -> DtmfDetector {
        let sample_rate = sample_rate.max(8000);
        let block_len = BLOCK_AT_8K * sample_rate as usize / 8000;
        let mut coefficients = [0.0; 8];
        for (c, f) in coefficients.iter_mut().zip(ROWS.iter().chain(COLUMNS.iter())) {
            // The exact tone frequency (not the nearest DFT bin): no scalloping loss.
            *c = 2.0 * (2.0 * std::f32::consts::PI * f / sample_rate as f32).cos();
        }
        DtmfDetector {
            sample_rate,
            block_len,
            coefficients,
            block: Vec::with_capacity(block_len),
            position: 0,
            candidate: None,
            candidate_blocks: 0,
            candidate_since: 0,
            current: None,
            current_last_seen: 0,
            misses: 0,
            events: std::collections::VecDeque::new(),
        }
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Feeds samples (any length); digits found show up in [`DtmfDetector::poll`].
    pub fn push(&mut self, samples: &[i16]) {
        for &s in samples {
            self.block.push(f32::from(s));
            if self.block.len() == self.block_len {
                let digit = self.classify();
                self.block.clear();
                self.position += self.block_len as u64;
                self.step(digit);
            }
        }
    }

    /// The next digit event, oldest first.
    pub fn poll(&mut self) -> Option<DtmfTone> {
        self.events.pop_front()
    }

    /// The digit in the current block, if its two tones stand out clearly.
    fn classify(&self) -> Option<u8> {
        let mut power = [0.0f32; 8];
        for (p, &coefficient) in power.iter_mut().zip(self.coefficients.iter()) {
            let (mut s1, mut s2) = (0.0f32, 0.0f32);
            for &x in &self.block {
                let s0 = x + coefficient * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            *p = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
        }
        let (rows, columns) = power.split_at(4);
        let (row, row_power) = strongest(rows)?;
        let (column, column_power) = strongest(columns)?;
        let n = self.block_len as f32;
        // A sine of amplitude A gives a Goertzel power of (A·N/2)².
        let min_power = (MIN_AMPLITUDE * n / 2.0).powi(2);
        if row_power < min_power || column_power < min_power {
            return None;
        }
        if row_power > column_power * MAX_TWIST || column_power > row_power * MAX_TWIST {
            return None;
        }
        let stands_out = |group: &[f32], best: usize, best_power: f32| {
            group.iter().enumerate().all(|(i, &p)| i == best || p * MIN_RELATIVE_PEAK <= best_power)
        };
        if !stands_out(rows, row, row_power) || !stands_out(columns, column, column_power) {
            return None;
        }
        // A sine's Goertzel power is its block energy Σx² times N/2.
        let energy: f32 = self.block.iter().map(|x| x * x).sum();
        if row_power + column_power < MIN_TONE_SHARE * energy * n / 2.0 {
            return None;
        }
        Some(EVENTS[row][column])
    }

    /// Advances the digit state machine by one block's verdict.
    fn step(&mut self, digit: Option<u8>) {
        let block_start = self.position - self.block_len as u64;
        if digit.is_some() && digit == self.candidate {
            self.candidate_blocks += 1;
        } else {
            self.candidate = digit;
            self.candidate_blocks = u32::from(digit.is_some());
            self.candidate_since = block_start;
        }
        match self.current {
            Some((event, _)) if digit == Some(event) => {
                self.misses = 0;
                self.current_last_seen = self.position;
            }
            Some((event, began)) => {
                self.misses += 1;
                // Another digit that is already established ends this one at once.
                let replaced = digit.is_some() && self.candidate_blocks >= BLOCKS_TO_BEGIN;
                if self.misses >= BLOCKS_TO_END || replaced {
                    self.events.push_back(DtmfTone::Ended { event, duration_samples: self.current_last_seen - began });
                    self.current = None;
                    self.misses = 0;
                }
            }
            None => {}
        }
        if self.current.is_none()
            && let Some(event) = self.candidate
            && self.candidate_blocks >= BLOCKS_TO_BEGIN
        {
            self.current = Some((event, self.candidate_since));
            self.current_last_seen = self.position;
            self.misses = 0;
            self.events.push_back(DtmfTone::Began { event, at_sample: self.candidate_since });
        }
    }
}

/// Keys a phone sends as audio in its RTP payloads: the payload decoded and
/// listened to, for a relay that passes the audio on untouched.
#[derive(Debug)]
pub struct InbandKeys {
    decoder: crate::Decoder,
    detector: DtmfDetector,
    pcm: Vec<i16>,
}

impl InbandKeys {
    /// Listens to payloads of `codec` (at the codec's own PCM rate).
    pub fn new(codec: crate::Codec) -> Result<InbandKeys, crate::DspError> {
        let rate = codec.pcm_rate();
        Ok(InbandKeys {
            decoder: crate::Decoder::new(codec, rate)?,
            detector: DtmfDetector::new(rate),
            pcm: Vec::new(),
        })
    }

    pub fn codec(&self) -> crate::Codec {
        self.decoder.codec()
    }

    /// One RTP payload; a key that just ended, with its duration in ms. (Keys are
    /// reported at their end, as SIP INFO carries a duration.)
    pub fn listen(&mut self, payload: &[u8]) -> Option<(u8, u32)> {
        self.pcm.clear();
        // A payload that does not decode is not a key; the relay passes it anyway.
        self.decoder.decode(payload, &mut self.pcm).ok()?;
        self.detector.push(&self.pcm);
        let rate = u64::from(self.detector.sample_rate());
        let mut ended = None;
        while let Some(tone) = self.detector.poll() {
            if let DtmfTone::Ended { event, duration_samples } = tone {
                ended = Some((event, u32::try_from(duration_samples * 1000 / rate).unwrap_or(u32::MAX)));
            }
        }
        ended
    }
}

/// Index and power of the strongest entry; `None` for an empty group.
fn strongest(group: &[f32]) -> Option<(usize, f32)> {
    group.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The two frequencies (low, high) of an RFC 4733 event code 0-15, for tone generation.
pub fn frequencies_of(event: u8) -> Option<(f32, f32)> {
    EVENTS.iter().enumerate().find_map(|(r, row)| row.iter().position(|&e| e == event).map(|c| (ROWS[r], COLUMNS[c])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use branchgate_rtp::dtmf_event as event_of_key;

    /// `ms` of the digit's two tones at `amplitude` each (16-bit linear), frequencies scaled by `detune`.
    fn tone(rate: u32, event: u8, ms: u32, amplitude: f32, detune: f32, twist_db: f32) -> Vec<i16> {
        let (low, high) = frequencies_of(event).expect("an event code");
        let high_amplitude = amplitude * 10f32.powf(twist_db / 20.0);
        (0..rate * ms / 1000)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let v = amplitude * (2.0 * std::f32::consts::PI * low * detune * t).sin()
                    + high_amplitude * (2.0 * std::f32::consts::PI * high * detune * t).sin();
                v as i16
            })
            .collect()
    }

    fn silence(rate: u32, ms: u32) -> Vec<i16> {
        vec![0; (rate * ms / 1000) as usize]
    }

    fn detect(rate: u32, samples: &[i16]) -> Vec<DtmfTone> {
        let mut detector = DtmfDetector::new(rate);
        // Odd chunk sizes: blocks must not depend on how the audio arrives.
        for chunk in samples.chunks(77) {
            detector.push(chunk);
        }
        std::iter::from_fn(|| detector.poll()).collect()
    }

    fn digits(events: &[DtmfTone]) -> Vec<u8> {
        events.iter().filter_map(|e| if let DtmfTone::Began { event, .. } = e { Some(*event) } else { None }).collect()
    }

    #[test]
    fn every_key_at_every_gateway_rate() {
        for rate in [8000, 16000, 48000] {
            let mut samples = Vec::new();
            for key in "0123456789*#ABCD".chars() {
                samples.extend(tone(rate, event_of_key(key).expect("key"), 80, 4000.0, 1.0, 0.0));
                samples.extend(silence(rate, 60));
            }
            let events = detect(rate, &samples);
            let expected: Vec<u8> = "0123456789*#ABCD".chars().filter_map(event_of_key).collect();
            assert_eq!(digits(&events), expected, "at {rate} Hz");
            // Every digit ended, with about its 80 ms.
            for e in &events {
                if let DtmfTone::Ended { duration_samples, .. } = e {
                    let ms = duration_samples * 1000 / u64::from(rate);
                    assert!((60..=110).contains(&ms), "{ms} ms at {rate} Hz");
                }
            }
            assert_eq!(events.len(), 32);
        }
    }

    #[test]
    fn q24_limits_frequency_deviation_twist_and_duration() {
        let five = event_of_key('5').expect("key");
        // ±1.5% frequency deviation is accepted, ±3.5% is not.
        for detune in [0.985, 1.015] {
            assert_eq!(digits(&detect(8000, &tone(8000, five, 60, 3000.0, detune, 0.0))), vec![five], "{detune}");
        }
        for detune in [0.965, 1.035] {
            assert!(digits(&detect(8000, &tone(8000, five, 60, 3000.0, detune, 0.0))).is_empty(), "{detune}");
        }
        // Twist of 6 dB either way is accepted, 12 dB is not.
        assert_eq!(digits(&detect(8000, &tone(8000, five, 60, 3000.0, 1.0, 6.0))), vec![five]);
        assert_eq!(digits(&detect(8000, &tone(8000, five, 60, 3000.0, 1.0, -6.0))), vec![five]);
        assert!(digits(&detect(8000, &tone(8000, five, 60, 3000.0, 1.0, 12.0))).is_empty());
        // 40 ms is a digit; 20 ms is not.
        assert_eq!(digits(&detect(8000, &tone(8000, five, 40, 3000.0, 1.0, 0.0))), vec![five]);
        assert!(digits(&detect(8000, &tone(8000, five, 20, 3000.0, 1.0, 0.0))).is_empty());
        // -35 dBm0 (≈400 peak) is below the threshold.
        assert!(digits(&detect(8000, &tone(8000, five, 80, 400.0, 1.0, 0.0))).is_empty());
    }

    #[test]
    fn a_single_dropout_does_not_split_a_digit_and_repeated_keys_are_separate() {
        let one = event_of_key('1').expect("key");
        let mut samples = tone(8000, one, 100, 3000.0, 1.0, 0.0);
        // 5 ms of silence inside the digit (a lost packet concealed with zeros).
        samples.splice(400..440, std::iter::repeat_n(0, 40));
        samples.extend(silence(8000, 50));
        samples.extend(tone(8000, one, 100, 3000.0, 1.0, 0.0));
        samples.extend(silence(8000, 50));
        assert_eq!(digits(&detect(8000, &samples)), vec![one, one]);
    }

    #[test]
    fn speech_like_audio_and_single_tones_are_not_digits() {
        // A 1 kHz test tone, a single DTMF row tone, and a chord of harmonics.
        let single: Vec<i16> = (0..8000)
            .map(|i| (8000.0 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin()) as i16)
            .collect();
        assert!(detect(8000, &single).is_empty());
        let row_only: Vec<i16> = (0..8000)
            .map(|i| (8000.0 * (2.0 * std::f32::consts::PI * 697.0 * i as f32 / 8000.0).sin()) as i16)
            .collect();
        assert!(detect(8000, &row_only).is_empty());
        let voice: Vec<i16> = (0..16000)
            .map(|i| {
                let t = i as f32 / 8000.0;
                (1..12)
                    .map(|h| 2500.0 / h as f32 * (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin())
                    .sum::<f32>() as i16
            })
            .collect();
        assert!(detect(8000, &voice).is_empty());
    }

    #[test]
    fn keys_in_g711_and_g722_payloads_are_heard() {
        for codec in [crate::Codec::Pcmu, crate::Codec::Pcma, crate::Codec::G722] {
            let rate = codec.pcm_rate();
            let mut pcm = tone(rate, event_of_key('#').expect("key"), 100, 3000.0, 1.0, 0.0);
            pcm.extend(silence(rate, 100));
            let mut encoder = crate::Encoder::new(codec, rate, 20).expect("encoder");
            let mut keys = InbandKeys::new(codec).expect("listener");
            let mut heard = Vec::new();
            for frame in pcm.chunks_exact(encoder.frame_samples()) {
                let mut payload = Vec::new();
                encoder.encode(frame, &mut payload).expect("encode");
                heard.extend(keys.listen(&payload));
            }
            assert_eq!(heard.len(), 1, "{codec}");
            assert_eq!(heard[0].0, 11, "{codec}");
            assert!((80..=120).contains(&heard[0].1), "{codec}: {} ms", heard[0].1);
        }
    }

    #[test]
    fn digits_survive_g711() {
        let samples: Vec<i16> = tone(8000, event_of_key('9').expect("key"), 60, 2000.0, 1.0, 0.0)
            .into_iter()
            .map(|s| crate::g711::ulaw_decode(crate::g711::ulaw_encode(s)))
            .collect();
        assert_eq!(digits(&detect(8000, &samples)), vec![9]);
    }
}
