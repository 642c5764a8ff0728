//! The log's behaviours, after the book's log tests, plus the holes it left,
//! through the node's partition engine (LogActor and SegmentActors).

use std::time::Duration;

mod storage_fixtures;

use proglog::log::LogError;
use proglog::storage::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{LogConfig, Retention, StorageError, SyncPolicy};
use storage_fixtures::Partition;

/// Small segments so a handful of records rolls them.
fn small_config() -> LogConfig {
    LogConfig {
        max_store_bytes: 256,
        max_index_bytes: (FILE_HEADER_LEN + 3 * INDEX_ENTRY_LEN) as u64,
        max_record_bytes: 64,
        sync: SyncPolicy::Never,
        min_free_bytes: 0,
        ..LogConfig::default()
    }
}

fn record(i: u64) -> Vec<u8> {
    format!("record number {i}").into_bytes()
}

#[test]
fn append_then_read_returns_the_same_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    let offset = log.append(b"hello world").unwrap();
    assert_eq!(offset, 0);
    assert_eq!(log.read(offset).unwrap(), b"hello world");
}

#[test]
fn offsets_continue_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    for i in 0..10 {
        assert_eq!(log.append(&record(i)).unwrap(), i);
    }
    assert!(
        log.segment_count() >= 4,
        "3 entries per index: {} segments",
        log.segment_count()
    );
    for i in 0..10 {
        assert_eq!(log.read(i).unwrap(), record(i));
    }
}

#[test]
fn reading_outside_the_log_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    let err = log.read(0).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Storage(StorageError::OffsetOutOfRange {
                offset: 0,
                lowest: 0,
                next: 0
            })
        ),
        "{err}"
    );
    for i in 0..7 {
        log.append(&record(i)).unwrap();
    }
    log.truncate(3).unwrap();
    let lowest = log.lowest_offset();
    assert!(lowest > 0);
    assert!(matches!(
        log.read(lowest - 1),
        Err(LogError::Storage(StorageError::OffsetOutOfRange {
            next: 7,
            ..
        }))
    ));
    assert!(matches!(
        log.read(7),
        Err(LogError::Storage(StorageError::OffsetOutOfRange {
            offset: 7,
            ..
        }))
    ));
    assert!(matches!(
        log.read_batch(8, 100),
        Err(LogError::Storage(StorageError::OffsetOutOfRange { .. }))
    ));
    assert!(
        log.read_batch(7, 100).unwrap().is_empty(),
        "at the end: an empty batch"
    );
}

#[test]
fn initial_offset_sets_the_first_offset() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        initial_offset: 1000,
        ..small_config()
    };
    let log = Partition::open(dir.path(), config).unwrap();
    assert_eq!(log.lowest_offset(), 1000);
    assert_eq!(log.append(b"x").unwrap(), 1000);
}

#[test]
fn reopen_resumes_offsets_without_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    for i in 0..8 {
        log.append(&record(i)).unwrap();
    }
    let segments = log.segment_count();
    log.close().unwrap();

    let log = Partition::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.open_report().recovered_segments,
        0,
        "a clean close needs no recovery"
    );
    assert_eq!(log.segment_count(), segments);
    assert_eq!((log.lowest_offset(), log.next_offset()), (0, 8));
    assert_eq!(log.append(&record(8)).unwrap(), 8);
    for i in 0..9 {
        assert_eq!(log.read(i).unwrap(), record(i));
    }
}

#[test]
fn an_acknowledged_append_survives_a_crash_of_the_process() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Partition::open(dir.path(), small_config()).unwrap();
        log.append(b"kept").unwrap();
        log.crash();
    }
    let log = Partition::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.open_report().recovered_segments,
        1,
        "no clean close: rebuilt"
    );
    assert_eq!(log.read(0).unwrap(), b"kept");
}

#[test]
fn batch_append_returns_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    log.append(b"first").unwrap();
    let records: Vec<Vec<u8>> = (1..8).map(record).collect();
    assert_eq!(log.append_batch(&records).unwrap(), 1..8);
    for i in 1..8 {
        assert_eq!(log.read(i).unwrap(), record(i));
    }
}

#[test]
fn read_batch_spans_segments_and_respects_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    for i in 0..10 {
        log.append(&record(i)).unwrap();
    }
    // A batch comes from one segment; asking on from its end crosses them all.
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut from = 0;
    loop {
        let batch = log.read_batch(from, 1 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.iter().map(|(o, r)| (o, r.to_vec())));
        from = batch.next_offset().unwrap();
    }
    let want: Vec<(u64, Vec<u8>)> = (0..10).map(|i| (i, record(i))).collect();
    assert_eq!(got, want);

    let frame = FRAME_HEADER_LEN + record(0).len();
    let two = log.read_batch(4, 2 * frame).unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two.first_offset(), Some(4));
    let tiny = log.read_batch(4, 1).unwrap();
    assert_eq!(tiny.len(), 1, "always at least one record");
}

