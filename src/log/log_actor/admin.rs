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
