//! `proglog produce`, `consume`, `servers`, `partitions`.

use std::io::Write;
use std::path::PathBuf;

use futures::StreamExt;
use proglog::client::{Client, ClusterClient, Dial, ProducerConfig};
use tokio::io::AsyncBufReadExt;

use super::{BoxError, outln};

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// RPC address of the node to talk to; several, comma-separated, make
    /// `produce` and `consume --follow` follow the cluster (failing over
    /// between its nodes).
    #[arg(long, env = "PROGLOG_ADDR", default_value = "127.0.0.1:8400")]
    pub addr: String,
    /// Connect over plain TCP (only to a node started with --insecure).
    #[arg(long, env = "PROGLOG_INSECURE")]
    pub insecure: bool,
    /// CA certificate to trust [default: <data-dir>/tls/ca.pem].
    #[arg(long, env = "PROGLOG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate; its CN is who you are [default: <data-dir>/tls/root.pem].
    #[arg(long, env = "PROGLOG_CLIENT_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key [default: <data-dir>/tls/root.key].
    #[arg(long, env = "PROGLOG_CLIENT_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Data directory of a node started without TLS settings: its
    /// development certificates are used by default.
    #[arg(long, env = "PROGLOG_DATA_DIR", default_value = "proglog-data")]
    pub data_dir: PathBuf,
    /// Where development certificates are found [default: <data-dir>/tls].
    #[arg(long, env = "PROGLOG_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Name the server certificate must carry [default: the host of --addr].
    #[arg(long)]
    pub server_name: Option<String>,
}

impl ConnectArgs {
    /// The seeds when `--addr` names several nodes.
    pub fn seeds(&self) -> Option<Vec<String>> {
        self.addr
            .contains(',')
            .then(|| self.addr.split(',').map(|a| a.trim().to_string()).collect())
    }

    /// A cluster client through the `--addr` seeds.
    pub async fn connect_cluster(&self, seeds: &[String]) -> Result<ClusterClient, BoxError> {
        Client::connect_cluster(seeds, self.dial()?)
            .await
            .map_err(|e| format!("cannot reach the cluster through {}: {e}", self.addr).into())
    }

    /// The CA, certificate and key files a TLS client presents.
    fn tls_files(&self) -> Result<(PathBuf, PathBuf, PathBuf), BoxError> {
        let tls = self
            .tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"));
        let ca = self.tls_ca.clone().unwrap_or_else(|| tls.join("ca.pem"));
        let cert = self
            .tls_cert
            .clone()
            .unwrap_or_else(|| tls.join("root.pem"));
        let key = self.tls_key.clone().unwrap_or_else(|| tls.join("root.key"));
        if !cert.exists() && self.tls_cert.is_none() {
            return Err(format!(
                "no client certificate at {}: pass --tls-ca/--tls-cert/--tls-key, --tls-dir or --data-dir of a node that made development certificates, or --insecure",
                cert.display()
            )
            .into());
        }
        Ok((ca, cert, key))
    }

    pub async fn connect(&self) -> Result<Client, BoxError> {
        self.connect_to(&self.addr).await
    }

    /// How to reach a node: plain TCP with `--insecure`, else mutual TLS.
    pub fn dial(&self) -> Result<Dial, BoxError> {
        if self.insecure {
            return Ok(Dial::Plain);
        }
        let (ca, cert, key) = self.tls_files()?;
        Ok(Dial::Tls(proglog::auth::tls::client_config(
            &ca, &cert, &key,
        )?))
    }

    /// A connection to the node at `addr` (the certificate must name its
    /// host, or `--server-name`).
    pub async fn connect_to(&self, addr: &str) -> Result<Client, BoxError> {
        let failed = |e: &dyn std::fmt::Display| -> BoxError {
            format!("cannot connect to {addr}: {e}").into()
        };
        let config = match self.dial()? {
            Dial::Plain => return Client::connect(addr).await.map_err(|e| failed(&e)),
            Dial::Tls(config) => config,
        };
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(['[', ']']);
        let server_name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        Client::connect_tls(addr, &server_name, config)
            .await
            .map_err(|e| failed(&e))
    }
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Values to append, one record each. Without any, each line of standard
    /// input is one record (batched automatically).
    values: Vec<String>,
    /// Print each result as a JSON line ({"partition":..,"offset":..}) instead of the bare offset.
    #[arg(long)]
    json: bool,
    /// When the node answers: `leader` once it has committed the records,
    /// `all` once min-insync-replicas holders have.
    #[arg(long, value_enum, default_value = "leader")]
    acks: AcksArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    Leader,
    All,
}

