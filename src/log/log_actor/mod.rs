//! LogActor: one per partition. Owns the ordered SegmentActors, routes
//! appends and reads to them, rolls the active segment, applies retention,
//! keeps the partition's recovery point, and wakes readers waiting at the
//! end of the log.
//!
//! States that refuse writes, each with a typed error: read-only (durable
//! data is damaged: [`LogError::ReadOnly`]), disk full (until a probe sees
//! space again: `StorageError::DiskFull`), closed.
//!
//! Supervision (see `crate::supervision`): a panic in any of its work (a
//! handler, a checkpoint write's or a reopen's completion, the checkpoint,
//! retention and free-space timers), or an escalation from one of its
//! SegmentActors, restarts it. The restart keeps the partition's identity,
//! settings and the readers waiting at the end of the log (woken once the
//! reopened log reaches them); it closes every SegmentActor (their pending
//! appends are committed and answered), poisons the produce sessions that
//! may have had a batch in flight, and reopens the directory as after a
//! crash, on the blocking pool, while its mailbox waits (appends queue,
//! none is lost). Past its budget it escalates to the Agent.
//!
//! This file: the actor, its state, start-up, supervision and restart.
//! `append.rs`: refusals, dispatch, rolls. `read.rs`: range checks and
//! reads, waiting readers. `events.rs`: what SegmentActors report, the
//! committed offset and the recovery point. `admin.rs`: truncate,
//! retention, stats, close.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use futures::future::{join_all, ready};
use tokio::sync::oneshot;

use super::error::LogError;
use super::messages::*;
use super::segment_actor::{
    AppendReply, CloseSegment, FromSegment, QueuedReply, RemoveSegment, Resume, Seal, SegAppend,
    SegRead, SegReadBatch, SegmentActor, SegmentEvent, SegmentSetup, free_bytes, new_actor_id,
};
use super::session::PoisonedSessions;

/// Length of the waiters list at which readers gone are first pruned.
const MIN_PRUNE_WAITERS_AT: usize = 64;
use crate::storage::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN};
use crate::storage::{
    Checkpoint, DirLock, LogConfig, LostCause, OpenReport, RecordBatch, Records, Segment,
    StorageError, file_name, open_dir,
};
use crate::supervision::{self, ChildSpec, Escalation, Failpoints, InjectPanic, Parent, Work};

/// How often the retention settings are applied, when any are set.
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often the recovery point is written, when it moved.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often free space is checked while the partition is disk-full.
pub const DISK_FULL_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Free bytes above the floor (`min_free_bytes`, which may be 0) needed to
/// leave the disk-full state: room for more than the next append, so a
/// partition does not resume at the floor only to be refused again by its
/// next batch, over and over, while nothing was freed.
const RESUME_HEADROOM_BYTES: u64 = 1 << 20;

/// A started SegmentActor and what the LogActor knows of its segment.
struct SegmentHandle {
    base: u64,
    /// Records below this are committed (readable as far as this segment goes).
    committed: u64,
    /// The segment's final end once it is sealed (or opened read-only).
    end: Option<u64>,
    /// Records below this are on disk.
    synced: u64,
    size_bytes: u64,
    addr: Addr<SegmentActor>,
    /// The SegmentActor's identity in its events.
    actor: u64,
}

impl SegmentHandle {
    /// Whether every record of this sealed segment is committed.
    fn complete(&self) -> bool {
        self.end.is_some_and(|end| self.committed >= end)
    }
}

/// The actor that serves one partition. Start it with [`LogActor::start`].
pub struct LogActor {
    partition: String,
    dir: PathBuf,
    config: LogConfig,
    /// Segments opened from disk, handed to SegmentActors in `started`.
    opened: Vec<Segment>,
    segments: Vec<SegmentHandle>,
    lock: Option<DirLock>,
    /// Upper bounds of the active segment's store bytes and index entries,
    /// counting appends sent but not yet committed: the roll happens before
    /// the SegmentActor could be asked to overfill.
    active_bytes: u64,
    active_entries: u64,
    /// A roll sealed the active segment but could not create the next one
    /// (full disk): the next append creates it at this offset first.
    needs_segment: Option<u64>,
    /// The partition's id, shared by the replies of queued appends.
    partition_name: std::sync::Arc<str>,
    /// Records below this offset are committed and served to readers.
    committed: u64,
    /// Readers waiting for an offset at or past `committed`.
    waiters: Vec<(u64, oneshot::Sender<Result<u64, LogError>>)>,
    /// `waiters` is pruned of readers gone when it reaches this length.
    prune_waiters_at: usize,
    restarts: u64,
    /// Durable data is damaged: writes are refused until `proglog repair`.
    read_only: Option<String>,
    /// The lowest damaged offset found at open (reads there get corruption).
    damaged_from: Option<u64>,
    /// The disk is full: writes are refused until the probe sees space.
    disk_full: Option<String>,
    /// Recovery point and lost ranges; written when the point moves.
    checkpoint: Checkpoint,
    checkpoint_writing: bool,
    poisoned: PoisonedSessions,
    /// The last append's [`Append::write_behind`]: passed on with each
    /// dispatch (a hint, so a roll's continuation may carry a newer one).
    write_behind: bool,
    /// Told how long syncs take; handed to every SegmentActor.
    fsync: super::observer::Observer,
    closed: bool,
    report: OpenReport,
    failpoints: Failpoints,
}

