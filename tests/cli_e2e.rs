//! End to end through the real `proglog` binary: a node started with
//! `serve`, driven by the `produce`/`consume` subcommands, stopped with
//! SIGTERM and restarted on the same data directory.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{
    CLIENT_TIMEOUT, Captured, ChildGuard, EXIT_TIMEOUT, Lines, ServeOptions, Server, client,
    consume_all, parse_records, proglog, run, serve_args,
};

fn offsets(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn produce_and_consume_through_the_binary_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let partition = server.partition.clone();

    let mut cmd = client("produce", &server.endpoint());
    cmd.args(["a", "b", "c"]);
    let out = run(cmd, None, CLIENT_TIMEOUT).success();
    assert_eq!(offsets(&out.stdout), [0, 1, 2]);

    let mut expected: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i:04}")).collect();
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let out = run(
        client("produce", &server.endpoint()),
        Some(input.into_bytes()),
        CLIENT_TIMEOUT,
    )
    .success();
    assert_eq!(offsets(&out.stdout), (3..1003).collect::<Vec<u64>>());
    expected.extend(lines);
    let expected: Vec<(u64, String)> = (0..).zip(expected).collect();

    assert_eq!(consume_all(&server), expected);
    // A range with --count (consumeBatch): exactly that many, from --from;
    // past the end, what there is.
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "500", "--count", "300", "--format", "json"]);
    let range = parse_records(&run(cmd, None, CLIENT_TIMEOUT).success().stdout);
    assert_eq!(range, expected[500..800]);
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "1000", "--count", "50", "--format", "json"]);
    let tail = parse_records(&run(cmd, None, CLIENT_TIMEOUT).success().stdout);
    assert_eq!(tail, expected[1000..]);

    let (status, _) = server.stop();
    assert_eq!(status.code(), Some(0), "serve exit after SIGTERM");

    let server = Server::start(dir.path());
    assert_eq!(server.partition, partition, "partition id after restart");
    assert_eq!(consume_all(&server), expected);
    let mut cmd = client("produce", &server.endpoint());
    cmd.arg("after restart");
    let out = run(cmd, None, CLIENT_TIMEOUT).success();
    assert_eq!(offsets(&out.stdout), [1003]);
}

/// Runs `cmd` with its standard output's reader gone before (or soon
/// after) the first line: answers its exit status and standard error.
fn with_output_closed(
    name: &str,
    mut cmd: std::process::Command,
    read_first: bool,
) -> (std::process::ExitStatus, String) {
    cmd.stdin(Stdio::null());
    let mut child = ChildGuard::spawn(name, &mut cmd);
    let mut err = Captured::spawn(child.take_stderr());
    let stdout = child.take_stdout();
    if read_first {
        let lines = Lines::spawn(stdout);
        lines.next(CLIENT_TIMEOUT).expect("a first line");
        drop(lines);
    } else {
        drop(stdout);
    }
    let status = child.wait_exit(CLIENT_TIMEOUT).unwrap();
    (status, err.finish())
}

