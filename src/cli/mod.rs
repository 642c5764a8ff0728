//! Subcommands of the `proglog` binary.

pub mod storage_bench;
