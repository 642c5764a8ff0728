//! A client in another language, built from `schema/log.capnp` alone: the
//! Python script `tests/interop/interop.py` (pycapnp) against a real
//! `proglog serve`.
//!
//! The test finds a Python with pycapnp >= 2, or creates a venv under the
//! target directory (`interop-venv`) and installs pycapnp there with pip.
//! It never skips: without Python or PyPI it fails, showing why.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{CLIENT_TIMEOUT, Server, run};

/// pycapnp with the asyncio API (`capnp.run`, `AsyncIoStream`).
const PYCAPNP: &str = "pycapnp>=2,<3";
const CHECK_PYCAPNP: &str =
    "import sys, capnp; sys.exit(0 if int(capnp.__version__.split('.')[0]) >= 2 else 1)";
const PIP_TIMEOUT: Duration = Duration::from_secs(600);

fn has_pycapnp(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", CHECK_PYCAPNP])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The build's target directory (honours CARGO_TARGET_DIR and
/// `build.target-dir`): the parent of the integration tests' tmp dir.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

fn run_step(what: &str, cmd: Command) -> Result<(), String> {
    eprintln!("interop: {what}");
    let out = run(cmd, None, PIP_TIMEOUT);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status, out.stdout, out.stderr
        ))
    }
}

/// A Python interpreter that can `import capnp` (pycapnp >= 2).
fn python_with_pycapnp() -> Result<PathBuf, String> {
    let system = PathBuf::from("python3");
    if has_pycapnp(&system) {
        return Ok(system);
    }
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let venv = target.join("interop-venv");
    let python = venv.join("bin/python");
    let done = venv.join(".pycapnp-installed");
    if done.exists() && has_pycapnp(&python) {
        return Ok(python);
    }
    // One installer at a time (parallel test runs share the target dir);
    // the marker file says an installation completed.
    let lock_path = target.join("interop-venv.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    eprintln!("interop: waiting for {}", lock_path.display());
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    if done.exists() && has_pycapnp(&python) {
        return Ok(python);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("remove stale {}: {e}", venv.display()))?;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "venv"]).arg(&venv);
    run_step(
        &format!(
            "python3 has no pycapnp: creating a venv at {}",
            venv.display()
        ),
        cmd,
    )?;
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        PYCAPNP,
    ]);
    run_step(&format!("pip install {PYCAPNP} into the venv"), cmd)?;
    if !has_pycapnp(&python) {
        return Err(format!(
            "pip installed {PYCAPNP} but {} cannot import it",
            python.display()
        ));
    }
    File::create(&done).map_err(|e| format!("{}: {e}", done.display()))?;
    eprintln!("interop: pycapnp ready in {}", venv.display());
    Ok(python)
}

#[test]
fn python_pycapnp_client_interoperates_with_a_real_server() {
    let python = python_with_pycapnp().unwrap_or_else(|e| panic!("no Python with pycapnp: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/interop.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args(server.endpoint().python_args());
    let out = run(cmd, None, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n--- stdout\n{}--- stderr\n{}--- server log\n{}",
        python.display(),
        script.display(),
        out.status,
        out.stdout,
        out.stderr,
        server.log()
    );
    eprint!("{}", out.stdout);
}
