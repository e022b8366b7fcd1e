//! The pipeline of a real (V4L2) camera, decided by plain functions:
//! which of the device's formats to capture ([`choose_input`]), at which
//! size ([`choose_size`]), which H.264 encoder this machine has
//! ([`choose_encoder`]), and the GStreamer description that joins them
//! ([`pipeline_description`]). `lib.rs` only probes and launches.

use branchgate_hal::v4l2::FormatInfo;

use crate::PIPELINE_PAYLOAD_TYPE;

/// What the camera gives, in order of preference: H.264 is passed through
/// without re-encoding, MJPEG is decoded, raw frames are converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    H264,
    Mjpeg,
    /// A raw format by its GStreamer name (`YUY2` for V4L2's `YUYV`).
    Raw(&'static str),
}

/// V4L2 raw fourccs `v4l2src` captures, with GStreamer's names, preferred first.
const RAW_FORMATS: [(&str, &str); 8] = [
    ("YUYV", "YUY2"),
    ("NV12", "NV12"),
    ("UYVY", "UYVY"),
    ("YU12", "I420"),
    ("YV12", "YV12"),
    ("NV21", "NV21"),
    ("RGB3", "RGB"),
    ("BGR3", "BGR"),
];

impl Input {
    fn of(fourcc: &str) -> Option<Input> {
        match fourcc {
            "H264" => Some(Input::H264),
            "MJPG" | "JPEG" => Some(Input::Mjpeg),
            _ => RAW_FORMATS.iter().find(|(v4l2, _)| *v4l2 == fourcc).map(|(_, gst)| Input::Raw(gst)),
        }
    }

    fn rank(&self) -> usize {
        match self {
            Input::H264 => 0,
            Input::Mjpeg => 1,
            Input::Raw(name) => 2 + RAW_FORMATS.iter().position(|(_, gst)| gst == name).unwrap_or(RAW_FORMATS.len()),
        }
    }

    /// The caps `v4l2src` is asked for.
    fn caps(&self) -> String {
        match self {
            Input::H264 => "video/x-h264,stream-format=byte-stream".into(),
            Input::Mjpeg => "image/jpeg".into(),
            Input::Raw(name) => format!("video/x-raw,format={name}"),
        }
    }
}

/// The device's best format for us (see [`Input`]), or `None` when it offers
/// nothing we can stream.
pub fn choose_input(formats: &[FormatInfo]) -> Option<(Input, &FormatInfo)> {
    formats.iter().filter_map(|f| Input::of(&f.fourcc).map(|input| (input, f))).min_by_key(|(input, _)| input.rank())
}

/// The frame size for `want`: within a stepwise range, `want` clamped to it;
/// of discrete sizes, the largest that fits in `want`, else the smallest.
/// `None` when the device lists no sizes (then it keeps its own).
pub fn choose_size(format: &FormatInfo, want: (u32, u32)) -> Option<(u32, u32)> {
    if format.stepwise {
        let (min, max) = (format.sizes.first()?, format.sizes.last()?);
        // Even sizes: every 4:2:0 encoder needs them.
        let clamp = |v: u32, lo: u32, hi: u32| (v.clamp(lo, hi.max(lo)) & !1).max(lo);
        return Some((clamp(want.0, min[0], max[0]), clamp(want.1, min[1], max[1])));
    }
    let area = |s: &&[u32; 2]| u64::from(s[0]) * u64::from(s[1]);
    let fitting = format.sizes.iter().filter(|s| s[0] <= want.0 && s[1] <= want.1).max_by_key(area);
    fitting.or_else(|| format.sizes.iter().min_by_key(area)).map(|s| (s[0], s[1]))
}

/// An H.264 encoder element, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderKind {
    /// The SoC's hardware encoder (V4L2 stateful mem2mem).
    V4l2,
    X264,
    OpenH264,
}

impl EncoderKind {
    pub const ALL: [EncoderKind; 3] = [EncoderKind::V4l2, EncoderKind::X264, EncoderKind::OpenH264];

    /// The GStreamer element name.
    pub fn element(self) -> &'static str {
        match self {
            EncoderKind::V4l2 => "v4l2h264enc",
            EncoderKind::X264 => "x264enc",
            EncoderKind::OpenH264 => "openh264enc",
        }
    }

    /// The raw format the encoder is fed.
    fn raw_format(self) -> &'static str {
        match self {
            EncoderKind::V4l2 => "NV12",
            EncoderKind::X264 | EncoderKind::OpenH264 => "I420",
        }
    }

    /// The element with its settings: `bitrate_kbps`, a keyframe every
    /// `keyframe_interval` frames, no B-frames.
    fn element_description(self, bitrate_kbps: u32, keyframe_interval: u32) -> String {
        let bps = u64::from(bitrate_kbps) * 1000;
        match self {
            EncoderKind::V4l2 => format!(
                "v4l2h264enc name=enc extra-controls=\"controls,video_bitrate={bps},h264_i_frame_period={keyframe_interval}\""
            ),
            EncoderKind::X264 => format!(
                "x264enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max={keyframe_interval} bitrate={bitrate_kbps}"
            ),
            EncoderKind::OpenH264 => format!(
                "openh264enc name=enc usage-type=camera rate-control=bitrate bitrate={bps} gop-size={keyframe_interval}"
            ),
        }
    }
}

