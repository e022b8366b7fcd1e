//! V4L2 cameras through the `v4l` crate: capabilities, formats with frame
//! sizes, controls with their values, and mmap frame capture. The simulated
//! camera gives frames through the same [`FrameSource`] trait.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;

use crate::camera::{CameraError, CameraInfo, SIM_HEIGHT, SIM_WIDTH, simulated_frame};

/// A pixel format and the frame sizes the device offers for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    /// Discrete sizes as `[width, height]`; a stepwise range as its smallest and largest.
    pub sizes: Vec<[u32; 2]>,
    pub stepwise: bool,
}

/// A control (brightness, contrast, ...) with its range and current value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlInfo {
    pub id: u32,
    pub name: String,
    pub kind: String,
    pub minimum: i64,
    pub maximum: i64,
    pub step: u64,
    pub default: i64,
    /// The current value of integer, boolean and menu controls.
    pub value: Option<i64>,
}

/// What a V4L2 device says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceDetails {
    pub driver: String,
    pub card: String,
    pub bus: String,
    pub formats: Vec<FormatInfo>,
    /// The format it is set to: fourcc, width, height.
    pub current: (String, u32, u32),
    pub controls: Vec<ControlInfo>,
}

fn io_error(device: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CameraError + use<> {
    let device = device.display().to_string();
    move |source| CameraError::Device { device, what, source }
}

/// Capabilities, formats (with sizes), current format and controls of `device`.
pub fn details(device: &Path) -> Result<DeviceDetails, CameraError> {
    let dev = v4l::Device::with_path(device).map_err(io_error(device, "open"))?;
    let caps = dev.query_caps().map_err(io_error(device, "VIDIOC_QUERYCAP"))?;
    let mut formats = Vec::new();
    for f in dev.enum_formats().map_err(io_error(device, "VIDIOC_ENUM_FMT"))? {
        let mut sizes = Vec::new();
        let mut stepwise = false;
        // A format without VIDIOC_ENUM_FRAMESIZES support just lists no sizes.
        for size in dev.enum_framesizes(f.fourcc).unwrap_or_default() {
            match size.size {
                v4l::framesize::FrameSizeEnum::Discrete(d) => sizes.push([d.width, d.height]),
                v4l::framesize::FrameSizeEnum::Stepwise(s) => {
                    stepwise = true;
                    sizes.push([s.min_width, s.min_height]);
                    sizes.push([s.max_width, s.max_height]);
                }
            }
        }
        formats.push(FormatInfo { fourcc: f.fourcc.to_string(), description: f.description, sizes, stepwise });
    }
    let current = dev.format().map_err(io_error(device, "VIDIOC_G_FMT"))?;
    let mut controls = Vec::new();
    for c in dev.query_controls().map_err(io_error(device, "VIDIOC_QUERYCTRL"))? {
        use v4l::control::Type;
        if c.typ == Type::CtrlClass {
            continue;
        }
        let value = match c.typ {
            Type::Integer | Type::Boolean | Type::Menu | Type::IntegerMenu | Type::Integer64 => {
                match dev.control(c.id).map(|v| v.value) {
                    Ok(v4l::control::Value::Integer(v)) => Some(v),
                    Ok(v4l::control::Value::Boolean(b)) => Some(i64::from(b)),
                    _ => None,
                }
            }
            _ => None,
        };
        controls.push(ControlInfo {
            id: c.id,
            name: c.name,
            kind: format!("{:?}", c.typ).to_lowercase(),
            minimum: c.minimum,
            maximum: c.maximum,
            step: c.step,
            default: c.default,
            value,
        });
    }
    Ok(DeviceDetails {
        driver: caps.driver,
        card: caps.card,
        bus: caps.bus,
        formats,
        current: (current.fourcc.to_string(), current.width, current.height),
        controls,
    })
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fourcc: String,
    pub width: u32,
    pub height: u32,
    pub sequence: u32,
    pub data: Vec<u8>,
}

/// Where frames come from: a V4L2 device or the simulated camera.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> Result<Frame, CameraError>;
}

/// A V4L2 capture device streaming through mmap buffers, in the format it is set to.
pub struct V4l2Source {
    device: String,
    stream: v4l::io::mmap::Stream<'static>,
    format: v4l::Format,
    // Kept open for the stream's lifetime (the stream holds the same handle).
    _dev: v4l::Device,
}

impl V4l2Source {
    pub fn open(device: &Path) -> Result<Self, CameraError> {
        let dev = v4l::Device::with_path(device).map_err(io_error(device, "open"))?;
        let format = dev.format().map_err(io_error(device, "VIDIOC_G_FMT"))?;
        let mut stream = v4l::io::mmap::Stream::with_buffers(&dev, v4l::buffer::Type::VideoCapture, 4)
            .map_err(io_error(device, "VIDIOC_REQBUFS"))?;
        // A device that stops delivering is an error, not a hang.
        stream.set_timeout(Duration::from_secs(5));
        Ok(V4l2Source { device: device.display().to_string(), stream, format, _dev: dev })
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        let (data, meta) = self.stream.next().map_err(io_error(Path::new(&self.device), "VIDIOC_DQBUF"))?;
        let used = (meta.bytesused as usize).min(data.len());
        Ok(Frame {
            fourcc: self.format.fourcc.to_string(),
            width: self.format.width,
            height: self.format.height,
            sequence: meta.sequence,
            data: data[..used].to_vec(),
        })
    }
}

/// The simulated camera's frames (RGB24), one per call, 15 per second of its clock.
pub struct SimulatedSource {
    sequence: u32,
}

impl FrameSource for SimulatedSource {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let frame = Frame {
            fourcc: "RGB3".into(),
            width: SIM_WIDTH,
            height: SIM_HEIGHT,
            sequence: self.sequence,
            data: simulated_frame(unix_ms),
        };
        self.sequence = self.sequence.wrapping_add(1);
        Ok(frame)
    }
}

/// Frames from `camera`, whichever kind it is.
pub fn open(camera: &CameraInfo) -> Result<Box<dyn FrameSource>, CameraError> {
    match (&camera.device, camera.simulated) {
        (_, true) => Ok(Box::new(SimulatedSource { sequence: 0 })),
        (Some(device), false) => Ok(Box::new(V4l2Source::open(Path::new(device))?)),
        (None, false) => Err(CameraError::NoSuchCamera(camera.id.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_camera_is_a_frame_source() {
        let sim = crate::camera::enumerate(Path::new("/nonexistent")).remove(0);
        let mut source = open(&sim).expect("open");
        let a = source.next_frame().expect("frame");
        let b = source.next_frame().expect("frame");
        assert_eq!((a.width, a.height, a.fourcc.as_str()), (SIM_WIDTH, SIM_HEIGHT, "RGB3"));
        assert_eq!(a.data.len(), (SIM_WIDTH * SIM_HEIGHT * 3) as usize);
        assert_eq!(b.sequence, a.sequence + 1);
    }

    #[test]
    fn a_missing_device_is_an_error_that_names_it() {
        let err = details(Path::new("/nonexistent/video9")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/video9"), "{err}");
        let real = CameraInfo {
            id: "video9".into(),
            name: "gone".into(),
            simulated: false,
            device: Some("/nonexistent/video9".into()),
            width: 0,
            height: 0,
        };
        assert!(open(&real).is_err());
    }
}
