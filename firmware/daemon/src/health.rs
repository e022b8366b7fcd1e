//! The boot health check: after booting a slot the bootloader has not yet seen succeed (RAUC:
//! its boot-status is not `good`), the daemon checks itself — the admin UI listens and accepts
//! connections, every supervised service runs and none has restarted for a while — and then
//! marks the slot good. If that does not happen before the deadline the slot is left unmarked
//! and the machine restarts: the bootloader has already counted this boot as the slot's try,
//! so it falls back to the other slot.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use branchgate_update::{Agent, HistoryEntry, HistoryEvent};
use branchgate_web_admin::status::{ServiceBoard, ServiceState, ServiceStatus};
use tokio::sync::watch;

/// How long everything must have been up, with no restart, before the slot counts as good.
const STABLE_FOR: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_secs(1);

/// What one look at the box found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Not yet (or not any more): why, for the log.
    Waiting(String),
}

/// Decides from successive observations; no IO, the clock comes in (unit-tested).
#[derive(Debug)]
pub struct HealthJudge {
    stable_for: Duration,
    healthy_since: Option<Instant>,
    restarts_seen: u32,
}

impl HealthJudge {
    pub fn new(stable_for: Duration) -> HealthJudge {
        HealthJudge { stable_for, healthy_since: None, restarts_seen: 0 }
    }

    /// `admin_answers`: the admin listener accepted a connection just now.
    pub fn observe(&mut self, now: Instant, admin_answers: bool, services: &[ServiceStatus]) -> Verdict {
        let restarts: u32 = services.iter().map(|s| s.restarts).sum();
        let restarted = restarts != self.restarts_seen;
        self.restarts_seen = restarts;
        let problem = if !admin_answers {
            Some("the admin UI does not answer yet".to_string())
        } else if services.is_empty() {
            Some("no services started yet".to_string())
        } else if let Some(bad) = services.iter().find(|s| s.state != ServiceState::Running) {
            Some(format!(
                "service {} is {:?}{}",
                bad.name,
                bad.state,
                bad.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ))
        } else if restarted {
            Some("a service restarted".to_string())
        } else {
            None
        };
        if let Some(reason) = problem {
            self.healthy_since = None;
            return Verdict::Waiting(reason);
        }
        let since = *self.healthy_since.get_or_insert(now);
        if now.duration_since(since) >= self.stable_for {
            Verdict::Healthy
        } else {
            Verdict::Waiting(format!(
                "stable for {} s of {} s",
                now.duration_since(since).as_secs(),
                self.stable_for.as_secs()
            ))
        }
    }
}

