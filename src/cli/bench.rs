//! `proglog bench`: the load generator.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::client::ConnectArgs;
use super::{BoxError, outln};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Records to produce.
    #[arg(long, short = 'n', default_value_t = 200_000)]
    records: u64,
    /// Bytes per record.
    #[arg(long, short = 's', default_value_t = 256)]
    size: usize,
    /// Produce calls in flight (unacknowledged) at most.
    #[arg(long, short = 'w', default_value_t = 1)]
    window: usize,
    /// Records per produce call: 1 uses `produce`, more use `produceBatch`.
    #[arg(long, short = 'b', default_value_t = 1)]
    batch: usize,
    /// Only produce; do not consume the records back.
    #[arg(long, conflicts_with = "consume_only")]
    no_consume: bool,
    /// Only consume: stream `--records` records of the node's own
    /// partition from its lowest offset (loaded before, e.g. by a run with
    /// `--no-consume`).
    #[arg(long)]
    consume_only: bool,
    /// Process id of the server: its peak resident memory is reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// When produces are answered: `leader` or `all` (min-insync-replicas holders).
    #[arg(long, value_enum, default_value = "leader")]
    acks: super::client::AcksArg,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Progress on a terminal only; nothing when piped.
struct Progress {
    enabled: bool,
    last: Instant,
    phase: &'static str,
    total: u64,
    start: Instant,
}

impl Progress {
    fn new(phase: &'static str, total: u64) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            last: Instant::now(),
            phase,
            total,
            start: Instant::now(),
        }
    }

    fn update(&mut self, done: u64) {
        if self.enabled && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            let rate = done as f64 / self.start.elapsed().as_secs_f64();
            let width = 30usize;
            let filled = (done as usize * width / self.total.max(1) as usize).min(width);
            eprint!(
                "\r{:<8} [{}{}] {done}/{} {:.0} rec/s   ",
                self.phase,
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total,
                rate
            );
        }
    }

    fn finish(&self) {
        if self.enabled {
            eprint!("\r{}\r", " ".repeat(80));
        }
    }
}

pub fn run(args: BenchArgs) -> Result<(), BoxError> {
    if args.batch == 0 || args.window == 0 || args.records == 0 {
        return Err("--records, --window and --batch must be at least 1".into());
    }
    super::block_on(async move {
        let client = args.connect.connect().await?.with_acks(args.acks.acks());
        let mut first_offset = None;
        if !args.consume_only {
            first_offset = produce(&client, &args).await?;
        } else if let Some(own) = client.partitions().await?.into_iter().find(|p| p.is_leader) {
            first_offset = Some(own.lowest_offset);
        }

        if !args.no_consume {
            let from = first_offset.unwrap_or(0);
            let mut progress = Progress::new("consume", args.records);
            let start = Instant::now();
            let mut stream = client.consume_stream("", from);
            let mut seen = 0u64;
            while seen < args.records {
                match stream.next().await {
                    Some(r) => {
                        r?;
                        seen += 1;
                        if seen.is_multiple_of(4096) {
                            progress.update(seen);
                        }
                    }
                    None => return Err("the stream ended early".into()),
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            progress.finish();
            let rate = seen as f64 / elapsed;
            outln!(
                "{}",
                serde_json::json!({
                    "phase": "consume_stream", "records": seen, "size": args.size, "seconds": elapsed,
                    "records_per_s": rate.round(), "mb_per_s": (rate * args.size as f64 / 1e6 * 10.0).round() / 10.0,
                })
            );
        }
        if let Some(pid) = args.server_pid {
            match super::memory_kib(&pid.to_string()) {
                Some((now, peak)) => outln!(
                    "{}",
                    serde_json::json!({ "phase": "server_memory", "pid": pid, "peak_rss_kib": peak, "rss_kib": now })
                ),
                None => eprintln!("proglog bench: cannot read /proc/{pid}/status"),
            }
        }
        Ok(())
    })
}

/// The produce phase: `args.records` records, `args.window` calls in
/// flight; prints its line and answers the first offset produced.
async fn produce(
    client: &proglog::client::Client,
    args: &BenchArgs,
) -> Result<Option<u64>, BoxError> {
    let value = vec![0x5au8; args.size];
    let calls = args.records.div_ceil(args.batch as u64);
    let mut latencies: Vec<Duration> = Vec::with_capacity(calls as usize);
    let mut progress = Progress::new("produce", args.records);
    let start = Instant::now();
    let mut first_offset = None;
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut inflight = FuturesUnordered::new();
    while acked < args.records {
        while inflight.len() < args.window && sent < args.records {
            let n = (args.records - sent).min(args.batch as u64) as usize;
            sent += n as u64;
            let client = &client;
            let value = &value;
            inflight.push(async move {
                let t = Instant::now();
                let first = if n == 1 {
                    client.produce(value).await?.offset
                } else {
                    let values: Vec<&[u8]> = (0..n).map(|_| value.as_slice()).collect();
                    client.produce_batch(&values).await?.offsets.start
                };
                Ok::<_, proglog::client::ClientError>((first, n as u64, t.elapsed()))
            });
        }
        let Some(done) = inflight.next().await else {
            break;
        };
        let (first, n, latency) = done?;
        first_offset = Some(first_offset.map_or(first, |f: u64| f.min(first)));
        latencies.push(latency);
        acked += n;
        progress.update(acked);
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish();
    latencies.sort();
    let rate = args.records as f64 / elapsed;
    outln!(
        "{}",
        serde_json::json!({
            "phase": "produce", "records": args.records, "size": args.size, "window": args.window, "batch": args.batch, "acks": format!("{:?}", args.acks).to_lowercase(),
            "seconds": elapsed, "records_per_s": rate.round(), "mb_per_s": (rate * args.size as f64 / 1e6 * 10.0).round() / 10.0,
            "p50_us": percentile(&latencies, 0.50).round(), "p99_us": percentile(&latencies, 0.99).round(),
        })
    );
    Ok(first_offset)
}
