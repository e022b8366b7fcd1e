//! A reordering jitter buffer, sans-IO: RTP packets in as they arrive, out in
//! sequence order.
//!
//! A decoder has to see packets in order: one that arrives after its
//! successor would otherwise be concealed and then dropped as late. This
//! buffer releases a packet at once when it is the next one expected, so a
//! stream that arrives in order gains no delay at all; only behind a gap does
//! it hold the packets that came after it, for at most `max_wait`, for the
//! missing one to turn up. After that the gap is declared lost and the
//! packets behind it go on (the decoder conceals the gap).
//!
//! The playout delay proper belongs to the receiver that plays the audio
//! (the browser's own jitter buffer, which sees the box's steady output):
//! this buffer only puts packets back in order for the transcoder in the
//! middle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long packets wait behind a gap by default: two 20 ms packets, what
/// reordering on a real network comes to, and short enough that the
/// concealment behind a real loss is not heard late.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(40);

/// Packets held at most (2.5 s of 20 ms packets); beyond that the source is
/// not reordering but jumping, and the buffer starts over at the new packet.
pub const CAPACITY: usize = 128;

#[derive(Debug)]
struct Held<T> {
    sequence: u16,
    arrived: Instant,
    packet: T,
}

/// Counters for call statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets that arrived after a later one and were put back in their place.
    pub reordered: u64,
    /// Sequence numbers never seen before their wait ran out.
    pub lost: u64,
    /// Packets dropped: duplicates and ones that came after their gap was given up.
    pub dropped: u64,
}

#[derive(Debug)]
pub struct JitterBuffer<T> {
    max_wait: Duration,
    /// The SSRC of the stream: another one starts over.
    source: Option<u32>,
    /// The sequence number to release next; `None` before the first packet.
    next: Option<u16>,
    /// Packets waiting behind a gap, sorted by sequence (distance from `next`).
    held: VecDeque<Held<T>>,
    /// Packets ready to leave, in order.
    ready: VecDeque<T>,
    stats: JitterStats,
}

