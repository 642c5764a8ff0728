//! The race's load generator: the same workload through a client per
//! system (proglog's own client library, async-nats JetStream, redis
//! Streams), one JSON line per run.
//!
//! - `produce`: `--records` single-record appends, `--window` in flight,
//!   each answered once durable under the system's settings (proglog's
//!   answer, a JetStream publish ack, an `XADD` reply). proglog's go
//!   through its client's batching producer with a zero linger, as an
//!   application would send single records with Kafka's producer: records
//!   sent in the same turn share a call (`--proglog-calls`: one `produce`
//!   call per record instead).
//! - `consume`: reads back `--records` records from the start, one request
//!   at a time: `--window 1` reads one record per request (proglog
//!   `consume`, JetStream direct get, `XRANGE ... COUNT 1`), `--window W`
//!   reads ranges of up to W records per request (proglog `consumeBatch`,
//!   a JetStream pull-consumer batch, `XRANGE ... COUNT W`).

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

type BoxError = Box<dyn std::error::Error>;

/// jemalloc for every system's client, as the node uses it: with glibc
/// malloc, each large reply (64 records of 4 KiB) took fresh heap pages
/// (page faults 8 % and zeroing in the client's profile), a cost of the
/// allocator, not of any client.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Proglog,
    Nats,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    Produce,
    Consume,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    system: System,
    #[arg(long, value_enum)]
    op: Op,
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Produce: requests in flight. Consume: records per request.
    #[arg(long, default_value_t = 1)]
    window: usize,
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// proglog over mutual TLS with the development certificates in this
    /// directory (ca.pem, root.pem, root.key).
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
    /// proglog: one `produce` call per record instead of the batching producer.
    #[arg(long)]
    proglog_calls: bool,
    /// proglog: the client's longest polling window after a request, in
    /// microseconds (0: off) [default: the client library's].
    #[arg(long)]
    proglog_busy_poll_us: Option<u64>,
    /// A label carried into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

/// What every system's client does.
trait Target {
    async fn produce_one(&self, value: &[u8]) -> Result<(), BoxError>;
    /// Reads from the cursor on, up to `max` records; answers how many.
    async fn read(&mut self, max: usize) -> Result<usize, BoxError>;
}

struct Proglog {
    client: proglog::client::Client,
    /// `None`: one `produce` call per record.
    producer: Option<proglog::client::Producer>,
    next: u64,
}

impl Target for Proglog {
    async fn produce_one(&self, value: &[u8]) -> Result<(), BoxError> {
        match &self.producer {
            Some(producer) => {
                producer.send(value.to_vec()).await?;
            }
            None => {
                self.client.produce(value).await?;
            }
        }
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<usize, BoxError> {
        let n = if max == 1 {
            let r = self.client.consume("", self.next).await?;
            std::hint::black_box(&r.value);
            1
        } else {
            // The values stay in the reply: each is handed to `black_box`
            // where it lies, as the other systems' replies are.
            let records = self
                .client
                .consume_batch("", self.next, max as u32, 0)
                .await?;
            for (_, value) in records.iter() {
                std::hint::black_box(value);
            }
            records.len()
        };
        self.next += n as u64;
        Ok(n)
    }
}

struct Nats {
    js: async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Stream,
    consumer: Option<async_nats::jetstream::consumer::PullConsumer>,
    next: u64,
}

const NATS_STREAM: &str = "race";

impl Target for Nats {
    async fn produce_one(&self, value: &[u8]) -> Result<(), BoxError> {
        let ack = self
            .js
            .publish(NATS_STREAM, bytes::Bytes::copy_from_slice(value))
            .await?;
        ack.await?;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<usize, BoxError> {
        if max == 1 {
            let m = self.stream.direct_get(self.next + 1).await?;
            std::hint::black_box(&m.payload);
            self.next += 1;
            return Ok(1);
        }
        let consumer = match &self.consumer {
            Some(c) => c,
            None => {
                use async_nats::jetstream::consumer::{AckPolicy, pull};
                let c = self
                    .stream
                    .create_consumer(pull::Config {
                        ack_policy: AckPolicy::None,
                        ..Default::default()
                    })
                    .await?;
                self.consumer.insert(c)
            }
        };
        let mut batch = consumer
            .batch()
            .max_messages(max)
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        let mut n = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| e.to_string())?;
            std::hint::black_box(&m.payload);
            n += 1;
        }
        self.next += n as u64;
        Ok(n)
    }
}

struct Redis {
    con: redis::aio::MultiplexedConnection,
    /// The last id read (exclusive start of the next range).
    last: String,
}

const REDIS_KEY: &str = "race";

