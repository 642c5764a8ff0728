//! What the container image and the fault suite rely on, through the real
//! binary on loopback (no Docker needed): `proglog health` as the health
//! check, seeds given by host name, and `proglog verify` (the fault
//! suite's checker) passing on a 3-node cluster while a node is killed
//! and restarted, and failing clearly when it cannot reach the cluster.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{CLIENT_TIMEOUT, ChildGuard, Lines, ServeOptions, Server, proglog, run};

/// A node of a cluster whose members share one development CA (`tls`).
fn member(dir: &Path, tls: &Path, name: &str, rpc: &str, join: Option<String>) -> Server {
    let mut extra_args = vec!["--tls-dir".to_string(), tls.display().to_string()];
    if let Some(seed) = join {
        extra_args.extend(["--join".to_string(), seed]);
    }
    Server::start_with(
        dir,
        &ServeOptions {
            rpc_addr: rpc.to_string(),
            node_name: Some(name.to_string()),
            extra_args,
        },
    )
}

#[test]
fn health_says_ready_and_live_and_fails_on_a_node_that_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start(dir.path());
    let http = node.http.to_string();

    let ready = run(
        {
            let mut c = proglog();
            c.args(["health", "--http-addr", &http]);
            c
        },
        None,
        CLIENT_TIMEOUT,
    )
    .success();
    assert_eq!(ready.stdout.trim(), "ready");
    let live = run(
        {
            let mut c = proglog();
            c.args(["health", "--live", "--http-addr", &http]);
            c
        },
        None,
        CLIENT_TIMEOUT,
    )
    .success();
    assert!(!live.stdout.trim().is_empty());

    // A port nobody listens on: a non-zero exit and a message that says where.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = run(
        {
            let mut c = proglog();
            c.args(["health", "--http-addr", &gone, "--timeout", "1"]);
            c
        },
        None,
        CLIENT_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("/readyz") && out.stderr.contains(&gone),
        "{}",
        out.stderr
    );
}

#[test]
fn verify_passes_on_three_nodes_joined_by_name_while_one_is_killed_and_restarted() {
    let tls = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = member(dirs[0].path(), tls.path(), "a", "127.0.0.1:0", None);
    // Seeds by host name, as in containers and on Kubernetes.
    let seed = format!("localhost:{}", a.gossip.port());
    let mut b = member(
        dirs[1].path(),
        tls.path(),
        "b",
        "127.0.0.1:0",
        Some(seed.clone()),
    );
    let c = member(
        dirs[2].path(),
        tls.path(),
        "c",
        "127.0.0.1:0",
        Some(seed.clone()),
    );
    let b_rpc = b.rpc.to_string();
    let addrs = [a.rpc.to_string(), b_rpc.clone(), c.rpc.to_string()].join(",");

    // Every node sees the other two before the checker starts.
    for node in [&a, &b, &c] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = run(
                {
                    let mut cmd = proglog();
                    cmd.args(["servers", "--addr", &node.rpc.to_string()])
                        .args(["--tls-dir", &tls.path().display().to_string()]);
                    cmd
                },
                None,
                CLIENT_TIMEOUT,
            );
            let alive = out.stdout.lines().filter(|l| l.contains(" true ")).count();
            if alive == 3 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cluster never formed:\n{}",
                out.stdout
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let mut verify = proglog();
    verify
        .args([
            "verify",
            "--addr",
            &addrs,
            "--duration",
            "8",
            "--writers",
            "3",
        ])
        .args(["--tls-dir", &tls.path().display().to_string()]);
    let mut checker = ChildGuard::spawn("proglog verify", &mut verify);
    let mut stdout = support::Captured::spawn(checker.take_stdout());
    let stderr = Lines::spawn(checker.take_stderr());
    // Once it produces, kill b (no goodbye) and bring it back on its data.
    loop {
        let line = stderr
            .next(Duration::from_secs(60))
            .expect("verify never started producing");
        if line.contains("verify: producing") {
            break;
        }
    }
    b.child.sigkill();
    let _ = b.child.wait_exit(Duration::from_secs(10));
    b = member(dirs[1].path(), tls.path(), "b", &b_rpc, Some(seed));

    let status = checker
        .wait_exit(Duration::from_secs(180))
        .expect("verify ran too long");
    let out = stdout.finish();
    assert!(status.success(), "verify failed:\n{out}");
    let report: serde_json::Value = serde_json::from_str(
        out.lines()
            .find(|l| l.starts_with('{'))
            .expect("a JSON report"),
    )
    .unwrap();
    assert!(report["acknowledged"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["divergent"], 0);
    assert_eq!(report["partitions"], 3);
    assert_eq!(
        report["holders_checked"], 9,
        "3 partitions on 3 holders each"
    );
    assert!(out.contains("verify: OK"), "{out}");
    drop(b);
}

#[test]
fn verify_fails_with_a_clear_message_when_no_node_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = run(
        {
            let mut c = proglog();
            c.args([
                "verify",
                "--insecure",
                "--addr",
                &gone,
                "--settle-timeout",
                "1",
            ]);
            c
        },
        None,
        CLIENT_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains(&gone), "{}", out.stderr);
}
