//! Keeps the box's services running: each runs in its own task, a failure or
//! panic is reported on the service board and the service is restarted with
//! exponential backoff; shutdown is cooperative through a watch channel.

use std::future::Future;
use std::time::Duration;

use branchgate_web_admin::status::{ServiceBoard, ServiceState};
use tokio::sync::watch;
use tokio::task::JoinSet;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A service that ran this long before failing starts again from the first backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub struct Supervisor {
    board: ServiceBoard,
    shutdown: watch::Receiver<bool>,
    tasks: JoinSet<()>,
}

/// The next wait after a failure: doubled, capped, reset after a healthy run.
pub fn next_backoff(previous: Duration, ran_for: Duration) -> Duration {
    if ran_for >= HEALTHY_RUN { FIRST_BACKOFF } else { (previous * 2).min(MAX_BACKOFF) }
}

impl Supervisor {
    pub fn new(board: ServiceBoard, shutdown: watch::Receiver<bool>) -> Self {
        Supervisor { board, shutdown, tasks: JoinSet::new() }
    }

    /// Runs `make()`'s future until shutdown, restarting it when it fails or panics.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, make: F)
    where
        F: Fn(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let board = self.board.clone();
        let mut shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut backoff = FIRST_BACKOFF / 2;
            loop {
                board.set(name, ServiceState::Running, None);
                let started = std::time::Instant::now();
                // A separate task, so that a panic is caught as a JoinError.
                let outcome = tokio::spawn(make(shutdown.clone())).await;
                if *shutdown.borrow() {
                    board.set(name, ServiceState::Stopped, None);
                    return;
                }
                let error = match outcome {
                    Ok(Ok(())) => "stopped unexpectedly".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(e) => e.to_string(),
                };
                backoff = next_backoff(backoff, started.elapsed());
                tracing::error!(service = name, error = %error, retry_in = ?backoff, "service failed; restarting");
                board.set(name, ServiceState::Restarting, Some(error));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {
                        board.set(name, ServiceState::Stopped, None);
                        return;
                    }
                }
            }
        });
    }

    /// Runs a background task (not a service: not on the board, not restarted)
    /// that is waited for at shutdown like the services.
    pub fn spawn_task(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Waits for every service to stop, at most `limit`.
    pub async fn join(mut self, limit: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("services did not stop in time; exiting anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_caps_and_resets() {
        assert_eq!(next_backoff(Duration::from_secs(1), Duration::ZERO), Duration::from_secs(2));
        assert_eq!(next_backoff(Duration::from_secs(20), Duration::ZERO), MAX_BACKOFF);
        assert_eq!(next_backoff(MAX_BACKOFF, HEALTHY_RUN), FIRST_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashing_service_is_restarted_and_reported() {
        let board = ServiceBoard::default();
        let (tx, rx) = watch::channel(false);
        let mut supervisor = Supervisor::new(board.clone(), rx);
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        supervisor.spawn("flaky", move |_| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    panic!("crash {n}");
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let status = &board.list()[0];
        assert_eq!(status.state, ServiceState::Running);
        assert_eq!(status.restarts, 2);
        assert_eq!(status.last_error.as_deref(), Some("panicked"));
        tx.send(true).expect("send");
        supervisor.join(Duration::from_secs(1)).await;
    }
}
