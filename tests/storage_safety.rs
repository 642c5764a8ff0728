//! Storage safety through the real `proglog serve`: recovery does not depend
//! on today's settings, damaged durable data turns a partition read-only
//! (never deleted) until `proglog repair`, and a full disk is a typed,
//! retryable error that heals by itself, on a real, small ext4 file system.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{CLIENT_TIMEOUT, ServeOptions, Server, client, consume_all, http_get, proglog, run};

fn opts(extra: &[&str]) -> ServeOptions {
    ServeOptions {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..ServeOptions::default()
    }
}

fn produce(server: &Server, values: &[String]) -> support::Output {
    let mut cmd = client("produce", &server.endpoint());
    cmd.args(values);
    run(cmd, None, CLIENT_TIMEOUT)
}

/// Finding 1 of the storage-safety issue: records written under a larger
/// `--max-record-bytes` stay after a restart with a smaller one, and the
/// next offset is unchanged (after a clean stop and after a SIGKILL).
#[test]
fn lowering_max_record_bytes_and_restarting_keeps_every_record() {
    for kill in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let big = opts(&["--max-record-bytes", "2000"]);
        let mut server = Server::start_with(dir.path(), &big);
        let values: Vec<String> = (0..12)
            .map(|i| format!("{i:02}{}", "v".repeat(998)))
            .collect();
        produce(&server, &values).success();
        if kill {
            server.child.sigkill();
            let _ = server.wait_stopped();
        } else {
            assert!(server.stop().0.success());
        }
        let small = opts(&["--max-record-bytes", "500"]);
        let mut server = Server::start_with(dir.path(), &small);
        let stored = consume_all(&server);
        assert_eq!(stored.len(), 12, "kill={kill}: every record is still there");
        for (i, (offset, value)) in stored.iter().enumerate() {
            assert_eq!((*offset, value), (i as u64, &values[i]));
        }
        let out = produce(&server, &["next".to_string()]).success();
        assert_eq!(
            out.stdout.trim(),
            "12",
            "kill={kill}: offsets are not reused"
        );
        let log = server.stop().1;
        assert!(!log.contains("cutting"), "nothing was cut:\n{log}");
    }
}

/// A flipped bit in a sealed segment: the read reports corruption, the
/// partition turns read-only (writes refused with a typed error, `/readyz`
/// 503), nothing is deleted; `proglog repair --dry-run` shows the cut and
/// changes nothing; `proglog repair` cuts it and the node writes again,
/// after every offset it gave out.
#[test]
fn a_flipped_bit_in_a_sealed_segment_makes_the_partition_read_only_until_repair() {
    let dir = tempfile::tempdir().unwrap();
    let small = opts(&["--max-segment-bytes", "65536", "--max-record-bytes", "1024"]);
    let mut server = Server::start_with(dir.path(), &small);
    let values: Vec<String> = (0..3000)
        .map(|i| format!("record-{i:05}-{}", "x".repeat(40)))
        .collect();
    for chunk in values.chunks(500) {
        produce(&server, chunk).success();
    }
    assert!(server.stop().0.success());
    let pdir = dir.path().join("partitions").join(&server.partition);
    let first = pdir.join(format!("{:020}.store", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let target = 100u64; // a record well inside segment 0
    let frame = 16 + values[0].len();
    let at = 8 + target as usize * frame + 16 + 3;
    bytes[at] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();
    let files_before = std::fs::read_dir(&pdir).unwrap().count();

    let mut server = Server::start_with(dir.path(), &small);
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "0", "--format", "json"]);
    let out = run(cmd, None, CLIENT_TIMEOUT);
    assert!(!out.status.success(), "the damaged record is not served");
    assert!(out.stderr.contains("corrupt"), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().count(),
        target as usize,
        "records before it are"
    );

    let refused = produce(&server, &["after damage".to_string()]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("read-only"), "{}", refused.stderr);
    let ready = http_get(server.http, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("read-only"), "{}", ready.body);
    let metrics = http_get(server.http, "/metrics").unwrap().body;
    assert!(
        metrics.contains("cause=\"readOnly\""),
        "metrics keep the cause"
    );
    assert!(server.stop().0.success());

    // After a restart the damage is found by the open itself.
    let mut server = Server::start_with(dir.path(), &small);
    assert_eq!(http_get(server.http, "/readyz").unwrap().status, 503);
    assert!(server.stop().0.success());
    assert!(
        std::fs::read_dir(&pdir).unwrap().count() >= files_before,
        "nothing deleted"
    );
    assert_eq!(std::fs::read(&first).unwrap(), bytes, "nothing cut");

    let repair = |dry: bool| {
        let mut cmd = proglog();
        cmd.args(["repair", "--data-dir"])
            .arg(dir.path())
            .args(["--partition", &server.partition]);
        if dry {
            cmd.arg("--dry-run");
        }
        run(cmd, None, CLIENT_TIMEOUT).success().stdout
    };
    let dry = repair(true);
    assert!(
        dry.contains("would cut") && dry.contains(&format!("[{target}, ")),
        "{dry}"
    );
    assert_eq!(
        std::fs::read(&first).unwrap(),
        bytes,
        "a dry run changes nothing"
    );
    let done = repair(false);
    assert!(
        done.contains("repaired") && done.contains("continues at offset 3000"),
        "{done}"
    );

    let mut server = Server::start_with(dir.path(), &small);
    assert_eq!(http_get(server.http, "/readyz").unwrap().status, 200);
    let out = produce(&server, &["after repair".to_string()]).success();
    assert_eq!(out.stdout.trim(), "3000", "no offset is reused");
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", &target.to_string()]);
    let lost = run(cmd, None, CLIENT_TIMEOUT);
    assert!(lost.stderr.contains("lost"), "{}", lost.stderr);
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "2999", "--format", "json"]);
    let tail = run(cmd, None, CLIENT_TIMEOUT).success().stdout;
    assert!(tail.contains("record-02999"), "later segments kept: {tail}");
    assert!(server.stop().0.success());
}

