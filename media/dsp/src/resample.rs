//! Resampling by integer ratios (8 ↔ 16 ↔ 48 kHz: the rates of G.711,
//! G.722 and Opus): a polyphase windowed-sinc low-pass FIR, so upsampling
//! computes only the non-zero taps and downsampling only the kept outputs.
//! No allocation per call; the state carries across frames, so a stream
//! cut into 10, 20 or 60 ms frames comes out the same.

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("resampling {from} Hz to {to} Hz is not an integer ratio")]
pub struct RatioError {
    pub from: u32,
    pub to: u32,
}

/// Taps per output phase: 40 gives a pass band to 0.43 × the low rate's
/// Nyquist-limited band (3.4 kHz at 8 kHz) and > 70 dB stop band (Blackman).
const TAPS_PER_PHASE: usize = 40;
/// Cut-off as a fraction of the lower rate.
const CUTOFF: f64 = 0.43;

#[derive(Clone, Debug)]
pub struct Resampler {
    /// Up (> 1) or down (< 1) by `factor`; 1 copies.
    up: bool,
    factor: usize,
    taps: Vec<f32>,
    /// Delay line written twice (at `at` and `at + len`) so the newest
    /// `len` samples are always one contiguous slice.
    line: Vec<f32>,
    at: usize,
    /// Input samples since the last output (downsampling).
    phase: usize,
}

impl Resampler {
    pub fn new(from: u32, to: u32) -> Result<Resampler, RatioError> {
        let error = RatioError { from, to };
        if from == 0 || to == 0 {
            return Err(error);
        }
        let (up, factor) = match (to % from, from % to) {
            (0, _) => (true, (to / from) as usize),
            (_, 0) => (false, (from / to) as usize),
            _ => return Err(error),
        };
        let length = factor * TAPS_PER_PHASE;
        // Low-pass at CUTOFF × the low rate, in cycles per sample of the high rate.
        let fc = CUTOFF / factor as f64;
        let centre = (length - 1) as f64 / 2.0;
        let mut taps: Vec<f64> = (0..length)
            .map(|n| {
                let x = n as f64 - centre;
                let sinc = if x == 0.0 {
                    2.0 * fc
                } else {
                    (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
                };
                let w = 2.0 * std::f64::consts::PI * n as f64 / (length - 1) as f64;
                sinc * (0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos())
            })
            .collect();
        // Unity gain at DC: the whole filter when decimating, each phase when interpolating.
        let sum: f64 = taps.iter().sum();
        let gain = if up { factor as f64 } else { 1.0 };
        taps.iter_mut().for_each(|t| *t *= gain / sum);
        let line_length = if up { TAPS_PER_PHASE } else { length };
        Ok(Resampler {
            up,
            factor,
            taps: taps.into_iter().map(|t| t as f32).collect(),
            line: vec![0.0; 2 * line_length],
            at: 0,
            phase: 0,
        })
    }

    /// Output samples for `input` samples (downsampling: at most, as phase carries over).
    pub fn output_len(&self, input: usize) -> usize {
        if self.up { input * self.factor } else { input.div_ceil(self.factor) }
    }

    /// Resamples `input`, appending to `output`.
    pub fn process(&mut self, input: &[i16], output: &mut Vec<i16>) {
        let len = self.line.len() / 2;
        for &sample in input {
            let x = f32::from(sample);
            self.line[self.at] = x;
            self.line[self.at + len] = x;
            self.at = (self.at + 1) % len;
            // Oldest first: window[len - 1] is the newest sample.
            let window = &self.line[self.at..self.at + len];
            if self.up {
                for p in 0..self.factor {
                    // y[nL + p] = Σ_k h[kL + p] · x[n - k]
                    let y: f32 = (0..len).map(|k| self.taps[k * self.factor + p] * window[len - 1 - k]).sum();
                    output.push(saturate(y));
                }
            } else {
                self.phase += 1;
                if self.phase == self.factor {
                    self.phase = 0;
                    let y: f32 = self.taps.iter().zip(window.iter().rev()).map(|(h, x)| h * x).sum();
                    output.push(saturate(y));
                }
            }
        }
    }
}

fn saturate(y: f32) -> i16 {
    y.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sine(frequency: f64, rate: u32, samples: usize, amplitude: f64) -> Vec<i16> {
        (0..samples)
            .map(|n| (amplitude * (2.0 * std::f64::consts::PI * frequency * n as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    /// Amplitude of `frequency` in `samples` (Goertzel).
    pub fn amplitude(samples: &[i16], rate: u32, frequency: f64) -> f64 {
        let k = 2.0 * (2.0 * std::f64::consts::PI * frequency / f64::from(rate)).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in samples {
            let s0 = f64::from(x) + k * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - k * s1 * s2).sqrt() * 2.0 / samples.len() as f64
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    /// Resamples a tone in 20 ms frames and measures it after the filter's delay.
    fn response(from: u32, to: u32, frequency: f64, measure_at: f64) -> f64 {
        let mut resampler = Resampler::new(from, to).expect("ratio");
        let input = sine(frequency, from, from as usize, 10000.0);
        let mut output = Vec::new();
        for frame in input.chunks(from as usize / 50) {
            resampler.process(frame, &mut output);
        }
        assert_eq!(output.len(), to as usize);
        db(amplitude(&output[to as usize / 10..], to, measure_at) / 10000.0)
    }

    #[test]
    fn the_telephone_band_passes_flat() {
        for frequency in [300.0, 1000.0, 3000.0] {
            let down = response(48000, 8000, frequency, frequency);
            let up = response(8000, 48000, frequency, frequency);
            assert!(down.abs() < 0.5 && up.abs() < 0.5, "{frequency} Hz: down {down:.2} dB, up {up:.2} dB");
        }
        assert!(response(16000, 48000, 6000.0, 6000.0).abs() < 0.5);
    }

    #[test]
    fn aliases_and_images_are_stopped() {
        // 6 kHz at 48 kHz would fold to 2 kHz at 8 kHz.
        let alias = response(48000, 8000, 6000.0, 2000.0);
        assert!(alias < -60.0, "alias {alias:.1} dB");
        // Upsampling 1 kHz from 8 kHz leaves images at 7, 9, 15 kHz...
        for image in [7000.0, 9000.0, 15000.0] {
            let level = response(8000, 48000, 1000.0, image);
            assert!(level < -60.0, "image at {image} Hz: {level:.1} dB");
        }
    }

    #[test]
    fn only_integer_ratios() {
        assert!(Resampler::new(44100, 48000).is_err());
        assert!(Resampler::new(0, 8000).is_err());
        let mut same = Resampler::new(8000, 8000).expect("1:1");
        let mut out = Vec::new();
        same.process(&sine(1000.0, 8000, 800, 1000.0), &mut out);
        assert_eq!(out.len(), 800);
    }
}
