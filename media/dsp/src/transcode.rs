//! One direction of a transcoded audio stream, sans-IO: RTP payloads of one
//! codec in, RTP payloads of another out, with timestamps carried across
//! clocks (a browser's Opus at 48 kHz, a phone's G.711 or G.722 at 8 kHz).
//!
//! The PCM in the middle runs at the lower of the two codecs' own rates:
//! 8 kHz for Opus ↔ G.711, 16 kHz for Opus ↔ G.722 (Opus encodes and
//! decodes at that rate), 48 kHz for Opus ↔ Opus. An RTP clock tick is then
//! a whole number of samples or, for G.722 (8000 Hz clock, 16 kHz audio),
//! half of one: positions are counted in input ticks and converted with the
//! exact ratio clock : rate, which every frame and packet size keeps whole.
//! G.722 ↔ G.711 would need the resampler in between and is refused.
//!
//! Losses are repaired before re-encoding (Opus FEC for a single lost packet,
//! concealment for up to [`MAX_CONCEALED_MS`]), so the far side's own loss
//! concealment is not fed a re-encoded gap. Packets that come late (behind
//! the newest one) are dropped: they have been concealed already. Output
//! frames are cut at the encoder's frame size whatever the input packet
//! size, so 30 ms G.711 becomes 20 ms Opus.
//!
//! A new source (another SSRC: a PBX that transfers the call or restarts its
//! media, or sequence numbers/timestamps that jump as only a restarted sender's
//! do) continues the output right where it stopped, marked, instead of being
//! taken for late packets and dropped until its numbers catch up.

use crate::codec::{Codec, Decoder, DspError, Encoder};

/// The longest loss repaired by concealment; after a longer gap the stream
/// restarts at the new packet (and the output frame is marked).
pub const MAX_CONCEALED_MS: u32 = 60;

/// Sequence numbers this far behind the newest, or further ahead than
/// [`MAX_DROPOUT`], are a restarted sender, not reordering or loss (RFC 3550 §A.1).
pub const MAX_MISORDER: i32 = 100;
pub const MAX_DROPOUT: i32 = 3000;

/// Maps RTP timestamps of one clock to another, keeping the distance
/// between packets, with wrap-around on both sides. One timeline per
/// direction serves the voice and the telephone events of that direction,
/// so events stay in step with the voice.
#[derive(Clone, Debug)]
pub struct Timeline {
    from_clock: u32,
    to_clock: u32,
    /// The last input timestamp and its position in input ticks from the first.
    last: Option<(u32, i64)>,
    /// Output timestamp of input position 0.
    origin: u32,
}

impl Timeline {
    pub fn new(from_clock: u32, to_clock: u32) -> Timeline {
        Timeline { from_clock, to_clock, last: None, origin: rand::random() }
    }

    /// The input position of `timestamp` (ticks since the first one seen).
    fn position(&mut self, timestamp: u32) -> i64 {
        let position = match self.last {
            None => 0,
            // The nearer way round: packets are never 2^31 ticks apart.
            Some((last, at)) => at + i64::from(timestamp.wrapping_sub(last) as i32),
        };
        if self.last.is_none_or(|(_, at)| position >= at) {
            self.last = Some((timestamp, position));
        }
        position
    }

    fn output_at(&self, position: i64) -> u32 {
        let scaled = position * i64::from(self.to_clock) / i64::from(self.from_clock);
        self.origin.wrapping_add(scaled as u32)
    }

    /// Makes `timestamp` input position `position`: a new source's numbers continue the old
    /// one's output.
    fn rebase(&mut self, timestamp: u32, position: i64) {
        self.last = Some((timestamp, position));
    }

    /// The output timestamp for an input timestamp.
    pub fn map(&mut self, timestamp: u32) -> u32 {
        let position = self.position(timestamp);
        self.output_at(position)
    }

    /// A duration in input ticks in output ticks (an RFC 4733 event's duration).
    pub fn scale(&self, ticks: u32) -> u32 {
        (u64::from(ticks) * u64::from(self.to_clock) / u64::from(self.from_clock)).min(u64::from(u16::MAX)) as u32
    }
}

/// One transcoded frame, ready for an RTP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub timestamp: u32,
    /// The first frame after a gap the stream was restarted over (RFC 3551 §4.1).
    pub marker: bool,
    pub payload: Vec<u8>,
}

