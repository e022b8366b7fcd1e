//! Eclipse hawkBit's Direct Device Integration API (DDI v1), the protocol part: the documents
//! the server sends (poll answer, deployment, cancel request), what the box does about them,
//! and the feedback it sends back. No IO: [`crate::hawkbit`] is the HTTP driver.
//!
//! The flow: `GET {base}/{tenant}/controller/v1/{controller}` answers with links — a
//! `deploymentBase` when a rollout has an action for this box, `cancelAction` when one is
//! withdrawn, `configData` when the server wants the box's attributes — and how long to sleep
//! before the next poll. Feedback (`POST …/deploymentBase/{action}/feedback`) keeps the action
//! open until the box reports it `closed` with `success` or `failure`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

/// Why a server's document cannot be acted on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DdiError {
    #[error("the server's answer is not a DDI document: {0}")]
    Document(String),
    #[error("the deployment holds no firmware bundle (no artifact named *.raucb)")]
    NoBundle,
    #[error("the deployment holds {0} bundles (*.raucb); the box installs one at a time")]
    SeveralBundles(usize),
    #[error("the bundle {0} has no download link")]
    NoLink(String),
}

/// An id that hawkBit sends as a string (`"8"`) or, in some versions, as a number.
fn id_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(text) => Ok(text),
        Value::Number(number) => Ok(number.to_string()),
        other => Err(serde::de::Error::custom(format!("an id, not {other}"))),
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub href: String,
}

/// The answer to a poll.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ControllerBase {
    #[serde(default)]
    pub config: Option<ControllerConfig>,
    #[serde(rename = "_links", default)]
    pub links: ControllerLinks,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ControllerConfig {
    #[serde(default)]
    pub polling: Option<Polling>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Polling {
    /// `HH:MM:SS`.
    #[serde(default)]
    pub sleep: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ControllerLinks {
    #[serde(rename = "deploymentBase", default)]
    pub deployment_base: Option<Link>,
    #[serde(rename = "cancelAction", default)]
    pub cancel_action: Option<Link>,
    #[serde(rename = "configData", default)]
    pub config_data: Option<Link>,
}

/// An action: install these chunks.
#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentBase {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    pub deployment: Deployment,
}

/// How the server wants a part of the action handled.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    /// Not now (outside the maintenance window, or a download-only action).
    Skip,
    #[default]
    Attempt,
    Forced,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Deployment {
    #[serde(default)]
    pub download: Handling,
    #[serde(default)]
    pub update: Handling,
    /// `available` or `unavailable` when the rollout has a maintenance window.
    #[serde(rename = "maintenanceWindow", default)]
    pub maintenance_window: Option<String>,
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub part: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    pub filename: String,
    #[serde(default)]
    pub hashes: Hashes,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(rename = "_links", default)]
    pub links: ArtifactLinks,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Hashes {
    #[serde(default)]
    pub sha1: Option<String>,
    #[serde(default)]
    pub md5: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArtifactLinks {
    /// HTTPS.
    #[serde(default)]
    pub download: Option<Link>,
    #[serde(rename = "download-http", default)]
    pub download_http: Option<Link>,
}

/// A withdrawn action.
#[derive(Debug, Clone, Deserialize)]
pub struct CancelAction {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    #[serde(rename = "cancelAction")]
    pub cancel_action: CancelInfo,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CancelInfo {
    /// The action to stop.
    #[serde(rename = "stopId", deserialize_with = "id_text")]
    pub stop_id: String,
}

pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DdiError> {
    serde_json::from_slice(bytes).map_err(|e| DdiError::Document(e.to_string()))
}

/// `{base}/{tenant}/controller/v1/{controller}`: every DDI resource hangs off it.
pub fn controller_url(server: &str, tenant: &str, controller_id: &str) -> String {
    format!("{}/{tenant}/controller/v1/{controller_id}", server.trim_end_matches('/'))
}

/// `HH:MM:SS` (hawkBit's `polling.sleep`) as a duration.
pub fn parse_sleep(text: &str) -> Option<Duration> {
    let mut parts = text.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let number = |t: &str| t.parse::<u64>().ok();
    let (h, m, s) = (number(h)?, number(m)?, number(s)?);
    if m >= 60 || s >= 60 {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60 + s))
}

/// The shortest and longest sleep between polls whatever the server says: a server
/// configured at 0 s must not make the box hammer it, nor one at a year silence it.
pub const MIN_POLL: Duration = Duration::from_secs(1);
pub const MAX_POLL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long to wait before the next poll: the server's word, else the configured interval.
pub fn poll_interval(base: &ControllerBase, configured: Duration) -> Duration {
    let server = base.config.as_ref().and_then(|c| c.polling.as_ref()).and_then(|p| p.sleep.as_deref());
    server.and_then(parse_sleep).unwrap_or(configured).clamp(MIN_POLL, MAX_POLL)
}

/// What a poll asks of the box, most urgent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Withdraw an action (fetch the link for which one).
    Cancel(String),
    /// Install (fetch the link for the deployment).
    Deploy(String),
    Idle,
}

pub fn next(base: &ControllerBase) -> Next {
    if let Some(link) = &base.links.cancel_action {
        return Next::Cancel(link.href.clone());
    }
    if let Some(link) = &base.links.deployment_base {
        return Next::Deploy(link.href.clone());
    }
    Next::Idle
}

/// A deployment the box can act on: the one bundle, where to get it, and whether to install
/// it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action_id: String,
    /// The chunk's version as the server names it (the bundle's manifest is what counts).
    pub version: String,
    pub filename: String,
    pub url: String,
    pub size: Option<u64>,
    pub hashes: Hashes,
    /// False outside the maintenance window or for a download-only action: come back later.
    pub install_now: bool,
}

