//! LogActor: one per partition. Owns the ordered SegmentActors, routes
//! appends and reads to them, rolls the active segment, applies retention,
//! and wakes readers waiting at the end of the log.

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
    AppendReply, CloseSegment, PanicNow, RemoveSegment, Seal, SegAppend, SegRead, SegReadBatch,
    SegmentActor, SegmentEvent,
};
use crate::storage::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN};
use crate::storage::{
    DirLock, LogConfig, OpenReport, RecordBatch, Segment, StorageError, file_name, open_dir,
};

/// How often the retention settings are applied, when any are set.
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A started SegmentActor and what the LogActor knows of its segment.
struct SegmentHandle {
    base: u64,
    /// Committed next offset (final once sealed).
    next: u64,
    size_bytes: u64,
    addr: Addr<SegmentActor>,
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
    /// Records below this offset are committed and served to readers.
    committed: u64,
    /// Readers waiting for an offset at or past `committed`.
    waiters: Vec<(u64, oneshot::Sender<Result<u64, LogError>>)>,
    restarts: u64,
    /// Restarts of this LogActor itself, for escalation.
    restart_budget: RestartBudget,
    failed: Option<String>,
    closed: bool,
    report: OpenReport,
}

impl LogActor {
    /// Opens (recovering if needed) the partition directory `dir`. Errors
    /// (bad directory, foreign files, locked) come back here, before any
    /// actor runs.
    pub fn open(
        partition: impl Into<String>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<LogActor, StorageError> {
        let dir = dir.into();
        let opened = open_dir(&dir, &config)?;
        let segments = opened.segments;
        let active = segments.last().ok_or_else(|| {
            StorageError::corruption(&dir, 0, "log directory opened with no segment")
        })?;
        let committed = active.next();
        let (active_bytes, active_entries) = (active.size_bytes(), active.len());
        Ok(LogActor {
            partition: partition.into(),
            dir,
            config,
            opened: segments,
            segments: Vec::new(),
            lock: Some(opened.lock),
            active_bytes,
            active_entries,
            committed,
            waiters: Vec::new(),
            restarts: 0,
            restart_budget: RestartBudget::default(),
            failed: None,
            closed: false,
            report: opened.report,
        })
    }

    /// What opening the directory found (recovery work done, if any).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Starts the actor under a supervisor on the current actix arbiter.
    pub fn start(self) -> Addr<LogActor> {
        actix::Supervisor::start(move |_| self)
    }

    fn spawn_segment(&self, segment: Segment, ctx: &mut Context<Self>) -> SegmentHandle {
        let (base, next, size_bytes) = (segment.base(), segment.next(), segment.size_bytes());
        let events = ctx.address().recipient();
        let (partition, dir, config) = (
            self.partition.clone(),
            self.dir.clone(),
            self.config.clone(),
        );
        let addr = actix::Supervisor::start(move |_| {
            SegmentActor::new(partition, dir, config, segment, events)
        });
        SegmentHandle {
            base,
            next,
            size_bytes,
            addr,
        }
    }

    fn active(&self) -> Option<&SegmentHandle> {
        self.segments.last()
    }

    fn lowest(&self) -> u64 {
        self.segments.first().map_or(self.committed, |s| s.base)
    }

    fn refuse(&self) -> Option<LogError> {
        if self.closed {
            return Some(LogError::Closed(self.partition.clone()));
        }
        self.failed
            .as_ref()
            .map(|reason| LogError::PartitionFailed {
                partition: self.partition.clone(),
                reason: reason.clone(),
            })
    }

    fn fits(&self, len: usize) -> bool {
        self.active_entries < self.config.index_capacity()
            && self.active_bytes + (FRAME_HEADER_LEN + len) as u64 <= self.config.max_store_bytes
    }

    /// Sends as many records as fit to the active segment; rolls for the rest.
    fn dispatch(&mut self, mut records: Vec<Vec<u8>>, reply: AppendReply, ctx: &mut Context<Self>) {
        let mut fit = 0;
        while fit < records.len() && self.fits(records[fit].len()) {
            self.active_bytes += (FRAME_HEADER_LEN + records[fit].len()) as u64;
            self.active_entries += 1;
            fit += 1;
        }
        let Some(active) = self.active() else {
            let _ = reply.send(Err(LogError::Closed(self.partition.clone())));
            return;
        };
        if fit == records.len() {
            active.addr.do_send(SegAppend { records, reply });
            return;
        }
        let rest = records.split_off(fit);
        let rest_reply = if fit == 0 {
            reply
        } else {
            // Two appends, one answer: offsets are contiguous across the roll.
            let (first_tx, first_rx) = oneshot::channel();
            let (rest_tx, rest_rx) = oneshot::channel();
            active.addr.do_send(SegAppend {
                records,
                reply: first_tx,
            });
            let partition = self.partition.clone();
            actix_rt::spawn(async move {
                let gone = || LogError::unavailable(&partition, "segment actor went away");
                let first = first_rx.await.unwrap_or_else(|_| Err(gone()));
                let rest = rest_rx.await.unwrap_or_else(|_| Err(gone()));
                let _ = reply.send(first.and_then(|a| rest.map(|b: Range<u64>| a.start..b.end)));
            });
            rest_tx
        };
        self.roll_then_dispatch(rest, rest_reply, ctx);
    }

    /// Seals the active segment, starts the next one at its real end, then
    /// dispatches `records`. The mailbox waits meanwhile, so appends keep
    /// their order.
    fn roll_then_dispatch(
        &mut self,
        records: Vec<Vec<u8>>,
        reply: AppendReply,
        ctx: &mut Context<Self>,
    ) {
        let Some(active) = self.active() else { return };
        let seal = active.addr.send(Seal);
        ctx.wait(seal.into_actor(self).map(move |sealed, act, ctx| {
            let next = match sealed {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    let _ = reply.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = reply.send(Err(LogError::unavailable(&act.partition, "segment actor went away while rolling")));
                    return;
                }
            };
            if let Some(old) = act.segments.last_mut() {
                old.next = next;
                old.size_bytes = act.active_bytes;
            }
            act.commit(next);
            match Segment::create(&act.dir, next, &act.config) {
                Ok(segment) => {
                    tracing::debug!(partition = %act.partition, base = next, "rolled to a new segment");
                    let handle = act.spawn_segment(segment, ctx);
                    act.segments.push(handle);
                    act.active_bytes = FILE_HEADER_LEN as u64;
                    act.active_entries = 0;
                    act.dispatch(records, reply, ctx);
                }
                Err(e) => {
                    tracing::error!(partition = %act.partition, error = %e, "cannot create a new segment");
                    let _ = reply.send(Err(e.into()));
                }
            }
        }));
    }

