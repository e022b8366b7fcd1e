//! Camera pipelines: one GStreamer encode per camera, fanned out to every viewer.
//!
//! [`CaptureHub::subscribe`] starts a camera's pipeline when its first viewer
//! comes; the [`Subscription`] it returns receives every RTP packet the one
//! encoder makes (a tokio `broadcast`), and the pipeline stops when the last
//! subscription is dropped. Viewers never cause a second encode: the
//! invariant "one encode per camera, however many viewers" lives here, and
//! [`CaptureHub::encoders_running`] makes it observable.
//!
//! The simulated camera is `hal`'s [`simulated_frame`] pushed through
//! `appsrc`, so the snapshot and the video show the same picture. A real
//! camera is `v4l2src` in the format, size and encoder [`v4l2`] chooses.

pub mod recording;
pub mod rtsp;
pub mod rtsp_server;
pub mod snapshot;
pub mod v4l2;
pub mod whep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use branchgate_hal::camera::{CameraInfo, SIM_HEIGHT, SIM_WIDTH, simulated_frame};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::broadcast;

/// Where the kernel lists V4L2 devices.
pub const VIDEO4LINUX: &str = "/sys/class/video4linux";

/// The box's cameras now: its V4L2 devices, or the simulated one when it has none.
pub fn cameras() -> Vec<CameraInfo> {
    branchgate_hal::camera::enumerate(std::path::Path::new(VIDEO4LINUX))
}

/// Frame rate of the simulated camera.
pub const SIM_FPS: u32 = 15;
/// RTP payload type inside the pipeline; each viewer's leg renumbers it to
/// what that viewer's offer chose.
pub(crate) const PIPELINE_PAYLOAD_TYPE: u8 = 96;
/// Packets buffered per viewer before a slow one starts losing them (about
/// two seconds of 640x360 video); a viewer that lags asks for a keyframe.
const FANOUT_DEPTH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("GStreamer: {0}")]
    Gstreamer(String),
    #[error("camera {0} has no device node")]
    NoDevice(String),
    #[error("camera {camera}: {source}")]
    Device {
        camera: String,
        #[source]
        source: branchgate_hal::camera::CameraError,
    },
    #[error("camera {camera} offers no format we can stream (H.264, MJPEG or raw YUV/RGB); it has {formats}")]
    NoUsableFormat { camera: String, formats: String },
    #[error("no H.264 encoder element on this machine (v4l2h264enc, x264enc or openh264enc)")]
    NoEncoder,
    #[error("camera {camera} gave no picture: {why}")]
    NoPicture { camera: String, why: String },
}

/// How a real camera is captured and encoded (the simulated one is fixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraSettings {
    /// The size wished for; the device's nearest is taken ([`v4l2::choose_size`]).
    pub width: u32,
    pub height: u32,
    /// Frames per second; `None` lets the device choose.
    pub fps: Option<u32>,
    pub bitrate_kbps: u32,
    /// Tried first when the machine has it; otherwise the usual order.
    pub encoder: Option<v4l2::EncoderKind>,
}

impl CameraSettings {
    /// A camera's entry of the `cameras` configuration section (already validated).
    pub fn from_config(device: &branchgate_config::CameraDevice) -> CameraSettings {
        CameraSettings {
            width: device.width,
            height: device.height,
            fps: (device.fps > 0).then_some(device.fps),
            bitrate_kbps: device.bitrate_kbps,
            encoder: v4l2::EncoderKind::ALL.into_iter().find(|k| k.element() == device.encoder),
        }
    }
}

impl Default for CameraSettings {
    fn default() -> Self {
        CameraSettings { width: 1280, height: 720, fps: None, bitrate_kbps: 1500, encoder: None }
    }
}

pub(crate) fn gst_error(e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Gstreamer(e.to_string())
}

/// One RTP packet of a camera's encoded stream (H.264, RFC 6184, 90 kHz clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoPacket {
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Bytes,
}