pub fn plan(deployment: &DeploymentBase) -> Result<Plan, DdiError> {
    let bundles: Vec<(&Chunk, &Artifact)> = deployment
        .deployment
        .chunks
        .iter()
        .flat_map(|chunk| chunk.artifacts.iter().map(move |artifact| (chunk, artifact)))
        .filter(|(_, artifact)| artifact.filename.ends_with(".raucb"))
        .collect();
    let (chunk, artifact) = match bundles.as_slice() {
        [] => return Err(DdiError::NoBundle),
        [one] => *one,
        several => return Err(DdiError::SeveralBundles(several.len())),
    };
    // HTTPS first; plain HTTP only when the server offers nothing else (the bundle's
    // signature, not the transport, is what makes it trusted).
    let url = artifact
        .links
        .download
        .as_ref()
        .or(artifact.links.download_http.as_ref())
        .map(|link| link.href.clone())
        .ok_or_else(|| DdiError::NoLink(artifact.filename.clone()))?;
    let d = &deployment.deployment;
    let install_now = d.download != Handling::Skip
        && d.update != Handling::Skip
        && d.maintenance_window.as_deref() != Some("unavailable");
    Ok(Plan {
        action_id: deployment.id.clone(),
        version: chunk.version.clone(),
        filename: artifact.filename.clone(),
        url,
        size: artifact.size,
        hashes: artifact.hashes.clone(),
        install_now,
    })
}

/// `status.execution` of a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Proceeding,
    Closed,
    Canceled,
    Rejected,
}

/// `status.result.finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    Success,
    Failure,
    None,
}

/// One feedback message about an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub execution: Execution,
    pub finished: Finished,
    /// Steps done of all steps.
    pub progress: Option<(u32, u32)>,
    pub details: Vec<String>,
}

impl Feedback {
    pub fn proceeding(detail: impl Into<String>) -> Feedback {
        Feedback {
            execution: Execution::Proceeding,
            finished: Finished::None,
            progress: None,
            details: vec![detail.into()],
        }
    }

