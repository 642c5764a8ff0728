//! A client that follows the cluster instead of one node: it learns the
//! nodes from `getServers`, spreads produces over the live ones and moves
//! on when one fails, and follows a partition from any node that holds it,
//! resuming from the last offset received when that node fails mid-stream
//! (the book's client-side resolver and picker, in this model).
//!
//! Which failures are retried on another node: those that say the records
//! were **not** appended (a refused connection, `unavailable`, `diskFull`,
//! `readOnly`, `notEnoughReplicas`, ...). A failure that may have appended
//! them (`indeterminate`, `replicationTimeout`, a connection lost while the
//! call was in flight) is returned as is: retrying could duplicate.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::stream::Record;
use super::{Acks, Client, ClientError, ProducedBatch};

/// How long a follower waits before trying the next node.
const FOLLOW_RETRY: Duration = Duration::from_millis(100);
/// Produces learn the cluster again at most this often (and after a failure),
/// so a node that came back takes its share again.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How to reach a node's RPC address.
#[derive(Clone)]
pub enum Dial {
    Plain,
    /// Mutual TLS; the server name checked is the address's host.
    Tls(Arc<rustls::ClientConfig>),
}

/// A connection to the cluster (see the module documentation).
pub struct ClusterClient {
    inner: Rc<Inner>,
}

struct Inner {
    dial: Dial,
    acks: Acks,
    /// RPC addresses to try, the live ones first after a refresh.
    nodes: RefCell<Vec<String>>,
    /// The live leader of each partition, by partition id.
    leaders: RefCell<HashMap<String, String>>,
    clients: RefCell<HashMap<String, Rc<Client>>>,
    next: Cell<usize>,
    refreshed: Cell<std::time::Instant>,
}

impl ClusterClient {
    /// Connects through any of `seeds` (RPC addresses) and learns the rest.
    pub async fn connect(seeds: &[String], dial: Dial) -> Result<ClusterClient, ClientError> {
        let inner = Rc::new(Inner {
            dial,
            acks: Acks::Leader,
            nodes: RefCell::new(seeds.to_vec()),
            leaders: RefCell::default(),
            clients: RefCell::default(),
            next: Cell::new(0),
            refreshed: Cell::new(std::time::Instant::now()),
        });
        inner.refresh().await?;
        Ok(ClusterClient { inner })
    }

    /// Produces are answered per `acks` (see [`Client::with_acks`]).
    pub fn with_acks(self, acks: Acks) -> ClusterClient {
        let inner = Inner {
            dial: self.inner.dial.clone(),
            acks,
            nodes: RefCell::new(self.inner.nodes.borrow().clone()),
            leaders: RefCell::new(self.inner.leaders.borrow().clone()),
            clients: RefCell::default(),
            next: Cell::new(0),
            refreshed: Cell::new(std::time::Instant::now()),
        };
        ClusterClient {
            inner: Rc::new(inner),
        }
    }

    /// Learns the cluster again now (it also does every second while
    /// producing, and after a failure).
    pub async fn refresh(&self) -> Result<(), ClientError> {
        self.inner.refresh().await
    }

    /// The nodes known now (RPC addresses).
    pub fn nodes(&self) -> Vec<String> {
        self.inner.nodes.borrow().clone()
    }

