//! The `Log` interface of `schema/log.capnp`, served by forwarding each call
//! to a LogActor.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use capnp::Error;
use capnp::capability::Rc as CapRc;
use tracing::Instrument;
use tracing::field::Empty;

use crate::cluster::{ClusterView, ServerInfo};
use crate::log::{Append, LogActor, LogError, Read, ReadBatch, Stats, WaitFor};
use crate::log_capnp::{log, produce_sink, produced, record_sink};
use crate::telemetry::{GaugeGuard, Metrics, StreamKind};
use crate::wire::errors::{WireError, write_error};
use crate::wire::text;

/// Decides whether `subject` may do `action` on `object`; denial carries the
/// reason for the typed error. `None` in [`ServiceContext`] allows everything.
pub trait Authorizer {
    fn authorize(&self, subject: &str, action: &str, object: &str) -> bool;
}

/// What every connection's service object shares.
pub struct ServiceContext {
    pub partitions: Rc<crate::log::Partitions>,
    /// Calls in progress (streams excluded), so a shutdown can let them finish.
    pub in_flight: Rc<InFlight>,
    pub cluster: Rc<RefCell<ClusterView>>,
    pub authorizer: Option<Rc<dyn Authorizer>>,
    /// Largest record accepted (checked before it reaches a LogActor).
    pub max_record_bytes: u32,
    /// Default and upper bound of a consumeStream batch, in bytes.
    pub max_stream_batch_bytes: u32,
}

/// Counts unary calls in progress; a graceful shutdown waits for it to reach
/// zero (bounded) before it closes the partitions.
#[derive(Debug, Default)]
pub struct InFlight {
    count: std::cell::Cell<usize>,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Calls in progress now.
    pub fn count(&self) -> usize {
        self.count.get()
    }

    /// Resolves once no call is in progress (at once if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.get() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(self: &Rc<Self>) -> InFlightGuard {
        self.count.set(self.count.get() + 1);
        InFlightGuard(self.clone())
    }
}

/// One call in progress until dropped.
struct InFlightGuard(Rc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let left = self.0.count.get().saturating_sub(1);
        self.0.count.set(left);
        if left == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One client connection's view of the service: its identity goes with it.
pub struct LogService {
    ctx: Rc<ServiceContext>,
    /// The caller's identity (its certificate's CN), `anonymous` without TLS.
    subject: Rc<str>,
    /// Where calls are counted; `None` when metrics are off.
    metrics: Option<Arc<Metrics>>,
}

/// An RPC method as spans and metrics name it.
#[derive(Debug, Clone, Copy)]
struct Method {
    name: &'static str,
    /// Whether its duration is a latency (not for a stream's lifetime).
    timed: bool,
}

impl Method {
    const fn call(name: &'static str) -> Method {
        Method { name, timed: true }
    }

    const fn stream(name: &'static str) -> Method {
        Method { name, timed: false }
    }
}

const PRODUCE: Method = Method::call("produce");
const PRODUCE_BATCH: Method = Method::call("produceBatch");
const PRODUCE_STREAM: Method = Method::call("produceStream");
const SINK_WRITE: Method = Method::call("produceSink.write");
const SINK_FINISH: Method = Method::call("produceSink.finish");
const CONSUME: Method = Method::call("consume");
const CONSUME_STREAM: Method = Method::stream("consumeStream");
const GET_SERVERS: Method = Method::call("getServers");
const LIST_PARTITIONS: Method = Method::call("listPartitions");

/// How a call ended for its count: `Ok`, or the kind of the typed error it answered.
type Outcome = Result<(), &'static str>;

fn outcome_label(result: &Result<Outcome, Error>) -> &'static str {
    match result {
        Ok(Ok(())) => "ok",
        Ok(Err(kind)) => kind,
        Err(_) => "rpc_error",
    }
}

/// Counts a call when dropped: by its outcome, or as `cancelled` if it
/// never finished (then its duration is no latency and is not observed).
struct CallCount<'a> {
    metrics: Option<&'a Metrics>,
    method: Method,
    started: Instant,
    outcome: Option<&'static str>,
}