/// The box's camera pipelines, shared by every viewer.
#[derive(Clone, Debug, Default)]
pub struct CaptureHub {
    encoders: Arc<Mutex<HashMap<String, Encoder>>>,
    settings: Arc<Mutex<HashMap<String, CameraSettings>>>,
}

impl CaptureHub {
    /// Joins `camera`'s stream, starting its pipeline if nobody watches yet.
    pub fn subscribe(&self, camera: &CameraInfo) -> Result<Subscription, CaptureError> {
        let mut encoders = self.lock();
        let encoder = match encoders.get_mut(&camera.id) {
            Some(encoder) => encoder,
            None => {
                let settings = self.settings(&camera.id);
                let (packets, _) = broadcast::channel(FANOUT_DEPTH);
                let keyframes = KeyframeRequester::default();
                encoders.entry(camera.id.clone()).or_insert(Encoder::start(camera, &settings, packets, keyframes)?)
            }
        };
        encoder.viewers += 1;
        // A new viewer needs a keyframe to start decoding; asking now saves
        // up to a keyframe interval.
        encoder.keyframes.request();
        Ok(Subscription {
            hub: self.clone(),
            camera: camera.id.clone(),
            packets: encoder.packets.subscribe(),
            keyframes: encoder.keyframes.clone(),
        })
    }

    /// Settings for `camera`'s pipeline. A running pipeline of a real camera
    /// whose settings change is restarted with them; its viewers stay (the
    /// same fan-out, a keyframe asked for at once). Blocks while the old
    /// pipeline stops and the new one starts.
    pub fn configure(&self, camera: &str, settings: CameraSettings) {
        let previous =
            self.settings.lock().unwrap_or_else(|p| p.into_inner()).insert(camera.to_string(), settings.clone());
        if previous.as_ref() == Some(&settings) || (previous.is_none() && settings == CameraSettings::default()) {
            return;
        }
        let mut encoders = self.lock();
        let Some(running) = encoders.remove(camera) else { return };
        if running.camera.simulated {
            encoders.insert(camera.to_string(), running);
            return;
        }
        let (info, packets, keyframes, viewers) =
            (running.camera.clone(), running.packets.clone(), running.keyframes.clone(), running.viewers);
        // The device is free only once the old pipeline has stopped.
        drop(running);
        let restarted = Encoder::start(&info, &settings, packets.clone(), keyframes.clone()).or_else(|e| {
            tracing::warn!(camera, error = %e, "the new camera settings do not work; keeping the old ones");
            Encoder::start(&info, &previous.unwrap_or_default(), packets, keyframes)
        });
        match restarted {
            Ok(mut encoder) => {
                encoder.viewers = viewers;
                encoder.keyframes.request();
                encoders.insert(camera.to_string(), encoder);
                tracing::info!(camera, "camera pipeline restarted with new settings");
            }
            // Viewers see the stream end.
            Err(e) => tracing::warn!(camera, error = %e, "camera pipeline could not be restarted"),
        }
    }

    /// Applies the `cameras` configuration section: every listed camera's
    /// settings, the defaults for the others that were configured before.
    pub fn apply_config(&self, config: &branchgate_config::CamerasConfig) {
        let listed: HashMap<String, CameraSettings> =
            config.devices.iter().map(|d| (d.id.clone(), CameraSettings::from_config(d))).collect();
        let before: Vec<String> = self.settings.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for camera in before.into_iter().filter(|c| !listed.contains_key(c)) {
            self.configure(&camera, CameraSettings::default());
        }
        for (camera, settings) in listed {
            self.configure(&camera, settings);
        }
    }

