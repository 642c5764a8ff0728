//! Streams: records pushed to a consumer's sink with flow control, and the
//! server side of a produce stream (one session, results in write order).

use super::*;

/// What a consumeStream or replicate call asks for.
pub(super) struct StreamRequest<S> {
    pub id: String,
    pub from: u64,
    pub sink: S,
    pub max_batch_bytes: u32,
}

/// Where a stream's batches go: a consumer's `RecordSink`, or a replica's
/// `FrameSink` (the stored frames as they are: no re-encoding).
pub(super) trait BatchSink {
    /// A replicate call (else a consumeStream).
    const REPLICATION: bool;

    /// Sends one batch; resolves when flow control lets the next go.
    fn push(&self, batch: &RecordBatch) -> impl Future<Output = Result<(), Error>>;
}

impl BatchSink for record_sink::Client {
    const REPLICATION: bool = false;

    fn push(&self, batch: &RecordBatch) -> impl Future<Output = Result<(), Error>> {
        let mut request = self.write_request();
        let mut list = request.get().init_records(batch.len() as u32);
        for (i, (offset, value)) in batch.iter().enumerate() {
            let mut r = list.reborrow().get(i as u32);
            r.set_offset(offset);
            r.set_value(value);
        }
        request.send()
    }
}

impl BatchSink for frame_sink::Client {
    const REPLICATION: bool = true;

    fn push(&self, batch: &RecordBatch) -> impl Future<Output = Result<(), Error>> {
        let mut request = self.write_request();
        let mut p = request.get();
        p.set_first(batch.first_offset().unwrap_or(0));
        p.set_frames(batch.frames());
        p.set_committed_end(batch.committed_end());
        request.send()
    }
}

/// Fills a `StreamEnd`; the call's outcome for its count.
pub(super) fn write_stream_end(
    mut end: crate::log_capnp::stream_end::Builder<'_>,
    outcome: Option<(WireError, String)>,
) -> Outcome {
    match outcome {
        None => {
            end.set_sink_closed(());
            Ok(())
        }
        Some((kind, message)) => {
            write_error(end.init_error(), &kind, &message);
            Err(kind.kind())
        }
    }
}

impl LogService {
    /// Serves a consumeStream or a replicate call (as the sink's type
    /// says): a replica may pull only this node's own partition (never one
    /// this node replicates itself: copies of copies would cycle), is
    /// authorized with `replicate`, and gets the stored frames.
    pub(super) async fn serve_stream<S: BatchSink>(
        &self,
        request: StreamRequest<S>,
    ) -> Option<(WireError, String)> {
        let limit = if S::REPLICATION {
            self.ctx.max_replication_batch_bytes
        } else {
            self.ctx.max_stream_batch_bytes
        };
        let max_bytes = batch_bytes(request.max_batch_bytes, limit);
        let action = if S::REPLICATION {
            ACTION_REPLICATE
        } else {
            ACTION_CONSUME
        };
        let (id, log) = match self.partition(&request.id, action) {
            Ok(found) => found,
            Err(e) => return Some(e),
        };
        if S::REPLICATION && id != self.ctx.partitions.own_id() {
            return Some((
                WireError::UnknownPartition(id.clone()),
                format!(
                    "{id} is not led by this node: replicate only pulls a node's own partition"
                ),
            ));
        }
        let Some(_stream) = self.connection.open_stream(MAX_STREAMS_PER_CONNECTION) else {
            return Some((
                WireError::Overloaded,
                format!(
                    "{MAX_STREAMS_PER_CONNECTION} streams are open on this connection: \
                     at most {MAX_STREAMS_PER_CONNECTION}"
                ),
            ));
        };
        note(&id, request.from, 0);
        let kind = if S::REPLICATION {
            StreamKind::Replicate
        } else {
            StreamKind::Consume
        };
        let _open: Option<GaugeGuard> = self.metrics.as_ref().map(|m| m.stream_opened(kind));
        let mut sent = 0;
        let end = self
            .stream_records(&log, request.from, &request.sink, max_bytes, &mut sent)
            .await;
        tracing::Span::current().record("count", sent);
        end
    }

