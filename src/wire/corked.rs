//! A buffered writer whose flush waits for the end of the burst.
//!
//! capnp-futures' write queue flushes after every message, so each RPC
//! message (every call, every return) cost its own `sendto` and its own TCP
//! segment, however many were queued behind it. Here a flush only asks for
//! one: a flusher task, woken by the request, writes the buffer out when it
//! next runs, which is after the tasks already ready on this thread, the
//! write queue among them. Messages queued meanwhile join the same buffer,
//! so a burst leaves in one system call; a lone message (one call in
//! flight) leaves as soon as the write queue goes idle, one task switch
//! later. The buffer itself still goes out whenever it fills.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::io::{AsyncWrite, BufWriter};

use super::busy_poll::BusyPoll;

/// How long a closed connection's last bytes may take to leave: a peer that
/// stops reading cannot keep the flusher (and the socket) alive forever.
const LAST_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The write half of a connection, buffered, flushed at the end of a burst.
pub struct CorkedWriter<W: AsyncWrite + Unpin> {
    shared: Rc<RefCell<Shared<W>>>,
}

struct Shared<W> {
    inner: BufWriter<W>,
    /// Told when a flush has put bytes on the wire (a server's replies).
    busy_poll: Option<BusyPoll>,
    /// A flush was asked for and has not been done yet.
    flush_wanted: bool,
    /// Bytes were written since the last flush: in the buffer here or,
    /// with none, in the writer beneath (the TLS record layer gathers them).
    unflushed: bool,
    /// The writer side is gone (the connection ended): the flusher writes
    /// what is left and stops.
    writer_dropped: bool,
    /// The flusher task, to wake when a flush is wanted.
    flusher: Option<Waker>,
    /// Everyone waiting on the socket: the write queue and the flusher
    /// both poll it, and a socket keeps one waker per direction.
    blocked: Arc<Blocked>,
    /// A failed flush, reported to the writer at its next call.
    error: Option<(io::ErrorKind, String)>,
}

/// Wakes every task that found the socket not ready.
#[derive(Default)]
struct Blocked(Mutex<Vec<Waker>>);

impl Blocked {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

impl Wake for Blocked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }
}

impl<W: AsyncWrite + Unpin> Shared<W> {
    /// Polls the buffered writer with a waker that wakes every blocked task.
    fn poll_inner<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut BufWriter<W>>, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the poll: a wake-up in between is never lost
        // (at worst one is spurious).
        self.blocked.register(cx.waker());
        let waker = Waker::from(self.blocked.clone());
        let mut inner_cx = Context::from_waker(&waker);
        op(Pin::new(&mut self.inner), &mut inner_cx)
    }

    fn take_error(&mut self) -> Option<io::Error> {
        self.error
            .take()
            .map(|(kind, message)| io::Error::new(kind, message))
    }
}

impl<W: AsyncWrite + Unpin + 'static> CorkedWriter<W> {
    /// Wraps `inner` with a buffer of `capacity` bytes and starts its
    /// flusher on this thread's local task set; each flush done is told to
    /// `busy_poll`. With `capacity` 0 writes go straight to `inner`, which
    /// then gathers them itself until flushed (the TLS record layer does).
    pub fn new(inner: W, capacity: usize, busy_poll: Option<BusyPoll>) -> CorkedWriter<W> {
        let shared = Rc::new(RefCell::new(Shared {
            inner: BufWriter::with_capacity(capacity, inner),
            busy_poll,
            flush_wanted: false,
            unflushed: false,
            writer_dropped: false,
            flusher: None,
            blocked: Arc::default(),
            error: None,
        }));
        tokio::task::spawn_local(flusher(shared.clone()));
        CorkedWriter { shared }
    }
}

/// Writes the buffer out whenever a flush is wanted; after the writer is
/// dropped, writes what is left (for at most [`LAST_FLUSH_TIMEOUT`]) and ends.
async fn flusher<W: AsyncWrite + Unpin>(shared: Rc<RefCell<Shared<W>>>) {
    let serve = std::future::poll_fn(|cx| {
        let mut s = shared.borrow_mut();
        loop {
            if !s.flush_wanted {
                if s.writer_dropped {
                    return Poll::Ready(());
                }
                s.flusher = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match s.poll_inner(cx, |w, cx| w.poll_flush(cx)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    s.flush_wanted = false;
                    s.unflushed = false;
                    if let Some(b) = &s.busy_poll {
                        b.reply_sent();
                    }
                }
                Poll::Ready(Err(e)) => {
                    s.error = Some((e.kind(), e.to_string()));
                    s.flush_wanted = false;
                    // The writer learns of it at its next call.
                    s.blocked.wake_by_ref();
                    if s.writer_dropped {
                        return Poll::Ready(());
                    }
                }
            }
        }
    });
    // Runs until the writer is gone and its last bytes are out; the last
    // flush is bounded in time.
    let writer_gone = std::future::poll_fn(|cx| {
        if shared.borrow().writer_dropped {
            Poll::Ready(())
        } else {
            shared.borrow_mut().flusher = Some(cx.waker().clone());
            Poll::Pending
        }
    });
    tokio::pin!(serve);
    tokio::select! {
        () = &mut serve => {}
        () = writer_gone => {
            let _ = tokio::time::timeout(LAST_FLUSH_TIMEOUT, serve).await;
        }
    }
}

