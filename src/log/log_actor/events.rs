//! What the SegmentActors report: commits (which move what readers see),
//! syncs (which move the recovery point, written to the checkpoint),
//! rollbacks, restarts and damage; and their escalations.

use super::*;

impl LogActor {
    /// Recomputes the committed offset: readers see a segment's records
    /// only once every segment before it is complete, so a roll never
    /// exposes records the old segment's seal has not synced yet.
    pub(super) fn advance_committed(&mut self) {
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
    pub(super) fn durable_point(&self) -> u64 {
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
    pub(super) fn write_checkpoint(&mut self, ctx: &mut Context<Self>) {
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
            act.failpoints.hit(Work::Completion);
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
}

impl Handler<FromSegment> for LogActor {
    type Result = ();

    fn handle(&mut self, from: FromSegment, ctx: &mut Context<Self>) {
        if !self.segments.iter().any(|s| s.actor == from.actor) {
            tracing::debug!(event = ?from.event, "event of a segment actor no longer running: ignored");
            return;
        }
        let event = from.event;
        self.on_segment_event(event, ctx)
    }
}

impl LogActor {
    pub(super) fn on_segment_event(&mut self, event: SegmentEvent, _ctx: &mut Context<Self>) {
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
                self.poisoned.extend(&poisoned);
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
                self.poisoned.extend(&poisoned);
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
    pub(super) fn resume_segment(
        &mut self,
        base: u64,
        size_bytes: u64,
        entries: u64,
        generation: u64,
    ) {
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

impl Handler<Escalation> for LogActor {
    type Result = ();

    /// A SegmentActor spent its restart budget (or could not reopen its
    /// segment): this LogActor fails too, and its own restart reopens the
    /// whole partition through recovery. Escalations of segment actors it
    /// no longer runs are stale and ignored.
    fn handle(&mut self, escalation: Escalation, ctx: &mut Context<Self>) {
        if !self.segments.iter().any(|s| s.actor == escalation.id) {
            tracing::debug!(child = %escalation.child, "escalation of a segment actor no longer running: ignored");
            return;
        }
        tracing::error!(partition = %self.partition, child = %escalation.child, reason = %escalation.reason, "segment actor escalated: reopening the partition");
        ctx.stop();
    }
}