impl AcksArg {
    pub fn acks(self) -> proglog::client::Acks {
        match self {
            AcksArg::Leader => proglog::client::Acks::Leader,
            AcksArg::All => proglog::client::Acks::All,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The record's bytes, then a newline.
    Raw,
    /// {"offset":N,"value":"..."}; values that are not UTF-8 come as "value_hex".
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Partition to read; empty means the node's own.
    #[arg(long, default_value = "")]
    partition: String,
    /// First offset to read [default: the partition's lowest].
    #[arg(long)]
    from: Option<u64>,
    /// Keep following the partition: print records as they are appended.
    #[arg(long, short = 'f', conflicts_with = "count")]
    follow: bool,
    /// Print at most this many records (read with `consumeBatch`, a range
    /// per call) and stop, at the end of the log at the latest.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
}

fn print_produced(
    out: &mut impl Write,
    json: bool,
    partition: &str,
    offset: u64,
) -> std::io::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "partition": partition, "offset": offset })
        )
    } else {
        writeln!(out, "{offset}")
    }
}

pub fn produce(args: ProduceArgs) -> Result<(), BoxError> {
    if let Some(seeds) = args.connect.seeds() {
        return super::block_on(produce_to_cluster(args, seeds));
    }
    super::block_on(async move {
        let client = args.connect.connect().await?.with_acks(args.acks.acks());
        if !args.values.is_empty() {
            let batch = client.produce_batch(&args.values).await?;
            let mut out = std::io::stdout().lock();
            for offset in batch.offsets {
                print_produced(&mut out, args.json, &batch.partition, offset)?;
            }
            return Ok(());
        }
        let partition = client
            .partitions()
            .await?
            .into_iter()
            .find(|p| p.is_leader)
            .map(|p| p.id)
            .unwrap_or_default();
        let producer = client.producer(ProducerConfig::default());
        // Acknowledgements are printed in order as they arrive, while stdin is
        // still being read: a line typed by hand is sent after the linger.
        let (acks_tx, mut acks) = tokio::sync::mpsc::channel(1 << 16);
        let json = args.json;
        let printer = tokio::task::spawn_local(async move {
            while let Some(ack) = acks.recv().await {
                let offset = ack_result(ack).await?;
                let mut out = std::io::stdout().lock();
                print_produced(&mut out, json, &partition, offset)?;
                out.flush()?;
            }
            Ok::<(), BoxError>(())
        });
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            if acks_tx
                .send(producer.send(line.into_bytes()))
                .await
                .is_err()
            {
                break; // the printer stopped on an error; it is reported below
            }
        }
        drop(acks_tx);
        producer.flush_batch();
        printer
            .await
            .map_err(|e| -> BoxError { e.to_string().into() })??;
        Ok(())
    })
}

/// Most lines sent in one batch by `produce` to a cluster.
const CLUSTER_BATCH: usize = 1000;

