//! Telemetry: Prometheus metrics and the HTTP endpoints a Kubernetes
//! StatefulSet probes (`/metrics`, `/healthz`, `/readyz`).
//!
//! - [`Metrics`]: the registry; counted on the RPC path (per call, never per
//!   record) and in SegmentActors (fsync latency); per-partition and
//!   membership figures are read from the actors when scraped.
//! - [`Readiness`]: what `/readyz` checks: partitions open, RPC listening,
//!   membership joined, start-up complete, not shutting down.
//! - [`HttpServer`]: a minimal HTTP/1.1 server for the three endpoints.

mod http;
mod metrics;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use http::HttpServer;
pub use metrics::{CONTENT_TYPE, CallMetrics, FsyncMetrics, GaugeGuard, Metrics, StreamKind};

use crate::cluster::ClusterView;
use crate::log::{Partitions, Stats};

/// Longest wait for one partition's `Stats` during a scrape.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks. Every flag starts false; the agent raises them as
/// start-up progresses and sets `stopping` first when it shuts down.
#[derive(Debug, Default)]
pub struct Readiness {
    partitions_open: Cell<bool>,
    rpc_listening: Cell<bool>,
    membership_joined: Cell<bool>,
    started: Cell<bool>,
    stopping: Cell<bool>,
}

impl Readiness {
    pub fn set_partitions_open(&self, open: bool) {
        self.partitions_open.set(open);
    }

    pub fn set_rpc_listening(&self, listening: bool) {
        self.rpc_listening.set(listening);
    }

    /// Latched by the agent: a node that joined stays ready when its peers
    /// go away (it still serves its own partition).
    pub fn set_membership_joined(&self, joined: bool) {
        self.membership_joined.set(joined);
    }

    pub fn set_started(&self, started: bool) {
        self.started.set(started);
    }

    pub fn set_stopping(&self, stopping: bool) {
        self.stopping.set(stopping);
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.stopping.get() {
            Err("shutting down")
        } else if !self.partitions_open.get() {
            Err("partitions not open")
        } else if !self.rpc_listening.get() {
            Err("RPC not listening")
        } else if !self.membership_joined.get() {
            Err("membership not joined")
        } else if !self.started.get() {
            Err("starting")
        } else {
            Ok(())
        }
    }
}

/// The state the HTTP endpoints serve, shared on the System thread.
#[derive(Default)]
pub struct Telemetry {
    metrics: Option<Arc<Metrics>>,
    readiness: Readiness,
    partitions: RefCell<Option<Rc<Partitions>>>,
    cluster: RefCell<Option<Rc<RefCell<ClusterView>>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.metrics.is_some())
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// With `metrics` false nothing is counted and `/metrics` answers 404.
    pub fn new(metrics: bool) -> Rc<Telemetry> {
        Rc::new(Telemetry {
            metrics: metrics.then(|| Arc::new(Metrics::new())),
            ..Telemetry::default()
        })
    }

    /// The metrics, unless turned off.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Partitions whose stats `/metrics` reports.
    pub fn watch_partitions(&self, partitions: Rc<Partitions>) {
        *self.partitions.borrow_mut() = Some(partitions);
    }

    /// The cluster view whose size and peers `/metrics` reports.
    pub fn watch_cluster(&self, cluster: Rc<RefCell<ClusterView>>) {
        *self.cluster.borrow_mut() = Some(cluster);
    }

    /// Every partition's stats (a partition that does not answer in time is left out).
    async fn partition_stats(&self) -> Vec<(String, crate::log::LogStats)> {
        let logs: Vec<_> = match &*self.partitions.borrow() {
            Some(p) => p
                .ids()
                .into_iter()
                .filter_map(|id| Some((id.clone(), p.get(&id).ok()?)))
                .collect(),
            None => Vec::new(),
        };
        let asks = logs.into_iter().map(|(id, log)| async move {
            match tokio::time::timeout(STATS_TIMEOUT, log.send(Stats)).await {
                Ok(Ok(stats)) => Some((id, stats)),
                _ => None,
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// `/readyz`: the start-up flags, then every partition: one that failed
    /// for good or is read-only (damaged durable data) makes the node not
    /// ready, with the partition and the cause in the answer.
    pub async fn check_ready(&self) -> Result<(), String> {
        self.readiness.check().map_err(str::to_string)?;
        if let Some(partitions) = &*self.partitions.borrow() {
            for id in partitions.ids() {
                if partitions.get(&id).is_ok_and(|log| !log.connected()) {
                    return Err(format!(
                        "partition {id} has failed: its actor spent its restart budget"
                    ));
                }
            }
        }
        for (id, stats) in self.partition_stats().await {
            if let Some(reason) = &stats.read_only {
                return Err(format!("partition {id} is read-only: {reason}"));
            }
        }
        Ok(())
    }

    /// The `/metrics` page: asks every partition's LogActor for its stats
    /// (a partition that does not answer in time is left out), reads the
    /// cluster view, encodes. `None` when metrics are off.
    pub async fn render_metrics(&self) -> Option<String> {
        let metrics = self.metrics.as_ref()?;
        let stats = self.partition_stats().await;
        let cluster = self.cluster.borrow().clone();
        let view = cluster.as_ref().map(|c| c.borrow());
        Some(metrics.render(&stats, view.as_deref()))
    }
}
