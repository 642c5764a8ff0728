//! The network side of replication, on a thread of its own.
//!
//! A replica catching up is bound by one thread: receiving the leader's
//! frames (socket reads, Cap'n Proto decoding, a copy out of the message),
//! checking each frame's CRC-32C, and appending them. Here the first half
//! runs on a replication thread shared by every replicator of the node; the
//! node's thread only appends what arrives checked (see BENCHMARKS.md,
//! "Replication"). A pull is one connection: it ends, with the reason, at
//! the first error, and the ReplicatorActor decides what follows (retry
//! with backoff, skip past the leader's retention, or halt).

use std::net::SocketAddr;
use std::sync::OnceLock;

use tokio::sync::{mpsc, watch};

use super::actor::Connector;
use crate::client::{ClientError, ReplicaBatch};
use crate::storage::{Frames, FramesError};

/// Batches checked ahead of the appends, at most: backpressure on the
/// leader's stream beyond that (about 4 MiB at the leader's replication
/// batch size, 1 MiB).
const CHECKED_AHEAD: usize = 4;

/// A batch of the leader's frames, checked: consecutive offsets from the
/// replica's end, every CRC-32C right.
#[derive(Debug)]
pub(crate) struct CheckedBatch {
    pub frames: Frames,
    /// The leader's committed end when it read them.
    pub committed_end: u64,
}

/// Why a pull ended.
#[derive(Debug)]
pub(crate) enum PullEnd {
    /// For good: the leader sent bad frames; nothing of the batch written.
    Halt(String),
    /// The leader no longer holds `offset`: its lowest is `lowest`.
    Behind { offset: u64, lowest: u64 },
    /// For now: reconnect after a backoff.
    Retry(String),
}

/// One pull in progress on the replication thread. Dropping it ends it
/// (and closes its connection).
pub(crate) struct Pull {
    pub batches: mpsc::Receiver<Result<CheckedBatch, PullEnd>>,
    /// Positions the replica has committed, reported to the leader.
    pub committed: watch::Sender<u64>,
}

/// What a pull needs to know.
pub(crate) struct PullSpec {
    pub connector: Connector,
    pub addr: SocketAddr,
    pub partition: String,
    /// This node's name, in the positions it reports.
    pub me: String,
    /// The replica's end: the first offset to pull.
    pub from: u64,
}

/// What the next item of a replication stream means: a batch checked to
/// start at `expected` with intact frames, or why the pull ends.
pub(crate) fn classify(
    item: Option<Result<ReplicaBatch, ClientError>>,
    expected: u64,
) -> Result<CheckedBatch, PullEnd> {
    let batch = match item {
        None => return Err(PullEnd::Retry("the stream ended".into())),
        Some(Ok(batch)) => batch,
        // The leader's retention deleted what this replica needs next.
        Some(Err(ClientError::OffsetOutOfRange { offset, lowest, .. })) if offset < lowest => {
            return Err(PullEnd::Behind { offset, lowest });
        }
        Some(Err(e)) => return Err(PullEnd::Retry(e.to_string())),
    };
    let checked = if batch.first != expected {
        Err(FramesError::Offset {
            index: 0,
            expected,
            got: batch.first,
        })
    } else {
        Frames::check(batch.frames, expected)
    };
    match checked {
        Ok(frames) => Ok(CheckedBatch {
            frames,
            committed_end: batch.committed_end,
        }),
        Err(e) => Err(PullEnd::Halt(format!(
            "the leader sent bad frames (nothing of the batch written): {e}"
        ))),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The replication thread: a current-thread runtime with a local task set
/// (the Cap'n Proto client is not `Send`), started on first use.
fn thread() -> &'static mpsc::UnboundedSender<Job> {
    static THREAD: OnceLock<mpsc::UnboundedSender<Job>> = OnceLock::new();
    THREAD.get_or_init(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the replication thread's runtime");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = rx.recv().await {
                        job();
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the replication thread");
        }
        tx
    })
}

/// Starts a pull on the replication thread.
pub(crate) fn start(spec: PullSpec) -> Pull {
    let (batches_tx, batches) = mpsc::channel(CHECKED_AHEAD);
    let (committed, positions) = watch::channel(spec.from);
    let failed = batches_tx.clone();
    let job: Job = Box::new(move || {
        tokio::task::spawn_local(run(spec, batches_tx, positions));
    });
    if thread().send(job).is_err() {
        // No replication thread: the pull ends at once and is retried.
        let _ = failed.try_send(Err(PullEnd::Retry(
            "the replication thread is not running".into(),
        )));
    }
    Pull { batches, committed }
}

/// Connects, streams, checks; reports positions as they change.
async fn run(
    spec: PullSpec,
    batches: mpsc::Sender<Result<CheckedBatch, PullEnd>>,
    mut positions: watch::Receiver<u64>,
) {
    // A replicator stopped while this connects (a peer that vanished can
    // take the system's connect timeout) ends the pull at once.
    let connected = tokio::select! {
        connected = spec.connector.connect(spec.addr) => connected,
        () = batches.closed() => return,
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            let why = format!("connecting to {}: {e}", spec.addr);
            let _ = batches.send(Err(PullEnd::Retry(why))).await;
            return;
        }
    };
    let mut stream = client.replicate(&spec.partition, spec.from);
    let mut next = spec.from;
    loop {
        tokio::select! {
            batch = stream.next_batch() => {
                let out = classify(batch, next);
                if let Ok(checked) = &out {
                    next += checked.frames.len() as u64;
                }
                let ended = out.is_err();
                if batches.send(out).await.is_err() || ended {
                    return;
                }
            }
            changed = positions.changed() => {
                if changed.is_err() {
                    return; // the replicator is gone
                }
                let committed = *positions.borrow_and_update();
                client.report_replicated(&spec.partition, &spec.me, committed);
            }
        }
    }
}
