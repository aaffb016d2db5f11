//! Log lines on their way to stderr, written in batches by a thread of their own.
//!
//! The thread that formats a line appends it to a shared buffer (a lock held for a
//! copy) and goes on. The writer thread writes whatever has gathered with one
//! call, at once when it was idle, and otherwise at most every 50 ms (or as soon
//! as 64 KiB are waiting). A line after a quiet spell appears at once; under load
//! the writer wakes a few times a second instead of once per line (a wake-up per
//! line, on the proxy's one core, was most of what a request's log line cost).
//! This is nginx's buffered access log, with the lines of each batch in order.
//!
//! No line is lost: if stderr stops taking lines and 4 MiB are waiting, the
//! formatting threads wait for room. Dropping the [`Guard`] writes what is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch is written once this much has gathered...
const FLUSH_AT: usize = 64 * 1024;
/// ...or this long after the previous write.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// Past this, formatting threads wait for the writer.
const MAX_WAITING: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// Formatting threads wait here for room.
    room: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
    /// The writer waits for a first line (not for a batch to fill).
    idle: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bytes, not a broken invariant.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `tracing_subscriber::fmt` writes each formatted line to.
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

/// Writes what is left and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer to `out` and its guard.
pub fn batched(out: impl Write + Send + 'static) -> (BatchWriter, Guard) {
    let shared = Arc::new(Shared::default());
    let writer = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("tokenproxy-log".into())
        .spawn(move || write_batches(&writer, out))
        .ok();
    (BatchWriter(Arc::clone(&shared)), Guard { shared, thread })
}

// The writer's own thread: waiting is its job.
#[allow(clippy::disallowed_methods)]
fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closed {
            state.idle = true;
            state = shared.lines.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.idle = false;
        if state.buf.is_empty() {
            return;
        }
        if let Some(due) = last_write.map(|t| t + FLUSH_AFTER) {
            while state.buf.len() < FLUSH_AT && !state.closed {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = shared
                    .lines
                    .wait_timeout(state, left)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        std::mem::swap(&mut batch, &mut state.buf);
        shared.room.notify_all();
        drop(state);
        // Nowhere to report a failed write to: stderr is where reports go.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        last_write = Some(Instant::now());
    }
}

impl BatchWriter {
    /// Queues `line` for the writer thread (waiting while 4 MiB are queued).
    // The one wait on a runtime thread, by decision: when stderr cannot keep up
    // with 4 MiB of lines, requests wait rather than lines being dropped.
    #[allow(clippy::disallowed_methods)]
    fn append(&self, line: &[u8]) {
        let mut state = self.0.lock();
        while state.buf.len() >= MAX_WAITING && !state.closed {
            state = self.0.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let before = state.buf.len();
        state.buf.extend_from_slice(line);
        // The writer sleeps until a line arrives, or until a batch is due or full.
        if state.idle || (before < FLUSH_AT && state.buf.len() >= FLUSH_AT) {
            self.0.lines.notify_one();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_all();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the per-request log line reports.
pub struct RequestLine<'a> {
    pub level: tracing::Level,
    pub method: &'a str,
    pub route: &'a str,
    /// The `[[callers]]` name, when the listener has callers.
    pub caller: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub retried: bool,
    pub error: Option<&'a str>,
}

/// Where the per-request line goes: through tracing (JSON, colours), or, for
/// plain text, written directly into the batched log: the same bytes as tracing's
/// default text format writes for the `request` event of `tokenproxy::proxy` (the
/// test below holds the two to that), without its machinery — a tenth of the
/// instructions, and the line is most of what logging costs a request.
#[derive(Clone, Default)]
pub struct RequestLog(Option<BatchWriter>);

/// The target the line is filtered (`RUST_LOG`) and labelled by.
const TARGET: &str = "tokenproxy::proxy";

impl RequestLog {
    /// Lines through tracing's formatter, whatever it is.
    pub fn tracing() -> RequestLog {
        RequestLog(None)
    }

    /// Lines written into `writer` directly: for the plain text format without
    /// colours only, which [`RequestLog::write`] reproduces.
    pub fn plain_text(writer: BatchWriter) -> RequestLog {
        RequestLog(Some(writer))
    }

    /// Logs `line` if its level is enabled for `tokenproxy::proxy`.
    pub fn write(&self, line: &RequestLine<'_>) {
        let enabled = match line.level {
            tracing::Level::ERROR => tracing::enabled!(target: TARGET, tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: TARGET, tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(target: TARGET, tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(target: TARGET, tracing::Level::DEBUG),
            _ => tracing::enabled!(target: TARGET, tracing::Level::TRACE),
        };
        if !enabled {
            return;
        }
        let Some(out) = &self.0 else {
            crate::log_at!(
                line.level,
                target: TARGET,
                method = %line.method,
                route = line.route,
                caller = line.caller,
                status = line.status,
                duration_ms = line.duration_ms,
                retried = line.retried,
                error = line.error,
                "request"
            );
            return;
        };
        let mut text = String::with_capacity(160);
        timestamp(&mut text, time::OffsetDateTime::now_utc());
        format_request_line(&mut text, line);
        out.append(text.as_bytes());
    }
}

/// `2026-11-30T19:33:01.123456Z ` (tracing-subscriber's `SystemTime`, then a space).
fn timestamp(out: &mut String, now: time::OffsetDateTime) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z ",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    );
}

fn format_request_line(out: &mut String, line: &RequestLine<'_>) {
    use std::fmt::Write as _;
    out.push_str(match line.level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => " WARN",
        tracing::Level::INFO => " INFO",
        tracing::Level::DEBUG => "DEBUG",
        _ => "TRACE",
    });
    out.push_str(" tokenproxy::proxy: request method=");
    out.push_str(line.method);
    let _ = write!(out, " route={:?}", line.route);
    if let Some(caller) = line.caller {
        let _ = write!(out, " caller={caller:?}");
    }
    let _ = write!(
        out,
        " status={} duration_ms={:?} retried={}",
        line.status, line.duration_ms, line.retried
    );
    if let Some(error) = line.error {
        let _ = write!(out, " error={error:?}");
    }
    out.push('\n');
}

#[cfg(test)]
#[path = "logging_tests.rs"]
mod tests;
