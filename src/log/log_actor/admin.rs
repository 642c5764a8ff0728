//! Deleting old segments (truncate, retention), stats, and closing.

use super::*;

impl LogActor {
    /// Removes the `n` oldest segments (never the active one); the answer
    /// comes once their files are deleted, so a crash right after cannot
    /// bring them back.
    pub(super) fn remove_oldest(&mut self, n: usize) -> ResponseFuture<Result<usize, LogError>> {
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
}

impl Handler<Truncate> for LogActor {
    type Result = ResponseFuture<Result<usize, LogError>>;

    fn handle(&mut self, msg: Truncate, _ctx: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Box::pin(ready(Err(LogError::Closed(self.partition.clone()))));
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

    fn handle(&mut self, _msg: ApplyRetention, _ctx: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Box::pin(ready(Err(LogError::Closed(self.partition.clone()))));
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
            read_only: self.read_only.clone(),
            disk_full: self.disk_full.clone(),
            recovery_point: self.durable_point(),
            waiting_readers: self.waiters.len(),
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

impl Handler<SkipTo> for LogActor {
    type Result = ResponseActFuture<Self, Result<(), LogError>>;

    /// Seals the active segment (or drops it when empty: it holds
    /// nothing), records `[end, offset)` as lost in the checkpoint, durably,
    /// and only then starts the next segment at `offset`: a crash in
    /// between leaves the gap known, never taken for damage.
    fn handle(&mut self, msg: SkipTo, _ctx: &mut Context<Self>) -> Self::Result {
        let refuse = |e| -> Self::Result { Box::pin(fut::ready(Err(e))) };
        if let Some(e) = self.refuse_writes() {
            return refuse(e);
        }
        let (from, to) = (self.committed, msg.offset);
        if to <= from {
            return Box::pin(fut::ready(Ok(())));
        }
        if self.checkpoint_writing {
            return refuse(LogError::unavailable(
                &self.partition,
                "a checkpoint write is in progress; try again",
            ));
        }
        let Some(active) = self.active() else {
            return refuse(LogError::Closed(self.partition.clone()));
        };
        let seal = active.addr.send(Seal);
        Box::pin(
            seal.into_actor(self)
                .then(move |sealed, act, _| {
                    let sealed = match sealed {
                        Ok(Ok(sealed)) => sealed,
                        Ok(Err(e)) => return fut::ready(Err(e)).boxed_local(),
                        Err(_) => {
                            let e = LogError::unavailable(&act.partition, "segment actor went away");
                            return fut::ready(Err(e)).boxed_local();
                        }
                    };
                    act.poisoned.extend(&sealed.poisoned);
                    if sealed.next != from {
                        let e = LogError::OffsetMismatch {
                            partition: act.partition.clone(),
                            expected: sealed.next,
                            got: from,
                        };
                        return fut::ready(Err(e)).boxed_local();
                    }
                    if sealed.still_active {
                        // Empty: nothing to keep; the next segment replaces it.
                        if let Some(empty) = act.segments.pop() {
                            empty.addr.do_send(RemoveSegment);
                        }
                    } else if let Some(old) = act.segments.last_mut() {
                        old.end = Some(sealed.next);
                        old.size_bytes = act.active_bytes;
                    }
                    act.needs_segment = Some(to);
                    let mut next = act.checkpoint.clone();
                    next.add_lost(from..to, LostCause::LeaderRetention);
                    act.checkpoint_writing = true;
                    let dir = act.dir.clone();
                    let job = actix_rt::task::spawn_blocking(move || next.store(&dir).map(|()| next));
                    job.into_actor(act)
                        .map(move |joined, act, ctx| {
                        act.checkpoint_writing = false;
                        let written = match joined {
                            Ok(Ok(written)) => written,
                            Ok(Err(e)) => return Err(e.into()),
                            Err(e) => {
                                return Err(LogError::unavailable(
                                    &act.partition,
                                    format!("checkpoint task failed: {e}"),
                                ));
                            }
                        };
                        act.checkpoint = written;
                        tracing::warn!(partition = %act.partition, from, to, "the leader's retention deleted records this replica had not copied: recorded as lost, the replica continues at the leader's lowest offset");
                        act.create_missing_segment(ctx)?;
                        act.advance_committed();
                        Ok(())
                    })
                    .boxed_local()
                }),
        )
    }
}
