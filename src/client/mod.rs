//! The Rust client library: connect to a node, produce, consume, follow a
//! partition as an async `Stream`, list servers and partitions.
//!
//! Like capnp-rpc itself the client is `!Send`: use it from a
//! `tokio::task::LocalSet` or an actix System (which is one).
//!
//! ```no_run
//! # async fn demo() -> Result<(), proglog::client::ClientError> {
//! use futures::StreamExt;
//! let client = proglog::client::Client::connect("127.0.0.1:8400").await?;
//! let produced = client.produce(b"hello").await?;
//! let record = client.consume("", produced.offset).await?;
//! let mut stream = client.consume_stream("", 0);
//! while let Some(record) = stream.next().await {
//!     let record = record?;
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # Ok(()) }
//! ```

mod batch;
mod cluster;
mod error;
mod producer;
mod stream;

pub use batch::ConsumedBatch;
pub use cluster::{ClusterClient, Dial};

use std::ops::Range;
use std::time::Duration;

use capnp_rpc::RpcSystem;
use capnp_rpc::rpc_twoparty_capnp::Side;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::ToSocketAddrs;

pub use error::ClientError;
pub use producer::{Producer, ProducerConfig};
pub use stream::{FrameStream, Record, RecordStream, ReplicaBatch};

use crate::wire::busy_poll::BusyPoll;
use crate::wire::framed::ReceiveLimits;
use crate::wire::schema::{log, produced};
use crate::wire::transport::{WriteGathering, vat_network};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest message accepted from the server. Default: 64 MiB.
    pub max_message_bytes: usize,
    /// Flow-control window of streams the client pushes (produce streams).
    /// Default: 4 MiB.
    pub stream_window_bytes: usize,
    /// The longest the client polls its socket (non-blocking) after a
    /// request before sleeping, so an answer that comes soon is read without
    /// a wake-up, as the node does after a reply (`--busy-poll-us`; the
    /// window adapts to the waits seen, up to this): on these VMs single
    /// calls about twice as fast, for client CPU. Default: 200 µs; zero: off.
    pub busy_poll: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_message_bytes: 64 << 20,
            stream_window_bytes: 4 << 20,
            busy_poll: Duration::from_micros(200),
        }
    }
}

/// Where a produced record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub partition: String,
    pub offset: u64,
}

/// Where a produced batch went: consecutive offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedBatch {
    pub partition: String,
    pub offsets: Range<u64>,
}

/// A node as `servers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub rpc_addr: String,
    pub alive: bool,
    pub partition: String,
    pub is_local: bool,
}

/// A partition as `partitions` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub id: String,
    pub owner: String,
    pub lowest_offset: u64,
    pub next_offset: u64,
    pub is_leader: bool,
    /// A replica the node keeps in step now (false: a copy it no longer
    /// pulls, or the leader's own).
    pub following: bool,
    /// A replica's records behind its leader, as last seen (0 for the leader).
    pub lag: u64,
}

/// A connection to one node.
pub struct Client {
    log: log::Client,
    rpc: tokio::task::JoinHandle<()>,
    /// When produces are answered (see [`Client::with_acks`]).
    acks: Acks,
}

/// When a produce is answered: `Leader` (default) once the leader has
/// committed it, `All` once `min-insync-replicas` holders have.
pub use crate::wire::schema::Acks;

impl Drop for Client {
    fn drop(&mut self) {
        self.rpc.abort();
    }
}

/// A schema text as a `String` (invalid UTF-8 is an error).
fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, ClientError> {
    Ok(crate::wire::text(t)?)
}

fn read_produced(r: produced::Reader<'_>) -> Result<ProducedBatch, ClientError> {
    match r.which()? {
        produced::Which::Ok(ok) => {
            let first = ok.get_first_offset();
            Ok(ProducedBatch {
                partition: text(ok.get_partition())?,
                offsets: first..first + ok.get_count() as u64,
            })
        }
        produced::Which::Error(e) => Err(ClientError::from_wire(e?)?),
    }
}

