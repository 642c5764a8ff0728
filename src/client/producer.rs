//! A producer that batches records by itself, as Kafka's does: records
//! gather until a batch is full or `linger` has passed, and up to
//! `max_in_flight` batches are sent without waiting for each other.
//!
//! With a zero `linger` nothing waits for a timer: a batch goes out once the
//! tasks that are ready now have run, so the records that concurrent
//! callers send in the same turn of the scheduler share one call. One
//! caller at a time still gets a call per record, sent at once.
//!
//! A batch of 32 KiB or more that finds nothing in flight goes out as two
//! calls, so that the node works on one while the next is on its way (see
//! [`SPLIT_MIN_BYTES`]).

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
        // Nothing in flight: the batch goes out as two calls, so that two
        // stay in flight from now on (see `split_in_two`).
        let idle = in_flight.available_permits() == permits && permits >= 2;
        let (first, second) = if idle {
            split_in_two(batch)
        } else {
            (batch, None)
        };
        for batch in std::iter::once(first).chain(second) {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            send_batch(&log, acks, batch, permit);
        }
    }
}

/// A batch smaller than this goes out whole even when nothing is in flight:
/// each call has a fixed cost, which over TLS outweighed the overlap for
/// 16 KiB batches (64 records of 256 B: mTLS 10 % slower split in two,
/// 32 KiB ones 30 % faster).
pub const SPLIT_MIN_BYTES: usize = 32 << 10;

/// Splits a batch of at least two records and [`SPLIT_MIN_BYTES`] into
/// halves of about equal size, in order, each with at least one record.
///
/// Why: callers that wait for their records (a window of W in flight)
/// have their whole window answered at once and send the next window in
/// the same turn, so it goes out as one batch, and with a single batch in
/// flight the client and the node take turns: the node is idle while the
/// client encodes (and with TLS seals) the batch, the client while the
/// node appends it. Sent as two halves, the node appends the first while
/// the second is on its way, and the first half's answers release the
/// next records while the second is appended: two batches stay in flight.
/// 64 single records in flight (BENCHMARKS.md, "Fourteenth session: the
/// producer keeps two batches in flight"): 1 KiB records 0.71 → 1.01 M
/// records/s, 4 KiB 0.20 → 0.33 M, p50 latency about halved; over mTLS
/// +47 % and +53 %.
fn split_in_two(mut batch: Batch) -> (Batch, Option<Batch>) {
    if batch.values.len() < 2 || batch.bytes < SPLIT_MIN_BYTES {
        return (batch, None);
    }
    // Weighed as stored (a frame's 16-byte header included), so that
    // empty records split evenly too.
    let weight = |v: &Vec<u8>| v.len() + 16;
    let half = batch.values.iter().map(weight).sum::<usize>() / 2;
    let (mut at, mut weighed, mut bytes) = (0, 0, 0);
    while at < batch.values.len() - 1 && (at == 0 || weighed + weight(&batch.values[at]) <= half) {
        weighed += weight(&batch.values[at]);
        bytes += batch.values[at].len();
        at += 1;
    }
    let second = Batch {
        values: batch.values.split_off(at),
        waiters: batch.waiters.split_off(at),
        bytes: batch.bytes - bytes,
        generation: batch.generation,
    };
    batch.bytes = bytes;
    (batch, Some(second))
}

/// Sends one batch (on the sender task, so the wire order is the batch
/// order) and answers its records when the node does.
fn send_batch(
    log: &log::Client,
    acks: Acks,
    batch: Batch,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut request = log.produce_batch_request();
    request.get().set_acks(acks);
    {
        let mut list = request.get().init_values(batch.values.len() as u32);
        for (i, v) in batch.values.iter().enumerate() {
            list.set(i as u32, v);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(sizes: &[usize]) -> (Batch, Vec<oneshot::Receiver<Result<u64, ClientError>>>) {
        let mut b = Batch::default();
        let mut answers = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            b.values.push(vec![i as u8; n]);
            b.waiters.push(tx);
            b.bytes += n;
            answers.push(rx);
        }
        (b, answers)
    }

    fn firsts(b: &Batch) -> Vec<u8> {
        b.values
            .iter()
            .map(|v| v.first().copied().unwrap_or(0))
            .collect()
    }

    #[test]
    fn a_batch_of_at_least_the_split_size_goes_out_as_two_halves_in_order() {
        let (b, _answers) = batch(&[4096; 8]);
        assert_eq!(b.bytes, SPLIT_MIN_BYTES);
        let (first, second) = split_in_two(b);
        let second = second.expect("split");
        assert_eq!(firsts(&first), [0, 1, 2, 3]);
        assert_eq!(firsts(&second), [4, 5, 6, 7]);
        assert_eq!((first.bytes, second.bytes), (4 * 4096, 4 * 4096));
        assert_eq!((first.waiters.len(), second.waiters.len()), (4, 4));
    }

    #[test]
    fn one_byte_under_the_split_size_goes_out_whole() {
        let mut sizes = vec![4096; 8];
        sizes[7] -= 1;
        let (b, _answers) = batch(&sizes);
        assert_eq!(b.bytes, SPLIT_MIN_BYTES - 1);
        let (whole, second) = split_in_two(b);
        assert!(second.is_none());
        assert_eq!(whole.values.len(), 8);
    }

    #[test]
    fn halves_are_split_by_bytes_and_never_empty() {
        // One large record first: it is a half on its own.
        let (b, _answers) = batch(&[40 << 10, 10, 10, 10]);
        let (first, second) = split_in_two(b);
        assert_eq!(firsts(&first), [0]);
        assert_eq!(firsts(&second.expect("split")), [1, 2, 3]);
        // One large record last: everything before it is the first half.
        let (b, _answers) = batch(&[10, 10, 10, 40 << 10]);
        let (first, second) = split_in_two(b);
        assert_eq!(firsts(&first), [0, 1, 2]);
        assert_eq!(firsts(&second.expect("split")), [3]);
        // A single record, however large, is never split.
        let (b, _answers) = batch(&[1 << 20]);
        assert!(split_in_two(b).1.is_none());
    }
}
