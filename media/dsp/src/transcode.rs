//! One direction of a transcoded audio stream, sans-IO: RTP payloads of one
//! codec in, RTP payloads of another out, with timestamps carried across
//! clocks (a browser's Opus at 48 kHz, a phone's G.711 at 8 kHz).
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

/// One direction of a transcoded stream.
#[derive(Debug)]
pub struct Transcoder {
    decoder: Decoder,
    encoder: Encoder,
    timeline: Timeline,
    /// PCM rate in the middle.
    rate: u32,
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
    /// highest rate both codecs take (8 kHz whenever G.711 is involved).
    pub fn new(from: Codec, to: Codec, ptime_ms: u32) -> Result<Transcoder, DspError> {
        let rate = if from == Codec::Opus && to == Codec::Opus { 48000 } else { 8000 };
        Ok(Transcoder {
            decoder: Decoder::new(from, rate)?,
            encoder: Encoder::new(to, rate, ptime_ms)?,
            timeline: Timeline::new(from.rtp_clock(), to.rtp_clock()),
            rate,
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

    /// Input clock ticks per PCM sample (6 for Opus at 8 kHz, 1 for G.711).
    fn ticks_per_sample(&self) -> i64 {
        i64::from(self.decoder.codec().rtp_clock() / self.rate).max(1)
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
        let ticks = samples as i64 * self.ticks_per_sample();
        match self.last {
            // Late or repeated: that stretch was concealed or played already.
            Some((last_sequence, end)) if (sequence.wrapping_sub(last_sequence) as i16) <= 0 || position < end => {
                return Ok(());
            }
            Some((_, end)) if position > end => {
                let missing = position - end;
                let longest = i64::from(self.decoder.codec().rtp_clock() * MAX_CONCEALED_MS / 1000);
                if missing <= longest {
                    let lost = (missing / self.ticks_per_sample()) as usize;
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
            self.pcm_position += frame as i64 * self.ticks_per_sample();
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

    fn decode_frames(codec: Codec, frames: &[Frame]) -> Vec<i16> {
        let mut decoder = Decoder::new(codec, 8000).expect("decoder");
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
        let pcm = decode_frames(Codec::Pcmu, &frames);
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
        let pcm = decode_frames(Codec::Opus, &frames);
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
        let pcm = decode_frames(Codec::Pcmu, &frames);
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
