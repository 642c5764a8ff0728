//! The node's Prometheus metrics: one [`Registry`] of typed families.
//!
//! Counted as things happen (cheap: atomic increments, a hash lookup per
//! RPC call, nothing per record): RPC calls and their latency, records and
//! bytes appended and read, open connections and streams, fsync latency.
//! Read from the actors when scraped: per-partition offsets, segments,
//! size, restarts, and membership.

use std::cell::RefCell;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::ClusterView;
use crate::log::LogStats;

/// `Content-Type` of [`Metrics::render`]: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    partition: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// RPC latency buckets: 50 µs to 1.6 s, doubling.
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// fsync latency buckets: 100 µs to 3.3 s, doubling.
fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(100e-6, 2.0, 16))
}

/// Which server-side stream a gauge counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `consumeStream`: records pushed to a client.
    Consume,
    /// `produceStream`: a client's sink of batches.
    Produce,
    /// `replicate`: records pushed to a peer's replica.
    Replicate,
}

/// Holds a gauge up by one until dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// fsync latency histograms, handed to SegmentActors (observed on the
/// blocking pool, where the sync runs).
#[derive(Debug, Clone)]
pub struct FsyncMetrics {
    sync: Histogram,
    seal: Histogram,
}

impl crate::log::SyncObserver for FsyncMetrics {
    fn sync(&self, took: Duration) {
        self.sync.observe(took.as_secs_f64());
    }

    fn seal(&self, took: Duration) {
        self.seal.observe(took.as_secs_f64());
    }
}

/// One connection's handles on the call metrics it has counted, found by
/// the address of their static labels: the families hash the labels on
/// every lookup (about 600 instructions a call). Bounded by the label
/// pairs the binary holds.
#[derive(Default)]
pub struct CallMetrics {
    counters: RefCell<Vec<((&'static str, &'static str), Counter)>>,
    latencies: RefCell<Vec<(&'static str, Histogram)>>,
}

impl CallMetrics {
    fn counter(
        &self,
        method: &'static str,
        outcome: &'static str,
        create: impl FnOnce() -> Counter,
    ) -> Counter {
        kept(
            &self.counters,
            |(m, o)| std::ptr::eq(m, method) && std::ptr::eq(o, outcome),
            (method, outcome),
            create,
        )
    }

