//! Subcommands of the `proglog` binary.

pub mod bench;
pub mod certs;
pub mod client;
pub mod serve;
pub mod storage_bench;

/// Errors a subcommand reports (printed as `proglog: <error>`, exit 1).
pub type BoxError = Box<dyn std::error::Error>;

/// Runs `fut` on a fresh actix System (capnp-rpc needs a local task set).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    actix_rt::System::new().block_on(fut)
}
