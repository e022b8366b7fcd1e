//! `./x bench transcode` (ours beside ffmpeg's libopus): how many Opus <-> G.711 calls one
//! core transcodes in real time. Each call is two `Transcoder`s (the
//! browser's Opus to PCMU, the phone's PCMU to Opus) fed one 20 ms packet
//! each per tick; a tick is late when its calls take longer than 20 ms of
//! CPU on this one thread. Prints, per number of calls, the mean and worst
//! tick and the share of late ticks, then the largest load with < 0.1 %
//! late ticks, and the codec delay the box adds.

use std::time::{Duration, Instant};

use branchgate_dsp::{Codec, Encoder, Frame, Transcoder};

/// 20 ms packets of a voice-like signal (three formants with a slow
/// envelope and a little noise), encoded once as `codec`.
fn packets(codec: Codec, seconds: usize) -> Vec<Vec<u8>> {
    let mut encoder = Encoder::new(codec, 8000, 20).expect("encoder");
    let mut seed = 12345u32;
    let pcm: Vec<i16> = (0..8000 * seconds)
        .map(|n| {
            let t = n as f64 / 8000.0;
            let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin().abs();
            let voice = [(500.0, 0.5), (1500.0, 0.3), (2500.0, 0.2)]
                .iter()
                .map(|(f, a)| a * (2.0 * std::f64::consts::PI * f * t).sin())
                .sum::<f64>();
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let noise = f64::from(seed >> 16) / 65536.0 - 0.5;
            (envelope * voice * 9000.0 + noise * 300.0) as i16
        })
        .collect();
    pcm.chunks_exact(160)
        .map(|frame| {
            let mut payload = Vec::new();
            encoder.encode(frame, &mut payload).expect("encode");
            payload
        })
        .collect()
}

struct Call {
    from_browser: Transcoder,
    to_browser: Transcoder,
}

fn main() {
    let opus = packets(Codec::Opus, 10);
    let pcmu = packets(Codec::Pcmu, 10);
    let ticks = opus.len().min(pcmu.len());
    let mut frames: Vec<Frame> = Vec::new();
    let mut best = 0;
    println!("calls  mean_tick_ms  worst_tick_ms  late_ticks  calls_per_core(mean)");
    for calls in [10, 20, 40, 60, 80, 100, 120, 150, 200, 250, 300] {
        let mut set: Vec<Call> = (0..calls)
            .map(|_| Call {
                from_browser: Transcoder::new(Codec::Opus, Codec::Pcmu, 20).expect("transcoder"),
                to_browser: Transcoder::new(Codec::Pcmu, Codec::Opus, 20).expect("transcoder"),
            })
            .collect();
        let (mut total, mut worst, mut late) = (Duration::ZERO, Duration::ZERO, 0);
        for tick in 0..ticks {
            let started = Instant::now();
            for call in &mut set {
                frames.clear();
                let (sequence, opus_ts, pcmu_ts) = (tick as u16, tick as u32 * 960, tick as u32 * 160);
                call.from_browser.push(1, sequence, opus_ts, &opus[tick], &mut frames).expect("opus in");
                call.to_browser.push(2, sequence, pcmu_ts, &pcmu[tick], &mut frames).expect("pcmu in");
            }
            let took = started.elapsed();
            total += took;
            worst = worst.max(took);
            if took > Duration::from_millis(20) {
                late += 1;
            }
        }
        let mean = total / ticks as u32;
        let per_core = 20.0 / (mean.as_secs_f64() * 1000.0) * calls as f64;
        let late_share = late as f64 / ticks as f64;
        println!(
            "{calls:5}  {:12.3}  {:13.3}  {:9.2}%  {per_core:8.0}",
            mean.as_secs_f64() * 1000.0,
            worst.as_secs_f64() * 1000.0,
            late_share * 100.0
        );
        if late_share < 0.001 {
            best = calls;
        } else {
            break;
        }
    }
    let lookahead = {
        let mut encoder = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
        encoder.get_lookahead().unwrap_or(0)
    };
    println!("transcoded calls per core in real time with < 0.1% late frames: {best}");
    println!(
        "codec delay added by transcoding: Opus encoder lookahead {:.1} ms (the transcoder itself buffers nothing for 20 ms in and out)",
        f64::from(lookahead) / 8.0
    );
}
