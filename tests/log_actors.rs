//! The log as actors: appends, reads, waiting readers, rolls, supervision.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix::Addr;
use proglog::log::*;
use proglog::storage::frame::{FILE_HEADER_LEN, INDEX_ENTRY_LEN};
use proglog::storage::{LogConfig, Retention, StorageError, SyncPolicy};
use proglog::supervision::{InjectPanic, Work};

fn small_config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        max_store_bytes: 1024,
        max_index_bytes: (FILE_HEADER_LEN + 16 * INDEX_ENTRY_LEN) as u64,
        max_record_bytes: 200,
        sync,
        ..LogConfig::default()
    }
}

/// The default segment sizes, no syncs.
fn unsynced_default_config() -> LogConfig {
    LogConfig {
        sync: SyncPolicy::Never,
        ..LogConfig::default()
    }
}

fn record(i: u64) -> Vec<u8> {
    format!("record-{i:06}").into_bytes()
}

fn start(dir: &std::path::Path, config: LogConfig) -> Addr<LogActor> {
    LogActor::open("p0", dir, config).unwrap().start()
}

async fn append(
    log: &Addr<LogActor>,
    records: Vec<Vec<u8>>,
) -> Result<std::ops::Range<u64>, LogError> {
    log.send(Append::batch(records)).await.unwrap()
}

async fn read(log: &Addr<LogActor>, offset: u64) -> Result<Vec<u8>, LogError> {
    log.send(Read { offset }).await.unwrap()
}

#[actix_rt::test]
async fn appended_records_read_back_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    for i in 0..10 {
        assert_eq!(append(&log, vec![record(i)]).await.unwrap(), i..i + 1);
    }
    let batch: Vec<Vec<u8>> = (10..100).map(record).collect();
    assert_eq!(
        append(&log, batch).await.unwrap(),
        10..100,
        "a batch spanning several rolls keeps consecutive offsets"
    );
    let stats = log.send(Stats).await.unwrap();
    assert!(stats.segments > 5, "{stats:?}");
    assert_eq!((stats.lowest_offset, stats.next_offset), (0, 100));
    for i in 0..100 {
        assert_eq!(read(&log, i).await.unwrap(), record(i));
    }
}

#[actix_rt::test]
async fn concurrent_single_appends_get_distinct_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Always));
    let sends: Vec<_> = (0..200).map(|i| log.send(Append::one(record(i)))).collect();
    let mut offsets: Vec<u64> = Vec::new();
    for (i, r) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        let range = r.unwrap().unwrap();
        assert_eq!(range.end - range.start, 1);
        assert_eq!(
            read(&log, range.start).await.unwrap(),
            record(i as u64),
            "mailbox order is offset order"
        );
        offsets.push(range.start);
    }
    offsets.sort();
    assert_eq!(offsets, (0..200).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn a_steady_trickle_of_appends_does_not_hold_back_their_commit() {
    // Appends arriving concurrently make a commit wait some turns for more
    // of them; an endless trickle (two appends a turn) must not make it
    // wait forever: the first append is answered while the trickle goes on.
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), unsynced_default_config());
    // Two appends in one commit: the next commit waits for more.
    let two = futures::future::join(
        log.send(Append::one(record(0))),
        log.send(Append::one(record(1))),
    )
    .await;
    assert_eq!(
        (two.0.unwrap().unwrap(), two.1.unwrap().unwrap()),
        (0..1, 1..2)
    );
    let sent = Rc::new(Cell::new(0u64));
    let first_answered_after = Rc::new(Cell::new(None));
    // The trickle: a task that sends two appends a turn.
    let trickle = {
        let (log, sent, seen) = (log.clone(), sent.clone(), first_answered_after.clone());
        actix_rt::spawn(async move {
            let mut replies = Vec::new();
            for i in 2..1000u64 {
                let reply = log.send(Append::one(record(i)));
                sent.set(i - 1);
                let seen = (i == 2).then(|| (sent.clone(), seen.clone()));
                replies.push(actix_rt::spawn(async move {
                    let offsets = reply.await.unwrap().unwrap();
                    if let Some((sent, seen)) = seen {
                        seen.set(Some(sent.get()));
                    }
                    offsets
                }));
                if i % 2 == 1 {
                    tokio::task::yield_now().await;
                }
            }
            replies
        })
    };
    let replies = trickle.await.unwrap();
    let mut offsets = Vec::new();
    for r in replies {
        offsets.push(r.await.unwrap().start);
    }
    assert_eq!(
        offsets,
        (2..1000).collect::<Vec<_>>(),
        "every append answered, in order"
    );
    let after = first_answered_after.get().unwrap();
    assert!(
        after < 64,
        "the first append was answered only after {after} appends were sent"
    );
}

