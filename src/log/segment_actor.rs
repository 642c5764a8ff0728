//! SegmentActor: owns one [`Segment`]; appends with group commit, reads,
//! seals; takes back appends a full disk refused; restarted through the
//! recovery path when it fails.
//!
//! Supervision (see `crate::supervision`): a panic in any of its work (a
//! handler, the completion of a sync, seal or read, the sync timer) or a
//! write error restarts it. The restart keeps its identity, settings and
//! the offsets known durable; it answers every append not yet acknowledged
//! with an indeterminate error, poisons the produce sessions that may have
//! had one in flight, drops the segment with its cached pages and reopens
//! it from the disk through recovery (never cutting below what was synced),
//! then refuses appends until its LogActor has taken in the new end
//! ([`Resume`]). Past its restart budget it escalates to its LogActor.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::error::LogError;
use super::observer::Observer;
use super::session::PoisonedSessions;
use crate::storage::{
    LogConfig, PlannedRead, RecordBatch, Records, Segment, StorageError, SyncPolicy,
};
use crate::supervision::{Failpoints, InjectPanic, Work};

/// The free space is read again after this long (other writers use the disk too).
const FREE_SPACE_RECHECK: Duration = Duration::from_millis(100);
/// ... or when it was within this much of the floor.
const FREE_SPACE_MARGIN: u64 = 16 << 20;

/// Where an append's answer goes.
pub(crate) type AppendReply = oneshot::Sender<Result<Range<u64>, LogError>>;

/// Appends records; the answer is sent on `reply` after the group commit
/// that covers them. Sent with `do_send`: the caller waits on the oneshot.
/// An append's reply while its [`SegAppend`] waits in a mailbox. Dropped
/// unhandled (its segment actor stopped first: a restart budget spent, a
/// retirement), the append was certainly not written, and the caller is
/// told so (`Unavailable`, safe to resend); only an append the actor took
/// and then lost is `Indeterminate`.
pub(crate) struct QueuedReply {
    reply: Option<AppendReply>,
    partition: std::sync::Arc<str>,
}

impl QueuedReply {
    pub(crate) fn new(reply: AppendReply, partition: &std::sync::Arc<str>) -> QueuedReply {
        QueuedReply {
            reply: Some(reply),
            partition: partition.clone(),
        }
    }

    /// Taken by the handler: from here on the actor answers it.
    fn take(mut self) -> Option<AppendReply> {
        self.reply.take()
    }
}

impl Drop for QueuedReply {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(LogError::unavailable(
                &self.partition,
                "its segment actor stopped before taking the append: not appended",
            )));
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SegAppend {
    /// Frames (a replica's) must start at this segment's next offset.
    pub records: Records,
    pub reply: QueuedReply,
    /// The produce stream it belongs to, whose order must hold.
    pub session: Option<u64>,
    /// Write-behind for this append on (a replica far behind) or off.
    pub write_behind: bool,
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

/// What a [`Seal`] answers.
pub(crate) struct Sealed {
    /// The segment's real next offset: where the next segment starts.
    pub next: u64,
    /// Sessions whose appends failed here: the next segment refuses them too.
    pub poisoned: PoisonedSessions,
    /// The segment was empty (its appends were refused or taken back): it
    /// was not sealed and stays the active segment.
    pub still_active: bool,
}

/// Turns a commit waits at most for concurrent appends to gather.
const GATHER_TURNS: u32 = 8;

/// Appends one commit gathers before it stops waiting for more.
const GATHER_APPENDS: usize = 256;

/// Makes the segment read-only (after its pending appends are committed).
#[derive(Message)]
#[rtype(result = "Result<Sealed, LogError>")]
pub(crate) struct Seal;

/// Seals (if active) and releases the files; the actor then only answers errors.
#[derive(Message)]
#[rtype(result = "Result<(), LogError>")]
pub(crate) struct CloseSegment;

/// Deletes the segment's files.
#[derive(Message)]
#[rtype(result = "Result<(), LogError>")]
pub(crate) struct RemoveSegment;

/// From the LogActor, after it has taken in a `RolledBack` or `Restarted`
/// event: appends sent before this were refused, appends after it are taken.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Resume {
    /// The refusal it ends: a Resume for an older refusal (the actor failed
    /// again meanwhile) is ignored.
    pub generation: u64,
}