    /// Raises the committed offset and wakes the readers it satisfies.
    fn commit(&mut self, next: u64) {
        if next <= self.committed {
            return;
        }
        self.committed = next;
        if let Some(active) = self.segments.last_mut()
            && active.base <= next
        {
            active.next = active.next.max(next);
        }
        self.wake_waiters();
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

    fn check_range(&self, offset: u64) -> Result<(), LogError> {
        let (lowest, next) = (self.lowest(), self.committed);
        if offset < lowest || offset >= next {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                lowest,
                next,
            }
            .into());
        }
        Ok(())
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
                on_panic(LogError::unavailable(
                    &self.partition,
                    format!("log actor failed ({reason}) and is restarting"),
                ))
            }
        }
    }

    /// The recovery path after a failure: every SegmentActor is closed
    /// (pending appends are committed and answered), the directory is
    /// reopened as after a crash, and new SegmentActors take over. Waiting
    /// readers are kept and woken if the reopened log already satisfies them.
    fn reopen(&mut self, ctx: &mut Context<Self>) {
        self.lock = None;
        match open_dir(&self.dir, &self.config) {
            Ok(opened) => {
                self.lock = Some(opened.lock);
                self.report = opened.report;
                if let Some(active) = opened.segments.last() {
                    self.active_bytes = active.size_bytes();
                    self.active_entries = active.len();
                    let next = active.next();
                    for segment in opened.segments {
                        let handle = self.spawn_segment(segment, ctx);
                        self.segments.push(handle);
                    }
                    self.commit(next);
                }
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

    /// Removes the `n` oldest segments (never the active one).
    fn remove_oldest(&mut self, n: usize) -> usize {
        let n = n.min(self.segments.len().saturating_sub(1));
        for handle in self.segments.drain(..n) {
            tracing::info!(partition = %self.partition, base = handle.base, "deleting segment");
            handle.addr.do_send(RemoveSegment);
        }
        n
    }
}

impl Actor for LogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        for segment in std::mem::take(&mut self.opened) {
            let handle = self.spawn_segment(segment, ctx);
            self.segments.push(handle);
        }
        let retention = self.config.retention;
        if retention.max_bytes.is_some() || retention.max_age.is_some() {
            ctx.run_interval(RETENTION_CHECK_INTERVAL, |_, ctx| {
                ctx.notify(ApplyRetention)
            });
        }
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

impl Handler<SegmentEvent> for LogActor {
    type Result = ();

    fn handle(&mut self, event: SegmentEvent, ctx: &mut Context<Self>) {
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
            SegmentEvent::Committed { next } => self.commit(next),
            SegmentEvent::Restarted { base, next, reason } => {
                self.restarts += 1;
                tracing::warn!(partition = %self.partition, base, next, %reason, "segment restarted");
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
        }
    }
}

impl Handler<Append> for LogActor {
    type Result = ResponseFuture<Result<Range<u64>, LogError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            move |act, ctx| act.on_append(msg, ctx),
            |e| -> Self::Result { Box::pin(ready(Err(e))) },
        )
    }
}

