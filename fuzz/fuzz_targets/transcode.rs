//! RTP payloads from the network into the transcoder: any sequence numbers,
//! timestamps (wraps, jumps back, huge gaps) and payloads (not Opus or G.722
//! at all) must neither panic nor make it emit frames of the wrong size.
#![no_main]

use branchgate_dsp::{Codec, G722Decoder, Transcoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Ok(mut from_browser), Ok(mut to_browser)) =
        (Transcoder::new(Codec::Opus, Codec::Pcma, 20), Transcoder::new(Codec::Pcmu, Codec::Opus, 20))
    else {
        return;
    };
    let (Ok(mut to_g722), Ok(mut from_g722)) =
        (Transcoder::new(Codec::Opus, Codec::G722, 20), Transcoder::new(Codec::G722, Codec::Opus, 20))
    else {
        return;
    };
    let mut g722 = G722Decoder::new();
    let mut pcm = [0i16; 2 * 255];
    let mut frames = Vec::new();
    // Records: direction (bit 0), source (bit 1), G.711 or G.722 call (bit 2), sequence (2),
    // timestamp (4), length, payload.
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
        match head[0] & 5 {
            0 => {
                let _ = from_browser.push(ssrc, sequence, timestamp, payload, &mut frames);
                assert!(frames.iter().all(|f| f.payload.len() == 160), "20 ms of G.711 is 160 bytes");
                let _ = from_browser.timeline().map(timestamp);
            }
            1 => {
                let _ = to_browser.push(ssrc, sequence, timestamp, payload, &mut frames);
                assert!(frames.iter().all(|f| !f.payload.is_empty() && f.payload.len() <= 1275));
            }
            4 => {
                let _ = to_g722.push(ssrc, sequence, timestamp, payload, &mut frames);
                assert!(frames.iter().all(|f| f.payload.len() == 160), "20 ms of G.722 is 160 bytes");
                let _ = to_g722.timeline().map(timestamp);
            }
            _ => {
                // Every byte is a G.722 code: two samples each, whatever came before.
                assert_eq!(g722.decode(payload, &mut pcm), 2 * payload.len());
                let _ = from_g722.push(ssrc, sequence, timestamp, payload, &mut frames);
                assert!(frames.iter().all(|f| !f.payload.is_empty() && f.payload.len() <= 1275));
                if let [first, second, ..] = frames.as_slice() {
                    assert_eq!(second.timestamp.wrapping_sub(first.timestamp), 960, "20 ms of 48 kHz clock");
                }
            }
        }
    }
});