impl Drop for CallCount<'_> {
    fn drop(&mut self) {
        let Some(m) = self.metrics else { return };
        match self.outcome {
            Some(outcome) => {
                let took = self.method.timed.then(|| self.started.elapsed());
                m.rpc_call(self.method.name, outcome, took);
            }
            None => m.rpc_call(self.method.name, "cancelled", None),
        }
    }
}

/// Puts the partition and offsets a call touched on its span.
fn note(partition: &str, offset: u64, count: u64) {
    let span = tracing::Span::current();
    span.record("partition", partition);
    span.record("offset", offset);
    span.record("count", count);
}

/// Actions checked by the authorizer.
pub const ACTION_PRODUCE: &str = "produce";
pub const ACTION_CONSUME: &str = "consume";

impl LogService {
    pub fn new(ctx: Rc<ServiceContext>, subject: impl Into<Rc<str>>) -> LogService {
        LogService {
            ctx,
            subject: subject.into(),
            metrics: None,
        }
    }

    /// Counts this connection's calls in `metrics` (`None`: not at all).
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> LogService {
        self.metrics = metrics;
        self
    }

    /// Runs one RPC call's `body` (every method goes through here): inside
    /// one span naming the method and the peer (the body adds partition and
    /// offsets), then counts the call by outcome and times it; a call
    /// dropped unfinished (the client cancelled it or went away) counts as
    /// `cancelled`.
    ///
    /// The span and the one line per call ("rpc call": outcome, latency)
    /// are at debug level (`--log-level info,proglog::rpc=debug`): at the
    /// default level they cost nothing, where an info span cost ~10% of
    /// single-record produce throughput (and showed nowhere, as no info
    /// event happens inside a call).
    async fn call(
        &self,
        method: Method,
        body: impl Future<Output = Result<Outcome, Error>>,
    ) -> Result<(), Error> {
        let _in_flight = method.timed.then(|| self.ctx.in_flight.enter());
        let started = Instant::now();
        let mut counted = CallCount {
            metrics: self.metrics.as_deref(),
            method,
            started,
            outcome: None,
        };
        let span = tracing::debug_span!(
            "rpc",
            method = method.name,
            peer = %self.subject,
            partition = Empty,
            offset = Empty,
            count = Empty
        );
        let result = async {
            let result = body.await;
            tracing::debug!(
                outcome = outcome_label(&result),
                micros = started.elapsed().as_micros() as u64,
                "rpc call"
            );
            result
        }
        .instrument(span)
        .await;
        counted.outcome = Some(outcome_label(&result));
        result.map(|_| ())
    }

    /// Resolves a partition id (empty = own) and checks the caller may
    /// `action` it, before looking it up: an unauthorized caller learns
    /// nothing of which partitions exist.
    fn partition(
        &self,
        id: &str,
        action: &str,
    ) -> Result<(String, Addr<LogActor>), (WireError, String)> {
        let id = self.ctx.partitions.resolve(id).to_string();
        self.authorize(action, &id)?;
        let log = self
            .ctx
            .partitions
            .get(&id)
            .map_err(|e| (WireError::UnknownPartition(id.clone()), e.to_string()))?;
        Ok((id, log.clone()))
    }

    fn authorize(&self, action: &str, object: &str) -> Result<(), (WireError, String)> {
        match &self.ctx.authorizer {
            Some(a) if !a.authorize(&self.subject, action, object) => Err((
                WireError::PermissionDenied {
                    subject: self.subject.to_string(),
                    action: action.to_string(),
                    object: object.to_string(),
                },
                format!("{} may not {action} {object}", self.subject),
            )),
            _ => Ok(()),
        }
    }

