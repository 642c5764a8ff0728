//! The generated Rust (`schema/log_capnp.rs`) is committed so that building
//! needs no `capnp` binary. This test regenerates it and fails when the
//! committed file differs. It needs the `capnp` compiler (Debian package
//! `capnproto`, plus `libcapnp-dev` for `/capnp/stream.capnp`); `.ci/run`
//! installs both. Without them it fails under CI and explains itself elsewhere.
//!
//! To refresh the committed file after editing the schema:
//! `PROGLOG_REGENERATE_SCHEMA=1 cargo test --test schema_codegen`.

use std::path::Path;

/// Drops what differs between `capnp` versions: the version comment and the
/// embedded encoded-node arrays.
fn normalise(code: &str) -> String {
    let mut out = String::new();
    let mut in_encoded = false;
    for line in code.lines() {
        if line.contains("capnp binary version") {
            continue;
        }
        if line.contains("ENCODED_NODE") && line.contains('[') {
            in_encoded = !line.trim_end().ends_with("];");
            continue;
        }
        if in_encoded {
            if line.trim_end().ends_with("];") {
                in_encoded = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn committed_generated_code_matches_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let has_capnp = std::process::Command::new("capnp")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_capnp {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the capnp compiler (capnproto, libcapnp-dev) for this check"
        );
        eprintln!(
            "capnp is not on PATH: cannot check schema/log_capnp.rs against schema/log.capnp here"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    capnpc::CompilerCommand::new()
        .src_prefix(root.join("schema"))
        .file(root.join("schema/log.capnp"))
        .output_path(out.path())
        .run()
        .expect("capnp compile of schema/log.capnp");
    let fresh = std::fs::read_to_string(out.path().join("log_capnp.rs")).unwrap();
    let committed_path = root.join("schema/log_capnp.rs");
    if std::env::var_os("PROGLOG_REGENERATE_SCHEMA").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        normalise(&fresh) == normalise(&committed),
        "schema/log_capnp.rs is stale: run PROGLOG_REGENERATE_SCHEMA=1 cargo test --test schema_codegen"
    );
}
