//! Crash safety and corruption, through the node's partition engine: the log
//! never loses an acknowledged record, never serves a damaged one, and never
//! cuts durable data on its own.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod storage_fixtures;

use proglog::log::LogError;
use proglog::storage::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{LogConfig, StorageError, SyncPolicy};
use storage_fixtures::{Partition, config, is_corruption, record_for};

fn segment_file(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// The last segment's base offset in `dir`.
fn last_base(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".store")
                .map(|s| s.parse::<u64>().unwrap())
        })
        .max()
        .unwrap()
}

/// Appends `n` records one by one, each acknowledged.
fn fill(dir: &Path, config: LogConfig, n: u64) -> Partition {
    let log = Partition::open(dir, config).unwrap();
    for _ in 0..n {
        let offset = log.next_offset();
        assert_eq!(log.append(&record_for(offset)).unwrap(), offset);
    }
    log
}

#[test]
fn torn_last_frame_is_cut_and_appending_resumes() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 20)
        .close()
        .unwrap();
    let store = segment_file(dir.path(), last_base(dir.path()), "store");
    // Half a frame: a header promising 200 bytes, and 10 of them.
    let mut torn = Vec::new();
    torn.extend_from_slice(&200u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&20u64.to_le_bytes());
    torn.extend_from_slice(&[9u8; 10]);
    OpenOptions::new()
        .append(true)
        .open(&store)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().truncated_bytes, torn.len() as u64);
    assert_eq!(log.next_offset(), 20);
    log.assert_all_records_intact();
    assert_eq!(log.append(&record_for(20)).unwrap(), 20);
    assert_eq!(log.read(20).unwrap(), record_for(20));
}

#[test]
fn a_sealed_store_cut_inside_its_last_frame_opens_read_only_and_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 20)
        .close()
        .unwrap();
    let base = last_base(dir.path());
    let store = segment_file(dir.path(), base, "store");
    let len = std::fs::metadata(&store).unwrap().len();
    // A sealed (synced) segment lost bytes: that is damage, not a torn tail.
    OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    let reason = log.read_only_at_open().expect("read-only").to_string();
    assert!(reason.contains(&store.display().to_string()), "{reason}");
    assert_eq!(
        std::fs::metadata(&store).unwrap().len(),
        len - 3,
        "nothing cut"
    );
    for offset in 0..19 {
        assert_eq!(log.read(offset).unwrap(), record_for(offset));
    }
    assert!(matches!(
        log.append(&record_for(20)),
        Err(LogError::ReadOnly { .. })
    ));
    assert!(log.stats().read_only.is_some());
}

#[test]
fn index_longer_than_the_store_with_a_zero_tail_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.crash();
    let base = last_base(dir.path());
    let index = segment_file(dir.path(), base, "index");
    let index_len = std::fs::metadata(&index).unwrap().len();
    assert_eq!(
        index_len,
        config(SyncPolicy::Never).max_index_bytes,
        "crash leaves the index at its grown size"
    );

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().recovered_segments, 1);
    assert_eq!(log.next_offset(), next);
    log.assert_all_records_intact();
    assert_eq!(log.append(&record_for(next)).unwrap(), next);
}

#[test]
fn zeroed_index_entries_are_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.crash();
    let index = segment_file(dir.path(), last_base(dir.path()), "index");
    // As if the pages holding the entries never reached the disk.
    let file = OpenOptions::new().write(true).open(&index).unwrap();
    file.write_all_at(&[0u8; 5 * INDEX_ENTRY_LEN], FILE_HEADER_LEN as u64)
        .unwrap();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), next);
    log.assert_all_records_intact();
}

#[test]
fn index_behind_the_store_is_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.crash();
    let base = last_base(dir.path());
    let index = segment_file(dir.path(), base, "index");
    OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len((FILE_HEADER_LEN + 2 * INDEX_ENTRY_LEN) as u64)
        .unwrap();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), next);
    log.assert_all_records_intact();
}

#[test]
fn a_missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 25)
        .close()
        .unwrap();
    std::fs::remove_file(segment_file(dir.path(), 0, "index")).unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().recovered_segments, 1);
    assert_eq!(log.next_offset(), 25);
    log.assert_all_records_intact();
}