/// Self-sent after a burst of appends: one flush (and sync) for all of them.
#[derive(Message)]
#[rtype(result = "()")]
struct Commit;

/// A [`SegmentEvent`] with the identity of the SegmentActor that sent it:
/// the LogActor ignores events of actors it no longer runs (a LogActor
/// restart replaces them all, while their last events may still be queued).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct FromSegment {
    pub actor: u64,
    pub event: SegmentEvent,
}

/// A fresh SegmentActor identity.
pub(crate) fn new_actor_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a SegmentActor tells its LogActor.
#[derive(Debug)]
pub(crate) enum SegmentEvent {
    /// Records below `next` are committed (flushed, synced per policy) and may be served.
    Committed { base: u64, next: u64 },
    /// Records below `next` are on disk (an `fdatasync` or the seal covered them).
    Synced { base: u64, next: u64 },
    /// A full disk (or the free-space floor) refused the appends since the
    /// last commit: they were taken back and answered "disk full". The
    /// segment holds `entries` records in `size_bytes`; it refuses appends
    /// until [`Resume`].
    RolledBack {
        base: u64,
        generation: u64,
        size_bytes: u64,
        entries: u64,
        error: StorageError,
        poisoned: PoisonedSessions,
    },
    /// The actor failed and reopened its segment through recovery; it
    /// refuses appends until [`Resume`].
    Restarted {
        base: u64,
        generation: u64,
        next: u64,
        size_bytes: u64,
        entries: u64,
        reason: String,
        poisoned: PoisonedSessions,
    },
    /// A read found damaged data in this segment (now marked for a full
    /// scan at the next open).
    Damaged { base: u64, reason: String },
}

/// Why appends are refused until the LogActor sends [`Resume`].
#[derive(Debug, Clone)]
enum Refusal {
    /// A full disk took back the appends before them.
    DiskFull(String),
    /// The actor failed and restarted.
    Restarted(String),
}

/// An append waiting for its commit.
struct Pending {
    reply: AppendReply,
    offsets: Range<u64>,
    session: Option<u64>,
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
    events: Recipient<FromSegment>,
    /// This actor's identity in its events.
    actor: u64,
    /// Appended to the write buffer, not flushed yet.
    pending: Vec<Pending>,
    /// Flushed, waiting for the `fdatasync` in flight.
    syncing: Vec<Pending>,
    /// Flushed while a sync was in flight: they need the next one.
    next_sync: Vec<Pending>,
    sync_in_flight: bool,
    commit_scheduled: bool,
    /// Appends the last commit covered: more than one means they arrive
    /// concurrently, and the next commit waits a turn to gather more.
    last_commit_appends: usize,
    /// The segment's next offset at the last successful flush: what a
    /// failed write rolls back to.
    flushed_next: u64,
    /// Bytes were flushed since the last completed sync.
    unsynced: bool,
    /// Records below this offset are on disk (synced by this actor, or
    /// durable when it was opened): a reopen never cuts below it.
    synced_next: u64,
    last_sync: Instant,
    /// The failed segment being released on the blocking pool (its cached
    /// pages dropped); the reopen waits for it.
    closing: Option<actix_rt::task::JoinHandle<()>>,
    /// Free bytes last read with `statvfs`, counted down by what was written since.
    free_seen: Option<(u64, Instant)>,
    /// Set after a rollback or a restart until the LogActor's [`Resume`].
    refusing: Option<Refusal>,
    /// Counts refusals, so a Resume ends only the one it answers.
    refusal_generation: u64,
    poisoned: PoisonedSessions,
    /// Closed or removed on purpose: answer errors, do not come back.
    retired: bool,
    /// A read already reported damage here (reported once).
    damage_reported: bool,
    failpoints: Failpoints,
    /// Told how long each sync and seal took (metrics), if anyone listens.
    fsync: Observer,
}