impl Target for Redis {
    async fn produce_one(&self, value: &[u8]) -> Result<(), BoxError> {
        let mut con = self.con.clone();
        let _: String = redis::cmd("XADD")
            .arg(REDIS_KEY)
            .arg("*")
            .arg("v")
            .arg(value)
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<usize, BoxError> {
        let start = if self.last.is_empty() {
            "-".to_string()
        } else {
            format!("({}", self.last)
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(REDIS_KEY)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.con)
            .await?;
        if let Some(last) = reply.ids.last() {
            self.last = last.id.clone();
        }
        std::hint::black_box(&reply);
        Ok(reply.ids.len())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

async fn produce(target: &impl Target, args: &Args) -> Result<Vec<Duration>, BoxError> {
    let value = vec![0x5au8; args.size];
    let mut latencies = Vec::with_capacity(args.records as usize);
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0;
    while (latencies.len() as u64) < args.records {
        while inflight.len() < args.window && sent < args.records {
            sent += 1;
            let value = &value;
            inflight.push(async move {
                let t = Instant::now();
                target.produce_one(value).await.map(|()| t.elapsed())
            });
        }
        match inflight.next().await {
            Some(latency) => latencies.push(latency?),
            None => break,
        }
    }
    Ok(latencies)
}

async fn consume(target: &mut impl Target, args: &Args) -> Result<Vec<Duration>, BoxError> {
    let mut latencies = Vec::new();
    let mut seen = 0u64;
    while seen < args.records {
        let want = (args.records - seen).min(args.window as u64) as usize;
        let t = Instant::now();
        let n = target.read(want).await?;
        latencies.push(t.elapsed());
        if n == 0 {
            return Err(format!("the log ended after {seen} of {} records", args.records).into());
        }
        seen += n as u64;
    }
    Ok(latencies)
}

async fn run(args: &Args) -> Result<(f64, Vec<Duration>), BoxError> {
    let start;
    let latencies = match args.system {
        System::Proglog => {
            let mut options = proglog::client::ClientOptions::default();
            if let Some(us) = args.proglog_busy_poll_us {
                options.busy_poll = Duration::from_micros(us);
            }
            let host = args.addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            let tls = match &args.tls_dir {
                None => None,
                Some(dir) => Some((
                    host,
                    proglog::auth::tls::client_config(
                        &dir.join("ca.pem"),
                        &dir.join("root.pem"),
                        &dir.join("root.key"),
                    )?,
                )),
            };
            let client =
                proglog::client::Client::connect_with(args.addr.as_str(), tls, options).await?;
            let producer = (!args.proglog_calls).then(|| {
                client.producer(proglog::client::ProducerConfig {
                    linger: Duration::ZERO,
                    ..Default::default()
                })
            });
            let mut target = Proglog {
                client,
                producer,
                next: 0,
            };
            start = Instant::now();
            match args.op {
                Op::Produce => produce(&target, args).await?,
                Op::Consume => consume(&mut target, args).await?,
            }
        }
        System::Nats => {
            let client = async_nats::connect(&args.addr).await?;
            let js = async_nats::jetstream::new(client);
            let stream = js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: NATS_STREAM.to_string(),
                    subjects: vec![NATS_STREAM.to_string()],
                    allow_direct: true,
                    ..Default::default()
                })
                .await?;
            let mut target = Nats {
                js,
                stream,
                consumer: None,
                next: 0,
            };
            start = Instant::now();
            match args.op {
                Op::Produce => produce(&target, args).await?,
                Op::Consume => consume(&mut target, args).await?,
            }
        }
        System::Redis => {
            let client = redis::Client::open(format!("redis://{}/", args.addr))?;
            let con = client.get_multiplexed_async_connection().await?;
            let mut target = Redis {
                con,
                last: String::new(),
            };
            start = Instant::now();
            match args.op {
                Op::Produce => produce(&target, args).await?,
                Op::Consume => consume(&mut target, args).await?,
            }
        }
    };
    Ok((start.elapsed().as_secs_f64(), latencies))
}

/// CPU time of this process so far (user and system, every thread): what
/// the client cost, for clients that trade CPU for latency (proglog's polls
/// for an answer for a moment after a request).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ: 100 on Linux (sysconf(_SC_CLK_TCK) everywhere it runs).
    Some(ticks / 100.0)
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let (seconds, mut latencies) = local.block_on(&runtime, run(&args))?;
    latencies.sort();
    let rate = args.records as f64 / seconds;
    let line = serde_json::json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "op": format!("{:?}", args.op).to_lowercase(),
        "size": args.size, "window": args.window, "records": args.records,
        "label": args.label,
        "seconds": seconds, "rate": rate.round(),
        "p50_us": percentile(&latencies, 0.50).round(),
        "p99_us": percentile(&latencies, 0.99).round(),
        "client_cpu_seconds": cpu_seconds(),
    });
    println!("{line}");
    Ok(())
}
