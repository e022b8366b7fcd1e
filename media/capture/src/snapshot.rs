//! JPEG snapshots decoded from a camera's stream — the picture its viewers
//! see — for cameras whose frames the box cannot read directly (a real
//! camera's device belongs to its pipeline). The snapshot joins the camera's
//! one encode like a viewer (starting it when nobody watches), asks for a
//! keyframe, and decodes from there: `appsrc ! rtph264depay ! h264parse !
//! decodebin` (a hardware decoder where the box has one) `! videoconvert !
//! jpegenc ! appsink`. The simulated camera's snapshots come from `hal`.

use std::time::Duration;

use branchgate_hal::camera::CameraInfo;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::broadcast;

use crate::{CaptureError, CaptureHub, RtpFeeder, gst_error, pipeline_error, play};

/// How long a snapshot may take: a camera pipeline's start and a keyframe.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// JPEG quality of snapshots (libjpeg's scale).
const QUALITY: u32 = 85;
/// The GStreamer elements a snapshot needs past the stream's depayloader and parser, and the
/// Debian package of each.
const ELEMENTS: &[(&str, &str)] =
    &[("decodebin", "gstreamer1.0-plugins-base"), ("jpegenc", "gstreamer1.0-plugins-good")];

/// A decoder from the stream's RTP to one JPEG picture.
struct JpegDecoder {
    pipeline: gst::Pipeline,
    feeder: RtpFeeder,
    sink: gst_app::AppSink,
}

impl JpegDecoder {
    fn start() -> Result<JpegDecoder, CaptureError> {
        let downstream = format!(
            "decodebin ! videoconvert ! jpegenc quality={QUALITY} ! appsink name=sink sync=false max-buffers=1 drop=true"
        );
        let (pipeline, feeder) = RtpFeeder::launch("snapshots", ELEMENTS, &downstream)?;
        let sink = pipeline
            .by_name("sink")
            .ok_or_else(|| CaptureError::Gstreamer("no element sink in the pipeline".into()))?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| CaptureError::Gstreamer("sink is not an appsink".into()))?;
        play(&pipeline)?;
        Ok(JpegDecoder { pipeline, feeder, sink })
    }

    /// The first picture, once decoded.
    fn picture(&self) -> Option<Vec<u8>> {
        let sample = self.sink.try_pull_sample(gst::ClockTime::ZERO)?;
        let buffer = sample.buffer()?;
        let map = buffer.map_readable().ok()?;
        Some(map.to_vec())
    }

    /// The pipeline's error, if it failed (no decoder for the stream, say).
    fn failure(&self) -> Option<String> {
        pipeline_error(&self.pipeline)
    }
}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A JPEG of `camera`'s picture as its viewers see it, within [`SNAPSHOT_TIMEOUT`].
pub async fn snapshot(hub: &CaptureHub, camera: &CameraInfo) -> Result<Vec<u8>, CaptureError> {
    let (hub, info) = (hub.clone(), camera.clone());
    // Starting pipelines blocks.
    let (mut subscription, mut decoder) = tokio::task::spawn_blocking(move || -> Result<_, CaptureError> {
        Ok((hub.subscribe(&info)?, JpegDecoder::start()?))
    })
    .await
    .map_err(gst_error)??;
    let deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
    let outcome = loop {
        let received = match tokio::time::timeout_at(deadline, subscription.recv()).await {
            Ok(received) => received,
            Err(_) => break Err(CaptureError::NoPicture { camera: camera.id.clone(), why: "none in time".into() }),
        };
        match received {
            Ok(video) => {
                if let Err(e) = decoder.feeder.push(&video) {
                    break Err(e);
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => subscription.request_keyframe(),
            Err(broadcast::error::RecvError::Closed) => {
                break Err(CaptureError::NoPicture { camera: camera.id.clone(), why: "the camera stopped".into() });
            }
        }
        if let Some(jpeg) = decoder.picture() {
            break Ok(jpeg);
        }
        if let Some(why) = decoder.failure() {
            break Err(CaptureError::NoPicture { camera: camera.id.clone(), why });
        }
    };
    // Stopping pipelines blocks too (the camera's, when this was its only viewer).
    let _ = tokio::task::spawn_blocking(move || drop((decoder, subscription))).await;
    outcome
}

/// The (width, height) in a baseline JPEG's start-of-frame (SOF0) segment.
pub fn jpeg_size(jpeg: &[u8]) -> Option<(u16, u16)> {
    let at = jpeg.windows(2).position(|w| w == [0xff, 0xc0])?;
    let field = |i: usize| Some(u16::from_be_bytes([*jpeg.get(at + i)?, *jpeg.get(at + i + 1)?]));
    Some((field(7)?, field(5)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs GStreamer's base, good, bad (h264parse, openh264dec) and ugly (x264) plugins: `./x` installs them.
    #[tokio::test]
    async fn a_snapshot_is_the_streams_picture_decoded_to_jpeg() {
        let hub = CaptureHub::default();
        let camera = branchgate_hal::camera::enumerate(std::path::Path::new("/nonexistent")).remove(0);
        let jpeg = snapshot(&hub, &camera).await.expect("snapshot");
        assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "JPEG start of image");
        assert_eq!(
            jpeg_size(&jpeg),
            Some((branchgate_hal::camera::SIM_WIDTH as u16, branchgate_hal::camera::SIM_HEIGHT as u16))
        );
        assert_eq!(hub.encoders_running(), 0, "the camera's pipeline stops with its only viewer");
    }
}
