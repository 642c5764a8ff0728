//! A producer that batches records by itself, as Kafka's does: records
//! gather until a batch is full or `linger` has passed, and up to
//! `max_in_flight` batches are sent without waiting for each other.
//!
//! With a zero `linger` nothing waits for a timer: a batch goes out once the
//! tasks that are ready now have run, so the records that concurrent
//! callers send in the same turn of the scheduler share one call. One
//! caller at a time still gets a call per record, sent at once.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use super::{ClientError, read_produced};
use crate::wire::schema::Acks;
use crate::wire::schema::log;

/// Batching settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sent when it holds this many records. Default: 4096.
    pub max_batch_records: usize,
    /// ... or this many bytes. Default: 1 MiB.
    pub max_batch_bytes: usize,
    /// ... or when its first record has waited this long. Default: 1 ms.
    /// Zero: at the end of the current turn of the scheduler (see above).
    pub linger: Duration,
    /// Batches sent and not yet answered, at most. Default: 8.
    pub max_in_flight: usize,
    /// A larger record is refused by `send` at once (`RecordTooLarge`),
    /// so it never fails the records it would have been batched with.
    /// Default: 1 MiB, the node's default `--max-record-bytes`; against a
    /// node with a lower limit, set it to that limit (the node refuses a
    /// batch holding a record over its limit as a whole).
    pub max_record_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_batch_records: 4096,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_millis(1),
            max_in_flight: 8,
            max_record_bytes: 1 << 20,
        }
    }
}

type Waiter = oneshot::Sender<Result<u64, ClientError>>;

#[derive(Default)]
struct Batch {
    values: Vec<Vec<u8>>,
    waiters: Vec<Waiter>,
    bytes: usize,
    /// Bumped per batch so a linger timer flushes only the batch it was set for.
    generation: u64,
}

/// What the producer's sender task takes, in order.
enum Outgoing {
    Batch(Batch),
    /// A zero linger's batch: the sender takes it when it runs, after the
    /// tasks ready now, if it is still the batch of this generation.
    EndOfTurn(u64),
    /// Answered once every batch queued before it is answered.
    Flush(oneshot::Sender<()>),
}

/// Batches records into `produceBatch` calls. Cheap to clone; `!Send`.
///
/// One sender task sends the batches, in the order they were made, with up
/// to `max_in_flight` unanswered: the order on the wire is the order of the
/// records, never left to how tasks happen to be scheduled.
#[derive(Clone)]
pub struct Producer {
    config: Rc<ProducerConfig>,
    batch: Rc<RefCell<Batch>>,
    outbox: tokio::sync::mpsc::UnboundedSender<Outgoing>,
}

impl Producer {
    /// Must be called inside a `LocalSet` (it starts the sender task).
    /// Every batch is acknowledged per `acks`, as the client's own produces.
    pub(crate) fn new(log: log::Client, acks: Acks, config: ProducerConfig) -> Producer {
        let permits = config.max_in_flight.max(1);
        let (outbox, queue) = tokio::sync::mpsc::unbounded_channel();
        let batch = Rc::<RefCell<Batch>>::default();
        tokio::task::spawn_local(send_in_order(log, acks, batch.clone(), queue, permits));
        Producer {
            config: Rc::new(config),
            batch,
            outbox,
        }
    }

    /// Queues a record; the future resolves to its offset once its batch is
    /// acknowledged. Records keep their order. A record over
    /// `max_record_bytes` is refused at once, never batched.
    pub fn send(
        &self,
        value: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<u64, ClientError>> + 'static {
        let queued = self.queue(value);
        async move {
            queued?.await.unwrap_or_else(|_| {
                Err(ClientError::Unavailable(
                    "producer dropped the batch".into(),
                ))
            })
        }
    }

