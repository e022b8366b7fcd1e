//! RTP payloads from the network into the in-band DTMF listener, in each codec it
//! listens to: whatever the bytes, it never panics, and every key it reports is a
//! real event code (0-15) that lasted at least the two blocks a key needs.
#![no_main]

use branchgate_dsp::{Codec, InbandKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payloads)) = data.split_first() else { return };
    let codec = [Codec::Pcmu, Codec::Pcma, Codec::G722][usize::from(selector % 3)];
    let Ok(mut keys) = InbandKeys::new(codec) else { return };
    // Payloads of 1-256 bytes, each prefixed by its length byte.
    let mut rest = payloads;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (usize::from(len) + 1).min(tail.len());
        let (payload, next) = tail.split_at(len);
        if let Some((event, duration_ms)) = keys.listen(payload) {
            assert!(event <= 15, "event {event}");
            assert!(duration_ms >= 25, "a {duration_ms} ms key");
        }
        rest = next;
        if len == 0 {
            break;
        }
    }
});