/// Input clock ticks per PCM sample as a reduced fraction `ticks / samples`:
/// 1/2 for G.722 (8000 Hz clock, 16 kHz audio), 3 for Opus at 16 kHz, 6 for
/// Opus at 8 kHz, 1 for G.711 and for Opus at 48 kHz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TickRatio {
    ticks: i64,
    samples: i64,
}

impl TickRatio {
    fn new(clock: u32, rate: u32) -> TickRatio {
        let (mut a, mut b) = (clock.max(1), rate.max(1));
        while b != 0 {
            (a, b) = (b, a % b);
        }
        TickRatio { ticks: i64::from(clock.max(1) / a), samples: i64::from(rate.max(1) / a) }
    }

    /// Whether `samples` is a whole number of ticks.
    fn is_whole(self, samples: usize) -> bool {
        samples as i64 % self.samples == 0
    }

    /// The ticks `samples` last (exact when [`is_whole`](Self::is_whole)).
    fn ticks(self, samples: usize) -> i64 {
        samples as i64 * self.ticks / self.samples
    }

    /// The whole samples in `ticks`.
    fn samples(self, ticks: i64) -> usize {
        (ticks * self.samples / self.ticks).max(0) as usize
    }
}

/// One direction of a transcoded stream.
#[derive(Debug)]
pub struct Transcoder {
    decoder: Decoder,
    encoder: Encoder,
    timeline: Timeline,
    /// Input clock ticks per sample of the PCM in the middle.
    ratio: TickRatio,
    /// Decoded PCM not yet encoded, and the input position of its first sample.
    pcm: Vec<i16>,
    pcm_position: i64,
    /// The newest packet decoded: its sequence number and the input position just after it.
    last: Option<(u16, i64)>,
    /// The SSRC the packets come from.
    source: Option<u32>,
    restart: bool,
}

impl Transcoder {
    /// `from` payloads to `to` payloads of `ptime_ms`, through PCM at the
    /// lower of the two codecs' own rates (8 kHz whenever G.711 is involved,
    /// 16 kHz for G.722 ↔ Opus). G.722 ↔ G.711 is refused: it would need
    /// the resampler (16 ↔ 8 kHz) between the codecs, which is not wired up.
    pub fn new(from: Codec, to: Codec, ptime_ms: u32) -> Result<Transcoder, DspError> {
        let rate = from.pcm_rate().min(to.pcm_rate());
        if !from.supports_rate(rate) || !to.supports_rate(rate) {
            return Err(DspError::Unsupported { from, to });
        }
        let decoder = Decoder::new(from, rate)?;
        let encoder = Encoder::new(to, rate, ptime_ms)?;
        // Every output frame must start on a whole tick of both clocks.
        let frame = encoder.frame_samples();
        let ratio = TickRatio::new(from.rtp_clock(), rate);
        if frame == 0 || !ratio.is_whole(frame) || !TickRatio::new(to.rtp_clock(), rate).is_whole(frame) {
            return Err(DspError::Ptime { codec: to, ptime_ms });
        }
        Ok(Transcoder {
            decoder,
            encoder,
            timeline: Timeline::new(from.rtp_clock(), to.rtp_clock()),
            ratio,
            pcm: Vec::with_capacity(rate as usize / 10),
            pcm_position: 0,
            last: None,
            source: None,
            restart: true,
        })
    }

    pub fn from_codec(&self) -> Codec {
        self.decoder.codec()
    }

    pub fn to_codec(&self) -> Codec {
        self.encoder.codec()
    }

    /// The timeline of this direction, for telephone events between the voice.
    pub fn timeline(&mut self) -> &mut Timeline {
        &mut self.timeline
    }

