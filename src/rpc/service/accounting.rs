//! Accounting of calls: calls in flight (for a graceful shutdown), the
//! method names, outcomes and latency counted per call, and the span every
//! call runs in.

use super::*;

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

    pub(super) fn enter(self: &Rc<Self>) -> InFlightGuard {
        self.count.set(self.count.get() + 1);
        InFlightGuard(self.clone())
    }
}

/// One call in progress until dropped.
pub(super) struct InFlightGuard(Rc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let left = self.0.count.get().saturating_sub(1);
        self.0.count.set(left);
        if left == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What one connection has in progress: calls and streams (so an idle
/// timeout spares a following consumer), and its open streams (bounded).
#[derive(Debug, Default)]
pub struct ConnectionState {
    busy: Cell<usize>,
    streams: Cell<usize>,
}

impl ConnectionState {
    /// Calls and streams of this connection in progress.
    pub fn busy(&self) -> usize {
        self.busy.get()
    }

    fn enter(self: &Rc<Self>) -> Busy {
        self.busy.set(self.busy.get() + 1);
        Busy(self.clone())
    }

    /// Opens a stream, unless `max` are open already.
    pub(super) fn open_stream(self: &Rc<Self>, max: usize) -> Option<OpenStream> {
        if self.streams.get() >= max {
            return None;
        }
        self.streams.set(self.streams.get() + 1);
        Some(OpenStream(self.clone()))
    }
}

/// A call or stream of the connection in progress until dropped.
pub(super) struct Busy(Rc<ConnectionState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

/// An open stream of the connection until dropped.
pub(super) struct OpenStream(Rc<ConnectionState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams.set(self.0.streams.get() - 1);
    }
}

/// An RPC method as spans and metrics name it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Method {
    name: &'static str,
    /// Whether its duration is a latency (not for a stream's lifetime).
    timed: bool,
}

impl Method {
    pub(super) const fn call(name: &'static str) -> Method {
        Method { name, timed: true }
    }

    pub(super) const fn stream(name: &'static str) -> Method {
        Method { name, timed: false }
    }
}

pub(super) const PRODUCE: Method = Method::call("produce");
pub(super) const PRODUCE_BATCH: Method = Method::call("produceBatch");
pub(super) const PRODUCE_STREAM: Method = Method::call("produceStream");
pub(super) const SINK_WRITE: Method = Method::call("produceSink.write");
pub(super) const SINK_FINISH: Method = Method::call("produceSink.finish");
pub(super) const CONSUME: Method = Method::call("consume");
pub(super) const CONSUME_BATCH: Method = Method::call("consumeBatch");
pub(super) const CONSUME_STREAM: Method = Method::stream("consumeStream");
pub(super) const REPLICATE: Method = Method::stream("replicate");
pub(super) const REPLICATED: Method = Method::call("replicated");
/// A replica's replication stream (`wire::frame_stream`), counted apart
/// from `replicate` calls.
pub(super) const REPLICATION_STREAM: Method = Method::stream("replicationStream");
pub(super) const GET_SERVERS: Method = Method::call("getServers");
pub(super) const LIST_PARTITIONS: Method = Method::call("listPartitions");

/// How a call ended for its count: `Ok`, or the kind of the typed error it answered.
pub(super) type Outcome = Result<(), &'static str>;

pub(super) fn outcome_label(result: &Result<Outcome, Error>) -> &'static str {
    match result {
        Ok(Ok(())) => "ok",
        Ok(Err(kind)) => kind,
        Err(_) => "rpc_error",
    }
}

/// Counts a call when dropped: by its outcome, or as `cancelled` if it
/// never finished (then its duration is no latency and is not observed).
pub(super) struct CallCount<'a> {
    metrics: Option<(&'a Metrics, &'a CallMetrics)>,
    method: Method,
    started: Instant,
    outcome: Option<&'static str>,
}

impl Drop for CallCount<'_> {
    fn drop(&mut self) {
        let Some((m, seen)) = self.metrics else {
            return;
        };
        match self.outcome {
            Some(outcome) => {
                let took = self.method.timed.then(|| self.started.elapsed());
                m.rpc_call(seen, self.method.name, outcome, took);
            }
            None => m.rpc_call(seen, self.method.name, "cancelled", None),
        }
    }
}

/// Puts the partition and offsets a call touched on its span.
pub(super) fn note(partition: &str, offset: u64, count: u64) {
    let span = tracing::Span::current();
    span.record("partition", partition);
    span.record("offset", offset);
    span.record("count", count);
}

impl LogService {
    /// Runs one RPC call's `body` (every method goes through here): inside
    /// one span naming the method and the peer (the body adds partition and
    /// offsets), then counts the call by outcome and times it; a call
    /// dropped unfinished (the client cancelled it or went away) counts as
    /// `cancelled`. While it runs, the call is charged to the node's budget
    /// ([`CALL_STATE_BYTES`]), so calls a client pipelines stop the node's
    /// reads before they cost more than the budget.
    ///
    /// The span and the one line per call ("rpc call": outcome, latency)
    /// are at debug level (`--log-level info,proglog::rpc=debug`): at the
    /// default level they cost nothing, where an info span cost ~10% of
    /// single-record produce throughput (and showed nowhere, as no info
    /// event happens inside a call).
    pub(super) async fn call(
        &self,
        method: Method,
        body: impl Future<Output = Result<Outcome, Error>>,
    ) -> Result<(), Error> {
        self.failpoints.hit(crate::supervision::Work::Connection);
        let _in_flight = method.timed.then(|| self.ctx.in_flight.enter());
        let _busy = self.connection.enter();
        let _state = self.budget.as_ref().map(|b| b.charge(CALL_STATE_BYTES));
        let started = Instant::now();
        let mut counted = CallCount {
            metrics: self.metrics.as_deref().map(|m| (m, &self.call_metrics)),
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