    pub fn progress(done: u32, of: u32, detail: impl Into<String>) -> Feedback {
        Feedback { progress: Some((done, of)), ..Feedback::proceeding(detail) }
    }

    pub fn success(detail: impl Into<String>) -> Feedback {
        Feedback {
            execution: Execution::Closed,
            finished: Finished::Success,
            progress: None,
            details: vec![detail.into()],
        }
    }

    pub fn failure(detail: impl Into<String>) -> Feedback {
        Feedback {
            execution: Execution::Closed,
            finished: Finished::Failure,
            progress: None,
            details: vec![detail.into()],
        }
    }

    /// The answer to a cancel request: done (nothing of the action had started) or refused
    /// (the install is under way: a half-written slot is not "cancelled").
    pub fn cancel(accepted: bool, detail: impl Into<String>) -> Feedback {
        let (execution, finished) =
            if accepted { (Execution::Closed, Finished::Success) } else { (Execution::Rejected, Finished::None) };
        Feedback { execution, finished, progress: None, details: vec![detail.into()] }
    }

    /// The request body (`timestamp`: milliseconds since the epoch, as hawkBit takes it).
    pub fn to_json(&self, timestamp_ms: u64) -> Value {
        let mut result = json!({ "finished": self.finished });
        if let Some((cnt, of)) = self.progress {
            result["progress"] = json!({ "cnt": cnt, "of": of });
        }
        json!({
            "timestamp": timestamp_ms,
            "status": { "execution": self.execution, "result": result, "details": self.details },
        })
    }
}

/// The attributes the box reports when the server asks (`configData`): what a fleet manager
/// filters rollouts by.
pub fn config_data(attributes: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> =
        attributes.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
    json!({ "mode": "merge", "data": data })
}

/// An action installed and waiting for the reboot into its slot; kept on disk across the
/// reboot so that hawkBit hears how the new version came up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwaitingBoot {
    pub action_id: String,
    /// The bundle's version (its manifest's).
    pub version: String,
    pub slot: String,
    /// The boot that installed it ([`crate::SlotBackend::boot_id`]).
    pub boot_id: String,
}