    /// One received packet from `ssrc`; the frames it completes are appended to `frames`.
    /// A payload the decoder refuses is an error and changes nothing.
    pub fn push(
        &mut self,
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        payload: &[u8],
        frames: &mut Vec<Frame>,
    ) -> Result<(), DspError> {
        if self.is_new_source(ssrc, sequence, timestamp) {
            // Continue where the old source's audio ended; `last` None restarts (marked) there.
            let end = self.last.map_or(0, |(_, end)| end);
            self.timeline.rebase(timestamp, end);
            self.last = None;
        }
        self.source = Some(ssrc);
        let position = self.timeline.position(timestamp);
        let samples = self.decoder.samples_in(payload)?;
        // Whole for every codec: G.722 decodes two samples a byte, Opus frames are 2.5 ms multiples.
        let ticks = self.ratio.ticks(samples);
        match self.last {
            // Late or repeated: that stretch was concealed or played already.
            Some((last_sequence, end)) if (sequence.wrapping_sub(last_sequence) as i16) <= 0 || position < end => {
                return Ok(());
            }
            Some((_, end)) if position > end => {
                let missing = position - end;
                let longest = i64::from(self.decoder.codec().rtp_clock() * MAX_CONCEALED_MS / 1000);
                if missing <= longest {
                    let lost = self.ratio.samples(missing);
                    // FEC in this packet covers the one packet before it.
                    let lost_packets = sequence.wrapping_sub(self.last.map_or(sequence, |l| l.0)).wrapping_sub(1);
                    let next = (lost_packets == 1).then_some(payload);
                    let before = self.pcm.len();
                    self.decoder.conceal(lost, next, &mut self.pcm)?;
                    // Keep the PCM in step with the clock even if the codec gave fewer samples.
                    self.pcm.resize(before + lost, 0);
                } else {
                    self.restart_at(position);
                }
            }
            Some(_) => {}
            None => self.restart_at(position),
        }
        let before = self.pcm.len();
        if let Err(e) = self.decoder.decode(payload, &mut self.pcm) {
            self.pcm.truncate(before);
            return Err(e);
        }
        self.last = Some((sequence, position + ticks));
        self.drain(frames)
    }

    /// Another SSRC, or numbers only a restarted sender sends: sequence numbers far behind or
    /// far ahead, or a timestamp going back further than any reordering would take it.
    fn is_new_source(&self, ssrc: u32, sequence: u16, timestamp: u32) -> bool {
        let Some((last_sequence, _)) = self.last else { return false };
        if self.source != Some(ssrc) {
            return true;
        }
        let step = i32::from(sequence.wrapping_sub(last_sequence) as i16);
        let behind = match self.timeline.last {
            Some((last_timestamp, _)) => -i64::from(timestamp.wrapping_sub(last_timestamp) as i32),
            None => 0,
        };
        // A packet ahead in sequence never starts further back than the concealment window.
        let longest = i64::from(self.decoder.codec().rtp_clock() * MAX_CONCEALED_MS / 1000);
        step <= -MAX_MISORDER || step > MAX_DROPOUT || (step > 0 && behind > longest)
    }

    fn restart_at(&mut self, position: i64) {
        self.pcm.clear();
        self.pcm_position = position;
        self.restart = true;
    }

