//! What the dashboard and `/api/v1/status` show: host figures read from
//! `/proc` and `/sys`, and the state of each supervised service.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Lifecycle of a supervised service as the supervisor reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Starting,
    Running,
    /// Crashed and waiting for its restart (backoff).
    Restarting,
    Stopped,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    pub restarts: u32,
    pub last_error: Option<String>,
    #[serde(skip)]
    since: Instant,
    pub since_seconds: u64,
}

/// The supervisor writes here; the dashboard reads.
#[derive(Clone, Debug, Default)]
pub struct ServiceBoard {
    inner: Arc<Mutex<BTreeMap<String, ServiceStatus>>>,
}

impl ServiceBoard {
    pub fn set(&self, name: &str, state: ServiceState, error: Option<String>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_string()).or_insert_with(|| ServiceStatus {
            name: name.to_string(),
            state,
            restarts: 0,
            last_error: None,
            since: Instant::now(),
            since_seconds: 0,
        });
        if state == ServiceState::Restarting {
            entry.restarts += 1;
        }
        if entry.state != state {
            entry.since = Instant::now();
        }
        entry.state = state;
        if error.is_some() {
            entry.last_error = error;
        }
    }

    pub fn list(&self) -> Vec<ServiceStatus> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|s| ServiceStatus { since_seconds: s.since.elapsed().as_secs(), ..s.clone() }).collect()
    }

    pub fn all_running(&self) -> bool {
        self.list().iter().all(|s| s.state == ServiceState::Running)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryStatus {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub process_rss_bytes: u64,
}

/// CPU use between two samples of `/proc/stat`.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Busy percentage of all cores since the previous call.
    pub fn sample(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let (busy, total) = parse_proc_stat(&text)?;
        let previous = self.last.replace((busy, total));
        let (prev_busy, prev_total) = previous?;
        let d_total = total.checked_sub(prev_total)?;
        if d_total == 0 {
            return None;
        }
        Some(100.0 * busy.saturating_sub(prev_busy) as f64 / d_total as f64)
    }
}

/// (busy, total) jiffies from the aggregate `cpu` line.
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

pub fn memory() -> MemoryStatus {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    MemoryStatus {
        total_bytes: meminfo_kib(&meminfo, "MemTotal:").unwrap_or(0) * 1024,
        available_bytes: meminfo_kib(&meminfo, "MemAvailable:").unwrap_or(0) * 1024,
        process_rss_bytes: meminfo_kib(&own, "VmRSS:").unwrap_or(0) * 1024,
    }
}

/// The hottest thermal zone, when the kernel exposes any.
pub fn temperature_celsius() -> Option<f64> {
    let zones = std::fs::read_dir("/sys/class/thermal").ok()?;
    zones
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
        .reduce(f64::max)
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_parsed() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(text), Some((150, 1000)));
        assert_eq!(parse_proc_stat("nonsense"), None);
    }

    #[test]
    fn board_counts_restarts() {
        let board = ServiceBoard::default();
        board.set("web", ServiceState::Running, None);
        board.set("web", ServiceState::Restarting, Some("boom".into()));
        board.set("web", ServiceState::Running, None);
        let list = board.list();
        assert_eq!(list[0].restarts, 1);
        assert_eq!(list[0].last_error.as_deref(), Some("boom"));
        assert!(board.all_running());
    }
}