#[test]
fn a_command_whose_output_reader_goes_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let lines: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let out = run(
        client("produce", &server.endpoint()),
        Some(lines.into_bytes()),
        CLIENT_TIMEOUT,
    )
    .success();
    assert_eq!(out.stdout.lines().count(), 20_000);

    // `proglog consume | head -1`: far more than a pipe holds is left to
    // print when the reader goes.
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "0", "--format", "raw"]);
    let (status, stderr) = with_output_closed("proglog consume", cmd, true);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "", "no error, no panic");

    // Lines printed with nobody left to read them (once a panic).
    let mut cmd = client("bench", &server.endpoint());
    cmd.args(["-n", "100", "--no-consume"]);
    let (status, stderr) = with_output_closed("proglog bench", cmd, false);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn consume_follow_prints_records_appended_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--follow", "--format", "raw"]);
    let mut follower = ChildGuard::spawn("proglog consume --follow", &mut cmd);
    let followed = Lines::spawn(follower.take_stdout());
    let mut follower_err = Captured::spawn(follower.take_stderr());

    for round in 0..3 {
        let values: Vec<String> = (0..5).map(|i| format!("round {round} value {i}")).collect();
        let mut cmd = client("produce", &server.endpoint());
        cmd.args(&values);
        run(cmd, None, CLIENT_TIMEOUT).success();
        for value in &values {
            match followed.next(Duration::from_secs(20)) {
                Ok(line) => assert_eq!(&line, value),
                Err(why) => {
                    let exited = follower.wait_exit(Duration::from_millis(100));
                    panic!(
                        "follower gave no line ({why:?}; exit {exited:?}); stderr:\n{}",
                        if exited.is_ok() {
                            follower_err.finish()
                        } else {
                            follower_err.text()
                        }
                    );
                }
            }
        }
    }
    assert_eq!(
        follower.try_wait(),
        None,
        "a follower keeps running at the end of the log"
    );
}

#[test]
fn sigterm_during_a_produce_load_loses_no_acknowledged_record() {
    const MAX_LINES: usize = 2_000_000;
    const ACKS_BEFORE_SIGTERM: usize = 5000;
    let value = |i: usize| format!("load-{i}");

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let mut cmd = client("produce", &server.endpoint());
    cmd.arg("--json").stdin(Stdio::piped());
    let mut producer = ChildGuard::spawn("proglog produce --json", &mut cmd);

    // The writer pumps lines until the producer goes away (or MAX_LINES,
    // so the load is still running when the server is stopped).
    let mut stdin = producer.take_stdin();
    let writer = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(64 << 10, &mut stdin);
        for i in 0..MAX_LINES {
            if writeln!(out, "load-{i}").is_err() {
                return i;
            }
        }
        let _ = out.flush();
        MAX_LINES
    });
    let (ack_tx, ack_rx) = mpsc::channel::<u64>();
    let producer_out = producer.take_stdout();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(producer_out).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON ack");
            let offset = v["offset"].as_u64().expect("offset in ack");
            if ack_tx.send(offset).is_err() {
                break;
            }
        }
    });
    let mut producer_err = Captured::spawn(producer.take_stderr());

    let mut acked: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < ACKS_BEFORE_SIGTERM {
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(offset) => acked.push(offset),
            Err(e) => panic!(
                "only {} acks before SIGTERM ({e}); producer stderr:\n{}",
                acked.len(),
                producer_err.text()
            ),
        }
    }
    server.child.sigterm();
    // Acks printed until the producer notices: collect them all.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(offset) => acked.push(offset),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("producer still printing acks {EXIT_TIMEOUT:?} after SIGTERM")
            }
        }
    }
    let (server_status, log) = server.wait_stopped();
    assert_eq!(
        server_status.code(),
        Some(0),
        "serve exit after SIGTERM under load; stderr:\n{log}"
    );
    let producer_status = producer.wait_exit(EXIT_TIMEOUT).unwrap();
    let written = writer.join().unwrap();
    eprintln!(
        "{} acks of {written} lines written; producer exit {producer_status}: {}",
        acked.len(),
        producer_err.finish().trim()
    );
    assert!(
        written < MAX_LINES,
        "the producer read every line: the load ended before SIGTERM"
    );

    // The k-th ack is the k-th line's: offsets 0, 1, 2, ... on a fresh log.
    assert_eq!(acked, (0..acked.len() as u64).collect::<Vec<_>>());

    let mut server = Server::start(dir.path());
    let stored: BTreeMap<u64, String> = consume_all(&server).into_iter().collect();
    for (k, offset) in acked.iter().enumerate() {
        match stored.get(offset) {
            Some(v) => assert_eq!(v, &value(k), "value at acknowledged offset {offset}"),
            None => panic!(
                "acknowledged offset {offset} lost ({} records after restart)",
                stored.len()
            ),
        }
    }
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0));
    assert!(
        !log.contains("log recovered after an unclean shutdown"),
        "restart after SIGTERM ran crash recovery:\n{log}"
    );
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();

    let mut cmd = proglog();
    cmd.args(serve_args(dir.path(), &ServeOptions::default()))
        .args(["--sync", "sometimes"]);
    let out = run(cmd, None, EXIT_TIMEOUT);
    assert!(!out.status.success(), "--sync sometimes accepted: {out:#?}");
    assert!(out.stderr.contains("sync"), "{out:#?}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let opts = ServeOptions {
        rpc_addr: addr.clone(),
        ..ServeOptions::default()
    };
    let mut cmd = proglog();
    cmd.args(serve_args(dir.path(), &opts));
    let out = run(cmd, None, EXIT_TIMEOUT);
    assert!(
        !out.status.success(),
        "{addr} in use but accepted: {out:#?}"
    );
    assert!(out.stderr.contains(&addr), "{out:#?}");
    drop(taken);
}

