//! ReplicatorActor: pulls one peer's own partition into this node's replica.
//!
//! A replica far behind its leader ([`FAR_BEHIND`]) catches up with the
//! pull's network side on the replication thread ([`super::net`]), this
//! actor only appending; near the leader's end it pulls on the node's
//! thread, where a batch is appended and reported without a thread hop.
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

use super::net::{self, PullEnd};
use crate::client::{Client, ClientError, ClientOptions};
use crate::cluster::ClusterView;
use crate::log::{Append, LogActor, Partitions, SkipTo, Stats, append_in_order};
use crate::supervision::{Failpoints, InjectPanic, Work};
use crate::telemetry::Metrics;

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While a replica catches up, its position goes to the leader this often.
const REPORT_EVERY: Duration = Duration::from_millis(5);

/// How a replicator reaches its peer's RPC service.
#[derive(Clone)]
pub enum Connector {
    /// Plain TCP (`--insecure` clusters).
    Plain,
    /// Mutual TLS with this node's certificate; the peer's certificate must
    /// name the IP address it is dialed at.
    Tls(Arc<rustls::ClientConfig>),
}

impl Connector {
    /// A replicator's connection does not poll for answers (its peer's
    /// stream comes without asking, and the node's CPU is for its own work).
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Client, ClientError> {
        let options = ClientOptions {
            busy_poll: Duration::ZERO,
            ..ClientOptions::default()
        };
        match self {
            Connector::Plain => Client::connect_with(addr, None, options).await,
            Connector::Tls(config) => {
                let name = addr.ip().to_string();
                Client::connect_with(addr, Some((&name, config.clone())), options).await
            }
        }
    }
}

/// A replication stream's socket: plain TCP, or TLS over it.
pub(crate) trait PullSocket: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> PullSocket for T {}

