//! How fast the pure-Rust G.722 codec runs on one core: encodes and decodes
//! 60 s of a voice-like 16 kHz signal in 20 ms frames and prints the time per
//! frame and the share of a core one direction of a call takes.
//! `cargo run --release -p branchgate-dsp --example g722_speed`

use std::time::Instant;

use branchgate_dsp::{G722Decoder, G722Encoder};

fn main() {
    let seconds = 60;
    let pcm: Vec<i16> = (0..16000 * seconds)
        .map(|n| {
            let t = n as f64 / 16000.0;
            let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin().abs();
            let voice = [(500.0, 0.5), (1500.0, 0.3), (2500.0, 0.15), (5000.0, 0.05)]
                .iter()
                .map(|(f, a)| a * (2.0 * std::f64::consts::PI * f * t).sin())
                .sum::<f64>();
            (envelope * voice * 9000.0) as i16
        })
        .collect();
    let frames = pcm.len() / 320;
    let mut codes = vec![0u8; pcm.len() / 2];
    let mut encoder = G722Encoder::new();
    let start = Instant::now();
    for (frame, out) in pcm.chunks_exact(320).zip(codes.chunks_exact_mut(160)) {
        encoder.encode(frame, out);
    }
    let encode = start.elapsed();
    let mut decoded = vec![0i16; 320];
    let mut decoder = G722Decoder::new();
    let start = Instant::now();
    let mut check = 0i64;
    for frame in codes.chunks_exact(160) {
        decoder.decode(frame, &mut decoded);
        check += i64::from(decoded[0]);
    }
    let decode = start.elapsed();
    for (what, time) in [("encode", encode), ("decode", decode)] {
        let per_frame = time.as_secs_f64() / frames as f64;
        println!(
            "{what}: {:.2} µs per 20 ms frame, {:.3} % of a core per stream, {:.0} streams per core",
            per_frame * 1e6,
            per_frame / 0.02 * 100.0,
            0.02 / per_frame
        );
    }
    println!("(checksum {check})");
}