    /// The settings `camera`'s pipeline starts with.
    pub fn settings(&self, camera: &str) -> CameraSettings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).get(camera).cloned().unwrap_or_default()
    }

    /// Pipelines running now (one per watched camera).
    pub fn encoders_running(&self) -> usize {
        self.lock().len()
    }

    /// Whether `camera`'s pipeline runs, and for how many viewers.
    pub fn viewers(&self, camera: &str) -> usize {
        self.lock().get(camera).map_or(0, |e| e.viewers)
    }

    fn release(&self, camera: &str) {
        let stopped = {
            let mut encoders = self.lock();
            let Some(encoder) = encoders.get_mut(camera) else { return };
            encoder.viewers = encoder.viewers.saturating_sub(1);
            if encoder.viewers > 0 {
                return;
            }
            encoders.remove(camera)
        };
        // Stopped outside the lock: setting a pipeline to NULL waits for its threads.
        drop(stopped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Encoder>> {
        // A panic elsewhere must not take the cameras down with it.
        self.encoders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One viewer's share of a camera's stream; dropping it leaves.
#[derive(Debug)]
pub struct Subscription {
    hub: CaptureHub,
    camera: String,
    packets: broadcast::Receiver<VideoPacket>,
    keyframes: KeyframeRequester,
}

impl Subscription {
    /// The next packet. `Err(Lagged)` means this viewer fell behind and lost
    /// packets (ask for a keyframe); `Err(Closed)` that the pipeline stopped.
    pub async fn recv(&mut self) -> Result<VideoPacket, broadcast::error::RecvError> {
        self.packets.recv().await
    }

    /// Asks the shared encoder for a keyframe (at most every 500 ms, so a
    /// viewer with bad loss cannot turn everyone's stream into keyframes).
    pub fn request_keyframe(&self) {
        self.keyframes.request();
    }

    /// The payload type of the packets (what the pipeline's payloader uses).
    pub fn payload_type(&self) -> u8 {
        PIPELINE_PAYLOAD_TYPE
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.release(&self.camera);
    }
}

/// Sends GStreamer's force-key-unit event to the encoder, rate-limited.
/// The element it sends to is replaced when the pipeline restarts.
#[derive(Clone, Debug, Default)]
struct KeyframeRequester {
    encoder: Arc<Mutex<Option<gst::Element>>>,
    last: Arc<Mutex<Option<Instant>>>,
}

impl KeyframeRequester {
    fn set_encoder(&self, encoder: gst::Element) {
        *self.encoder.lock().unwrap_or_else(|p| p.into_inner()) = Some(encoder);
    }

    fn request(&self) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|l| now.duration_since(l) < Duration::from_millis(500)) {
                return;
            }
            *last = Some(now);
        }
        // The upstream GstForceKeyUnit event (gst_video_event_new_upstream_force_key_unit)
        // built by hand, to avoid a dependency on gstreamer-video for one event.
        let structure = gst::Structure::builder("GstForceKeyUnit")
            .field("running-time", u64::MAX)
            .field("all-headers", true)
            .field("count", 0u32)
            .build();
        let encoder = self.encoder.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(pad) = encoder.and_then(|e| e.static_pad("src"))
            && !pad.send_event(gst::event::CustomUpstream::new(structure))
        {
            tracing::debug!("the encoder did not take the keyframe request");
        }
    }
}

/// A running pipeline and its viewers.
#[derive(Debug)]
struct Encoder {
    camera: CameraInfo,
    pipeline: gst::Pipeline,
    packets: broadcast::Sender<VideoPacket>,
    keyframes: KeyframeRequester,
    viewers: usize,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<()>>,
}

/// The pipeline of the simulated camera: RGB frames in, RTP H.264 out.
/// x264 with zero latency (no B-frames, no lookahead), a keyframe at least
/// every 2 s, constrained baseline (what every browser decodes; answered as
/// `profile-level-id=42e01f`), SPS/PPS before every keyframe so a viewer
/// can join at any keyframe.
fn simulated_pipeline_description() -> String {
    format!(
        "appsrc name=src is-live=true format=time do-timestamp=true \
           caps=video/x-raw,format=RGB,width={SIM_WIDTH},height={SIM_HEIGHT},framerate={SIM_FPS}/1 \
         ! videoconvert ! video/x-raw,format=I420 \
         ! x264enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=1500 \
         ! video/x-h264,profile=constrained-baseline \
         ! rtph264pay pt={PIPELINE_PAYLOAD_TYPE} mtu=1200 config-interval=-1 aggregate-mode=zero-latency \
         ! appsink name=sink sync=false max-buffers=256 drop=true"
    )
}