#[test]
fn truncate_removes_whole_segments_below_lowest() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    for i in 0..10 {
        log.append(&record(i)).unwrap();
    }
    let removed = log.truncate(5).unwrap();
    assert!(removed >= 1);
    let lowest = log.lowest_offset();
    assert!(lowest <= 5 && lowest > 0, "lowest {lowest}");
    for i in lowest..10 {
        assert_eq!(log.read(i).unwrap(), record(i));
    }
    // Truncating everything keeps the active segment, and offsets go on.
    log.truncate(u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.next_offset(), 10);
    assert_eq!(log.append(b"after").unwrap(), 10);
}

#[test]
fn retention_by_bytes_deletes_the_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention: Retention {
            max_bytes: Some(300),
            max_age: None,
        },
        ..small_config()
    };
    let log = Partition::open(dir.path(), config).unwrap();
    for i in 0..12 {
        log.append(&record(i)).unwrap();
    }
    let removed = log.apply_retention().unwrap();
    assert!(removed > 0);
    assert!(log.stats().size_bytes <= 300, "{:?}", log.stats());
    assert_eq!(log.next_offset(), 12);
    assert_eq!(log.read(11).unwrap(), record(11));
}

#[test]
fn retention_by_age_keeps_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention: Retention {
            max_bytes: None,
            max_age: Some(Duration::from_secs(3600)),
        },
        ..small_config()
    };
    let log = Partition::open(dir.path(), config.clone()).unwrap();
    for i in 0..10 {
        log.append(&record(i)).unwrap();
    }
    let segments = log.segment_count();
    assert_eq!(log.apply_retention().unwrap(), 0, "nothing is an hour old");
    log.close().unwrap();
    let aged = LogConfig {
        retention: Retention {
            max_bytes: None,
            max_age: Some(Duration::ZERO),
        },
        ..config
    };
    let log = Partition::open(dir.path(), aged).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(log.apply_retention().unwrap(), segments - 1);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.next_offset(), 10);
}

#[test]
fn a_record_over_the_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Partition::open(dir.path(), small_config()).unwrap();
    let err = log.append(&[0u8; 65]).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Storage(StorageError::RecordTooLarge { size: 65, max: 64 })
        ),
        "{err}"
    );
    let err = log
        .append_batch(&[vec![1u8; 3], vec![0u8; 100]])
        .unwrap_err();
    assert!(matches!(
        err,
        LogError::Storage(StorageError::RecordTooLarge { size: 100, .. })
    ));
    assert_eq!(log.next_offset(), 0, "a rejected batch writes nothing");
    assert_eq!(log.append(&[7u8; 64]).unwrap(), 0, "the log keeps serving");
}

#[test]
fn a_stray_file_in_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Partition::open(dir.path(), small_config())
        .unwrap()
        .close()
        .unwrap();
    let stray = dir.path().join("notes.txt");
    std::fs::write(&stray, b"hello").unwrap();
    match Partition::open(dir.path(), small_config()) {
        Err(StorageError::UnexpectedFile { path }) => assert_eq!(path, stray),
        other => panic!("expected UnexpectedFile, got {other:?}"),
    }
}

#[test]
fn a_second_log_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Partition::open(dir.path(), small_config()).unwrap();
    assert!(matches!(
        Partition::open(dir.path(), small_config()),
        Err(StorageError::Locked { .. })
    ));
}

#[test]
fn invalid_config_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_store_bytes: 10,
        ..small_config()
    };
    let Err(err) = Partition::open(dir.path(), config) else {
        panic!("a bad config must be refused");
    };
    assert!(
        matches!(&err, StorageError::InvalidConfig(m) if m.contains("max_store_bytes")),
        "{err}"
    );
}

/// Makes a directory that even root cannot write to (chattr +i), undone on drop.
struct ImmutableDir(std::path::PathBuf);

impl ImmutableDir {
    fn new(path: std::path::PathBuf) -> ImmutableDir {
        std::fs::create_dir(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500)).unwrap();
        if std::fs::write(path.join("probe"), b"").is_ok() {
            // Running as root: permission bits do not apply, the immutable attribute does.
            std::fs::remove_file(path.join("probe")).unwrap();
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(&path)
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "chattr +i is needed to make a directory unwritable for root"
            );
        }
        ImmutableDir(path)
    }
}

impl Drop for ImmutableDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
    }
}

#[test]
fn an_unwritable_directory_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let locked = ImmutableDir::new(dir.path().join("readonly"));
    match Partition::open(&locked.0, small_config()) {
        Err(StorageError::Io { path, source, .. }) => {
            assert!(path.starts_with(&locked.0), "error names {path:?}");
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn sync_policy_parses_from_text() {
    assert_eq!("always".parse::<SyncPolicy>(), Ok(SyncPolicy::Always));
    assert_eq!("never".parse::<SyncPolicy>(), Ok(SyncPolicy::Never));
    assert_eq!(
        "interval:250".parse::<SyncPolicy>(),
        Ok(SyncPolicy::Interval(Duration::from_millis(250)))
    );
    assert!("interval:0".parse::<SyncPolicy>().is_err());
    assert!("sometimes".parse::<SyncPolicy>().is_err());
    assert_eq!(
        SyncPolicy::Interval(Duration::from_millis(250)).to_string(),
        "interval:250"
    );
}
