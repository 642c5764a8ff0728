//! Criterion benchmarks of the storage core's segment (the unit each
//! SegmentActor drives), with the disk and memcpy measured in the same run as
//! references. `cargo bench --bench storage`. The whole engine (actors,
//! rolls, group commit) is measured by `benches/log_actors.rs`.

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use proglog::storage::{LogConfig, Segment, SyncPolicy};

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        sync,
        max_record_bytes: 64 << 10,
        max_store_bytes: 1 << 30,
        ..LogConfig::default()
    }
}

/// A segment taking appends; replaced by a fresh one when full (the bench
/// measures appends, not rolls).
struct Appender {
    dir: tempfile::TempDir,
    segment: Segment,
    config: LogConfig,
}

impl Appender {
    fn new(sync: SyncPolicy) -> Appender {
        let dir = tempfile::tempdir().unwrap();
        let config = config(sync);
        let segment = Segment::create(dir.path(), 0, &config).unwrap();
        Appender {
            dir,
            segment,
            config,
        }
    }

    fn append(&mut self, record: &[u8]) -> u64 {
        if !self.segment.fits(record.len()) {
            let next = self.segment.next();
            self.segment = Segment::create(self.dir.path(), next, &self.config).unwrap();
        }
        let offset = self.segment.append(record).unwrap();
        if self.config.sync == SyncPolicy::Always {
            self.segment.sync().unwrap();
        }
        offset
    }

    fn append_batch(&mut self, batch: &[Vec<u8>]) {
        for r in batch {
            self.append(r);
        }
        self.segment.flush().unwrap();
    }
}

/// Reference: buffered sequential write of 256 MiB in 1 MiB blocks, then one
/// fdatasync (what `dd bs=1M conv=fdatasync` measures).
fn reference_disk_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let block = vec![0xabu8; 1 << 20];
    let mut g = c.benchmark_group("reference");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Bytes(256 << 20));
    g.bench_function("disk_write_1MiB_blocks_fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.path().join(format!("dd-{i}"));
                let start = Instant::now();
                let mut f = std::fs::File::create(&path).unwrap();
                for _ in 0..256 {
                    f.write_all(&block).unwrap();
                }
                f.sync_data().unwrap();
                total += start.elapsed();
                drop(f);
                std::fs::remove_file(&path).unwrap();
            }
            total
        })
    });
    g.bench_function("disk_fdatasync_per_4KiB_write", |b| {
        let mut f = std::fs::File::create(dir.path().join("sync")).unwrap();
        let page = [1u8; 4096];
        b.iter(|| {
            f.write_all(&page).unwrap();
            f.sync_data().unwrap();
        })
    });
    let src = vec![7u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    g.throughput(Throughput::Bytes(64 << 20));
    g.bench_function("memcpy_64MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(8));
    for size in [256usize, 4096] {
        let record = vec![0x5au8; size];
        // Single appends, buffered; a flush every 64 records, as the LogActor
        // flushes once per burst of messages.
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("single_{size}B_sync_never"), |b| {
            let mut log = Appender::new(SyncPolicy::Never);
            let mut n = 0u64;
            b.iter(|| {
                black_box(log.append(&record));
                n += 1;
                if n.is_multiple_of(64) {
                    log.segment.flush().unwrap();
                }
            })
        });
        // Single appends each followed by its own flush (one write syscall each).
        g.bench_function(format!("single_flushed_{size}B_sync_never"), |b| {
            let mut log = Appender::new(SyncPolicy::Never);
            b.iter(|| {
                black_box(log.append(&record));
                log.segment.flush().unwrap();
            })
        });
        let batch_len = (256 << 10) / size;
        let batch: Vec<Vec<u8>> = (0..batch_len).map(|_| record.clone()).collect();
        g.throughput(Throughput::Bytes((size * batch_len) as u64));
        g.bench_function(format!("batch_{batch_len}x{size}B_sync_never"), |b| {
            let mut log = Appender::new(SyncPolicy::Never);
            b.iter(|| log.append_batch(&batch))
        });
    }
    let record = vec![0x5au8; 256];
    g.throughput(Throughput::Bytes(256));
    g.sample_size(20);
    g.bench_function("single_256B_sync_always", |b| {
        let mut log = Appender::new(SyncPolicy::Always);
        b.iter(|| black_box(log.append(&record)))
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    const N: u64 = 400_000;
    let mut appender = Appender::new(SyncPolicy::Never);
    let record = vec![0x33u8; 256];
    let batch: Vec<Vec<u8>> = (0..1000).map(|_| record.clone()).collect();
    for _ in 0..N / 1000 {
        appender.append_batch(&batch);
    }
    let log = &appender.segment;
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(8));
    // Sequential: 1 MiB batches from the start to the end of the log.
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.bench_function("sequential_256B_batches_of_1MiB", |b| {
        b.iter(|| {
            let mut from = 0;
            let mut n = 0;
            while from < N {
                let batch = log.read_batch(from, N, 1 << 20).unwrap();
                n += batch.len();
                from = batch.next_offset().unwrap();
            }
            assert_eq!(n as u64, N);
        })
    });
    g.throughput(Throughput::Elements(1));
    g.sample_size(100);
    let mut x = 0x9e3779b97f4a7c15u64;
    g.bench_function("random_256B", |b| {
        b.iter_batched(
            || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % N
            },
            |offset| black_box(log.read(offset).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The frame checksum every append computes and every read and replica
/// checks (CRC-32C over length, offset and record), against `crc-fast`
/// alone on the same records (what every size used before small records
/// got the `crc32` instruction) as the same run's reference.
fn checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for size in [64usize, 256, 512, 1024, 4096] {
        let record: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("frame_{size}B"), |b| {
            b.iter(|| {
                proglog::storage::frame::checksum(size as u32, 42, std::hint::black_box(&record))
            })
        });
        g.bench_function(format!("crc_fast_{size}B"), |b| {
            b.iter(|| {
                proglog::storage::frame::checksum_folded(
                    size as u32,
                    42,
                    std::hint::black_box(&record),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, reference_disk_write, appends, reads, checksums);
criterion_main!(benches);
