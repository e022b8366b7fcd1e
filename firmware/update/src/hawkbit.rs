//! The hawkBit client (fleet rollouts), the tokio driver around [`crate::ddi`]: polls the server
//! of `update.hawkbit_url`, downloads a rollout's bundle into the firmware directory (streamed,
//! size and hash checked), has the [`Agent`] verify and install it exactly as an uploaded one,
//! reports progress and the outcome, reboots into the new slot (`update.hawkbit_reboot`) and,
//! after that reboot, tells the server how the new version came up (it stays "running" on the
//! server until the slot passed its health check, "failed" when the bootloader went back).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use branchgate_config::{Config, Snapshot};
use md5::Md5;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::agent::{Agent, MAX_BUNDLE_BYTES, ReceiveGuard, bundle_budget};
use crate::ddi::{self, AwaitingBoot, ControllerBase, DeploymentBase, Feedback, Next};
use crate::history::{HistoryEntry, HistoryEvent, now_ms};
use crate::slots::InstallState;

/// The action installed and waiting for its reboot (see [`AwaitingBoot`]).
pub const AWAITING_FILE: &str = "hawkbit-awaiting-boot.json";
/// Where the download lands (not the web upload's file: either may be refused while the other runs).
const DOWNLOAD_FILE: &str = "hawkbit.raucb";
/// Who did it, in the update history.
const BY: &str = "hawkbit";
/// A DDI document larger than this is not one.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long a JSON exchange with the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a download may go without a byte arriving.
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After an error, the next poll comes at most this much later (the server may be back).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HawkbitError {
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Ddi(#[from] ddi::DdiError),
}

impl From<reqwest::Error> for HawkbitError {
    fn from(error: reqwest::Error) -> HawkbitError {
        // Without the chain, reqwest says only "error sending request".
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        HawkbitError::Http(text)
    }
}

/// The client's last contact with its server (`GET /api/v1/firmware` shows it).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FleetStatus {
    /// The controller's URL on the server; none while hawkBit is off.
    pub controller: Option<String>,
    pub last_poll_ms: Option<u64>,
    pub last_error: Option<String>,
    /// What the client is doing about the server's current action, in words.
    pub action: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FleetMonitor(Arc<Mutex<FleetStatus>>);

impl FleetMonitor {
    pub fn status(&self) -> FleetStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with(&self, change: impl FnOnce(&mut FleetStatus)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn action(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!("hawkbit: {text}");
        self.with(|s| s.action = Some(text));
    }
}

/// What the client needs of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    controller: String,
    /// `scheme://host[:port]` of the server: the token goes nowhere else.
    origin: String,
    token: Option<String>,
    poll: Duration,
    reboot: bool,
    allow_downgrade: bool,
    hostname: String,
}

fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!("{scheme}://{authority}").to_ascii_lowercase()
}

fn settings_of(config: &Config) -> Option<Settings> {
    let update = &config.update;
    let server = update.hawkbit_url.as_deref()?;
    let controller_id = update.hawkbit_controller_id.clone().unwrap_or_else(|| config.system.hostname.clone());
    Some(Settings {
        controller: ddi::controller_url(server, &update.hawkbit_tenant, &controller_id),
        origin: origin_of(server),
        token: update.hawkbit_target_token.as_ref().map(|t| t.expose().to_string()),
        poll: Duration::from_secs(u64::from(update.poll_interval_seconds)),
        reboot: update.hawkbit_reboot,
        allow_downgrade: update.allow_downgrade,
        hostname: config.system.hostname.clone(),
    })
}

