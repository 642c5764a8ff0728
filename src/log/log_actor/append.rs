//! Appends: the write refusals (closed, read-only, disk full), dispatch to
//! the active segment, rolls, and the ordered-append entry point.

use super::*;

impl LogActor {
    /// Why writes are refused now, if they are.
    pub(super) fn refuse_writes(&mut self) -> Option<LogError> {
        if self.closed {
            return Some(LogError::Closed(self.partition.clone()));
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

    /// Leaves the disk-full state when the file system has room again: the
    /// floor plus [`RESUME_HEADROOM_BYTES`].
    pub(super) fn probe_free_space(&mut self) {
        if self.disk_full.is_none() {
            return;
        }
        let needed = self
            .config
            .min_free_bytes
            .saturating_add(RESUME_HEADROOM_BYTES);
        if let Ok(free) = free_bytes(&self.dir)
            && free >= needed
        {
            tracing::info!(partition = %self.partition, free, "disk space is back: appends resume");
            self.disk_full = None;
        }
    }

    /// A full-disk error when the free-space floor is crossed, else `None`.
    pub(super) fn check_free_floor(&self) -> Option<StorageError> {
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

    pub(super) fn fits(&self, len: usize) -> bool {
        self.active_entries < self.config.index_capacity()
            && self.active_bytes + (FRAME_HEADER_LEN + len) as u64 <= self.config.max_store_bytes
    }

    /// Whether `records` fit in an empty segment, all together.
    pub(super) fn fits_in_a_new_segment(&self, records: &Records) -> bool {
        (records.len() as u64) <= self.config.index_capacity()
            && FILE_HEADER_LEN as u64 + records.frame_bytes() <= self.config.max_store_bytes
    }

    /// Creates the segment a failed roll could not (after the disk filled).
    pub(super) fn create_missing_segment(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Result<(), LogError> {
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
        // A roll is when a segment becomes deletable: apply retention now,
        // not only at the next periodic check.
        let retention = self.config.retention;
        if retention.max_bytes.is_some() || retention.max_age.is_some() {
            ctx.notify(ApplyRetention);
        }
        Ok(())
    }

    /// Sends as many records as fit to the active segment; rolls for the rest.
    pub(super) fn dispatch(
        &mut self,
        mut records: Records,
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
        while fit < records.len() && self.fits(records.record_len(fit)) {
            self.active_bytes += (FRAME_HEADER_LEN + records.record_len(fit)) as u64;
            self.active_entries += 1;
            fit += 1;
        }
        if fit > 0 && fit < records.len() && self.fits_in_a_new_segment(&records) {
            // Roll first rather than split the batch: a batch split across
            // segments could end half appended if creating the next segment fails.
            for i in 0..fit {
                self.active_bytes -= (FRAME_HEADER_LEN + records.record_len(i)) as u64;
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
                reply: QueuedReply::new(reply, &self.partition_name),
                session,
                write_behind: self.write_behind,
            });
            return;
        }
        let rest = records.split_off(fit);
        // The parts of a split batch are one session: if the first part is
        // refused, the rest is refused too, never appended alone.
        let session = if fit > 0 {
            session.or_else(|| Some(new_session()))
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
                reply: QueuedReply::new(first_tx, &self.partition_name),
                session,
                write_behind: self.write_behind,
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
    pub(super) fn roll_then_dispatch(
        &mut self,
        records: Records,
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
            act.poisoned.extend(&sealed.poisoned);
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
}

impl Handler<Append> for LogActor {
    type Result = ResponseFuture<Result<Range<u64>, LogError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.on_append(msg, tx, ctx);
        let partition = self.partition.clone();
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(dropped_append(&partition))) })
    }
}

impl LogActor {
    /// Checks an append and dispatches it; the outcome goes to `reply`.
    pub(super) fn on_append(&mut self, msg: Append, reply: AppendReply, ctx: &mut Context<Self>) {
        if let Some(e) = self.refuse_writes() {
            if let Some(s) = msg.session {
                self.poisoned.insert(s);
            }
            let _ = reply.send(Err(e));
            return;
        }
        if let Some(e) = self.poisoned.refusal(msg.session, &self.partition) {
            let _ = reply.send(Err(e));
            return;
        }
        let max = self.config.max_record_bytes;
        let size = msg.records.max_record_len();
        if size > max as usize {
            let _ = reply.send(Err(StorageError::RecordTooLarge { size, max }.into()));
            return;
        }
        if msg.records.is_empty() {
            let at = self.committed;
            let _ = reply.send(Ok(at..at));
            return;
        }
        self.write_behind = msg.write_behind;
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
        self.on_append(msg.append, msg.reply, ctx)
    }
}
