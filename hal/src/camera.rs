//! Cameras: V4L2 devices found in sysfs, and the simulated camera.
//!
//! Formats, controls and frames of V4L2 devices are in `v4l2.rs`; JPEG
//! snapshots are of the simulated camera only (a real camera's raw frames
//! would need converting first; the GStreamer pipelines will do that).

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraInfo {
    /// Stable id used in URLs: `video0` for /dev/video0, `sim0` for the simulated one.
    pub id: String,
    pub name: String,
    pub simulated: bool,
    /// Device node of a real camera.
    pub device: Option<String>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("no camera {0}")]
    NoSuchCamera(String),
    #[error("capture from {0} is not available yet (it comes with the GStreamer pipeline)")]
    CaptureUnavailable(String),
    #[error("JPEG encoding failed: {0}")]
    Encoding(String),
    #[error("{device}: {what}: {source}")]
    Device {
        device: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The simulated camera's picture size.
pub const SIM_WIDTH: u32 = 640;
pub const SIM_HEIGHT: u32 = 360;

/// Cameras on this box: V4L2 capture devices under `sysfs` (normally
/// `/sys/class/video4linux`), and the simulated camera when there is none.
pub fn enumerate(sysfs: &Path) -> Vec<CameraInfo> {
    let mut cameras: Vec<CameraInfo> = std::fs::read_dir(sysfs)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let id = entry.file_name().to_string_lossy().into_owned();
                    if !id.starts_with("video") {
                        return None;
                    }
                    // Metadata nodes share the name; index 0 is the capture node.
                    let index = std::fs::read_to_string(entry.path().join("index")).unwrap_or_default();
                    if index.trim() != "0" && !index.trim().is_empty() {
                        return None;
                    }
                    let name = std::fs::read_to_string(entry.path().join("name"))
                        .map(|n| n.trim().to_string())
                        .unwrap_or_else(|_| id.clone());
                    Some(CameraInfo {
                        device: Some(format!("/dev/{id}")),
                        id,
                        name,
                        simulated: false,
                        width: 0,
                        height: 0,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    cameras.sort_by(|a, b| a.id.cmp(&b.id));
    if cameras.is_empty() {
        cameras.push(CameraInfo {
            id: "sim0".into(),
            name: "Simulated camera (test pattern)".into(),
            simulated: true,
            device: None,
            width: SIM_WIDTH,
            height: SIM_HEIGHT,
        });
    }
    cameras
}

/// The simulated camera's picture at `unix_ms`: colour bars sliding with
/// time, a moving box, and the time of day (UTC) as HH:MM:SS — never a still.
pub fn simulated_frame(unix_ms: u64) -> Vec<u8> {
    let (w, h) = (SIM_WIDTH as usize, SIM_HEIGHT as usize);
    let mut rgb = vec![0u8; w * h * 3];
    const BARS: [[u8; 3]; 7] =
        [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0], [0, 0, 192]];
    let shift = ((unix_ms / 20) as usize) % w;
    for y in 0..h {
        for x in 0..w {
            let bar = ((x + shift) % w) * BARS.len() / w;
            let at = (y * w + x) * 3;
            rgb[at..at + 3].copy_from_slice(&BARS[bar]);
        }
    }
    // A white box bouncing left and right once every 4 s.
    let phase = (unix_ms % 4000) as usize;
    let travel = w - 60;
    let bx = if phase < 2000 { phase * travel / 2000 } else { (4000 - phase) * travel / 2000 };
    for y in h / 2 - 30..h / 2 + 30 {
        for x in bx..bx + 60 {
            let at = (y * w + x) * 3;
            rgb[at..at + 3].copy_from_slice(&[255, 255, 255]);
        }
    }
    let secs = unix_ms / 1000;
    let clock = format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    for y in 12..12 + 7 * 4 + 8 {
        for x in 12..12 + 8 * 6 * 4 + 8 {
            let at = (y * w + x) * 3;
            rgb[at..at + 3].copy_from_slice(&[0, 0, 0]);
        }
    }
    crate::font::draw(&mut rgb, w, 16, 16, 4, &clock, [255, 255, 255]);
    rgb
}

/// A JPEG snapshot of `camera` at `unix_ms`.
pub fn snapshot_jpeg(camera: &CameraInfo, unix_ms: u64) -> Result<Vec<u8>, CameraError> {
    if !camera.simulated {
        return Err(CameraError::CaptureUnavailable(camera.id.clone()));
    }
    let rgb = simulated_frame(unix_ms);
    let mut out = Vec::new();
    let encoder = jpeg_encoder::Encoder::new(&mut out, 80);
    encoder
        .encode(&rgb, SIM_WIDTH as u16, SIM_HEIGHT as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| CameraError::Encoding(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_devices_there_is_a_simulated_camera() {
        let cameras = enumerate(Path::new("/nonexistent"));
        assert_eq!(cameras.len(), 1);
        assert!(cameras[0].simulated && cameras[0].id == "sim0");
    }

    #[test]
    fn v4l2_devices_are_found_in_sysfs() {
        let dir = std::env::temp_dir().join(format!("bg-hal-{}", std::process::id()));
        for (node, name, index) in [("video0", "vivid", "0"), ("video1", "vivid", "1"), ("video2", "USB Cam", "0")] {
            std::fs::create_dir_all(dir.join(node)).expect("dir");
            std::fs::write(dir.join(node).join("name"), format!("{name}\n")).expect("name");
            std::fs::write(dir.join(node).join("index"), index).expect("index");
        }
        let cameras = enumerate(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let ids: Vec<&str> = cameras.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["video0", "video2"], "metadata nodes skipped, no simulated camera");
        assert_eq!(cameras[1].name, "USB Cam");
        assert_eq!(cameras[1].device.as_deref(), Some("/dev/video2"));
    }

    #[test]
    fn the_simulated_picture_moves_and_shows_the_time() {
        let a = simulated_frame(1_000_000);
        let b = simulated_frame(1_000_500);
        assert_ne!(a, b, "never a still image");
        let sim = &enumerate(Path::new("/nonexistent"))[0];
        let jpeg = snapshot_jpeg(sim, 1_000_000).expect("jpeg");
        assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF], "a JPEG");
        let real = CameraInfo { simulated: false, ..sim.clone() };
        assert!(matches!(snapshot_jpeg(&real, 0), Err(CameraError::CaptureUnavailable(_))));
    }
}