#[actix_rt::test]
async fn read_batch_streams_in_order_and_is_empty_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, (0..50).map(record).collect()).await.unwrap();
    let mut from = 0;
    let mut seen = Vec::new();
    loop {
        let batch = log
            .send(ReadBatch {
                from,
                max_bytes: 300,
                max_records: u64::MAX,
            })
            .await
            .unwrap()
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for (offset, bytes) in batch.iter() {
            assert_eq!(bytes, &record(offset)[..]);
            seen.push(offset);
        }
        from = batch.next_offset().unwrap();
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    let err = log
        .send(ReadBatch {
            from: 51,
            max_bytes: 300,
            max_records: u64::MAX,
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Storage(StorageError::OffsetOutOfRange { next: 50, .. })
        ),
        "{err}"
    );
}

#[actix_rt::test]
async fn read_batch_reads_at_most_max_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), unsynced_default_config());
    append(&log, (0..50).map(record).collect()).await.unwrap();
    let offsets = |from, max_records| {
        let log = log.clone();
        async move {
            let read = ReadBatch {
                from,
                max_bytes: 1 << 20,
                max_records,
            };
            let batch = log.send(read).await.unwrap().unwrap();
            batch.iter().map(|(offset, _)| offset).collect::<Vec<_>>()
        }
    };
    assert_eq!(offsets(2, 3).await, vec![2, 3, 4]);
    assert_eq!(offsets(2, 1).await, vec![2]);
    assert_eq!(offsets(2, 0).await, vec![2], "at least one record");
    assert_eq!(
        offsets(40, 10).await,
        (40..50).collect::<Vec<_>>(),
        "the limit"
    );
    assert_eq!(
        offsets(40, 11).await,
        (40..50).collect::<Vec<_>>(),
        "one past it"
    );
    assert_eq!(offsets(0, u64::MAX).await, (0..50).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    let err = append(&log, vec![vec![0u8; 201]]).await.unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Storage(StorageError::RecordTooLarge {
                size: 201,
                max: 200
            })
        ),
        "{err}"
    );
    let err = read(&log, 0).await.unwrap_err();
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
    assert_eq!(
        append(&log, vec![record(0)]).await.unwrap(),
        0..1,
        "the partition keeps serving"
    );
}

#[actix_rt::test]
async fn a_waiting_reader_is_woken_by_the_append_that_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, vec![record(0)]).await.unwrap();
    assert_eq!(
        wait_for(&log, 0).await.unwrap(),
        1,
        "already there: answered at once"
    );
    let waiting = wait_for(&log, 1);
    let far = wait_for(&log, 5);
    tokio::pin!(waiting, far);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut waiting)
            .await
            .is_err(),
        "nothing to read yet"
    );
    append(&log, vec![record(1)]).await.unwrap();
    assert_eq!(waiting.await.unwrap(), 2);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut far)
            .await
            .is_err(),
        "offset 5 is not there yet"
    );
    append(&log, (2..6).map(record).collect()).await.unwrap();
    assert_eq!(far.await.unwrap(), 6);
}

/// CPU time the current thread (the test's actix System) has used, from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

