//! Property test of the actor stack the node runs (LogActor, SegmentActors,
//! storage core): random sequences of appends, batches, reads, rolls,
//! clean restarts, crashes, truncation and injected actor panics (restarts,
//! and escalations once a budget is spent) agree with a plain in-memory model. Every acknowledged record survives; a refused
//! append left nothing behind.

mod storage_fixtures;

use proglog::log::{Appended, LogError};
use proglog::storage::frame::{FILE_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{LogConfig, StorageError, SyncPolicy};
use proptest::prelude::*;
use storage_fixtures::Partition;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    AppendBatch(Vec<Vec<u8>>),
    /// Read the record at this fraction of the way through [lowest - 2, next + 2).
    Read(u16),
    ReadBatch(u16, usize),
    /// Close cleanly and open again.
    Restart,
    /// Stop without closing, as a killed process would, and open again.
    Crash,
    Truncate(u16),
    SegmentPanic,
    LogPanic,
}

fn record() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => record().prop_map(Op::Append),
        2 => prop::collection::vec(record(), 0..6).prop_map(Op::AppendBatch),
        4 => any::<u16>().prop_map(Op::Read),
        2 => (any::<u16>(), 1usize..200).prop_map(|(at, max)| Op::ReadBatch(at, max)),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => any::<u16>().prop_map(Op::Truncate),
        1 => Just(Op::SegmentPanic),
        1 => Just(Op::LogPanic),
    ]
}

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        max_store_bytes: 200,
        max_index_bytes: (FILE_HEADER_LEN + 4 * INDEX_ENTRY_LEN) as u64,
        max_record_bytes: 40,
        sync,
        min_free_bytes: 0,
        ..LogConfig::default()
    }
}

/// The model: every acknowledged record by offset, and the lowest offset held.
struct Model {
    records: Vec<Vec<u8>>,
    lowest: u64,
}

fn pick(at: u16, model: &Model) -> u64 {
    let lo = model.lowest.saturating_sub(2);
    let hi = model.records.len() as u64 + 2;
    lo + (at as u64 * (hi - lo)) / (u16::MAX as u64 + 1)
}

fn check_read(log: &Partition, model: &Model, offset: u64) -> Result<(), TestCaseError> {
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
        Err(LogError::Storage(StorageError::OffsetOutOfRange {
            lowest, next: n, ..
        })) => {
            prop_assert!(offset < model.lowest || offset >= next);
            prop_assert_eq!((lowest, n), (model.lowest, next));
        }
        Err(e) => return Err(TestCaseError::fail(format!("read {offset}: {e}"))),
    }
    Ok(())
}

/// An append refused by a restarting actor must say "not appended", and be so.
fn refused(e: &LogError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(e, LogError::Unavailable { .. }) && e.appended() == Appended::No,
        "unexpected append error {e:?}"
    );
    Ok(())
}

fn run(ops: Vec<Op>, sync: SyncPolicy) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Some(Partition::open(dir.path(), config(sync)).unwrap());
    let mut model = Model {
        records: Vec::new(),
        lowest: 0,
    };
    for op in ops {
        let l = log.as_mut().unwrap();
        match op {
            Op::Append(r) => match l.append(&r) {
                Ok(offset) => {
                    prop_assert_eq!(offset, model.records.len() as u64);
                    model.records.push(r);
                }
                Err(e) => refused(&e)?,
            },
            Op::AppendBatch(rs) => {
                let first = model.records.len() as u64;
                match l.append_batch(&rs) {
                    Ok(range) => {
                        prop_assert_eq!(range, first..first + rs.len() as u64);
                        model.records.extend(rs);
                    }
                    Err(e) => refused(&e)?,
                }
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
                    Err(LogError::Storage(StorageError::OffsetOutOfRange { .. })) => {
                        prop_assert!(from < model.lowest || from > next)
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("read_batch {from}: {e}"))),
                }
            }
            Op::Restart => {
                log.take().unwrap().close().unwrap();
                let l = Partition::open(dir.path(), config(sync)).unwrap();
                prop_assert_eq!(
                    l.open_report().recovered_segments,
                    0,
                    "a clean close needs no scan"
                );
                log = Some(l);
            }
            Op::Crash => {
                log.take().unwrap().crash();
                let l = Partition::open(dir.path(), config(sync)).unwrap();
                prop_assert!(l.read_only_at_open().is_none(), "a crash is not damage");
                log = Some(l);
            }
            Op::Truncate(at) => {
                let lowest = pick(at, &model);
                if let Err(e) = l.truncate(lowest) {
                    return Err(TestCaseError::fail(format!("truncate: {e}")));
                }
                let now = l.lowest_offset();
                let next = model.records.len() as u64;
                prop_assert!(now >= model.lowest, "lowest went back");
                prop_assert!(
                    now <= lowest.max(model.lowest).min(next),
                    "truncate({lowest}) removed too much: lowest {now}"
                );
                model.lowest = now;
            }
            Op::SegmentPanic | Op::LogPanic => {
                if matches!(op, Op::SegmentPanic) {
                    l.inject_segment_fault();
                } else {
                    l.inject_log_fault();
                }
                // Past the restart budgets the failure escalates and the
                // partition is gone; the orchestrator restarts the node,
                // which reopens it: nothing acknowledged may be missing.
                if l.escalated() {
                    log.take().unwrap().crash();
                    let l = Partition::open(dir.path(), config(sync)).unwrap();
                    prop_assert!(l.read_only_at_open().is_none(), "a failure is not damage");
                    log = Some(l);
                }
            }
        }
        let l = log.as_ref().unwrap();
        prop_assert_eq!(
            l.next_offset(),
            model.records.len() as u64,
            "every acknowledged record is there, nothing else"
        );
        prop_assert_eq!(l.lowest_offset(), model.lowest);
    }
    let l = log.as_ref().unwrap();
    for offset in model.lowest..model.records.len() as u64 {
        check_read(l, &model, offset)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn the_actor_stack_agrees_with_a_model_under_sync_never(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, SyncPolicy::Never)?;
    }

    #[test]
    fn the_actor_stack_agrees_with_a_model_under_sync_always(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, SyncPolicy::Always)?;
    }
}
