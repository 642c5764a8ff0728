//! `proglog produce`, `consume`, `servers`, `partitions`.

use std::io::Write;
use std::path::PathBuf;

use futures::StreamExt;
use proglog::client::{Client, ProducerConfig};
use tokio::io::AsyncBufReadExt;

use super::BoxError;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// RPC address of the node to talk to.
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
    pub async fn connect(&self) -> Result<Client, BoxError> {
        let failed = |e: &dyn std::fmt::Display| -> BoxError {
            format!("cannot connect to {}: {e}", self.addr).into()
        };
        if self.insecure {
            return Client::connect(self.addr.as_str())
                .await
                .map_err(|e| failed(&e));
        }
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
                "no client certificate at {}: pass --tls-ca/--tls-cert/--tls-key, --data-dir of a node that made development certificates, or --insecure",
                cert.display()
            )
            .into());
        }
        let config = proglog::auth::tls::client_config(&ca, &cert, &key)?;
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        let server_name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        Client::connect_tls(self.addr.as_str(), &server_name, config)
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
    #[arg(long, short = 'f')]
    follow: bool,
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

/// Awaits one record's acknowledgement.
async fn ack_result(
    ack: impl std::future::Future<Output = Result<u64, proglog::client::ClientError>>,
) -> Result<u64, BoxError> {
    Ok(ack.await?)
}

pub fn consume(args: ConsumeArgs) -> Result<(), BoxError> {
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
        let mut stream = client.consume_stream(&partition.id, from);
        while let Some(record) = stream.next().await {
            let record = record?;
            match args.format {
                Format::Raw => {
                    out.write_all(&record.value)?;
                    out.write_all(b"\n")?;
                }
                Format::Json => {
                    let line = match std::str::from_utf8(&record.value) {
                        Ok(s) => serde_json::json!({ "offset": record.offset, "value": s }),
                        Err(_) => {
                            serde_json::json!({ "offset": record.offset, "value_hex": hex(&record.value) })
                        }
                    };
                    writeln!(out, "{line}")?;
                }
            }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn servers(args: ConnectArgs) -> Result<(), BoxError> {
    super::block_on(async move {
        let client = args.connect().await?;
        println!(
            "{:<24} {:<22} {:<6} {:<6} PARTITION",
            "NAME", "RPC ADDRESS", "ALIVE", "LOCAL"
        );
        for s in client.servers().await? {
            println!(
                "{:<24} {:<22} {:<6} {:<6} {}",
                s.id, s.rpc_addr, s.alive, s.is_local, s.partition
            );
        }
        Ok(())
    })
}

pub fn partitions(args: ConnectArgs) -> Result<(), BoxError> {
    super::block_on(async move {
        let client = args.connect().await?;
        println!(
            "{:<40} {:<20} {:>12} {:>12} ROLE",
            "PARTITION", "OWNER", "LOWEST", "NEXT"
        );
        for p in client.partitions().await? {
            let role = match (p.is_leader, p.following) {
                (true, _) => "leader",
                (false, true) => "replica",
                (false, false) => "replica (not pulled)",
            };
            println!(
                "{:<40} {:<20} {:>12} {:>12} {role}",
                p.id, p.owner, p.lowest_offset, p.next_offset
            );
        }
        Ok(())
    })
}