/// What a SegmentActor is given by its LogActor, besides its segment.
pub(crate) struct SegmentSetup {
    pub partition: String,
    pub dir: PathBuf,
    pub config: LogConfig,
    /// Where its events go, tagged with `actor`.
    pub events: Recipient<FromSegment>,
    pub actor: u64,
    /// Produce sessions already refused: this segment refuses them too.
    pub poisoned: PoisonedSessions,
    pub fsync: Observer,
}

impl SegmentActor {
    pub(crate) fn new(setup: SegmentSetup, segment: Segment) -> SegmentActor {
        let SegmentSetup {
            partition,
            dir,
            config,
            events,
            actor,
            poisoned,
            fsync,
        } = setup;
        SegmentActor {
            actor,
            partition,
            base: segment.base(),
            writable: segment.is_writable(),
            flushed_next: segment.next(),
            synced_next: segment.next(),
            segment: Some(segment),
            config,
            events,
            pending: Vec::new(),
            syncing: Vec::new(),
            next_sync: Vec::new(),
            sync_in_flight: false,
            commit_scheduled: false,
            last_commit_appends: 0,
            unsynced: false,
            last_sync: Instant::now(),
            refusing: None,
            closing: None,
            free_seen: None,
            refusal_generation: 0,
            poisoned,
            retired: false,
            damage_reported: false,
            failpoints: Failpoints::default(),
            fsync,
            dir,
        }
    }

    /// Answers an append with an error; its produce session is poisoned, so
    /// no later batch of it is appended behind this one.
    fn refuse(&mut self, reply: AppendReply, session: Option<u64>, error: LogError) {
        if let Some(s) = session {
            self.poisoned.insert(s);
        }
        let _ = reply.send(Err(error));
    }

    /// Refuses appends until the LogActor's [`Resume`] for the returned generation.
    fn refuse_until_resume(&mut self, refusal: Refusal) -> u64 {
        self.refusing = Some(refusal);
        self.refusal_generation += 1;
        self.refusal_generation
    }

    /// Tells the LogActor, naming this actor.
    fn emit(&self, event: SegmentEvent) {
        self.events.do_send(FromSegment {
            actor: self.actor,
            event,
        });
    }

    fn unavailable(&self) -> LogError {
        if self.retired {
            LogError::Closed(self.partition.clone())
        } else {
            LogError::unavailable(&self.partition, "segment is restarting")
        }
    }

    /// Runs storage work on the segment and sorts its errors. An error from
    /// a write (`write`) fails the actor: every waiting append is answered
    /// and the actor stops, so its supervisor reopens the segment through
    /// recovery. A full disk is not a failure: the appends since the last
    /// commit are taken back and answered "disk full". Read errors are only
    /// answered (damage is reported). Panics are the supervisor's.
    fn storage_work<T>(
        &mut self,
        ctx: &mut Context<Self>,
        write: bool,
        work: impl FnOnce(&mut Segment) -> Result<T, StorageError>,
    ) -> Result<T, LogError> {
        let Some(segment) = self.segment.as_mut() else {
            return Err(self.unavailable());
        };
        match work(segment) {
            Ok(value) => Ok(value),
            Err(e) if !write => {
                if e.is_corruption() {
                    self.report_damage(&e);
                }
                Err(e.into())
            }
            Err(e) if e.is_disk_full() => {
                let answer = disk_full_copy(&e);
                self.take_back(ctx, e);
                Err(answer.into())
            }
            Err(e) => {
                let reason = e.to_string();
                self.fail(ctx, &reason);
                Err(LogError::indeterminate(&self.partition, reason))
            }
        }
    }

