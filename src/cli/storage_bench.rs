//! `proglog storage-bench`: the partition engine (LogActor, SegmentActors,
//! storage core) end to end on a real disk, against a same-run disk reference.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proglog::log::{Append, Close, LogActor, ReadBatch, Stats};
use proglog::storage::{LogConfig, SyncPolicy, Values};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write the test log in (a fresh sub-directory is used and removed).
    #[arg(long, default_value = "./proglog-bench")]
    dir: PathBuf,
    /// Size of the log to write, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
    /// Keep the log directory afterwards.
    #[arg(long)]
    keep: bool,
}

use super::{BoxError, outln};

/// Resident and peak resident memory of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    super::memory_kib("self").unwrap_or((0, 0))
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn step(name: &str) {
    eprint!("{name}... ");
    let _ = std::io::stderr().flush();
}

pub fn run(args: Args) -> Result<(), BoxError> {
    if args.record_bytes == 0 {
        return Err("--record-bytes must be at least 1".into());
    }
    let root = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let total = args.size_mib << 20;

    step("reference: buffered 1 MiB writes + fdatasync");
    let block = vec![0xa5u8; 1 << 20];
    let start = Instant::now();
    {
        let mut f = std::fs::File::create(root.join("reference"))?;
        for _ in 0..args.size_mib {
            f.write_all(&block)?;
        }
        f.sync_data()?;
    }
    let reference = mb_per_s(total, start.elapsed());
    std::fs::remove_file(root.join("reference"))?;
    eprintln!("{reference:.0} MB/s");

    let config = LogConfig {
        sync: SyncPolicy::Never,
        ..LogConfig::default()
    };
    let log_dir = root.join("log");
    let record = vec![0x5au8; args.record_bytes];
    let per_batch = ((256 << 10) / args.record_bytes).max(1);
    let batch: Values = (0..per_batch).map(|_| &record).collect();

    // Everything below drives the node's own engine: a LogActor and its
    // SegmentActors, as `proglog serve` runs them.
    step("batched appends through the LogActor (sync=never), then close");
    let (append, records, segments) = super::block_on(async {
        let log = LogActor::open("bench", &log_dir, config.clone())?.start();
        let start = Instant::now();
        let mut written = 0u64;
        while written < total {
            log.send(Append::values(batch.clone())).await??;
            written += (per_batch * args.record_bytes) as u64;
        }
        let append_time = start.elapsed();
        let stats = log.send(Stats).await?;
        log.send(Close).await??;
        Ok::<_, BoxError>((
            mb_per_s(written, append_time),
            stats.next_offset,
            stats.segments,
        ))
    })?;
    eprintln!("{append:.0} MB/s, {records} records in {segments} segments");

    step("reopen after clean close");
    let start = Instant::now();
    let log = LogActor::open("bench", &log_dir, config.clone())?;
    let reopen_clean = start.elapsed();
    let scanned = log.open_report().recovered_segments;
    eprintln!(
        "{:.2} ms (segments scanned: {scanned})",
        reopen_clean.as_secs_f64() * 1e3
    );

    step("sequential read of the whole log");
    let (rss_before, _) = memory_kib();
    let (read_rate, rss_max) = super::block_on(async {
        let log = log.start();
        let stats = log.send(Stats).await?;
        let start = Instant::now();
        let mut from = stats.lowest_offset;
        let mut read = 0u64;
        let mut rss_max = rss_before;
        while from < stats.next_offset {
            let batch = log
                .send(ReadBatch {
                    from,
                    max_bytes: 1 << 20,
                    max_records: u64::MAX,
                })
                .await??;
            read += batch.len() as u64;
            from = batch.next_offset().unwrap_or(from);
            if read % (1 << 16) < batch.len() as u64 {
                rss_max = rss_max.max(memory_kib().0);
            }
        }
        let read_time = start.elapsed();
        // A crash: half a segment more is appended (it reaches the kernel)
        // and the System stops without closing the partition, as a killed
        // process would; the next open rebuilds the active segment's index.
        let target = config.max_store_bytes / 2;
        let mut added = 0u64;
        while added < target {
            log.send(Append::values(batch.clone())).await??;
            added += (per_batch * (args.record_bytes + 16)) as u64;
        }
        Ok::<_, BoxError>((read as f64 / read_time.as_secs_f64(), rss_max))
    })?;
    let (rss_after, hwm) = memory_kib();
    eprintln!(
        "{:.2} M records/s; RSS {} KiB before, {} KiB max during, {} KiB peak of process",
        read_rate / 1e6,
        rss_before,
        rss_max.max(rss_after),
        hwm
    );

    step("reopen after a crash (active segment not sealed)");
    let start = Instant::now();
    let log = LogActor::open("bench", &log_dir, config)?;
    let reopen_crash = start.elapsed();
    let report = log.open_report().clone();
    eprintln!(
        "{:.2} ms (segments scanned: {}, truncated bytes: {})",
        reopen_crash.as_secs_f64() * 1e3,
        report.recovered_segments,
        report.truncated_bytes
    );
    drop(log);

    outln!(
        "{{\"size_mib\":{},\"record_bytes\":{},\"reference_write_mb_s\":{reference:.1},\"append_batched_mb_s\":{append:.1},\"append_vs_reference\":{:.2},\"segments\":{segments},\"reopen_clean_ms\":{:.3},\"sequential_read_records_s\":{read_rate:.0},\"rss_kib_before_read\":{rss_before},\"rss_kib_max_during_read\":{},\"reopen_after_crash_ms\":{:.3},\"crash_segments_scanned\":{}}}",
        args.size_mib,
        args.record_bytes,
        append / reference,
        reopen_clean.as_secs_f64() * 1e3,
        rss_max.max(rss_after),
        reopen_crash.as_secs_f64() * 1e3,
        report.recovered_segments
    );
    if !args.keep {
        std::fs::remove_dir_all(&root)?;
    }
    Ok(())
}