    fn drain(&mut self, frames: &mut Vec<Frame>) -> Result<(), DspError> {
        let frame = self.encoder.frame_samples();
        let mut consumed = 0;
        while self.pcm.len() - consumed >= frame {
            let mut payload = Vec::new();
            self.encoder.encode(&self.pcm[consumed..consumed + frame], &mut payload)?;
            frames.push(Frame {
                timestamp: self.timeline.output_at(self.pcm_position),
                marker: std::mem::take(&mut self.restart),
                payload,
            });
            consumed += frame;
            self.pcm_position += self.ratio.ticks(frame);
        }
        self.pcm.drain(..consumed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resample::tests::{amplitude, sine};

    const SSRC: u32 = 0x1234_5678;

    fn encode_stream(codec: Codec, rate: u32, pcm: &[i16], ptime_ms: u32) -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new(codec, rate, ptime_ms).expect("encoder");
        pcm.chunks_exact(encoder.frame_samples())
            .map(|frame| {
                let mut payload = Vec::new();
                encoder.encode(frame, &mut payload).expect("encode");
                payload
            })
            .collect()
    }

    fn decode_frames(codec: Codec, rate: u32, frames: &[Frame]) -> Vec<i16> {
        let mut decoder = Decoder::new(codec, rate).expect("decoder");
        let mut pcm = Vec::new();
        for frame in frames {
            decoder.decode(&frame.payload, &mut pcm).expect("decode");
        }
        pcm
    }

    #[test]
    fn timeline_keeps_distances_across_clocks_and_wraps() {
        let mut timeline = Timeline::new(48000, 8000);
        let first = timeline.map(u32::MAX - 959);
        // 960 ticks at 48 kHz later (across the wrap) is 160 ticks at 8 kHz later.
        assert_eq!(timeline.map(0), first.wrapping_add(160));
        assert_eq!(timeline.map(960), first.wrapping_add(320));
        // A late packet maps where it belongs and does not move the timeline back.
        assert_eq!(timeline.map(0), first.wrapping_add(160));
        assert_eq!(timeline.map(1920), first.wrapping_add(480));
        assert_eq!(timeline.scale(4800), 800);
        assert_eq!(Timeline::new(8000, 48000).scale(60000), u32::from(u16::MAX));
    }

    #[test]
    fn opus_from_a_browser_becomes_g711_with_the_tone_and_the_timing() {
        let tone = sine(1000.0, 8000, 8000, 8000.0);
        let packets = encode_stream(Codec::Opus, 8000, &tone, 20);
        let mut transcoder = Transcoder::new(Codec::Opus, Codec::Pcmu, 20).expect("transcoder");
        let mut frames = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            transcoder.push(SSRC, 1000 + i as u16, 5000 + 960 * i as u32, packet, &mut frames).expect("push");
        }
        assert_eq!(frames.len(), packets.len(), "one 20 ms frame per 20 ms packet");
        assert!(frames[0].marker && !frames[1].marker);
        for pair in frames.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 160);
            assert_eq!(pair[1].payload.len(), 160);
        }
        let pcm = decode_frames(Codec::Pcmu, 8000, &frames);
        let level = amplitude(&pcm[4000..], 8000, 1000.0);
        assert!((6000.0..10000.0).contains(&level), "1 kHz at {level:.0}");
    }

    #[test]
    fn g711_in_30_ms_packets_becomes_20_ms_opus() {
        let tone = sine(440.0, 8000, 4800, 8000.0);
        let packets = encode_stream(Codec::Pcma, 8000, &tone, 30);
        let mut transcoder = Transcoder::new(Codec::Pcma, Codec::Opus, 20).expect("transcoder");
        let mut frames = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            transcoder.push(SSRC, i as u16, 240 * i as u32, packet, &mut frames).expect("push");
        }
        // 600 ms of input: 30 frames of 20 ms, each 960 ticks of the 48 kHz clock apart.
        assert_eq!(frames.len(), 30);
        for pair in frames.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
        }
        let pcm = decode_frames(Codec::Opus, 8000, &frames);
        assert!(amplitude(&pcm[2400..], 8000, 440.0) > 5000.0);
    }

    #[test]
    fn losses_are_repaired_and_late_packets_dropped() {
        let tone = sine(300.0, 8000, 8000, 8000.0);
        let packets = encode_stream(Codec::Opus, 8000, &tone, 20);
        let mut transcoder = Transcoder::new(Codec::Opus, Codec::Pcmu, 20).expect("transcoder");
        let mut frames = Vec::new();
        let push = |t: &mut Transcoder, i: usize, frames: &mut Vec<Frame>| {
            t.push(SSRC, i as u16, 960 * i as u32, &packets[i], frames).expect("push");
        };
        for i in 0..10 {
            push(&mut transcoder, i, &mut frames);
        }
        // Packet 10 lost: 11 brings its FEC; 12..13 lost, 14 conceals 40 ms.
        push(&mut transcoder, 11, &mut frames);
        push(&mut transcoder, 14, &mut frames);
        // 10 arrives late: dropped.
        push(&mut transcoder, 10, &mut frames);
        assert_eq!(frames.len(), 15);
        for pair in frames.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 160);
            assert!(!pair[1].marker);
        }
        let pcm = decode_frames(Codec::Pcmu, 8000, &frames);
        let repaired = amplitude(&pcm[10 * 160..11 * 160], 8000, 300.0);
        assert!(repaired > 2000.0, "FEC-rebuilt frame at {repaired:.0}");
        // A gap over MAX_CONCEALED_MS restarts the stream: the next frame is marked.
        frames.clear();
        push(&mut transcoder, 30, &mut frames);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].marker);
    }

    #[test]
    fn a_restarted_source_continues_the_output_instead_of_being_dropped() {
        let tone = sine(300.0, 8000, 8000, 8000.0);
        let packets = encode_stream(Codec::Pcmu, 8000, &tone, 20);
        let mut transcoder = Transcoder::new(Codec::Pcmu, Codec::Opus, 20).expect("transcoder");
        let mut frames = Vec::new();
        for (i, packet) in packets[..10].iter().enumerate() {
            transcoder.push(SSRC, 20000 + i as u16, 800_000 + 160 * i as u32, packet, &mut frames).expect("push");
        }
        let continued = frames.last().expect("frame").timestamp.wrapping_add(960);
        // Another SSRC whose numbers are behind the old ones: played at once, right after.
        frames.clear();
        transcoder.push(SSRC + 1, 5, 1000, &packets[10], &mut frames).expect("push");
        transcoder.push(SSRC + 1, 6, 1160, &packets[11], &mut frames).expect("push");
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].timestamp, continued);
        assert!(frames[0].marker && !frames[1].marker);
        assert_eq!(frames[1].timestamp, continued.wrapping_add(960));
        // The same SSRC restarting its numbers (a sender that does not change it) too.
        frames.clear();
        transcoder.push(SSRC + 1, 40000, 90, &packets[12], &mut frames).expect("push");
        assert_eq!(frames.len(), 1);
        assert!(frames[0].marker);
        assert_eq!(frames[0].timestamp, continued.wrapping_add(1920));
        // Ordinary reordering still drops the late packet.
        frames.clear();
        transcoder.push(SSRC + 1, 40001, 250, &packets[13], &mut frames).expect("push");
        transcoder.push(SSRC + 1, 39999, 0, &packets[14], &mut frames).expect("push");
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn tick_ratios_are_exact_fractions() {
        assert_eq!(TickRatio::new(8000, 16000), TickRatio { ticks: 1, samples: 2 });
        assert_eq!(TickRatio::new(48000, 16000), TickRatio { ticks: 3, samples: 1 });
        assert_eq!(TickRatio::new(48000, 8000), TickRatio { ticks: 6, samples: 1 });
        assert_eq!(TickRatio::new(8000, 8000), TickRatio { ticks: 1, samples: 1 });
        let g722 = TickRatio::new(8000, 16000);
        assert_eq!(g722.ticks(320), 160);
        assert_eq!(g722.samples(160), 320);
        assert!(g722.is_whole(320) && !g722.is_whole(321));
        assert_eq!(TickRatio::new(48000, 16000).samples(961), 320);
    }

    #[test]
    fn opus_from_a_browser_becomes_wideband_g722() {
        // The browser encodes at 48 kHz; the transcoder decodes at 16 kHz.
        let speech_band = sine(1000.0, 48000, 48000, 6000.0);
        let above_g711 = sine(5000.0, 48000, 48000, 4000.0);
        let mixed: Vec<i16> = speech_band.iter().zip(&above_g711).map(|(a, b)| a + b).collect();
        let packets = encode_stream(Codec::Opus, 48000, &mixed, 20);
        let mut transcoder = Transcoder::new(Codec::Opus, Codec::G722, 20).expect("transcoder");
        let mut frames = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            transcoder.push(SSRC, 7 + i as u16, 960 * i as u32, packet, &mut frames).expect("push");
        }
        assert_eq!(frames.len(), packets.len(), "one 20 ms frame per 20 ms packet");
        assert!(frames[0].marker && !frames[1].marker);
        for pair in frames.windows(2) {
            // 20 ms of G.722: 320 samples at 16 kHz, 160 bytes, 160 ticks of its 8000 Hz clock.
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 160);
            assert_eq!(pair[1].payload.len(), 160);
        }
        let pcm = decode_frames(Codec::G722, 16000, &frames);
        let settled = &pcm[8000..];
        let low = amplitude(settled, 16000, 1000.0);
        let high = amplitude(settled, 16000, 5000.0);
        assert!((4500.0..7500.0).contains(&low), "1 kHz at {low:.0}");
        // G.711 would have lost it; G.722 carries it.
        assert!((2500.0..5500.0).contains(&high), "5 kHz at {high:.0}");
        assert!(amplitude(settled, 16000, 3000.0) < 300.0);
    }

    #[test]
    fn g722_in_30_ms_packets_becomes_20_ms_opus_with_losses_repaired() {
        let tone = sine(700.0, 16000, 16000, 8000.0);
        let packets = encode_stream(Codec::G722, 16000, &tone, 30);
        assert_eq!(packets[0].len(), 240);
        let mut transcoder = Transcoder::new(Codec::G722, Codec::Opus, 20).expect("transcoder");
        let mut frames = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            // Packet 20 lost: 30 ms concealed from the audio before it.
            if i != 20 {
                let timestamp = 1_000_000 + 240 * i as u32;
                transcoder.push(SSRC, 300 + i as u16, timestamp, packet, &mut frames).expect("push");
            }
        }
        // 33 packets of 30 ms: 990 ms, 49 frames of 20 ms, each 960 ticks of the 48 kHz clock apart.
        assert_eq!(frames.len(), 49);
        assert!(frames[0].marker);
        for pair in frames.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
            assert!(!pair[1].marker);
        }
        let pcm = decode_frames(Codec::Opus, 16000, &frames);
        let level = amplitude(&pcm[4800..9600], 16000, 700.0);
        assert!((6000.0..10000.0).contains(&level), "700 Hz at {level:.0}");
        // Timestamps on the input clock map to the 48 kHz clock: 240 ticks of 8000 Hz are 1440.
        let first = transcoder.timeline().map(1_000_000);
        assert_eq!(transcoder.timeline().map(1_000_240), first.wrapping_add(1440));
    }

    #[test]
    fn g722_and_g711_need_a_resampler_and_are_refused() {
        for (from, to) in [(Codec::G722, Codec::Pcmu), (Codec::Pcma, Codec::G722)] {
            assert!(matches!(Transcoder::new(from, to, 20), Err(DspError::Unsupported { .. })), "{from} -> {to}");
        }
        assert!(Transcoder::new(Codec::G722, Codec::G722, 20).is_ok());
        // A frame that is not a whole number of ticks, or none at all, is refused up front.
        assert!(matches!(Transcoder::new(Codec::Opus, Codec::G722, 0), Err(DspError::Ptime { .. })));
    }

    #[test]
    fn g722_streams_with_random_numbers_and_bytes_keep_their_framing() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(722);
        let mut from_g722 = Transcoder::new(Codec::G722, Codec::Opus, 20).expect("transcoder");
        let mut to_g722 = Transcoder::new(Codec::Opus, Codec::G722, 20).expect("transcoder");
        let opus = encode_stream(Codec::Opus, 16000, &sine(500.0, 16000, 3200, 5000.0), 20);
        let (mut sequence, mut timestamp) = (0u16, 0u32);
        let mut frames = Vec::new();
        for _ in 0..3000 {
            // Mostly in order, sometimes lost, late, far off or from another source.
            let step = match rng.gen_range(0..10) {
                0 => rng.r#gen::<u16>(),
                1 => 2,
                2 => 0xffff,
                _ => 1,
            };
            sequence = sequence.wrapping_add(step);
            timestamp = timestamp.wrapping_add(u32::from(step).wrapping_mul(160));
            let ssrc = u32::from(rng.gen_range(0..50) == 0);
            let length = if rng.gen_range(0..20) == 0 { rng.gen_range(0..400) } else { 160 };
            let payload: Vec<u8> = (0..length).map(|_| rng.r#gen()).collect();
            frames.clear();
            from_g722.push(ssrc, sequence, timestamp, &payload, &mut frames).expect("every byte is a G.722 code");
            assert!(frames.iter().all(|f| !f.payload.is_empty() && f.payload.len() <= 1275));
            frames.clear();
            let packet = &opus[rng.gen_range(0..opus.len())];
            let _ = to_g722.push(ssrc, sequence, timestamp.wrapping_mul(6), packet, &mut frames);
            assert!(frames.iter().all(|f| f.payload.len() == 160));
            for pair in frames.windows(2) {
                assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 160);
            }
        }
    }

    #[test]
    fn a_payload_the_decoder_refuses_changes_nothing() {
        let mut transcoder = Transcoder::new(Codec::Opus, Codec::Pcmu, 20).expect("transcoder");
        let mut frames = Vec::new();
        assert!(transcoder.push(SSRC, 1, 0, &[0x03], &mut frames).is_err());
        assert!(frames.is_empty());
        let good = encode_stream(Codec::Opus, 8000, &[0; 160], 20);
        transcoder.push(SSRC, 2, 960, &good[0], &mut frames).expect("push");
        assert_eq!(frames.len(), 1);
    }
}
