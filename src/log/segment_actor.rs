//! SegmentActor: owns one [`Segment`]; appends with group commit, reads,
//! seals; restarted through the recovery path when it fails.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::error::LogError;
use super::restart::RestartBudget;
use crate::storage::{LogConfig, RecordBatch, Segment, StorageError, SyncPolicy};
use crate::telemetry::FsyncMetrics;

/// Where an append's answer goes.
pub(crate) type AppendReply = oneshot::Sender<Result<Range<u64>, LogError>>;

/// Appends records; the answer is sent on `reply` after the group commit
/// that covers them. Sent with `do_send`: the caller waits on the oneshot.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SegAppend {
    pub records: Vec<Vec<u8>>,
    pub reply: AppendReply,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, LogError>")]
pub(crate) struct SegRead {
    pub offset: u64,
}

#[derive(Message)]
#[rtype(result = "Result<RecordBatch, LogError>")]
pub(crate) struct SegReadBatch {
    pub from: u64,
    /// Records at or past this offset are not committed yet: not served.
    pub until: u64,
    pub max_bytes: usize,
}

/// Makes the segment read-only (after its pending appends are committed);
/// answers its real next offset, where the next segment starts.
#[derive(Message)]
#[rtype(result = "Result<u64, LogError>")]
pub(crate) struct Seal;

/// Seals (if active) and releases the files; the actor then only answers errors.
#[derive(Message)]
#[rtype(result = "Result<(), LogError>")]
pub(crate) struct CloseSegment;

/// Deletes the segment's files.
#[derive(Message)]
#[rtype(result = "Result<(), LogError>")]
pub(crate) struct RemoveSegment;

/// Self-sent after a burst of appends: one flush (and sync) for all of them.
#[derive(Message)]
#[rtype(result = "()")]
struct Commit;

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PanicNow;

/// What a SegmentActor tells its LogActor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum SegmentEvent {
    /// Records below `next` are committed (flushed, synced per policy) and may be served.
    Committed { next: u64 },
    /// The actor failed and reopened its segment through recovery.
    Restarted {
        base: u64,
        next: u64,
        reason: String,
    },
    /// The actor failed too often (or could not reopen): it gives up.
    Failed { base: u64, reason: String },
}

/// An append waiting for its commit.
struct Pending {
    reply: AppendReply,
    offsets: Range<u64>,
}

pub(crate) struct SegmentActor {
    partition: String,
    dir: PathBuf,
    base: u64,
    config: LogConfig,
    /// `None` while failed, closed or removed.
    segment: Option<Segment>,
    /// Whether the segment was the active one (reopened writable on restart).
    writable: bool,
    events: Recipient<SegmentEvent>,
    /// Appended to the write buffer, not flushed yet.
    pending: Vec<Pending>,
    /// Flushed, waiting for the `fdatasync` in flight.
    syncing: Vec<Pending>,
    /// Flushed while a sync was in flight: they need the next one.
    next_sync: Vec<Pending>,
    sync_in_flight: bool,
    commit_scheduled: bool,
    /// Bytes were flushed since the last completed sync.
    unsynced: bool,
    last_sync: Instant,
    restarts: RestartBudget,
    failed: Option<String>,
    /// Closed or removed on purpose: answer errors, do not come back.
    retired: bool,
    panic_next: bool,
    /// fsync latency histograms of the node whose data directory holds
    /// `dir` (looked up once at creation); `None` when metrics are off.
    fsync: Option<FsyncMetrics>,
}

impl SegmentActor {
    pub(crate) fn new(
        partition: String,
        dir: PathBuf,
        config: LogConfig,
        segment: Segment,
        events: Recipient<SegmentEvent>,
    ) -> SegmentActor {
        SegmentActor {
            partition,
            base: segment.base(),
            writable: segment.is_writable(),
            segment: Some(segment),
            config,
            events,
            pending: Vec::new(),
            syncing: Vec::new(),
            next_sync: Vec::new(),
            sync_in_flight: false,
            commit_scheduled: false,
            unsynced: false,
            last_sync: Instant::now(),
            restarts: RestartBudget::default(),
            failed: None,
            retired: false,
            panic_next: false,
            fsync: crate::telemetry::fsync_metrics_for(&dir),
            dir,
        }
    }