#[test]
fn a_lost_tail_in_a_synced_older_segment_opens_read_only_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 200);
    assert!(log.segment_count() >= 3);
    log.close().unwrap();
    // Cut the first (sealed, synced) segment's store mid-frame and drop its index.
    let store = segment_file(dir.path(), 0, "store");
    let len = std::fs::metadata(&store).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    std::fs::remove_file(segment_file(dir.path(), 0, "index")).unwrap();
    let files_before = std::fs::read_dir(dir.path()).unwrap().count();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(log.read_only_at_open().is_some());
    assert!(log.segment_count() >= 3, "no segment deleted");
    assert_eq!(log.next_offset(), 200, "later segments still served");
    assert_eq!(log.read(199).unwrap(), record_for(199));
    assert_eq!(log.read(0).unwrap(), record_for(0));
    assert!(matches!(
        log.append(&record_for(200)),
        Err(LogError::ReadOnly { .. })
    ));
    drop(log);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() >= files_before);
    assert_eq!(
        std::fs::metadata(&store).unwrap().len(),
        len - 5,
        "nothing cut"
    );
}

/// A power cut while rolling, under the default sync policy: the older
/// segment's seal never reached the disk (its index is dirty) and its store
/// came back empty, with a newer segment after it. Those records were beyond
/// the recovery point: the node starts, keeps everything else, records the
/// gap, and never gives those offsets out again.
#[test]
fn an_older_segment_emptied_by_a_power_cut_beyond_the_recovery_point_is_recorded_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 300);
    let next = log.next_offset();
    log.crash();
    let mut bases: Vec<u64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".store")
                .map(|s| s.parse::<u64>().unwrap())
        })
        .collect();
    bases.sort();
    assert!(bases.len() >= 3, "{bases:?}");
    let victim = bases[bases.len() - 2];
    // The recovery point sits at the victim's base (the seal before it completed).
    std::fs::write(
        dir.path().join("checkpoint"),
        format!("recovery-point {victim}\n"),
    )
    .unwrap();
    std::fs::write(segment_file(dir.path(), victim, "store"), b"").unwrap();
    std::fs::remove_file(segment_file(dir.path(), victim, "index")).unwrap();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(log.read_only_at_open().is_none());
    assert_eq!(log.next_offset(), next, "the newest segment is kept");
    for offset in 0..victim {
        assert_eq!(log.read(offset).unwrap(), record_for(offset));
    }
    let last = bases[bases.len() - 1];
    match log.read(victim) {
        Err(LogError::Storage(StorageError::RecordsLost { from, to, .. })) => {
            assert_eq!((from, to), (victim, last));
        }
        other => panic!("expected records lost, got {other:?}"),
    }
    assert_eq!(log.read(last).unwrap(), record_for(last));
    assert_eq!(
        log.append(&record_for(next)).unwrap(),
        next,
        "no offset reused"
    );
    let checkpoint = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    assert!(
        checkpoint.contains(&format!("lost {victim} {last} power-cut")),
        "{checkpoint}"
    );
}

/// The same cut below the recovery point is damage: read-only, nothing deleted.
#[test]
fn an_older_segment_emptied_below_the_recovery_point_opens_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 300);
    log.close().unwrap();
    std::fs::write(segment_file(dir.path(), 0, "store"), b"").unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    let reason = log.read_only_at_open().expect("read-only").to_string();
    assert!(reason.contains("no header"), "{reason}");
    assert!(is_corruption(&log.read(0).unwrap_err()));
    assert_eq!(log.read(299).unwrap(), record_for(299));
}

/// The index's size reached the disk before its header: it is rebuilt.
#[test]
fn a_full_size_index_with_a_zeroed_header_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.crash();
    let index = segment_file(dir.path(), last_base(dir.path()), "index");
    let file = OpenOptions::new().write(true).open(&index).unwrap();
    file.write_all_at(&[0u8; FILE_HEADER_LEN], 0).unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), next);
    log.assert_all_records_intact();
    assert_eq!(log.append(&record_for(next)).unwrap(), next);
}

/// Lowering the record-size setting must not make old records look invalid.
#[test]
fn lowering_max_record_bytes_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let big = LogConfig {
        max_record_bytes: 2000,
        max_store_bytes: 1 << 20,
        ..config(SyncPolicy::Never)
    };
    let log = Partition::open(dir.path(), big.clone()).unwrap();
    for i in 0..12u64 {
        assert_eq!(log.append(&vec![i as u8; 1000]).unwrap(), i);
    }
    log.crash(); // the active segment must be rebuilt: the path that used the setting
    let small = LogConfig {
        max_record_bytes: 500,
        ..big
    };
    let log = Partition::open(dir.path(), small).unwrap();
    assert_eq!(log.next_offset(), 12);
    assert_eq!(log.open_report().truncated_bytes, 0);
    for i in 0..12u64 {
        assert_eq!(log.read(i).unwrap(), vec![i as u8; 1000]);
    }
    assert_eq!(log.append(b"next").unwrap(), 12, "offsets are not reused");
}

