//! Audio signal processing for the gateway, pure functions and small state
//! machines over sample buffers (no IO, no clock): G.711 (ITU-T G.711),
//! G.722 (ITU-T G.722, in pure Rust), integer-ratio resampling between 8, 16
//! and 48 kHz, Opus through libopus, in-band DTMF detection (Goertzel), the per-direction transcoder between a
//! browser's Opus and a phone's G.711 or G.722, and the reordering jitter
//! buffer in front of it (the instants it takes come from the caller).

pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod jitter;
pub mod resample;
pub mod transcode;

pub use codec::{Codec, Decoder, DspError, Encoder};
pub use dtmf::{DtmfDetector, DtmfTone, InbandKeys};
pub use g722::{G722Decoder, G722Encoder};
pub use jitter::{JitterBuffer, JitterStats};
pub use transcode::{Frame, Timeline, Transcoder};