    fn unavailable(&self) -> LogError {
        match (&self.failed, self.retired) {
            (Some(reason), _) => LogError::PartitionFailed {
                partition: self.partition.clone(),
                reason: reason.clone(),
            },
            (None, true) => LogError::Closed(self.partition.clone()),
            (None, false) => LogError::unavailable(&self.partition, "segment is restarting"),
        }
    }

    /// Runs storage work on the segment. A panic, or an error from a write
    /// (`fatal`), fails the actor: every waiting append is answered with an
    /// error and the actor stops, so its supervisor reopens the segment
    /// through recovery. Read errors are only answered.
    fn guarded<T>(
        &mut self,
        ctx: &mut Context<Self>,
        fatal: bool,
        work: impl FnOnce(&mut Segment) -> Result<T, StorageError>,
    ) -> Result<T, LogError> {
        let panic_next = std::mem::take(&mut self.panic_next);
        let Some(segment) = self.segment.as_mut() else {
            return Err(self.unavailable());
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if panic_next {
                panic!("injected fault");
            }
            work(segment)
        }));
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if !fatal => Err(e.into()),
            Ok(Err(e)) => {
                let reason = e.to_string();
                self.fail(ctx, &reason);
                Err(e.into())
            }
            Err(panic) => {
                let reason = panic_message(&*panic);
                self.fail(ctx, &format!("panic: {reason}"));
                Err(LogError::unavailable(
                    &self.partition,
                    format!("segment actor failed ({reason}) and is restarting"),
                ))
            }
        }
    }

    /// Drops the segment (unflushed records die, as in a crash: none of them
    /// was acknowledged), answers every waiting append with an error and stops.
    fn fail(&mut self, ctx: &mut Context<Self>, reason: &str) {
        tracing::error!(partition = %self.partition, base = self.base, reason, "segment actor failed");
        self.segment = None;
        let error = || {
            LogError::unavailable(
                &self.partition,
                format!("segment failed before the append was committed: {reason}"),
            )
        };
        for p in self
            .pending
            .drain(..)
            .chain(self.syncing.drain(..))
            .chain(self.next_sync.drain(..))
        {
            let _ = p.reply.send(Err(error()));
        }
        self.sync_in_flight = false;
        self.commit_scheduled = false;
        ctx.stop();
    }

    fn schedule_commit(&mut self, ctx: &mut Context<Self>) {
        if !self.commit_scheduled {
            self.commit_scheduled = true;
            // Runs after the mailbox is drained: one flush for the whole burst.
            ctx.notify(Commit);
        }
    }

    fn sync_due(&self) -> bool {
        match self.config.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Interval(every) => self.unsynced && self.last_sync.elapsed() >= every,
            SyncPolicy::Never => false,
        }
    }

    /// Answers appends whose records are committed, and tells the LogActor.
    fn acknowledge(&mut self, done: Vec<Pending>) {
        let Some(next) = done.iter().map(|p| p.offsets.end).max() else {
            return;
        };
        for p in done {
            let _ = p.reply.send(Ok(p.offsets));
        }
        self.events.do_send(SegmentEvent::Committed { next });
    }

    /// Starts an `fdatasync` on the blocking pool for `self.syncing`; the
    /// actor keeps serving meanwhile (appends gather for the next sync).
    fn start_sync(&mut self, ctx: &mut Context<Self>) {
        let Some(segment) = self.segment.as_ref() else {
            return;
        };
        let file = segment.sync_handle();
        self.sync_in_flight = true;
        self.unsynced = false;
        let started = Instant::now();
        let fsync = self.fsync.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let timer = Instant::now();
            let result = file.sync_data();
            if let Some(fsync) = fsync {
                fsync.observe_sync(timer.elapsed());
            }
            result
        });
        ctx.spawn(job.into_actor(self).map(move |result, act, ctx| {
            act.sync_in_flight = false;
            act.last_sync = started;
            let outcome = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(join) => Err(join.to_string()),
            };
            match outcome {
                Ok(()) => {
                    let done = std::mem::take(&mut act.syncing);
                    act.acknowledge(done);
                    if !act.next_sync.is_empty() {
                        act.syncing = std::mem::take(&mut act.next_sync);
                        act.start_sync(ctx);
                    }
                }
                Err(reason) => act.fail(ctx, &format!("fdatasync failed: {reason}")),
            }
        }));
    }

    /// Reopens the segment through the recovery path.
    fn reopen(&mut self) -> Result<(), StorageError> {
        let (segment, _) = Segment::open(&self.dir, self.base, &self.config, self.writable)?;
        self.segment = Some(segment);
        Ok(())
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

impl Actor for SegmentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Appends arrive by do_send; reads by send: let bursts queue up.
        ctx.set_mailbox_capacity(4096);
        if let SyncPolicy::Interval(every) = self.config.sync
            && self.writable
        {
            ctx.run_interval(every.max(Duration::from_millis(1)), |act, ctx| {
                if act.writable && act.sync_due() && !act.sync_in_flight && act.segment.is_some() {
                    act.start_sync(ctx);
                }
            });
        }
    }
}

