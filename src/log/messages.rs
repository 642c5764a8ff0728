//! The messages a [`super::LogActor`] answers, each with its own result type.

use std::ops::Range;

use actix::Message;

use super::error::LogError;
use crate::storage::{Frames, RecordBatch, Records, Values};

/// Appends records (one or a batch) in order. Answers their offsets once
/// they have reached the kernel and the sync policy is met (under `always`,
/// after `fdatasync`): an answered append survives a crash of the process.
#[derive(Debug, Message)]
#[rtype(result = "Result<Range<u64>, LogError>")]
pub struct Append {
    pub records: Records,
    /// The produce stream this batch belongs to. Once a batch of a session
    /// fails, every later batch of it is refused (not appended), so a
    /// stream's records never land out of order behind a failed batch.
    pub session: Option<u64>,
    /// A replica's batch while it is far behind its leader: its store
    /// writes behind (`storage::write_behind`), keeping the copy out of
    /// the page cache.
    pub write_behind: bool,
}

impl Append {
    pub fn one(record: Vec<u8>) -> Append {
        Append::batch(vec![record])
    }

    pub fn batch(records: Vec<Vec<u8>>) -> Append {
        Append::values(records.into_iter().collect())
    }

    /// A batch already packed as the RPC front packs a call's values.
    pub fn values(values: Values) -> Append {
        Append {
            records: Records::Values(values),
            session: None,
            write_behind: false,
        }
    }

    /// A batch of the produce stream `session` (see [`new_session`]).
    pub fn in_session(records: Vec<Vec<u8>>, session: u64) -> Append {
        Append {
            session: Some(session),
            ..Append::batch(records)
        }
    }

    /// A replica's batch: its leader's frames, written as they are at the
    /// offsets they carry. The segment that would assign the first one
    /// checks it is its next; anything else is refused with
    /// [`LogError::OffsetMismatch`] and nothing is written.
    pub fn frames(frames: Frames) -> Append {
        Append {
            records: Records::Frames(frames),
            session: None,
            write_behind: false,
        }
    }

    /// The same batch, written behind when `far_behind` (see
    /// [`Append::write_behind`]).
    pub fn written_behind(self, far_behind: bool) -> Append {
        Append {
            write_behind: far_behind,
            ..self
        }
    }
}

/// An [`Append`] whose answer goes to `reply`. Sent with `do_send`, which
/// always enqueues: `Addr::send` holds a message back while the mailbox is
/// at capacity, so a later append could overtake an earlier one. Use
/// [`append_in_order`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AppendInOrder {
    pub append: Append,
    pub reply: tokio::sync::oneshot::Sender<Result<Range<u64>, LogError>>,
}

/// Appends through `log` in the order of the calls: two appends sent one
/// after the other by the same task land in that order.
pub async fn append_in_order(
    log: &actix::Addr<super::LogActor>,
    append: Append,
) -> Result<Range<u64>, LogError> {
    send_in_order(log, append).await
}

/// [`append_in_order`], sent now: the returned future only waits for the
/// answer, so several appends can be in flight, landing in the order sent.
pub fn send_in_order(
    log: &actix::Addr<super::LogActor>,
    append: Append,
) -> impl std::future::Future<Output = Result<Range<u64>, LogError>> + 'static {
    let (reply, answer) = tokio::sync::oneshot::channel();
    log.do_send(AppendInOrder { append, reply });
    async move {
        answer.await.unwrap_or_else(|_| {
            Err(LogError::indeterminate(
                "",
                "the append was dropped by a failing actor: it may have been written",
            ))
        })
    }
}

