//! Throughput and latency of the log actors, next to the storage core in the
//! same run. `cargo bench --bench log_actors` (plain harness: it prints a
//! table of medians over several rounds).

use std::time::{Duration, Instant};

use actix::Addr;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proglog::log::{Append, InjectSegmentPanic, LogActor, Read, ReadBatch, Stats, wait_for};
use proglog::storage::{LogConfig, Segment, SyncPolicy, Values};
use proglog::supervision::Work;

const RECORD: usize = 256;
const ROUNDS: usize = 5;

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        sync,
        ..LogConfig::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Storage core: batches of 1024 x 256 B appended to segments directly
/// (a new segment when one is full), one flush per batch. Records/s.
fn core_batched(n_batches: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(SyncPolicy::Never);
    let mut segment = Segment::create(dir.path(), 0, &cfg).unwrap();
    let batch: Values = (0..1024).map(|_| vec![0x11; RECORD]).collect();
    let start = Instant::now();
    for _ in 0..n_batches {
        for r in batch.iter() {
            if !segment.fits(r.len()) {
                let next = segment.next();
                segment = Segment::create(dir.path(), next, &cfg).unwrap();
            }
            segment.append(r).unwrap();
        }
        segment.flush().unwrap();
    }
    (n_batches * 1024) as f64 / start.elapsed().as_secs_f64()
}

fn start_log(dir: &std::path::Path, sync: SyncPolicy) -> Addr<LogActor> {
    LogActor::open("bench", dir, config(sync)).unwrap().start()
}

/// LogActor: batches of 1024 x 256 B, 4 in flight. Records/s.
async fn actor_batched(n_batches: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let log = start_log(dir.path(), SyncPolicy::Never);
    let batch: Values = (0..1024).map(|_| vec![0x11; RECORD]).collect();
    let start = Instant::now();
    let mut inflight: FuturesUnordered<actix::dev::Request<LogActor, Append>> =
        FuturesUnordered::new();
    for _ in 0..n_batches {
        if inflight.len() >= 4 {
            inflight.next().await.unwrap().unwrap().unwrap();
        }
        inflight.push(log.send(Append::values(batch.clone())));
    }
    while let Some(r) = inflight.next().await {
        r.unwrap().unwrap();
    }
    (n_batches * 1024) as f64 / start.elapsed().as_secs_f64()
}

/// LogActor: single-record Append messages, `window` in flight. Records/s.
async fn actor_single(n: usize, window: usize, sync: SyncPolicy) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let log = start_log(dir.path(), sync);
    let record = vec![0x22u8; RECORD];
    let start = Instant::now();
    let mut inflight: FuturesUnordered<actix::dev::Request<LogActor, Append>> =
        FuturesUnordered::new();
    for _ in 0..n {
        if inflight.len() >= window {
            inflight.next().await.unwrap().unwrap().unwrap();
        }
        inflight.push(log.send(Append::one(record.clone())));
    }
    while let Some(r) = inflight.next().await {
        r.unwrap().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// LogActor: ReadBatch of 1 MiB over a prefilled log, start to end. Records/s.
async fn actor_stream(log: &Addr<LogActor>, n: u64) -> f64 {
    let start = Instant::now();
    let mut from = 0;
    let mut seen = 0u64;
    while from < n {
        let batch = log
            .send(ReadBatch {
                from,
                max_bytes: 1 << 20,
                max_records: u64::MAX,
            })
            .await
            .unwrap()
            .unwrap();
        seen += batch.len() as u64;
        from = batch.next_offset().unwrap();
    }
    assert_eq!(seen, n);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Wake-up latency: a reader waits at the end of the log; an append is sent;
/// time from sending the append to the reader's wake-up.
async fn wake_latency(samples: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let log = start_log(dir.path(), SyncPolicy::Never);
    let record = vec![0x33u8; RECORD];
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let waiter = wait_for(&log, i);
        let waiter = actix_rt::spawn(async move {
            waiter.await.unwrap();
            Instant::now()
        });
        actix_rt::task::yield_now().await;
        let sent = Instant::now();
        log.do_send(Append::one(record.clone()));
        let woke = waiter.await.unwrap();
        lat.push(woke - sent);
    }
    lat
}

/// Random single-record reads of the first 10,000 records of `log`, one at
/// a time, while `go()` holds; each read's latency. Yields between reads so
/// other tasks on the thread run.
async fn random_reads(log: &Addr<LogActor>, go: impl Fn() -> bool) -> Vec<Duration> {
    let mut lat = Vec::new();
    let mut x = 12345u64;
    while go() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let t = Instant::now();
        log.send(Read {
            offset: (x >> 33) % 10_000,
        })
        .await
        .unwrap()
        .unwrap();
        lat.push(t.elapsed());
        actix_rt::task::yield_now().await;
    }
    lat
}