/// A loop-mounted ext4 image, unmounted on drop.
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason printed) where loop mounts are impossible.
    fn new(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let ok = |cmd: &mut Command| cmd.status().is_ok_and(|s| s.success());
        let made = ok(Command::new("truncate")
            .arg("-s")
            .arg(format!("{mib}M"))
            .arg(&image))
            && ok(Command::new("mkfs.ext4")
                .args(["-q", "-m", "0"])
                .arg(&image));
        if !made
            || !ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount))
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must be able to loop-mount an ext4 image"
            );
            eprintln!(
                "SKIPPED: cannot make and loop-mount an ext4 image here (needs root and mkfs.ext4)"
            );
            return None;
        }
        Some(SmallDisk { mount, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// A node for a small disk: 1 MiB segments, records of at most 4 KiB, and
/// the free-space floor `floor` (0: off).
fn small_disk_opts(floor: u64) -> ServeOptions {
    let floor = floor.to_string();
    opts(&[
        "--min-free-bytes",
        &floor,
        "--max-segment-bytes",
        "1048576",
        "--max-index-bytes",
        "65536",
        "--max-record-bytes",
        "4096",
    ])
}

/// Disk full on a real 16 MiB file system: no crash, the typed `diskFull`
/// error, reads keep working, appends resume by themselves once space is
/// freed, and nothing acknowledged is lost across a restart.
#[test]
fn a_full_disk_is_a_typed_error_reads_work_and_appends_resume_when_space_returns() {
    let Some(disk) = SmallDisk::new(16) else {
        return;
    };
    // Room the test gives back later.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![7u8; 3 << 20]).unwrap();
    let data = disk.path().join("data");
    let o = small_disk_opts(0);
    let mut server = Server::start_with(&data, &o);
    let value = |i: usize| format!("{i:08}-{}", "d".repeat(1000));
    let mut acked = 0usize;
    let mut full_error = String::new();
    'fill: for round in 0..100 {
        let chunk: Vec<String> = (acked..acked + 200).map(value).collect();
        let out = produce(&server, &chunk);
        for line in out.stdout.lines() {
            assert_eq!(line.trim(), acked.to_string(), "offsets in order");
            acked += 1;
        }
        if !out.status.success() {
            full_error = out.stderr;
            break 'fill;
        }
        assert!(round < 99, "the 16 MiB disk never filled");
    }
    assert!(
        full_error.contains("disk full"),
        "typed error: {full_error}"
    );
    assert!(
        server.child.try_wait().is_none(),
        "the node is still running"
    );
    // Reads work while the disk is full.
    let stored = consume_all(&server);
    assert_eq!(stored.len(), acked, "every acknowledged record reads back");
    let again = produce(&server, &["x".to_string()]);
    assert!(
        !again.status.success() && again.stderr.contains("disk full"),
        "{}",
        again.stderr
    );

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        let out = produce(&server, &[value(acked)]);
        if out.status.success() {
            break out;
        }
        assert!(out.stderr.contains("disk full"), "{}", out.stderr);
        assert!(Instant::now() < deadline, "appends never resumed");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(resumed.stdout.trim(), acked.to_string(), "no gap, no reuse");
    acked += 1;
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");

    let mut server = Server::start_with(&data, &o);
    let stored = consume_all(&server);
    assert_eq!(stored.len(), acked);
    for (i, (offset, v)) in stored.iter().enumerate() {
        assert_eq!((*offset, v), (i as u64, &value(i)));
    }
    assert!(server.stop().0.success());
}

/// Bytes free for the node on the file system of `path` (statvfs's
/// `f_bavail` × `f_frsize`, as the node counts them).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    fields.next().unwrap() * fields.next().unwrap()
}

