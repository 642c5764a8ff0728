//! Reads: range checks (gaps and damage included), routing to the segment
//! that holds an offset, and readers waiting at the end of the log.

use super::*;

impl LogActor {
    pub(super) fn wake_waiters(&mut self) {
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

    pub(super) fn fail_waiters(&mut self, error: impl Fn() -> LogError) {
        for (_, tx) in self.waiters.drain(..) {
            let _ = tx.send(Err(error()));
        }
    }

    /// The error for reading `offset`, if it is out of range or in a gap.
    pub(super) fn check_range(&self, offset: u64) -> Result<(), LogError> {
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
                    crate::storage::LostCause::LeaderRetention => {
                        "deleted by the leader's retention before this replica copied them"
                    }
                },
            }
            .into());
        }
        Err(damaged(format!(
            "the partition is damaged from offset {end} to {resume}"
        )))
    }

    pub(super) fn segment_for(&self, offset: u64) -> &SegmentHandle {
        let i = self
            .segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        &self.segments[i]
    }
}

impl Handler<Read> for LogActor {
    type Result = ResponseFuture<Result<Vec<u8>, LogError>>;

    fn handle(&mut self, msg: Read, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_range(msg.offset) {
            return Box::pin(ready(Err(e)));
        }
        self.ask_segment(msg.offset, SegRead { offset: msg.offset })
    }
}

impl LogActor {
    /// Forwards `msg` to the SegmentActor holding `offset`; its answer is the reply.
    pub(super) fn ask_segment<M, T>(
        &self,
        offset: u64,
        msg: M,
    ) -> ResponseFuture<Result<T, LogError>>
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

    fn handle(&mut self, msg: ReadBatch, _ctx: &mut Context<Self>) -> Self::Result {
        if msg.from == self.committed && msg.from >= self.lowest() {
            return Box::pin(ready(Ok(RecordBatch::default())));
        }
        if let Err(e) = self.check_range(msg.from) {
            return Box::pin(ready(Err(e)));
        }
        let committed = self.committed;
        let read = SegReadBatch {
            from: msg.from,
            until: committed.min(msg.from.saturating_add(msg.max_records.max(1))),
            max_bytes: msg.max_bytes,
        };
        let batch = self.ask_segment(msg.from, read);
        Box::pin(async move { Ok(batch.await?.with_committed_end(committed)) })
    }
}

impl Handler<WaitFor> for LogActor {
    type Result = MessageResult<WaitFor>;

    fn handle(&mut self, msg: WaitFor, _ctx: &mut Context<Self>) -> Self::Result {
        if msg.offset < self.committed {
            return MessageResult(Waiting(WaitingState::Ready(Some(Ok(self.committed)))));
        }
        if self.closed {
            let closed = LogError::Closed(self.partition.clone());
            return MessageResult(Waiting(WaitingState::Ready(Some(Err(closed)))));
        }
        let (tx, rx) = oneshot::channel();
        // Readers that gave up (dropped their `Waiting`) are otherwise
        // dropped only at the next commit: on an idle partition, streams
        // opened and cancelled would pile up. Pruning when the list
        // doubles keeps it within twice the live waiters, at a constant
        // cost per wait.
        if self.waiters.len() >= self.prune_waiters_at {
            self.waiters.retain(|(_, tx)| !tx.is_closed());
            self.prune_waiters_at = (self.waiters.len() * 2).max(MIN_PRUNE_WAITERS_AT);
        }
        self.waiters.push((msg.offset, tx));
        MessageResult(Waiting(WaitingState::Pending {
            answer: rx,
            partition: self.partition.clone(),
        }))
    }
}
