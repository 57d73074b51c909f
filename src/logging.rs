//! Process logs: tracing events, plain or JSON, written to stderr by a thread of their own.
//!
//! A runtime worker never writes to stderr itself. If it did, a log collector that stops
//! reading (a full pipe) would block the worker in `write` and, with it, every Check queued on
//! that worker; and a closed stderr would make tracing's own error report panic. Events go
//! through a bounded queue instead: when the writer falls behind, lines are dropped and
//! counted (`authz_log_lines_dropped_total`), as the decision log does with its entries.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::LogFormat;

/// Lines waiting for the writer thread before new ones are dropped (a few hundred KiB at most).
pub const BUFFERED_LINES: usize = 8192;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread alive; dropping it writes out what is queued (for up to a second).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber (level from `RUST_LOG`, default `info`). Call once.
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("authz-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a person at a terminal, not in collected logs.
        .with_ansi(std::io::stderr().is_terminal())
        // Belt and braces: the writer above never reports a failed write (its thread ignores
        // them), but should one reach the fmt layer, its report would go out with
        // `eprintln!`, which panics when stderr is closed.
        .log_internal_errors(false);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    LogGuard { _writer: guard }
}

/// Log lines dropped so far because the writer fell behind (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}
