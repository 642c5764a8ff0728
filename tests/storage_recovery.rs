//! Crash safety and corruption: the log never loses an acknowledged record
//! and never serves a damaged one.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod storage_fixtures;

use proglog::storage::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{Log, LogConfig, StorageError, SyncPolicy};
use storage_fixtures::{assert_all_records_intact, config, record_for};

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

fn fill(dir: &Path, config: LogConfig, n: u64) -> Log {
    let mut log = Log::open(dir, config).unwrap();
    for _ in 0..n {
        let offset = log.next_offset();
        assert_eq!(log.append(&record_for(offset)).unwrap(), offset);
    }
    log.flush().unwrap();
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

    let mut log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().truncated_bytes, torn.len() as u64);
    assert_eq!(log.next_offset(), 20);
    assert_all_records_intact(&log);
    assert_eq!(log.append(&record_for(20)).unwrap(), 20);
    assert_eq!(log.read(20).unwrap(), record_for(20));
}

#[test]
fn store_cut_inside_its_last_frame_loses_only_that_frame() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 20)
        .close()
        .unwrap();
    let base = last_base(dir.path());
    let store = segment_file(dir.path(), base, "store");
    let len = std::fs::metadata(&store).unwrap().len();
    // The clean index now holds one entry more than the store has frames.
    OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().recovered_segments, 1);
    assert_eq!(log.next_offset(), 19);
    assert_all_records_intact(&log);
}

#[test]
fn index_longer_than_the_store_with_a_zero_tail_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.simulate_crash();
    let base = last_base(dir.path());
    let index = segment_file(dir.path(), base, "index");
    let index_len = std::fs::metadata(&index).unwrap().len();
    assert_eq!(
        index_len,
        config(SyncPolicy::Never).max_index_bytes,
        "crash leaves the index at its grown size"
    );

    let mut log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().recovered_segments, 1);
    assert_eq!(log.next_offset(), next);
    assert_all_records_intact(&log);
    assert_eq!(log.append(&record_for(next)).unwrap(), next);
}

#[test]
fn zeroed_index_entries_are_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.simulate_crash();
    let index = segment_file(dir.path(), last_base(dir.path()), "index");
    // As if the pages holding the entries never reached the disk.
    let file = OpenOptions::new().write(true).open(&index).unwrap();
    file.write_all_at(&[0u8; 5 * INDEX_ENTRY_LEN], FILE_HEADER_LEN as u64)
        .unwrap();

    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), next);
    assert_all_records_intact(&log);
}

#[test]
fn index_behind_the_store_is_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 25);
    let next = log.next_offset();
    log.simulate_crash();
    let base = last_base(dir.path());
    let index = segment_file(dir.path(), base, "index");
    OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len((FILE_HEADER_LEN + 2 * INDEX_ENTRY_LEN) as u64)
        .unwrap();

    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), next);
    assert_all_records_intact(&log);
}

#[test]
fn a_missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), config(SyncPolicy::Never), 25)
        .close()
        .unwrap();
    std::fs::remove_file(segment_file(dir.path(), 0, "index")).unwrap();
    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.open_report().recovered_segments, 1);
    assert_eq!(log.next_offset(), 25);
    assert_all_records_intact(&log);
}

#[test]
fn unflushed_records_are_lost_in_a_crash_but_never_half_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = fill(dir.path(), config(SyncPolicy::Never), 10);
    log.append(&record_for(10)).unwrap(); // buffered, never flushed
    log.simulate_crash();
    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), 10, "only the flushed records are there");
    assert_all_records_intact(&log);
}

#[test]
fn a_lost_tail_in_an_older_segment_drops_the_segments_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = fill(dir.path(), config(SyncPolicy::Never), 200);
    assert!(log.segment_count() >= 3);
    log.close().unwrap();
    // Cut the first segment's store mid-frame and mark its index dirty.
    let store = segment_file(dir.path(), 0, "store");
    let len = std::fs::metadata(&store).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    std::fs::remove_file(segment_file(dir.path(), 0, "index")).unwrap();

    let mut log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(log.open_report().dropped_segments >= 2);
    assert_eq!(log.segment_count(), 1);
    let next = log.next_offset();
    assert_all_records_intact(&log);
    assert_eq!(
        log.append(&record_for(next)).unwrap(),
        next,
        "offsets stay contiguous"
    );
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

    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    match log.read(5) {
        Err(StorageError::Corruption { path, position, .. }) => {
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
    assert!(log.read_batch(5, 1 << 20).unwrap_err().is_corruption());
    assert_eq!(log.read_batch(6, 1 << 20).unwrap().first_offset(), Some(6));
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
    let log = Log::open(dir.path(), config(SyncPolicy::Never)).unwrap();
    assert!(log.read(0).unwrap_err().is_corruption());
    assert!(log.read_batch(0, 4096).unwrap_err().is_corruption());
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
        Log::open(dir.path(), config(SyncPolicy::Never)),
        Err(StorageError::UnsupportedFormat { .. })
    ));
}
