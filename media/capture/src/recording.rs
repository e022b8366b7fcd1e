//! Recording (`cameras.recording`): each recorded camera's stream — the
//! packets its viewers get from the one encode, no second encode — goes
//! through a small GStreamer pipeline (depayload, `h264parse` for the size
//! and codec data the muxers need, `splitmuxsink`) into
//! segment files `DATA_DIR/recordings/<camera>/<UTC start>.<mp4|mkv>`; each
//! file starts at a keyframe and ends before the segment length would be
//! exceeded (`splitmuxsink`: a 10 s segment of a stream with a keyframe every
//! 2 s holds 8-10 s).
//!
//! Retention removes files older than `max_age_hours`, then the oldest while
//! all recordings together exceed `max_total_mb`; the newest file of each
//! camera stays (it may be the one being written). MP4 is fragmented (a
//! fragment a second), so a file cut short by a power loss still plays up to
//! its last second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use branchgate_config::{RecordingConfig, Snapshot};
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::rtsp_server::CameraSource;
use crate::{CaptureError, CaptureHub, RtpFeeder, VideoPacket, gst_error, pipeline_error, play};

/// Under the data directory.
pub const RECORDINGS_DIR: &str = "recordings";
/// How often retention looks at the files.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);
/// Before a camera whose recording stopped (the camera failed) is tried again;
/// doubled after each failure up to [`MAX_RESTART_DELAY`].
const RESTART_DELAY: Duration = Duration::from_secs(5);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(120);
/// The GStreamer elements a recording needs past the stream's depayloader and parser, and
/// the Debian package of each.
const ELEMENTS: &[(&str, &str)] = &[("splitmuxsink", "gstreamer1.0-plugins-good")];
/// How long the last file of a stopping recording may take to be finished.
const FINISH_TIMEOUT: Duration = Duration::from_secs(3);

/// The container of recordings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Mkv,
}

impl Container {
    pub fn extension(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Mkv => "mkv",
        }
    }

    pub fn from_extension(extension: &str) -> Option<Container> {
        match extension {
            "mp4" => Some(Container::Mp4),
            "mkv" => Some(Container::Mkv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Container::Mp4 => "video/mp4",
            Container::Mkv => "video/x-matroska",
        }
    }

    fn muxer(self) -> Result<gst::Element, CaptureError> {
        let muxer = match self {
            // One fragment a second: what was written before a power cut plays.
            Container::Mp4 => gst::ElementFactory::make("mp4mux").property("fragment-duration", 1000u32).build(),
            Container::Mkv => gst::ElementFactory::make("matroskamux").build(),
        };
        muxer.map_err(gst_error)
    }
}

/// What the `cameras.recording` section asks for, when recording is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingPolicy {
    /// Recorded cameras; empty: every camera.
    pub cameras: Vec<String>,
    pub segment: Duration,
    pub container: Container,
    pub max_total_bytes: u64,
    pub max_age: Option<Duration>,
}

impl RecordingPolicy {
    /// `None` when recording is off.
    pub fn from_config(config: &RecordingConfig) -> Option<RecordingPolicy> {
        config.enabled.then(|| RecordingPolicy {
            cameras: config.cameras.clone(),
            segment: Duration::from_secs(u64::from(config.segment_seconds)),
            container: Container::from_extension(&config.format).unwrap_or(Container::Mp4),
            max_total_bytes: u64::from(config.max_total_mb) * 1024 * 1024,
            max_age: (config.max_age_hours > 0).then(|| Duration::from_secs(u64::from(config.max_age_hours) * 3600)),
        })
    }

    /// What the recorders themselves follow (which cameras, how files are cut and muxed);
    /// the rest is retention.
    fn recorder_settings(&self) -> (&[String], Duration, Container) {
        (&self.cameras, self.segment, self.container)
    }

    pub fn records(&self, camera: &str) -> bool {
        self.cameras.is_empty() || self.cameras.iter().any(|c| c == camera)
    }
}