mod admin;
mod append;
mod events;
mod read;

impl LogActor {
    /// Opens (recovering if needed) the partition directory `dir`. Errors
    /// (bad directory, foreign files, locked) come back here, before any
    /// actor runs. Damage opens the partition read-only.
    pub fn open(
        partition: impl Into<String>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<LogActor, StorageError> {
        let dir = dir.into();
        let opened = open_dir(&dir, &config)?;
        let active = opened.segments.last().ok_or_else(|| {
            StorageError::corruption(&dir, 0, "log directory opened with no segment")
        })?;
        let (active_bytes, active_entries) = (active.size_bytes(), active.len());
        let read_only = damage_reason(&opened.damage);
        let damaged_from = opened.damage.iter().map(|d| d.offset).min();
        let partition: String = partition.into();
        Ok(LogActor {
            partition_name: partition.as_str().into(),
            partition,
            dir,
            config,
            committed: 0,
            opened: opened.segments,
            segments: Vec::new(),
            lock: Some(opened.lock),
            active_bytes,
            active_entries,
            needs_segment: None,
            waiters: Vec::new(),
            prune_waiters_at: MIN_PRUNE_WAITERS_AT,
            restarts: 0,
            read_only,
            damaged_from,
            disk_full: None,
            checkpoint: opened.checkpoint,
            checkpoint_writing: false,
            poisoned: PoisonedSessions::default(),
            write_behind: false,
            fsync: None,
            closed: false,
            report: opened.report,
            failpoints: Failpoints::default(),
        })
    }

    /// Reports the partition's sync and seal durations to `observer`.
    pub fn observed_by(mut self, observer: super::observer::Observer) -> LogActor {
        self.fsync = observer;
        self
    }

    /// What opening the directory found (recovery work done, if any).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Why the partition is read-only, if it is.
    pub fn read_only_reason(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Starts the actor under a supervisor on the current actix arbiter,
    /// with no parent: when its restart budget is spent it is only logged
    /// and the actor is gone. A node starts it with [`LogActor::start_under`].
    pub fn start(self) -> Addr<LogActor> {
        self.start_under(None)
    }

    /// Starts the actor under a supervisor that escalates to `parent`.
    pub fn start_under(self, parent: Option<Parent>) -> Addr<LogActor> {
        let spec = ChildSpec::new(format!("log {}", self.partition)).parent(parent);
        supervision::start(spec, self)
    }

    fn spawn_segment(&self, segment: Segment, ctx: &mut Context<Self>) -> SegmentHandle {
        let (base, next, size_bytes) = (segment.base(), segment.next(), segment.size_bytes());
        let end = (!segment.is_writable()).then_some(next);
        let actor = new_actor_id();
        let setup = SegmentSetup {
            partition: self.partition.clone(),
            dir: self.dir.clone(),
            config: self.config.clone(),
            events: ctx.address().recipient(),
            actor,
            poisoned: self.poisoned.clone(),
            fsync: self.fsync.clone(),
        };
        let spec = ChildSpec::new(format!("segment {}/{base}", self.partition))
            .id(actor)
            .parent(Some(supervision::parent(&ctx.address())));
        let addr = supervision::start(spec, SegmentActor::new(setup, segment));
        SegmentHandle {
            base,
            committed: next,
            end,
            synced: next,
            size_bytes,
            addr,
            actor,
        }
    }

    /// Starts SegmentActors for segments opened from disk (everything in
    /// them is committed and durable: recovery synced it).
    fn adopt(&mut self, segments: Vec<Segment>, ctx: &mut Context<Self>) {
        if let Some(active) = segments.last() {
            self.active_bytes = active.size_bytes();
            self.active_entries = active.len();
        }
        for segment in segments {
            let handle = self.spawn_segment(segment, ctx);
            self.segments.push(handle);
        }
        self.advance_committed();
    }

    fn active(&self) -> Option<&SegmentHandle> {
        self.segments.last()
    }

    fn lowest(&self) -> u64 {
        let first = self.segments.first().map_or(self.committed, |s| s.base);
        self.damaged_from.map_or(first, |d| d.min(first))
    }

    /// The recovery path after a failure: every SegmentActor is closed
    /// (pending appends are committed and answered), the directory is
    /// reopened as after a crash, on the blocking pool (a long scan never
    /// stalls the RPC thread or other partitions; this mailbox waits), and
    /// new SegmentActors take over. Waiting readers are kept and woken if
    /// the reopened log already satisfies them.
    fn reopen(&mut self, ctx: &mut Context<Self>) {
        self.lock = None;
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let job = actix_rt::task::spawn_blocking(move || open_dir(&dir, &config));
        ctx.wait(job.into_actor(self).map(|joined, act, ctx| {
            act.failpoints.hit(Work::Completion);
            let opened = joined.unwrap_or_else(|e| {
                Err(StorageError::InvalidConfig(format!(
                    "recovery task failed: {e}"
                )))
            });
            act.adopt_reopened(opened, ctx);
        }));
    }

    fn adopt_reopened(
        &mut self,
        opened: Result<crate::storage::OpenedDir, StorageError>,
        ctx: &mut Context<Self>,
    ) {
        match opened {
            Ok(opened) => {
                self.lock = Some(opened.lock);
                self.report = opened.report;
                self.checkpoint = opened.checkpoint;
                self.read_only = damage_reason(&opened.damage);
                self.damaged_from = opened.damage.iter().map(|d| d.offset).min();
                self.needs_segment = None;
                self.adopt(opened.segments, ctx);
                tracing::warn!(partition = %self.partition, next = self.committed, "log actor restarted: partition reopened");
            }
            Err(e) => {
                // Another failure: the supervisor restarts it again, or
                // escalates once the budget is spent.
                tracing::error!(partition = %self.partition, error = %e, "partition cannot be reopened");
                ctx.stop();
            }
        }
    }

    fn handle_of(&mut self, base: u64) -> Option<&mut SegmentHandle> {
        self.segments.iter_mut().find(|s| s.base == base)
    }
}

/// One line naming every damage found, for errors, `/readyz` and stats.
fn damage_reason(damage: &[crate::storage::Damage]) -> Option<String> {
    if damage.is_empty() {
        return None;
    }
    let list: Vec<String> = damage.iter().map(ToString::to_string).collect();
    Some(format!(
        "damaged durable data: {}; run `proglog repair` (see the README)",
        list.join("; ")
    ))
}

impl Actor for LogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            // actix runs `started` of a never-polled actor when its runtime
            // is being dropped (a restart caught by shutdown): nothing to start.
            return;
        }
        ctx.set_mailbox_capacity(1024);
        let opened = std::mem::take(&mut self.opened);
        self.adopt(opened, ctx);
        if let Some(reason) = &self.read_only {
            tracing::error!(partition = %self.partition, %reason, "partition is read-only");
        }
        let retention = self.config.retention;
        if retention.max_bytes.is_some() || retention.max_age.is_some() {
            ctx.run_interval(RETENTION_CHECK_INTERVAL, |_, ctx| {
                ctx.notify(ApplyRetention)
            });
        }
        ctx.run_interval(CHECKPOINT_INTERVAL, |act, ctx| {
            act.failpoints.hit(Work::Timer);
            act.write_checkpoint(ctx)
        });
        ctx.run_interval(DISK_FULL_PROBE_INTERVAL, |act, _| act.probe_free_space());
    }
}

