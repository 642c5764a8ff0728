//! `proglog repair`: the explicit, destructive repair of a damaged partition.
//!
//! A node never cuts durable data on its own: damage below a partition's
//! recovery point makes it read-only. This command, run by an operator with
//! the node stopped, checks every frame of every segment, cuts each damaged
//! store at its first bad frame, records the lost offsets in the partition's
//! checkpoint (so they are never given out again), and lets the node write
//! again. `--dry-run` prints what would be cut and changes nothing.

use std::path::PathBuf;

use proglog::storage::{LogConfig, repair};

use super::{BoxError, outln};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's data directory (as given to `serve`).
    #[arg(long, default_value = "proglog-data")]
    data_dir: PathBuf,
    /// Id of the partition to repair (see `proglog partitions` or the
    /// directories under <data-dir>/partitions/).
    #[arg(long)]
    partition: String,
    /// Print what would be cut; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> Result<(), BoxError> {
    if args.partition.is_empty()
        || args.partition.contains(['/', '\\'])
        || args.partition.starts_with('.')
    {
        return Err(format!("bad partition id {:?}", args.partition).into());
    }
    let dir = args.data_dir.join("partitions").join(&args.partition);
    if !dir.is_dir() {
        return Err(format!("no partition directory {}", dir.display()).into());
    }
    let report = repair(&dir, &LogConfig::default(), args.dry_run)?;
    outln!(
        "checked {} segments, {} intact records",
        report.segments,
        report.records_checked
    );
    if report.cuts.is_empty() {
        outln!("no damage found: nothing to repair");
        return Ok(());
    }
    let verb = if report.dry_run { "would cut" } else { "cut" };
    for cut in &report.cuts {
        outln!(
            "{verb} {} from byte {} ({} bytes): offsets [{}, {}) lost: {}",
            cut.path.display(),
            cut.position,
            cut.bytes,
            cut.lost.start,
            cut.lost.end,
            cut.reason
        );
    }
    if report.dry_run {
        outln!("dry run: nothing changed; run again without --dry-run to repair");
    } else {
        outln!(
            "repaired: the partition continues at offset {} (no offset is reused)",
            report.next_offset
        );
    }
    Ok(())
}
