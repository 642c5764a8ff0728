//! The `Log` interface of `schema/log.capnp`, served by forwarding each call
//! to a LogActor. By concern: `calls.rs` (the methods), `streams.rs`
//! (consume and produce streams), `authorization.rs`, `accounting.rs`
//! (calls in flight, metrics, spans).

use std::cell::{Cell, RefCell};
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
use crate::log::{Append, LogActor, LogError, Read, ReadBatch, Stats};
use crate::log_capnp::{Acks, frame_sink, log, produce_sink, produced, record_sink};
use crate::storage::{RecordBatch, Values};
use crate::telemetry::{CallMetrics, GaugeGuard, Metrics, StreamKind};
use crate::wire::errors::{WireError, write_error};
use crate::wire::framed::{ByteBudget, Charge};
use crate::wire::outbox::{Outbox, Reserved};
use crate::wire::{MAX_STREAMS_PER_CONNECTION, MAX_WRITES_PER_PRODUCE_STREAM, text};

mod accounting;
mod authorization;
mod calls;
mod frame_stream;
mod streams;

use accounting::*;
pub use accounting::{ConnectionState, InFlight};
pub use authorization::{
    ACTION_CONSUME, ACTION_DESCRIBE, ACTION_PRODUCE, ACTION_REPLICATE, Authorizer, OBJECT_CLUSTER,
};
use calls::*;
use streams::*;

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
    /// Default and upper bound of a replicate batch, in bytes (larger: a
    /// replica far behind copies faster with fewer, larger batches).
    pub max_replication_batch_bytes: u32,
    /// `acks=all`: the live holders of the own partition and their positions.
    pub in_sync: Rc<crate::replication::InSync>,
}

/// What a call in progress holds beyond its parameters (capnp-rpc's
/// question and answer, the call's future, the request it was read from),
/// charged to the budget of bytes in flight for as long as it runs: a
/// request of about 100 bytes is a call of several KiB while it waits
/// (40,000 pipelined `consumeBatch` calls waiting for their connection's
/// outbox held 150 MiB, 3.8 KB each), so without this charge a client
/// could grow the node by 40 times what it sent.
const CALL_STATE_BYTES: usize = 4096;

/// One client connection's view of the service: its identity goes with it.
pub struct LogService {
    ctx: Rc<ServiceContext>,
    /// The caller's identity (its certificate's CN), `anonymous` without TLS.
    subject: Rc<str>,
    /// Where calls are counted; `None` when metrics are off.
    metrics: Option<Arc<Metrics>>,
    /// The call metrics this connection has counted, kept at hand.
    call_metrics: CallMetrics,
    /// Test support: the RPC front's, so a test can make a call panic.
    failpoints: crate::supervision::Failpoints,
    /// This connection's calls and streams in progress.
    connection: Rc<ConnectionState>,
    /// The node's budget of request bytes in flight, charged with the
    /// parameters of produce calls while they are served.
    budget: Option<Rc<ByteBudget>>,
    /// This connection's unsent answers: a read reserves its answer here
    /// before it reads (`None`: unbounded, as in tests of the service alone).
    outbox: Option<Rc<Outbox>>,
}

impl LogService {
    pub fn new(ctx: Rc<ServiceContext>, subject: impl Into<Rc<str>>) -> LogService {
        LogService {
            ctx,
            subject: subject.into(),
            metrics: None,
            call_metrics: Default::default(),
            failpoints: Default::default(),
            connection: Default::default(),
            budget: None,
            outbox: None,
        }
    }

    /// Counts this connection's calls and streams in `state`; charges the
    /// parameters of produce calls to `budget` while they are served, and
    /// the answers of reads to `outbox` until they are sent.
    pub fn with_connection(
        mut self,
        state: Rc<ConnectionState>,
        budget: Option<Rc<ByteBudget>>,
        outbox: Option<Rc<Outbox>>,
    ) -> LogService {
        self.connection = state;
        self.budget = budget;
        self.outbox = outbox;
        self
    }

    /// Waits for room for an answer of at most `bytes` on this connection
    /// (see [`Outbox`]); `None` without an outbox.
    async fn reserve_answer(&self, bytes: usize) -> Option<Reserved> {
        match &self.outbox {
            Some(outbox) => Some(outbox.reserve(bytes).await),
            None => None,
        }
    }

    /// Charges a produce call to the node's budget until the returned
    /// charge is dropped: its values twice (in the message, 8 bytes of
    /// pointer each, and copied out for the append, 8 bytes of bookkeeping
    /// each); the call itself is charged by [`LogService::call`]. Counted from the copy's
    /// lengths: `total_size()` on the message walks every pointer (5 % of
    /// a batched produce's CPU).
    /// Appends wait in a LogActor's mailbox (sent in order, whatever its
    /// fill), so this is what bounds that mailbox.
    fn charge(&self, values: &Values) -> Option<Charge> {
        let bytes = values.bytes() + 8 * values.len();
        self.budget.as_ref().map(|b| b.charge(bytes * 2))
    }

    /// Shares the front's failpoints (a panic injected at `Connection`
    /// fires in the next call served).
    pub fn with_failpoints(mut self, failpoints: crate::supervision::Failpoints) -> LogService {
        self.failpoints = failpoints;
        self
    }

    /// Counts this connection's calls in `metrics` (`None`: not at all).
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> LogService {
        self.metrics = metrics;
        self
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
}