impl<T> JitterBuffer<T> {
    pub fn new(max_wait: Duration) -> JitterBuffer<T> {
        JitterBuffer {
            max_wait,
            source: None,
            next: None,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Distance of `sequence` ahead of the next expected one (negative: behind).
    fn ahead(&self, sequence: u16) -> i32 {
        self.next.map_or(0, |next| i32::from(sequence.wrapping_sub(next) as i16))
    }

    /// A packet from `ssrc` arrived at `now`.
    pub fn push(&mut self, now: Instant, ssrc: u32, sequence: u16, packet: T) {
        if self.source.is_some_and(|source| source != ssrc) {
            // A new source: what the old one left behind goes first, in order.
            self.flush();
            self.next = None;
        }
        self.source = Some(ssrc);
        let ahead = self.ahead(sequence);
        if (-(CAPACITY as i32)..0).contains(&ahead) {
            // Its gap was given up, or it is a duplicate of one released.
            self.stats.dropped += 1;
            return;
        }
        if ahead < 0 || ahead as usize >= CAPACITY {
            // Not reordering: the sender jumped. Start over at this packet.
            self.flush();
            self.next = Some(sequence);
        }
        if self.next.is_none_or(|next| next == sequence) {
            if !self.held.is_empty() {
                self.stats.reordered += 1;
            }
            self.ready.push_back(packet);
            self.next = Some(sequence.wrapping_add(1));
            self.release_held();
            return;
        }
        // Behind a gap: keep it, in sequence order, unless it is a duplicate.
        let at = self.held.partition_point(|h| self.ahead(h.sequence) < ahead);
        if self.held.get(at).is_some_and(|h| h.sequence == sequence) {
            self.stats.dropped += 1;
            return;
        }
        self.held.insert(at, Held { sequence, arrived: now, packet });
    }

    /// Held packets that are now next in line.
    fn release_held(&mut self) {
        while let (Some(next), Some(first)) = (self.next, self.held.front())
            && first.sequence == next
        {
            if let Some(held) = self.held.pop_front() {
                self.ready.push_back(held.packet);
                self.next = Some(next.wrapping_add(1));
            }
        }
    }

    /// Everything held goes out in order, gaps and all.
    fn flush(&mut self) {
        while let Some(held) = self.held.pop_front() {
            self.skip_to(held.sequence);
            self.ready.push_back(held.packet);
            self.next = Some(held.sequence.wrapping_add(1));
        }
    }

    /// Gives up the sequence numbers before `sequence`.
    fn skip_to(&mut self, sequence: u16) {
        let missing = self.ahead(sequence);
        if missing > 0 {
            self.stats.lost += missing as u64;
        }
    }

    /// Gaps whose wait has run out at `now` are given up.
    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.held.front() {
            if now.saturating_duration_since(first.arrived) < self.max_wait {
                break;
            }
            let sequence = first.sequence;
            self.skip_to(sequence);
            self.next = Some(sequence);
            self.release_held();
        }
    }

    /// The next packet to decode at `now`, in sequence order.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        if self.ready.is_empty() {
            self.expire(now);
        }
        self.ready.pop_front()
    }

    /// When [`JitterBuffer::pop`] will have something without a new packet: the
    /// oldest held packet's wait running out.
    pub fn deadline(&self) -> Option<Instant> {
        self.held.front().map(|h| h.arrived + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 7;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Everything that can leave at `now`.
    fn drain(buffer: &mut JitterBuffer<u16>, now: Instant) -> Vec<u16> {
        std::iter::from_fn(|| buffer.pop(now)).collect()
    }

    #[test]
    fn packets_in_order_pass_at_once() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(DEFAULT_MAX_WAIT);
        for (i, sequence) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            let now = t0 + ms(20 * i as u64);
            buffer.push(now, SSRC, sequence, sequence);
            assert_eq!(drain(&mut buffer, now), [sequence], "no delay, across the wrap");
        }
        assert_eq!(buffer.deadline(), None);
        assert_eq!(buffer.stats(), JitterStats::default());
    }

    #[test]
    fn a_reordered_packet_is_put_back_in_its_place() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(DEFAULT_MAX_WAIT);
        buffer.push(t0, SSRC, 10, 10);
        assert_eq!(drain(&mut buffer, t0), [10]);
        // 12 overtakes 11: held, not released, until 11 comes.
        buffer.push(t0 + ms(20), SSRC, 12, 12);
        buffer.push(t0 + ms(25), SSRC, 13, 13);
        assert_eq!(drain(&mut buffer, t0 + ms(25)), Vec::<u16>::new());
        assert_eq!(buffer.deadline(), Some(t0 + ms(60)));
        buffer.push(t0 + ms(30), SSRC, 11, 11);
        assert_eq!(drain(&mut buffer, t0 + ms(30)), [11, 12, 13]);
        assert_eq!(buffer.stats(), JitterStats { reordered: 1, lost: 0, dropped: 0 });
    }

    #[test]
    fn a_lost_packet_is_given_up_after_the_wait_and_a_late_one_dropped() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(DEFAULT_MAX_WAIT);
        buffer.push(t0, SSRC, 100, 100);
        buffer.push(t0 + ms(40), SSRC, 102, 102);
        buffer.push(t0 + ms(60), SSRC, 103, 103);
        assert_eq!(drain(&mut buffer, t0 + ms(79)), [100], "101 may still come");
        assert_eq!(drain(&mut buffer, t0 + ms(80)), [102, 103], "it did not: the gap is lost");
        // 101 after all: too late, dropped; the stream goes on.
        buffer.push(t0 + ms(90), SSRC, 101, 101);
        buffer.push(t0 + ms(100), SSRC, 104, 104);
        assert_eq!(drain(&mut buffer, t0 + ms(100)), [104]);
        assert_eq!(buffer.stats(), JitterStats { reordered: 0, lost: 1, dropped: 1 });
    }

    #[test]
    fn duplicates_are_dropped() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(DEFAULT_MAX_WAIT);
        buffer.push(t0, SSRC, 1, 1);
        buffer.push(t0, SSRC, 1, 1);
        buffer.push(t0, SSRC, 3, 3);
        buffer.push(t0, SSRC, 3, 3);
        buffer.push(t0, SSRC, 2, 2);
        assert_eq!(drain(&mut buffer, t0), [1, 2, 3]);
        assert_eq!(buffer.stats().dropped, 2);
    }

    #[test]
    fn a_new_source_or_a_jump_starts_over_without_waiting() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(DEFAULT_MAX_WAIT);
        buffer.push(t0, SSRC, 500, 500);
        buffer.push(t0, SSRC, 502, 502);
        // A transfer: another SSRC with its own numbers. What was held goes first.
        buffer.push(t0 + ms(1), SSRC + 1, 9, 9);
        assert_eq!(drain(&mut buffer, t0 + ms(1)), [500, 502, 9]);
        // The same SSRC jumping far ahead (a restarted sender) is not waited for either.
        buffer.push(t0 + ms(2), SSRC + 1, 30000, 30000);
        assert_eq!(drain(&mut buffer, t0 + ms(2)), [30000]);
        buffer.push(t0 + ms(3), SSRC + 1, 30001, 30001);
        assert_eq!(drain(&mut buffer, t0 + ms(3)), [30001]);
        // Or far behind.
        buffer.push(t0 + ms(4), SSRC + 1, 100, 100);
        assert_eq!(drain(&mut buffer, t0 + ms(4)), [100]);
    }
}
