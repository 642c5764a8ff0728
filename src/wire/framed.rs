//! The receive side of a connection: Cap'n Proto frames are buffered as
//! their bytes arrive and handed to capnp-rpc only once whole.
//!
//! capnp's reader allocates a message's body as soon as it has read the
//! segment table, for whatever size the table claims: a 16-byte header
//! claiming 64 MiB costs the server 64 MiB before a byte of body has
//! arrived. [`FramedReader`] reads the table itself, refuses a message over
//! the limit (exactly: a body of `max_message_bytes` is served, one word
//! more closes the connection), and holds back the table until the whole
//! body is in its buffer, so what a peer makes the server hold is what it
//! sent. Its buffer grows with the bytes received (a quarter ahead at most),
//! is charged to the node's [`ByteBudget`] beyond its base size, and shrinks
//! back once the connection has been quiet for 100 ms. While the budget is
//! spent, no connection reads from its socket (backpressure). The
//! connection's [`Activity`] sees whole messages and large ones arriving,
//! and can end the connection from this side ([`Activity::close`]).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures::io::AsyncRead;

use super::busy_poll::BusyPoll;

/// A buffer's size when no large message is in it (also the most read
/// from the socket at once).
pub const BASE_BUFFER_BYTES: usize = 64 << 10;

/// A new connection's buffer: doubled (up to [`BASE_BUFFER_BYTES`]) each
/// time a read fills it, so an idle or quiet connection holds 8 KiB.
const FIRST_BUFFER_BYTES: usize = 8 << 10;

/// A grown buffer left empty this long, its socket quiet, shrinks back.
const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// capnp's own limit on segments in one message.
const MAX_SEGMENTS: usize = 512;