/// One recording file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingFile {
    pub camera: String,
    /// The file name: its UTC start (`20261206T031500Z.mp4`).
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A camera id as the box names cameras (`video0`, `sim0`): nothing a path could escape with.
pub fn is_camera_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A name the recorder gives (`YYYYMMDDTHHMMSSZ[-N].mp4|mkv`), and nothing else.
pub fn is_recording_name(name: &str) -> bool {
    let Some((stem, extension)) = name.rsplit_once('.') else { return false };
    let (start, suffix) = stem.split_once('-').unwrap_or((stem, "1"));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    Container::from_extension(extension).is_some()
        && start.len() == 16
        && digits(&start[..8])
        && &start[8..9] == "T"
        && digits(&start[9..15])
        && &start[15..] == "Z"
        && (1..=3).contains(&suffix.len())
        && digits(suffix)
}

/// Where recording `name` of `camera` is, when both are names the recorder gives.
pub fn path_of(root: &Path, camera: &str, name: &str) -> Option<PathBuf> {
    (is_camera_id(camera) && is_recording_name(name)).then(|| root.join(camera).join(name))
}

/// Every recording under `root`, oldest first.
pub fn list(root: &Path) -> Vec<RecordingFile> {
    let mut files = Vec::new();
    let Ok(cameras) = std::fs::read_dir(root) else { return files };
    for camera in cameras.flatten() {
        let Some(camera_id) = camera.file_name().to_str().filter(|c| is_camera_id(c)).map(str::to_string) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(camera.path()) else { continue };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().filter(|n| is_recording_name(n)).map(str::to_string) else {
                continue;
            };
            let Ok(metadata) = entry.metadata() else { continue };
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push(RecordingFile { camera: camera_id.clone(), name, size: metadata.len(), modified });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.camera.cmp(&b.camera)));
    files
}

/// The files retention removes from `files` (oldest first): those older than
/// `max_age`, then the oldest while the rest exceed `max_total_bytes`. The
/// newest file of each camera is kept whatever its size or age.
pub fn expired(
    files: &[RecordingFile],
    now: SystemTime,
    max_total_bytes: u64,
    max_age: Option<Duration>,
) -> Vec<&RecordingFile> {
    let mut newest: HashMap<&str, &str> = HashMap::new();
    for file in files {
        let entry = newest.entry(&file.camera).or_insert(&file.name);
        if file.name.as_str() > *entry {
            *entry = &file.name;
        }
    }
    let removable = |file: &RecordingFile| newest.get(file.camera.as_str()) != Some(&file.name.as_str());
    let mut total: u64 = files.iter().map(|f| f.size).sum();
    let mut gone = Vec::new();
    for file in files.iter().filter(|f| removable(f)) {
        let age = now.duration_since(file.modified).unwrap_or_default();
        if total > max_total_bytes || max_age.is_some_and(|max| age > max) {
            total -= file.size;
            gone.push(file);
        }
    }
    gone
}

/// The name of a segment starting `at`, one not taken in `dir`.
fn segment_path(dir: &Path, at: SystemTime, container: Container) -> PathBuf {
    let seconds = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let start = time::OffsetDateTime::from_unix_timestamp(seconds as i64)
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z")).ok())
        .unwrap_or_else(|| "19700101T000000Z".to_string());
    let extension = container.extension();
    let first = dir.join(format!("{start}.{extension}"));
    if !first.exists() {
        return first;
    }
    (1..1000).map(|n| dir.join(format!("{start}-{n}.{extension}"))).find(|p| !p.exists()).unwrap_or(first)
}

/// One camera's recording pipeline: RTP H.264 in, segment files out.
struct Recorder {
    pipeline: gst::Pipeline,
    feeder: RtpFeeder,
}

impl Recorder {
    fn start(dir: PathBuf, policy: &RecordingPolicy) -> Result<Recorder, CaptureError> {
        std::fs::create_dir_all(&dir).map_err(gst_error)?;
        let downstream = format!("splitmuxsink name=mux max-size-time={}", policy.segment.as_nanos());
        let (pipeline, feeder) = RtpFeeder::launch("recording", ELEMENTS, &downstream)?;
        let mux = pipeline.by_name("mux").ok_or_else(|| CaptureError::Gstreamer("no element mux".into()))?;
        mux.set_property("muxer", policy.container.muxer()?);
        let container = policy.container;
        mux.connect("format-location", false, move |_| {
            let path = segment_path(&dir, SystemTime::now(), container);
            tracing::info!(file = %path.display(), "recording into a new file");
            Some(path.to_string_lossy().to_value())
        });
        play(&pipeline)?;
        Ok(Recorder { pipeline, feeder })
    }