impl LogActor {
    fn on_append(
        &mut self,
        msg: Append,
        ctx: &mut Context<Self>,
    ) -> <Self as Handler<Append>>::Result {
        if let Some(e) = self.refuse() {
            return Box::pin(ready(Err(e)));
        }
        let max = self.config.max_record_bytes;
        if let Some(r) = msg.records.iter().find(|r| r.len() > max as usize) {
            return Box::pin(ready(Err(StorageError::RecordTooLarge {
                size: r.len(),
                max,
            }
            .into())));
        }
        if msg.records.is_empty() {
            let at = self.committed;
            return Box::pin(ready(Ok(at..at)));
        }
        let (tx, rx) = oneshot::channel();
        self.dispatch(msg.records, tx, ctx);
        let partition = self.partition.clone();
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(LogError::unavailable(
                    &partition,
                    "append was dropped by a failing segment actor",
                ))
            })
        })
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
        if let Some(e) = self.refuse() {
            return Box::pin(ready(Err(e)));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((msg.offset, tx));
        let partition = self.partition.clone();
        Box::pin(async move { rx.await.unwrap_or(Err(LogError::Closed(partition))) })
    }
}

impl Handler<Truncate> for LogActor {
    type Result = Result<usize, LogError>;

    fn handle(&mut self, msg: Truncate, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, move |act, ctx| act.on_truncate(msg, ctx), Err)
    }
}

impl LogActor {
    fn on_truncate(
        &mut self,
        msg: Truncate,
        _ctx: &mut Context<Self>,
    ) -> <Self as Handler<Truncate>>::Result {
        if let Some(e) = self.refuse() {
            return Err(e);
        }
        let lowest = msg.lowest.min(self.committed);
        let n = self
            .segments
            .iter()
            .take_while(|s| s.next <= lowest)
            .count();
        Ok(self.remove_oldest(n))
    }
}

impl Handler<ApplyRetention> for LogActor {
    type Result = Result<usize, LogError>;

    fn handle(&mut self, msg: ApplyRetention, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, move |act, ctx| act.on_apply_retention(msg, ctx), Err)
    }
}

impl LogActor {
    fn on_apply_retention(
        &mut self,
        _msg: ApplyRetention,
        _ctx: &mut Context<Self>,
    ) -> <Self as Handler<ApplyRetention>>::Result {
        if let Some(e) = self.refuse() {
            return Err(e);
        }
        let mut ages = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let path = self.dir.join(file_name(s.base, "store"));
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(StorageError::io("stat", &path))?;
            ages.push((s.size_bytes, modified));
        }
        if let Some(active) = ages.last_mut() {
            active.0 = self.active_bytes;
        }
        let n = self
            .config
            .retention
            .segments_to_delete(&ages, SystemTime::now());
        Ok(self.remove_oldest(n))
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