    /// Appends `values` to the partition of one live node (taking the nodes
    /// in turn), moving on to the next while the failure says they were not
    /// appended.
    pub async fn produce_batch<V: AsRef<[u8]>>(
        &self,
        values: &[V],
    ) -> Result<ProducedBatch, ClientError> {
        let inner = &self.inner;
        if inner.refreshed.get().elapsed() >= REFRESH_INTERVAL {
            let _ = inner.refresh().await;
        }
        let mut last = None;
        for attempt in 0..2 * inner.count().max(1) {
            if attempt > 0 && attempt % inner.count().max(1) == 0 {
                let _ = inner.refresh().await;
            }
            let addr = inner.pick();
            let client = match inner.client(&addr).await {
                Ok(client) => client,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match client.produce_batch(values).await {
                Ok(batch) => return Ok(batch),
                Err(e) if !e.maybe_appended() => {
                    inner.forget(&addr);
                    last = Some(e);
                }
                Err(e) => {
                    inner.forget(&addr);
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no node to produce to".into())))
    }

    /// Follows `partition` from `offset` on, from any node that holds it:
    /// when that node fails, the stream goes on from another one at the
    /// offset after the last record received. Every record comes once, in
    /// order. Ends only when dropped (or on an error no node can get past,
    /// such as a permission denial).
    pub fn follow(
        &self,
        partition: &str,
        offset: u64,
    ) -> mpsc::Receiver<Result<Record, ClientError>> {
        let (tx, rx) = mpsc::channel(1024);
        let (inner, partition) = (self.inner.clone(), partition.to_string());
        tokio::task::spawn_local(async move {
            let mut next = offset;
            loop {
                // Its leader while it lives (a copy a node stopped pulling
                // would stall), else any node in turn.
                let leader = inner.leaders.borrow().get(&partition).cloned();
                let addr = leader.unwrap_or_else(|| inner.pick());
                if let Ok(client) = inner.client(&addr).await {
                    let mut stream = client.consume_stream(&partition, next);
                    loop {
                        match stream.next_batch().await {
                            Some(Ok(batch)) => {
                                for record in batch {
                                    // Never twice: a new node resumes at `next`.
                                    if record.offset < next {
                                        continue;
                                    }
                                    next = record.offset + 1;
                                    if tx.send(Ok(record)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Some(Err(e @ ClientError::PermissionDenied { .. })) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                            // This node failed or does not hold it: another one.
                            Some(Err(_)) | None => break,
                        }
                    }
                    inner.forget(&addr);
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(FOLLOW_RETRY).await;
                let _ = inner.refresh().await;
            }
        });
        rx
    }
}

impl Inner {
    fn count(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// The next node in turn.
    fn pick(&self) -> String {
        let nodes = self.nodes.borrow();
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        nodes[i % nodes.len().max(1)].clone()
    }

    async fn client(&self, addr: &str) -> Result<Rc<Client>, ClientError> {
        let cached = self.clients.borrow().get(addr).cloned();
        match cached {
            Some(c) if c.is_connected() => return Ok(c),
            Some(_) => self.forget(addr),
            None => {}
        }
        let client = match &self.dial {
            Dial::Plain => Client::connect(addr).await?,
            Dial::Tls(config) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Client::connect_tls(addr, host, config.clone()).await?
            }
        };
        let client = Rc::new(client.with_acks(self.acks));
        self.clients
            .borrow_mut()
            .insert(addr.to_string(), client.clone());
        Ok(client)
    }

    fn forget(&self, addr: &str) {
        self.clients.borrow_mut().remove(addr);
    }

    /// Asks any reachable node for the cluster; keeps the live nodes (the
    /// known ones stay as a fallback when none answers).
    async fn refresh(&self) -> Result<(), ClientError> {
        self.refreshed.set(std::time::Instant::now());
        let known = self.nodes.borrow().clone();
        let mut last = None;
        for addr in &known {
            let client = match self.client(addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match client.servers().await {
                Ok(servers) => {
                    let live_servers: Vec<_> = servers.into_iter().filter(|s| s.alive).collect();
                    *self.leaders.borrow_mut() = live_servers
                        .iter()
                        .map(|s| (s.partition.clone(), s.rpc_addr.clone()))
                        .collect();
                    let mut live: Vec<String> =
                        live_servers.into_iter().map(|s| s.rpc_addr).collect();
                    live.sort();
                    if !live.is_empty() {
                        *self.nodes.borrow_mut() = live;
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.forget(addr);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no node answered".into())))
    }
}
