//! ReplicatorActor: pulls one peer's own partition into this node's replica.
//!
//! Supervision (`crate::supervision`): a lost connection, a peer that is
//! down or an error it answers is not a failure: the pull reconnects with
//! backoff (100 ms doubling to 5 s) and resumes from the replica's end. A
//! panic in its handler, in the pull (its completion: a batch appended) or
//! in its backoff timer restarts it; the restart keeps its peer, partition
//! and whether it halted, and starts the pull again from the replica's end.
//! Past its budget it escalates to the Agent, which starts it again later:
//! a replicator failing never touches the node's own partition or its RPC
//! service. A halted replication (the leader sent a record at an offset
//! other than the next, or with a bad checksum) stays halted, logged and counted, until the node
//! restarts: nothing of it is written.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::client::{Client, ClientError};
use crate::cluster::ClusterView;
use crate::log::{Append, LogActor, Partitions, SkipTo, Stats, append_in_order};
use crate::storage::{Frames, FramesError};
use crate::supervision::{Failpoints, InjectPanic, Work};
use crate::telemetry::Metrics;

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While a replica catches up, its position goes to the leader this often.
const REPORT_EVERY: Duration = Duration::from_millis(5);

/// How a replicator reaches its peer's RPC service.
pub enum Connector {
    /// Plain TCP (`--insecure` clusters).
    Plain,
    /// Mutual TLS with this node's certificate; the peer's certificate must
    /// name the IP address it is dialed at.
    Tls(Arc<rustls::ClientConfig>),
}

impl Connector {
    async fn connect(&self, addr: SocketAddr) -> Result<Client, ClientError> {
        match self {
            Connector::Plain => Client::connect(addr).await,
            Connector::Tls(config) => {
                Client::connect_tls(addr, &addr.ip().to_string(), config.clone()).await
            }
        }
    }
}

/// What a ReplicatorActor replicates, and with what.
pub struct ReplicatorSetup {
    /// The peer's node name.
    pub peer: String,
    pub rpc_addr: SocketAddr,
    /// The peer's own partition.
    pub partition: String,
    pub partitions: Rc<Partitions>,
    pub connector: Rc<Connector>,
    pub metrics: Option<Arc<Metrics>>,
    /// This node's name, in the positions it reports to the leader.
    pub me: String,
    /// Where the leader's committed end is noted as seen (replica lag).
    pub cluster: Rc<RefCell<ClusterView>>,
}

/// Keeps this node's replica of one peer's partition in step.
pub struct ReplicatorActor {
    setup: Rc<ReplicatorSetup>,
    /// Why the replication halted, once it has (it stays halted).
    halted: Option<String>,
    restarts: u64,
    /// Stopped on purpose (the Agent's `StopReplicating`): never pulls again,
    /// even if something still holding its address makes it look failed.
    stopped: bool,
    failpoints: Failpoints,
}

/// What a replicator reports of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorStatus {
    pub peer: String,
    pub partition: String,
    /// Restarts after failures (panics) since it was started.
    pub restarts: u64,
    /// Why the replication halted, if it did.
    pub halted: Option<String>,
}

/// Asks a replicator for its [`ReplicatorStatus`].
#[derive(Debug, Message)]
#[rtype(result = "ReplicatorStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for ReplicatorActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(ReplicatorStatus {
            peer: self.setup.peer.clone(),
            partition: self.setup.partition.clone(),
            restarts: self.restarts,
            halted: self.halted.clone(),
        })
    }
}

impl ReplicatorActor {
    pub fn new(setup: ReplicatorSetup) -> ReplicatorActor {
        ReplicatorActor {
            setup: Rc::new(setup),
            halted: None,
            restarts: 0,
            stopped: false,
            failpoints: Failpoints::default(),
        }
    }
}

impl Actor for ReplicatorActor {
    type Context = Context<Self>;

    /// Starts the pull in this actor's context (at start and after every
    /// restart); it ends only when the replication halts.
    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.halted.is_some() || self.stopped {
            return;
        }
        let pull = pull(self.setup.clone(), self.failpoints.clone());
        ctx.spawn(pull.into_actor(self).map(|reason, act, _| {
            let s = &act.setup;
            tracing::error!(peer = %s.peer, partition = %s.partition, %reason, "replication halted: nothing more is written to this replica");
            if let Some(m) = &s.metrics {
                m.replication_halted(&s.partition);
            }
            act.halted = Some(reason);
        }));
    }
}

impl Supervised for ReplicatorActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restarts += 1;
        let s = &self.setup;
        tracing::warn!(peer = %s.peer, partition = %s.partition, "replicator restarting: the pull resumes from the replica's end");
    }
}

/// Test-only: `Handler` panics here and now; `Completion` after the next
/// batch appended; `Timer` after the next backoff wait.
/// Stops a replicator for good: its pull ends and the actor is dropped once
/// no one holds its address (the replica stays on disk).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopReplicating;

impl Handler<StopReplicating> for ReplicatorActor {
    type Result = ();

    fn handle(&mut self, _: StopReplicating, ctx: &mut Context<Self>) {
        self.stopped = true;
        ctx.stop();
    }
}

impl Handler<InjectPanic> for ReplicatorActor {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Context<Self>) {
        self.failpoints.arm(work);
        self.failpoints.hit(Work::Handler);
    }
}

/// Why a pull stopped.
enum Stop {
    /// For good: nothing more may be written (bad offset or checksum).
    Halt(String),
    /// For now: reconnect after the backoff. `progress` when it appended
    /// something first (the backoff starts over).
    Retry { reason: String, progress: bool },
}