/// A real camera's pipeline plan: the device's formats read through `hal`,
/// the encoder probed in GStreamer's registry.
fn plan(camera: &CameraInfo, settings: &CameraSettings) -> Result<v4l2::PipelinePlan, CaptureError> {
    let device = camera.device.clone().ok_or_else(|| CaptureError::NoDevice(camera.id.clone()))?;
    let details = branchgate_hal::v4l2::details(std::path::Path::new(&device))
        .map_err(|source| CaptureError::Device { camera: camera.id.clone(), source })?;
    let (input, format) = v4l2::choose_input(&details.formats).ok_or_else(|| CaptureError::NoUsableFormat {
        camera: camera.id.clone(),
        formats: details.formats.iter().map(|f| f.fourcc.trim()).collect::<Vec<_>>().join(", "),
    })?;
    let encoder = if input == v4l2::Input::H264 {
        None
    } else {
        Some(
            v4l2::choose_encoder(settings.encoder, |name| gst::ElementFactory::find(name).is_some())
                .ok_or(CaptureError::NoEncoder)?,
        )
    };
    Ok(v4l2::PipelinePlan {
        device,
        size: v4l2::choose_size(format, (settings.width, settings.height)),
        input,
        fps: settings.fps,
        encoder,
        bitrate_kbps: settings.bitrate_kbps,
    })
}

impl Encoder {
    /// Starts `camera`'s pipeline into `packets`, its encoder taking `keyframes`' requests.
    fn start(
        camera: &CameraInfo,
        settings: &CameraSettings,
        packets: broadcast::Sender<VideoPacket>,
        keyframes: KeyframeRequester,
    ) -> Result<Encoder, CaptureError> {
        gst::init().map_err(gst_error)?;
        let description = if camera.simulated {
            simulated_pipeline_description()
        } else {
            let plan = plan(camera, settings)?;
            tracing::info!(camera = %camera.id, input = ?plan.input, size = ?plan.size, encoder = ?plan.encoder, "camera pipeline planned");
            v4l2::pipeline_description(&plan)
        };
        let pipeline = launch(&description)?;
        let element = |name: &str| {
            pipeline.by_name(name).ok_or_else(|| CaptureError::Gstreamer(format!("no element {name} in the pipeline")))
        };
        let sink = element("sink")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| CaptureError::Gstreamer("sink is not an appsink".into()))?;
        keyframes.set_encoder(element("enc")?);
        let fanout = packets.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(packet) = sample.buffer().and_then(|b| b.map_readable().ok()).and_then(|m| parse(&m)) {
                        // No receivers (the last viewer is leaving) is not an error.
                        let _ = fanout.send(packet);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let source = if camera.simulated {
            Some(
                element("src")?
                    .downcast::<gst_app::AppSrc>()
                    .map_err(|_| CaptureError::Gstreamer("src is not an appsrc".into()))?,
            )
        } else {
            None
        };
        play(&pipeline)?;
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let stop = stop.clone();
            let bus = pipeline.bus();
            let camera = camera.id.clone();
            std::thread::Builder::new()
                .name(format!("capture-{camera}"))
                .spawn(move || match source {
                    Some(source) => feed_simulated(&source, bus.as_ref(), &stop, &camera),
                    None => watch_bus(bus.as_ref(), &stop, &camera),
                })
                .map_err(gst_error)?
        };
        tracing::info!(camera = %camera.id, "camera pipeline started");
        Ok(Encoder { camera: camera.clone(), pipeline, packets, keyframes, viewers: 0, stop, feeder: Some(feeder) })
    }
}

