//! The Agent: the root actor of the node's supervision tree (drawn in the
//! README). [`Agent::start`] starts it, then its children in order (HTTP
//! telemetry, partitions, RPC front, membership), each escalating to it;
//! the returned [`Node`] is the handle that tears them down.
//!
//! Supervision (`crate::supervision`): a child that spent its restart
//! budget escalates here, and the answer is the node's end: it reports the
//! failure ([`Node::failed`]), `proglog serve` shuts the node down
//! gracefully and exits with a non-zero status, so the orchestrator
//! restarts it (recovery then reopens every partition). A panic in the
//! Agent's own handlers restarts it (it keeps every child and the cluster
//! view: its state is handles); past its own budget, the same end.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use actix::prelude::*;
use tokio::sync::watch;

use crate::cluster::{ClusterView, ServerInfo};
use crate::config::{ConfigError, NodeConfig};
use crate::log::{LogError, Partitions};
use crate::membership::{
    GetLocal, Leave, MembershipActor, MembershipConfig, MembershipError, MembershipEvent, Subscribe,
};
use crate::replication::Connector;
use crate::rpc::{Acceptor, PlainAcceptor, RpcConfig, RpcServer, ServiceContext};
use crate::storage::StorageError;
use crate::supervision::{self, ChildSpec, Escalation, InjectPanic, Parent, Work};
use crate::telemetry::{HttpServer, Telemetry};

/// How long a graceful shutdown waits for calls in progress.
pub const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a node could not start (or stop) cleanly. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {dir}: {source}")]
    Storage { dir: String, source: StorageError },
    #[error("RPC listener on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP listener (http-addr) on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gossip on {addr}: {source}")]
    Membership {
        addr: SocketAddr,
        source: MembershipError,
    },
    #[error("cluster key file {path}: {message}")]
    ClusterKey { path: String, message: String },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("closing partitions: {0}")]
    Close(#[from] LogError),
}

/// A running node: the handle [`Agent::start`] returns.
pub struct Node {
    config: NodeConfig,
    partitions: Rc<Partitions>,
    rpc: RpcServer,
    membership: Addr<MembershipActor>,
    gossip_addr: SocketAddr,
    cluster: Rc<RefCell<ClusterView>>,
    telemetry: Rc<Telemetry>,
    http: HttpServer,
    /// Calls in progress, drained on shutdown.
    in_flight: Rc<crate::rpc::InFlight>,
    agent: Addr<Agent>,
    /// Set when an escalation reached the root: the node must stop.
    failure: watch::Receiver<Option<String>>,
}

/// How [`Node::run_until`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The stop future completed (a signal): a normal end.
    Requested,
    /// A failure escalated to the root: the node stopped itself and must
    /// exit with a non-zero status.
    Escalated(String),
}

/// The root actor. Holds the cluster view the RPC front serves (kept in
/// step with membership, whose events it subscribes to) and the node's
/// failure signal, which escalations from its children set.
pub struct Agent {
    view: Rc<RefCell<ClusterView>>,
    telemetry: Rc<Telemetry>,
    failure: Rc<watch::Sender<Option<String>>>,
    /// Set once partitions are open: what replicators are started with.
    replication: Rc<std::cell::OnceCell<Replication>>,
    /// Peers by name, as membership last told (for replication).
    peers: std::collections::BTreeMap<String, replicas::Peer>,
    /// One replicator per peer whose partition this node holds.
    replicators: std::collections::BTreeMap<String, replicas::Running>,
    /// Peers whose replicator spent its budget and rests before restarting.
    resting: std::collections::BTreeSet<String>,
    /// Shutting down: no replicator is started any more.
    replication_stopped: bool,
}

mod replicas;
pub use replicas::{GetReplicators, Replication};

impl Agent {
    fn fail(&self, reason: String) {
        tracing::error!(%reason, "a failure reached the root: the node stops");
        self.failure.send_if_modified(|failure| {
            failure.get_or_insert(reason);
            true
        });
    }
}

impl Actor for Agent {
    type Context = Context<Self>;
}

impl Supervised for Agent {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!("agent restarting: children and cluster view kept");
    }
}

impl Handler<Escalation> for Agent {
    type Result = ();

    fn handle(&mut self, e: Escalation, ctx: &mut Context<Self>) {
        match e.child.strip_prefix("replicator ") {
            Some(peer) => self.replicator_escalated(peer, &e.reason, ctx),
            None => self.fail(format!("{}: {}", e.child, e.reason)),
        }
    }
}

/// Test-only: `Handler` panics here and now (the Agent has no timers or
/// completions of its own).
impl Handler<InjectPanic> for Agent {
    type Result = ();