/// Polls while `update.hawkbit_url` is set; follows configuration changes; ends at shutdown.
pub async fn run(
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    agent: Agent,
    firmware_dir: PathBuf,
) -> Result<(), HawkbitError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("branchgate/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let client = Client { http: client, agent, dir: firmware_dir };
    loop {
        let settings = settings_of(&config_rx.borrow_and_update().config);
        let wait = match &settings {
            None => {
                client.agent.fleet.with(|s| *s = FleetStatus::default());
                None
            }
            Some(settings) => {
                client.agent.fleet.with(|s| s.controller = Some(settings.controller.clone()));
                let polled = tokio::select! {
                    polled = client.poll(settings) => polled,
                    _ = shutdown.changed() => return Ok(()),
                };
                Some(match polled {
                    Ok(wait) => {
                        client.agent.fleet.with(|s| {
                            s.last_poll_ms = Some(now_ms());
                            s.last_error = None;
                        });
                        wait
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, controller = %settings.controller, "hawkbit: poll failed");
                        client.agent.fleet.with(|s| s.last_error = Some(e.to_string()));
                        settings.poll.min(RETRY_AFTER_ERROR)
                    }
                })
            }
        };
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        // Until the next poll: a change of the hawkBit settings polls at once, others wait.
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                changed = config_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if settings_of(&config_rx.borrow().config) != settings {
                        break;
                    }
                }
                _ = sleep_until(deadline) => break,
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Client {
    http: reqwest::Client,
    agent: Agent,
    dir: PathBuf,
}

