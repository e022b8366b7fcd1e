//! Bit-exactness of the G.722 codec against vectors from two other
//! implementations, spandsp 0.0.6 and FFmpeg 5.1, which agree with each other
//! (`tests/vectors/make-g722.sh` makes and checks them).

use branchgate_dsp::{G722Decoder, G722Encoder};

fn pcm(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// One input, its codes and their decoded PCM.
struct Vector {
    name: &'static str,
    input: Vec<i16>,
    codes: Vec<u8>,
    decoded: Vec<i16>,
}

macro_rules! vector {
    ($name:literal) => {
        Vector {
            name: $name,
            input: pcm(include_bytes!(concat!("vectors/", $name, ".pcm"))),
            codes: include_bytes!(concat!("vectors/", $name, ".g722")).to_vec(),
            decoded: pcm(include_bytes!(concat!("vectors/", $name, ".dec.pcm"))),
        }
    };
}

fn vectors() -> Vec<Vector> {
    vec![vector!("sweep"), vector!("tones"), vector!("square"), vector!("silence")]
}

/// The first place two sequences differ, for a readable failure.
fn first_difference<T: PartialEq + Copy + std::fmt::Debug>(ours: &[T], theirs: &[T]) -> Option<(usize, T, T)> {
    ours.iter().zip(theirs).enumerate().find(|(_, (a, b))| a != b).map(|(i, (a, b))| (i, *a, *b))
}

#[test]
fn encoder_reproduces_the_reference_codes() {
    for Vector { name, input, codes, .. } in vectors() {
        assert_eq!(input.len(), 8000, "{name}");
        let mut ours = Vec::new();
        let mut encoder = G722Encoder::new();
        // In 20 ms frames, as the transcoder encodes.
        for frame in input.chunks(320) {
            encoder.encode_to_vec(frame, &mut ours);
        }
        assert_eq!(ours.len(), codes.len(), "{name}");
        assert_eq!(first_difference(&ours, &codes), None, "{name}: (code, ours, reference)");
    }
}

#[test]
fn decoder_reproduces_the_reference_pcm() {
    // Random bytes, codes no encoder made.
    let random = Vector {
        name: "random",
        input: Vec::new(),
        codes: include_bytes!("vectors/random.g722").to_vec(),
        decoded: pcm(include_bytes!("vectors/random.dec.pcm")),
    };
    for Vector { name, codes, decoded, .. } in vectors().into_iter().chain([random]) {
        let mut ours = Vec::new();
        let mut decoder = G722Decoder::new();
        // In odd-sized pieces: the state carries over.
        for piece in codes.chunks(77) {
            decoder.decode_to_vec(piece, &mut ours);
        }
        assert_eq!(ours.len(), decoded.len(), "{name}");
        assert_eq!(first_difference(&ours, &decoded), None, "{name}: (sample, ours, reference)");
    }
}
