//! The fuzzers' seed corpora (`fuzz/corpus/<target>/`), replayed as
//! ordinary regression tests: every input goes through the same entry
//! point its fuzzer drives (`proglog::fuzzing`), which must not panic. An
//! input a long run found worth keeping (or a crash, once fixed) is added
//! to its target's folder and stays tested here.
//!
//! `PROGLOG_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` (re)writes
//! the generated seeds: a valid store and index, real gossip datagrams,
//! RPC sessions.

use std::path::{Path, PathBuf};

use proglog::fuzzing;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Writes the generated seeds when asked; returns every input of the corpus.
fn inputs(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus(target);
    if std::env::var_os("PROGLOG_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds().into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
    let mut all: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    all.sort();
    assert!(!all.is_empty(), "{} has no inputs", dir.display());
    all
}

fn replay<T>(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>, run: fn(&[u8]) -> T) {
    for (path, bytes) in inputs(target, seeds) {
        let outcome = std::panic::catch_unwind(|| {
            run(&bytes);
        });
        assert!(outcome.is_ok(), "{} panicked", path.display());
    }
}

/// A valid log's files, whole and cut short (a torn tail), for both
/// recovery targets.
fn log_files(ext: &str) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    fuzzing::write_valid_log(dir.path(), 20).unwrap();
    let whole = std::fs::read(dir.path().join(proglog::storage::file_name(0, ext))).unwrap();
    let mut seeds = vec![whole.clone()];
    for cut in [whole.len() / 2, whole.len().saturating_sub(3), 8] {
        seeds.push(whole[..cut.min(whole.len())].to_vec());
    }
    seeds.push(Vec::new());
    seeds
}

#[test]
fn segment_recovery_corpus() {
    replay(
        "segment_recovery",
        || log_files("store"),
        fuzzing::segment_recovery,
    );
}

#[test]
fn index_recovery_corpus() {
    replay(
        "index_recovery",
        || log_files("index"),
        fuzzing::index_recovery,
    );
}

#[test]
fn gossip_datagram_corpus() {
    replay(
        "gossip_datagram",
        fuzzing::gossip_seeds,
        fuzzing::gossip_datagram,
    );
}

#[test]
fn rpc_messages_corpus() {
    replay("rpc_messages", fuzzing::rpc_seeds, fuzzing::rpc_messages);
}

#[test]
fn the_generated_seeds_are_what_they_claim() {
    assert!(
        fuzzing::gossip_seeds().len() >= 2,
        "an announce and its answer"
    );
    // A whole store opens with its 20 records.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(proglog::storage::file_name(0, "store")),
        &log_files("store")[0],
    )
    .unwrap();
    let opened = proglog::storage::open_dir(dir.path(), &Default::default()).unwrap();
    assert_eq!(opened.segments.last().unwrap().next(), 20);
    // Each RPC session is answered with more than the abort garbage gets.
    let abort = fuzzing::rpc_messages(b"garbage bytes, not a frame");
    for seed in fuzzing::rpc_seeds() {
        assert!(fuzzing::rpc_messages(&seed) > abort, "{abort}");
    }
}