    fn push(&mut self, video: &VideoPacket) -> Result<(), CaptureError> {
        self.feeder.push(video)
    }

    /// The pipeline's error, if it failed (a full disk, a muxer error).
    fn failure(&self) -> Option<String> {
        pipeline_error(&self.pipeline)
    }
}

impl Drop for Recorder {
    /// Ends the file being written properly (end of stream through the muxer), then stops.
    fn drop(&mut self) {
        if self.feeder.end()
            && let Some(bus) = self.pipeline.bus()
        {
            let _ = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(FINISH_TIMEOUT.as_millis() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            );
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Records `camera` per `policy` until `stop` changes (or the sender goes).
async fn record(
    hub: CaptureHub,
    camera: branchgate_hal::camera::CameraInfo,
    dir: PathBuf,
    policy: RecordingPolicy,
    mut stop: watch::Receiver<()>,
) {
    let mut delay = RESTART_DELAY;
    loop {
        let why = match start_recording(&hub, &camera, &dir, &policy).await {
            Ok((mut subscription, mut recorder)) => {
                tracing::info!(camera = %camera.id, "recording");
                delay = RESTART_DELAY;
                let mut check = tokio::time::interval(Duration::from_secs(1));
                let why = loop {
                    tokio::select! {
                        received = subscription.recv() => match received {
                            Ok(video) => if let Err(e) = recorder.push(&video) { break e.to_string() },
                            Err(broadcast::error::RecvError::Lagged(_)) => subscription.request_keyframe(),
                            Err(broadcast::error::RecvError::Closed) => break "the camera stopped".to_string(),
                        },
                        _ = check.tick() => if let Some(failure) = recorder.failure() { break failure },
                        _ = stop.changed() => {
                            // Finishing the last file waits for the muxer.
                            let _ = tokio::task::spawn_blocking(move || drop(recorder)).await;
                            drop(subscription);
                            return;
                        }
                    }
                };
                let _ = tokio::task::spawn_blocking(move || drop(recorder)).await;
                why
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(camera = %camera.id, why, retry_in_seconds = delay.as_secs(), "recording stopped");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

async fn start_recording(
    hub: &CaptureHub,
    camera: &branchgate_hal::camera::CameraInfo,
    dir: &Path,
    policy: &RecordingPolicy,
) -> Result<(crate::Subscription, Recorder), CaptureError> {
    let (hub, camera, dir, policy) = (hub.clone(), camera.clone(), dir.to_path_buf(), policy.clone());
    // Starting pipelines blocks.
    tokio::task::spawn_blocking(move || {
        let subscription = hub.subscribe(&camera)?;
        let recorder = Recorder::start(dir.join(&camera.id), &policy)?;
        Ok((subscription, recorder))
    })
    .await
    .map_err(gst_error)?
}

/// Applies retention to the files under `root`.
fn apply_retention(root: &Path, policy: &RecordingPolicy) {
    let files = list(root);
    for file in expired(&files, SystemTime::now(), policy.max_total_bytes, policy.max_age) {
        let path = root.join(&file.camera).join(&file.name);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(file = %path.display(), "recording removed by retention"),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "recording could not be removed"),
        }
    }
}

/// Records the cameras `cameras.recording` names into `root` until shutdown,
/// following configuration changes (a changed policy restarts the recorders).
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    hub: CaptureHub,
    cameras: CameraSource,
    root: PathBuf,
) -> std::io::Result<()> {
    let mut recorders: Vec<(watch::Sender<()>, JoinHandle<()>)> = Vec::new();
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    let mut policy = None;
    loop {
        let wanted = RecordingPolicy::from_config(&config_rx.borrow_and_update().config.cameras.recording);
        // Retention limits apply to running recorders as they are; anything else restarts them.
        let recorders_change = wanted.as_ref().map(RecordingPolicy::recorder_settings)
            != policy.as_ref().map(RecordingPolicy::recorder_settings);
        if !recorders_change {
            policy = wanted;
        } else {
            stop_all(&mut recorders).await;
            policy = wanted;
            if let Some(policy) = &policy {
                for camera in cameras().into_iter().filter(|c| policy.records(&c.id)) {
                    let (stop_tx, stop_rx) = watch::channel(());
                    let task = tokio::spawn(record(hub.clone(), camera, root.clone(), policy.clone(), stop_rx));
                    recorders.push((stop_tx, task));
                }
            }
        }
        tokio::select! {
            changed = config_rx.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
            _ = retention.tick() => {
                if let Some(policy) = policy.clone() {
                    let root = root.clone();
                    let _ = tokio::task::spawn_blocking(move || apply_retention(&root, &policy)).await;
                }
            }
        }
    }
    stop_all(&mut recorders).await;
    Ok(())
}

async fn stop_all(recorders: &mut Vec<(watch::Sender<()>, JoinHandle<()>)>) {
    for (stop, task) in recorders.drain(..) {
        let _ = stop.send(());
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(camera: &str, name: &str, size: u64, age_s: u64, now: SystemTime) -> RecordingFile {
        RecordingFile { camera: camera.into(), name: name.into(), size, modified: now - Duration::from_secs(age_s) }
    }

    #[test]
    fn only_the_recorders_own_names_are_recording_names() {
        for good in ["20261206T031500Z.mp4", "20261206T031500Z.mkv", "20261206T031500Z-2.mp4"] {
            assert!(is_recording_name(good), "{good}");
        }
        for bad in [
            "../20261206T031500Z.mp4",
            "20261206T031500Z.avi",
            "20261206T031500Z",
            "2026120GT031500Z.mp4",
            "20261206T031500Z-.mp4",
            "20261206T031500Z-1234.mp4",
            "x20261206T031500Z.mp4",
            ".mp4",
        ] {
            assert!(!is_recording_name(bad), "{bad}");
        }
        assert!(path_of(Path::new("/r"), "video0", "20261206T031500Z.mp4").is_some());
        assert!(path_of(Path::new("/r"), "..", "20261206T031500Z.mp4").is_none());
        assert!(path_of(Path::new("/r"), "video0/..", "20261206T031500Z.mp4").is_none());
    }

    #[test]
    fn retention_removes_the_oldest_over_the_size_limit_and_keeps_each_cameras_newest() {
        let now = SystemTime::now();
        let files = vec![
            file("a", "20261201T000000Z.mp4", 40, 400, now),
            file("b", "20261201T000100Z.mp4", 40, 300, now),
            file("a", "20261201T000200Z.mp4", 40, 200, now),
            file("b", "20261201T000300Z.mp4", 40, 100, now),
        ];
        let names = |gone: Vec<&RecordingFile>| gone.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert!(expired(&files, now, 160, None).is_empty(), "within the limit");
        assert_eq!(names(expired(&files, now, 100, None)), ["20261201T000000Z.mp4", "20261201T000100Z.mp4"]);
        // A limit below the newest files keeps them anyway (one may be being written).
        assert_eq!(names(expired(&files, now, 0, None)), ["20261201T000000Z.mp4", "20261201T000100Z.mp4"]);
        // Age: files older than the limit go, whatever the size.
        assert_eq!(names(expired(&files, now, 1000, Some(Duration::from_secs(350)))), ["20261201T000000Z.mp4"]);
    }

    #[test]
    fn segment_names_are_the_utc_start_and_never_overwrite() {
        let dir = std::env::temp_dir().join(format!("branchgate-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_527_800); // 2026-12-06T03:30:00Z
        let first = segment_path(&dir, at, Container::Mp4);
        assert_eq!(first.file_name().and_then(|n| n.to_str()), Some("20261206T033000Z.mp4"));
        std::fs::write(&first, b"x").expect("write");
        let second = segment_path(&dir, at, Container::Mp4);
        assert_eq!(second.file_name().and_then(|n| n.to_str()), Some("20261206T033000Z-1.mp4"));
        assert!(is_recording_name("20261206T033000Z-1.mp4"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_policy_follows_the_configuration() {
        assert_eq!(RecordingPolicy::from_config(&RecordingConfig::default()), None, "off by default");
        let config = RecordingConfig {
            enabled: true,
            cameras: vec!["video0".into()],
            segment_seconds: 60,
            format: "mkv".into(),
            max_total_mb: 100,
            max_age_hours: 2,
        };
        let policy = RecordingPolicy::from_config(&config).expect("on");
        assert_eq!(policy.container, Container::Mkv);
        assert_eq!(policy.max_total_bytes, 100 * 1024 * 1024);
        assert_eq!(policy.max_age, Some(Duration::from_secs(7200)));
        assert!(policy.records("video0") && !policy.records("video1"));
    }
}
