//! Simulated power cuts under the node's partition engine, on a disk that
//! forgets whatever no completed `fsync` covered (and directory entries no
//! directory `fsync` covered), and may keep a torn prefix of the last
//! unsynced writes (`proglog::storage::disk::SimulatedDisk`).
//!
//! A produce workload runs; at a random point the process "dies" and the
//! power is cut; the partition is reopened and checked; this repeats. Under
//! `sync=always` every acknowledged record survives. Under `interval`, every
//! record below the recovery point that reached the disk survives, and
//! whatever is served is exactly what was acknowledged at that offset:
//! nothing torn is ever served. Seeds are printed;
//! `PROGLOG_POWER_SEED=<n> cargo test --test power_cut` replays one.

mod storage_fixtures;

use std::time::Duration;

use proglog::log::LogError;
use proglog::storage::disk::SimulatedDisk;
use proglog::storage::{Checkpoint, LogConfig, StorageError, SyncPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage_fixtures::{Partition, config};

const CUTS_PER_SEED: usize = 4;

fn seeds() -> Vec<u64> {
    match std::env::var("PROGLOG_POWER_SEED") {
        Ok(seed) => vec![seed.parse().expect("PROGLOG_POWER_SEED is a number")],
        Err(_) => (0..24).map(|i| 0x5eed_0000 + i).collect(),
    }
}

fn random_record(rng: &mut StdRng, tag: u64) -> Vec<u8> {
    let len = rng.random_range(1..400);
    let mut r = tag.to_le_bytes().to_vec();
    r.extend((0..len).map(|i| (tag as usize * 7 + i) as u8));
    r
}

/// One seed: several rounds of produce, crash, power cut, reopen, check.
fn run(seed: u64, sync: SyncPolicy) {
    eprintln!("power cut seed {seed} sync={sync}");
    let mut rng = StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("p");
    std::fs::create_dir(&dir).unwrap();
    let disk = SimulatedDisk::attach(&dir).unwrap();
    let cfg = LogConfig {
        max_store_bytes: 4096,
        max_record_bytes: 512,
        ..config(sync)
    };
    // What was acknowledged at each offset (None: recorded lost).
    let mut model: Vec<Option<Vec<u8>>> = Vec::new();
    let mut tag = 0u64;
    for round in 0..CUTS_PER_SEED {
        let log = Partition::open(&dir, cfg.clone()).unwrap();
        assert!(
            log.read_only_at_open().is_none(),
            "seed {seed} round {round}: a power cut is not damage: {:?}",
            log.read_only_at_open()
        );
        let appends = rng.random_range(5..120);
        for _ in 0..appends {
            let n = rng.random_range(1..5);
            let batch: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    tag += 1;
                    random_record(&mut rng, tag)
                })
                .collect();
            let range = log.append_batch(&batch).unwrap();
            assert_eq!(
                range.start,
                model.len() as u64,
                "seed {seed}: offsets in order"
            );
            model.extend(batch.into_iter().map(Some));
            if rng.random_ratio(1, 8) {
                log.idle(rng.random_range(1..6)); // let interval syncs and checkpoints run
            }
        }
        log.crash();
        let cut = disk
            .power_cut(|extra| {
                if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..=extra)
                }
            })
            .unwrap();
        let durable_point = Checkpoint::load(&dir).unwrap().recovery_point;
        eprintln!(
            "  round {round}: {} acknowledged, recovery point {durable_point}, cut {cut:?}",
            model.len()
        );

        let log = Partition::open(&dir, cfg.clone()).unwrap();
        assert!(
            log.read_only_at_open().is_none(),
            "seed {seed} round {round}: reopened read-only after {cut:?}: {:?}",
            log.read_only_at_open()
        );
        let next = log.next_offset();
        if sync == SyncPolicy::Always {
            assert!(
                next >= model.len() as u64,
                "seed {seed} round {round}: acknowledged records lost under sync=always ({next} < {}) {cut:?}",
                model.len()
            );
        }
        assert!(
            next >= durable_point.min(model.len() as u64),
            "seed {seed} round {round}: records below the recovery point {durable_point} lost (next {next})"
        );
        for offset in log.lowest_offset()..next {
            let want = model.get(offset as usize).cloned().flatten();
            match log.read(offset) {
                Ok(bytes) => assert_eq!(
                    Some(bytes),
                    want,
                    "seed {seed} round {round}: offset {offset} serves what was acknowledged there"
                ),
                Err(LogError::Storage(StorageError::RecordsLost { .. })) => {
                    assert!(
                        offset >= durable_point,
                        "seed {seed}: offset {offset} below the recovery point {durable_point} lost"
                    );
                    if let Some(slot) = model.get_mut(offset as usize) {
                        *slot = None;
                    }
                }
                Err(e) => panic!("seed {seed} round {round}: offset {offset}: {e}"),
            }
        }
        // What the cut took may be given out again (it was never durable);
        // the model forgets it.
        model.truncate(next as usize);
        while (model.len() as u64) < next {
            model.push(None);
        }
        log.close().unwrap();
    }
}

#[test]
fn power_cuts_under_sync_always_lose_no_acknowledged_record() {
    for seed in seeds() {
        run(seed, SyncPolicy::Always);
    }
}

#[test]
fn power_cuts_under_sync_interval_lose_only_what_was_not_synced() {
    for seed in seeds() {
        run(seed, SyncPolicy::Interval(Duration::from_millis(2)));
    }
}