#[test]
fn print_config_shows_layered_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proglog.toml");
    std::fs::write(&file, "node-name = \"from-file\"\nmax-connections = 7\n").unwrap();
    let opts = ServeOptions {
        node_name: None,
        ..ServeOptions::default()
    };
    let mut cmd = proglog();
    cmd.args(serve_args(&dir.path().join("data"), &opts))
        .arg("--config")
        .arg(&file)
        .args(["--max-connections", "9", "--print-config"])
        .env("PROGLOG_SYNC", "never");
    let out = run(cmd, None, EXIT_TIMEOUT).success();
    let config: toml::Table = toml::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--print-config is not TOML ({e}):\n{}", out.stdout));
    assert_eq!(config["node-name"].as_str(), Some("from-file"), "{config}");
    assert_eq!(config["max-connections"].as_integer(), Some(9), "{config}");
    assert_eq!(config["sync"].as_str(), Some("never"), "{config}");
}

/// Runs `proglog servers` against `server` until its output satisfies
/// `want` (membership changes arrive by gossip; there is no event to await
/// from outside the process), at most 15 s.
fn servers_until(server: &Server, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(client("servers", &server.endpoint()), None, CLIENT_TIMEOUT)
            .success()
            .stdout;
        if want(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last `servers` output:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `servers` row of `name`, split into columns.
fn server_row(out: &str, name: &str) -> Option<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

#[test]
fn nodes_joined_by_gossip_see_each_other_and_a_departure() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Server::start_with(
        dir_a.path(),
        &ServeOptions {
            node_name: Some("node-a".into()),
            ..ServeOptions::default()
        },
    );
    let mut b = Server::start_with(
        dir_b.path(),
        &ServeOptions {
            node_name: Some("node-b".into()),
            extra_args: vec!["--join".into(), a.gossip.to_string()],
            ..ServeOptions::default()
        },
    );
    let out = servers_until(&a, "node-b to appear on node-a", |out| {
        server_row(out, "node-b").is_some_and(|r| r[2] == "true")
    });
    let row = server_row(&out, "node-b").unwrap();
    assert_eq!(
        row[1],
        b.rpc.to_string(),
        "node-a knows where to dial node-b"
    );
    let local = server_row(&out, "node-a").unwrap();
    assert_eq!(
        (local[2].as_str(), local[3].as_str()),
        ("true", "true"),
        "node-a lists itself, alive and local"
    );
    servers_until(&b, "node-a to appear on node-b", |out| {
        server_row(out, "node-a").is_some_and(|r| r[2] == "true")
    });

    let (status, _) = b.stop();
    assert!(status.success());
    servers_until(&a, "node-b to be reported down after it left", |out| {
        server_row(out, "node-b").is_some_and(|r| r[2] == "false")
    });
}