/// Read latency of partition B, with or without partition A taking appends
/// under `sync=always` at the same time (W=16 in flight).
async fn read_latency_beside_fsyncing_partition(load: bool) -> (Vec<Duration>, f64) {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = start_log(dir_a.path(), SyncPolicy::Always);
    let b = start_log(dir_b.path(), SyncPolicy::Never);
    let batch: Vec<Vec<u8>> = (0..1000).map(|_| vec![0x44; RECORD]).collect();
    for _ in 0..10 {
        b.send(Append::batch(batch.clone())).await.unwrap().unwrap();
    }
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let writer = {
        let stop = stop.clone();
        let a = a.clone();
        actix_rt::spawn(async move {
            let mut n = 0u64;
            if !load {
                return n;
            }
            let mut inflight: FuturesUnordered<actix::dev::Request<LogActor, Append>> =
                FuturesUnordered::new();
            while !stop.get() {
                if inflight.len() >= 16 {
                    inflight.next().await.unwrap().unwrap().unwrap();
                    n += 1;
                }
                inflight.push(a.send(Append::one(vec![0x55; RECORD])));
            }
            n
        })
    };
    let start = Instant::now();
    let lat = random_reads(&b, || start.elapsed() < Duration::from_secs(2)).await;
    stop.set(true);
    let fsynced = writer.await.unwrap() as f64 / start.elapsed().as_secs_f64();
    (lat, fsynced)
}

