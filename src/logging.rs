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

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_the_guard_writes_the_rest() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0u32; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(
                i.parse::<u32>().unwrap(),
                next[t],
                "thread {t}'s lines in order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4], "none lost");
    }

    #[test]
    fn a_single_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (mut writer, _guard) = batched(sink.clone());
        writer.write_all(b"one line\n").unwrap();
        let start = Instant::now();
        while sink.0.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "never written");
            std::thread::yield_now();
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"one line\n");
    }
}
