//! The leader's end of a replication stream ([`crate::wire::frame_stream`]):
//! served as a `replicate` call is (the same authorization, own-partition
//! rule, stream slot, reserved answers, metrics and span), but each batch
//! read from the store goes to the socket as it is, and the replica's
//! positions arrive on the same connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::*;
use crate::wire::frame_stream::{self as wire_stream, PullRequest, StreamEnd};

/// Slowest a replica may take in a batch, beyond the connection's first
/// allowance: one that stops reading is dropped, and with it what it held.
const MIN_REPLICA_BYTES_PER_SEC: f64 = (1 << 20) as f64;

/// The replica's socket as a [`BatchSink`]: each batch written as read.
struct SocketSink<W> {
    /// Taken while a batch is written (one at a time).
    writer: Cell<Option<W>>,
    outbox: Option<Rc<Outbox>>,
    /// How long any batch may take to leave, before its bytes' share.
    allowance: Duration,
}

impl<W: AsyncWrite + Unpin> BatchSink for &SocketSink<W> {
    const REPLICATION: bool = true;

    async fn push(&self, batch: &RecordBatch) -> Result<(), Error> {
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| Error::disconnected("the replica's stream is closed".into()))?;
        let frames = batch.frames();
        let allowed = self.allowance
            + Duration::from_secs_f64(frames.len() as f64 / MIN_REPLICA_BYTES_PER_SEC);
        let first = batch.first_offset().unwrap_or(0);
        let write = wire_stream::write_batch(&mut writer, first, batch.committed_end(), frames);
        match tokio::time::timeout(allowed, write).await {
            Ok(Ok(())) => {
                if let Some(outbox) = &self.outbox {
                    outbox.sent(batch.payload_bytes());
                }
                self.writer.set(Some(writer));
                Ok(())
            }
            Ok(Err(e)) => Err(Error::disconnected(format!("writing to the replica: {e}"))),
            Err(_) => {
                tracing::info!(
                    ?allowed,
                    bytes = frames.len(),
                    "a replica did not take a batch in time: closing its stream"
                );
                Err(Error::disconnected("the replica stopped reading".into()))
            }
        }
    }
}

impl LogService {
    /// Serves one replication stream on `stream`, whose magic bytes have
    /// been read: its request must arrive within `first`, each batch must
    /// leave within `first` plus a second per MiB. Ends when the pull
    /// ends (an error is sent first), the replica goes away, or it sends
    /// something other than positions.
    pub async fn serve_frame_stream<S>(&self, stream: S, first: Duration)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut reader, writer) = tokio::io::split(stream);
        let request = match tokio::time::timeout(first, PullRequest::read(&mut reader)).await {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                tracing::info!(peer = %self.subject, error = %e, "bad replication request: closing connection");
                return;
            }
            Err(_) => {
                tracing::info!(peer = %self.subject, "no replication request in time: closing connection");
                return;
            }
        };
        let sink = SocketSink {
            writer: Cell::new(Some(writer)),
            outbox: self.outbox.clone(),
            allowance: first,
        };
        let ended = Cell::new(None);
        let serve = self.call(REPLICATION_STREAM, async {
            let end = self
                .serve_stream(StreamRequest {
                    id: request.partition.clone(),
                    from: request.from,
                    sink: &sink,
                    max_batch_bytes: request.max_batch_bytes,
                })
                .await;
            let outcome = match &end {
                None => Ok(()),
                Some((kind, _)) => Err(kind.kind()),
            };
            ended.set(end);
            Ok(outcome)
        });
        // Positions count only from a replica allowed to pull this
        // node's own partition (what `replicated` checks per call).
        let reports = self
            .partition(&request.partition, ACTION_REPLICATE)
            .ok()
            .filter(|(id, _)| self.ctx.partitions.is_own(id))
            .is_some();
        let positions = async {
            let mut position = [0u8; 8];
            loop {
                if let Err(e) = reader.read_exact(&mut position).await {
                    return e;
                }
                if reports
                    && let Some(lag) = self
                        .ctx
                        .in_sync
                        .report(&request.node, u64::from_le_bytes(position))
                    && let Some(m) = &self.metrics
                {
                    m.replication_lag(lag);
                }
            }
        };
        tokio::select! {
            _ = serve => {}
            e = positions => {
                tracing::debug!(peer = %self.subject, error = %e, "replica closed its stream");
                return;
            }
        }
        let (Some((kind, message)), Some(mut writer)) = (ended.take(), sink.writer.take()) else {
            return;
        };
        let (offset, lowest, next) = match kind {
            WireError::OffsetOutOfRange {
                offset,
                lowest,
                next,
            } => (offset, lowest, next),
            _ => (0, 0, 0),
        };
        let end = StreamEnd {
            kind: kind.kind().to_string(),
            offset,
            lowest,
            next,
            message,
        }
        .encode();
        let _ = tokio::time::timeout(first, async {
            writer.write_all(&end).await?;
            writer.shutdown().await
        })
        .await;
    }
}