/// Read latency of partition B while partition A recovers a 256 MiB
/// segment (its SegmentActor fails and reopens the active segment, whose
/// index must be rebuilt by scanning the store). Returns B's latencies
/// during the recovery and how long the recovery took.
async fn read_latency_beside_recovering_partition() -> (Vec<Duration>, Duration) {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let big = LogConfig {
        max_store_bytes: 512 << 20,
        max_index_bytes: 16 << 20,
        ..config(SyncPolicy::Never)
    };
    let a = LogActor::open("a", dir_a.path(), big).unwrap().start();
    let b = start_log(dir_b.path(), SyncPolicy::Never);
    let batch: Vec<Vec<u8>> = (0..1024).map(|_| vec![0x77; RECORD]).collect();
    for _ in 0..(256 << 20) / (1024 * (RECORD + 16)) {
        a.send(Append::batch(batch.clone())).await.unwrap().unwrap();
    }
    let small: Vec<Vec<u8>> = (0..1000).map(|_| vec![0x44; RECORD]).collect();
    for _ in 0..10 {
        b.send(Append::batch(small.clone())).await.unwrap().unwrap();
    }
    // Warm-up: the process's first panic pays a one-time cost (~130 ms
    // measured here, the panic machinery's first run, on whichever thread
    // panics); not what is measured here.
    let dir_c = tempfile::tempdir().unwrap();
    let c = start_log(dir_c.path(), SyncPolicy::Never);
    c.send(Append::one(vec![1])).await.unwrap().unwrap();
    c.send(InjectSegmentPanic(Work::Handler)).await.unwrap();
    while c.send(Stats).await.unwrap().restarts == 0 {
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    a.do_send(InjectSegmentPanic(Work::Handler));
    let done = std::rc::Rc::new(std::cell::Cell::new(None::<Duration>));
    let watcher = {
        let (a, done) = (a.clone(), done.clone());
        actix_rt::spawn(async move {
            // The restart is over when A serves a read of its active segment again.
            loop {
                if a.send(Read { offset: 1 }).await.unwrap().is_ok()
                    && a.send(Stats).await.unwrap().restarts == 1
                {
                    done.set(Some(started.elapsed()));
                    return;
                }
                actix_rt::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let lat = random_reads(&b, || done.get().is_none()).await;
    watcher.await.unwrap();
    (lat, done.get().unwrap_or_default())
}

fn main() {
    // `cargo test --benches` runs this with no `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sys = actix_rt::System::new();
    if std::env::var("PROGLOG_BENCH_ONLY").as_deref() == Ok("recovery") {
        sys.block_on(recovery_isolation());
        return;
    }
    sys.block_on(async {
        let mut core = Vec::new();
        let mut batched = Vec::new();
        let mut single = Vec::new();
        let mut single_always = Vec::new();
        let mut stream = Vec::new();
        for round in 0..ROUNDS {
            // Alternate the order: whichever runs second meets the first one's write-back.
            if round % 2 == 0 {
                core.push(core_batched(400));
                batched.push(actor_batched(400).await);
            } else {
                batched.push(actor_batched(400).await);
                core.push(core_batched(400));
            }
            single.push(actor_single(300_000, 256, SyncPolicy::Never).await);
            single_always.push(actor_single(20_000, 256, SyncPolicy::Always).await);
            let dir = tempfile::tempdir().unwrap();
            let log = start_log(dir.path(), SyncPolicy::Never);
            let batch: Vec<Vec<u8>> = (0..1024).map(|_| vec![0x66; RECORD]).collect();
            for _ in 0..400 {
                log.send(Append::batch(batch.clone())).await.unwrap().unwrap();
            }
            stream.push(actor_stream(&log, 400 * 1024).await);
            eprintln!("round {} done", round + 1);
        }
        let (core, batched) = (median(core), median(batched));
        println!("| workload (256 B records) | median of {ROUNDS} rounds |");
        println!("|---|---|");
        println!("| storage core, append_batch 1024 records (reference) | {:.2} M rec/s ({:.0} MB/s) |", core / 1e6, core * RECORD as f64 / 1e6);
        println!("| LogActor, Append of 1024 records, 4 in flight | {:.2} M rec/s ({:.0} MB/s) = {:.0} % of the core |", batched / 1e6, batched * RECORD as f64 / 1e6, 100.0 * batched / core);
        println!("| LogActor, single-record Append, 256 in flight, sync=never | {:.0} k msg/s |", median(single) / 1e3);
        println!("| LogActor, single-record Append, 256 in flight, sync=always | {:.1} k msg/s |", median(single_always) / 1e3);
        println!("| LogActor, ReadBatch 1 MiB, start to end | {:.2} M rec/s |", median(stream) / 1e6);

        let mut wake = wake_latency(20_000).await;
        println!("| wake-up of a waiting reader after an append, p50 / p99 | {:?} / {:?} |", percentile(&mut wake, 0.5), percentile(&mut wake, 0.99));

        let (mut idle, _) = read_latency_beside_fsyncing_partition(false).await;
        let (mut busy, rate) = read_latency_beside_fsyncing_partition(true).await;
        println!(
            "| Read on partition B, p50 / p99: alone | {:?} / {:?} |",
            percentile(&mut idle, 0.5),
            percentile(&mut idle, 0.99)
        );
        println!(
            "| Read on partition B, p50 / p99: while partition A appends with sync=always ({:.1} k acks/s) | {:?} / {:?} |",
            rate / 1e3,
            percentile(&mut busy, 0.5),
            percentile(&mut busy, 0.99)
        );
        recovery_isolation().await;
    });
}

/// Prints partition B's read latency while partition A recovers a 256 MiB
/// segment (`PROGLOG_BENCH_ONLY=recovery` runs only this).
async fn recovery_isolation() {
    let (mut during, recovery) = read_latency_beside_recovering_partition().await;
    let max = during.iter().max().copied().unwrap_or_default();
    println!(
        "| Read on partition B, p50 / p99 / max: while partition A recovers a 256 MiB segment ({:?}, {} reads) | {:?} / {:?} / {:?} |",
        recovery,
        during.len(),
        percentile(&mut during, 0.5),
        percentile(&mut during, 0.99),
        max
    );
}