    /// A read met damaged data: the segment is flagged for a full scan at the
    /// next open, and the LogActor turns the partition read-only.
    fn report_damage(&mut self, e: &StorageError) {
        if std::mem::replace(&mut self.damage_reported, true) {
            return;
        }
        if let Some(segment) = self.segment.as_mut()
            && let Err(mark) = segment.mark_suspect()
        {
            tracing::error!(partition = %self.partition, base = self.base, error = %mark, "cannot flag the damaged segment for a scan");
        }
        self.emit(SegmentEvent::Damaged {
            base: self.base,
            reason: e.to_string(),
        });
    }

    /// Takes back every append since the last successful flush after a full
    /// disk refused a write: the file is cut back, so "not appended" is true.
    /// The appends are answered "disk full" and the actor refuses more until
    /// the LogActor has taken in the event and sends [`Resume`].
    fn take_back(&mut self, ctx: &mut Context<Self>, error: StorageError) {
        let Some(segment) = self.segment.as_mut() else {
            return;
        };
        if let Err(e) = segment.rollback(self.flushed_next) {
            self.fail(ctx, &format!("taking back appends after {error}: {e}"));
            return;
        }
        tracing::warn!(partition = %self.partition, base = self.base, %error, "disk full: appends since the last commit were taken back");
        let (size_bytes, entries) = (segment.size_bytes(), segment.len());
        for p in std::mem::take(&mut self.pending) {
            self.refuse(p.reply, p.session, disk_full_copy(&error).into());
        }
        self.commit_scheduled = false;
        let generation = self.refuse_until_resume(Refusal::DiskFull(error.to_string()));
        self.emit(SegmentEvent::RolledBack {
            base: self.base,
            generation,
            size_bytes,
            entries,
            error,
            poisoned: self.poisoned.clone(),
        });
    }

    /// A write failed: gives up the segment ([`SegmentActor::abandon`]) and
    /// stops, so the supervisor restarts the actor, which reopens it.
    fn fail(&mut self, ctx: &mut Context<Self>, reason: &str) {
        tracing::error!(partition = %self.partition, base = self.base, reason, "segment actor failed");
        self.abandon(reason);
        ctx.stop();
    }

    /// Drops the segment (its cached pages too: after a failed write or
    /// `fdatasync` only the disk is the truth) and answers every waiting
    /// append with an indeterminate error. Idempotent.
    fn abandon(&mut self, reason: &str) {
        if let Some(segment) = self.segment.take() {
            // Dropping a large file's cached pages takes a while: not on
            // this thread. The reopen (also on the blocking pool) comes after.
            self.closing = Some(actix_rt::task::spawn_blocking(move || {
                segment.drop_cached_pages();
                drop(segment);
            }));
        }
        let partition = self.partition.clone();
        let error = || {
            LogError::indeterminate(
                &partition,
                format!("segment failed before the append was acknowledged: {reason}"),
            )
        };
        let waiting: Vec<Pending> = self
            .pending
            .drain(..)
            .chain(self.syncing.drain(..))
            .chain(self.next_sync.drain(..))
            .collect();
        for p in waiting {
            self.refuse(p.reply, p.session, error());
        }
        self.sync_in_flight = false;
        self.commit_scheduled = false;
    }

    fn schedule_commit(&mut self, ctx: &mut Context<Self>) {
        if !self.commit_scheduled {
            self.commit_scheduled = true;
            if self.last_commit_appends > 1 {
                // Appends are arriving concurrently: commit after the other
                // ready tasks have had a turn (the RPC front delivering more
                // of the burst), so one flush, and one burst of answers,
                // covers more of them (BENCHMARKS.md, the race).
                self.gather(ctx, 0);
            } else {
                // One at a time: commit as soon as the mailbox is drained.
                ctx.notify(Commit);
            }
        }
    }

