//! Logs go to stderr (journald picks them up under systemd) and into the
//! in-memory ring the log viewer reads.

use std::fmt::Write;

use branchgate_web_admin::logs::{LogLine, LogRing};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

struct RingLayer {
    ring: LogRing,
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        self.ring.push(LogLine {
            time: branchgate_web_admin::rfc3339(branchgate_web_admin::now_ms()).chars().take(19).collect(),
            level: meta.level().to_string(),
            target: meta.target().to_string(),
            message: format!("{}{}", visitor.message, visitor.fields),
        });
    }
}

/// `RUST_LOG` overrides the default `info` level.
pub fn init(ring: LogRing) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd the journal adds its own timestamps.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colours only for a person at a terminal: in the journal, a log file or a test's capture
    // the escape codes are noise a field tech has to read around.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let stderr = if under_journald { stderr.without_time().boxed() } else { stderr.boxed() };
    let _ = tracing_subscriber::registry()
        .with(stderr.with_filter(filter()))
        .with(RingLayer { ring }.with_filter(filter()))
        .try_init();
}
