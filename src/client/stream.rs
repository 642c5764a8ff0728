//! Following a partition: the server pushes into a sink we serve, with
//! `-> stream` flow control; records come out as an async `Stream`.

use std::pin::Pin;
use std::task::{Context, Poll};

use capnp::capability::Rc as CapRc;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;
use crate::wire::schema::{log, record_sink, stream_end};

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub value: Vec<u8>,
}

/// Batches buffered between the sink and the consumer. When full, the sink's
/// `write` waits, the server's flow-control window fills, and the server
/// stops reading the log: a slow consumer holds the producer side back.
const BUFFERED_BATCHES: usize = 4;

struct Sink {
    tx: mpsc::Sender<Result<Vec<Record>, ClientError>>,
    /// Check each record against the CRC-32C sent with it (replication).
    verify: bool,
}

impl record_sink::Server for Sink {
    async fn write(
        self: CapRc<Self>,
        params: record_sink::WriteParams,
    ) -> Result<(), capnp::Error> {
        let list = params.get()?.get_records()?;
        let mut batch = Vec::with_capacity(list.len() as usize);
        for r in list.iter() {
            let (offset, value) = (r.get_offset(), r.get_value()?);
            if self.verify {
                let (expected, actual) = (r.get_crc32c(), crc32c::crc32c(value));
                if expected != actual {
                    let e = ClientError::ChecksumMismatch {
                        offset,
                        expected,
                        actual,
                    };
                    let message = e.to_string();
                    let _ = self.tx.send(Err(e)).await;
                    return Err(capnp::Error::failed(message));
                }
            }
            batch.push(Record {
                offset,
                value: value.to_vec(),
            });
        }
        self.tx
            .send(Ok(batch))
            .await
            .map_err(|_| capnp::Error::disconnected("the consumer dropped the stream".into()))
    }
}

/// Records of a partition from an offset on, as they are appended. Dropping
/// it cancels the call on the server.
pub struct RecordStream {
    rx: mpsc::Receiver<Result<Vec<Record>, ClientError>>,
    pending: std::vec::IntoIter<Record>,
    end: Option<oneshot::Receiver<Result<(), ClientError>>>,
    call: tokio::task::JoinHandle<()>,
}

/// Starts a consumeStream or replicate call (alike, but two generated
/// request types) into a fresh sink; `verify` checks each record's CRC.
macro_rules! stream_call {
    ($request:expr, $partition:expr, $offset:expr, $max:expr, $verify:expr) => {{
        let (tx, rx) = mpsc::channel(BUFFERED_BATCHES);
        let sink: record_sink::Client = capnp_rpc::new_client(Sink {
            tx,
            verify: $verify,
        });
        let mut request = $request;
        {
            let mut p = request.get();
            p.set_partition($partition);
            p.set_offset($offset);
            p.set_sink(sink);
            p.set_max_batch_bytes($max);
        }
        Self::running(rx, async move {
            let response = request.send().promise.await?;
            read_end(response.get()?.get_end()?)
        })
    }};
}

impl RecordStream {
    pub(crate) fn open(
        log: &log::Client,
        partition: &str,
        offset: u64,
        max_batch_bytes: u32,
    ) -> RecordStream {
        stream_call!(
            log.consume_stream_request(),
            partition,
            offset,
            max_batch_bytes,
            false
        )
    }

    /// A replication stream of a peer's own partition: as
    /// [`RecordStream::open`], each record checked against its CRC-32C.
    pub(crate) fn replicate(
        log: &log::Client,
        partition: &str,
        offset: u64,
        max_batch_bytes: u32,
    ) -> RecordStream {
        stream_call!(
            log.replicate_request(),
            partition,
            offset,
            max_batch_bytes,
            true
        )
    }

    fn running(
        rx: mpsc::Receiver<Result<Vec<Record>, ClientError>>,
        call: impl Future<Output = Result<(), ClientError>> + 'static,
    ) -> RecordStream {
        let (end_tx, end_rx) = oneshot::channel();
        let call = tokio::task::spawn_local(async move {
            let _ = end_tx.send(call.await);
        });
        RecordStream {
            rx,
            pending: Vec::new().into_iter(),
            end: Some(end_rx),
            call,
        }
    }
}

/// How a stream call ended.
fn read_end(end: stream_end::Reader<'_>) -> Result<(), ClientError> {
    match end.which()? {
        stream_end::Which::SinkClosed(()) => Ok(()),
        stream_end::Which::Error(e) => Err(ClientError::from_wire(e?)?),
    }
}

impl RecordStream {
    /// The next batch as the server sent it (what is left of it, if
    /// records were taken one by one); `None` once the call ended cleanly.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<Record>, ClientError>> {
        let pending: Vec<Record> = self.pending.by_ref().collect();
        if !pending.is_empty() {
            return Some(Ok(pending));
        }
        match self.rx.recv().await {
            Some(batch) => Some(batch),
            None => match self.end.take()?.await {
                Ok(Err(e)) => Some(Err(e)),
                Ok(Ok(())) | Err(_) => None,
            },
        }
    }
}

impl Drop for RecordStream {
    fn drop(&mut self) {
        self.call.abort();
    }
}

impl Stream for RecordStream {
    type Item = Result<Record, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(record) = self.pending.next() {
                return Poll::Ready(Some(Ok(record)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => self.pending = batch.into_iter(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // The sink is gone: the call ended; report how.
                    let Some(end) = self.end.as_mut() else {
                        return Poll::Ready(None);
                    };
                    return match Pin::new(end).poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(outcome) => {
                            self.end = None;
                            match outcome {
                                Ok(Err(e)) => Poll::Ready(Some(Err(e))),
                                Ok(Ok(())) | Err(_) => Poll::Ready(None),
                            }
                        }
                    };
                }
            }
        }
    }
}

use std::future::Future;
