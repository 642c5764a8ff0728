//! Disk faults injected under the node's partition engine (through the
//! storage layer's seam, `proglog::storage::disk`), one test per fault, each
//! asserting the exact outcome: the typed error the writer gets, nothing
//! acknowledged lost, no half state left on disk, and the partition's state
//! after a restart.

mod storage_fixtures;

use std::path::Path;

use proglog::log::{Appended, LogError};
use proglog::storage::disk::{Fault, Point, inject};
use proglog::storage::{StorageError, SyncPolicy};
use storage_fixtures::{Partition, config, record_for};

fn fill(log: &Partition, n: u64) {
    for _ in 0..n {
        let offset = log.next_offset();
        assert_eq!(log.append(&record_for(offset)).unwrap(), offset);
    }
}

/// Appends record after record until one fails; returns the error.
fn append_until_an_error(log: &Partition) -> LogError {
    loop {
        let offset = log.next_offset();
        if let Err(e) = log.append(&record_for(offset)) {
            return e;
        }
    }
}

fn store_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".store"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

fn reopen_and_check(dir: &Path, sync: SyncPolicy, next: u64) {
    let log = Partition::open(dir, config(sync)).unwrap();
    assert!(log.read_only_at_open().is_none());
    assert_eq!(log.next_offset(), next, "exactly the acknowledged records");
    log.assert_all_records_intact();
}

/// ENOSPC while writing: typed disk full, "not appended", the bytes taken
/// back (the store is as long as before), and appends resume at the same
/// offset once space returns.
#[test]
fn enospc_on_write_is_disk_full_and_takes_the_append_back() {
    for fault in [
        Fault::Errno(libc::ENOSPC),
        Fault::ShortWrite {
            bytes: 7,
            errno: libc::ENOSPC,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
        fill(&log, 20);
        let before = store_files(dir.path());
        inject(dir.path(), Point::Write, fault, 1);
        let err = log.append(&record_for(20)).unwrap_err();
        assert!(
            matches!(err, LogError::Storage(StorageError::DiskFull { .. })),
            "{fault:?}: {err}"
        );
        assert_eq!(err.appended(), Appended::No);
        assert_eq!(
            store_files(dir.path()),
            before,
            "{fault:?}: nothing half written"
        );
        assert!(log.stats().disk_full.is_some());
        assert_eq!(
            log.stats().restarts,
            0,
            "disk full does not spend the restart budget"
        );
        // Space is back (the fault was one-shot): the next append takes offset 20.
        assert_eq!(log.append(&record_for(20)).unwrap(), 20);
        assert!(log.stats().disk_full.is_none());
        log.crash();
        reopen_and_check(dir.path(), SyncPolicy::Never, 21);
    }
}

/// EIO while writing: the outcome is unknown to the writer ("maybe
/// appended"), the segment restarts through recovery, acknowledged records
/// are intact and appends go on.
#[test]
fn eio_on_write_is_indeterminate_and_the_segment_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    fill(&log, 20);
    inject(
        dir.path(),
        Point::Write,
        Fault::ShortWrite {
            bytes: 5,
            errno: libc::EIO,
        },
        1,
    );
    let err = log.append(&record_for(20)).unwrap_err();
    assert!(matches!(err, LogError::Indeterminate { .. }), "{err}");
    assert_eq!(err.appended(), Appended::Maybe);
    // The restart cut the torn 5 bytes (beyond the recovery point); append again.
    let next = loop {
        match log.append(&record_for(20)) {
            Ok(offset) => break offset,
            Err(e) => assert_eq!(e.appended(), Appended::No, "{e}"),
        }
    };
    assert_eq!(next, 20);
    assert_eq!(log.stats().restarts, 1);
    log.crash();
    reopen_and_check(dir.path(), SyncPolicy::Never, 21);
}

/// EIO from `fdatasync` under `sync=always`: not retried into success. The
/// append is "maybe appended", the segment is reopened from the disk (its
/// cached pages dropped), and what it serves afterwards was synced.
#[test]
fn eio_on_fsync_is_never_retried_into_success() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Always)).unwrap();
    fill(&log, 10);
    inject(dir.path(), Point::Sync, Fault::Errno(libc::EIO), 1);
    let err = log.append(&record_for(10)).unwrap_err();
    assert!(matches!(err, LogError::Indeterminate { .. }), "{err}");
    // The segment restarts through recovery (on the blocking pool).
    log.wait_for("restarted", |s| s.restarts == 1);
    // The record reached the file before the failed sync: after the reopen
    // (and its sync) it is there; the log goes on after it, never under it.
    let next = log.next_offset();
    assert!(next == 10 || next == 11, "{next}");
    if next == 11 {
        assert_eq!(log.read(10).unwrap(), record_for(10));
    }
    let offset = loop {
        match log.append(&record_for(next)) {
            Ok(offset) => break offset,
            Err(e) => assert_eq!(e.appended(), Appended::No, "{e}"),
        }
    };
    assert_eq!(offset, next);
    log.crash();
    reopen_and_check(dir.path(), SyncPolicy::Always, next + 1);
}

/// EIO while reading: the reader gets a typed I/O error (reported as
/// unavailable on the wire, never as data), the next read works.
#[test]
fn eio_on_read_is_an_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    fill(&log, 5);
    inject(dir.path(), Point::Read, Fault::Errno(libc::EIO), 1);
    let err = log.read(3).unwrap_err();
    assert!(
        matches!(err, LogError::Storage(StorageError::Io { .. })),
        "{err}"
    );
    assert_eq!(log.read(3).unwrap(), record_for(3));
    assert!(
        log.stats().read_only.is_none(),
        "an I/O error is not damage"
    );
}

/// ENOSPC while a roll allocates the new segment's index: typed disk full,
/// no half-created segment file left, and appends resume by themselves.
#[test]
fn enospc_during_a_roll_leaves_no_half_created_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    fill(&log, 10);
    let segments = log.segment_count();
    inject(dir.path(), Point::Allocate, Fault::Errno(libc::ENOSPC), 1);
    // Fill until the roll, which meets the full disk.
    let err = append_until_an_error(&log);
    assert!(
        matches!(err, LogError::Storage(StorageError::DiskFull { .. })),
        "{err}"
    );
    let next = log.next_offset();
    let files = store_files(dir.path());
    assert_eq!(files.len(), segments, "no half-created segment: {files:?}");
    assert!(
        !dir.path().join(format!("{next:020}.index")).exists(),
        "no orphan index"
    );
    // Space is back: the roll happens on the next append.
    assert_eq!(log.append(&record_for(next)).unwrap(), next);
    assert_eq!(log.segment_count(), segments + 1);
    log.crash();
    reopen_and_check(dir.path(), SyncPolicy::Never, next + 1);
}

/// ENOSPC when creating the next segment's store file: same outcome.
#[test]
fn enospc_creating_a_segment_file_is_disk_full() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    fill(&log, 5);
    inject(dir.path(), Point::Create, Fault::Errno(libc::ENOSPC), 1);
    let err = append_until_an_error(&log);
    assert!(
        matches!(err, LogError::Storage(StorageError::DiskFull { .. })),
        "{err}"
    );
    let next = log.next_offset();
    assert_eq!(log.append(&record_for(next)).unwrap(), next);
    log.close().unwrap();
    reopen_and_check(dir.path(), SyncPolicy::Never, next + 1);
}