/// The first encoder of `preferred` (or of [`EncoderKind::ALL`]) that
/// `exists` says this machine has.
pub fn choose_encoder(preferred: Option<EncoderKind>, exists: impl Fn(&str) -> bool) -> Option<EncoderKind> {
    preferred.into_iter().chain(EncoderKind::ALL).find(|kind| exists(kind.element()))
}

/// Everything a real camera's pipeline depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelinePlan {
    pub device: String,
    pub input: Input,
    pub size: Option<(u32, u32)>,
    pub fps: Option<u32>,
    /// `None` for H.264 input (passed through).
    pub encoder: Option<EncoderKind>,
    pub bitrate_kbps: u32,
}

/// Frames per second assumed for the keyframe interval when the device picks its own rate.
const DEFAULT_FPS: u32 = 30;

/// The GStreamer description: `v4l2src` → decode/convert → encode (or
/// nothing, for H.264 input) → RTP H.264 → `appsink`, with the element names
/// `lib.rs` looks up (`enc` receives keyframe requests, `sink` the packets).
/// A leaky queue before the encoder drops frames rather than delaying them
/// when the encoder cannot keep up.
pub fn pipeline_description(plan: &PipelinePlan) -> String {
    let mut caps = plan.input.caps();
    if let Some((w, h)) = plan.size {
        caps.push_str(&format!(",width={w},height={h}"));
    }
    if let Some(fps) = plan.fps {
        caps.push_str(&format!(",framerate={fps}/1"));
    }
    let source = format!("v4l2src device={} do-timestamp=true ! {caps}", plan.device);
    let queue = "queue leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0";
    // A keyframe at least every 2 s.
    let keyframe_interval = 2 * plan.fps.unwrap_or(DEFAULT_FPS);
    let middle = match (&plan.input, plan.encoder) {
        (Input::H264, _) | (_, None) => {
            // Passed through to the payloader (which puts SPS/PPS before every
            // keyframe); `identity` only carries the name keyframe requests go
            // to, upstream to the camera. No h264parse: that is plugins-bad.
            format!("{queue} ! identity name=enc")
        }
        (input, Some(encoder)) => {
            let decode = if *input == Input::Mjpeg { "jpegdec ! " } else { "" };
            format!(
                "{decode}videoconvert ! video/x-raw,format={} ! {queue} ! {} ! video/x-h264,profile=constrained-baseline",
                encoder.raw_format(),
                encoder.element_description(plan.bitrate_kbps, keyframe_interval)
            )
        }
    };
    format!(
        "{source} ! {middle} \
         ! rtph264pay pt={PIPELINE_PAYLOAD_TYPE} mtu=1200 config-interval=-1 aggregate-mode=zero-latency \
         ! appsink name=sink sync=false max-buffers=256 drop=true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer::prelude::*;

    fn format(fourcc: &str, sizes: &[[u32; 2]], stepwise: bool) -> FormatInfo {
        FormatInfo { fourcc: fourcc.into(), description: fourcc.into(), sizes: sizes.to_vec(), stepwise }
    }

    #[test]
    fn h264_is_preferred_then_mjpeg_then_raw() {
        let yuyv = format("YUYV", &[[640, 480]], false);
        let nv12 = format("NV12", &[[640, 480]], false);
        let mjpg = format("MJPG", &[[1280, 720]], false);
        let h264 = format("H264", &[[1920, 1080]], false);
        let grey = format("Y10 ", &[[640, 480]], false);
        let pick = |list: &[FormatInfo]| choose_input(list).map(|(input, _)| input);
        assert_eq!(pick(&[yuyv.clone(), mjpg.clone(), h264.clone()]), Some(Input::H264));
        assert_eq!(pick(&[yuyv.clone(), mjpg.clone()]), Some(Input::Mjpeg));
        assert_eq!(pick(&[nv12.clone(), yuyv.clone()]), Some(Input::Raw("YUY2")));
        assert_eq!(pick(&[grey.clone(), nv12]), Some(Input::Raw("NV12")));
        assert_eq!(pick(&[grey]), None, "nothing we can stream");
        assert_eq!(choose_input(&[yuyv, mjpg]).map(|(_, f)| f.fourcc.as_str()), Some("MJPG"));
    }

    #[test]
    fn sizes_fit_the_wish() {
        let discrete = format("YUYV", &[[320, 180], [640, 360], [1280, 720], [1920, 1080]], false);
        assert_eq!(choose_size(&discrete, (1280, 720)), Some((1280, 720)));
        assert_eq!(choose_size(&discrete, (1000, 1000)), Some((640, 360)));
        assert_eq!(choose_size(&discrete, (100, 100)), Some((320, 180)), "the smallest when none fits");
        let stepwise = format("YUYV", &[[16, 16], [1920, 1080]], true);
        assert_eq!(choose_size(&stepwise, (1280, 720)), Some((1280, 720)));
        assert_eq!(choose_size(&stepwise, (4000, 8)), Some((1920, 16)));
        assert_eq!(choose_size(&stepwise, (641, 361)), Some((640, 360)), "even");
        assert_eq!(choose_size(&format("YUYV", &[], false), (640, 360)), None);
    }

    #[test]
    fn the_encoder_is_what_the_machine_has() {
        let have = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        let all: &[&str] = &["v4l2h264enc", "x264enc", "openh264enc"];
        assert_eq!(choose_encoder(None, have(all)), Some(EncoderKind::V4l2));
        assert_eq!(choose_encoder(None, have(&["x264enc", "openh264enc"])), Some(EncoderKind::X264));
        assert_eq!(choose_encoder(None, have(&["openh264enc"])), Some(EncoderKind::OpenH264));
        assert_eq!(choose_encoder(None, have(&[])), None);
        assert_eq!(choose_encoder(Some(EncoderKind::OpenH264), have(all)), Some(EncoderKind::OpenH264));
        assert_eq!(
            choose_encoder(Some(EncoderKind::V4l2), have(&["x264enc"])),
            Some(EncoderKind::X264),
            "a preferred encoder that is missing falls back"
        );
    }

    /// Every element of every plan exists and links (no device is opened
    /// before PLAYING). Needs GStreamer's base, good and ugly plugins.
    #[test]
    fn descriptions_parse() {
        gstreamer::init().expect("gstreamer");
        for (input, encoder) in [
            (Input::Raw("YUY2"), Some(EncoderKind::X264)),
            (Input::Raw("NV12"), Some(EncoderKind::X264)),
            (Input::Mjpeg, Some(EncoderKind::X264)),
            (Input::H264, None),
        ] {
            let plan = PipelinePlan {
                device: "/dev/video0".into(),
                input,
                size: Some((640, 360)),
                fps: Some(15),
                encoder,
                bitrate_kbps: 800,
            };
            let pipeline = gstreamer::parse::launch(&pipeline_description(&plan)).expect("parses");
            let bin = pipeline.downcast::<gstreamer::Bin>().expect("bin");
            assert!(bin.by_name("enc").is_some() && bin.by_name("sink").is_some());
        }
    }

    #[test]
    fn descriptions() {
        let plan = PipelinePlan {
            device: "/dev/video0".into(),
            input: Input::Raw("YUY2"),
            size: Some((640, 360)),
            fps: Some(15),
            encoder: Some(EncoderKind::X264),
            bitrate_kbps: 1500,
        };
        let raw = pipeline_description(&plan);
        assert!(raw.starts_with("v4l2src device=/dev/video0 do-timestamp=true ! video/x-raw,format=YUY2,width=640,height=360,framerate=15/1 ! videoconvert ! video/x-raw,format=I420 ! queue"), "{raw}");
        assert!(raw.contains("x264enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=1500"));
        assert!(
            raw.contains("rtph264pay pt=96") && raw.ends_with("appsink name=sink sync=false max-buffers=256 drop=true")
        );
        assert!(!raw.contains("jpegdec"));

        let mjpeg = pipeline_description(&PipelinePlan {
            input: Input::Mjpeg,
            encoder: Some(EncoderKind::V4l2),
            fps: None,
            ..plan.clone()
        });
        assert!(
            mjpeg.contains("! image/jpeg,width=640,height=360 ! jpegdec ! videoconvert ! video/x-raw,format=NV12"),
            "{mjpeg}"
        );
        assert!(mjpeg.contains("video_bitrate=1500000,h264_i_frame_period=60"), "{mjpeg}");

        let open = pipeline_description(&PipelinePlan { encoder: Some(EncoderKind::OpenH264), ..plan.clone() });
        assert!(
            open.contains("openh264enc name=enc usage-type=camera rate-control=bitrate bitrate=1500000 gop-size=30")
        );

        let h264 = pipeline_description(&PipelinePlan { input: Input::H264, encoder: None, size: None, ..plan });
        assert!(h264.contains("! video/x-h264,stream-format=byte-stream,framerate=15/1 ! queue"), "{h264}");
        assert!(h264.contains("! identity name=enc ! rtph264pay"));
        assert!(!h264.contains("x264enc") && !h264.contains("videoconvert"), "passed through: {h264}");
    }
}
