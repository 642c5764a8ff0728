//! SIGKILL of a running `proglog serve` while a client produces, with small
//! segments so kills land during rolls too: after a restart every
//! acknowledged record is there byte for byte, offsets are contiguous, and
//! appends resume at the end. Under the default sync policy and `always`.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use support::{Captured, ChildGuard, EXIT_TIMEOUT, ServeOptions, Server, client, consume_all};

const ROUNDS: usize = 3;

fn value(round: usize, i: usize) -> String {
    // Lengths vary so frames straddle buffer and segment boundaries.
    format!("r{round}-{i}-{}", "x".repeat(i % 97))
}

/// Produces from a `proglog produce --json` fed line by line, until the
/// server is SIGKILLed after a random number of acks; returns the acked
/// (offset, value) pairs.
fn produce_until_killed(
    server: &mut Server,
    round: usize,
    kill_after: usize,
) -> Vec<(u64, String)> {
    let mut cmd = client("produce", &server.endpoint());
    cmd.arg("--json").stdin(Stdio::piped());
    let mut producer = ChildGuard::spawn("proglog produce --json", &mut cmd);
    let mut stdin = producer.take_stdin();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(16 << 10, &mut stdin);
        for i in 0..5_000_000 {
            if writeln!(out, "{}", value(round, i)).is_err() {
                return;
            }
        }
    });
    let (ack_tx, ack_rx) = mpsc::channel::<u64>();
    let producer_out = producer.take_stdout();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(producer_out).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                break;
            };
            let Some(offset) = v["offset"].as_u64() else {
                break;
            };
            if ack_tx.send(offset).is_err() {
                break;
            }
        }
    });
    let mut producer_err = Captured::spawn(producer.take_stderr());
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(offset) => acked.push(offset),
            Err(e) => panic!("only {} acks ({e}): {}", acked.len(), producer_err.text()),
        }
    }
    server.child.sigkill();
    loop {
        match ack_rx.recv_timeout(EXIT_TIMEOUT) {
            Ok(offset) => acked.push(offset),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("producer still acking after SIGKILL"),
        }
    }
    let status = server
        .child
        .wait_exit(EXIT_TIMEOUT)
        .expect("killed server exits");
    assert_eq!(status.code(), None, "killed by a signal");
    let _ = producer.wait_exit(EXIT_TIMEOUT);
    let _ = producer_err.finish();
    // The k-th ack is the k-th line's.
    acked
        .into_iter()
        .enumerate()
        .map(|(k, offset)| (offset, value(round, k)))
        .collect()
}

/// A node with 64 KiB segments (so loads roll many times), and `extra`.
fn small_segments(extra: &[&str]) -> ServeOptions {
    let mut args = vec![
        "--max-segment-bytes",
        "65536",
        "--max-record-bytes",
        "1024",
        "--max-message-bytes",
        "1048576",
    ];
    args.extend_from_slice(extra);
    ServeOptions {
        extra_args: args.into_iter().map(String::from).collect(),
        ..ServeOptions::default()
    }
}

fn kill_and_recover(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(&["--sync", sync, "--min-free-bytes", "0"]);
    let mut rng = rand::rng();
    let mut acked_all: Vec<(u64, String)> = Vec::new();
    for round in 0..ROUNDS {
        let mut server = Server::start_with(dir.path(), &opts);
        let kill_after = rng.random_range(500..8000);
        let acked = produce_until_killed(&mut server, round, kill_after);
        eprintln!(
            "sync={sync} round {round}: {} acks, killed after {kill_after}",
            acked.len()
        );
        acked_all.extend(acked);
    }
    let mut server = Server::start_with(dir.path(), &opts);
    let stored = consume_all(&server);
    let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..stored.len() as u64).collect::<Vec<_>>(),
        "offsets are contiguous after {ROUNDS} kills"
    );
    for (offset, value) in &acked_all {
        let Some((_, got)) = stored.get(*offset as usize) else {
            panic!(
                "acknowledged offset {offset} lost ({} records stored)",
                stored.len()
            );
        };
        assert_eq!(got, value, "value at acknowledged offset {offset}");
    }
    let mut cmd = client("produce", &server.endpoint());
    cmd.arg("after the kills");
    let out = support::run(cmd, None, support::CLIENT_TIMEOUT).success();
    assert_eq!(
        out.stdout.trim(),
        stored.len().to_string(),
        "appends resume at the end"
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn sigkill_under_default_sync_loses_no_acknowledged_record() {
    kill_and_recover("interval");
}

#[test]
fn sigkill_under_sync_always_loses_no_acknowledged_record() {
    kill_and_recover("always");
}

/// Two `proglog produce` streams at once, each with many batches in flight,
/// through many rolls: each producer's offsets come back strictly
/// increasing (line order), and together they cover the log exactly once.
#[test]
fn two_concurrent_producers_each_see_increasing_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(&[]);
    let mut server = Server::start_with(dir.path(), &opts);
    const LINES: usize = 60_000;
    let producers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let input: Vec<u8> = (0..LINES)
                .flat_map(|i| format!("{tag}-{i}\n").into_bytes())
                .collect();
            let cmd = client("produce", &server.endpoint());
            std::thread::spawn(move || support::run(cmd, Some(input), support::CLIENT_TIMEOUT))
        })
        .collect();
    let mut all = Vec::new();
    for (p, handle) in producers.into_iter().enumerate() {
        let out = handle.join().unwrap().success();
        let offsets: Vec<u64> = out.stdout.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(offsets.len(), LINES);
        for w in offsets.windows(2) {
            assert!(w[1] > w[0], "producer {p}: offset {} after {}", w[1], w[0]);
        }
        all.extend(offsets);
    }
    all.sort();
    assert_eq!(all, (0..2 * LINES as u64).collect::<Vec<_>>());
    let stored = consume_all(&server);
    for (offset, value) in stored.iter().take(10) {
        assert!(
            value.starts_with("a-") || value.starts_with("b-"),
            "{offset}: {value}"
        );
    }
    assert!(server.stop().0.success());
}