/// Pulls until the replication halts; returns why.
async fn pull(setup: Rc<ReplicatorSetup>, failpoints: Failpoints) -> String {
    let log = match setup.partitions.open_replica(&setup.partition) {
        Ok(log) => log,
        Err(e) => return format!("cannot open the replica: {e}"),
    };
    tracing::info!(peer = %setup.peer, partition = %setup.partition, "replicating");
    let mut backoff = MIN_BACKOFF;
    loop {
        match pull_once(&setup, &log, &failpoints).await {
            Stop::Halt(reason) => return reason,
            Stop::Retry { reason, progress } => {
                if progress {
                    backoff = MIN_BACKOFF;
                }
                tracing::info!(peer = %setup.peer, partition = %setup.partition, %reason, ?backoff, "replication interrupted: reconnecting");
                tokio::time::sleep(backoff).await;
                failpoints.hit(Work::Timer);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection's worth of pulling: from the replica's end, every batch
/// of the leader's frames checked (lengths, CRC-32C, offsets following on)
/// and appended as they are at the leader's offsets, until something stops
/// it. One append at a time: with up to 4 in flight, catch-up measured
/// 12 % slower on two cores (more batches alive at once, no fewer
/// flushes), see BENCHMARKS.md.
async fn pull_once(setup: &ReplicatorSetup, log: &Addr<LogActor>, failpoints: &Failpoints) -> Stop {
    let retry = |reason: String, progress| Stop::Retry { reason, progress };
    let mut next = match log.send(Stats).await {
        Ok(stats) => stats.next_offset,
        Err(e) => return retry(format!("replica unavailable: {e}"), false),
    };
    let client = match setup.connector.connect(setup.rpc_addr).await {
        Ok(client) => client,
        Err(e) => return retry(format!("connecting to {}: {e}", setup.rpc_addr), false),
    };
    let mut stream = client.replicate(&setup.partition, next);
    let mut progress = false;
    let mut last_report = Instant::now();
    // Logged once per connection: how long the replica took to catch up
    // from its first batch.
    let mut caught_up = false;
    let (mut copy_from, mut copy_start) = (next, Instant::now());
    loop {
        let batch = match stream.next_batch().await {
            None => return retry("the stream ended".into(), progress),
            Some(Ok(batch)) => batch,
            // The leader's retention deleted what this replica needs next.
            Some(Err(ClientError::OffsetOutOfRange { offset, lowest, .. })) if offset < lowest => {
                return match log.send(SkipTo { offset: lowest }).await {
                    Ok(Ok(())) => {
                        tracing::warn!(peer = %setup.peer, partition = %setup.partition, from = offset, to = lowest, "the leader no longer holds this replica's next records (its retention deleted them): they are recorded as lost and the replica continues at the leader's lowest offset");
                        if let Some(m) = &setup.metrics {
                            m.replica_skipped(&setup.partition, lowest - offset);
                        }
                        retry(
                            format!("skipped to the leader's lowest offset {lowest}"),
                            true,
                        )
                    }
                    Ok(Err(e)) => retry(format!("skipping to {lowest}: {e}"), progress),
                    Err(e) => retry(format!("replica unavailable: {e}"), progress),
                };
            }
            Some(Err(e)) => return retry(e.to_string(), progress),
        };
        setup
            .cluster
            .borrow_mut()
            .leader_ends
            .insert(setup.partition.clone(), batch.committed_end);
        let frames = if batch.first != next {
            Err(FramesError::Offset {
                index: 0,
                expected: next,
                got: batch.first,
            })
        } else {
            Frames::check(batch.frames, next)
        };
        let frames = match frames {
            Ok(frames) if frames.is_empty() => continue,
            Ok(frames) => frames,
            Err(e) => {
                return Stop::Halt(format!(
                    "the leader sent bad frames (nothing of the batch written): {e}"
                ));
            }
        };
        if !progress {
            (copy_from, copy_start) = (next, Instant::now());
        }
        let count = frames.len() as u64;
        match append_in_order(log, Append::frames(frames)).await {
            Ok(range) => {
                next = range.end;
                progress = true;
                // The leader answers `acks=all` produces from this: at once
                // when this reached what the leader had committed (where
                // produces wait); while catching up, at most every
                // REPORT_EVERY (one call per batch costs catch-up speed).
                if next >= batch.committed_end || last_report.elapsed() >= REPORT_EVERY {
                    client.report_replicated(&setup.partition, &setup.me, next);
                    last_report = Instant::now();
                }
                if next >= batch.committed_end && !caught_up {
                    caught_up = true;
                    let (records, took) = (next - copy_from, copy_start.elapsed());
                    tracing::info!(
                        peer = %setup.peer,
                        partition = %setup.partition,
                        next,
                        records,
                        seconds = took.as_secs_f64(),
                        records_per_s = (records as f64 / took.as_secs_f64().max(1e-9)).round(),
                        "replica caught up with its leader"
                    );
                }
                if let Some(m) = &setup.metrics {
                    m.replicated(&setup.partition, count);
                    m.replica_lag(&setup.partition, batch.committed_end.saturating_sub(next));
                }
                failpoints.hit(Work::Completion);
            }
            // The replica's own end disagrees with what it reported (its
            // readers' end lags a roll's seal, or an append in doubt did
            // land): nothing was written; start again from its end.
            Err(e) => return retry(format!("appending to the replica: {e}"), progress),
        }
    }
}