impl Supervised for LogActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        self.restarts += 1;
        // The futures it had in flight were dropped with the failure.
        self.checkpoint_writing = false;
        self.poisoned.poison_open_sessions();
        let closes: Vec<_> = self
            .segments
            .drain(..)
            .map(|s| s.addr.send(CloseSegment))
            .collect();
        // The mailbox waits until the partition is reopened: appends queue, none is lost.
        ctx.wait(
            join_all(closes)
                .into_actor(self)
                .map(|_, act, ctx| act.reopen(ctx)),
        );
    }
}

/// Test-only: `Handler` panics here and now; `Completion` at the next
/// checkpoint write's (or reopen's) completion; `Timer` at the next tick of
/// the checkpoint timer.
impl Handler<InjectPanic> for LogActor {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Context<Self>) {
        self.failpoints.arm(work);
        self.failpoints.hit(Work::Handler);
    }
}

impl Handler<InjectSegmentPanic> for LogActor {
    type Result = ResponseFuture<()>;

    /// Answered once the SegmentActor has dealt with a `Handler` panic:
    /// restarted (its reopen done) or escalated (its escalation queued
    /// here, so a message sent to this actor after the answer is handled
    /// after it). A test waits for that instead of guessing a delay.
    fn handle(
        &mut self,
        InjectSegmentPanic(work): InjectSegmentPanic,
        _ctx: &mut Context<Self>,
    ) -> Self::Result {
        let Some(segment) = self.active().map(|a| a.addr.clone()) else {
            return Box::pin(async {});
        };
        // Both queued now, in order, ahead of anything sent after this
        // message. The panic drops the first answer; the probe waits
        // behind the restart's reopen.
        let panicked = segment.send(InjectPanic(work));
        let settled = segment.send(super::segment_actor::Settled);
        Box::pin(async move {
            let _ = panicked.await;
            let _ = settled.await;
        })
    }
}