impl Supervised for SegmentActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        if self.retired || self.failed.is_some() {
            return;
        }
        let reason = "restarted after a failure".to_string();
        if !self.restarts.allow() {
            let reason = format!(
                "{} restarts within {:?}",
                self.restarts.count(),
                RestartBudget::WINDOW
            );
            tracing::error!(partition = %self.partition, base = self.base, %reason, "segment keeps failing: giving up on writes");
            self.failed = Some(reason.clone());
            // Keep serving what was committed: reopen read-only.
            self.writable = false;
            if let Err(e) = self.reopen() {
                tracing::error!(partition = %self.partition, base = self.base, error = %e, "cannot reopen the failed segment for reads");
            }
            self.events.do_send(SegmentEvent::Failed {
                base: self.base,
                reason,
            });
            return;
        }
        match self.reopen() {
            Ok(()) => {
                let next = self.segment.as_ref().map_or(self.base, Segment::next);
                tracing::warn!(partition = %self.partition, base = self.base, next, "segment actor restarted");
                self.events.do_send(SegmentEvent::Restarted {
                    base: self.base,
                    next,
                    reason,
                });
            }
            Err(e) => {
                let reason = format!("reopening after a failure: {e}");
                tracing::error!(partition = %self.partition, base = self.base, %reason, "segment cannot be reopened");
                self.failed = Some(reason.clone());
                self.events.do_send(SegmentEvent::Failed {
                    base: self.base,
                    reason,
                });
            }
        }
    }
}

impl Handler<SegAppend> for SegmentActor {
    type Result = ();

    fn handle(&mut self, msg: SegAppend, ctx: &mut Context<Self>) {
        if self.failed.is_some() || self.retired {
            let _ = msg.reply.send(Err(self.unavailable()));
            return;
        }
        let records = msg.records;
        let result = self.guarded(ctx, true, |segment| {
            let mut offsets: Option<Range<u64>> = None;
            for record in &records {
                if !segment.fits(record.len()) {
                    return Err(StorageError::InvalidConfig(format!(
                        "segment {} is full: the LogActor should have rolled it",
                        segment.base()
                    )));
                }
                let offset = segment.append(record)?;
                offsets = Some(offsets.map_or(offset..offset + 1, |r| r.start..offset + 1));
            }
            Ok(offsets.unwrap_or(segment.next()..segment.next()))
        });
        match result {
            Ok(offsets) => {
                self.pending.push(Pending {
                    reply: msg.reply,
                    offsets,
                });
                self.schedule_commit(ctx);
            }
            Err(e) => {
                let _ = msg.reply.send(Err(e));
            }
        }
    }
}

impl Handler<Commit> for SegmentActor {
    type Result = ();