impl<W: AsyncWrite + Unpin> Drop for CorkedWriter<W> {
    fn drop(&mut self) {
        let mut s = self.shared.borrow_mut();
        s.writer_dropped = true;
        if let Some(flusher) = s.flusher.take() {
            flusher.wake();
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CorkedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.shared.borrow_mut();
        if let Some(e) = s.take_error() {
            return Poll::Ready(Err(e));
        }
        let written = s.poll_inner(cx, |w, cx| w.poll_write(cx, buf));
        if let Poll::Ready(Ok(n)) = written {
            s.unflushed |= n > 0;
        }
        written
    }

    /// Asks the flusher for a flush and answers at once: the bytes leave
    /// when the tasks ready now have run (see the module doc).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        if let Some(e) = s.take_error() {
            return Poll::Ready(Err(e));
        }
        if s.unflushed && !s.flush_wanted {
            s.flush_wanted = true;
            if let Some(flusher) = s.flusher.take() {
                flusher.wake();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        if let Some(e) = s.take_error() {
            return Poll::Ready(Err(e));
        }
        s.poll_inner(cx, |w, cx| w.poll_close(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;

    /// Counts the writes (and, in `.2`, the flushes) that reach it.
    #[derive(Clone, Default)]
    struct Counting(Rc<RefCell<(usize, Vec<u8>, usize)>>);

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut s = self.0.borrow_mut();
            s.0 += 1;
            s.1.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.borrow_mut().2 += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_flushed_messages_leaves_in_one_write_and_a_lone_one_promptly() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let sink = Counting::default();
                let mut w = CorkedWriter::new(sink.clone(), 64 << 10, None);
                for i in 0..100u8 {
                    w.write_all(&[i; 10]).await.unwrap();
                    w.flush().await.unwrap();
                }
                assert_eq!(sink.0.borrow().0, 0, "nothing written while the burst runs");
                tokio::task::yield_now().await;
                assert_eq!(sink.0.borrow().0, 1, "the burst left in one write");
                assert_eq!(sink.0.borrow().1.len(), 1000);
                w.write_all(b"alone").await.unwrap();
                w.flush().await.unwrap();
                tokio::task::yield_now().await;
                assert_eq!(
                    sink.0.borrow().0,
                    2,
                    "a lone message leaves at the next turn"
                );
                // What is buffered when the writer goes away still leaves.
                w.write_all(b"last").await.unwrap();
                w.flush().await.unwrap();
                drop(w);
                tokio::task::yield_now().await;
                assert!(sink.0.borrow().1.ends_with(b"alonelast"));
            })
            .await;
    }

    /// With no buffer (a TLS record layer beneath gathers the bytes), each
    /// write goes straight down, and a burst still ends in one flush.
    #[tokio::test(flavor = "current_thread")]
    async fn without_a_buffer_writes_go_down_at_once_and_a_burst_is_flushed_once() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let sink = Counting::default();
                let mut w = CorkedWriter::new(sink.clone(), 0, None);
                for i in 0..100u8 {
                    w.write_all(&[i; 10]).await.unwrap();
                    w.flush().await.unwrap();
                }
                assert_eq!(sink.0.borrow().0, 100, "every write reached the stream");
                assert_eq!(sink.0.borrow().2, 0, "no flush while the burst runs");
                tokio::task::yield_now().await;
                assert_eq!(sink.0.borrow().2, 1, "the burst was flushed once");
                w.write_all(b"alone").await.unwrap();
                w.flush().await.unwrap();
                tokio::task::yield_now().await;
                assert_eq!(
                    sink.0.borrow().2,
                    2,
                    "a lone message is flushed at the next turn"
                );
                w.flush().await.unwrap();
                tokio::task::yield_now().await;
                assert_eq!(sink.0.borrow().2, 2, "nothing written: no flush");
            })
            .await;
    }
}
