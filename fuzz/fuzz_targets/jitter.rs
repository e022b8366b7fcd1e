//! Sequence numbers, SSRCs and arrival times from the network into the jitter
//! buffer: whatever they are, every packet leaves at most once, the buffer
//! never holds more than its capacity, and nothing waits past its deadline.
#![no_main]

use std::time::{Duration, Instant};

use branchgate_dsp::jitter::{CAPACITY, JitterBuffer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut buffer = JitterBuffer::new(Duration::from_millis(40));
    let mut now = t0;
    let mut pushed = 0usize;
    let mut released = std::collections::HashSet::new();
    // Records: elapsed ms, SSRC bit, sequence (2).
    for record in data.chunks_exact(4) {
        now += Duration::from_millis(u64::from(record[0]));
        let sequence = u16::from_be_bytes([record[2], record[3]]);
        buffer.push(now, u32::from(record[1] & 1), sequence, pushed);
        pushed += 1;
        while let Some(id) = buffer.pop(now) {
            assert!(id < pushed && released.insert(id), "a packet left twice or was invented");
        }
        assert!(buffer.deadline().is_none_or(|deadline| deadline > now), "a packet waited past its deadline");
        let held = pushed - released.len() - buffer.stats().dropped as usize;
        assert!(held <= CAPACITY, "held beyond capacity");
    }
});
