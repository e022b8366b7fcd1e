//! The last log lines kept in memory for the log viewer; the daemon's tracing
//! layer writes into it beside stderr/journald.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub time: String,
    pub level: String,
    pub target: String,
    pub message: String,
}

/// A bounded ring of log lines: the oldest go when it is full.
#[derive(Clone, Debug)]
pub struct LogRing {
    inner: Arc<Mutex<VecDeque<LogLine>>>,
    capacity: usize,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        LogRing { inner: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))), capacity }
    }

    pub fn push(&self, line: LogLine) {
        let mut ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    /// The newest `limit` lines at or above `min_level` (ERROR < WARN < INFO < DEBUG < TRACE), oldest first.
    pub fn tail(&self, limit: usize, min_level: Option<&str>) -> Vec<LogLine> {
        let rank = |level: &str| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].iter().position(|l| *l == level);
        let ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let max_rank = min_level.and_then(rank).unwrap_or(4);
        let mut lines: Vec<LogLine> =
            ring.iter().rev().filter(|l| rank(&l.level).unwrap_or(4) <= max_rank).take(limit).cloned().collect();
        lines.reverse();
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: &str, message: &str) -> LogLine {
        LogLine { time: String::new(), level: level.into(), target: "t".into(), message: message.into() }
    }

    #[test]
    fn ring_is_bounded_and_filters_by_level() {
        let ring = LogRing::new(3);
        for (level, msg) in [("INFO", "a"), ("ERROR", "b"), ("DEBUG", "c"), ("WARN", "d")] {
            ring.push(line(level, msg));
        }
        let all: Vec<_> = ring.tail(10, None).into_iter().map(|l| l.message).collect();
        assert_eq!(all, ["b", "c", "d"]);
        let warn: Vec<_> = ring.tail(10, Some("WARN")).into_iter().map(|l| l.message).collect();
        assert_eq!(warn, ["b", "d"]);
    }
}