/// Bytes in flight on a node, across every connection: message bytes
/// buffered before they are whole, the parameters of calls being served
/// (charged by the service), and answers not yet sent (charged by each
/// connection's [`Outbox`](super::outbox::Outbox)). Once `limit` is
/// reached no connection reads from its socket, and no read reserves an
/// answer, until some are given back.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
    waiting: Mutex<Vec<Waker>>,
    /// Shows `used` (a metric), when set.
    shown: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl ByteBudget {
    pub fn new(limit: usize) -> ByteBudget {
        ByteBudget {
            limit,
            used: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
            shown: None,
        }
    }

    /// Keeps `gauge` at the bytes charged.
    pub fn shown_in(mut self, gauge: prometheus_client::metrics::gauge::Gauge) -> ByteBudget {
        self.shown = Some(gauge);
        self
    }

    fn show(&self, used: usize) {
        if let Some(g) = &self.shown {
            g.set(used as i64);
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Charges `bytes` already in memory (a call's parameters): never
    /// waits; readers stop while the total is over the limit. Given back
    /// when the charge is dropped.
    pub fn charge(self: &Rc<Self>, bytes: usize) -> Charge {
        self.take(bytes);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    pub(super) fn take(&self, bytes: usize) {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.show(before + bytes);
    }

    pub(super) fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.show(before - bytes);
        if before >= self.limit && before - bytes < self.limit {
            let waiting = std::mem::take(&mut *self.lock());
            for w in waiting {
                w.wake();
            }
        }
    }

    /// Ready when a reader may read from its socket; else registers `cx`.
    pub(super) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.used() < self.limit {
            return Poll::Ready(());
        }
        self.lock().push(cx.waker().clone());
        // Given back between the check and the registration?
        if self.used() < self.limit {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        // A panic while holding this lock leaves only a list of wakers.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes charged to a [`ByteBudget`] until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Rc<ByteBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// What a connection has received lately: when its last whole message
/// came, and the large message (over the base buffer, so charged to the
/// budget) it is receiving now; shared with whoever times connections out.
#[derive(Debug)]
pub struct Activity {
    last: Cell<Instant>,
    messages: Cell<u64>,
    large: Cell<Option<(Instant, usize)>>,
    /// Woken when a large message starts.
    changed: tokio::sync::Notify,
    /// Set by [`Activity::close`]: the reader fails with it.
    closed: Cell<Option<&'static str>>,
    /// The reader's task, to wake when closed.
    reader: std::cell::RefCell<Option<Waker>>,
}

impl Activity {
    pub fn new() -> Rc<Activity> {
        Rc::new(Activity {
            last: Cell::new(Instant::now()),
            messages: Cell::new(0),
            large: Cell::new(None),
            changed: tokio::sync::Notify::new(),
            closed: Cell::new(None),
            reader: std::cell::RefCell::new(None),
        })
    }

    /// Ends the connection from its receiving side: the reader fails with
    /// `why` at once (woken if it waits), so capnp-rpc disconnects as on a
    /// broken connection and releases what the connection held. (Dropping
    /// a running RPC system instead can leave its connection state in a
    /// reference cycle: found by the `rpc_messages` fuzzer.)
    pub fn close(&self, why: &'static str) {
        self.closed.set(Some(why));
        if let Some(waker) = self.reader.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Why the connection was closed, once it was.
    pub fn closed(&self) -> Option<&'static str> {
        self.closed.get()
    }

    /// Remembers the reader's task while it waits.
    fn park(&self, cx: &Context<'_>) {
        let mut reader = self.reader.borrow_mut();
        match &*reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *reader = Some(cx.waker().clone()),
        }
    }

    /// The large message being received: since when, and its length.
    pub fn large_message(&self) -> Option<(Instant, usize)> {
        self.large.get()
    }

    /// Resolves when the first whole message has arrived (the deadline
    /// changes from the first message's to the idle one), or a large message
    /// starts arriving.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn note_large(&self, len: usize) {
        if self.large.get().is_none() {
            self.large.set(Some((Instant::now(), len)));
            self.changed.notify_one();
        }
    }

    /// When the last whole message arrived (or the connection opened).
    pub fn last_message(&self) -> Instant {
        self.last.get()
    }

    /// Whole messages received so far.
    pub fn messages(&self) -> u64 {
        self.messages.get()
    }

    fn note_message(&self) {
        self.last.set(Instant::now());
        self.messages.set(self.messages.get() + 1);
        self.large.set(None);
        if self.messages.get() == 1 {
            self.changed.notify_one();
        }
    }
}

/// What a connection may receive.
#[derive(Debug, Clone)]
pub struct ReceiveLimits {
    /// Largest message body (the segments, not the table), in bytes.
    pub max_message_bytes: usize,
    /// The node's budget of request bytes in flight (`None`: unlimited, as
    /// on a client).
    pub budget: Option<Rc<ByteBudget>>,
    /// Where whole messages are noted (for idle timeouts).
    pub activity: Option<Rc<Activity>>,
    /// Refuse `Resolve` messages (a peer resolving a promise capability it
    /// exported): see [`refuse_promise_resolutions`](Self::refuse_promise_resolutions).
    pub refuse_resolve: bool,
    /// Large messages' bodies go straight to capnp: see
    /// [`trusting_the_sender`](Self::trusting_the_sender).
    pub in_place: bool,
}

impl ReceiveLimits {
    pub fn new(max_message_bytes: usize) -> ReceiveLimits {
        ReceiveLimits {
            max_message_bytes,
            budget: None,
            activity: None,
            refuse_resolve: false,
            in_place: false,
        }
    }

    /// A client's connections: the server it dialled is trusted not to
    /// claim more than it sends, so a message larger than the base buffer
    /// (a range read's answer, a replication batch), once its table has
    /// passed the size limit, is read from the socket straight into
    /// capnp's buffer instead of through this reader's: one copy of every
    /// large answer less, and fewer, larger reads (BENCHMARKS.md, "A client
    /// reads large answers in place"). A server never trusts its clients so.
    pub fn trusting_the_sender(mut self) -> ReceiveLimits {
        self.in_place = true;
        self
    }

    /// A server's connections: clients of the `Log` interface never pass
    /// promise capabilities, so a `Resolve` message from one closes the
    /// connection. capnp-rpc 0.27 can leave a connection's state in a
    /// reference cycle when a client resolves imports in some orders and
    /// hangs up (found by the `rpc_messages` fuzzer; ~6 KB a connection,
    /// repeatable by a hostile client).
    pub fn refuse_promise_resolutions(mut self) -> ReceiveLimits {
        self.refuse_resolve = true;
        self
    }

    pub fn with_budget(mut self, budget: Option<Rc<ByteBudget>>) -> ReceiveLimits {
        self.budget = budget;
        self
    }

    pub fn with_activity(mut self, activity: Rc<Activity>) -> ReceiveLimits {
        self.activity = Some(activity);
        self
    }
}

/// Buffers whole Cap'n Proto frames from `inner` (see the module doc).
pub struct FramedReader<R> {
    inner: R,
    limits: ReceiveLimits,
    /// `buf[start..ready]`: whole messages not yet read by capnp;
    /// `buf[ready..filled]`: the start of the next one.
    buf: Vec<u8>,
    start: usize,
    ready: usize,
    filled: usize,
    /// Length (table and body) of the message at `ready`, once its table is in.
    next_len: Option<usize>,
    /// Bytes of `buf` charged to the budget (its capacity beyond the base).
    charged: usize,
    /// The stream ended (bytes of a partial message left are an error).
    eof: bool,
    /// Started when a grown buffer went empty with the socket quiet.
    quiet_since: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes of a large message read in place still to come (what is
    /// buffered of it first, then straight from `inner`).
    in_place_left: usize,
    /// Told when bytes arrive (they end the thread's idle time).
    busy_poll: Option<BusyPoll>,
}

impl<R> FramedReader<R> {
    pub fn new(inner: R, limits: ReceiveLimits) -> FramedReader<R> {
        FramedReader {
            inner,
            limits,
            buf: Vec::new(),
            start: 0,
            ready: 0,
            filled: 0,
            next_len: None,
            charged: 0,
            eof: false,
            quiet_since: None,
            in_place_left: 0,
            busy_poll: None,
        }
    }

    /// Tells `busy_poll` of the bytes this reader receives.
    pub fn with_busy_poll(mut self, busy_poll: Option<BusyPoll>) -> FramedReader<R> {
        self.busy_poll = busy_poll;
        self
    }

    fn arrived(&self) {
        if let Some(b) = &self.busy_poll {
            b.bytes_arrived();
        }
    }

    /// Hands capnp the next bytes of a large message read in place: what
    /// is buffered of it, then reads from the socket into `out`, never past
    /// the message's end.
    fn poll_in_place(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + Unpin,
    {
        let want = out.len().min(self.in_place_left);
        let n = if self.start < self.filled {
            // Every buffered byte is this message's: it was not whole.
            let n = want.min(self.filled - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            self.ready = self.start;
            n
        } else {
            match Pin::new(&mut self.inner).poll_read(cx, &mut out[..want]) {
                Poll::Ready(Ok(0)) if want > 0 => {
                    self.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a message",
                    )));
                }
                Poll::Ready(Ok(n)) => {
                    self.arrived();
                    n
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        };
        self.in_place_left -= n;
        if self.in_place_left == 0
            && let Some(a) = &self.limits.activity
        {
            a.note_message();
        }
        Poll::Ready(Ok(n))
    }

    /// Finds the length of the message at `ready` and marks every whole
    /// message as ready. Errors on a table over the limits.
    fn frame(&mut self) -> io::Result<()> {
        loop {
            let have = self.filled - self.ready;
            let len = match self.next_len {
                Some(len) => len,
                None => {
                    let Some(len) = message_len(
                        &self.buf[self.ready..self.filled],
                        self.limits.max_message_bytes,
                    )?
                    else {
                        return Ok(());
                    };
                    self.next_len = Some(len);
                    len
                }
            };
            if have < len {
                if len > BASE_BUFFER_BYTES
                    && let Some(a) = &self.limits.activity
                {
                    a.note_large(len);
                }
                return Ok(());
            }
            if self.limits.refuse_resolve && is_resolve(&self.buf[self.ready..self.ready + len]) {
                return Err(invalid(
                    "a Resolve message: promise capabilities are not accepted from clients"
                        .to_string(),
                ));
            }
            self.ready += len;
            self.next_len = None;
            if let Some(a) = &self.limits.activity {
                a.note_message();
            }
        }
    }

    /// Makes room to read: drops what capnp has read (moving a partial
    /// message to the front), then grows the buffer towards the message
    /// being received, a quarter at a time.
    fn make_room(&mut self) {
        if self.start == self.filled {
            self.start = 0;
            self.ready = 0;
            self.filled = 0;
        } else if self.start > 0 && self.filled == self.buf.len() {
            self.buf.copy_within(self.start..self.filled, 0);
            self.ready -= self.start;
            self.filled -= self.start;
            self.start = 0;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; FIRST_BUFFER_BYTES];
        }
        if self.filled == self.buf.len() {
            // Grows by a quarter at a time: the bytes touched stay within
            // a quarter of those received (the capacity past them is only
            // address space until written).
            let needed = self.ready + self.next_len.unwrap_or(0);
            let step = (self.buf.len() / 4).max(BASE_BUFFER_BYTES);
            let grown = (self.buf.len() + step).min(needed.max(self.buf.len() + 8));
            self.buf.resize(grown, 0);
            self.recharge();
        }
    }

    /// Shrinks a buffer grown for large messages back to the base once it
    /// has held nothing, with the socket quiet, for [`SHRINK_AFTER`]: a
    /// busy connection keeps it from one large message to the next (no
    /// regrowth, no zero-filling), a quiet one gives it back (a timer
    /// wakes the reader for that).
    fn shrink_when_quiet(&mut self, cx: &mut Context<'_>) {
        if self.start != self.filled || self.buf.len() <= BASE_BUFFER_BYTES {
            self.quiet_since = None;
            return;
        }
        let quiet = self
            .quiet_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(SHRINK_AFTER)));
        if quiet.as_mut().poll(cx).is_ready() {
            self.quiet_since = None;
            self.start = 0;
            self.ready = 0;
            self.filled = 0;
            self.buf = vec![0; BASE_BUFFER_BYTES];
            self.recharge();
        }
    }

    /// Charges the buffer's size beyond the base to the budget.
    fn recharge(&mut self) {
        let Some(budget) = &self.limits.budget else {
            return;
        };
        let now = self.buf.len().saturating_sub(BASE_BUFFER_BYTES);
        if now > self.charged {
            budget.take(now - self.charged);
        } else {
            budget.give_back(self.charged - now);
        }
        self.charged = now;
    }
}

impl<R> Drop for FramedReader<R> {
    fn drop(&mut self) {
        if let Some(budget) = &self.limits.budget {
            budget.give_back(self.charged);
        }
    }
}

/// The length (table and body) of the message whose table starts `bytes`,
/// `None` until the whole table is there.
fn message_len(bytes: &[u8], max_body: usize) -> io::Result<Option<usize>> {
    let Some(first) = bytes.get(..4) else {
        return Ok(None);
    };
    let segments = u32::from_le_bytes([first[0], first[1], first[2], first[3]]) as usize + 1;
    if segments > MAX_SEGMENTS {
        return Err(invalid(format!(
            "message of {segments} segments: at most {MAX_SEGMENTS}"
        )));
    }
    // The count and one size per segment, padded to a word.
    let table = (segments / 2 + 1) * 8;
    let Some(sizes) = bytes.get(4..4 + 4 * segments) else {
        return Ok(None);
    };
    let words: u64 = sizes
        .chunks_exact(4)
        .map(|s| u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])))
        .sum();
    let body = words * 8;
    if body > max_body as u64 {
        return Err(invalid(format!(
            "message of {body} bytes exceeds the limit of {max_body}"
        )));
    }
    Ok(Some(table + body as usize))
}

