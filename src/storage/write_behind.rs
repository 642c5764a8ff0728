//! Write-behind for a replica catching up: its store's pages are written
//! back as they are appended and dropped from the page cache once on disk,
//! keeping [`KEEP_CACHED`] behind the end.
//!
//! Why: a replica far behind copies a whole partition (gigabytes) that no
//! one reads yet. Left to the page cache, the copy fills memory with cold
//! pages, evicting the node's hot ones, and every page it writes is a page
//! the kernel must find first: on these VMs, whose balloon hands freed
//! memory back to the host, a page never touched before costs a host fault,
//! and a 1 GiB buffered write ran at 0.23-0.6 GB/s into such memory against
//! 1.6-2.0 GB/s with write-behind, which writes into the pages it freed
//! (BENCHMARKS.md, Replication). PostgreSQL's `*_flush_after` settings do
//! the same with the same call.
//!
//! Durability is untouched: this starts writeback early and drops only
//! clean pages; the store's `fdatasync` under its sync policy is still what
//! makes records durable. The calls go through a second open of the file,
//! whose own error cursor may consume a writeback error: the store's handle
//! keeps its cursor, so its next `fdatasync` still reports that error.
//!
//! The waiting (for writeback of the range to drop) runs on a thread of its
//! own, never on the node's thread; a job that finds the queue full is
//! skipped and folded into the next one.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};

use super::disk;

/// Writeback is started once this much more has been flushed.
const START_EVERY: u64 = 2 << 20;
/// The newest bytes stay cached (a reader at the replica's end hits them).
const KEEP_CACHED: u64 = 8 << 20;
/// Jobs queued for the write-behind thread, at most.
const QUEUED: usize = 16;

/// One store file's write-behind state.
#[derive(Debug)]
pub(crate) struct WriteBehind {
    /// A second open of the store file (its own writeback error cursor).
    file: Arc<File>,
    /// Writeback was started for the bytes below this.
    started: u64,
    /// Cached pages were dropped below this.
    dropped: u64,
}

/// What the write-behind thread does for one store.
struct Job {
    file: Arc<File>,
    /// Start writeback of these bytes.
    write: Range<u64>,
    /// Wait for their writeback, then drop these bytes' pages.
    drop: Option<Range<u64>>,
}

impl WriteBehind {
    /// Write-behind for the store file at `path`, whose first `flushed`
    /// bytes are already with the kernel (they are left as they are).
    pub(crate) fn open(path: &Path, flushed: u64) -> std::io::Result<WriteBehind> {
        Ok(WriteBehind {
            file: Arc::new(File::open(path)?),
            started: flushed,
            dropped: flushed,
        })
    }

    /// The store has handed the kernel everything below `end`.
    pub(crate) fn flushed(&mut self, end: u64) {
        if end < self.started.saturating_add(START_EVERY) {
            return;
        }
        let keep_from = end.saturating_sub(KEEP_CACHED);
        let drop = (keep_from > self.dropped).then_some(self.dropped..keep_from);
        let job = Job {
            file: Arc::clone(&self.file),
            write: self.started..end,
            drop: drop.clone(),
        };
        let Some(thread) = thread() else { return };
        match thread.try_send(job) {
            Ok(()) => {
                self.started = end;
                if let Some(drop) = drop {
                    self.dropped = drop.end;
                }
            }
            // Folded into the next job: the ranges only grow.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    /// Where writeback was started and pages dropped up to (tests).
    #[cfg(test)]
    pub(crate) fn positions(&self) -> (u64, u64) {
        (self.started, self.dropped)
    }
}

/// The write-behind thread, started on first use; `None` if it cannot start.
fn thread() -> Option<&'static SyncSender<Job>> {
    static THREAD: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(QUEUED);
            let spawned = std::thread::Builder::new()
                .name("write-behind".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        run(&job);
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the write-behind thread: replicas catch up through the page cache");
                    None
                }
            }
        })
        .as_ref()
}

fn run(job: &Job) {
    // Errors are left to the store's own `fdatasync` (see the module doc):
    // here they only mean pages stay cached.
    if let Err(e) = disk::start_writeback(&job.file, &job.write) {
        tracing::debug!(error = %e, "write-behind: starting writeback failed");
    }
    if let Some(drop) = &job.drop
        && let Err(e) = disk::drop_written_back(&job.file, drop)
    {
        tracing::debug!(error = %e, "write-behind: dropping written pages failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind() -> (tempfile::TempDir, WriteBehind) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        std::fs::write(&path, b"").unwrap();
        let behind = WriteBehind::open(&path, 100).unwrap();
        (dir, behind)
    }

    #[test]
    fn writeback_starts_once_start_every_more_bytes_are_flushed() {
        let (_dir, mut behind) = behind();
        behind.flushed(100 + START_EVERY - 1);
        assert_eq!(
            behind.positions(),
            (100, 100),
            "one byte short: nothing yet"
        );
        behind.flushed(100 + START_EVERY);
        assert_eq!(behind.positions(), (100 + START_EVERY, 100));
    }

    #[test]
    fn pages_are_dropped_only_past_the_last_keep_cached_bytes() {
        let (_dir, mut behind) = behind();
        let end = 100 + KEEP_CACHED;
        behind.flushed(end);
        assert_eq!(behind.positions(), (end, 100), "all within KEEP_CACHED");
        let end = end + START_EVERY;
        behind.flushed(end);
        assert_eq!(behind.positions(), (end, end - KEEP_CACHED));
    }
}