    fn check_sizes<'a>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), (WireError, String)> {
        let max = self.ctx.max_record_bytes;
        for v in values {
            if v.len() > max as usize {
                return Err((
                    WireError::RecordTooLarge {
                        size: v.len() as u64,
                        max: max as u64,
                    },
                    format!("record of {} bytes exceeds the maximum of {max}", v.len()),
                ));
            }
        }
        Ok(())
    }

    /// Appends to the own partition; counts what was appended. Batches of
    /// one produce stream share a `session`, so none lands behind a failed one.
    async fn append_values(&self, values: Vec<Vec<u8>>, session: Option<u64>) -> AppendOutcome {
        self.check_sizes(values.iter().map(Vec::as_slice))?;
        let (id, log) = self.partition("", ACTION_PRODUCE)?;
        let count = values.len() as u32;
        let bytes = match &self.metrics {
            Some(_) => values.iter().map(Vec::len).sum::<usize>() as u64,
            None => 0,
        };
        let append = Append {
            records: values,
            session,
        };
        // In order, whatever the mailbox's fill: batches of one stream (and
        // calls of one connection) land in the order they arrived.
        match crate::log::append_in_order(&log, append).await {
            Ok(range) => {
                note(&id, range.start, count.into());
                if let Some(m) = &self.metrics {
                    m.appended(count.into(), bytes);
                }
                Ok((id, range.start, count))
            }
            Err(e) => Err(log_error(&e)),
        }
    }

    /// Appends to the own partition; fills a `Produced`.
    async fn append(&self, values: Vec<Vec<u8>>, out: produced::Builder<'_>) -> Outcome {
        let outcome = self.append_values(values, None).await;
        let label = match &outcome {
            Ok(_) => Ok(()),
            Err((kind, _)) => Err(kind.kind()),
        };
        write_produced(out, outcome);
        label
    }

    /// Pushes records from `next` on to `sink` until an error (answered)
    /// or until the sink goes away (`None`); counts them in `sent`.
    async fn stream_records(
        &self,
        log: &Addr<LogActor>,
        mut next: u64,
        sink: &record_sink::Client,
        max_bytes: usize,
        sent: &mut u64,
    ) -> Option<(WireError, String)> {
        loop {
            let batch = match log
                .send(ReadBatch {
                    from: next,
                    max_bytes,
                })
                .await
            {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => return Some(log_error(&e)),
                Err(e) => return Some((WireError::Unavailable, e.to_string())),
            };
            if batch.is_empty() {
                // At the end of the log: wait to be woken by the LogActor.
                match log.send(WaitFor { offset: next }).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Some(log_error(&e)),
                    Err(e) => return Some((WireError::Unavailable, e.to_string())),
                }
            }
            // Counted as read from the log, whether or not the client
            // stays to receive them.
            if let Some(m) = &self.metrics {
                m.read(batch.len() as u64, batch.payload_bytes() as u64);
            }
            let mut request = sink.write_request();
            {
                let mut list = request.get().init_records(batch.len() as u32);
                for (i, (offset, value)) in batch.iter().enumerate() {
                    let mut r = list.reborrow().get(i as u32);
                    r.set_offset(offset);
                    r.set_value(value);
                }
            }
            if let Err(e) = request.send().await {
                tracing::debug!(error = %e, "stream sink went away");
                return None;
            }
            next = batch.next_offset().unwrap_or(next);
            *sent += batch.len() as u64;
        }
    }
}

/// The outcome of an append as `Produced` carries it: (partition, first offset, count) or the error.
type AppendOutcome = Result<(String, u64, u32), (WireError, String)>;

fn log_error(e: &LogError) -> (WireError, String) {
    (super::errors::classify(e), e.to_string())
}

fn write_produced(
    out: produced::Builder<'_>,
    outcome: Result<(String, u64, u32), (WireError, String)>,
) {
    match outcome {
        Ok((partition, first, count)) => {
            let mut ok = out.init_ok();
            ok.set_partition(&partition);
            ok.set_first_offset(first);
            ok.set_count(count);
        }
        Err((kind, message)) => write_error(out.init_error(), &kind, &message),
    }
}