#[test]
fn a_flipped_byte_is_reported_as_corruption_and_other_records_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 30);
    log.close().unwrap();
    // Find record 5's frame via the raw layout: frames follow the header.
    let store = segment_file(dir.path(), 0, "store");
    let bytes = std::fs::read(&store).unwrap();
    let mut at = FILE_HEADER_LEN;
    for offset in 0..5u64 {
        at += FRAME_HEADER_LEN + record_for(offset).len();
    }
    let file = OpenOptions::new().write(true).open(&store).unwrap();
    file.write_all_at(
        &[bytes[at + FRAME_HEADER_LEN + 2] ^ 0x40],
        (at + FRAME_HEADER_LEN + 2) as u64,
    )
    .unwrap();

    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    match log.read(5) {
        Err(LogError::Storage(StorageError::Corruption { path, position, .. })) => {
            assert_eq!(path, store);
            assert_eq!(position, at as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(log.read(4).unwrap(), record_for(4));
    assert_eq!(log.read(6).unwrap(), record_for(6));
    let before = log.read_batch(2, 1 << 20).unwrap();
    assert_eq!(
        before.iter().map(|(o, _)| o).collect::<Vec<_>>(),
        vec![2, 3, 4],
        "a batch stops before the bad record"
    );
    assert!(is_corruption(&log.read_batch(5, 1 << 20).unwrap_err()));
    assert_eq!(log.read_batch(6, 1 << 20).unwrap().first_offset(), Some(6));
    assert!(
        matches!(log.append(&record_for(30)), Err(LogError::ReadOnly { .. })),
        "damage found by a read makes the partition read-only"
    );
    drop(log);

    // The next open scans that segment and finds the damage itself.
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(log.read_only_at_open().is_some());
    assert_eq!(log.read(4).unwrap(), record_for(4));
    assert!(
        is_corruption(&log.read(29).unwrap_err()),
        "past the damage: corruption, not out of range"
    );
    drop(log);

    // The explicit repair: a dry run changes nothing, the real run cuts the
    // damaged segment at the bad record, records the loss, and the log goes
    // on after every offset it gave out.
    let before = std::fs::read(&store).unwrap();
    let dry = proglog::storage::repair(dir.path(), &config(SyncPolicy::Never), true).unwrap();
    assert_eq!(dry.cuts.len(), 1);
    assert_eq!(dry.cuts[0].position, at as u64);
    assert_eq!(dry.cuts[0].lost.start, 5);
    assert_eq!(
        std::fs::read(&store).unwrap(),
        before,
        "dry run changes nothing"
    );
    let done = proglog::storage::repair(dir.path(), &config(SyncPolicy::Never), false).unwrap();
    assert_eq!(done.cuts, dry.cuts);
    assert_eq!(done.next_offset, 30);
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(log.read_only_at_open().is_none());
    assert_eq!(log.read(4).unwrap(), record_for(4));
    assert!(matches!(
        log.read(5),
        Err(LogError::Storage(StorageError::RecordsLost { from: 5, .. }))
    ));
    assert_eq!(log.append(b"after repair").unwrap(), 30, "no offset reused");
}

#[test]
fn a_corrupt_length_field_is_corruption_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 10)
        .close()
        .unwrap();
    let store = segment_file(dir.path(), 0, "store");
    let file = OpenOptions::new().write(true).open(&store).unwrap();
    // Record 0's length field claims 4 GiB.
    file.write_all_at(&u32::MAX.to_le_bytes(), FILE_HEADER_LEN as u64)
        .unwrap();
    let log = Partition::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(is_corruption(&log.read(0).unwrap_err()));
    assert!(is_corruption(&log.read_batch(0, 4096).unwrap_err()));
    assert_eq!(log.read(1).unwrap(), record_for(1));
}

#[test]
fn a_file_from_a_future_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 3)
        .close()
        .unwrap();
    let store = segment_file(dir.path(), 0, "store");
    let file = OpenOptions::new().write(true).open(&store).unwrap();
    file.write_all_at(&99u16.to_le_bytes(), 4).unwrap();
    assert!(matches!(
        Partition::open(dir.path(), config(SyncPolicy::Never)),
        Err(StorageError::UnsupportedFormat { .. })
    ));
}
