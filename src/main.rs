//! The `proglog` command line: run a node, talk to one, measure one.

use clap::{Parser, Subcommand};

mod cli;

/// jemalloc, not glibc malloc: capnp-rpc allocates and frees in bursts of
/// calls, which overflow glibc's per-thread cache (BENCHMARKS.md, the race).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: freed pages go back to the OS about a second after
/// they were last used, by a background thread, so a node's RSS falls back
/// once a burst of connections has closed even if nothing else runs
/// (jemalloc's default keeps them 10 s, and only purges while allocating).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Gives jemalloc's free pages back to the OS now (after connections
/// close): this thread's cache of small blocks, then every arena's unused
/// pages. Failures only leave memory cached.
fn release_free_memory() {
    for name in [c"thread.tcache.flush", c"arena.4096.purge"] {
        // SAFETY: both are jemalloc commands that take and return nothing
        // (4096 is MALLCTL_ARENAS_ALL: every arena).
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}

/// proglog: a distributed commit log.
///
/// Start a node with `proglog serve`, then in another terminal
/// `echo hello | proglog produce` and `proglog consume --follow`.
#[derive(Debug, Parser)]
#[command(name = "proglog", version, about, long_about, propagate_version = true)]
struct Cli {
    /// Log level filter (as RUST_LOG, e.g. `info`, `proglog=debug`) [default: info, or RUST_LOG].
    #[arg(long, global = true, env = "PROGLOG_LOG_LEVEL")]
    log_level: Option<String>,
    /// Write logs as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "PROGLOG_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: open its partitions, join the cluster, serve RPC.
    Serve(Box<proglog::config::ServeArgs>),
    /// Append records: the values given, or one per line of standard input.
    Produce(cli::client::ProduceArgs),
    /// Read records of a partition, or follow it as records arrive.
    Consume(cli::client::ConsumeArgs),
    /// List the cluster's nodes as the node sees them.
    Servers(cli::client::ConnectArgs),
    /// List the partitions a node holds, with their offsets.
    Partitions(cli::client::ConnectArgs),
    /// Load generator: produce N records with up to W unacknowledged, then
    /// consume them back; prints records/s, MB/s and latency percentiles.
    Bench(cli::bench::BenchArgs),
    /// Check a running cluster: produce with acks=all and follow every
    /// partition for a while, then verify nothing acknowledged was lost,
    /// holders are identical, offsets contiguous, nothing duplicated.
    Verify(cli::verify::Args),
    /// Exit 0 when the node's /readyz (or, with --live, /healthz) says so:
    /// the container health check (the image has no shell or curl).
    Health(cli::health::Args),
    /// Make a CA, node and client certificates (PEM) for mutual TLS.
    Certs(cli::certs::CertsArgs),
    /// Measure the partition engine on this machine's disk (no server needed).
    StorageBench(cli::storage_bench::Args),
    /// Repair a damaged partition (node stopped): cut damaged data, record
    /// the lost offsets. Destructive; try --dry-run first.
    Repair(cli::repair::Args),
}

fn init_logging(level: Option<&str>, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    proglog::rpc::set_free_memory_release(release_free_memory);
    init_logging(cli.log_level.as_deref(), cli.log_json);
    // A node's failure is never taken for its output's reader going away.
    let client_command = !matches!(cli.command, Command::Serve(_));
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Produce(args) => cli::client::produce(args),
        Command::Consume(args) => cli::client::consume(args),
        Command::Servers(args) => cli::client::servers(args),
        Command::Partitions(args) => cli::client::partitions(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Health(args) => cli::health::run(args),
        Command::Certs(args) => cli::certs::run(args),
        Command::StorageBench(args) => cli::storage_bench::run(args),
        Command::Repair(args) => cli::repair::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if client_command && cli::output_reader_gone(&*e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proglog: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