impl log::Server for LogService {
    async fn produce(
        self: CapRc<Self>,
        params: log::ProduceParams,
        mut results: log::ProduceResults,
    ) -> Result<(), Error> {
        self.call(PRODUCE, async {
            let value = params.get()?.get_value()?.to_vec();
            Ok(self.append(vec![value], results.get().init_result()).await)
        })
        .await
    }

    async fn produce_batch(
        self: CapRc<Self>,
        params: log::ProduceBatchParams,
        mut results: log::ProduceBatchResults,
    ) -> Result<(), Error> {
        self.call(PRODUCE_BATCH, async {
            let list = params.get()?.get_values()?;
            let mut values = Vec::with_capacity(list.len() as usize);
            for v in list.iter() {
                values.push(v?.to_vec());
            }
            Ok(self.append(values, results.get().init_result()).await)
        })
        .await
    }

    async fn produce_stream(
        self: CapRc<Self>,
        _: log::ProduceStreamParams,
        mut results: log::ProduceStreamResults,
    ) -> Result<(), Error> {
        self.call(PRODUCE_STREAM, async {
            let sink = ProduceSink {
                service: self.clone(),
                session: crate::log::new_session(),
                results: RefCell::new(Vec::new()),
                _open: self
                    .metrics
                    .as_ref()
                    .map(|m| m.stream_opened(StreamKind::Produce)),
            };
            results.get().set_sink(capnp_rpc::new_client(sink));
            Ok(Ok(()))
        })
        .await
    }

    async fn consume(
        self: CapRc<Self>,
        params: log::ConsumeParams,
        mut results: log::ConsumeResults,
    ) -> Result<(), Error> {
        self.call(CONSUME, async {
            let p = params.get()?;
            let (id, offset) = (text(p.get_partition())?, p.get_offset());
            let outcome = match self.partition(&id, ACTION_CONSUME) {
                Ok((id, log)) => {
                    note(&id, offset, 1);
                    match log.send(Read { offset }).await {
                        Ok(Ok(value)) => Ok(value),
                        Ok(Err(e)) => Err(log_error(&e)),
                        Err(e) => Err((WireError::Unavailable, e.to_string())),
                    }
                }
                Err(e) => Err(e),
            };
            let out = results.get().init_result();
            match outcome {
                Ok(value) => {
                    if let Some(m) = &self.metrics {
                        m.read(1, value.len() as u64);
                    }
                    let mut r = out.init_record();
                    r.set_offset(offset);
                    r.set_value(&value);
                    Ok(Ok(()))
                }
                Err((kind, message)) => {
                    write_error(out.init_error(), &kind, &message);
                    Ok(Err(kind.kind()))
                }
            }
        })
        .await
    }

    async fn consume_stream(
        self: CapRc<Self>,
        params: log::ConsumeStreamParams,
        mut results: log::ConsumeStreamResults,
    ) -> Result<(), Error> {
        self.call(CONSUME_STREAM, async {
            let p = params.get()?;
            let id = text(p.get_partition())?;
            let from = p.get_offset();
            let sink: record_sink::Client = p.get_sink()?;
            let max_bytes = match p.get_max_batch_bytes() {
                0 => self.ctx.max_stream_batch_bytes,
                n => n.min(self.ctx.max_stream_batch_bytes),
            } as usize;
            let end = match self.partition(&id, ACTION_CONSUME) {
                Ok((id, log)) => {
                    note(&id, from, 0);
                    let _open: Option<GaugeGuard> = self
                        .metrics
                        .as_ref()
                        .map(|m| m.stream_opened(StreamKind::Consume));
                    let mut sent = 0;
                    let end = self
                        .stream_records(&log, from, &sink, max_bytes, &mut sent)
                        .await;
                    tracing::Span::current().record("count", sent);
                    end
                }
                Err(e) => Some(e),
            };
            match end {
                None => {
                    results.get().init_end().set_sink_closed(());
                    Ok(Ok(()))
                }
                Some((kind, message)) => {
                    write_error(results.get().init_end().init_error(), &kind, &message);
                    Ok(Err(kind.kind()))
                }
            }
        })
        .await
    }