    fn handle(&mut self, InjectPanic(work): InjectPanic, _ctx: &mut Context<Self>) {
        if work == Work::Handler {
            panic!("injected panic (Handler)");
        }
    }
}

impl Handler<MembershipEvent> for Agent {
    type Result = ();

    /// Keeps the RPC front's view of the cluster in step with membership,
    /// and marks the node joined (for `/readyz`) once it sees a peer.
    fn handle(&mut self, event: MembershipEvent, ctx: &mut Context<Self>) {
        self.track(&event);
        self.reconcile(ctx);
        if matches!(&event, MembershipEvent::Snapshot(m) if !m.is_empty())
            || matches!(event, MembershipEvent::PeerUp { .. })
        {
            self.telemetry.readiness().set_membership_joined(true);
        }
        if let MembershipEvent::PeerDown { name, reason } = &event {
            tracing::info!(peer = %name, ?reason, "peer down");
        }
        // The RPC front's view: every peer known, alive or not.
        self.view.borrow_mut().peers = self.peers_view();
    }
}

/// The gossip address peers are told: the bound one, unless it is a
/// wildcard (`0.0.0.0:8401` in a container), then the advertised RPC
/// address's IP with the gossip port. `None` lets membership use the bound
/// address (also when the RPC address is a wildcard too: a cluster of one).
fn gossip_advertise_addr(gossip: SocketAddr, advertise_rpc: SocketAddr) -> Option<SocketAddr> {
    (gossip.ip().is_unspecified() && gossip.port() != 0 && !advertise_rpc.ip().is_unspecified())
        .then(|| SocketAddr::new(advertise_rpc.ip(), gossip.port()))
}

impl Agent {
    /// Starts a node. Must run inside an actix System. RPC is mutual TLS
    /// with casbin authorization, or plain TCP with `insecure` (warned about).
    pub async fn start(config: NodeConfig) -> Result<Node, AgentError> {
        if config.insecure {
            tracing::warn!(
                "--insecure: RPC is plain TCP without authentication or authorization; anyone who reaches the port can read and write"
            );
            return Self::start_node(config, PlainAcceptor, None, Connector::Plain).await;
        }
        let tls = match &config.tls {
            Some(files) => files.clone(),
            None => {
                let host = config.advertise_rpc_addr.ip().to_string();
                let dev = crate::auth::certs::ensure_dev_material(
                    &config.data_dir,
                    &config.tls_dir,
                    &[host],
                )?;
                tracing::warn!(
                    dir = %dev.dir.display(),
                    created = dev.created,
                    "no TLS configured: using development certificates (clients find root.pem/root.key with --tls-dir {})",
                    config.tls_dir.display()
                );
                crate::config::TlsFiles {
                    ca: dev.ca,
                    cert: dev.server_cert,
                    key: dev.server_key,
                }
            }
        };
        let server = crate::auth::tls::server_config(&tls.ca, &tls.cert, &tls.key)?;
        // Replicators dial peers with this node's own certificate.
        let client = crate::auth::tls::client_config(&tls.ca, &tls.cert, &tls.key)?;
        let acl = crate::auth::acl::Acl::load(&config.acl_model, &config.acl_policy).await?;
        Self::start_node(
            config,
            crate::auth::tls::TlsAcceptor::new(server),
            Some(Rc::new(acl)),
            Connector::Tls(client),
        )
        .await
    }

    /// Starts a node whose RPC connections go through `acceptor`, checked by
    /// `authorizer` (`None`: every call allowed); its replicators dial peers
    /// over plain TCP.
    pub async fn start_with<A: Acceptor>(
        config: NodeConfig,
        acceptor: A,
        authorizer: Option<Rc<dyn crate::rpc::Authorizer>>,
    ) -> Result<Node, AgentError> {
        Self::start_node(config, acceptor, authorizer, Connector::Plain).await
    }