#[actix_rt::test]
async fn idle_waiting_readers_cost_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    let waits: Vec<_> = (0..1000).map(|_| wait_for(&log, 0)).collect();
    let all = futures::future::join_all(waits);
    tokio::pin!(all);
    let before = cpu_time();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut all)
            .await
            .is_err()
    );
    let used = cpu_time() - before;
    assert!(
        used <= Duration::from_millis(50),
        "1000 idle readers used {used:?} of CPU in 500 ms"
    );
    append(&log, vec![record(0)]).await.unwrap();
    for r in all.await {
        assert_eq!(r.unwrap(), 1);
    }
}

#[actix_rt::test]
async fn readers_that_gave_up_on_an_idle_partition_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    let live: Vec<_> = (0..10).map(|_| wait_for(&log, 0)).collect();
    for _ in 0..10_000 {
        let gave_up = wait_for(&log, 0);
        // Handled in mailbox order: the wait is registered, then dropped.
        log.send(Stats).await.unwrap();
        drop(gave_up);
    }
    let waiting = log.send(Stats).await.unwrap().waiting_readers;
    assert!(
        waiting <= 64,
        "{waiting} waiting readers kept for 10 live ones after 10,000 gave up"
    );
    append(&log, vec![record(0)]).await.unwrap();
    for r in futures::future::join_all(live).await {
        assert_eq!(r.unwrap(), 1, "the live readers are woken");
    }
}

#[actix_rt::test]
async fn a_panicking_segment_actor_is_restarted_and_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, (0..5).map(record).collect()).await.unwrap();
    let waiting = wait_for(&log, 1_000);
    tokio::pin!(waiting);

    // Appends in flight on both sides of the fault.
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut maybe: Vec<Vec<u8>> = Vec::new();
    let mut refused: Vec<Vec<u8>> = Vec::new();
    let mut failed = 0;
    let before: Vec<_> = (100..120)
        .map(|i| (i, log.send(Append::one(record(i)))))
        .collect();
    log.do_send(InjectSegmentPanic(Work::Handler));
    let after: Vec<_> = (200..220)
        .map(|i| (i, log.send(Append::one(record(i)))))
        .collect();
    for (i, fut) in before.into_iter().chain(after) {
        match fut.await.unwrap() {
            Ok(range) => acked.push((range.start, record(i))),
            // In flight when the actor failed: maybe written.
            Err(e @ LogError::Indeterminate { .. }) => {
                assert_eq!(e.appended(), Appended::Maybe);
                maybe.push(record(i));
                failed += 1;
            }
            // Queued behind the failure and refused: certainly not written.
            Err(e @ LogError::Unavailable { .. }) => {
                assert_eq!(e.appended(), Appended::No);
                refused.push(record(i));
                failed += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(failed > 0, "the fault hit appends in flight");
    assert!(!acked.is_empty());
    let stats = log.send(Stats).await.unwrap();
    assert_eq!(stats.restarts, 1, "{stats:?}");

    // Every acknowledged record reads back byte for byte.
    for (offset, bytes) in &acked {
        assert_eq!(
            &read(&log, *offset).await.unwrap(),
            bytes,
            "offset {offset}"
        );
    }
    for i in 0..5 {
        assert_eq!(read(&log, i).await.unwrap(), record(i));
    }
    // Nothing refused was written; nothing is there twice.
    let next = log.send(Stats).await.unwrap().next_offset;
    let mut seen = std::collections::HashSet::new();
    for offset in 0..next {
        let bytes = read(&log, offset).await.unwrap();
        assert!(
            !refused.contains(&bytes),
            "a refused append was written at {offset}"
        );
        assert!(seen.insert(bytes.clone()), "written twice: {offset}");
        assert!(
            offset < 5 || acked.iter().any(|(_, b)| b == &bytes) || maybe.contains(&bytes),
            "unknown record at {offset}"
        );
    }
    // Appends continue right after the committed end.
    let next = log.send(Stats).await.unwrap().next_offset;
    assert_eq!(
        append(&log, vec![record(999)]).await.unwrap(),
        next..next + 1
    );
    // The waiting reader was kept and is woken when the log reaches it.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut waiting)
            .await
            .is_err()
    );
    let missing = 1_001 - (next + 1);
    append(&log, (0..missing).map(record).collect())
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), 1_001);
}