    async fn get_servers(
        self: CapRc<Self>,
        _: log::GetServersParams,
        mut results: log::GetServersResults,
    ) -> Result<(), Error> {
        self.call(GET_SERVERS, async {
            let cluster = self.ctx.cluster.borrow();
            let all: Vec<(&ServerInfo, bool)> = cluster
                .local
                .iter()
                .map(|s| (s, true))
                .chain(cluster.peers.iter().map(|s| (s, false)))
                .collect();
            let mut list = results.get().init_servers(all.len() as u32);
            for (i, (s, local)) in all.into_iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_id(&s.name);
                b.set_rpc_addr(&s.rpc_addr);
                b.set_alive(s.alive);
                b.set_partition(&s.partition);
                b.set_is_local(local);
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn list_partitions(
        self: CapRc<Self>,
        _: log::ListPartitionsParams,
        mut results: log::ListPartitionsResults,
    ) -> Result<(), Error> {
        self.call(LIST_PARTITIONS, async {
            let own = self.ctx.partitions.own_id().to_string();
            let mut infos = Vec::new();
            for id in self
                .ctx
                .partitions
                .ids()
                .map(str::to_string)
                .collect::<Vec<_>>()
            {
                let Ok(log) = self.ctx.partitions.get(&id) else {
                    continue;
                };
                let Ok(stats) = log.send(Stats).await else {
                    continue;
                };
                let owner = owner_of(&id, &self.ctx.cluster.borrow());
                infos.push((id.clone(), owner, stats, id == own));
            }
            let mut list = results.get().init_partitions(infos.len() as u32);
            for (i, (id, owner, stats, leader)) in infos.into_iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_id(&id);
                b.set_owner(&owner);
                b.set_lowest_offset(stats.lowest_offset);
                b.set_next_offset(stats.next_offset);
                b.set_is_leader(leader);
            }
            Ok(Ok(()))
        })
        .await
    }
}

/// The node leading partition `id`, from the cluster view (or the id's name part).
fn owner_of(id: &str, cluster: &ClusterView) -> String {
    cluster
        .local
        .iter()
        .chain(cluster.peers.iter())
        .find(|s| s.partition == id)
        .map(|s| s.name.clone())
        .unwrap_or_else(|| id.rsplit_once('-').map_or(id, |(name, _)| name).to_string())
}

/// Server side of a produce stream: each write is one batch append, awaited
/// before the next is taken, so the client's flow-control window bounds
/// what is buffered here. The stream is one produce session: once a write
/// fails, later writes are refused (not appended), so its records stay in
/// the order written.
struct ProduceSink {
    service: CapRc<LogService>,
    session: u64,
    /// One slot per write, in the order the writes arrived (a slot is
    /// filled when its append completes, whatever the completion order).
    results: RefCell<Vec<Option<AppendOutcome>>>,
    /// Counts the stream as open while the client holds the sink.
    _open: Option<GaugeGuard>,
}

impl produce_sink::Server for ProduceSink {
    async fn write(self: CapRc<Self>, params: produce_sink::WriteParams) -> Result<(), Error> {
        self.service
            .call(SINK_WRITE, async {
                let list = params.get()?.get_values()?;
                let mut values = Vec::with_capacity(list.len() as usize);
                for v in list.iter() {
                    values.push(v?.to_vec());
                }
                let slot = {
                    let mut results = self.results.borrow_mut();
                    results.push(None);
                    results.len() - 1
                };
                let outcome = self.service.append_values(values, Some(self.session)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_is_idle_only_when_every_call_has_finished() {
        let calls = Rc::new(InFlight::default());
        calls.idle().await; // nothing in progress: at once
        let first = calls.enter();
        let second = calls.enter();
        let idle = calls.idle();
        tokio::pin!(idle);
        assert!(futures::poll!(idle.as_mut()).is_pending());
        drop(first);
        assert!(
            futures::poll!(idle.as_mut()).is_pending(),
            "one call still runs"
        );
        drop(second);
        assert!(futures::poll!(idle.as_mut()).is_ready());
        assert_eq!(calls.count(), 0);
    }
}