impl Client {
    fn request(&self, settings: &Settings, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut request =
            self.http.request(method, url).header(reqwest::header::ACCEPT, "application/hal+json, application/json");
        if let Some(token) = &settings.token
            && origin_of(url) == settings.origin
        {
            request = request.header(reqwest::header::AUTHORIZATION, format!("TargetToken {token}"));
        }
        request
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        settings: &Settings,
        url: &str,
    ) -> Result<T, HawkbitError> {
        let response = self.request(settings, reqwest::Method::GET, url).timeout(REQUEST_TIMEOUT).send().await?;
        let mut response = checked(response).await?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(HawkbitError::Http(format!("{url}: the answer is larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ddi::parse(&body)?)
    }

    async fn send_json(
        &self,
        settings: &Settings,
        method: reqwest::Method,
        url: &str,
        body: &Value,
    ) -> Result<(), HawkbitError> {
        let response = self.request(settings, method, url).timeout(REQUEST_TIMEOUT).json(body).send().await?;
        checked(response).await.map(drop)
    }

    /// Reports on an action. A lost progress report is only logged (the next one says more);
    /// callers that must know whether a closing report arrived use the result.
    async fn feedback(&self, settings: &Settings, action_id: &str, feedback: Feedback) -> Result<(), HawkbitError> {
        let url = format!("{}/deploymentBase/{action_id}/feedback", settings.controller);
        let sent = self.send_json(settings, reqwest::Method::POST, &url, &feedback.to_json(now_ms())).await;
        if let Err(e) = &sent {
            tracing::warn!(error = %e, action = action_id, "hawkbit: feedback not delivered");
        }
        sent
    }

    /// One poll and whatever it asks for; returns how long to wait for the next.
    async fn poll(&self, settings: &Settings) -> Result<Duration, HawkbitError> {
        let awaiting = self.report_after_boot(settings).await;
        let base: ControllerBase = self.get_json(settings, &settings.controller).await?;
        let wait = ddi::poll_interval(&base, settings.poll);
        if base.links.config_data.is_some() {
            self.send_attributes(settings).await?;
        }
        match ddi::next(&base) {
            Next::Idle => self.agent.fleet.with(|s| s.action = None),
            Next::Cancel(href) => self.cancel(settings, &href).await?,
            Next::Deploy(href) => {
                let deployment: DeploymentBase = self.get_json(settings, &href).await?;
                if awaiting.as_ref().is_some_and(|a| a.action_id == deployment.id) {
                    // Installed already; the server hears the rest after the reboot.
                    return Ok(wait);
                }
                self.deploy(settings, &deployment).await;
            }
        }
        Ok(wait)
    }

    async fn send_attributes(&self, settings: &Settings) -> Result<(), HawkbitError> {
        let backend = self.agent.backend.clone();
        let slot = tokio::task::spawn_blocking(move || backend.status().map(|s| s.booted).unwrap_or_default())
            .await
            .unwrap_or_default();
        let body = ddi::config_data(&[
            ("firmware", &self.agent.running_version),
            ("compatible", &self.agent.compatible),
            ("slot", &slot),
            ("hostname", &settings.hostname),
        ]);
        let url = format!("{}/configData", settings.controller);
        self.send_json(settings, reqwest::Method::PUT, &url, &body).await
    }

    /// The action installed before a reboot: once the booted slot is good (or another version
    /// came up), tell the server and forget it. Returns the action while it still waits.
    async fn report_after_boot(&self, settings: &Settings) -> Option<AwaitingBoot> {
        let path = self.dir.join(AWAITING_FILE);
        let awaiting: AwaitingBoot = serde_json::from_slice(&tokio::fs::read(&path).await.ok()?).ok()?;
        let backend = self.agent.backend.clone();
        let state =
            tokio::task::spawn_blocking(move || backend.booted_is_good().map(|good| (backend.boot_id(), good))).await;
        let Ok(Ok((boot_id, good))) = state else {
            // Nothing known about this boot yet: the action still waits (never deploy it again).
            tracing::warn!(action = %awaiting.action_id, "hawkbit: the slot state cannot be read; asking again at the next poll");
            return Some(awaiting);
        };
        let Some(feedback) = ddi::after_boot(&awaiting, &boot_id, &self.agent.running_version, good) else {
            let waiting =
                if boot_id == awaiting.boot_id { "waits for the reboot" } else { "waits for its health check" };
            self.agent.fleet.action(format!("action {}: {} {waiting}", awaiting.action_id, awaiting.version));
            return Some(awaiting);
        };
        self.agent.fleet.action(format!("action {}: {}", awaiting.action_id, feedback.details.join("; ")));
        if self.feedback(settings, &awaiting.action_id, feedback).await.is_err() {
            // Forgotten only once the server has it: the next poll reports again.
            return Some(awaiting);
        }
        let _ = tokio::fs::remove_file(&path).await;
        None
    }

    async fn cancel(&self, settings: &Settings, href: &str) -> Result<(), HawkbitError> {
        let cancel: ddi::CancelAction = self.get_json(settings, href).await?;
        // Nothing of an action runs between polls here except an install, which cannot stop
        // half-way, and one installed and waiting for its reboot, which cannot be taken back:
        // refuse those (the server may ask again), accept otherwise.
        let installed = tokio::fs::read(self.dir.join(AWAITING_FILE))
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<AwaitingBoot>(&bytes).ok())
            .is_some_and(|awaiting| awaiting.action_id == cancel.cancel_action.stop_id);
        let feedback = if installed {
            Feedback::cancel(false, "the action is installed and waits for its reboot; it cannot be taken back")
        } else if self.agent.tracker.busy() {
            Feedback::cancel(false, "an install is running and cannot be stopped half-way")
        } else {
            Feedback::cancel(true, format!("action {} cancelled; nothing was installed", cancel.cancel_action.stop_id))
        };
        self.agent.fleet.action(format!("cancel of action {}: {}", cancel.cancel_action.stop_id, feedback.details[0]));
        let url = format!("{}/cancelAction/{}/feedback", settings.controller, cancel.id);
        self.send_json(settings, reqwest::Method::POST, &url, &feedback.to_json(now_ms())).await
    }

    /// Download, verify, install, report; the failures close the action with the reason.
    async fn deploy(&self, settings: &Settings, deployment: &DeploymentBase) {
        let id = deployment.id.clone();
        let plan = match ddi::plan(deployment) {
            Ok(plan) => plan,
            Err(e) => {
                self.agent.fleet.action(format!("action {id} refused: {e}"));
                let _ = self.feedback(settings, &id, Feedback::failure(e.to_string())).await;
                return;
            }
        };
        if !plan.install_now {
            self.agent.fleet.action(format!("action {id}: {} waits for its maintenance window", plan.version));
            return;
        }
        let tracker = self.agent.tracker.clone();
        if !tracker.try_begin() {
            self.agent.fleet.action(format!("action {id}: another install is running; trying again at the next poll"));
            return;
        }
        let path = self.dir.join(DOWNLOAD_FILE);
        let guard = ReceiveGuard::new(tracker.clone(), path.clone());
        self.agent.fleet.action(format!("action {id}: downloading {}", plan.filename));
        let _ = self.feedback(settings, &id, Feedback::proceeding(format!("downloading {}", plan.filename))).await;
        if let Err(message) = self.download(settings, &plan, &path).await {
            let message = format!("the download of {} failed: {message}", plan.filename);
            guard.fail(&message);
            self.agent
                .record_async(
                    HistoryEntry::now(HistoryEvent::InstallFailed, message.clone()).version(&plan.version).by(BY),
                )
                .await;
            self.agent.fleet.action(format!("action {id}: {message}"));
            let _ = self.feedback(settings, &id, Feedback::failure(message)).await;
            return;
        }
        self.agent.verifying();
        let _ =
            self.feedback(settings, &id, Feedback::proceeding("checking the signature, compatible and version")).await;
        let checked = {
            let (agent, path, allow) = (self.agent.clone(), path.clone(), settings.allow_downgrade);
            tokio::task::spawn_blocking(move || agent.accept(&path, allow)).await
        };
        let manifest = match checked {
            Ok(Ok(manifest)) => manifest,
            Ok(Err(e)) => {
                let message = format!("bundle refused: {e}");
                guard.fail(&message);
                self.agent.record_async(HistoryEntry::now(HistoryEvent::Refused, message.clone()).by(BY)).await;
                self.agent.fleet.action(format!("action {id}: {message}"));
                let _ = self.feedback(settings, &id, Feedback::failure(message)).await;
                return;
            }
            Err(e) => {
                let message = format!("verification stopped: {e}");
                guard.fail(&message);
                self.agent.fleet.action(format!("action {id}: {message}"));
                let _ = self.feedback(settings, &id, Feedback::failure(message)).await;
                return;
            }
        };
        guard.disarm();
        self.agent.install_in_background(path, manifest.clone(), true, BY);
        let slot = match self.follow_install(settings, &id, &manifest.version).await {
            Ok(slot) => slot,
            Err(message) => {
                self.agent.fleet.action(format!("action {id}: {message}"));
                let _ = self.feedback(settings, &id, Feedback::failure(message)).await;
                return;
            }
        };
        let backend = self.agent.backend.clone();
        let boot_id = tokio::task::spawn_blocking(move || backend.boot_id()).await.unwrap_or_default();
        let awaiting =
            AwaitingBoot { action_id: id.clone(), version: manifest.version.clone(), slot: slot.clone(), boot_id };
        let path = self.dir.join(AWAITING_FILE);
        let written = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&awaiting).map_err(std::io::Error::other)?;
            branchgate_config::write_atomically(&path, &bytes, 0o600)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|written| written);
        if let Err(e) = written {
            // Without the record the action would run again after the reboot: close it now;
            // the slot stays installed for a reboot by hand.
            let message = format!(
                "{} installed into slot {slot}, but the box cannot remember the action across a reboot ({e}); not rebooting",
                manifest.version
            );
            self.agent.fleet.action(format!("action {id}: {message}"));
            let _ = self.feedback(settings, &id, Feedback::failure(message)).await;
            return;
        }
        let next = if settings.reboot { "rebooting into it" } else { "it starts at the next reboot" };
        let message = format!("{} installed into slot {slot}; {next}", manifest.version);
        self.agent.fleet.action(format!("action {id}: {message}"));
        let _ = self.feedback(settings, &id, Feedback::proceeding(message)).await;
        if settings.reboot {
            self.reboot().await;
        }
    }

