//! Property test: random sequences of operations on a real log agree with a
//! plain in-memory model, across segment rolls, reopens, crashes and truncation.

use proglog::storage::frame::{FILE_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{Log, LogConfig, StorageError, SyncPolicy};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    AppendBatch(Vec<Vec<u8>>),
    Flush,
    /// Read the record at this fraction of the way through [lowest - 2, next + 2).
    Read(u16),
    ReadBatch(u16, usize),
    Reopen,
    /// Drop without closing, as a killed process would.
    Crash,
    Truncate(u16),
}

fn record() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => record().prop_map(Op::Append),
        2 => prop::collection::vec(record(), 0..6).prop_map(Op::AppendBatch),
        1 => Just(Op::Flush),
        4 => any::<u16>().prop_map(Op::Read),
        2 => (any::<u16>(), 1usize..200).prop_map(|(at, max)| Op::ReadBatch(at, max)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => any::<u16>().prop_map(Op::Truncate),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        max_store_bytes: 200,
        max_index_bytes: (FILE_HEADER_LEN + 4 * INDEX_ENTRY_LEN) as u64,
        max_record_bytes: 40,
        sync: SyncPolicy::Never,
        ..LogConfig::default()
    }
}

/// The model: every record ever appended by offset, the lowest offset still
/// held, and how many records were flushed (the rest die in a crash).
struct Model {
    records: Vec<Vec<u8>>,
    lowest: u64,
    flushed: u64,
}

fn pick(at: u16, model: &Model) -> u64 {
    let lo = model.lowest.saturating_sub(2);
    let hi = model.records.len() as u64 + 2;
    lo + (at as u64 * (hi - lo)) / (u16::MAX as u64 + 1)
}

fn check_read(log: &Log, model: &Model, offset: u64) -> Result<(), TestCaseError> {
    let next = model.records.len() as u64;
    match log.read(offset) {
        Ok(bytes) => {
            prop_assert!(
                offset >= model.lowest && offset < next,
                "read {offset} outside [{}, {next})",
                model.lowest
            );
            prop_assert_eq!(&bytes, &model.records[offset as usize]);
        }
        Err(StorageError::OffsetOutOfRange {
            lowest, next: n, ..
        }) => {
            prop_assert!(offset < model.lowest || offset >= next);
            prop_assert_eq!((lowest, n), (model.lowest, next));
        }
        Err(e) => return Err(TestCaseError::fail(format!("read {offset}: {e}"))),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_an_in_memory_model(ops in prop::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(Log::open(dir.path(), config()).unwrap());
        let mut model = Model { records: Vec::new(), lowest: 0, flushed: 0 };
        for op in ops {
            let l = log.as_mut().unwrap();
            match op {
                Op::Append(r) => {
                    prop_assert_eq!(l.append(&r).unwrap(), model.records.len() as u64);
                    model.records.push(r);
                }
                Op::AppendBatch(rs) => {
                    let first = model.records.len() as u64;
                    let range = l.append_batch(&rs).unwrap();
                    prop_assert_eq!(range, first..first + rs.len() as u64);
                    model.records.extend(rs);
                    model.flushed = model.records.len() as u64;
                }
                Op::Flush => {
                    l.flush().unwrap();
                    model.flushed = model.records.len() as u64;
                }
                Op::Read(at) => check_read(l, &model, pick(at, &model))?,
                Op::ReadBatch(at, max) => {
                    let from = pick(at, &model);
                    let next = model.records.len() as u64;
                    match l.read_batch(from, max) {
                        Ok(batch) => {
                            prop_assert!(from >= model.lowest && from <= next);
                            prop_assert_eq!(batch.is_empty(), from == next);
                            for (i, (offset, bytes)) in batch.iter().enumerate() {
                                prop_assert_eq!(offset, from + i as u64);
                                prop_assert_eq!(bytes, &model.records[offset as usize][..]);
                            }
                        }
                        Err(StorageError::OffsetOutOfRange { .. }) => prop_assert!(from < model.lowest || from > next),
                        Err(e) => return Err(TestCaseError::fail(format!("read_batch {from}: {e}"))),
                    }
                }
                Op::Reopen => {
                    log.take().unwrap().close().unwrap();
                    let l = Log::open(dir.path(), config()).unwrap();
                    prop_assert_eq!(l.open_report().recovered_segments, 0);
                    model.flushed = model.records.len() as u64;
                    log = Some(l);
                }
                Op::Crash => {
                    log.take().unwrap().simulate_crash();
                    let l = Log::open(dir.path(), config()).unwrap();
                    // Records that reached the kernel survive; buffered ones may not.
                    let next = l.next_offset();
                    prop_assert!(next >= model.flushed && next <= model.records.len() as u64,
                        "after crash next {next}, flushed {}, appended {}", model.flushed, model.records.len());
                    model.records.truncate(next as usize);
                    model.flushed = next;
                    model.lowest = model.lowest.min(next);
                    prop_assert_eq!(l.lowest_offset(), model.lowest);
                    log = Some(l);
                }
                Op::Truncate(at) => {
                    let lowest = pick(at, &model);
                    l.truncate(lowest).unwrap();
                    let now = l.lowest_offset();
                    let next = model.records.len() as u64;
                    prop_assert!(now >= model.lowest, "lowest went back");
                    prop_assert!(now <= lowest.max(model.lowest).min(next), "truncate({lowest}) removed too much: lowest {now}");
                    model.lowest = now;
                }
            }
            let l = log.as_ref().unwrap();
            prop_assert_eq!(l.next_offset(), model.records.len() as u64);
            prop_assert_eq!(l.lowest_offset(), model.lowest);
        }
        let l = log.as_ref().unwrap();
        for offset in model.lowest..model.records.len() as u64 {
            check_read(l, &model, offset)?;
        }
    }
}