    fn queue(
        &self,
        value: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<u64, ClientError>>, ClientError> {
        let max = self.config.max_record_bytes;
        if value.len() > max {
            return Err(ClientError::RecordTooLarge {
                size: value.len() as u64,
                max: max as u64,
            });
        }
        let (tx, rx) = oneshot::channel();
        let mut sender_gone = false;
        let full = {
            let mut b = self.batch.borrow_mut();
            b.bytes += value.len();
            b.values.push(value);
            b.waiters.push(tx);
            if b.values.len() == 1 {
                let generation = b.generation;
                if self.config.linger.is_zero() {
                    // No timer and no task of its own: the sender task, woken
                    // now, runs after the tasks that are ready.
                    sender_gone = self.outbox.send(Outgoing::EndOfTurn(generation)).is_err();
                } else {
                    let this = self.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(this.config.linger).await;
                        if this.batch.borrow().generation == generation {
                            this.flush_batch();
                        }
                    });
                }
            }
            b.values.len() >= self.config.max_batch_records
                || b.bytes >= self.config.max_batch_bytes
        };
        if full || sender_gone {
            // With the sender gone, this answers the records `Unavailable`.
            self.flush_batch();
        }
        Ok(rx)
    }

    /// Sends the current batch now (without waiting for its answer).
    pub fn flush_batch(&self) {
        let Some(batch) = take(&self.batch, None) else {
            return;
        };
        if let Err(unsent) = self.outbox.send(Outgoing::Batch(batch)) {
            // The sender task is gone (its LocalSet ended): answer the records.
            if let Outgoing::Batch(batch) = unsent.0 {
                for w in batch.waiters {
                    let _ = w.send(Err(ClientError::Unavailable("producer stopped".into())));
                }
            }
        }
    }

    /// Sends the current batch and waits until every batch sent so far is answered.
    pub async fn flush(&self) {
        self.flush_batch();
        let (done, answered) = oneshot::channel();
        if self.outbox.send(Outgoing::Flush(done)).is_ok() {
            let _ = answered.await;
        }
    }
}

/// Takes the current batch (only if it is of `generation`, when given) and
/// starts the next; `None` when there is nothing to take.
fn take(current: &RefCell<Batch>, generation: Option<u64>) -> Option<Batch> {
    let mut b = current.borrow_mut();
    if b.values.is_empty() || generation.is_some_and(|g| g != b.generation) {
        return None;
    }
    let generation = b.generation + 1;
    Some(std::mem::replace(
        &mut *b,
        Batch {
            generation,
            ..Batch::default()
        },
    ))
}

/// The sender task: takes batches in order, sends each once fewer than
/// `permits` are unanswered, and answers each batch's records.
async fn send_in_order(
    log: log::Client,
    acks: Acks,
    current: Rc<RefCell<Batch>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
    permits: usize,
) {
    let in_flight = Arc::new(Semaphore::new(permits));
    while let Some(next) = queue.recv().await {
        let batch = match next {
            Outgoing::Batch(batch) => batch,
            Outgoing::EndOfTurn(generation) => match take(&current, Some(generation)) {
                Some(batch) => batch,
                None => continue,
            },
            Outgoing::Flush(done) => {
                if let Ok(all) = in_flight.acquire_many(permits as u32).await {
                    drop(all);
                }
                let _ = done.send(());
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut request = log.produce_batch_request();
        request.get().set_acks(acks);
        {
            let mut list = request.get().init_values(batch.values.len() as u32);
            for (i, v) in batch.values.iter().enumerate() {
                list.set(i as u32, v);
            }
        }
        // Sent here, in this one task: the wire order is the batch order.
        let promise = request.send().promise;
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let outcome = async {
                let response = promise.await?;
                read_produced(response.get()?.get_result()?)
            }
            .await;
            match outcome {
                Ok(produced) => {
                    for (i, w) in batch.waiters.into_iter().enumerate() {
                        let _ = w.send(Ok(produced.offsets.start + i as u64));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    let mut first = Some(e);
                    for w in batch.waiters {
                        let e = first
                            .take()
                            .unwrap_or_else(|| ClientError::Unavailable(message.clone()));
                        let _ = w.send(Err(e));
                    }
                }
            }
        });
    }
}