    async fn start_node<A: Acceptor>(
        config: NodeConfig,
        acceptor: A,
        authorizer: Option<Rc<dyn crate::rpc::Authorizer>>,
        connector: Connector,
    ) -> Result<Node, AgentError> {
        let log_config = config.log_config()?;
        let telemetry = Telemetry::new(!config.no_metrics);
        // The root first: every child escalates to it. Its own escalation
        // (its budget spent) is the node's failure too.
        let cluster = Rc::new(RefCell::new(ClusterView::default()));
        let (failure, failed) = watch::channel(None);
        let replication = Rc::new(std::cell::OnceCell::new());
        let failure = Rc::new(failure);
        let root_failure = failure.clone();
        let root: Parent = Rc::new(move |e: Escalation| {
            tracing::error!(reason = %e.reason, "the agent spent its restart budget: the node stops");
            root_failure.send_replace(Some(format!("{}: {}", e.child, e.reason)));
        });
        let agent = supervision::start(
            ChildSpec::new("agent").parent(Some(root)),
            Agent {
                view: cluster.clone(),
                telemetry: telemetry.clone(),
                failure,
                replication: replication.clone(),
                peers: Default::default(),
                replicators: Default::default(),
                resting: Default::default(),
                replication_stopped: false,
            },
        );
        let parent = Some(supervision::parent(&agent));
        // First, so probes are answered (not ready) while the rest starts.
        let http = HttpServer::start_under(config.http_addr, telemetry.clone(), parent.clone())
            .await
            .map_err(|source| AgentError::Http {
                addr: config.http_addr,
                source,
            })?;
        let fsync: crate::log::Observer = telemetry.metrics().map(|m| {
            std::sync::Arc::new(m.fsync()) as std::sync::Arc<dyn crate::log::SyncObserver>
        });
        let storage_error = |source| AgentError::Storage {
            dir: config.data_dir.display().to_string(),
            source,
        };
        let partitions = Rc::new(
            Partitions::open_supervised(
                &config.data_dir,
                &config.node_name,
                log_config,
                fsync,
                parent.clone(),
            )
            .map_err(storage_error)?,
        );
        tracing::info!(node = %config.node_name, partition = %partitions.own_id(), data_dir = %config.data_dir.display(), "partitions open");
        telemetry.watch_partitions(partitions.clone());
        telemetry.readiness().set_partitions_open(true);

        // The RPC listener binds first, so the address gossiped to peers is
        // the real one even when port 0 was asked for.
        let in_flight = Rc::new(crate::rpc::InFlight::default());
        let in_sync = Rc::new(crate::replication::InSync::new(
            config.min_insync_replicas,
            std::time::Duration::from_millis(config.ack_timeout_ms),
        ));
        let ctx = Rc::new(ServiceContext {
            in_sync: in_sync.clone(),
            partitions: partitions.clone(),
            in_flight: in_flight.clone(),
            cluster: cluster.clone(),
            authorizer,
            max_record_bytes: config.max_record_bytes,
            max_stream_batch_bytes: 256 << 10,
            // Kafka's `replica.fetch.max.bytes` default. Against 256 KiB:
            // catch-up 4.53 against 3.43 M rec/s (BENCHMARKS.md, Replication).
            max_replication_batch_bytes: 1 << 20,
        });
        let rpc_config = RpcConfig {
            listen: config.rpc_addr,
            max_connections: config.max_connections,
            max_message_bytes: config.max_message_bytes,
            max_inflight_bytes: config.max_inflight_bytes,
            idle_timeout: std::time::Duration::from_secs(config.idle_timeout),
            busy_poll: std::time::Duration::from_micros(config.busy_poll_us),
            max_connections_per_identity: config.max_connections_per_identity,
            ..RpcConfig::default()
        };
        let metrics = telemetry.metrics().cloned();
        let rpc = RpcServer::start_under(rpc_config, ctx, acceptor, metrics, parent.clone())
            .await
            .map_err(|source| AgentError::Listen {
                addr: config.rpc_addr,
                source,
            })?;
        telemetry.readiness().set_rpc_listening(true);
        let advertise_rpc_addr = match config.advertise_rpc_addr.port() {
            0 => SocketAddr::new(config.advertise_rpc_addr.ip(), rpc.local_addr().port()),
            _ => config.advertise_rpc_addr,
        };
        cluster.borrow_mut().local = Some(ServerInfo {
            name: config.node_name.clone(),
            rpc_addr: advertise_rpc_addr.to_string(),
            alive: true,
            partition: partitions.own_id().to_string(),
        });

        let cluster_key = match &config.cluster_key_file {
            Some(path) => match std::fs::read(path) {
                Ok(key) => Some(key),
                Err(e) => {
                    rpc.stop_accepting();
                    return Err(AgentError::ClusterKey {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    });
                }
            },
            None => None,
        };
        let membership_config = MembershipConfig {
            node_name: config.node_name.clone(),
            bind_addr: config.gossip_addr,
            advertise_addr: gossip_advertise_addr(config.gossip_addr, advertise_rpc_addr),
            rpc_addr: advertise_rpc_addr,
            seeds: config.join.clone(),
            seed_names: config.join_names.clone(),
            cluster_key,
            partition: partitions.own_id().to_string(),
            ..MembershipConfig::default()
        };
        let membership = match MembershipActor::start_under(membership_config, parent) {
            Ok(membership) => membership,
            Err(source) => {
                rpc.stop_accepting();
                return Err(AgentError::Membership {
                    addr: config.gossip_addr,
                    source,
                });
            }
        };
        let gossip_addr = match membership.send(GetLocal).await {
            Ok(local) => local.gossip_addr,
            Err(_) => config.gossip_addr,
        };
        telemetry.watch_cluster(cluster.clone());
        // A node with no seeds but itself forms its own cluster: joined at once.
        if config.join_names.is_empty() && config.join.iter().all(|seed| *seed == gossip_addr) {
            telemetry.readiness().set_membership_joined(true);
        }
        let _ = replication.set(Replication {
            me: config.node_name.clone(),
            factor: config.replication_factor,
            partitions: partitions.clone(),
            connector: Rc::new(connector),
            metrics: telemetry.metrics().cloned(),
            in_sync,
            cluster: cluster.clone(),
        });
        agent.do_send(replicas::Reconcile);
        membership.do_send(Subscribe(agent.clone().recipient()));

        telemetry.readiness().set_started(true);
        Ok(Node {
            config,
            partitions,
            rpc,
            membership,
            gossip_addr,
            cluster,
            telemetry,
            http,
            in_flight,
            agent,
            failure: failed,
        })
    }
}

