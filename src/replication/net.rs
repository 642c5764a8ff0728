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

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::actor::Connector;
use crate::client::{ClientError, ReplicaBatch};
use crate::storage::{Frames, FramesError, recycled_buffer};
use crate::wire::frame_stream::{self as wire_stream, Message, PullRequest, StreamEnd};

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

/// Connects, streams, checks; reports positions as they change. Over a
/// replication stream; over a `replicate` call when the leader predates
/// those.
async fn run(
    spec: PullSpec,
    batches: mpsc::Sender<Result<CheckedBatch, PullEnd>>,
    mut positions: watch::Receiver<u64>,
) {
    if stream_pull(&spec, &batches, &mut positions).await.is_some() {
        return;
    }
    tracing::info!(partition = %spec.partition, leader = %spec.addr, "the leader does not serve replication streams (it predates them): pulling over replicate");
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

/// Bytes read from a replication stream's socket at once (a batch's
/// frames larger than this are read straight into their buffer).
const STREAM_READ_BYTES: usize = 64 << 10;

/// Pulls over a replication stream ([`crate::wire::frame_stream`]): the
/// leader's batches read straight into the buffers they are appended
/// from, positions reported on the same connection. `None` when the
/// leader answers with something other than a message of the stream, or
/// closes the connection unanswered, as a leader that predates replication
/// streams does.
async fn stream_pull(
    spec: &PullSpec,
    batches: &mpsc::Sender<Result<CheckedBatch, PullEnd>>,
    positions: &mut watch::Receiver<u64>,
) -> Option<()> {
    let connected = tokio::select! {
        connected = spec.connector.connect_stream(spec.addr) => connected,
        () = batches.closed() => return Some(()),
    };
    let request = PullRequest {
        partition: spec.partition.clone(),
        node: spec.me.clone(),
        from: spec.from,
        max_batch_bytes: 0,
    }
    .encode()
    .map_err(|e| format!("a replication request: {e}"));
    let ((socket, zero_free), request) = match (connected, request) {
        (Ok(connected), Ok(request)) => (connected, request),
        (Err(why), _) | (_, Err(why)) => {
            let _ = batches.send(Err(PullEnd::Retry(why))).await;
            return Some(());
        }
    };
    let (reader, mut writer) = tokio::io::split(socket);
    let mut reader = tokio::io::BufReader::with_capacity(STREAM_READ_BYTES, reader);
    // The record layer of a TLS stream sends what it gathered on a flush.
    if let Err(e) = async {
        writer.write_all(&request).await?;
        writer.flush().await
    }
    .await
    {
        let why = format!("sending the replication request: {e}");
        let _ = batches.send(Err(PullEnd::Retry(why))).await;
        return Some(());
    }
    tracing::info!(partition = %spec.partition, leader = %spec.addr, from = spec.from, "pulling over a replication stream");
    let receive = async {
        // A leader that predates replication streams answers with a capnp
        // message, or closes.
        match reader.fill_buf().await {
            Ok([first, ..]) if wire_stream::starts_a_message(*first) => {}
            Ok(_) => return None,
            Err(e) => return Some(Err(PullEnd::Retry(format!("the replication stream: {e}")))),
        }
        let mut next = spec.from;
        loop {
            let out =
                match wire_stream::read_message(&mut reader, zero_free, recycled_buffer()).await {
                    Ok(Message::Batch { header, frames }) => {
                        let batch = ReplicaBatch {
                            first: header.first,
                            frames,
                            committed_end: header.committed_end,
                        };
                        classify(Some(Ok(batch)), next).map(|mut checked| {
                            checked.frames = checked.frames.recycled();
                            checked
                        })
                    }
                    Ok(Message::End(end)) => Err(stream_ended(end)),
                    Err(e) => Err(PullEnd::Retry(format!("the replication stream: {e}"))),
                };
            if let Ok(checked) = &out {
                next += checked.frames.len() as u64;
            }
            let ended = out.is_err();
            if batches.send(out).await.is_err() || ended {
                return Some(Ok(()));
            }
        }
    };
    // Ends when the replicator is gone or the position cannot be sent
    // (the connection is broken: the pull ends and is retried).
    let report = async {
        while positions.changed().await.is_ok() {
            let committed = *positions.borrow_and_update();
            let sent = async {
                writer.write_all(&committed.to_le_bytes()).await?;
                writer.flush().await
            };
            if sent.await.is_err() {
                return;
            }
        }
    };
    let out = tokio::select! {
        out = receive => out,
        () = report => Some(Ok(())),
    };
    match out {
        Some(Err(end)) => {
            let _ = batches.send(Err(end)).await;
            Some(())
        }
        Some(Ok(())) => Some(()),
        None => None,
    }
}

/// What a leader's end of a replication stream means for the pull.
fn stream_ended(end: StreamEnd) -> PullEnd {
    if end.kind == "offsetOutOfRange" && end.offset < end.lowest {
        PullEnd::Behind {
            offset: end.offset,
            lowest: end.lowest,
        }
    } else {
        PullEnd::Retry(format!(
            "the leader ended the stream: {}: {}",
            end.kind, end.message
        ))
    }
}