impl Connector {
    /// Connects for a replication stream ([`crate::wire::frame_stream`]);
    /// also says whether the socket writes every byte it reports read
    /// (plain TCP), so a batch's buffer need not be zeroed first.
    pub(crate) async fn connect_stream(
        &self,
        addr: SocketAddr,
    ) -> Result<(Box<dyn PullSocket>, bool), String> {
        let tcp = crate::wire::socket::dial(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        match self {
            Connector::Plain => Ok((Box::new(tcp), true)),
            Connector::Tls(config) => {
                let name = addr.ip().to_string();
                let stream = crate::client::tls_handshake(tcp, &name, config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((Box::new(stream), false))
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

/// A replica further behind its leader than this many records catches up
/// with its network side on the replication thread ([`super::net`]); once
/// within [`NEAR`], it pulls on the node's thread again, where a batch at
/// the tail is appended and reported without a thread hop (`acks=all`
/// latency).
const FAR_BEHIND: u64 = 64 << 10;
const NEAR: u64 = 4 << 10;

/// How a replica is doing in one pull.
struct Copy {
    /// The replica's end.
    next: u64,
    progress: bool,
    last_report: Instant,
    caught_up: bool,
    /// Where and when the copy began (for the "caught up" log line).
    from: u64,
    start: Instant,
}

/// Where the batches of a pull come from.
enum Feed {
    /// A stream on the node's thread, checked here, reported on its client.
    Here {
        client: Client,
        stream: crate::client::FrameStream,
    },
    /// The replication thread: received and checked there.
    Thread(net::Pull),
}

impl Feed {
    /// Connects: on the replication thread when `far_behind`.
    async fn open(setup: &ReplicatorSetup, from: u64, far_behind: bool) -> Result<Feed, PullEnd> {
        if far_behind {
            return Ok(Feed::Thread(net::start(net::PullSpec {
                connector: (*setup.connector).clone(),
                addr: setup.rpc_addr,
                partition: setup.partition.clone(),
                me: setup.me.clone(),
                from,
            })));
        }
        let client = setup
            .connector
            .connect(setup.rpc_addr)
            .await
            .map_err(|e| PullEnd::Retry(format!("connecting to {}: {e}", setup.rpc_addr)))?;
        let stream = client.replicate(&setup.partition, from);
        Ok(Feed::Here { client, stream })
    }

    async fn next(&mut self, expected: u64) -> Result<net::CheckedBatch, PullEnd> {
        match self {
            Feed::Here { stream, .. } => net::classify(stream.next_batch().await, expected),
            Feed::Thread(pull) => pull
                .batches
                .recv()
                .await
                .unwrap_or_else(|| Err(PullEnd::Retry("the replication stream ended".into()))),
        }
    }

    /// Tells the leader the replica has committed everything below `next`.
    fn report(&self, setup: &ReplicatorSetup, next: u64) {
        match self {
            Feed::Here { client, .. } => {
                client.report_replicated(&setup.partition, &setup.me, next)
            }
            Feed::Thread(pull) => {
                pull.committed.send_replace(next);
            }
        }
    }
}

/// One connection's worth of pulling: from the replica's end, every batch
/// of the leader's frames checked (lengths, CRC-32C, offsets following on)
/// and appended as they are at the leader's offsets, until something stops
/// it. One append at a time: with up to 4 in flight, catch-up measured
/// 12 % slower on two cores (more batches alive at once, no fewer
/// flushes), see BENCHMARKS.md. Far behind, it reconnects with the
/// network side on the replication thread, and back near the end.
async fn pull_once(setup: &ReplicatorSetup, log: &Addr<LogActor>, failpoints: &Failpoints) -> Stop {
    let next = match log.send(Stats).await {
        Ok(stats) => stats.next_offset,
        Err(e) => {
            return Stop::Retry {
                reason: format!("replica unavailable: {e}"),
                progress: false,
            };
        }
    };
    let mut copy = Copy {
        next,
        progress: false,
        last_report: Instant::now(),
        caught_up: false,
        from: next,
        start: Instant::now(),
    };
    let mut far_behind = false;
    let mut feed = match Feed::open(setup, copy.next, far_behind).await {
        Ok(feed) => feed,
        Err(end) => return pull_ended(setup, log, end, &copy).await,
    };
    loop {
        let batch = match feed.next(copy.next).await {
            Ok(batch) => batch,
            Err(end) => return pull_ended(setup, log, end, &copy).await,
        };
        let committed_end = batch.committed_end;
        if let Some(stop) = append(setup, log, failpoints, &mut copy, batch, &feed).await {
            return stop;
        }
        let lag = committed_end.saturating_sub(copy.next);
        if (!far_behind && lag > FAR_BEHIND) || (far_behind && lag <= NEAR) {
            far_behind = !far_behind;
            if far_behind {
                tracing::info!(peer = %setup.peer, partition = %setup.partition, next = copy.next, "replica far behind its leader: catching up on the replication thread");
            } else {
                tracing::info!(peer = %setup.peer, partition = %setup.partition, next = copy.next, "replica near its leader's end: pulling on the node's thread");
            }
            feed = match Feed::open(setup, copy.next, far_behind).await {
                Ok(feed) => feed,
                Err(end) => return pull_ended(setup, log, end, &copy).await,
            };
        }
    }
}

/// What follows the end of a pull.
async fn pull_ended(
    setup: &ReplicatorSetup,
    log: &Addr<LogActor>,
    end: PullEnd,
    copy: &Copy,
) -> Stop {
    match end {
        PullEnd::Retry(reason) => Stop::Retry {
            reason,
            progress: copy.progress,
        },
        PullEnd::Halt(reason) => Stop::Halt(reason),
        PullEnd::Behind { offset, lowest } => {
            skip_to(setup, log, offset, lowest, copy.progress).await
        }
    }
}

/// The leader's retention deleted what this replica needs next: records
/// the gap as lost and continues at the leader's lowest offset.
async fn skip_to(
    setup: &ReplicatorSetup,
    log: &Addr<LogActor>,
    offset: u64,
    lowest: u64,
    progress: bool,
) -> Stop {
    let retry = |reason: String, progress| Stop::Retry { reason, progress };
    match log.send(SkipTo { offset: lowest }).await {
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
    }
}

/// Appends one checked batch and reports the replica's position; `Some`
/// when the pull must stop.
async fn append(
    setup: &ReplicatorSetup,
    log: &Addr<LogActor>,
    failpoints: &Failpoints,
    copy: &mut Copy,
    batch: net::CheckedBatch,
    feed: &Feed,
) -> Option<Stop> {
    let net::CheckedBatch {
        frames,
        committed_end,
    } = batch;
    setup
        .cluster
        .borrow_mut()
        .leader_ends
        .insert(setup.partition.clone(), committed_end);
    if frames.is_empty() {
        return None;
    }
    if !copy.progress {
        (copy.from, copy.start) = (copy.next, Instant::now());
    }
    let count = frames.len() as u64;
    // Far behind, the copy is written behind: no one reads it yet, and it
    // would fill the page cache (see storage::write_behind).
    let far_behind = matches!(feed, Feed::Thread(_));
    let append = Append::frames(frames).written_behind(far_behind);
    match append_in_order(log, append).await {
        Ok(range) => {
            copy.next = range.end;
            copy.progress = true;
            let next = copy.next;
            // The leader answers `acks=all` produces from this: at once
            // when this reached what the leader had committed (where
            // produces wait); while catching up, at most every
            // REPORT_EVERY (one call per batch costs catch-up speed).
            if next >= committed_end || copy.last_report.elapsed() >= REPORT_EVERY {
                feed.report(setup, next);
                copy.last_report = Instant::now();
            }
            if next >= committed_end && !copy.caught_up {
                copy.caught_up = true;
                let (records, took) = (next - copy.from, copy.start.elapsed());
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
                m.replica_lag(&setup.partition, committed_end.saturating_sub(next));
            }
            failpoints.hit(Work::Completion);
            None
        }
        // The replica's own end disagrees with what it reported (its
        // readers' end lags a roll's seal, or an append in doubt did
        // land): nothing was written; start again from its end.
        Err(e) => Some(Stop::Retry {
            reason: format!("appending to the replica: {e}"),
            progress: copy.progress,
        }),
    }
}