    fn latency(&self, method: &'static str, create: impl FnOnce() -> Histogram) -> Histogram {
        kept(&self.latencies, |m| std::ptr::eq(m, method), method, create)
    }
}

/// The handle kept under `key` (found by `same`), or a new one from `create`, kept.
fn kept<K: Copy, V: Clone>(
    cache: &RefCell<Vec<(K, V)>>,
    same: impl Fn(K) -> bool,
    key: K,
    create: impl FnOnce() -> V,
) -> V {
    let mut cache = cache.borrow_mut();
    if let Some((_, v)) = cache.iter().find(|(k, _)| same(*k)) {
        return v.clone();
    }
    let v = create();
    cache.push((key, v.clone()));
    v
}

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: HistogramFamily<MethodLabels>,
    records_appended: Counter,
    bytes_appended: Counter,
    records_read: Counter,
    bytes_read: Counter,
    open_connections: Gauge,
    inflight_bytes: Gauge,
    consume_streams: Gauge,
    produce_streams: Gauge,
    replicate_streams: Gauge,
    fsync: FsyncMetrics,
    partition_lowest: Family<PartitionLabels, Gauge>,
    partition_next: Family<PartitionLabels, Gauge>,
    partition_segments: Family<PartitionLabels, Gauge>,
    partition_bytes: Family<PartitionLabels, Gauge>,
    partition_restarts: Family<PartitionLabels, Counter>,
    replication_halts: Family<PartitionLabels, Counter>,
    replicated_records: Family<PartitionLabels, Counter>,
    replica_records_lost: Family<PartitionLabels, Counter>,
    replica_lag: Family<PartitionLabels, Gauge>,
    replication_lag: Histogram,
    partition_writes_refused: Family<RefusalLabels, Gauge>,
    partition_recovery_point: Family<PartitionLabels, Gauge>,
    members: Gauge,
    peer_up: Family<PeerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered under `proglog_`.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("proglog");
        let calls = Family::<CallLabels, Counter>::default();
        r.register(
            "rpc_calls",
            "RPC calls by method and outcome: ok, the typed error's kind, rpc_error, or cancelled (the client left first)",
            calls.clone(),
        );
        let latency: HistogramFamily<MethodLabels> = Family::new_with_constructor(rpc_histogram);
        r.register_with_unit(
            "rpc_duration",
            "Time to answer an RPC call, by method (streams excluded)",
            Unit::Seconds,
            latency.clone(),
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let records_appended = counter(&mut r, "records_appended", "Records appended");
        let bytes_appended = counter(&mut r, "bytes_appended", "Record bytes appended");
        let records_read = counter(&mut r, "records_read", "Records read by consumers");
        let bytes_read = counter(&mut r, "bytes_read", "Record bytes read by consumers");
        let open_connections = Gauge::default();
        r.register(
            "rpc_open_connections",
            "RPC connections open",
            open_connections.clone(),
        );
        let inflight_bytes = Gauge::default();
        r.register(
            "rpc_inflight_bytes",
            "Request bytes in flight (messages being received, produce calls being served), against --max-inflight-bytes",
            inflight_bytes.clone(),
        );
        let streams = Family::<KindLabels, Gauge>::default();
        r.register(
            "rpc_open_streams",
            "Streams open, by kind (consume, produce)",
            streams.clone(),
        );
        let consume_streams = streams.get_or_create_owned(&KindLabels { kind: "consume" });
        let produce_streams = streams.get_or_create_owned(&KindLabels { kind: "produce" });
        let replicate_streams = streams.get_or_create_owned(&KindLabels { kind: "replicate" });
        let fsyncs: HistogramFamily<KindLabels> = Family::new_with_constructor(fsync_histogram);
        r.register_with_unit(
            "fsync_duration",
            "Time of an fdatasync (sync) or of sealing a segment (seal)",
            Unit::Seconds,
            fsyncs.clone(),
        );
        let fsync = FsyncMetrics {
            sync: fsyncs.get_or_create_owned(&KindLabels { kind: "sync" }),
            seal: fsyncs.get_or_create_owned(&KindLabels { kind: "seal" }),
        };
        let gauges = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<PartitionLabels, Gauge>::default();
            r.register(name, help, f.clone());
            f
        };
        let partition_lowest = gauges(
            &mut r,
            "partition_lowest_offset",
            "Oldest offset a partition holds",
        );
        let partition_next = gauges(
            &mut r,
            "partition_next_offset",
            "Offset a partition's next record gets (its end)",
        );
        let partition_segments = gauges(&mut r, "partition_segments", "Segments of a partition");
        let partition_bytes = Family::<PartitionLabels, Gauge>::default();
        r.register_with_unit(
            "partition_size",
            "Store bytes of a partition",
            Unit::Bytes,
            partition_bytes.clone(),
        );
        let partition_restarts = Family::<PartitionLabels, Counter>::default();
        r.register(
            "partition_restarts",
            "Restarts of a partition's LogActor (each reopens the partition) since it was opened",
            partition_restarts.clone(),
        );
        let replication_halts = Family::<PartitionLabels, Counter>::default();
        r.register(
            "replication_halts",
            "Replications of a partition halted by a record at an unexpected offset or with a bad checksum (never written)",
            replication_halts.clone(),
        );
        let replicated_records = Family::<PartitionLabels, Counter>::default();
        r.register(
            "replicated_records",
            "Records appended to this node's replica of a partition by its replicator",
            replicated_records.clone(),
        );
        let replica_records_lost = Family::<PartitionLabels, Counter>::default();
        r.register(
            "replica_records_lost",
            "Offsets a replica recorded as lost because its leader's retention deleted them before they were copied (reads there get recordsLost)",
            replica_records_lost.clone(),
        );
        let replica_lag = Family::<PartitionLabels, Gauge>::default();
        r.register(
            "replica_lag_records",
            "Records this node's replica of a partition is behind its leader's committed end, as last seen",
            replica_lag.clone(),
        );
        // 50 µs to about 0.8 s, each bucket √2 wider than the last.
        let replication_lag =
            Histogram::new(exponential_buckets(50e-6, std::f64::consts::SQRT_2, 29));
        r.register(
            "replication_lag_seconds",
            "On a leader: from its commit of an append to a replica reporting it has committed it too",
            replication_lag.clone(),
        );
        let partition_writes_refused = Family::<RefusalLabels, Gauge>::default();
        r.register(
            "partition_writes_refused",
            "1 while a partition refuses writes, by cause: readOnly (damaged durable data: run proglog repair), diskFull (until space returns)",
            partition_writes_refused.clone(),
        );
        let partition_recovery_point = gauges(
            &mut r,
            "partition_recovery_point",
            "Offset below which every record of a partition is known on disk",
        );
        let members = Gauge::default();
        r.register(
            "membership_members",
            "Live members of the cluster, this node included",
            members.clone(),
        );
        let peer_up = Family::<PeerLabels, Gauge>::default();
        r.register(
            "membership_peer_up",
            "Each known peer: 1 alive, 0 down",
            peer_up.clone(),
        );
        Metrics {
            registry: r,
            calls,
            latency,
            records_appended,
            bytes_appended,
            records_read,
            bytes_read,
            open_connections,
            inflight_bytes,
            consume_streams,
            produce_streams,
            replicate_streams,
            fsync,
            partition_lowest,
            partition_next,
            partition_segments,
            partition_bytes,
            partition_restarts,
            replication_halts,
            replicated_records,
            replica_records_lost,
            replica_lag,
            replication_lag,
            partition_writes_refused,
            partition_recovery_point,
            members,
            peer_up,
        }
    }

    /// Counts one RPC call; `took` is `None` for streams (their lifetime is
    /// no latency). `seen` keeps the handles looked up, for the next call.
    pub fn rpc_call(
        &self,
        seen: &CallMetrics,
        method: &'static str,
        outcome: &'static str,
        took: Option<Duration>,
    ) {
        seen.counter(method, outcome, || {
            self.calls
                .get_or_create(&CallLabels { method, outcome })
                .clone()
        })
        .inc();
        if let Some(took) = took {
            seen.latency(method, || {
                self.latency.get_or_create(&MethodLabels { method }).clone()
            })
            .observe(took.as_secs_f64());
        }
    }

    /// Records (and their bytes) appended by one call.
    pub fn appended(&self, records: u64, bytes: u64) {
        self.records_appended.inc_by(records);
        self.bytes_appended.inc_by(bytes);
    }

    /// Records (and their bytes) read by one call or stream batch.
    pub fn read(&self, records: u64, bytes: u64) {
        self.records_read.inc_by(records);
        self.bytes_read.inc_by(bytes);
    }

    /// A replication of `partition` halted (bad offset or checksum).
    pub fn replication_halted(&self, partition: &str) {
        self.replication_halts
            .get_or_create(&PartitionLabels {
                partition: partition.to_string(),
            })
            .inc();
    }

    /// `records` were appended to the replica of `partition`.
    pub fn replicated(&self, partition: &str, records: u64) {
        self.replicated_records
            .get_or_create(&PartitionLabels {
                partition: partition.to_string(),
            })
            .inc_by(records);
    }

    /// The replica of `partition` skipped `records` offsets its leader no
    /// longer held.
    pub fn replica_skipped(&self, partition: &str, records: u64) {
        self.replica_records_lost
            .get_or_create(&PartitionLabels {
                partition: partition.to_string(),
            })
            .inc_by(records);
    }

    /// The replica of `partition` is `records` behind its leader.
    pub fn replica_lag(&self, partition: &str, records: u64) {
        self.replica_lag
            .get_or_create(&PartitionLabels {
                partition: partition.to_string(),
            })
            .set(records as i64);
    }

    /// A replica confirmed an append `lag` after the leader committed it.
    pub fn replication_lag(&self, lag: Duration) {
        self.replication_lag.observe(lag.as_secs_f64());
    }

    /// Counts an open RPC connection until the guard is dropped.
    /// The gauge the node's budget of request bytes in flight keeps up to date.
    pub fn inflight_bytes(&self) -> Gauge {
        self.inflight_bytes.clone()
    }

    pub fn connection_opened(&self) -> GaugeGuard {
        self.open_connections.inc();
        GaugeGuard(self.open_connections.clone())
    }

    /// Counts an open stream until the guard is dropped.
    pub fn stream_opened(&self, kind: StreamKind) -> GaugeGuard {
        let gauge = match kind {
            StreamKind::Consume => &self.consume_streams,
            StreamKind::Produce => &self.produce_streams,
            StreamKind::Replicate => &self.replicate_streams,
        };
        gauge.inc();
        GaugeGuard(gauge.clone())
    }

    /// The fsync histograms, handed to the partitions as their sync observer.
    pub fn fsync(&self) -> FsyncMetrics {
        self.fsync.clone()
    }

    /// Sets the scrape-time families from `partitions` (id and stats) and
    /// `cluster`, then encodes everything as Prometheus text.
    pub fn render(
        &self,
        partitions: &[(String, LogStats)],
        cluster: Option<&ClusterView>,
    ) -> String {
        for family in [
            &self.partition_lowest,
            &self.partition_next,
            &self.partition_segments,
            &self.partition_bytes,
        ] {
            family.clear();
        }
        self.partition_restarts.clear();
        self.partition_writes_refused.clear();
        self.partition_recovery_point.clear();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (id, stats) in partitions {
            let l = PartitionLabels {
                partition: id.clone(),
            };
            self.partition_lowest
                .get_or_create(&l)
                .set(as_i64(stats.lowest_offset));
            self.partition_next
                .get_or_create(&l)
                .set(as_i64(stats.next_offset));
            self.partition_segments
                .get_or_create(&l)
                .set(as_i64(stats.segments as u64));
            self.partition_bytes
                .get_or_create(&l)
                .set(as_i64(stats.size_bytes));
            self.partition_restarts
                .get_or_create(&l)
                .inc_by(stats.restarts);
            self.partition_recovery_point
                .get_or_create(&l)
                .set(as_i64(stats.recovery_point));
            for (cause, on) in [
                ("readOnly", stats.read_only.is_some()),
                ("diskFull", stats.disk_full.is_some()),
            ] {
                if on {
                    self.partition_writes_refused
                        .get_or_create(&RefusalLabels {
                            partition: id.clone(),
                            cause: cause.to_string(),
                        })
                        .set(1);
                }
            }
        }
        self.peer_up.clear();
        let mut members = 0;
        if let Some(cluster) = cluster {
            members += i64::from(cluster.local.is_some());
            for peer in &cluster.peers {
                members += i64::from(peer.alive);
                self.peer_up
                    .get_or_create(&PeerLabels {
                        peer: peer.name.clone(),
                    })
                    .set(i64::from(peer.alive));
            }
        }
        self.members.set(members);
        let mut out = String::with_capacity(8 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