/// `produce` with several `--addr`: each batch goes to a live node, failing
/// over while the error says it was not appended. Stdin lines are batched
/// (up to 1000, or whatever arrived within 1 ms).
async fn produce_to_cluster(args: ProduceArgs, seeds: Vec<String>) -> Result<(), BoxError> {
    let cluster = args
        .connect
        .connect_cluster(&seeds)
        .await?
        .with_acks(args.acks.acks());
    let send = |batch: Vec<String>| {
        let cluster = &cluster;
        async move {
            let produced = cluster.produce_batch(&batch).await?;
            let mut out = std::io::stdout().lock();
            for offset in produced.offsets {
                print_produced(&mut out, args.json, &produced.partition, offset)?;
            }
            out.flush()?;
            Ok::<(), BoxError>(())
        }
    };
    if !args.values.is_empty() {
        return send(args.values.clone()).await;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut batch = Vec::new();
    loop {
        let wait = if batch.is_empty() {
            std::time::Duration::from_secs(3600 * 24 * 365)
        } else {
            std::time::Duration::from_millis(1)
        };
        match tokio::time::timeout(wait, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                batch.push(line);
                if batch.len() < CLUSTER_BATCH {
                    continue;
                }
            }
            Ok(Ok(None)) => {
                if !batch.is_empty() {
                    send(std::mem::take(&mut batch)).await?;
                }
                return Ok(());
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {}
        }
        send(std::mem::take(&mut batch)).await?;
    }
}

/// Awaits one record's acknowledgement.
async fn ack_result(
    ack: impl std::future::Future<Output = Result<u64, proglog::client::ClientError>>,
) -> Result<u64, BoxError> {
    Ok(ack.await?)
}

pub fn consume(args: ConsumeArgs) -> Result<(), BoxError> {
    if let Some(seeds) = args.connect.seeds() {
        return super::block_on(follow_in_cluster(args, seeds));
    }
    super::block_on(async move {
        let client = args.connect.connect().await?;
        let info = client.partitions().await?;
        let wanted = if args.partition.is_empty() {
            info.iter().find(|p| p.is_leader)
        } else {
            info.iter().find(|p| p.id == args.partition)
        };
        let Some(partition) = wanted else {
            return Err(format!("unknown partition {:?}", args.partition).into());
        };
        let from = args.from.unwrap_or(partition.lowest_offset);
        let end = partition.next_offset;
        if !args.follow && from >= end {
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        if let Some(count) = args.count {
            let mut next = from;
            let mut left = count;
            while left > 0 {
                let want = left.min(u64::from(u32::MAX)) as u32;
                let records = client.consume_batch(&partition.id, next, want, 0).await?;
                let Some(after) = records.next_offset() else {
                    break;
                };
                next = after;
                left -= records.len() as u64;
                for (offset, value) in records.iter() {
                    write_record(&mut out, args.format, offset, value)?;
                }
            }
            out.flush()?;
            return Ok(());
        }
        let mut stream = client.consume_stream(&partition.id, from);
        while let Some(record) = stream.next().await {
            let record = record?;
            write_record(&mut out, args.format, record.offset, &record.value)?;
            if args.follow {
                out.flush()?;
            } else if record.offset + 1 >= end {
                break;
            }
        }
        out.flush()?;
        Ok(())
    })
}

/// `consume --follow --partition P` with several `--addr`: follows P from
/// its leader or any holder, resuming after the last record printed when
/// that node fails.
async fn follow_in_cluster(args: ConsumeArgs, seeds: Vec<String>) -> Result<(), BoxError> {
    if !args.follow || args.partition.is_empty() {
        return Err("with several --addr, consume needs --follow and --partition".into());
    }
    let cluster = args.connect.connect_cluster(&seeds).await?;
    let mut records = cluster.follow(&args.partition, args.from.unwrap_or(0));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(record) = records.recv().await {
        let record = record?;
        write_record(&mut out, args.format, record.offset, &record.value)?;
        out.flush()?;
    }
    Ok(())
}

fn write_record(
    out: &mut impl Write,
    format: Format,
    offset: u64,
    value: &[u8],
) -> std::io::Result<()> {
    match format {
        Format::Raw => {
            out.write_all(value)?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let line = match std::str::from_utf8(value) {
                Ok(s) => serde_json::json!({ "offset": offset, "value": s }),
                Err(_) => serde_json::json!({ "offset": offset, "value_hex": hex(value) }),
            };
            writeln!(out, "{line}")
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn servers(args: ConnectArgs) -> Result<(), BoxError> {
    super::block_on(async move {
        let client = args.connect().await?;
        outln!(
            "{:<24} {:<22} {:<6} {:<6} PARTITION",
            "NAME",
            "RPC ADDRESS",
            "ALIVE",
            "LOCAL"
        );
        for s in client.servers().await? {
            outln!(
                "{:<24} {:<22} {:<6} {:<6} {}",
                s.id,
                s.rpc_addr,
                s.alive,
                s.is_local,
                s.partition
            );
        }
        Ok(())
    })
}

pub fn partitions(args: ConnectArgs) -> Result<(), BoxError> {
    super::block_on(async move {
        let client = args.connect().await?;
        outln!(
            "{:<40} {:<20} {:>12} {:>12} {:>10} ROLE",
            "PARTITION",
            "OWNER",
            "LOWEST",
            "NEXT",
            "LAG"
        );
        for p in client.partitions().await? {
            let role = match (p.is_leader, p.following) {
                (true, _) => "leader",
                (false, true) => "replica",
                (false, false) => "replica (not pulled)",
            };
            outln!(
                "{:<40} {:<20} {:>12} {:>12} {:>10} {role}",
                p.id,
                p.owner,
                p.lowest_offset,
                p.next_offset,
                p.lag
            );
        }
        Ok(())
    })
}