#[actix_rt::test]
async fn a_segment_that_keeps_failing_escalates_and_its_log_actor_reopens_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, vec![record(0)]).await.unwrap();
    // Three restarts a minute are the segment's budget; the fourth failure
    // escalates to the LogActor, which restarts and reopens everything.
    for _ in 0..4 {
        log.do_send(InjectSegmentPanic(Work::Handler));
        let _ = append(&log, vec![record(1)]).await;
    }
    let stats = log.send(Stats).await.unwrap();
    assert!(stats.restarts >= 4, "{stats:?}");
    // Served again: committed records read back, appends continue at the end.
    assert_eq!(read(&log, 0).await.unwrap(), record(0));
    let next = stats.next_offset;
    assert_eq!(append(&log, vec![record(2)]).await.unwrap(), next..next + 1);
}

#[actix_rt::test]
async fn a_log_actor_that_keeps_failing_escalates_and_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(SyncPolicy::Never);
    let escalated = Rc::new(Cell::new(None::<String>));
    let seen = escalated.clone();
    let parent: proglog::supervision::Parent = Rc::new(move |e| seen.set(Some(e.reason)));
    let log = LogActor::open("p", dir.path(), config.clone())
        .unwrap()
        .start_under(Some(parent));
    let acked = append(&log, (0..10).map(record).collect()).await.unwrap();
    for _ in 0..3 {
        log.do_send(InjectPanic(Work::Handler));
        // Restarted each time: served again.
        assert_eq!(read(&log, 0).await.unwrap(), record(0));
    }
    assert!(escalated.take().is_none());
    log.do_send(InjectPanic(Work::Handler));
    // The fourth failure in a minute spends the budget: escalated, gone.
    let gone = log.send(Stats).await;
    assert!(gone.is_err(), "the actor is gone after escalating");
    let reason = escalated.take().expect("escalated to the parent");
    assert!(reason.contains("restart budget spent"), "{reason}");
    // What the parent (the node's orchestrator, in the end) does next:
    // reopen. Every acknowledged record is there.
    let log = LogActor::open("p", dir.path(), config).unwrap().start();
    for offset in acked {
        assert_eq!(read(&log, offset).await.unwrap(), record(offset));
    }
}

#[actix_rt::test]
async fn close_then_reopen_needs_no_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(
        dir.path(),
        small_config(SyncPolicy::Interval(Duration::from_millis(5))),
    );
    append(&log, (0..40).map(record).collect()).await.unwrap();
    log.send(Close).await.unwrap().unwrap();
    let err = append(&log, vec![record(40)]).await.unwrap_err();
    assert!(matches!(err, LogError::Closed(_)), "{err}");

    let reopened = LogActor::open("p0", dir.path(), small_config(SyncPolicy::Never)).unwrap();
    assert_eq!(reopened.open_report().recovered_segments, 0);
    let log = reopened.start();
    assert_eq!(log.send(Stats).await.unwrap().next_offset, 40);
    assert_eq!(read(&log, 39).await.unwrap(), record(39));
}

