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

/// `println!` whose failure (the reader of standard output gone) returns
/// from the enclosing function as an error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use outln;

/// Whether `error` is a write to standard output whose reader has gone
/// (`proglog consume | head`): the command then ends quietly and
/// successfully, as Unix tools do. A broken connection to a node is still
/// an error: only standard output's own pipe, closed at its far end,
/// counts.
pub fn output_reader_gone(error: &(dyn std::error::Error + 'static)) -> bool {
    let broken_pipe = std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    broken_pipe && stdout_pipe_closed()
}

/// A pipe whose reading end is closed polls as an error on its writing end.
fn stdout_pipe_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`, polled without waiting.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLERR != 0
}

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