    /// Lets the other ready tasks run once, then commits, unless that turn
    /// brought more appends: then another turn, up to [`GATHER_TURNS`].
    fn gather(&mut self, ctx: &mut Context<Self>, turns: u32) {
        let before = self.pending.len();
        ctx.spawn(
            tokio::task::yield_now()
                .into_actor(self)
                .map(move |(), act, ctx| {
                    let grew = act.pending.len() > before;
                    if grew && turns + 1 < GATHER_TURNS && act.pending.len() < GATHER_APPENDS {
                        act.gather(ctx, turns + 1);
                    } else {
                        <Self as Handler<Commit>>::handle(act, Commit, ctx);
                    }
                }),
        );
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
        self.emit(SegmentEvent::Committed {
            base: self.base,
            next,
        });
    }

    /// Whether the file system has less free space than the floor.
    /// Whether writing `to_write` more bytes would take the file system's
    /// free space below the floor. The free space is read with `statvfs`
    /// when the last reading is older than [`FREE_SPACE_RECHECK`] or close
    /// to the floor, and otherwise counted down by what this actor wrote, so
    /// a group commit usually costs no system call for it.
    fn below_free_floor(&mut self, to_write: u64) -> Option<StorageError> {
        let floor = self.config.min_free_bytes;
        if floor == 0 {
            return None;
        }
        let cached = self.free_seen.filter(|(free, at)| {
            at.elapsed() < FREE_SPACE_RECHECK && free.saturating_sub(floor) > FREE_SPACE_MARGIN
        });
        let free = match cached {
            Some((free, _)) => free,
            None => match free_bytes(&self.dir) {
                Ok(free) => {
                    self.free_seen = Some((free, Instant::now()));
                    free
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read free space");
                    return None;
                }
            },
        };
        if free < floor.saturating_add(to_write) {
            return Some(StorageError::DiskFull {
                op: "append to",
                path: self.dir.clone(),
                reason: format!(
                    "{free} bytes free, {to_write} to write, below the floor of {floor} (min-free-bytes)"
                ),
            });
        }
        if let Some((free, _)) = self.free_seen.as_mut() {
            *free = free.saturating_sub(to_write);
        }
        None
    }

    /// Starts an `fdatasync` on the blocking pool for `self.syncing`; the
    /// actor keeps serving meanwhile (appends gather for the next sync).
    fn start_sync(&mut self, ctx: &mut Context<Self>) {
        let Some(segment) = self.segment.as_ref() else {
            return;
        };
        let file = segment.sync_handle();
        let path = segment.store_path().to_path_buf();
        let upto = self.flushed_next;
        self.sync_in_flight = true;
        self.unsynced = false;
        let started = Instant::now();
        let fsync = self.fsync.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let timer = Instant::now();
            let result = crate::storage::disk::sync(&file, &path, true);
            if let Some(fsync) = fsync {
                fsync.sync(timer.elapsed());
            }
            result
        });
        ctx.spawn(job.into_actor(self).map(move |result, act, ctx| {
            act.failpoints.hit(Work::Completion);
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
                    act.synced_next = act.synced_next.max(upto);
                    act.emit(SegmentEvent::Synced {
                        base: act.base,
                        next: upto,
                    });
                    if !act.next_sync.is_empty() {
                        act.syncing = std::mem::take(&mut act.next_sync);
                        act.start_sync(ctx);
                    }
                }
                // Never retried into success: the pages the kernel failed to
                // write may now be marked clean. Reopen from the disk.
                Err(reason) => act.fail(ctx, &format!("fdatasync failed: {reason}")),
            }
        }));
    }

    /// Reopens the segment through the recovery path (from the disk: the
    /// cached pages were dropped), then syncs it, so what it serves from now
    /// on is durable whatever the policy. The scan runs on the blocking pool:
    /// recovering a large segment never stalls the thread that serves RPC,
    /// gossip and the other partitions; this actor's mailbox waits meanwhile.
    /// `then` runs on the actor with the outcome.
    fn reopen(
        &mut self,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), StorageError>) + 'static,
    ) {
        let (dir, base, config, writable, synced) = (
            self.dir.clone(),
            self.base,
            self.config.clone(),
            self.writable,
            self.synced_next,
        );
        let closing = self.closing.take();
        let job = async move {
            if let Some(closing) = closing {
                let _ = closing.await;
            }
            actix_rt::task::spawn_blocking(move || {
                let (mut segment, _) = Segment::open(&dir, base, &config, writable, synced)?;
                if segment.is_writable() {
                    segment.sync()?;
                }
                Ok(segment)
            })
            .await
        };
        ctx.wait(job.into_actor(self).map(move |joined, act, ctx| {
            act.failpoints.hit(Work::Completion);
            let opened = joined.unwrap_or_else(|e| {
                Err(StorageError::InvalidConfig(format!(
                    "recovery task failed: {e}"
                )))
            });
            match opened {
                Ok(segment) => {
                    act.flushed_next = segment.next();
                    act.synced_next = segment.next();
                    act.segment = Some(segment);
                    then(act, ctx, Ok(()));
                }
                Err(e) => then(act, ctx, Err(e)),
            }
        }));
    }
}