/// A real camera's pipeline runs by itself; this reports its end (an
/// unplugged camera, a driver error) until told to stop.
fn watch_bus(bus: Option<&gst::Bus>, stop: &AtomicBool, camera: &str) {
    let Some(bus) = bus else { return };
    while !stop.load(Ordering::Relaxed) {
        if let Some(message) = bus
            .timed_pop_filtered(gst::ClockTime::from_mseconds(200), &[gst::MessageType::Error, gst::MessageType::Eos])
        {
            tracing::warn!(camera, message = ?message, "camera pipeline failed");
            return;
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        tracing::info!("camera pipeline stopped");
    }
}

/// Pushes the simulated picture at [`SIM_FPS`] until told to stop, watching
/// the bus for errors (which end the stream; viewers see `Closed`).
fn feed_simulated(source: &gst_app::AppSrc, bus: Option<&gst::Bus>, stop: &AtomicBool, camera: &str) {
    let interval = Duration::from_secs(1) / SIM_FPS;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let frame = gst::Buffer::from_mut_slice(simulated_frame(unix_ms));
        if let Err(e) = source.push_buffer(frame) {
            tracing::warn!(camera, error = ?e, "camera pipeline refused a frame");
            return;
        }
        if let Some(message) = bus.and_then(|b| b.pop_filtered(&[gst::MessageType::Error])) {
            tracing::warn!(camera, message = ?message, "camera pipeline failed");
            return;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind (a slow machine): drop the backlog rather than burst.
            next = now;
        }
    }
}

