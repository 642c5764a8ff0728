//! The `proglog` command line.

use clap::{Parser, Subcommand};

mod cli;

/// proglog: a distributed commit log.
#[derive(Debug, Parser)]
#[command(name = "proglog", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the storage core on this machine: writes a log of the given
    /// size, reads it back, reopens it cleanly and after a crash, and prints
    /// the figures next to the disk's own write bandwidth.
    StorageBench(cli::storage_bench::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::StorageBench(args) => cli::storage_bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proglog: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