/// A fresh produce-session id, unique in this process.
pub fn new_session() -> u64 {
    NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Every session id given out so far is below this.
pub(crate) fn sessions_opened() -> u64 {
    NEXT_SESSION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reads one record.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<u8>, LogError>")]
pub struct Read {
    pub offset: u64,
}

/// Reads consecutive records from `from`, about `max_bytes` of frames and at
/// least one record, at most `max_records`, from one segment (ask again from
/// `next_offset()` for more). At the end of the log the batch is empty: send
/// [`WaitFor`].
#[derive(Debug, Message)]
#[rtype(result = "Result<RecordBatch, LogError>")]
pub struct ReadBatch {
    pub from: u64,
    pub max_bytes: usize,
    /// Records read (and checked) at most; `u64::MAX`: as many as fit.
    pub max_records: u64,
}

/// Answers (with the log's next offset) as soon as a record at `offset`
/// exists: at once if it already does, else when an append reaches it. A
/// waiting reader costs nothing: no timer, no polling.
///
/// Answered with a [`Waiting`] the caller awaits itself: a reader that
/// gives up drops it, and the LogActor forgets the reader (see
/// [`wait_for`]).
#[derive(Debug, Message)]
#[rtype(result = "Waiting")]
pub struct WaitFor {
    pub offset: u64,
}

/// A [`WaitFor`]'s answer: resolves with the committed end once it is past
/// the offset waited for (or with the partition's failure).
#[derive(Debug)]
pub struct Waiting(pub(crate) WaitingState);

#[derive(Debug)]
pub(crate) enum WaitingState {
    Ready(Option<Result<u64, LogError>>),
    Pending {
        answer: tokio::sync::oneshot::Receiver<Result<u64, LogError>>,
        partition: String,
    },
}

impl std::future::Future for Waiting {
    type Output = Result<u64, LogError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            WaitingState::Ready(answer) => std::task::Poll::Ready(
                answer
                    .take()
                    .unwrap_or_else(|| Err(LogError::Closed(String::new()))),
            ),
            WaitingState::Pending { answer, partition } => std::pin::Pin::new(answer)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(LogError::Closed(partition.clone())))),
        }
    }
}

/// Waits until `log` holds a record at `offset` (see [`WaitFor`]); the
/// wait is registered now. Dropping the returned future gives up: the
/// LogActor then forgets this reader.
pub fn wait_for(
    log: &actix::Addr<super::LogActor>,
    offset: u64,
) -> impl std::future::Future<Output = Result<u64, LogError>> + 'static {
    let sent = log.send(WaitFor { offset });
    async move {
        match sent.await {
            Ok(waiting) => waiting.await,
            Err(_) => Err(LogError::Closed(String::new())),
        }
    }
}

/// Deletes whole segments whose records are all below `lowest`; answers how many.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, LogError>")]
pub struct Truncate {
    pub lowest: u64,
}

/// Replication: the leader no longer holds the offsets from this replica's
/// end up to `offset` (its retention deleted them first). They are recorded
/// as lost (read there: `recordsLost`, never data) and the replica goes on
/// at `offset`; nothing it holds is deleted. A no-op when the replica's end
/// is at or past `offset`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), LogError>")]
pub struct SkipTo {
    pub offset: u64,
}

/// Applies the retention settings now (also run by a timer); answers how many
/// segments were deleted.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, LogError>")]
pub struct ApplyRetention;

/// A snapshot of the partition's state.
#[derive(Debug, Message)]
#[rtype(result = "LogStats")]
pub struct Stats;

/// What [`Stats`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStats {
    pub partition: String,
    /// Oldest offset still held.
    pub lowest_offset: u64,
    /// Offset the next record will get; everything below is readable.
    pub next_offset: u64,
    pub segments: usize,
    /// Bytes of the store files (approximate for the active segment).
    pub size_bytes: u64,
    /// SegmentActor restarts since the partition was opened.
    pub restarts: u64,
    /// Set when durable data is damaged: writes are refused until repair.
    pub read_only: Option<String>,
    /// Set while the disk is full: writes are refused until space returns.
    pub disk_full: Option<String>,
    /// Every record below this offset is on disk.
    pub recovery_point: u64,
    /// Readers waiting for records past the end (following streams).
    pub waiting_readers: usize,
}

/// Flushes, syncs and seals every segment, stops the actors and releases the
/// directory: the next open needs no recovery.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), LogError>")]
pub struct Close;

/// Test hook: makes the active SegmentActor panic at `work` (see its
/// `InjectPanic` handler), as a bug or a fatal I/O error would. Its
/// supervisor must restart it. `InjectPanic` sent to the LogActor itself
/// makes the LogActor panic.
#[doc(hidden)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InjectSegmentPanic(pub crate::supervision::Work);