/// Whether the whole frame `bytes` is an RPC `Resolve` message (a frame
/// capnp cannot read is left for capnp-rpc to refuse). Every message a
/// client sends passes here: its tag is read straight from the bytes when
/// the frame has the usual shape, and capnp parses only a `Resolve` or an
/// unusual frame (the parse was about 1,000 instructions per message).
fn is_resolve(bytes: &[u8]) -> bool {
    match root_union_tag(bytes) {
        Some(tag) if tag != RESOLVE_TAG => false,
        _ => parses_as_resolve(bytes),
    }
}

/// The RPC `Message` union's tag of `Resolve` (its members are numbered
/// in the order of their ordinals in rpc.capnp).
const RESOLVE_TAG: u16 = 5;

/// The first 16 bits of the root struct's data section (where the RPC
/// `Message` keeps its union's tag) in a one-segment frame whose root is a
/// struct pointer to data inside the segment; `None` for any other shape.
fn root_union_tag(bytes: &[u8]) -> Option<u16> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let table = word(0)?;
    // One segment (the count is stored minus one), `words` long.
    if table as u32 != 0 {
        return None;
    }
    let words = (table >> 32) as usize;
    let root = word(8)?;
    // A struct pointer (tag 0) with a data section: its offset counts words
    // from the end of the pointer, signed, in the upper 30 bits of its low half.
    if root & 3 != 0 || (root >> 32) as u16 == 0 {
        return None;
    }
    let offset = (root as u32 as i32) >> 2;
    let data = usize::try_from(1 + i64::from(offset)).ok()?;
    if data >= words {
        return None;
    }
    let at = 8 + data * 8;
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn parses_as_resolve(bytes: &[u8]) -> bool {
    let mut slice = bytes;
    let Ok(message) = capnp::serialize::read_message_from_flat_slice_no_alloc(
        &mut slice,
        capnp::message::ReaderOptions::new(),
    ) else {
        return false;
    };
    let Ok(root) = message.get_root::<capnp_rpc::rpc_capnp::message::Reader<'_>>() else {
        return false;
    };
    matches!(
        root.which(),
        Ok(capnp_rpc::rpc_capnp::message::Which::Resolve(_))
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<R: AsyncRead + Unpin> AsyncRead for FramedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(why) = this.limits.activity.as_ref().and_then(|a| a.closed.get()) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
        }
        let pending = |this: &Self, cx: &Context<'_>| {
            if let Some(a) = &this.limits.activity {
                a.park(cx);
            }
            Poll::Pending
        };
        loop {
            if this.in_place_left > 0 {
                return match this.poll_in_place(cx, out) {
                    Poll::Pending => pending(this, cx),
                    ready => ready,
                };
            }
            if this.start < this.ready {
                let n = out.len().min(this.ready - this.start);
                out[..n].copy_from_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                return Poll::Ready(Ok(n));
            }
            if this.limits.in_place
                && !this.limits.refuse_resolve
                && let Some(len) = this.next_len.filter(|&len| len > BASE_BUFFER_BYTES)
            {
                // The message at `ready` is large and not whole: the rest
                // of it goes straight to capnp.
                this.next_len = None;
                this.in_place_left = len;
                continue;
            }
            if this.eof {
                return Poll::Ready(if this.filled > this.ready {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a message",
                    ))
                } else {
                    Ok(0)
                });
            }
            if let Some(budget) = &this.limits.budget
                && budget.poll_room(cx).is_pending()
            {
                return pending(this, cx);
            }
            this.make_room();
            let filled = this.filled;
            let n = match Pin::new(&mut this.inner).poll_read(cx, &mut this.buf[filled..]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.shrink_when_quiet(cx);
                    return pending(this, cx);
                }
            };
            this.quiet_since = None;
            if n == 0 {
                this.eof = true;
                continue;
            }
            this.filled += n;
            this.arrived();
            if this.filled == this.buf.len() && this.buf.len() < BASE_BUFFER_BYTES {
                // The socket had more than fitted: read more at once.
                let len = (this.buf.len() * 2).min(BASE_BUFFER_BYTES);
                this.buf.resize(len, 0);
            }
            this.frame()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::AsyncReadExt;

    fn frame(words: u32) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&words.to_le_bytes());
        f.extend(std::iter::repeat_n(7u8, words as usize * 8));
        f
    }

    /// A reader that hands out `chunks` one per read.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl Chunks {
        fn new(chunks: Vec<Vec<u8>>) -> Chunks {
            Chunks(chunks.into())
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let Some(chunk) = self.0.front_mut() else {
                return Poll::Ready(Ok(0));
            };
            let n = out.len().min(chunk.len());
            out[..n].copy_from_slice(&chunk[..n]);
            if n == chunk.len() {
                self.0.pop_front();
            } else {
                chunk.drain(..n);
            }
            Poll::Ready(Ok(n))
        }
    }

    fn read_all(chunks: Vec<Vec<u8>>, max: usize) -> io::Result<Vec<u8>> {
        let mut r = FramedReader::new(Chunks::new(chunks), ReceiveLimits::new(max));
        let mut out = Vec::new();
        futures::executor::block_on(r.read_to_end(&mut out))?;
        Ok(out)
    }

    #[tokio::test]
    async fn bytes_received_after_a_reply_end_the_idle_time_the_poller_adapts_to() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let poll = BusyPoll::start(std::time::Duration::from_micros(200_000));
                let poll = poll.expect("a poller");
                assert!(poll.next_window().is_zero(), "none before any idle time");
                poll.reply_sent();
                let mut r = FramedReader::new(Chunks::new(vec![frame(2)]), ReceiveLimits::new(64))
                    .with_busy_poll(Some(poll.clone()));
                let mut out = Vec::new();
                r.read_to_end(&mut out).await.unwrap();
                assert_eq!(out, frame(2));
                assert_eq!(
                    poll.next_window(),
                    std::time::Duration::from_micros(50),
                    "an idle time within the most opens the first window"
                );
            })
            .await;
    }

    #[test]
    fn a_message_exactly_at_the_limit_passes_and_one_word_more_is_refused() {
        let at = frame(1024);
        assert_eq!(read_all(vec![at.clone()], 1024 * 8).unwrap(), at);
        let over = read_all(vec![frame(1025)], 1024 * 8).unwrap_err();
        assert_eq!(over.kind(), io::ErrorKind::InvalidData);
        assert!(
            over.to_string()
                .contains("8200 bytes exceeds the limit of 8192")
        );
    }

    #[test]
    fn messages_split_anywhere_come_out_whole_and_in_order() {
        let mut all = Vec::new();
        for words in [1, 0, 9000, 3, 20000] {
            all.extend(frame(words));
        }
        // A three-segment message: table of 4 + 3*4 bytes padded to 16.
        let mut three = Vec::new();
        for v in [2u32, 1, 2, 3] {
            three.extend_from_slice(&v.to_le_bytes());
        }
        three.extend(std::iter::repeat_n(1u8, 6 * 8));
        all.extend(&three);
        for chunk in [7, 4096, 100_000] {
            let chunks = all.chunks(chunk).map(<[u8]>::to_vec).collect();
            assert_eq!(read_all(chunks, 1 << 20).unwrap(), all, "chunk {chunk}");
        }
    }

    /// The messages of `messages_split_anywhere_...`, read by a client's
    /// reader (large bodies in place), in chunks of `chunk` bytes.
    fn read_trusting(all: &[u8], chunk: usize, max: usize) -> (io::Result<Vec<u8>>, usize) {
        let chunks = all.chunks(chunk).map(<[u8]>::to_vec).collect();
        let limits = ReceiveLimits::new(max).trusting_the_sender();
        let mut r = FramedReader::new(Chunks::new(chunks), limits);
        let mut out = Vec::new();
        let read = futures::executor::block_on(r.read_to_end(&mut out)).map(|_| out);
        (read, r.buf.len())
    }

    #[test]
    fn a_client_reads_large_messages_in_place_whole_and_in_order() {
        let mut all = Vec::new();
        for words in [1, 0, 9000, 3, 20000, 2, 40000] {
            all.extend(frame(words));
        }
        for chunk in [7, 4096, 100_000, 1 << 20] {
            let (read, buffered) = read_trusting(&all, chunk, 1 << 20);
            assert_eq!(read.unwrap(), all, "chunk {chunk}");
            // The buffer never grew for the 72, 160 and 320 KB bodies.
            assert!(buffered <= BASE_BUFFER_BYTES, "chunk {chunk}: {buffered}");
        }
    }

    #[test]
    fn a_client_still_refuses_a_message_over_the_limit_and_a_cut_one() {
        let (over, _) = read_trusting(&frame(20_001), 4096, 20_000 * 8);
        assert_eq!(over.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let (at, _) = read_trusting(&frame(20_000), 4096, 20_000 * 8);
        assert_eq!(at.unwrap(), frame(20_000));
        let mut cut = frame(1);
        cut.extend(&frame(20_000)[..100_000]);
        let (cut, _) = read_trusting(&cut, 4096, 1 << 20);
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_header_alone_holds_no_memory_for_its_claim() {
        let budget = Rc::new(ByteBudget::new(1 << 30));
        let mut header = Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(8u32 << 20).to_le_bytes()); // 64 MiB
        header.extend(std::iter::repeat_n(0u8, 1000));
        let limits = ReceiveLimits::new(64 << 20).with_budget(Some(budget.clone()));
        let mut r = FramedReader::new(Chunks::new(vec![header]), limits);
        let mut out = [0u8; 8];
        let read = futures::executor::block_on(r.read(&mut out));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(r.buf.len() <= BASE_BUFFER_BYTES, "{}", r.buf.len());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_large_message_is_charged_while_buffered_and_given_back_once_quiet() {
        use tokio::io::AsyncWriteExt;
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let budget = Rc::new(ByteBudget::new(1 << 30));
        let big = frame(1 << 17); // 1 MiB
        let limits = ReceiveLimits::new(2 << 20).with_budget(Some(budget.clone()));
        let (mut peer, ours) = tokio::io::duplex(64 << 10);
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            peer.write_all(&sent).await.unwrap();
            peer // kept open: the socket goes quiet, not closed
        });
        let mut r = FramedReader::new(ours.compat(), limits);
        let mut first = [0u8; 8];
        r.read_exact(&mut first).await.unwrap();
        // Whole before any byte came out; the growth is charged.
        assert!(budget.used() >= (1 << 20) - BASE_BUFFER_BYTES);
        assert!(r.buf.len() <= big.len() + big.len() / 4);
        let mut rest = vec![0u8; big.len() - 8];
        r.read_exact(&mut rest).await.unwrap();
        assert!(
            r.buf.len() > BASE_BUFFER_BYTES,
            "kept while the connection is busy"
        );
        // Quiet for longer than SHRINK_AFTER: the timer wakes the reader.
        let mut more = [0u8; 1];
        let waited = tokio::time::timeout(SHRINK_AFTER * 3, r.read(&mut more)).await;
        assert!(waited.is_err(), "nothing more was sent");
        assert_eq!(r.buf.len(), BASE_BUFFER_BYTES, "shrunk back");
        assert_eq!(budget.used(), 0);
        drop(writer.await.unwrap());
    }

    #[test]
    fn a_server_refuses_promise_resolutions_and_passes_other_messages() {
        use capnp_rpc::rpc_capnp::message;
        let frame_of = |build: &dyn Fn(message::Builder<'_>)| {
            let mut m = capnp::message::Builder::new_default();
            build(m.init_root());
            capnp::serialize::write_message_to_words(&m)
        };
        let resolve = frame_of(&|m| m.init_resolve().set_promise_id(1));
        let bootstrap = frame_of(&|m| m.init_bootstrap().set_question_id(0));
        let server = |bytes: &[u8]| {
            let mut r = FramedReader::new(
                Chunks::new(vec![bytes.to_vec()]),
                ReceiveLimits::new(1 << 20).refuse_promise_resolutions(),
            );
            let mut out = Vec::new();
            futures::executor::block_on(r.read_to_end(&mut out))
        };
        assert_eq!(server(&bootstrap).unwrap(), bootstrap.len());
        let refused = server(&[bootstrap.clone(), resolve.clone()].concat()).unwrap_err();
        assert!(refused.to_string().contains("Resolve"), "{refused}");
        // A client's reader lets the server's messages through as they are.
        assert_eq!(read_all(vec![resolve.clone()], 1 << 20).unwrap(), resolve);
    }

    /// Frames of the RPC messages a client sends, one per union member.
    fn rpc_frames() -> Vec<(&'static str, Vec<u8>)> {
        use capnp_rpc::rpc_capnp::message;
        let frame_of = |build: &dyn Fn(message::Builder<'_>)| {
            let mut m = capnp::message::Builder::new_default();
            build(m.init_root());
            capnp::serialize::write_message_to_words(&m)
        };
        vec![
            ("resolve", frame_of(&|m| m.init_resolve().set_promise_id(7))),
            (
                "bootstrap",
                frame_of(&|m| m.init_bootstrap().set_question_id(0)),
            ),
            (
                "call",
                frame_of(&|m| {
                    let mut call = m.init_call();
                    call.set_question_id(3);
                    call.set_method_id(2);
                    call.init_params().init_content().set_as("a value").unwrap();
                }),
            ),
            ("finish", frame_of(&|m| m.init_finish().set_question_id(3))),
            ("release", frame_of(&|m| m.init_release().set_id(1))),
            ("abort", frame_of(&|m| m.init_abort().set_reason("gone"))),
            (
                "disembargo",
                frame_of(&|m| m.init_disembargo().init_context().set_sender_loopback(1)),
            ),
            (
                "unimplemented",
                frame_of(&|m| m.init_unimplemented().init_finish().set_question_id(1)),
            ),
        ]
    }

    #[test]
    fn the_tag_read_from_the_bytes_is_the_one_capnp_reads() {
        use capnp_rpc::rpc_capnp::message;
        for (name, frame) in rpc_frames() {
            let mut slice = &frame[..];
            let m = capnp::serialize::read_message_from_flat_slice(&mut slice, Default::default())
                .unwrap();
            let root: message::Reader<'_> = m.get_root().unwrap();
            let tag = root_union_tag(&frame).unwrap_or_else(|| panic!("{name}: no tag read"));
            assert_eq!(
                tag == RESOLVE_TAG,
                matches!(root.which(), Ok(message::Which::Resolve(_))),
                "{name}: tag {tag}"
            );
            assert_eq!(is_resolve(&frame), name == "resolve", "{name}");
        }
    }

    #[test]
    fn the_tag_is_found_where_the_root_pointer_points() {
        // The same messages with a word between the root pointer and the
        // root struct (valid Cap'n Proto: the pointer's offset says so).
        for (name, frame) in rpc_frames() {
            let mut shifted = frame[..16].to_vec();
            let words = u32::from_le_bytes(frame[4..8].try_into().unwrap()) + 1;
            shifted[4..8].copy_from_slice(&words.to_le_bytes());
            let offset = u32::from_le_bytes(frame[8..12].try_into().unwrap()) + (1 << 2);
            shifted[8..12].copy_from_slice(&offset.to_le_bytes());
            shifted.extend_from_slice(&[0u8; 8]);
            shifted.extend_from_slice(&frame[16..]);
            assert_eq!(is_resolve(&shifted), name == "resolve", "{name}");
            assert_eq!(parses_as_resolve(&shifted), name == "resolve", "{name}");
        }
    }

    #[test]
    fn frames_of_another_shape_are_parsed_by_capnp() {
        let (_, resolve) = rpc_frames().swap_remove(0);
        // Two segments: the table says so; only capnp can tell.
        let mut two = resolve.clone();
        two[0] = 1;
        assert_eq!(root_union_tag(&two), None);
        // A far pointer as the root, a null root, a short frame.
        let mut far = resolve.clone();
        far[8] |= 2;
        assert_eq!(root_union_tag(&far), None);
        assert_eq!(root_union_tag(&[0u8; 16]), None);
        assert_eq!(root_union_tag(&resolve[..12]), None);
        // A root whose data would lie past the segment's end.
        let mut past = resolve.clone();
        past[8..12].copy_from_slice(&(1000u32 << 2).to_le_bytes());
        assert_eq!(root_union_tag(&past), None);
    }

    proptest::proptest! {
        /// Whatever the bytes, the shortcut answers as the parse does.
        #[test]
        fn the_shortcut_agrees_with_the_parse_on_any_bytes(
            which in 0usize..8,
            flips in proptest::collection::vec((0usize..256, proptest::num::u8::ANY), 0..4),
        ) {
            let (_, mut frame) = rpc_frames().swap_remove(which);
            for (at, byte) in flips {
                let at = at % frame.len();
                frame[at] = byte;
            }
            proptest::prop_assert_eq!(is_resolve(&frame), parses_as_resolve(&frame));
        }
    }

    #[test]
    fn a_spent_budget_stops_reading_until_given_back() {
        let budget = Rc::new(ByteBudget::new(100));
        let call = budget.charge(100);
        let limits = ReceiveLimits::new(1 << 20).with_budget(Some(budget.clone()));
        let mut r = FramedReader::new(Chunks::new(vec![frame(1)]), limits);
        let mut out = [0u8; 16];
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut r).poll_read(&mut cx, &mut out).is_pending());
        drop(call);
        assert!(matches!(
            Pin::new(&mut r).poll_read(&mut cx, &mut out),
            Poll::Ready(Ok(16))
        ));
    }
}
