//! Subcommands of the `proglog` binary.

pub mod bench;
pub mod certs;
pub mod client;
pub mod health;
pub mod repair;
pub mod serve;
pub mod storage_bench;
pub mod verify;

/// Errors a subcommand reports (printed as `proglog: <error>`, exit 1).
pub type BoxError = Box<dyn std::error::Error>;

/// Runs `fut` on a fresh actix System (capnp-rpc needs a local task set).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    actix_rt::System::new().block_on(fut)
}

/// Resident and peak resident memory of a process (`"self"` or a pid), KiB,
/// from `/proc/<pid>/status`.
pub fn memory_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