/// Keeps `hub` on the `cameras` configuration section until shutdown: each
/// change is applied (a running camera whose settings change restarts).
pub async fn follow_config(
    mut config_rx: tokio::sync::watch::Receiver<Arc<branchgate_config::Snapshot>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    hub: CaptureHub,
) -> std::io::Result<()> {
    loop {
        let cameras = config_rx.borrow_and_update().config.cameras.clone();
        let applier = hub.clone();
        // Stopping and starting pipelines blocks.
        tokio::task::spawn_blocking(move || applier.apply_config(&cameras)).await.map_err(std::io::Error::other)?;
        tokio::select! {
            changed = config_rx.changed() => if changed.is_err() { return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// What [`encode_check`] saw of a camera's encoded stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodeCheck {
    /// The input format chosen (`H264`, `MJPEG`, a raw GStreamer format, or `simulated`).
    pub input: String,
    /// The encoder element, `None` when H.264 is passed through.
    pub encoder: Option<&'static str>,
    pub size: Option<(u32, u32)>,
    pub packets: u64,
    pub bytes: u64,
    /// Access units (RTP marker bits).
    pub frames: u64,
    /// IDR pictures started.
    pub keyframes: u64,
    /// Milliseconds from the start until the first packet.
    pub first_packet_ms: Option<u64>,
    /// After the restart with other settings half-way (when asked): the size
    /// planned, and the frames and keyframes the same subscription received.
    pub restarted_size: Option<(u32, u32)>,
    pub frames_after_restart: u64,
    pub keyframes_after_restart: u64,
}

/// Runs `camera`'s pipeline as one viewer for `duration` and counts what
/// comes out: the proof that frames are captured AND encoded (the VM test
/// runs it against the kernel's vivid driver). With `then`, the camera is
/// reconfigured half-way, as a change of the `cameras` section does: the
/// subscription must go on receiving from the restarted pipeline.
pub fn encode_check(
    camera: &CameraInfo,
    settings: CameraSettings,
    duration: Duration,
    then: Option<CameraSettings>,
) -> Result<EncodeCheck, CaptureError> {
    gst::init().map_err(gst_error)?;
    let mut check = if camera.simulated {
        EncodeCheck {
            input: "simulated".into(),
            encoder: Some("x264enc"),
            size: Some((SIM_WIDTH, SIM_HEIGHT)),
            ..EncodeCheck::default()
        }
    } else {
        let plan = plan(camera, &settings)?;
        let input = match plan.input {
            v4l2::Input::H264 => "H264".to_string(),
            v4l2::Input::Mjpeg => "MJPEG".to_string(),
            v4l2::Input::Raw(name) => name.to_string(),
        };
        EncodeCheck {
            input,
            encoder: plan.encoder.map(v4l2::EncoderKind::element),
            size: plan.size,
            ..EncodeCheck::default()
        }
    };
    let hub = CaptureHub::default();
    hub.configure(&camera.id, settings);
    let mut subscription = hub.subscribe(camera)?;
    let started = Instant::now();
    let mut then = then;
    let mut restarted = false;
    while started.elapsed() < duration {
        if started.elapsed() >= duration / 2
            && let Some(next) = then.take()
        {
            if !camera.simulated {
                check.restarted_size = plan(camera, &next)?.size;
            }
            hub.configure(&camera.id, next);
            restarted = true;
        }
        match subscription.packets.try_recv() {
            Ok(packet) if restarted => {
                check.frames_after_restart += u64::from(packet.marker);
                check.keyframes_after_restart += u64::from(starts_idr(&packet.payload));
            }
            Ok(packet) => {
                check.first_packet_ms.get_or_insert(started.elapsed().as_millis() as u64);
                check.packets += 1;
                check.bytes += packet.payload.len() as u64;
                check.frames += u64::from(packet.marker);
                check.keyframes += u64::from(starts_idr(&packet.payload));
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Lagged(_)) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(broadcast::error::TryRecvError::Closed) => break,
        }
    }
    Ok(check)
}

/// A pipeline parsed from its gst-launch `description`.
fn launch(description: &str) -> Result<gst::Pipeline, CaptureError> {
    gst::parse::launch(description)
        .map_err(gst_error)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| CaptureError::Gstreamer("not a pipeline".into()))
}

/// Starts `pipeline`; one that cannot start is set back to NULL (its threads and devices freed).
fn play(pipeline: &gst::Pipeline) -> Result<(), CaptureError> {
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let _ = pipeline.set_state(gst::State::Null);
        return Err(gst_error(e));
    }
    Ok(())
}

/// The error `pipeline` posted, if it failed (its text: a full disk, no decoder...).
pub(crate) fn pipeline_error(pipeline: &gst::Pipeline) -> Option<String> {
    let message = pipeline.bus()?.pop_filtered(&[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(error) => Some(error.error().to_string()),
        _ => None,
    }
}

/// Pushes a camera's packets, as RTP, into the `appsrc` of a pipeline that
/// reads the stream (a recording, a snapshot's decoder). Nothing goes in
/// before the first SPS or IDR: what comes out must start decodable.
pub(crate) struct RtpFeeder {
    source: gst_app::AppSrc,
    packet: Vec<u8>,
    started: bool,
}

impl RtpFeeder {
    /// A playing pipeline that depayloads and parses the camera's H.264 into `downstream`
    /// (gst-launch text), and its feeder. `feature` and `elements` (name, Debian package)
    /// say what `downstream` needs, so a machine without them gets an error naming them.
    pub(crate) fn launch(
        feature: &str,
        elements: &[(&str, &str)],
        downstream: &str,
    ) -> Result<(gst::Pipeline, RtpFeeder), CaptureError> {
        const READER: &[(&str, &str)] =
            &[("rtph264depay", "gstreamer1.0-plugins-good"), ("h264parse", "gstreamer1.0-plugins-bad")];
        gst::init().map_err(gst_error)?;
        let missing = READER.iter().chain(elements).find(|(e, _)| gst::ElementFactory::find(e).is_none());
        if let Some((element, package)) = missing {
            return Err(CaptureError::Gstreamer(format!("{feature} needs the {element} element ({package})")));
        }
        let pipeline = launch(&format!(
            "appsrc name=src is-live=true format=time do-timestamp=true \
               caps=application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload={PIPELINE_PAYLOAD_TYPE} \
             ! rtph264depay ! h264parse ! {downstream}"
        ))?;
        let source = pipeline
            .by_name("src")
            .ok_or_else(|| CaptureError::Gstreamer("no element src in the pipeline".into()))?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| CaptureError::Gstreamer("src is not an appsrc".into()))?;
        Ok((pipeline, RtpFeeder { source, packet: Vec::with_capacity(1500), started: false }))
    }

    pub(crate) fn push(&mut self, video: &VideoPacket) -> Result<(), CaptureError> {
        const SPS: u8 = 7;
        const IDR: u8 = 5;
        self.started |= nal_starts(&video.payload, SPS) || nal_starts(&video.payload, IDR);
        if !self.started {
            return Ok(());
        }
        let header = branchgate_rtp::RtpHeader {
            payload_type: PIPELINE_PAYLOAD_TYPE,
            marker: video.marker,
            sequence: video.sequence,
            timestamp: video.timestamp,
            ssrc: 1,
        };
        branchgate_rtp::build_rtp(&header, &video.payload, &mut self.packet);
        self.source.push_buffer(gst::Buffer::from_slice(self.packet.clone())).map(|_| ()).map_err(gst_error)
    }

    /// No more packets: the pipeline drains and posts EOS.
    pub(crate) fn end(&self) -> bool {
        self.source.end_of_stream().is_ok()
    }
}

/// Whether an RTP H.264 payload (RFC 6184) starts an IDR picture.
fn starts_idr(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    nal_starts(payload, IDR)
}

/// Whether an RTP H.264 payload (RFC 6184) starts a NAL unit of type `nal`:
/// a single one, a STAP-A holding one, or the first fragment of one.
pub(crate) fn nal_starts(payload: &[u8], nal: u8) -> bool {
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    match payload.first().map(|b| b & 0x1f) {
        Some(single) if single == nal => true,
        Some(STAP_A) => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if rest.get(2).is_some_and(|n| n & 0x1f == nal) {
                    return true;
                }
                rest = rest.get(2 + size..).unwrap_or_default();
            }
            false
        }
        Some(FU_A) => payload.get(1).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == nal),
        _ => false,
    }
}