/// Waits until the file system of `path` shows at least `bytes` free (ext4
/// may count an unlinked file's blocks as free a moment later).
fn await_free(path: &Path, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let free = free_bytes(path);
        if free >= bytes {
            return free;
        }
        assert!(
            Instant::now() < deadline,
            "{free} bytes free, never {bytes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A partition refused at the free-space floor resumes only once there is
/// room above the floor (1 MiB), not at the floor itself, where its next
/// batch would be refused again (a replica's batches were refused, taken
/// back and resumed in a loop). Freeing 512 KiB leaves even a tiny record
/// refused; freeing 2 MiB more lets appends resume, with no gap.
#[test]
fn a_partition_refused_at_the_floor_resumes_only_with_room_above_it() {
    let Some(disk) = SmallDisk::new(16) else {
        return;
    };
    let (small, large) = (
        disk.path().join("filler-512k"),
        disk.path().join("filler-2m"),
    );
    std::fs::write(&small, vec![7u8; 512 << 10]).unwrap();
    std::fs::write(&large, vec![7u8; 2 << 20]).unwrap();
    let data = disk.path().join("data");
    const FLOOR: u64 = 4 << 20;
    let mut server = Server::start_with(&data, &small_disk_opts(FLOOR));
    let value = |i: usize| format!("{i:08}-{}", "f".repeat(1000));
    let mut acked = 0usize;
    loop {
        let chunk: Vec<String> = (acked..acked + 200).map(value).collect();
        let out = produce(&server, &chunk);
        acked += out.stdout.lines().count();
        if !out.status.success() {
            assert!(out.stderr.contains("min-free-bytes"), "{}", out.stderr);
            break;
        }
        assert!(acked < 20_000, "the floor was never reached");
    }
    // Refused: less than one batch (about 200 KiB) above the floor.
    let refused_at = free_bytes(disk.path());
    assert!(refused_at < FLOOR + (256 << 10), "{refused_at} bytes free");

    std::fs::remove_file(&small).unwrap();
    let free = await_free(disk.path(), refused_at + (512 << 10) - (64 << 10));
    assert!(
        free < FLOOR + (1 << 20),
        "{free} bytes free: the check needs less than 1 MiB above the floor"
    );
    let out = produce(&server, &["tiny".to_string()]);
    assert!(
        !out.status.success() && out.stderr.contains("disk full"),
        "still refused with {free} bytes free: {}{}",
        out.stdout,
        out.stderr
    );

    std::fs::remove_file(&large).unwrap();
    await_free(disk.path(), FLOOR + (1 << 20));
    let out = produce(&server, &[value(acked)]).success();
    assert_eq!(out.stdout.trim(), acked.to_string(), "no gap, no reuse");
    assert!(server.stop().0.success());
}

/// The free-space floor refuses produce before the disk is really full.
#[test]
fn the_free_space_floor_refuses_produce_before_the_disk_is_full() {
    let Some(disk) = SmallDisk::new(16) else {
        return;
    };
    let data = disk.path().join("data");
    // The image has ~13 MiB free: a 32 MiB floor is crossed at once.
    let mut server = Server::start_with(&data, &opts(&["--min-free-bytes", "33554432"]));
    let out = produce(&server, &["refused".to_string()]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("disk full") && out.stderr.contains("min-free-bytes"),
        "{}",
        out.stderr
    );
    assert!(server.stop().0.success());
    let mut server = Server::start_with(&data, &opts(&["--min-free-bytes", "1048576"]));
    let out = produce(&server, &["accepted".to_string()]).success();
    assert_eq!(
        out.stdout.trim(),
        "0",
        "the refused record was not appended"
    );
    assert!(server.stop().0.success());
}
