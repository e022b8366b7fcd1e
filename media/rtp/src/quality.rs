//! How well a received RTP stream is doing, for the call details an installer
//! reads: packets, loss (RFC 3550 §A.3: expected from the sequence numbers
//! minus received), interarrival jitter (§A.8) and a MOS estimate from the
//! ITU-T G.107 E-model.

use std::time::Instant;

/// Reception statistics of one RTP stream (one SSRC at a time: another one
/// starts the counts over, as a receiver report would).
#[derive(Clone, Debug, Default)]
pub struct ReceptionStats {
    source: Option<u32>,
    first: Option<Instant>,
    /// Extended (with cycles) highest sequence number seen, and the first one.
    base: u32,
    highest: u32,
    received: u64,
    /// The last packet's transit time in RTP clock ticks (arrival minus timestamp).
    transit: Option<i64>,
    /// RFC 3550's jitter estimate, in ticks, scaled by 16 as in §A.8.
    jitter_x16: u64,
    clock: u32,
}

/// A snapshot of [`ReceptionStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamQuality {
    pub packets: u64,
    pub lost: u64,
    pub loss_percent: f64,
    pub jitter_ms: f64,
}

impl ReceptionStats {
    /// A packet of `ssrc` with `sequence` and `timestamp` (in ticks of `clock` Hz) arrived at `now`.
    pub fn received(&mut self, now: Instant, ssrc: u32, sequence: u16, timestamp: u32, clock: u32) {
        if self.source != Some(ssrc) || self.clock != clock || clock == 0 {
            *self = ReceptionStats { source: Some(ssrc), clock: clock.max(1), ..ReceptionStats::default() };
        }
        let first = *self.first.get_or_insert(now);
        if self.received == 0 {
            self.base = u32::from(sequence);
            self.highest = u32::from(sequence);
        } else {
            // Extend the 16-bit number to the one nearest the highest so far (wrap-around).
            let step = i64::from(sequence.wrapping_sub(self.highest as u16) as i16);
            let extended = (i64::from(self.highest) + step).max(0) as u32;
            self.highest = self.highest.max(extended);
        }
        self.received += 1;
        let arrival = (now.saturating_duration_since(first).as_secs_f64() * f64::from(self.clock)) as i64;
        let transit = arrival - i64::from(timestamp);
        if let Some(previous) = self.transit {
            // The difference of 32-bit timestamps, taken the near way round.
            let d = (transit - previous).rem_euclid(1 << 32);
            let d = if d >= 1 << 31 { (1 << 32) - d } else { d } as u64;
            // J += (|D| - J) / 16, in the x16 scale.
            self.jitter_x16 = self.jitter_x16 + d - ((self.jitter_x16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    pub fn quality(&self) -> StreamQuality {
        let expected = if self.received == 0 { 0 } else { u64::from(self.highest - self.base) + 1 };
        let lost = expected.saturating_sub(self.received);
        StreamQuality {
            packets: self.received,
            lost,
            loss_percent: if expected == 0 { 0.0 } else { lost as f64 * 100.0 / expected as f64 },
            jitter_ms: (self.jitter_x16 as f64 / 16.0) * 1000.0 / f64::from(self.clock.max(1)),
        }
    }
}

/// The E-model's equipment impairment of a codec and its robustness to
/// random packet loss (ITU-T G.113 Appendix I: Ie, Bpl).
fn impairment(codec: &str) -> (f64, f64) {
    match codec.to_ascii_uppercase().as_str() {
        // G.711 with packet loss concealment (G.711 Appendix I).
        "PCMU" | "PCMA" => (0.0, 25.1),
        "G722" => (0.0, 20.0),
        // Opus is wideband and robust (FEC, PLC); its Ie is not standardised: counted
        // like G.711 with concealment, a conservative stand-in.
        "OPUS" => (0.0, 25.1),
        "G729" => (11.0, 19.0),
        _ => (0.0, 25.1),
    }
}

/// A MOS estimate (1..4.5, narrowband scale) for `codec` with the given loss
/// and jitter. The one-way delay is not measured here: the jitter a playout
/// buffer must absorb (about twice the measured jitter) plus a packet time stands in for
/// it, so the estimate compares calls rather than predicting a listening test.
pub fn mos(codec: &str, quality: &StreamQuality) -> f64 {
    let (ie, bpl) = impairment(codec);
    let ppl = quality.loss_percent.clamp(0.0, 100.0);
    let ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl);
    // G.107's delay impairment, simplified: none below 177.3 ms one way.
    let delay_ms = 20.0 + 2.0 * quality.jitter_ms + 40.0;
    let id = 0.024 * delay_ms + if delay_ms > 177.3 { 0.11 * (delay_ms - 177.3) } else { 0.0 };
    let r = (93.2 - id - ie_eff).clamp(0.0, 100.0);
    let mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6;
    (mos.clamp(1.0, 4.5) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_clean_stream_has_no_loss_no_jitter_and_a_good_mos() {
        let t0 = Instant::now();
        let mut stats = ReceptionStats::default();
        for i in 0..100u32 {
            let sequence = 65500u16.wrapping_add(i as u16);
            stats.received(t0 + Duration::from_millis(20 * u64::from(i)), 1, sequence, 160 * i, 8000);
        }
        let q = stats.quality();
        assert_eq!((q.packets, q.lost), (100, 0), "across the sequence wrap");
        assert!(q.jitter_ms < 0.2, "{q:?}");
        let mos = mos("PCMU", &q);
        assert!((4.3..=4.5).contains(&mos), "{mos}");
    }

    #[test]
    fn loss_and_jitter_are_measured_and_lower_the_mos() {
        let t0 = Instant::now();
        let mut stats = ReceptionStats::default();
        // Every tenth packet lost; the others arrive up to 10 ms late, alternately.
        for i in (0..200u32).filter(|i| i % 10 != 5) {
            let late = if i % 2 == 0 { 10 } else { 0 };
            stats.received(t0 + Duration::from_millis(20 * u64::from(i) + late), 9, i as u16, 160 * i, 8000);
        }
        let q = stats.quality();
        assert_eq!(q.lost, 20);
        assert!((q.loss_percent - 10.0).abs() < 0.01, "{q:?}");
        // Alternating 10 ms: |D| is 10 ms each time, so J converges to 10 ms.
        assert!((8.0..=10.5).contains(&q.jitter_ms), "{q:?}");
        let bad = mos("PCMU", &q);
        assert!((2.0..3.5).contains(&bad), "{bad}");
        // A new SSRC starts the counts over.
        stats.received(t0, 10, 7, 0, 48000);
        assert_eq!(stats.quality().packets, 1);
    }
}
