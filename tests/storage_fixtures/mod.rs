//! Log settings and records shared by the crash and recovery tests.

use proglog::storage::frame::{FILE_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{Log, LogConfig, SyncPolicy};

/// Small segments (16 KiB, 200 entries) so tests roll them.
pub fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        max_store_bytes: 16 << 10,
        max_index_bytes: (FILE_HEADER_LEN + 200 * INDEX_ENTRY_LEN) as u64,
        max_record_bytes: 1024,
        sync,
        ..LogConfig::default()
    }
}

/// The record stored at `offset`: its length and bytes depend on the offset,
/// so a record read back at the wrong place is caught.
pub fn record_for(offset: u64) -> Vec<u8> {
    let len = 1 + (offset.wrapping_mul(7919) % 300) as usize;
    (0..len).map(|i| (offset as usize * 31 + i) as u8).collect()
}

pub fn assert_all_records_intact(log: &Log) {
    for offset in log.lowest_offset()..log.next_offset() {
        assert_eq!(
            log.read(offset).unwrap(),
            record_for(offset),
            "record {offset}"
        );
    }
}