/// A disk-full error like `e`, for each of the appends it refused.
fn disk_full_copy(e: &StorageError) -> StorageError {
    match e {
        StorageError::DiskFull { op, path, reason } => StorageError::DiskFull {
            op,
            path: path.clone(),
            reason: reason.clone(),
        },
        other => StorageError::DiskFull {
            op: "append",
            path: PathBuf::new(),
            reason: other.to_string(),
        },
    }
}

/// Bytes available to this process on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
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
                act.failpoints.hit(Work::Timer);
                if act.writable && act.sync_due() && !act.sync_in_flight && act.segment.is_some() {
                    act.start_sync(ctx);
                }
            });
        }
    }
}

impl Supervised for SegmentActor {
    /// After a failure (the supervisor caught a panic, or [`SegmentActor::fail`]
    /// stopped it): gives up the segment and the appends in flight, poisons
    /// the sessions that may have had one, and reopens from the disk.
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        self.abandon("the segment actor failed");
        self.poisoned.poison_open_sessions();
        let reason = "restarted after a failure".to_string();
        self.reopen(ctx, move |act, ctx, outcome| match outcome {
            Ok(()) => {
                let (next, size_bytes, entries) = act
                    .segment
                    .as_ref()
                    .map_or((act.base, 0, 0), |s| (s.next(), s.size_bytes(), s.len()));
                tracing::warn!(partition = %act.partition, base = act.base, next, "segment actor restarted");
                let generation = act.refuse_until_resume(Refusal::Restarted(reason.clone()));
                act.emit(SegmentEvent::Restarted {
                    base: act.base,
                    generation,
                    next,
                    size_bytes,
                    entries,
                    reason,
                    poisoned: act.poisoned.clone(),
                });
            }
            Err(e) => {
                // Another failure: the supervisor restarts it again, or
                // escalates to the LogActor once the budget is spent.
                tracing::error!(partition = %act.partition, base = act.base, error = %e, "segment cannot be reopened");
                act.refuse_until_resume(Refusal::Restarted(e.to_string()));
                ctx.stop();
            }
        });
    }
}

/// Test-only: `Handler` panics here and now (appends queued before it are
/// in flight); `Completion` at the next sync's completion; `Timer` at the
/// next tick of the sync timer (`sync=interval`).
impl Handler<InjectPanic> for SegmentActor {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Context<Self>) {
        self.failpoints.arm(work);
        self.failpoints.hit(Work::Handler);
    }
}

/// Test hook: answered once every message sent before it is handled (a
/// restart's reopen holds the mailbox, so after that too).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Settled;

impl Handler<Settled> for SegmentActor {
    type Result = ();

    fn handle(&mut self, _: Settled, _ctx: &mut Context<Self>) {}
}

impl Handler<SegAppend> for SegmentActor {
    type Result = ();

