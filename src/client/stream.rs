//! Following a partition: the server pushes into a sink we serve, with
//! `-> stream` flow control; records come out as an async `Stream`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use capnp::capability::Rc as CapRc;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;
use crate::wire::schema::{frame_sink, log, record_sink, stream_end};

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
}

impl record_sink::Server for Sink {
    async fn write(
        self: CapRc<Self>,
        params: record_sink::WriteParams,
    ) -> Result<(), capnp::Error> {
        let list = params.get()?.get_records()?;
        let mut batch = Vec::with_capacity(list.len() as usize);
        for r in list.iter() {
            batch.push(Record {
                offset: r.get_offset(),
                value: r.get_value()?.to_vec(),
            });
        }
        self.tx
            .send(Ok(batch))
            .await
            .map_err(|_| capnp::Error::disconnected("the consumer dropped the stream".into()))
    }
}

/// One batch of a replication stream, as the leader sent it: the frames are
/// not checked here (the replica checks them before writing anything).
#[derive(Debug)]
pub struct ReplicaBatch {
    /// Offset of the first frame.
    pub first: u64,
    /// Frames back to back, as the leader stores them (see `FrameSink` in
    /// the schema).
    pub frames: Vec<u8>,
    /// The leader's committed end when it read them.
    pub committed_end: u64,
}

/// The replica's end of a replicate call.
struct ReplicaSink {
    tx: mpsc::Sender<Result<ReplicaBatch, ClientError>>,
}

impl frame_sink::Server for ReplicaSink {
    async fn write(self: CapRc<Self>, params: frame_sink::WriteParams) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let batch = ReplicaBatch {
            first: p.get_first(),
            frames: p.get_frames()?.to_vec(),
            committed_end: p.get_committed_end(),
        };
        self.tx
            .send(Ok(batch))
            .await
            .map_err(|_| capnp::Error::disconnected("the replica dropped the stream".into()))
    }
}

/// A replication stream (`replicate`): batches of the leader's frames from
/// an offset on, as they are committed. Dropping it cancels the call.
pub struct FrameStream {
    calls: Call<ReplicaBatch>,
}

impl FrameStream {
    pub(crate) fn open(log: &log::Client, partition: &str, offset: u64) -> FrameStream {
        let (tx, rx) = mpsc::channel(BUFFERED_BATCHES);
        let sink: frame_sink::Client = capnp_rpc::new_client(ReplicaSink { tx });
        let mut request = log.replicate_request();
        {
            let mut p = request.get();
            p.set_partition(partition);
            p.set_offset(offset);
            p.set_sink(sink);
            p.set_max_batch_bytes(0);
        }
        FrameStream {
            calls: Call::running(rx, async move {
                let response = request.send().promise.await?;
                read_end(response.get()?.get_end()?)
            }),
        }
    }

    /// The next batch; `None` once the call ended cleanly.
    pub async fn next_batch(&mut self) -> Option<Result<ReplicaBatch, ClientError>> {
        self.calls.next().await
    }
}

/// A streaming call in flight: the batches its sink received, then how it ended.
struct Call<T> {
    rx: mpsc::Receiver<Result<T, ClientError>>,
    end: Option<oneshot::Receiver<Result<(), ClientError>>>,
    call: tokio::task::JoinHandle<()>,
}

impl<T> Call<T> {
    fn running(
        rx: mpsc::Receiver<Result<T, ClientError>>,
        call: impl Future<Output = Result<(), ClientError>> + 'static,
    ) -> Call<T> {
        let (end_tx, end_rx) = oneshot::channel();
        let call = tokio::task::spawn_local(async move {
            let _ = end_tx.send(call.await);
        });
        Call {
            rx,
            end: Some(end_rx),
            call,
        }
    }

    async fn next(&mut self) -> Option<Result<T, ClientError>> {
        match self.rx.recv().await {
            Some(batch) => Some(batch),
            None => match self.end.take()?.await {
                Ok(Err(e)) => Some(Err(e)),
                Ok(Ok(())) | Err(_) => None,
            },
        }
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        self.call.abort();
    }
}

/// Records of a partition from an offset on, as they are appended. Dropping
/// it cancels the call on the server.
pub struct RecordStream {
    calls: Call<Vec<Record>>,
    pending: std::vec::IntoIter<Record>,
}

impl RecordStream {
    pub(crate) fn open(
        log: &log::Client,
        partition: &str,
        offset: u64,
        max_batch_bytes: u32,
    ) -> RecordStream {
        let (tx, rx) = mpsc::channel(BUFFERED_BATCHES);
        let sink: record_sink::Client = capnp_rpc::new_client(Sink { tx });
        let mut request = log.consume_stream_request();
        {
            let mut p = request.get();
            p.set_partition(partition);
            p.set_offset(offset);
            p.set_sink(sink);
            p.set_max_batch_bytes(max_batch_bytes);
        }
        RecordStream {
            calls: Call::running(rx, async move {
                let response = request.send().promise.await?;
                read_end(response.get()?.get_end()?)
            }),
            pending: Vec::new().into_iter(),
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
        self.calls.next().await
    }
}

impl Stream for RecordStream {
    type Item = Result<Record, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(record) = self.pending.next() {
                return Poll::Ready(Some(Ok(record)));
            }
            match self.calls.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => self.pending = batch.into_iter(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // The sink is gone: the call ended; report how.
                    let Some(end) = self.calls.end.as_mut() else {
                        return Poll::Ready(None);
                    };
                    return match Pin::new(end).poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(outcome) => {
                            self.calls.end = None;
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
