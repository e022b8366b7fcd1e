//! RTP payloads from the network into the transcoder: any sequence numbers,
//! timestamps (wraps, jumps back, huge gaps) and payloads (not Opus at all)
//! must neither panic nor make it emit frames of the wrong size.
#![no_main]

use branchgate_dsp::{Codec, Transcoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Ok(mut from_browser), Ok(mut to_browser)) =
        (Transcoder::new(Codec::Opus, Codec::Pcma, 20), Transcoder::new(Codec::Pcmu, Codec::Opus, 20))
    else {
        return;
    };
    let mut frames = Vec::new();
    // Records: direction (bit 0) and source (bit 1), sequence (2), timestamp (4), length, payload.
    let mut rest = data;
    while rest.len() >= 8 {
        let (head, tail) = rest.split_at(8);
        let ssrc = u32::from(head[0] >> 1 & 1);
        let sequence = u16::from_be_bytes([head[1], head[2]]);
        let timestamp = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
        let length = usize::from(head[7]).min(tail.len());
        let (payload, tail) = tail.split_at(length);
        rest = tail;
        frames.clear();
        if head[0] & 1 == 0 {
            let _ = from_browser.push(ssrc, sequence, timestamp, payload, &mut frames);
            assert!(frames.iter().all(|f| f.payload.len() == 160), "20 ms of G.711 is 160 bytes");
            let _ = from_browser.timeline().map(timestamp);
        } else {
            let _ = to_browser.push(ssrc, sequence, timestamp, payload, &mut frames);
            assert!(frames.iter().all(|f| !f.payload.is_empty() && f.payload.len() <= 1275));
        }
    }
});