#[actix_rt::test]
async fn truncate_and_retention_delete_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention: Retention {
            max_bytes: Some(2048),
            max_age: None,
        },
        ..small_config(SyncPolicy::Never)
    };
    let log = start(dir.path(), config);
    append(&log, (0..200).map(record).collect()).await.unwrap();
    let before = log.send(Stats).await.unwrap();
    // Retention also runs at every roll, so the rolls of these appends may
    // have deleted the old segments already; the explicit pass removes
    // whatever is left over the bound.
    let removed = log.send(ApplyRetention).await.unwrap().unwrap();
    let after = log.send(Stats).await.unwrap();
    assert!(after.size_bytes <= 2048, "{after:?}");
    assert_eq!(after.segments, before.segments - removed);
    assert!(after.lowest_offset > 0);
    let err = read(&log, 0).await.unwrap_err();
    assert!(matches!(
        err,
        LogError::Storage(StorageError::OffsetOutOfRange { .. })
    ));
    let removed = log.send(Truncate { lowest: 190 }).await.unwrap().unwrap();
    assert!(removed > 0);
    let lowest = log.send(Stats).await.unwrap().lowest_offset;
    assert!(
        lowest <= 190 && lowest > after.lowest_offset,
        "lowest {lowest}"
    );
    assert_eq!(read(&log, 190).await.unwrap(), record(190));
}

#[actix_rt::test]
async fn partitions_create_the_own_partition_once_and_reopen_it() {
    let dir = tempfile::tempdir().unwrap();
    let parts = Partitions::open(dir.path(), "node-a", LogConfig::default()).unwrap();
    let id = parts.own_id().to_string();
    assert!(id.starts_with("node-a-"));
    let own = parts.own().unwrap().clone();
    own.send(Append::one(b"hello".to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert!(parts.get("").is_ok(), "the empty id means the node's own");
    assert!(matches!(
        parts.get("nope"),
        Err(LogError::UnknownPartition(_))
    ));
    parts.close_all().await.unwrap();
    drop(parts);

    let parts = Partitions::open(dir.path(), "node-a", LogConfig::default()).unwrap();
    assert_eq!(parts.own_id(), id, "same data directory, same partition");
    assert_eq!(
        parts
            .own()
            .unwrap()
            .send(Read { offset: 0 })
            .await
            .unwrap()
            .unwrap(),
        b"hello"
    );
    parts.close_all().await.unwrap();
    drop(parts);

    assert!(matches!(
        Partitions::open(dir.path(), "node-b", LogConfig::default()),
        Err(StorageError::InvalidConfig(_))
    ));

    // Losing the partition's data means a new incarnation: the id is never reused.
    std::fs::remove_dir_all(dir.path().join("partitions").join(&id)).unwrap();
    let parts = Partitions::open(dir.path(), "node-a", LogConfig::default()).unwrap();
    assert_ne!(parts.own_id(), id);
    parts.close_all().await.unwrap();
}

#[actix_rt::test]
async fn replicas_are_opened_beside_the_own_partition() {
    let dir = tempfile::tempdir().unwrap();
    let parts = Partitions::open(dir.path(), "node-a", LogConfig::default()).unwrap();
    parts.open_replica("node-b-00000000000000ff").unwrap();
    assert!(parts.open_replica("../escape").is_err());
    let ids = parts.ids();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().any(|id| id == "node-b-00000000000000ff"));
    parts.close_all().await.unwrap();
}

#[actix_rt::test]
async fn a_panicking_log_actor_is_restarted_and_reopens_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, (0..30).map(record).collect()).await.unwrap();
    let waiting = wait_for(&log, 40);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut waiting)
            .await
            .is_err()
    );

    // Appends sent right before and after the fault are either answered or
    // refused with Unavailable; the ones sent after it queue until the
    // partition is reopened.
    let before = log.send(Append::one(record(30)));
    log.do_send(InjectPanic(Work::Handler));
    let after: Vec<_> = (0..5).map(|_| log.send(Append::one(record(99)))).collect();
    let mut acked: Vec<u64> = Vec::new();
    match before.await.unwrap() {
        Ok(range) => acked.push(range.start),
        Err(e) => assert!(matches!(e, LogError::Unavailable { .. }), "{e}"),
    }
    for f in after {
        acked.push(f.await.unwrap().unwrap().start);
    }
    let stats = log.send(Stats).await.unwrap();
    assert_eq!(stats.restarts, 1, "{stats:?}");
    for i in 0..30 {
        assert_eq!(
            read(&log, i).await.unwrap(),
            record(i),
            "acknowledged record {i} survives the restart"
        );
    }
    for offset in &acked {
        assert!(read(&log, *offset).await.is_ok());
    }
    // The reader that waited across the restart is still woken.
    let next = log.send(Stats).await.unwrap().next_offset;
    append(&log, (next..41).map(record).collect())
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), 41);
}