impl Node {
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Where the RPC server listens (the real port when 0 was asked).
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc.local_addr()
    }

    /// Where gossip is received (the real port when 0 was asked).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (the real port when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Metrics and readiness of this node.
    pub fn telemetry(&self) -> &Rc<Telemetry> {
        &self.telemetry
    }

    pub fn partitions(&self) -> &Rc<Partitions> {
        &self.partitions
    }

    pub fn cluster(&self) -> Rc<RefCell<ClusterView>> {
        self.cluster.clone()
    }

    /// The root actor (tests inject panics and escalations through it).
    pub fn agent(&self) -> &Addr<Agent> {
        &self.agent
    }

    /// The MembershipActor (tests inject panics through it).
    pub fn membership(&self) -> &Addr<MembershipActor> {
        &self.membership
    }

    /// The RPC front (tests inject panics through it).
    pub fn rpc(&self) -> &RpcServer {
        &self.rpc
    }

    /// The HTTP front (tests inject panics through it).
    pub fn http(&self) -> &HttpServer {
        &self.http
    }

    /// Completes when a failure escalated to the root, with its reason.
    pub fn failed(&self) -> impl Future<Output = String> + 'static {
        let mut failure = self.failure.clone();
        async move {
            match failure.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // The root is gone with its sender: never.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Serves until `stop` completes (a signal) or a failure escalates to
    /// the root, then shuts down gracefully. An escalation is reported as
    /// [`Stopped::Escalated`]: the caller exits with a non-zero status.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<Stopped, AgentError> {
        let stopped = tokio::select! {
            () = stop => Stopped::Requested,
            reason = self.failed() => Stopped::Escalated(reason),
        };
        match &stopped {
            Stopped::Requested => self.shutdown().await?,
            Stopped::Escalated(reason) => {
                tracing::error!(%reason, "shutting down after an escalated failure");
                // The failed child cannot close cleanly (its partition is
                // recovered at the next start): the failure is the report.
                if let Err(e) = self.shutdown().await {
                    tracing::error!(error = %e, "shutdown after the failure was not clean");
                }
            }
        }
        Ok(stopped)
    }

    /// Stops the node: not ready any more (`/readyz` answers 503 while
    /// `/healthz` still answers), no new connections, calls in progress
    /// finish (waiting at most [`SHUTDOWN_DRAIN`]), leave the cluster,
    /// then flush, sync and seal every partition (the next start needs no
    /// recovery); the HTTP server stops last.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let readiness = self.telemetry.readiness();
        readiness.set_stopping(true);
        self.rpc.stop_accepting();
        readiness.set_rpc_listening(false);
        // Let calls in progress finish (bounded), then leave and close.
        if tokio::time::timeout(SHUTDOWN_DRAIN, self.in_flight.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                calls = self.in_flight.count(),
                ?SHUTDOWN_DRAIN,
                "calls still in progress: closing anyway"
            );
        }
        match self.membership.send(Leave).await {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leaving the cluster failed"),
            Err(e) => tracing::warn!(error = %e, "membership actor gone"),
        }
        // Replicators stop writing before the partitions close.
        let _ = self.agent.send(replicas::StopReplication).await;
        let closed = self.partitions.close_all().await;
        readiness.set_partitions_open(false);
        closed?;
        tracing::info!("partitions closed");
        self.http.stop();
        Ok(())
    }
}
