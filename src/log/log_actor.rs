//! LogActor: one per partition. Owns the ordered SegmentActors, routes
//! appends and reads to them, rolls the active segment, applies retention,
//! keeps the partition's recovery point, and wakes readers waiting at the
//! end of the log.
//!
//! States that refuse writes, each with a typed error: read-only (durable
//! data is damaged: [`LogError::ReadOnly`]), disk full (until a probe sees
//! space again: `StorageError::DiskFull`), failed (restart budget spent:
//! [`LogError::PartitionFailed`]), closed.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use futures::future::{join_all, ready};
use tokio::sync::oneshot;

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::error::LogError;
use super::messages::*;
use super::restart::RestartBudget;
use super::segment_actor::{
    AppendReply, CloseSegment, FromSegment, PanicNow, RemoveSegment, Resume, Seal, SegAppend,
    SegRead, SegReadBatch, SegmentActor, SegmentEvent, SegmentSetup, free_bytes, new_actor_id,
};
use super::session::PoisonedSessions;
use crate::storage::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN};
use crate::storage::{
    Checkpoint, DirLock, LogConfig, OpenReport, RecordBatch, Segment, StorageError, file_name,
    open_dir,
};

/// How often the retention settings are applied, when any are set.
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often the recovery point is written, when it moved.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often free space is checked while the partition is disk-full.
pub const DISK_FULL_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Free bytes needed to leave the disk-full state when no floor is set.
const MIN_FREE_TO_RESUME: u64 = 1 << 20;

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
    /// Records below this offset are committed and served to readers.
    committed: u64,
    /// Readers waiting for an offset at or past `committed`.
    waiters: Vec<(u64, oneshot::Sender<Result<u64, LogError>>)>,
    restarts: u64,
    /// Restarts of this LogActor itself, for escalation.
    restart_budget: RestartBudget,
    failed: Option<String>,
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
    /// Told how long syncs take; handed to every SegmentActor.
    fsync: super::observer::Observer,
    closed: bool,
    report: OpenReport,
}

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
        Ok(LogActor {
            partition: partition.into(),
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
            restarts: 0,
            restart_budget: RestartBudget::default(),
            failed: None,
            read_only,
            damaged_from,
            disk_full: None,
            checkpoint: opened.checkpoint,
            checkpoint_writing: false,
            poisoned: PoisonedSessions::default(),
            fsync: None,
            closed: false,
            report: opened.report,
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

    /// Starts the actor under a supervisor on the current actix arbiter.
    pub fn start(self) -> Addr<LogActor> {
        actix::Supervisor::start(move |_| self)
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
        let addr = actix::Supervisor::start(move |_| SegmentActor::new(setup, segment));
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

    /// Why writes are refused now, if they are.
    fn refuse_writes(&mut self) -> Option<LogError> {
        if self.closed {
            return Some(LogError::Closed(self.partition.clone()));
        }
        if let Some(reason) = &self.failed {
            return Some(LogError::PartitionFailed {
                partition: self.partition.clone(),
                reason: reason.clone(),
            });
        }
        if let Some(reason) = &self.read_only {
            return Some(LogError::ReadOnly {
                partition: self.partition.clone(),
                reason: reason.clone(),
            });
        }
        if self.disk_full.is_some() {
            self.probe_free_space();
        }
        self.disk_full.as_ref().map(|reason| {
            LogError::Storage(StorageError::DiskFull {
                op: "append to",
                path: self.dir.clone(),
                reason: reason.clone(),
            })
        })
    }

    /// Leaves the disk-full state when the file system has room again.
    fn probe_free_space(&mut self) {
        if self.disk_full.is_none() {
            return;
        }
        let needed = self.config.min_free_bytes.max(MIN_FREE_TO_RESUME);
        if let Ok(free) = free_bytes(&self.dir)
            && free >= needed
        {
            tracing::info!(partition = %self.partition, free, "disk space is back: appends resume");
            self.disk_full = None;
        }
    }

    /// A full-disk error when the free-space floor is crossed, else `None`.
    fn check_free_floor(&self) -> Option<StorageError> {
        let floor = self.config.min_free_bytes;
        match free_bytes(&self.dir) {
            Ok(free) if floor > 0 && free < floor => Some(StorageError::DiskFull {
                op: "create a segment in",
                path: self.dir.clone(),
                reason: format!("{free} bytes free, below the floor of {floor} (min-free-bytes)"),
            }),
            _ => None,
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.active_entries < self.config.index_capacity()
            && self.active_bytes + (FRAME_HEADER_LEN + len) as u64 <= self.config.max_store_bytes
    }

    /// Whether `records` fit in an empty segment, all together.
    fn fits_in_a_new_segment(&self, records: &[Vec<u8>]) -> bool {
        let bytes: u64 = records
            .iter()
            .map(|r| (FRAME_HEADER_LEN + r.len()) as u64)
            .sum();
        (records.len() as u64) <= self.config.index_capacity()
            && FILE_HEADER_LEN as u64 + bytes <= self.config.max_store_bytes
    }

    /// Creates the segment a failed roll could not (after the disk filled).
    fn create_missing_segment(&mut self, ctx: &mut Context<Self>) -> Result<(), LogError> {
        let Some(base) = self.needs_segment else {
            return Ok(());
        };
        if let Some(full) = self.check_free_floor() {
            return Err(full.into());
        }
        let segment = Segment::create(&self.dir, base, &self.config)?;
        let handle = self.spawn_segment(segment, ctx);
        self.segments.push(handle);
        self.active_bytes = FILE_HEADER_LEN as u64;
        self.active_entries = 0;
        self.needs_segment = None;
        Ok(())
    }

    /// Sends as many records as fit to the active segment; rolls for the rest.
    fn dispatch(
        &mut self,
        mut records: Vec<Vec<u8>>,
        session: Option<u64>,
        reply: AppendReply,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = self.create_missing_segment(ctx) {
            if let Some(s) = session {
                self.poisoned.insert(s);
            }
            let _ = reply.send(Err(e));
            return;
        }
        let mut fit = 0;
        while fit < records.len() && self.fits(records[fit].len()) {
            self.active_bytes += (FRAME_HEADER_LEN + records[fit].len()) as u64;
            self.active_entries += 1;
            fit += 1;
        }
        if fit > 0 && fit < records.len() && self.fits_in_a_new_segment(&records) {
            // Roll first rather than split the batch: a batch split across
            // segments could end half appended if creating the next segment fails.
            for r in &records[..fit] {
                self.active_bytes -= (FRAME_HEADER_LEN + r.len()) as u64;
                self.active_entries -= 1;
            }
            fit = 0;
        }
        let Some(active) = self.active() else {
            let _ = reply.send(Err(LogError::Closed(self.partition.clone())));
            return;
        };
        if fit == records.len() {
            active.addr.do_send(SegAppend {
                records,
                reply,
                session,
            });
            return;
        }
        let rest = records.split_off(fit);
        // The parts of a split batch are one session: if the first part is
        // refused, the rest is refused too, never appended alone.
        let session = if fit > 0 {
            session.or_else(|| Some(super::messages::new_session()))
        } else {
            session
        };
        let rest_reply = if fit == 0 {
            reply
        } else {
            // Two appends, one answer: offsets are contiguous across the roll.
            let (first_tx, first_rx) = oneshot::channel();
            let (rest_tx, rest_rx) = oneshot::channel();
            active.addr.do_send(SegAppend {
                records,
                reply: first_tx,
                session,
            });
            let partition = self.partition.clone();
            actix_rt::spawn(async move {
                let gone = || LogError::indeterminate(&partition, "segment actor went away");
                let first = first_rx.await.unwrap_or_else(|_| Err(gone()));
                let rest: Result<Range<u64>, LogError> =
                    rest_rx.await.unwrap_or_else(|_| Err(gone()));
                let answer = match (first, rest) {
                    (Ok(a), Ok(b)) => Ok(a.start..b.end),
                    (Err(e), _) => Err(e),
                    // The first part is in the log: the batch is half appended.
                    (Ok(a), Err(e)) => Err(LogError::indeterminate(
                        &partition,
                        format!(
                            "a batch larger than a segment was split: offsets {}..{} were appended, the rest failed: {e}",
                            a.start, a.end
                        ),
                    )),
                };
                let _ = reply.send(answer);
            });
            rest_tx
        };
        self.roll_then_dispatch(rest, session, rest_reply, ctx);
    }

    /// Seals the active segment, starts the next one at its real end, then
    /// dispatches `records`. The mailbox waits meanwhile, so appends keep
    /// their order.
    fn roll_then_dispatch(
        &mut self,
        records: Vec<Vec<u8>>,
        session: Option<u64>,
        reply: AppendReply,
        ctx: &mut Context<Self>,
    ) {
        let Some(active) = self.active() else { return };
        let seal = active.addr.send(Seal);
        ctx.wait(seal.into_actor(self).map(move |sealed, act, ctx| {
            let sealed = match sealed {
                Ok(Ok(sealed)) => sealed,
                Ok(Err(e)) => {
                    let _ = reply.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = reply.send(Err(LogError::unavailable(
                        &act.partition,
                        "segment actor went away while rolling",
                    )));
                    return;
                }
            };
            act.poisoned.extend(sealed.poisoned);
            if sealed.still_active {
                // The estimate counted appends that were refused: it is empty.
                act.active_bytes = FILE_HEADER_LEN as u64;
                act.active_entries = 0;
                act.dispatch(records, session, reply, ctx);
                return;
            }
            if let Some(old) = act.segments.last_mut() {
                old.end = Some(sealed.next);
                old.size_bytes = act.active_bytes;
            }
            act.needs_segment = Some(sealed.next);
            tracing::debug!(partition = %act.partition, base = sealed.next, "rolling to a new segment");
            act.dispatch(records, session, reply, ctx);
        }));
    }

    /// Recomputes the committed offset: readers see a segment's records
    /// only once every segment before it is complete, so a roll never
    /// exposes records the old segment's seal has not synced yet.
    fn advance_committed(&mut self) {
        let mut readable = self.segments.first().map_or(self.committed, |s| s.base);
        for s in &self.segments {
            readable = s.committed;
            if !s.complete() {
                break;
            }
        }
        if readable > self.committed {
            self.committed = readable;
            self.wake_waiters();
        }
    }

    /// Everything below this offset is on disk: the recovery point.
    fn durable_point(&self) -> u64 {
        let mut point = self.checkpoint.recovery_point;
        for s in &self.segments {
            point = point.max(s.synced.min(s.committed));
            match s.end {
                Some(end) if s.synced >= end => continue,
                _ => break,
            }
        }
        point
    }

    /// Writes the checkpoint on the blocking pool when the recovery point moved.
    fn write_checkpoint(&mut self, ctx: &mut Context<Self>) {
        let point = self.durable_point();
        if self.checkpoint_writing || point <= self.checkpoint.recovery_point {
            return;
        }
        let mut next = self.checkpoint.clone();
        next.recovery_point = point;
        self.checkpoint_writing = true;
        let dir = self.dir.clone();
        let job = actix_rt::task::spawn_blocking(move || next.store(&dir).map(|()| next));
        ctx.spawn(job.into_actor(self).map(|joined, act, _| {
            act.checkpoint_writing = false;
            match joined {
                Ok(Ok(written)) => act.checkpoint = written,
                Ok(Err(e)) => {
                    tracing::warn!(partition = %act.partition, error = %e, "cannot write the checkpoint")
                }
                Err(e) => {
                    tracing::warn!(partition = %act.partition, error = %e, "checkpoint task failed")
                }
            }
        }));
    }

    fn wake_waiters(&mut self) {
        let committed = self.committed;
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].0 < committed {
                let (_, tx) = self.waiters.swap_remove(i);
                let _ = tx.send(Ok(committed));
            } else if self.waiters[i].1.is_closed() {
                self.waiters.swap_remove(i); // the reader gave up
            } else {
                i += 1;
            }
        }
    }

    fn fail_waiters(&mut self, error: impl Fn() -> LogError) {
        for (_, tx) in self.waiters.drain(..) {
            let _ = tx.send(Err(error()));
        }
    }

    /// The error for reading `offset`, if it is out of range or in a gap.
    fn check_range(&self, offset: u64) -> Result<(), LogError> {
        let (lowest, next) = (self.lowest(), self.committed);
        let damaged = |why: String| -> LogError {
            StorageError::corruption(
                &self.dir,
                0,
                format!(
                    "record {offset} cannot be read: {why} ({})",
                    self.read_only.as_deref().unwrap_or("see the start-up log")
                ),
            )
            .into()
        };
        if offset >= next && self.read_only.is_some() {
            return Err(damaged(format!(
                "the partition is damaged from offset {next} on"
            )));
        }
        if offset < lowest || offset >= next {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                lowest,
                next,
            }
            .into());
        }
        let segment = self.segment_for(offset);
        let end = segment.end.unwrap_or(u64::MAX);
        if offset >= segment.base && offset < end {
            return Ok(());
        }
        let end = if offset < segment.base { lowest } else { end };
        // Between two segments: a known lost range, or damage.
        let resume = self
            .segments
            .iter()
            .find(|s| s.base > offset)
            .map_or(next, |s| s.base);
        if let Some(lost) = self.checkpoint.lost_range_of(offset) {
            return Err(StorageError::RecordsLost {
                from: lost.range.start,
                to: lost.range.end,
                cause: match lost.cause {
                    crate::storage::LostCause::PowerCut => "power cut beyond the recovery point",
                    crate::storage::LostCause::Repair => "cut by repair",
                },
            }
            .into());
        }
        Err(damaged(format!(
            "the partition is damaged from offset {end} to {resume}"
        )))
    }

    fn segment_for(&self, offset: u64) -> &SegmentHandle {
        let i = self
            .segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        &self.segments[i]
    }

    /// Runs a handler body. A panic in it (a bug) stops the actor, so its
    /// supervisor reopens the partition; the caller gets `on_panic`'s answer.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
        on_panic: impl FnOnce(LogError) -> R,
    ) -> R {
        let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut *self, &mut *ctx)));
        match outcome {
            Ok(r) => r,
            Err(panic) => {
                let reason = super::segment_actor::panic_message(&*panic);
                tracing::error!(partition = %self.partition, %reason, "log actor failed: restarting it");
                ctx.stop();
                on_panic(LogError::indeterminate(
                    &self.partition,
                    format!("log actor failed ({reason}) and is restarting"),
                ))
            }
        }
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
                let reason = format!("reopening after a failure: {e}");
                tracing::error!(partition = %self.partition, %reason, "partition cannot be reopened");
                self.failed = Some(reason.clone());
                let partition = self.partition.clone();
                self.fail_waiters(|| LogError::PartitionFailed {
                    partition: partition.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Removes the `n` oldest segments (never the active one); the answer
    /// comes once their files are deleted, so a crash right after cannot
    /// bring them back.
    fn remove_oldest(&mut self, n: usize) -> ResponseFuture<Result<usize, LogError>> {
        let n = n.min(self.segments.len().saturating_sub(1));
        let removals: Vec<_> = self
            .segments
            .drain(..n)
            .map(|handle| {
                tracing::info!(partition = %self.partition, base = handle.base, "deleting segment");
                handle.addr.send(RemoveSegment)
            })
            .collect();
        let partition = self.partition.clone();
        Box::pin(async move {
            for removed in join_all(removals).await {
                removed.unwrap_or_else(|_| {
                    Err(LogError::unavailable(&partition, "segment actor went away"))
                })?;
            }
            Ok(n)
        })
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
        ctx.run_interval(CHECKPOINT_INTERVAL, |act, ctx| act.write_checkpoint(ctx));
        ctx.run_interval(DISK_FULL_PROBE_INTERVAL, |act, _| act.probe_free_space());
    }
}

impl Supervised for LogActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        if self.closed || self.failed.is_some() {
            return;
        }
        self.restarts += 1;
        if !self.restart_budget.allow() {
            let reason = format!(
                "log actor failed {} times within {:?}",
                self.restart_budget.count(),
                RestartBudget::WINDOW
            );
            tracing::error!(partition = %self.partition, %reason, "giving up on the partition");
            self.failed = Some(reason.clone());
            let partition = self.partition.clone();
            self.fail_waiters(|| LogError::PartitionFailed {
                partition: partition.clone(),
                reason: reason.clone(),
            });
            return;
        }
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

impl Handler<FromSegment> for LogActor {
    type Result = ();

    fn handle(&mut self, from: FromSegment, ctx: &mut Context<Self>) {
        if !self.segments.iter().any(|s| s.actor == from.actor) {
            tracing::debug!(event = ?from.event, "event of a segment actor no longer running: ignored");
            return;
        }
        let event = from.event;
        self.guarded(
            ctx,
            move |act, ctx| act.on_segment_event(event, ctx),
            |_| (),
        )
    }
}

impl LogActor {
    fn on_segment_event(&mut self, event: SegmentEvent, _ctx: &mut Context<Self>) {
        match event {
            SegmentEvent::Committed { base, next } => {
                if let Some(h) = self.handle_of(base) {
                    h.committed = h.committed.max(next);
                }
                self.advance_committed();
            }
            SegmentEvent::Synced { base, next } => {
                if let Some(h) = self.handle_of(base) {
                    h.synced = h.synced.max(next);
                }
            }
            SegmentEvent::RolledBack {
                base,
                generation,
                size_bytes,
                entries,
                error,
                poisoned,
            } => {
                self.poisoned.extend(poisoned);
                tracing::warn!(partition = %self.partition, base, %error, "disk full: appends refused until space returns");
                self.disk_full = Some(error.to_string());
                self.resume_segment(base, size_bytes, entries, generation);
            }
            SegmentEvent::Restarted {
                base,
                generation,
                next,
                size_bytes,
                entries,
                reason,
                poisoned,
            } => {
                self.restarts += 1;
                self.poisoned.extend(poisoned);
                tracing::warn!(partition = %self.partition, base, next, %reason, "segment restarted");
                if let Some(h) = self.handle_of(base) {
                    h.committed = h.committed.max(next);
                    h.synced = h.synced.max(next);
                    if h.end.is_some() {
                        h.end = Some(next.max(h.end.unwrap_or(next)));
                    }
                }
                self.resume_segment(base, size_bytes, entries, generation);
                self.advance_committed();
            }
            SegmentEvent::Failed { base, reason } => {
                let is_active = self.active().is_some_and(|a| a.base == base);
                tracing::error!(partition = %self.partition, base, %reason, "segment failed for good");
                if is_active {
                    self.failed = Some(format!("segment {base}: {reason}"));
                    let (partition, reason) = (self.partition.clone(), reason.clone());
                    self.fail_waiters(|| LogError::PartitionFailed {
                        partition: partition.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            SegmentEvent::Damaged { base, reason } => {
                tracing::error!(partition = %self.partition, base, %reason, "damaged durable data found by a read: the partition is now read-only");
                self.read_only.get_or_insert_with(|| {
                    format!("damaged durable data: {reason}; run `proglog repair` (see the README)")
                });
            }
        }
    }

    /// After a rollback or restart of segment `base`: its real size replaces
    /// the estimate (every append sent before is refused by it), then it
    /// takes appends again.
    fn resume_segment(&mut self, base: u64, size_bytes: u64, entries: u64, generation: u64) {
        let is_active =
            self.active().is_some_and(|a| a.base == base) && self.needs_segment.is_none();
        if is_active {
            self.active_bytes = size_bytes;
            self.active_entries = entries;
        }
        if let Some(h) = self.handle_of(base) {
            h.addr.do_send(Resume { generation });
        }
    }
}

impl Handler<Append> for LogActor {
    type Result = ResponseFuture<Result<Range<u64>, LogError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| {
                let (tx, rx) = oneshot::channel();
                act.on_append(msg, tx, ctx);
                let partition = act.partition.clone();
                Box::pin(
                    async move { rx.await.unwrap_or_else(|_| Err(dropped_append(&partition))) },
                ) as Self::Result
            },
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    /// Checks an append and dispatches it; the outcome goes to `reply`.
    fn on_append(&mut self, msg: Append, reply: AppendReply, ctx: &mut Context<Self>) {
        if let Some(e) = self.refuse_writes() {
            if let Some(s) = msg.session {
                self.poisoned.insert(s);
            }
            let _ = reply.send(Err(e));
            return;
        }
        if self.poisoned.contains(msg.session) {
            let _ = reply.send(Err(LogError::unavailable(
                &self.partition,
                "an earlier batch of this produce stream failed; later batches are not appended",
            )));
            return;
        }
        let max = self.config.max_record_bytes;
        if let Some(r) = msg.records.iter().find(|r| r.len() > max as usize) {
            let size = r.len();
            let _ = reply.send(Err(StorageError::RecordTooLarge { size, max }.into()));
            return;
        }
        if msg.records.is_empty() {
            let at = self.committed;
            let _ = reply.send(Ok(at..at));
            return;
        }
        self.dispatch(msg.records, msg.session, reply, ctx);
    }
}

/// The answer of an append whose reply sender was dropped without an
/// answer: the segment actor holding it failed, so it may have been written.
fn dropped_append(partition: &str) -> LogError {
    LogError::indeterminate(partition, "append was dropped by a failing segment actor")
}

impl Handler<AppendInOrder> for LogActor {
    type Result = ();

    fn handle(&mut self, msg: AppendInOrder, ctx: &mut Context<Self>) {
        // The reply goes straight to the segment: no task per append.
        self.guarded(
            ctx,
            move |act, ctx| act.on_append(msg.append, msg.reply, ctx),
            |_| (),
        )
    }
}

impl Handler<Read> for LogActor {
    type Result = ResponseFuture<Result<Vec<u8>, LogError>>;

    fn handle(&mut self, msg: Read, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| act.on_read(msg, ctx),
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    fn on_read(&mut self, msg: Read, _ctx: &mut Context<Self>) -> <Self as Handler<Read>>::Result {
        if let Err(e) = self.check_range(msg.offset) {
            return Box::pin(ready(Err(e)));
        }
        self.ask_segment(msg.offset, SegRead { offset: msg.offset })
    }

    /// Forwards `msg` to the SegmentActor holding `offset`; its answer is the reply.
    fn ask_segment<M, T>(&self, offset: u64, msg: M) -> ResponseFuture<Result<T, LogError>>
    where
        M: Message<Result = Result<T, LogError>> + Send + 'static,
        T: Send + 'static,
        SegmentActor: Handler<M>,
    {
        let request = self.segment_for(offset).addr.send(msg);
        let partition = self.partition.clone();
        Box::pin(async move {
            request.await.unwrap_or_else(|_| {
                Err(LogError::unavailable(&partition, "segment actor went away"))
            })
        })
    }
}

impl Handler<ReadBatch> for LogActor {
    type Result = ResponseFuture<Result<RecordBatch, LogError>>;

    fn handle(&mut self, msg: ReadBatch, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| act.on_read_batch(msg, ctx),
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    fn on_read_batch(
        &mut self,
        msg: ReadBatch,
        _ctx: &mut Context<Self>,
    ) -> <Self as Handler<ReadBatch>>::Result {
        if msg.from == self.committed && msg.from >= self.lowest() {
            return Box::pin(ready(Ok(RecordBatch::default())));
        }
        if let Err(e) = self.check_range(msg.from) {
            return Box::pin(ready(Err(e)));
        }
        let read = SegReadBatch {
            from: msg.from,
            until: self.committed,
            max_bytes: msg.max_bytes,
        };
        self.ask_segment(msg.from, read)
    }
}

impl Handler<WaitFor> for LogActor {
    type Result = ResponseFuture<Result<u64, LogError>>;

    fn handle(&mut self, msg: WaitFor, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| act.on_wait_for(msg, ctx),
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    fn on_wait_for(
        &mut self,
        msg: WaitFor,
        _ctx: &mut Context<Self>,
    ) -> <Self as Handler<WaitFor>>::Result {
        if msg.offset < self.committed {
            return Box::pin(ready(Ok(self.committed)));
        }
        if self.closed || self.failed.is_some() {
            let e = self.refuse_writes();
            return Box::pin(ready(Err(
                e.unwrap_or_else(|| LogError::Closed(self.partition.clone()))
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((msg.offset, tx));
        let partition = self.partition.clone();
        Box::pin(async move { rx.await.unwrap_or(Err(LogError::Closed(partition))) })
    }
}

impl Handler<Truncate> for LogActor {
    type Result = ResponseFuture<Result<usize, LogError>>;

    fn handle(&mut self, msg: Truncate, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| act.on_truncate(msg, ctx),
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    fn on_truncate(
        &mut self,
        msg: Truncate,
        _ctx: &mut Context<Self>,
    ) -> <Self as Handler<Truncate>>::Result {
        if self.closed || self.failed.is_some() {
            let e = self
                .refuse_writes()
                .unwrap_or_else(|| LogError::Closed(self.partition.clone()));
            return Box::pin(ready(Err(e)));
        }
        let lowest = msg.lowest.min(self.committed);
        let n = self
            .segments
            .iter()
            .take_while(|s| s.complete() && s.committed <= lowest)
            .count();
        self.remove_oldest(n)
    }
}

impl Handler<ApplyRetention> for LogActor {
    type Result = ResponseFuture<Result<usize, LogError>>;

    fn handle(&mut self, msg: ApplyRetention, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| act.on_apply_retention(msg, ctx),
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    fn on_apply_retention(
        &mut self,
        _msg: ApplyRetention,
        _ctx: &mut Context<Self>,
    ) -> <Self as Handler<ApplyRetention>>::Result {
        if self.closed || self.failed.is_some() {
            let e = self
                .refuse_writes()
                .unwrap_or_else(|| LogError::Closed(self.partition.clone()));
            return Box::pin(ready(Err(e)));
        }
        let mut ages = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let path = self.dir.join(file_name(s.base, "store"));
            let modified = match std::fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(modified) => modified,
                Err(e) => return Box::pin(ready(Err(StorageError::io("stat", &path)(e).into()))),
            };
            ages.push((s.size_bytes, modified));
        }
        if let Some(active) = ages.last_mut() {
            active.0 = self.active_bytes;
        }
        let n = self
            .config
            .retention
            .segments_to_delete(&ages, SystemTime::now());
        self.remove_oldest(n)
    }
}

impl Handler<Stats> for LogActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _ctx: &mut Context<Self>) -> Self::Result {
        let sealed: u64 = self
            .segments
            .iter()
            .rev()
            .skip(1)
            .map(|s| s.size_bytes)
            .sum();
        MessageResult(LogStats {
            partition: self.partition.clone(),
            lowest_offset: self.lowest(),
            next_offset: self.committed,
            segments: self.segments.len(),
            size_bytes: sealed
                + if self.segments.is_empty() {
                    0
                } else {
                    self.active_bytes
                },
            restarts: self.restarts,
            failed: self.failed.clone(),
            read_only: self.read_only.clone(),
            disk_full: self.disk_full.clone(),
            recovery_point: self.durable_point(),
        })
    }
}

impl Handler<Close> for LogActor {
    type Result = ResponseActFuture<Self, Result<(), LogError>>;

    fn handle(&mut self, _: Close, _ctx: &mut Context<Self>) -> Self::Result {
        self.closed = true;
        let closes: Vec<_> = self
            .segments
            .iter()
            .map(|s| s.addr.send(CloseSegment))
            .collect();
        let partition = self.partition.clone();
        Box::pin(
            async move {
                let mut result = Ok(());
                for outcome in join_all(closes).await {
                    let outcome = outcome.unwrap_or_else(|_| {
                        Err(LogError::unavailable(&partition, "segment actor went away"))
                    });
                    if result.is_ok() {
                        result = outcome;
                    }
                }
                result
            }
            .into_actor(self)
            .map(|result, act, _ctx| {
                act.segments.clear();
                act.lock = None;
                let partition = act.partition.clone();
                act.fail_waiters(|| LogError::Closed(partition.clone()));
                tracing::info!(partition = %act.partition, "partition closed");
                result
            }),
        )
    }
}

impl Handler<InjectLogFault> for LogActor {
    type Result = ();

    fn handle(&mut self, _: InjectLogFault, ctx: &mut Context<Self>) {
        self.guarded(ctx, |_, _| panic!("injected fault"), |_| ());
    }
}

impl Handler<InjectSegmentFault> for LogActor {
    type Result = ();

    fn handle(&mut self, _: InjectSegmentFault, _ctx: &mut Context<Self>) {
        if let Some(active) = self.active() {
            active.addr.do_send(PanicNow);
        }
    }
}