    fn handle(&mut self, _: Commit, ctx: &mut Context<Self>) {
        self.commit_scheduled = false;
        if self.pending.is_empty() {
            return;
        }
        if self.guarded(ctx, true, Segment::flush).is_err() {
            return; // failed: pending appends were answered with the error
        }
        self.unsynced = true;
        let flushed = std::mem::take(&mut self.pending);
        if !self.sync_due() {
            self.acknowledge(flushed);
        } else if self.sync_in_flight {
            self.next_sync.extend(flushed);
        } else {
            self.syncing = flushed;
            self.start_sync(ctx);
        }
    }
}

impl Handler<SegRead> for SegmentActor {
    type Result = Result<Vec<u8>, LogError>;

    fn handle(&mut self, msg: SegRead, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, false, |segment| segment.read(msg.offset))
    }
}

impl Handler<SegReadBatch> for SegmentActor {
    type Result = Result<RecordBatch, LogError>;

    fn handle(&mut self, msg: SegReadBatch, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, false, |segment| {
            let mut batch = RecordBatch::default();
            segment.read_batch_into(msg.from, msg.until, msg.max_bytes, &mut batch, true)?;
            Ok(batch)
        })
    }
}

impl Handler<Seal> for SegmentActor {
    type Result = Result<u64, LogError>;

    /// Answers the real end offset at once (the next segment can start
    /// there), then syncs and seals on the blocking pool: flushing a whole
    /// segment can take a while and must not hold up the actor thread. The
    /// mailbox of this one segment waits meanwhile (reads of it queue up).
    fn handle(&mut self, _: Seal, ctx: &mut Context<Self>) -> Self::Result {
        // Commit what is pending first, so no append is left unanswered.
        <Self as Handler<Commit>>::handle(self, Commit, ctx);
        let next = self.guarded(ctx, true, |segment| {
            segment.flush()?;
            Ok(segment.next())
        })?;
        self.writable = false;
        let Some(mut segment) = self.segment.take() else {
            return Err(self.unavailable());
        };
        let fsync = self.fsync.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let timer = Instant::now();
            let result = segment.seal();
            if let Some(fsync) = fsync {
                fsync.observe_seal(timer.elapsed());
            }
            (segment, result)
        });
        ctx.wait(job.into_actor(self).map(|joined, act, ctx| match joined {
            Ok((segment, Ok(()))) => {
                act.segment = Some(segment);
                // The seal synced everything: appends waiting for a sync are safe.
                let done: Vec<Pending> = act
                    .syncing
                    .drain(..)
                    .chain(act.next_sync.drain(..))
                    .collect();
                act.acknowledge(done);
            }
            Ok((segment, Err(e))) => {
                act.segment = Some(segment);
                act.fail(ctx, &format!("sealing failed: {e}"));
            }
            Err(e) => act.fail(ctx, &format!("sealing task failed: {e}")),
        }));
        Ok(next)
    }
}

impl Handler<CloseSegment> for SegmentActor {
    type Result = Result<(), LogError>;

    fn handle(&mut self, _: CloseSegment, ctx: &mut Context<Self>) -> Self::Result {
        if self.segment.is_none() {
            self.retired = true;
            return Ok(());
        }
        <Self as Handler<Commit>>::handle(self, Commit, ctx);
        let timer = Instant::now();
        let result = self.guarded(ctx, true, Segment::seal);
        if let Some(fsync) = &self.fsync {
            fsync.observe_seal(timer.elapsed());
        }
        let done: Vec<Pending> = self
            .syncing
            .drain(..)
            .chain(self.next_sync.drain(..))
            .collect();
        if result.is_ok() {
            self.acknowledge(done);
        }
        self.retired = true;
        self.segment = None;
        result
    }
}

impl Handler<RemoveSegment> for SegmentActor {
    type Result = Result<(), LogError>;

    fn handle(&mut self, _: RemoveSegment, _ctx: &mut Context<Self>) -> Self::Result {
        self.retired = true;
        match self.segment.take() {
            Some(segment) => segment.remove().map_err(LogError::from),
            None => Ok(()),
        }
    }
}

impl Handler<PanicNow> for SegmentActor {
    type Result = ();

    fn handle(&mut self, _: PanicNow, ctx: &mut Context<Self>) {
        self.panic_next = true;
        let _ = self.guarded(ctx, true, |_| Ok(()));
    }
}