/// What to tell hawkBit about the action waiting for a reboot, if anything yet: nothing before
/// the reboot (`boot_id` unchanged) nor while the new slot's health check runs.
pub fn after_boot(
    awaiting: &AwaitingBoot,
    boot_id: &str,
    running_version: &str,
    booted_good: bool,
) -> Option<Feedback> {
    if boot_id == awaiting.boot_id {
        return None;
    }
    if running_version != awaiting.version {
        return Some(Feedback::failure(format!(
            "the box runs {running_version}, not {}: the new version did not start or failed its health check, and the bootloader went back",
            awaiting.version
        )));
    }
    booted_good.then(|| {
        Feedback::success(format!(
            "running {} from slot {}; it passed its health check",
            awaiting.version, awaiting.slot
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poll answer of hawkBit's DDI documentation (deployment and config data wanted).
    const POLL: &str = r#"{
      "config" : { "polling" : { "sleep" : "12:00:00" } },
      "_links" : {
        "deploymentBase" : { "href" : "https://management-api.host.com/TENANT_ID/controller/v1/CONTROLLER_ID/deploymentBase/8?c=-2129030598" },
        "configData" : { "href" : "https://management-api.host.com/TENANT_ID/controller/v1/CONTROLLER_ID/configData" }
      }
    }"#;

    /// The deployment of hawkBit's DDI documentation, its OS chunk carrying our bundle.
    const DEPLOYMENT: &str = r#"{
      "id" : "8",
      "deployment" : {
        "download" : "forced",
        "update" : "forced",
        "maintenanceWindow" : "available",
        "chunks" : [ {
          "part" : "os",
          "version" : "1.0.79",
          "name" : "oneapp",
          "artifacts" : [ {
            "filename" : "branchgate-1.0.79.raucb",
            "hashes" : {
              "sha1" : "50d9b8d0e4bca2f4bd4bd3b3e3b5b0a0a1f1cc51",
              "md5" : "0d1b08c34858921bc7c662b228acb7ba",
              "sha256" : "a03b221c6c6eae7122ca51695d456d5222e524889136394944b2f9763b483615"
            },
            "size" : 13,
            "_links" : {
              "download" : { "href" : "https://management-api.host.com/TENANT_ID/controller/v1/CONTROLLER_ID/softwaremodules/20/artifacts/branchgate-1.0.79.raucb" },
              "download-http" : { "href" : "http://management-api.host.com/TENANT_ID/controller/v1/CONTROLLER_ID/softwaremodules/20/artifacts/branchgate-1.0.79.raucb" }
            }
          }, {
            "filename" : "branchgate-1.0.79.raucb.MD5SUM",
            "hashes" : { "sha1" : "x", "md5" : "y" },
            "size" : 42,
            "_links" : {}
          } ]
        } ]
      },
      "actionHistory" : { "status" : "SCHEDULED", "messages" : [ "Assignment initiated by user 'TestPrincipal'" ] }
    }"#;

    #[test]
    fn the_documented_poll_answer_asks_for_the_deployment() {
        let base: ControllerBase = parse(POLL.as_bytes()).expect("poll answer");
        assert_eq!(
            next(&base),
            Next::Deploy(
                "https://management-api.host.com/TENANT_ID/controller/v1/CONTROLLER_ID/deploymentBase/8?c=-2129030598"
                    .into()
            )
        );
        assert!(base.links.config_data.is_some());
        assert_eq!(poll_interval(&base, Duration::from_secs(60)), Duration::from_secs(12 * 3600));
    }

    #[test]
    fn a_cancel_comes_before_a_deployment_and_nothing_means_idle() {
        let base: ControllerBase =
            parse(br#"{"_links":{"deploymentBase":{"href":"d"},"cancelAction":{"href":"c"}}}"#).expect("poll answer");
        assert_eq!(next(&base), Next::Cancel("c".into()));
        let idle: ControllerBase = parse(br#"{"config":{"polling":{"sleep":"00:00:00"}}}"#).expect("idle");
        assert_eq!(next(&idle), Next::Idle);
        assert_eq!(poll_interval(&idle, Duration::from_secs(60)), MIN_POLL, "never faster than once a second");
        let cancel: CancelAction = parse(br#"{"id":"11","cancelAction":{"stopId":"8"}}"#).expect("cancel");
        assert_eq!(cancel.cancel_action.stop_id, "8");
        let numeric: CancelAction = parse(br#"{"id":11,"cancelAction":{"stopId":8}}"#).expect("numeric ids");
        assert_eq!(numeric.id, "11");
    }

    #[test]
    fn sleeps_are_hours_minutes_seconds() {
        assert_eq!(parse_sleep("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(parse_sleep("48:00:01"), Some(Duration::from_secs(48 * 3600 + 1)));
        for bad in ["", "5", "00:60:00", "00:00:60", "a:b:c", "1:2:3:4", "-1:00:00"] {
            assert_eq!(parse_sleep(bad), None, "{bad}");
        }
        let base: ControllerBase = parse(br#"{"config":{"polling":{"sleep":"never"}}}"#).expect("poll");
        assert_eq!(poll_interval(&base, Duration::from_secs(90)), Duration::from_secs(90), "the configured interval");
    }

    #[test]
    fn the_documented_deployment_plans_its_one_bundle_over_https() {
        let deployment: DeploymentBase = parse(DEPLOYMENT.as_bytes()).expect("deployment");
        let plan = plan(&deployment).expect("plan");
        assert_eq!(plan.action_id, "8");
        assert_eq!(plan.version, "1.0.79");
        assert_eq!(plan.filename, "branchgate-1.0.79.raucb");
        assert!(plan.url.starts_with("https://"), "{}", plan.url);
        assert_eq!(plan.size, Some(13));
        assert_eq!(plan.hashes.sha256.as_deref().map(str::len), Some(64));
        assert!(plan.install_now);
    }

    #[test]
    fn deployments_the_box_cannot_or_must_not_install_now() {
        let mut deployment: DeploymentBase = parse(DEPLOYMENT.as_bytes()).expect("deployment");
        deployment.deployment.maintenance_window = Some("unavailable".into());
        assert!(!plan(&deployment).expect("plan").install_now, "outside the maintenance window");
        deployment.deployment.maintenance_window = None;
        deployment.deployment.update = Handling::Skip;
        assert!(!plan(&deployment).expect("plan").install_now, "download only");

        let mut http_only: DeploymentBase = parse(DEPLOYMENT.as_bytes()).expect("deployment");
        http_only.deployment.chunks[0].artifacts[0].links.download = None;
        assert!(plan(&http_only).expect("plan").url.starts_with("http://"));
        http_only.deployment.chunks[0].artifacts[0].links.download_http = None;
        assert_eq!(plan(&http_only), Err(DdiError::NoLink("branchgate-1.0.79.raucb".into())));

        let mut none: DeploymentBase = parse(DEPLOYMENT.as_bytes()).expect("deployment");
        none.deployment.chunks[0].artifacts.remove(0);
        assert_eq!(plan(&none), Err(DdiError::NoBundle));
        let mut two: DeploymentBase = parse(DEPLOYMENT.as_bytes()).expect("deployment");
        let copy = two.deployment.chunks[0].clone();
        two.deployment.chunks.push(copy);
        assert_eq!(plan(&two), Err(DdiError::SeveralBundles(2)));
        assert!(matches!(parse::<DeploymentBase>(b"{\"id\": []}"), Err(DdiError::Document(_))));
    }

    #[test]
    fn feedback_documents_have_the_ddi_shape() {
        let progress = Feedback::progress(2, 5, "installing").to_json(1_700_000_000_000);
        assert_eq!(
            progress,
            json!({ "timestamp": 1_700_000_000_000u64, "status": { "execution": "proceeding",
                "result": { "finished": "none", "progress": { "cnt": 2, "of": 5 } }, "details": ["installing"] } })
        );
        let closed = Feedback::failure("tampered").to_json(1);
        assert_eq!(closed["status"]["execution"], "closed");
        assert_eq!(closed["status"]["result"]["finished"], "failure");
        assert!(closed["status"]["result"].get("progress").is_none());
        assert_eq!(Feedback::cancel(false, "installing").to_json(1)["status"]["execution"], "rejected");
        assert_eq!(Feedback::cancel(true, "stopped").to_json(1)["status"]["result"]["finished"], "success");
        assert_eq!(config_data(&[("firmware", "1.2.3")]), json!({ "mode": "merge", "data": { "firmware": "1.2.3" } }));
    }

    #[test]
    fn after_the_reboot_the_new_version_reports_once_it_is_good_and_a_fallback_fails() {
        let awaiting =
            AwaitingBoot { action_id: "8".into(), version: "2.0.0".into(), slot: "B".into(), boot_id: "boot-1".into() };
        assert_eq!(after_boot(&awaiting, "boot-1", "1.0.0", true), None, "not rebooted yet");
        assert_eq!(after_boot(&awaiting, "boot-2", "2.0.0", false), None, "wait for the health check");
        let good = after_boot(&awaiting, "boot-2", "2.0.0", true).expect("report");
        assert_eq!((good.execution, good.finished), (Execution::Closed, Finished::Success));
        let back = after_boot(&awaiting, "boot-2", "1.0.0", true).expect("report");
        assert_eq!(back.finished, Finished::Failure);
        assert!(back.details[0].contains("bootloader went back"), "{:?}", back.details);
    }

    #[test]
    fn controller_urls_join_cleanly() {
        assert_eq!(
            controller_url("https://hawkbit.example/", "DEFAULT", "branch-1"),
            "https://hawkbit.example/DEFAULT/controller/v1/branch-1"
        );
    }
}
