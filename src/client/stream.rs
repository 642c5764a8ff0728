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
    tx: mpsc::Sender<Vec<Record>>,
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
            .send(batch)
            .await
            .map_err(|_| capnp::Error::disconnected("the consumer dropped the stream".into()))
    }
}

/// Records of a partition from an offset on, as they are appended. Dropping
/// it cancels the call on the server.
pub struct RecordStream {
    rx: mpsc::Receiver<Vec<Record>>,
    pending: std::vec::IntoIter<Record>,
    end: Option<oneshot::Receiver<Result<(), ClientError>>>,
    call: tokio::task::JoinHandle<()>,
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
        let (end_tx, end_rx) = oneshot::channel();
        let call = tokio::task::spawn_local(async move {
            let outcome = async {
                let response = request.send().promise.await?;
                match response.get()?.get_end()?.which()? {
                    stream_end::Which::SinkClosed(()) => Ok(()),
                    stream_end::Which::Error(e) => Err(ClientError::from_wire(e?)?),
                }
            }
            .await;
            let _ = end_tx.send(outcome);
        });
        RecordStream {
            rx,
            pending: Vec::new().into_iter(),
            end: Some(end_rx),
            call,
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
                Poll::Ready(Some(batch)) => self.pending = batch.into_iter(),
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