    /// Pushes records from `next` on to `sink` until an error (answered)
    /// or until the sink goes away (`None`); counts them in `sent`.
    pub(super) async fn stream_records(
        &self,
        log: &Addr<LogActor>,
        mut next: u64,
        sink: &impl BatchSink,
        max_bytes: usize,
        sent: &mut u64,
    ) -> Option<(WireError, String)> {
        loop {
            let reserved = self.reserve_answer(max_bytes).await;
            let batch = match log
                .send(ReadBatch {
                    from: next,
                    max_bytes,
                    max_records: u64::MAX,
                })
                .await
            {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => return Some(log_error(&e)),
                Err(e) => return Some((WireError::Unavailable, e.to_string())),
            };
            if batch.is_empty() {
                drop(reserved);
                // At the end of the log: wait to be woken by the LogActor.
                match crate::log::wait_for(log, next).await {
                    Ok(_) => continue,
                    Err(e) => return Some(log_error(&e)),
                }
            }
            // Counted as read from the log, whether or not the client
            // stays to receive them.
            if let Some(m) = &self.metrics {
                m.read(batch.len() as u64, batch.payload_bytes() as u64);
            }
            // The push sends at once, then may wait for the client's
            // window: the answer counts as unsent from the start.
            if let Some(r) = reserved {
                r.keep(batch.payload_bytes());
            }
            if let Err(e) = sink.push(&batch).await {
                tracing::debug!(error = %e, "stream sink went away");
                if let Some(outbox) = &self.outbox {
                    outbox.forget(batch.payload_bytes());
                }
                return None;
            }
            next = batch.next_offset().unwrap_or(next);
            *sent += batch.len() as u64;
        }
    }
}

/// Server side of a produce stream: each write is one batch append, awaited
/// before the next is taken, so the client's flow-control window bounds
/// what is buffered here. The stream is one produce session: once a write
/// fails, later writes are refused (not appended), so its records stay in
/// the order written.
pub(super) struct ProduceSink {
    pub(super) service: CapRc<LogService>,
    pub(super) session: u64,
    /// When each write is answered.
    pub(super) acks: Acks,
    /// One slot per write, in the order the writes arrived (a slot is
    /// filled when its append completes, whatever the completion order);
    /// at most [`MAX_WRITES_PER_PRODUCE_STREAM`].
    pub(super) results: RefCell<Vec<Option<AppendOutcome>>>,
    /// One of the connection's stream slots while the client holds the sink.
    pub(super) _stream: OpenStream,
    /// Counts the stream as open while the client holds the sink.
    pub(super) _open: Option<GaugeGuard>,
}

impl produce_sink::Server for ProduceSink {
    async fn write(self: CapRc<Self>, params: produce_sink::WriteParams) -> Result<(), Error> {
        self.service
            .call(SINK_WRITE, async {
                let p = params.get()?;
                let slot = {
                    let mut results = self.results.borrow_mut();
                    if results.len() >= MAX_WRITES_PER_PRODUCE_STREAM {
                        return Err(Error::overloaded(format!(
                            "a produce stream carries at most {MAX_WRITES_PER_PRODUCE_STREAM} \
                             writes: finish it and open another (this write was not appended)"
                        )));
                    }
                    results.push(None);
                    results.len() - 1
                };
                let values = copy_values(p.get_values()?)?;
                let _charge = self.service.charge(&values);
                let outcome = self
                    .service
                    .append_values(values, Some(self.session), self.acks)
                    .await;
                let label = match &outcome {
                    Ok(_) => Ok(()),
                    Err((kind, _)) => Err(kind.kind()),
                };
                if let Some(entry) = self.results.borrow_mut().get_mut(slot) {
                    *entry = Some(outcome);
                }
                Ok(label)
            })
            .await
    }

    async fn finish(
        self: CapRc<Self>,
        _: produce_sink::FinishParams,
        mut results: produce_sink::FinishResults,
    ) -> Result<(), Error> {
        self.service
            .call(SINK_FINISH, async {
                let done = std::mem::take(&mut *self.results.borrow_mut());
                let mut list = results.get().init_results(done.len() as u32);
                for (i, outcome) in done.into_iter().enumerate() {
                    let outcome = outcome.unwrap_or_else(|| {
                        Err((
                            WireError::Indeterminate,
                            "the write had not completed when finish was called".into(),
                        ))
                    });
                    write_produced(list.reborrow().get(i as u32), outcome);
                }
                Ok(Ok(()))
            })
            .await
    }
}