    /// Streams the bundle to `path` within the size limits and checks its size and hash.
    async fn download(&self, settings: &Settings, plan: &ddi::Plan, path: &Path) -> Result<(), String> {
        let budget = bundle_budget(&self.dir).min(MAX_BUNDLE_BYTES);
        if let Some(size) = plan.size.filter(|size| *size > budget) {
            return Err(format!("it has {size} bytes; {budget} fit on the data partition"));
        }
        let response = self.request(settings, reqwest::Method::GET, &plan.url).send().await;
        let mut response = match response.map_err(HawkbitError::from) {
            Ok(response) => checked(response).await.map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        let mut file =
            tokio::fs::File::create(path).await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let (mut sha256, mut md5) = (Sha256::new(), Md5::new());
        let mut received = 0u64;
        loop {
            let chunk = match tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(format!("broke off after {received} bytes: {}", HawkbitError::from(e))),
                Err(_) => return Err(format!("stalled after {received} bytes")),
            };
            received += chunk.len() as u64;
            if received > budget || plan.size.is_some_and(|size| received > size) {
                return Err(format!("more bytes than announced or than fit ({received})"));
            }
            sha256.update(&chunk);
            md5.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        file.sync_all().await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if let Some(size) = plan.size.filter(|size| *size != received) {
            return Err(format!("{received} bytes arrived, the server announced {size}"));
        }
        // The strongest hash the server gives (the signature check follows anyway).
        let (name, expected, actual) = match (&plan.hashes.sha256, &plan.hashes.md5) {
            (Some(expected), _) => ("SHA-256", expected, hex::encode(sha256.finalize())),
            (None, Some(expected)) => ("MD5", expected, hex::encode(md5.finalize())),
            (None, None) => return Ok(()),
        };
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(format!("its {name} is {actual}, the server announced {expected}"));
        }
        Ok(())
    }

