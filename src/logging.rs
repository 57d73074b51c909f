//! Process logs: tracing events, plain or JSON, written to stderr by a thread of their own.
//!
//! A runtime worker never writes to stderr itself. If it did, a log collector that stops
//! reading (a full pipe) would block the worker in `write` and, with it, every Check queued on
//! that worker; and a closed stderr would make tracing's own error report panic. Events go
//! through a bounded queue instead: when the writer falls behind, lines are dropped and
//! counted (`authz_log_lines_dropped_total`), as the decision log does with its entries.
//!
//! Logged values carry request data (subjects, paths, reasons quoting them). In the plain
//! format every control character of every value is escaped (`\n`, `\u{1b}`), so that a
//! subject holding a newline cannot write a line of its own; the JSON format escapes them as
//! JSON does.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format;

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
        LogFormat::Plain => builder.fmt_fields(plain_fields()).init(),
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

/// The plain format's fields: `message name=value name=value`, as tracing's default, with
/// every control character in a name or value escaped.
fn plain_fields() -> impl for<'w> format::FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(|writer, field, value| {
        let mut out = Escaping(writer);
        if field.name() == "message" {
            write!(out, "{value:?}")
        } else {
            write!(out, "{}={value:?}", field.name())
        }
    })
    .delimited(" ")
}

/// Writes through to `W`, escaping control characters as Rust's `char::escape_default` does.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(char::is_control) {
            let (clean, tail) = rest.split_at(at);
            self.0.write_str(clean)?;
            let mut chars = tail.chars();
            if let Some(c) = chars.next() {
                write!(self.0, "{}", c.escape_default())?;
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

/// `text` with its control characters escaped (`\n`, `\t`, `\u{1b}`), for a log line or a
/// header value that must stay one line.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    // Writing to a String cannot fail.
    let _ = Escaping(&mut out).write_str(text);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_control("alice"), "alice");
        assert!(matches!(escape_control("alice"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("a\nINFO forged\r\t\u{1b}[31m\u{0}é\u{85}z"),
            "a\\nINFO forged\\r\\t\\u{1b}[31m\\u{0}é\\u{85}z"
        );
    }

    #[test]
    fn plain_lines_stay_one_line_whatever_the_values() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buffer {
            type Writer = Buffer;
            fn make_writer(&'a self) -> Buffer {
                self.clone()
            }
        }

        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .fmt_fields(plain_fields())
            .finish();
        let forged = "x\n2030-01-01T00:00:00Z  INFO authz::decision: decision subject=root";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(subject = %forged, reason = forged, other = ?forged, "msg {forged}");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("msg x\\n2030"), "{text}");
        assert!(text.contains("subject=x\\n2030"), "{text}");
        assert!(text.contains("reason=\"x\\n2030"), "{text}");
    }
}
