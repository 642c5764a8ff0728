//! Log settings, records and a synchronous handle on the node's partition
//! engine (LogActor + SegmentActors), shared by the storage tests.
#![allow(dead_code)]

use std::ops::Range;
use std::path::Path;

use actix::Addr;
use proglog::log::{
    Append, ApplyRetention, Close, InjectSegmentPanic, LogActor, LogError, LogStats, Read,
    ReadBatch, Stats, Truncate,
};
use proglog::storage::frame::{FILE_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{LogConfig, OpenReport, RecordBatch, StorageError, SyncPolicy};
use proglog::supervision::{InjectPanic, Work};

/// Small segments (16 KiB, 200 entries) so tests roll them.
pub fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        max_store_bytes: 16 << 10,
        max_index_bytes: (FILE_HEADER_LEN + 200 * INDEX_ENTRY_LEN) as u64,
        max_record_bytes: 1024,
        sync,
        min_free_bytes: 0,
        ..LogConfig::default()
    }
}

/// The record stored at `offset`: its length and bytes depend on the offset,
/// so a record read back at the wrong place is caught.
pub fn record_for(offset: u64) -> Vec<u8> {
    let len = 1 + (offset.wrapping_mul(7919) % 300) as usize;
    (0..len).map(|i| (offset as usize * 31 + i) as u8).collect()
}

/// A partition served by the same actors `proglog serve` runs, driven
/// synchronously: every call runs the actix System until it is answered.
/// Dropping it without [`Partition::close`] is a crash of the process: the
/// actors go away without sealing anything.
pub struct Partition {
    // Dropped before the System that runs it.
    log: Addr<LogActor>,
    system: actix_rt::SystemRunner,
    report: OpenReport,
    read_only: Option<String>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("report", &self.report)
            .finish()
    }
}

impl Partition {
    pub fn open(dir: &Path, config: LogConfig) -> Result<Partition, StorageError> {
        let system = actix_rt::System::new();
        let actor = open_retrying_lock(dir, config)?;
        let report = actor.open_report().clone();
        let read_only = actor.read_only_reason().map(str::to_string);
        let log = system.block_on(async move { actor.start() });
        Ok(Partition {
            log,
            system,
            report,
            read_only,
        })
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Why the partition opened read-only, if it did.
    pub fn read_only_at_open(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    pub fn append(&self, record: &[u8]) -> Result<u64, LogError> {
        self.append_batch(&[record]).map(|r| r.start)
    }

    pub fn append_batch<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Range<u64>, LogError> {
        let records = records.iter().map(|r| r.as_ref().to_vec()).collect();
        let log = self.log.clone();
        self.system
            .block_on(async move { log.send(Append::batch(records)).await.unwrap() })
    }

    pub fn read(&self, offset: u64) -> Result<Vec<u8>, LogError> {
        let log = self.log.clone();
        self.system
            .block_on(async move { log.send(Read { offset }).await.unwrap() })
    }

    pub fn read_batch(&self, from: u64, max_bytes: usize) -> Result<RecordBatch, LogError> {
        let log = self.log.clone();
        self.system.block_on(async move {
            log.send(ReadBatch {
                from,
                max_bytes,
                max_records: u64::MAX,
            })
            .await
            .unwrap()
        })
    }

    pub fn stats(&self) -> LogStats {
        let log = self.log.clone();
        self.system
            .block_on(async move { log.send(Stats).await.unwrap() })
    }

    pub fn next_offset(&self) -> u64 {
        self.stats().next_offset
    }

    pub fn lowest_offset(&self) -> u64 {
        self.stats().lowest_offset
    }

    pub fn segment_count(&self) -> usize {
        self.stats().segments
    }

    pub fn truncate(&self, lowest: u64) -> Result<usize, LogError> {
        let log = self.log.clone();
        let n = self
            .system
            .block_on(async move { log.send(Truncate { lowest }).await.unwrap() });
        self.settle();
        n
    }

    pub fn apply_retention(&self) -> Result<usize, LogError> {
        let log = self.log.clone();
        let n = self
            .system
            .block_on(async move { log.send(ApplyRetention).await.unwrap() });
        self.settle();
        n
    }

    /// Lets messages sent with `do_send` (segment removal) be handled.
    fn settle(&self) {
        self.system.block_on(async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
    }

    /// Lets the partition's timers run for `ms` (interval syncs, checkpoints).
    pub fn idle(&self, ms: u64) {
        self.system.block_on(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        });
    }

    /// Waits (at most 10 s) until the partition's stats satisfy `done`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&LogStats) -> bool) -> LogStats {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {what}: {stats:?}"
            );
            self.idle(1);
        }
    }

    /// Whether the LogActor spent its restart budget and escalated: it is
    /// gone (with no parent, nothing restarts it; a node would stop).
    pub fn escalated(&self) -> bool {
        let log = self.log.clone();
        self.system
            .block_on(async move { log.send(Stats).await.is_err() })
    }

    /// Makes the active SegmentActor panic and waits until its supervisor
    /// has restarted it or escalated to the LogActor (an escalation is
    /// then handled before any later call).
    pub fn inject_segment_fault(&self) {
        let log = self.log.clone();
        self.system.block_on(async move {
            // An error: the LogActor itself is gone (escalated earlier).
            let _ = log.send(InjectSegmentPanic(Work::Handler)).await;
        });
        self.settle();
    }

    /// Makes the LogActor panic (its supervisor reopens the partition).
    pub fn inject_log_fault(&self) {
        self.log.do_send(InjectPanic(Work::Handler));
        self.settle();
    }

    /// Flushes, syncs and seals everything: the next open scans nothing.
    pub fn close(self) -> Result<(), LogError> {
        let log = self.log.clone();
        self.system
            .block_on(async move { log.send(Close).await.unwrap() })
    }

    /// Stops as a killed process would: nothing is sealed.
    pub fn crash(self) {
        drop(self);
    }

    pub fn assert_all_records_intact(&self) {
        for offset in self.lowest_offset()..self.next_offset() {
            assert_eq!(
                self.read(offset).unwrap(),
                record_for(offset),
                "record {offset}"
            );
        }
    }
}

/// Opens the partition; a `Locked` error is retried for up to a second. A
/// test elsewhere in this process that spawns a program forks it with a
/// copy of every open descriptor until its exec closes them, the lock's
/// descriptor included: for that instant the directory still looks locked
/// after the previous partition was dropped.
fn open_retrying_lock(dir: &Path, config: LogConfig) -> Result<LogActor, StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match LogActor::open("p", dir, config.clone()) {
            Err(StorageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// True for a storage corruption error.
pub fn is_corruption(e: &LogError) -> bool {
    matches!(e, LogError::Storage(s) if s.is_corruption())
}