    fn handle(&mut self, msg: SegAppend, ctx: &mut Context<Self>) {
        let Some(reply) = msg.reply.take() else {
            return;
        };
        if self.retired || self.segment.is_none() {
            let e = self.unavailable();
            self.refuse(reply, msg.session, e);
            return;
        }
        if let Some(refusal) = &self.refusing {
            let error = match refusal {
                Refusal::DiskFull(reason) => LogError::Storage(StorageError::DiskFull {
                    op: "append to",
                    path: self.dir.clone(),
                    reason: reason.clone(),
                }),
                Refusal::Restarted(reason) => LogError::unavailable(
                    &self.partition,
                    format!("an append queued before this one failed ({reason}); not appended"),
                ),
            };
            self.refuse(reply, msg.session, error);
            return;
        }
        if let Some(e) = self.poisoned.refusal(msg.session, &self.partition) {
            let _ = reply.send(Err(e));
            return;
        }
        if let Some(at) = msg.records.required_first()
            && let Some(next) = self.segment.as_ref().map(Segment::next)
            && next != at
        {
            let e = LogError::OffsetMismatch {
                partition: self.partition.clone(),
                expected: next,
                got: at,
            };
            let _ = reply.send(Err(e));
            return;
        }
        let (records, write_behind) = (msg.records, msg.write_behind);
        let result = self.storage_work(ctx, true, |segment| {
            segment.set_write_behind(write_behind);
            let values = match &records {
                Records::Frames(frames) => return segment.append_frames(frames),
                Records::Values(values) => values,
            };
            let start = segment.next();
            for value in values.iter() {
                if !segment.fits(value.len()) {
                    return Err(StorageError::InvalidConfig(format!(
                        "segment {} is full: the LogActor should have rolled it",
                        segment.base()
                    )));
                }
                segment.append(value)?;
            }
            Ok(start..segment.next())
        });
        match result {
            Ok(offsets) => {
                self.pending.push(Pending {
                    reply,
                    offsets,
                    session: msg.session,
                });
                self.schedule_commit(ctx);
            }
            Err(e) => {
                self.refuse(reply, msg.session, e);
            }
        }
    }
}

impl Handler<Commit> for SegmentActor {
    type Result = ();

