//! The Agent: the root of the node. Boots the actors in order (HTTP
//! telemetry, partitions, membership, RPC), wires them, and tears them down.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use actix::prelude::*;

use crate::cluster::{ClusterView, ServerInfo};
use crate::config::{ConfigError, NodeConfig};
use crate::log::{LogError, Partitions};
use crate::membership::{
    GetLocal, Leave, MembershipActor, MembershipConfig, MembershipError, MembershipEvent, Subscribe,
};
use crate::rpc::{Acceptor, PlainAcceptor, RpcConfig, RpcServer, ServiceContext};
use crate::storage::StorageError;
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

/// A running node.
pub struct Agent {
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
}

/// Keeps the RPC front's view of the cluster in step with membership, and
/// marks the node joined (for `/readyz`) once it sees a peer.
struct ClusterWatcher {
    view: Rc<RefCell<ClusterView>>,
    telemetry: Rc<Telemetry>,
}

impl Actor for ClusterWatcher {
    type Context = Context<Self>;
}

impl Handler<MembershipEvent> for ClusterWatcher {
    type Result = ();

    fn handle(&mut self, event: MembershipEvent, _ctx: &mut Context<Self>) {
        if matches!(&event, MembershipEvent::Snapshot(m) if !m.is_empty())
            || matches!(event, MembershipEvent::PeerUp { .. })
        {
            self.telemetry.readiness().set_membership_joined(true);
        }
        let mut view = self.view.borrow_mut();
        match event {
            MembershipEvent::Snapshot(members) => {
                view.peers = members
                    .into_iter()
                    .map(|m| ServerInfo {
                        name: m.name,
                        rpc_addr: m.rpc_addr.to_string(),
                        alive: true,
                        partition: String::new(),
                    })
                    .collect();
            }
            MembershipEvent::PeerUp { name, rpc_addr, .. } => {
                view.peers.retain(|p| p.name != name);
                view.peers.push(ServerInfo {
                    name,
                    rpc_addr: rpc_addr.to_string(),
                    alive: true,
                    partition: String::new(),
                });
            }
            MembershipEvent::PeerDown { name, reason } => {
                tracing::info!(peer = %name, ?reason, "peer down");
                for p in view.peers.iter_mut().filter(|p| p.name == name) {
                    p.alive = false;
                }
            }
        }
    }
}

impl Agent {
    /// Starts a node. Must run inside an actix System. RPC is mutual TLS
    /// with casbin authorization, or plain TCP with `insecure` (warned about).
    pub async fn start(config: NodeConfig) -> Result<Agent, AgentError> {
        if config.insecure {
            tracing::warn!(
                "--insecure: RPC is plain TCP without authentication or authorization; anyone who reaches the port can read and write"
            );
            return Self::start_with(config, PlainAcceptor, None).await;
        }
        let tls = match &config.tls {
            Some(files) => files.clone(),
            None => {
                let host = config.advertise_rpc_addr.ip().to_string();
                let dev = crate::auth::certs::ensure_dev_material(&config.data_dir, &[host])?;
                tracing::warn!(
                    dir = %dev.dir.display(),
                    created = dev.created,
                    "no TLS configured: using development certificates (clients find root.pem/root.key with --data-dir {})",
                    config.data_dir.display()
                );
                crate::config::TlsFiles {
                    ca: dev.ca,
                    cert: dev.server_cert,
                    key: dev.server_key,
                }
            }
        };
        let server = crate::auth::tls::server_config(&tls.ca, &tls.cert, &tls.key)?;
        let acl = crate::auth::acl::Acl::load(&config.acl_model, &config.acl_policy).await?;
        Self::start_with(
            config,
            crate::auth::tls::TlsAcceptor::new(server),
            Some(Rc::new(acl)),
        )
        .await
    }

    /// Starts a node whose RPC connections go through `acceptor`, checked by
    /// `authorizer` (`None`: every call allowed).
    pub async fn start_with<A: Acceptor>(
        config: NodeConfig,
        acceptor: A,
        authorizer: Option<Rc<dyn crate::rpc::Authorizer>>,
    ) -> Result<Agent, AgentError> {
        let log_config = config.log_config()?;
        // First, so probes are answered (not ready) while the rest starts.
        let telemetry = Telemetry::new(!config.no_metrics);
        let http = HttpServer::start(config.http_addr, telemetry.clone())
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
            Partitions::open_observed(&config.data_dir, &config.node_name, log_config, fsync)
                .map_err(storage_error)?,
        );
        tracing::info!(node = %config.node_name, partition = %partitions.own_id(), data_dir = %config.data_dir.display(), "partitions open");
        telemetry.watch_partitions(partitions.clone());
        telemetry.readiness().set_partitions_open(true);

        // The RPC listener binds first, so the address gossiped to peers is
        // the real one even when port 0 was asked for.
        let cluster = Rc::new(RefCell::new(ClusterView::default()));
        let in_flight = Rc::new(crate::rpc::InFlight::default());
        let ctx = Rc::new(ServiceContext {
            partitions: partitions.clone(),
            in_flight: in_flight.clone(),
            cluster: cluster.clone(),
            authorizer,
            max_record_bytes: config.max_record_bytes,
            max_stream_batch_bytes: 256 << 10,
        });
        let rpc_config = RpcConfig {
            listen: config.rpc_addr,
            max_connections: config.max_connections,
            max_message_bytes: config.max_message_bytes,
            ..RpcConfig::default()
        };
        let rpc =
            RpcServer::start_instrumented(rpc_config, ctx, acceptor, telemetry.metrics().cloned())
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
            rpc_addr: advertise_rpc_addr,
            seeds: config.join.clone(),
            cluster_key,
            ..MembershipConfig::default()
        };
        let membership = match MembershipActor::start(membership_config) {
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
        if config.join.iter().all(|seed| *seed == gossip_addr) {
            telemetry.readiness().set_membership_joined(true);
        }
        let watcher = ClusterWatcher {
            view: cluster.clone(),
            telemetry: telemetry.clone(),
        }
        .start();
        membership.do_send(Subscribe(watcher.recipient()));

        telemetry.readiness().set_started(true);
        Ok(Agent {
            config,
            partitions,
            rpc,
            membership,
            gossip_addr,
            cluster,
            telemetry,
            http,
            in_flight,
        })
    }

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
        let closed = self.partitions.close_all().await;
        readiness.set_partitions_open(false);
        closed?;
        tracing::info!("partitions closed");
        self.http.stop();
        Ok(())
    }
}