/// The RTP fields a viewer's leg needs from one payloader output buffer.
fn parse(packet: &[u8]) -> Option<VideoPacket> {
    let header = branchgate_rtp::parse_rtp(packet).ok()?;
    let payload = branchgate_rtp::rtp_payload(packet).ok()?;
    Some(VideoPacket {
        sequence: header.sequence,
        timestamp: header.timestamp,
        marker: header.marker,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> CameraInfo {
        branchgate_hal::camera::enumerate(std::path::Path::new("/nonexistent")).remove(0)
    }

    #[test]
    fn the_cameras_section_becomes_settings_and_leaves_the_simulated_camera_alone() {
        let hub = CaptureHub::default();
        let mut config = branchgate_config::CamerasConfig::default();
        config.devices.push(branchgate_config::CameraDevice {
            id: "video0".into(),
            width: 640,
            height: 480,
            fps: 0,
            bitrate_kbps: 800,
            encoder: "openh264enc".into(),
        });
        config.devices.push(branchgate_config::CameraDevice { id: "sim0".into(), fps: 25, ..Default::default() });
        let viewer = hub.subscribe(&sim()).expect("pipeline");
        hub.apply_config(&config);
        assert_eq!(
            hub.settings("video0"),
            CameraSettings {
                width: 640,
                height: 480,
                fps: None,
                bitrate_kbps: 800,
                encoder: Some(v4l2::EncoderKind::OpenH264)
            }
        );
        assert_eq!(hub.settings("sim0").fps, Some(25));
        assert_eq!((hub.encoders_running(), hub.viewers("sim0")), (1, 1), "the simulated camera keeps running");
        hub.apply_config(&branchgate_config::CamerasConfig::default());
        assert_eq!(hub.settings("video0"), CameraSettings::default(), "unlisted: back to the defaults");
        drop(viewer);
        assert_eq!(hub.encoders_running(), 0);
    }

    #[test]
    fn idr_starts_are_found() {
        assert!(starts_idr(&[0x65, 1]));
        assert!(!starts_idr(&[0x41, 1]), "P slice");
        assert!(starts_idr(&[0x7c, 0x85, 1]), "FU-A start of an IDR");
        assert!(!starts_idr(&[0x7c, 0x45, 1]), "FU-A end");
        assert!(starts_idr(&[0x78, 0, 2, 0x67, 1, 0, 1, 0x65]), "STAP-A with SPS then IDR");
        assert!(!starts_idr(&[0x78, 0, 2, 0x67, 1, 0, 9]), "STAP-A cut short");
        assert!(!starts_idr(&[]));
    }

    #[test]
    fn the_simulated_camera_passes_the_encode_check() {
        let check = encode_check(&sim(), CameraSettings::default(), Duration::from_millis(1500), None).expect("check");
        assert!(check.frames >= 5 && check.keyframes >= 1, "{check:?}");
    }

    #[test]
    fn parses_payloader_output() {
        let mut out = Vec::new();
        let header =
            branchgate_rtp::RtpHeader { payload_type: 96, marker: true, sequence: 7, timestamp: 9000, ssrc: 1 };
        branchgate_rtp::build_rtp(&header, &[0x65, 1, 2], &mut out);
        let packet = parse(&out).expect("rtp");
        assert_eq!((packet.sequence, packet.timestamp, packet.marker), (7, 9000, true));
        assert_eq!(&packet.payload[..], &[0x65, 1, 2]);
        assert!(parse(&[1, 2]).is_none());
    }

    #[test]
    fn a_real_camera_that_cannot_be_opened_starts_nothing() {
        let hub = CaptureHub::default();
        let real = CameraInfo { simulated: false, id: "video0".into(), ..sim() };
        assert!(matches!(hub.subscribe(&real), Err(CaptureError::NoDevice(_))));
        let gone = CameraInfo { device: Some("/nonexistent/video9".into()), ..real };
        assert!(matches!(hub.subscribe(&gone), Err(CaptureError::Device { .. })));
        assert_eq!(hub.encoders_running(), 0);
    }

    /// Needs GStreamer's base, good and ugly plugins (x264): `./x` installs them.
    #[tokio::test]
    async fn one_encoder_for_many_viewers_and_none_after_the_last() {
        let hub = CaptureHub::default();
        let camera = sim();
        let mut first = hub.subscribe(&camera).expect("pipeline");
        let mut second = hub.subscribe(&camera).expect("same pipeline");
        assert_eq!(hub.encoders_running(), 1);
        assert_eq!(hub.viewers("sim0"), 2);
        let deadline = Duration::from_secs(10);
        let a = tokio::time::timeout(deadline, first.recv()).await.expect("packets come").expect("packet");
        let b = tokio::time::timeout(deadline, second.recv()).await.expect("packets come").expect("packet");
        assert!(!a.payload.is_empty() && !b.payload.is_empty());
        // The stream starts with SPS and PPS (aggregated in a STAP-A, type 24,
        // whose first unit is the SPS, type 7): a decoder can start at once.
        assert_eq!(a.payload[0] & 0x1f, 24, "STAP-A first");
        assert_eq!(a.payload.get(3).map(|n| n & 0x1f), Some(7), "SPS inside");
        drop(first);
        assert_eq!(hub.encoders_running(), 1);
        drop(second);
        assert_eq!(hub.encoders_running(), 0);
    }
}