    fn handle(&mut self, _: Commit, ctx: &mut Context<Self>) {
        self.commit_scheduled = false;
        self.last_commit_appends = self.pending.len();
        if self.pending.is_empty() {
            return;
        }
        let to_write = self
            .segment
            .as_ref()
            .map_or(0, |s| s.size_bytes() - s.flushed_bytes());
        if let Some(full) = self.below_free_floor(to_write) {
            self.take_back(ctx, full);
            return;
        }
        if self.storage_work(ctx, true, Segment::flush).is_err() {
            return; // pending appends were answered with the error
        }
        if let Some(segment) = self.segment.as_ref() {
            self.flushed_next = segment.next();
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

impl Handler<Resume> for SegmentActor {
    type Result = ();

    fn handle(&mut self, msg: Resume, _ctx: &mut Context<Self>) {
        if msg.generation == self.refusal_generation {
            self.refusing = None;
        }
    }
}

impl Handler<SegRead> for SegmentActor {
    type Result = ResponseActFuture<Self, Result<Vec<u8>, LogError>>;

    fn handle(&mut self, msg: SegRead, ctx: &mut Context<Self>) -> Self::Result {
        let plan = self.storage_work(ctx, false, |segment| segment.plan_read(msg.offset));
        self.carry_out(
            plan,
            PlannedRead::record_if_cached,
            PlannedRead::record_from_disk,
        )
    }
}

impl Handler<SegReadBatch> for SegmentActor {
    type Result = ResponseActFuture<Self, Result<RecordBatch, LogError>>;

    fn handle(&mut self, msg: SegReadBatch, ctx: &mut Context<Self>) -> Self::Result {
        let plan = self.storage_work(ctx, false, |segment| {
            segment.plan_batch(msg.from, msg.until, msg.max_bytes)
        });
        self.carry_out(
            plan,
            PlannedRead::batch_if_cached,
            PlannedRead::batch_from_disk,
        )
    }
}

impl SegmentActor {
    /// Carries out a planned read: at once when its bytes are in the page
    /// cache, else on the blocking pool (this actor keeps serving meanwhile).
    /// Damage found is reported as by any read.
    fn carry_out<T: Send + 'static>(
        &mut self,
        plan: Result<PlannedRead, LogError>,
        if_cached: fn(&PlannedRead) -> Option<Result<T, StorageError>>,
        from_disk: fn(&PlannedRead) -> Result<T, StorageError>,
    ) -> ResponseActFuture<Self, Result<T, LogError>> {
        let plan = match plan {
            Ok(plan) => plan,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        if let Some(done) = if_cached(&plan) {
            if let Err(e) = &done
                && e.is_corruption()
            {
                self.report_damage(e);
            }
            return Box::pin(fut::ready(done.map_err(LogError::from)));
        }
        let job = actix_rt::task::spawn_blocking(move || from_disk(&plan));
        Box::pin(job.into_actor(self).map(|joined, act, _| {
            let done = joined.unwrap_or_else(|e| {
                Err(StorageError::InvalidConfig(format!(
                    "read task failed: {e}"
                )))
            });
            if let Err(e) = &done
                && e.is_corruption()
            {
                act.report_damage(e);
            }
            done.map_err(LogError::from)
        }))
    }
}

impl Handler<Seal> for SegmentActor {
    type Result = Result<Sealed, LogError>;

    /// Answers the real end offset at once (the next segment can start
    /// there), then syncs and seals on the blocking pool: flushing a whole
    /// segment can take a while and must not hold up the actor thread. The
    /// mailbox of this one segment waits meanwhile (reads of it queue up).
    /// Its last records are committed (served, and under `sync=always`
    /// acknowledged) only once the seal has synced them.
    fn handle(&mut self, _: Seal, ctx: &mut Context<Self>) -> Self::Result {
        if self.retired || !self.writable {
            // A closed segment (or one sealed already) is not rolled.
            return Err(self.unavailable());
        }
        // Commit what is pending first, so no append is left unanswered.
        <Self as Handler<Commit>>::handle(self, Commit, ctx);
        let (next, empty) = self.storage_work(ctx, true, |segment| {
            segment.flush()?;
            Ok((segment.next(), segment.is_empty()))
        })?;
        if empty {
            // Nothing to seal: a new segment here would have the same base.
            return Ok(Sealed {
                next,
                poisoned: self.poisoned.clone(),
                still_active: true,
            });
        }
        self.writable = false;
        let Some(mut segment) = self.segment.take() else {
            return Err(self.unavailable());
        };
        let fsync = self.fsync.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let timer = Instant::now();
            let result = segment.seal();
            if let Some(fsync) = fsync {
                fsync.seal(timer.elapsed());
            }
            (segment, result)
        });
        let base = self.base;
        ctx.wait(
            job.into_actor(self)
                .map(move |joined, act, ctx| match joined {
                    Ok((segment, Ok(()))) => {
                        act.segment = Some(segment);
                        // The seal synced everything: appends waiting for a sync are safe.
                        let done: Vec<Pending> = act
                            .syncing
                            .drain(..)
                            .chain(act.next_sync.drain(..))
                            .collect();
                        act.acknowledge(done);
                        act.synced_next = act.synced_next.max(next);
                        act.emit(SegmentEvent::Committed { base, next });
                        act.emit(SegmentEvent::Synced { base, next });
                    }
                    Ok((segment, Err(e))) => {
                        act.segment = Some(segment);
                        act.fail(ctx, &format!("sealing failed: {e}"));
                    }
                    Err(e) => act.fail(ctx, &format!("sealing task failed: {e}")),
                }),
        );
        Ok(Sealed {
            next,
            poisoned: self.poisoned.clone(),
            still_active: false,
        })
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
        let result = self.storage_work(ctx, true, Segment::seal);
        if let Some(fsync) = &self.fsync {
            fsync.seal(timer.elapsed());
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