    /// Reports the install's progress (every 10 %) until it ends; returns the slot.
    async fn follow_install(&self, settings: &Settings, id: &str, version: &str) -> Result<String, String> {
        let mut reported = None;
        loop {
            let status = self.agent.tracker.status();
            match status.state {
                InstallState::Done => return Ok(status.slot.unwrap_or_default()),
                InstallState::Failed => {
                    return Err(status.last_error.unwrap_or_else(|| "the install failed".to_string()));
                }
                _ => {}
            }
            let step = u32::from(status.progress / 10) * 10;
            if reported != Some(step) {
                reported = Some(step);
                let detail = format!("installing {version}: {step} %");
                self.agent.fleet.action(format!("action {id}: {detail}"));
                let _ = self.feedback(settings, id, Feedback::progress(step, 100, detail)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn reboot(&self) {
        let backend = self.agent.backend.clone();
        match tokio::task::spawn_blocking(move || backend.reboot()).await {
            Ok(Ok(plan)) => {
                let entry = HistoryEntry::now(HistoryEvent::Reboot, format!("reboot into slot {}", plan.slot))
                    .slot(&plan.slot)
                    .by(BY)
                    .simulated(plan.simulated);
                self.agent.record_async(entry).await;
                tracing::warn!(slot = %plan.slot, simulated = plan.simulated, "hawkbit: reboot into the new slot");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "hawkbit: reboot failed"),
            Err(e) => tracing::error!(error = %e, "hawkbit: reboot failed"),
        }
    }
}

/// The response if it is a success, else an error with the status and the server's message.
async fn checked(response: reqwest::Response) -> Result<reqwest::Response, HawkbitError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().clone();
    let text = response.text().await.unwrap_or_default();
    let text: String = text.chars().take(300).collect();
    Err(HawkbitError::Http(format!("{url} answered {status}: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_configuration_and_the_token_stays_on_its_server() {
        let mut config = Config::default();
        assert_eq!(settings_of(&config), None, "off without a server");
        config.system.hostname = "branch-7".into();
        config.update.hawkbit_url = Some("https://Fleet.example:8443/".into());
        let s = settings_of(&config).expect("on");
        assert_eq!(s.controller, "https://Fleet.example:8443/DEFAULT/controller/v1/branch-7");
        assert_eq!(s.origin, "https://fleet.example:8443");
        assert_eq!(origin_of("https://fleet.example:8443/DEFAULT/controller/v1/x/softwaremodules/1"), s.origin);
        assert_ne!(origin_of("https://cdn.example/fleet.example:8443/x.raucb"), s.origin);
        config.update.hawkbit_controller_id = Some("box-42".into());
        assert!(settings_of(&config).expect("on").controller.ends_with("/controller/v1/box-42"));
    }
}