/// Two produce streams with many batches in flight through rolls: each
/// stream's batches land in the order it sent them.
#[actix_rt::test]
async fn each_produce_stream_keeps_its_order_through_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    let (a, b) = (new_session(), new_session());
    let mut sends = Vec::new();
    for i in 0..300u64 {
        for (session, tag) in [(a, 'a'), (b, 'b')] {
            let batch: Vec<Vec<u8>> = (0..(1 + i % 4))
                .map(|k| format!("{tag}-{i:04}-{k}").into_bytes())
                .collect();
            sends.push((tag, log.send(Append::in_session(batch, session))));
        }
    }
    let mut last = std::collections::HashMap::new();
    for (tag, send) in sends {
        let range = send.await.unwrap().unwrap();
        if let Some(prev) = last.insert(tag, range.start) {
            assert!(
                range.start > prev,
                "stream {tag}: {} after {prev}",
                range.start
            );
        }
    }
    assert!(
        log.send(Stats).await.unwrap().segments > 10,
        "the load rolled"
    );
}

/// After one batch of a produce stream fails (a full disk), every later
/// batch of that stream already in flight is refused, not appended behind
/// the gap; another stream is not affected once space is back.
#[actix_rt::test]
async fn batches_after_a_failed_batch_of_the_same_stream_are_not_appended() {
    use proglog::storage::disk::{Fault, Point, inject};
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, vec![record(0)]).await.unwrap();
    let session = new_session();
    inject(dir.path(), Point::Write, Fault::Errno(libc::ENOSPC), 1);
    let sends: Vec<_> = (1..40u64)
        .map(|i| log.send(Append::in_session(vec![record(i)], session)))
        .collect();
    let mut failed_at = None;
    for (i, send) in sends.into_iter().enumerate() {
        match send.await.unwrap() {
            Ok(range) => assert!(
                failed_at.is_none(),
                "batch {i} appended at {range:?} after batch {failed_at:?} failed"
            ),
            Err(e) => {
                assert_eq!(e.appended(), Appended::No, "{e}");
                failed_at.get_or_insert(i);
            }
        }
    }
    assert!(failed_at.is_some(), "the fault hit the stream");
    // The stream stays refused; a new stream (the client's retry) goes through.
    let refused = log
        .send(Append::in_session(vec![record(99)], session))
        .await
        .unwrap();
    assert!(refused.is_err());
    let next = log.send(Stats).await.unwrap().next_offset;
    let retried = log
        .send(Append::in_session(vec![record(100)], new_session()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.start, next, "no gap");
}

/// Reads whose bytes are not in the page cache are carried out on the
/// blocking pool (the actor thread never waits for the disk): they return
/// the same records, checksum verified.
#[actix_rt::test]
async fn cold_reads_return_the_same_records() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    append(&log, (0..60).map(record).collect()).await.unwrap();
    log.send(Close).await.unwrap().unwrap();
    let log = start(dir.path(), small_config(SyncPolicy::Never));
    // Evict the stores' pages (clean after the close's sync).
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "store") {
            let file = std::fs::File::open(path).unwrap();
            // SAFETY: an advisory call on a descriptor this test owns.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
    for i in (0..60).rev() {
        assert_eq!(read(&log, i).await.unwrap(), record(i));
    }
    let batch = log
        .send(ReadBatch {
            from: 0,
            max_bytes: 1 << 20,
            max_records: u64::MAX,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(!batch.is_empty());
    for (offset, bytes) in batch.iter() {
        assert_eq!(bytes, &record(offset)[..]);
    }
}