impl Client {
    /// Connects over plain TCP.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_with(addr, None, ClientOptions::default()).await
    }

    /// Connects over plain TCP, or with mutual TLS given `tls` (the server's
    /// name and the client's configuration, as for
    /// [`connect_tls`](Self::connect_tls)), with `options`.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        tls: Option<(&str, std::sync::Arc<rustls::ClientConfig>)>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let tcp = crate::wire::socket::dial(addr).await?;
        let Some((server_name, config)) = tls else {
            return Ok(Client::over(tcp, options));
        };
        let tls = tls_handshake(tcp, server_name, config).await?;
        Ok(Client::over_gathering(
            tls,
            WriteGathering::ByStream,
            options,
        ))
    }

    /// Connects to the cluster through any of `seeds` (RPC addresses): a
    /// [`ClusterClient`] that produces to live nodes and follows partitions
    /// across a node's death.
    pub async fn connect_cluster(
        seeds: &[String],
        dial: Dial,
    ) -> Result<ClusterClient, ClientError> {
        ClusterClient::connect(seeds, dial).await
    }

    /// Connects with mutual TLS 1.3: `config` holds the CA to trust and this
    /// client's certificate, and must allow secret extraction (as
    /// `auth::tls::client_config` makes it: the connection's records are
    /// sealed by [`crate::wire::tls`]); `server_name` must match the
    /// server's certificate.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        Client::connect_with(addr, Some((server_name, config)), ClientOptions::default()).await
    }

    /// Speaks the protocol over an established stream (e.g. a TLS one).
    /// Must be called inside a `LocalSet`.
    pub fn over<S>(stream: S, options: ClientOptions) -> Client
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        Client::over_gathering(stream, WriteGathering::Buffered, options)
    }

    /// [`Client::over`], with the stream's writes gathered as `gathering`
    /// says.
    fn over_gathering<S>(stream: S, gathering: WriteGathering, options: ClientOptions) -> Client
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let network = vat_network(
            stream,
            gathering,
            Side::Client,
            ReceiveLimits::new(options.max_message_bytes).trusting_the_sender(),
            options.stream_window_bytes,
            None,
            BusyPoll::start(options.busy_poll),
        );
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let log: log::Client = rpc.bootstrap(Side::Server);
        let rpc = tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
        Client {
            log,
            rpc,
            acks: Acks::Leader,
        }
    }

    /// Whether the connection is still up (its RPC task has not ended): a
    /// call on a closed one fails without reaching any server.
    pub fn is_connected(&self) -> bool {
        !self.rpc.is_finished()
    }

    /// Produces through this client are answered per `acks`. With
    /// [`Acks::All`] a produce fails at once with `NotEnoughReplicas` (not
    /// appended) when too few holders are live, and with
    /// `ReplicationTimeout` (appended on the leader, maybe not replicated:
    /// resending may duplicate) when they do not confirm in time.
    pub fn with_acks(mut self, acks: Acks) -> Client {
        self.acks = acks;
        self
    }

    /// Appends one record to the node's own partition.
    pub async fn produce(&self, value: &[u8]) -> Result<Produced, ClientError> {
        let mut request = self.log.produce_request();
        request.get().set_value(value);
        request.get().set_acks(self.acks);
        let response = request.send().promise.await?;
        let batch = read_produced(response.get()?.get_result()?)?;
        Ok(Produced {
            partition: batch.partition,
            offset: batch.offsets.start,
        })
    }

    /// Appends records in one call; they get consecutive offsets.
    pub async fn produce_batch<V: AsRef<[u8]>>(
        &self,
        values: &[V],
    ) -> Result<ProducedBatch, ClientError> {
        let mut request = self.log.produce_batch_request();
        request.get().set_acks(self.acks);
        {
            let mut list = request.get().init_values(values.len() as u32);
            for (i, v) in values.iter().enumerate() {
                list.set(i as u32, v.as_ref());
            }
        }
        let response = request.send().promise.await?;
        read_produced(response.get()?.get_result()?)
    }

    /// Appends batches through a flow-controlled produce stream: at most the
    /// stream window is in flight. Returns each batch's outcome, in order.
    /// Past the server's limit of writes per stream it goes on in a new
    /// stream, unless a batch failed: as within one stream, the batches
    /// after a failed one are not appended (`Unavailable`).
    pub async fn produce_stream<B, V>(
        &self,
        batches: B,
    ) -> Result<Vec<Result<ProducedBatch, ClientError>>, ClientError>
    where
        B: IntoIterator,
        B::Item: AsRef<[V]>,
        V: AsRef<[u8]>,
    {
        let mut batches = batches.into_iter().peekable();
        let mut outcomes = Vec::new();
        // One stream per MAX_WRITES_PER_PRODUCE_STREAM writes (the server's limit).
        while batches.peek().is_some() {
            let mut request = self.log.produce_stream_request();
            request.get().set_acks(self.acks);
            let sink = request.send().promise.await?.get()?.get_sink()?;
            for batch in batches
                .by_ref()
                .take(crate::wire::MAX_WRITES_PER_PRODUCE_STREAM)
            {
                let batch = batch.as_ref();
                let mut request = sink.write_request();
                {
                    let mut list = request.get().init_values(batch.len() as u32);
                    for (i, v) in batch.iter().enumerate() {
                        list.set(i as u32, v.as_ref());
                    }
                }
                request.send().await?;
            }
            let response = sink.finish_request().send().promise.await?;
            let list = response.get()?.get_results()?;
            outcomes.extend(list.iter().map(read_produced));
            if outcomes.iter().any(Result::is_err) {
                outcomes.extend(batches.by_ref().map(|_| {
                    Err(ClientError::Unavailable(
                        "not sent: an earlier batch of this produce stream failed".into(),
                    ))
                }));
            }
        }
        Ok(outcomes)
    }

    /// A producer that batches records automatically (see [`ProducerConfig`]).
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.log.clone(), self.acks, config)
    }

    /// Reads the record at `offset` of `partition` (`""`: the node's own),
    /// with the offset the server sent.
    pub async fn consume(&self, partition: &str, offset: u64) -> Result<Record, ClientError> {
        let mut request = self.log.consume_request();
        request.get().set_partition(partition);
        request.get().set_offset(offset);
        let response = request.send().promise.await?;
        use crate::wire::schema::consumed::Which;
        match response.get()?.get_result()?.which()? {
            Which::Record(r) => {
                let r = r?;
                Ok(Record {
                    offset: r.get_offset(),
                    value: r.get_value()?.to_vec(),
                })
            }
            Which::Error(e) => Err(ClientError::from_wire(e?)?),
        }
    }

    /// Reads up to `max_records` consecutive records of `partition` from
    /// `offset` in one call (at most about `max_bytes` of them, 0: the
    /// server's default; at least one when `offset` holds one). Empty at
    /// the end of the log; fewer than asked at the end of a segment.
    pub async fn consume_batch(
        &self,
        partition: &str,
        offset: u64,
        max_records: u32,
        max_bytes: u32,
    ) -> Result<ConsumedBatch, ClientError> {
        let mut request = self.log.consume_batch_request();
        {
            let mut p = request.get();
            p.set_partition(partition);
            p.set_offset(offset);
            p.set_max_records(max_records);
            p.set_max_bytes(max_bytes);
        }
        ConsumedBatch::from_reply(request.send().promise.await?)
    }

    /// Follows `partition` from `offset` on: records as they are appended,
    /// forever, until the stream is dropped or fails.
    pub fn consume_stream(&self, partition: &str, offset: u64) -> RecordStream {
        RecordStream::open(&self.log, partition, offset, 0)
    }

    /// Replicates `partition` (the server's own) from `offset` on: as
    /// [`Client::consume_stream`], each record checked against the CRC-32C
    /// the server computed. Authorized as `replicate`.
    pub fn replicate(&self, partition: &str, offset: u64) -> FrameStream {
        FrameStream::open(&self.log, partition, offset)
    }

    /// Tells the leader that `node`'s replica of `partition` has committed
    /// every record below `committed` (replicators do, for `acks=all`).
    /// Sent at once; the answer is not awaited.
    pub fn report_replicated(&self, partition: &str, node: &str, committed: u64) {
        let mut request = self.log.replicated_request();
        {
            let mut p = request.get();
            p.set_partition(partition);
            p.set_node(node);
            p.set_committed(committed);
        }
        let answer = request.send().promise;
        tokio::task::spawn_local(async move {
            if let Err(e) = answer.await {
                tracing::debug!(error = %e, "position report failed");
            }
        });
    }

    /// The cluster's nodes as this node sees them.
    pub async fn servers(&self) -> Result<Vec<Server>, ClientError> {
        let response = self.log.get_servers_request().send().promise.await?;
        let response = response.get()?;
        if response.has_error() {
            return Err(ClientError::from_wire(response.get_error()?)?);
        }
        let mut out = Vec::new();
        for s in response.get_servers()?.iter() {
            out.push(Server {
                id: text(s.get_id())?,
                rpc_addr: text(s.get_rpc_addr())?,
                alive: s.get_alive(),
                partition: text(s.get_partition())?,
                is_local: s.get_is_local(),
            });
        }
        Ok(out)
    }

    /// The partitions this node holds.
    pub async fn partitions(&self) -> Result<Vec<PartitionInfo>, ClientError> {
        let response = self.log.list_partitions_request().send().promise.await?;
        let response = response.get()?;
        if response.has_error() {
            return Err(ClientError::from_wire(response.get_error()?)?);
        }
        let mut out = Vec::new();
        for p in response.get_partitions()?.iter() {
            out.push(PartitionInfo {
                id: text(p.get_id())?,
                owner: text(p.get_owner())?,
                lowest_offset: p.get_lowest_offset(),
                next_offset: p.get_next_offset(),
                is_leader: p.get_is_leader(),
                following: p.get_following(),
                lag: p.get_lag(),
            });
        }
        Ok(out)
    }
}

/// The client's side of a TLS 1.3 handshake over `tcp`; `server_name` must
/// match the server's certificate, and `config` must allow secret
/// extraction (as `auth::tls::client_config` does): the connection's
/// records are sealed and opened by [`crate::wire::tls::RecordStream`].
pub(crate) async fn tls_handshake(
    tcp: tokio::net::TcpStream,
    server_name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<crate::wire::tls::RecordStream<tokio::net::TcpStream>, ClientError> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| ClientError::Tls(format!("bad server name {server_name:?}: {e}")))?;
    crate::wire::tls::connect(tcp, name, config)
        .await
        .map_err(|e| ClientError::Tls(format!("handshake with {server_name}: {e}")))
}