async fn admin_answers(addr: Option<SocketAddr>) -> bool {
    let Some(mut addr) = addr else { return false };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    matches!(tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// Runs the check once after start; returns when the slot is good, nothing needs checking, or
/// the machine is being restarted.
pub async fn boot_health_check(
    agent: Agent,
    board: ServiceBoard,
    admin: watch::Receiver<Option<SocketAddr>>,
    deadline: Duration,
    started: Instant,
) {
    let backend = agent.backend.clone();
    let status_backend = backend.clone();
    match tokio::task::spawn_blocking(move || status_backend.booted_is_good()).await {
        Ok(Ok(true)) => {
            tracing::info!("boot health check: the booted slot is already marked good");
            return;
        }
        Ok(Ok(false)) => tracing::info!(deadline_seconds = deadline.as_secs(), "boot health check: running"),
        Ok(Err(e)) => {
            // Without the slot's state there is nothing safe to decide: no mark, no reboot.
            tracing::error!(error = %e, "boot health check: cannot read the slot state; skipped");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "boot health check: skipped");
            return;
        }
    }
    let mut judge = HealthJudge::new(STABLE_FOR);
    let mut last_reason = String::new();
    while started.elapsed() < deadline {
        let addr = *admin.borrow();
        let answers = admin_answers(addr).await;
        match judge.observe(Instant::now(), answers, &board.list()) {
            Verdict::Healthy => {
                let backend = backend.clone();
                match tokio::task::spawn_blocking(move || backend.mark_booted_good()).await {
                    Ok(Ok(slot)) => {
                        println!(
                            "branchgate: boot health check passed, slot {slot} marked good ({} ms after start)",
                            started.elapsed().as_millis()
                        );
                        let entry = HistoryEntry::now(
                            HistoryEvent::MarkedGood,
                            format!("slot {slot} passed its health check and was marked good"),
                        )
                        .slot(&slot)
                        .version(&agent.running_version);
                        let _ = tokio::task::spawn_blocking(move || agent.record(entry)).await;
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "boot health check passed but marking the slot failed"),
                    Err(e) => tracing::error!(error = %e, "boot health check passed but marking the slot failed"),
                }
                return;
            }
            Verdict::Waiting(reason) => last_reason = reason,
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    println!(
        "branchgate: boot health check FAILED after {} s ({last_reason}); restarting without marking the slot good",
        deadline.as_secs()
    );
    tracing::error!(reason = %last_reason, "boot health check failed: rebooting so the bootloader falls back");
    let booted = agent.backend.clone();
    let entry_agent = agent.clone();
    let reason = last_reason.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let slot = booted.status().map(|s| s.booted).unwrap_or_default();
        let entry = HistoryEntry::now(
            HistoryEvent::HealthFailed,
            format!("slot {slot} failed its health check ({reason}); restarting without marking it good"),
        )
        .slot(slot)
        .version(&entry_agent.running_version);
        entry_agent.record(entry);
    })
    .await;
    if let Err(e) = tokio::task::spawn_blocking(branchgate_update::restart_machine).await {
        tracing::error!(error = %e, "reboot failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(board: &ServiceBoard) -> Vec<ServiceStatus> {
        board.list()
    }

    #[test]
    fn healthy_only_after_a_stable_window() {
        let board = ServiceBoard::default();
        board.set("admin-ui", ServiceState::Running, None);
        board.set("sip", ServiceState::Running, None);
        let t0 = Instant::now();
        let mut judge = HealthJudge::new(Duration::from_secs(5));
        assert!(matches!(judge.observe(t0, false, &services(&board)), Verdict::Waiting(r) if r.contains("admin")));
        assert!(matches!(judge.observe(t0, true, &services(&board)), Verdict::Waiting(_)));
        assert_eq!(judge.observe(t0 + Duration::from_secs(5), true, &services(&board)), Verdict::Healthy);
    }

    #[test]
    fn a_failing_service_keeps_it_unhealthy() {
        let board = ServiceBoard::default();
        board.set("admin-ui", ServiceState::Running, None);
        board.set("sip", ServiceState::Running, None);
        let t0 = Instant::now();
        let mut judge = HealthJudge::new(Duration::from_secs(5));
        assert!(matches!(judge.observe(t0, true, &services(&board)), Verdict::Waiting(_)));
        board.set("sip", ServiceState::Restarting, Some("address in use".into()));
        let verdict = judge.observe(t0 + Duration::from_secs(3), true, &services(&board));
        assert!(
            matches!(&verdict, Verdict::Waiting(r) if r.contains("sip") && r.contains("address in use")),
            "{verdict:?}"
        );
        // Back up: the restart resets the window.
        board.set("sip", ServiceState::Running, None);
        assert!(matches!(judge.observe(t0 + Duration::from_secs(6), true, &services(&board)), Verdict::Waiting(_)));
        assert!(matches!(judge.observe(t0 + Duration::from_secs(7), true, &services(&board)), Verdict::Waiting(_)));
        assert_eq!(judge.observe(t0 + Duration::from_secs(12), true, &services(&board)), Verdict::Healthy);
    }

    #[test]
    fn no_services_is_not_healthy() {
        let mut judge = HealthJudge::new(Duration::ZERO);
        assert!(matches!(judge.observe(Instant::now(), true, &[]), Verdict::Waiting(_)));
    }
}
