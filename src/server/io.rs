//! A client connection's socket, with the timers hyper does not have.
//!
//! [`Guarded`] closes a connection that sends nothing, or too little: while no
//! request of the connection is in flight, a read that waits longer than the idle
//! timeout ends the connection — before its first request, between keep-alive
//! requests, after the HTTP/2 preface — and so does a request head that has taken
//! longer than that to arrive, however it trickles in (the framing reader knows
//! where heads begin and end; hyper's own header timer, which allocated a timer
//! per request, is off). A write that waits that long (a client that stopped
//! reading its response) ends it too. Request bodies have their own per-read
//! timeout, on the body (`crate::proxy`), because only the body knows it is owed
//! bytes.
//!
//! It also hands each HTTP/1 byte to the [`Framing`] reader, whose verdicts the
//! service takes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{Framing, Verdicts};

/// What the accept loop, the connection's socket and its requests share.
pub struct ConnState {
    /// Requests whose response has not been sent completely.
    in_flight: AtomicUsize,
    /// Woken when the last request in flight ends, so an idle read starts its timer.
    reader: AtomicWaker,
    pub verdicts: Verdicts,
    /// Set to close the connection gracefully (shutdown, or room for others).
    stop: AtomicBool,
    /// Woken when `stop` is set. The connection's task polls this on every wake-up:
    /// an atomic load, where a `CancellationToken` took a mutex (two per wake-up,
    /// 2.4 % of the instructions per proxied request).
    stopper: AtomicWaker,
    /// Accept order; the oldest idle connection is evicted first.
    pub serial: u64,
}

impl ConnState {
    pub fn new(serial: u64) -> Arc<ConnState> {
        Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            reader: AtomicWaker::new(),
            verdicts: Verdicts::default(),
            stop: AtomicBool::new(false),
            stopper: AtomicWaker::new(),
            serial,
        })
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Asks the connection to close gracefully.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stopper.wake();
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Ready once [`stop`](Self::stop) has been called.
    pub fn poll_stop(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_stopping() {
            return Poll::Ready(());
        }
        self.stopper.register(cx.waker());
        if self.is_stopping() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight; dropped when its response has been sent (or abandoned).
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

pub struct Guarded<S> {
    inner: S,
    state: Arc<ConnState>,
    framing: Framing,
    idle: Duration,
    /// Armed while a read waits with nothing in flight.
    read_timer: Timer,
    /// Armed while a write waits.
    write_timer: Timer,
}

struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }

    /// Arms the timer if it is not, and reports whether it has run out.
    fn expired(&mut self, after: Duration, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            self.sleep.as_mut().reset(Instant::now() + after);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<S> Guarded<S> {
    /// `max_head`: the head size past which the framing reader gives up (hyper
    /// refuses such heads itself).
    pub fn new(inner: S, state: Arc<ConnState>, idle: Duration, max_head: usize) -> Guarded<S> {
        Guarded {
            inner,
            state,
            framing: Framing::new(max_head),
            idle,
            read_timer: Timer::new(),
            write_timer: Timer::new(),
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.framing
                    .feed(&buf.filled()[before..], &this.state.verdicts);
                // A head that has begun keeps the deadline its wait started with:
                // a head trickling in is bounded as a whole, not per read.
                if !this.framing.mid_head() {
                    this.read_timer.armed = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.state.reader.register(cx.waker());
                if !this.state.is_idle() {
                    this.read_timer.armed = false;
                    return Poll::Pending;
                }
                if this.read_timer.expired(this.idle, cx) {
                    return Poll::Ready(Err(timed_out(if this.framing.mid_head() {
                        "request head too slow"
                    } else {
                        "idle connection closed"
                    })));
                }
                Poll::Pending
            }
        }
    }
}

impl<S> Guarded<S> {
    /// A write that made no progress arms the send timer; one that did disarms it.
    fn timed_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending if self.write_timer.expired(self.idle, cx) => {
                Poll::Ready(Err(timed_out("client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.write_timer.armed = false;
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.timed_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
