//! A partition's durable checkpoint: its recovery point and the offset ranges
//! known to be lost.
//!
//! The **recovery point** is an offset below which every record is known to
//! be on disk (a completed `fdatasync` covered it), as Kafka's
//! recovery-point checkpoint. Recovery may cut automatically only what lies at
//! or beyond it (what the sync policy allowed a power cut to lose); damage
//! below it is corruption, and the partition opens read-only instead.
//!
//! **Lost ranges** are offsets that will never be served: lost to a power cut
//! beyond the recovery point, or cut by an operator's `proglog repair`. They
//! are recorded so the gap they leave between segments is known, not taken
//! for damage at the next start, and so their offsets are never given again.
//!
//! The file is text, written whole through a temporary file, `fsync`, rename
//! and a directory `fsync`, so it is always either the old or the new one:
//!
//! ```text
//! # proglog partition checkpoint
//! recovery-point 1200
//! lost 1000 1100 power-cut
//! ```

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use super::error::{Result, StorageError};

/// File name of the checkpoint inside a partition directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// The temporary file a new checkpoint is written to before the rename.
pub(crate) const CHECKPOINT_TMP: &str = "checkpoint.tmp";

/// Why a range of offsets is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostCause {
    /// Beyond the recovery point at a power cut: the sync policy allowed it.
    PowerCut,
    /// Cut by `proglog repair` (damaged records below the recovery point).
    Repair,
    /// A replica's: its leader's retention had deleted them before this
    /// replica copied them (the replica continues at the leader's lowest).
    LeaderRetention,
}

impl LostCause {
    fn as_str(self) -> &'static str {
        match self {
            LostCause::PowerCut => "power-cut",
            LostCause::Repair => "repair",
            LostCause::LeaderRetention => "leader-retention",
        }
    }
}

/// Offsets `[range.start, range.end)` that will never be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    pub range: Range<u64>,
    pub cause: LostCause,
}

/// What the checkpoint file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record below this offset is known to be durable.
    pub recovery_point: u64,
    /// Known gaps, in offset order.
    pub lost: Vec<LostRange>,
}

impl Checkpoint {
    /// Reads `dir/checkpoint`; a missing file is an empty checkpoint
    /// (recovery point 0: nothing is known synced but what sealed segments say).
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let path = dir.join(CHECKPOINT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
            Err(e) => return Err(StorageError::io("read", &path)(e)),
        };
        let bad = |line: usize, why: &str| {
            StorageError::corruption(&path, line as u64, format!("line {}: {why}", line + 1))
        };
        let mut checkpoint = Checkpoint::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad(n, "not a number"));
            match words.as_slice() {
                ["recovery-point", v] => checkpoint.recovery_point = num(v)?,
                ["lost", from, to, cause] => {
                    let cause = match *cause {
                        "power-cut" => LostCause::PowerCut,
                        "repair" => LostCause::Repair,
                        "leader-retention" => LostCause::LeaderRetention,
                        _ => return Err(bad(n, "unknown cause")),
                    };
                    let range = num(from)?..num(to)?;
                    if range.is_empty() {
                        return Err(bad(n, "empty range"));
                    }
                    checkpoint.lost.push(LostRange { range, cause });
                }
                _ => return Err(bad(n, "unknown entry")),
            }
        }
        checkpoint.lost.sort_by_key(|l| l.range.start);
        Ok(checkpoint)
    }

    /// Writes the checkpoint durably (temporary file, fsync, rename, directory fsync).
    pub fn store(&self, dir: &Path) -> Result<()> {
        let mut text = format!(
            "# proglog partition checkpoint\nrecovery-point {}\n",
            self.recovery_point
        );
        for l in &self.lost {
            text.push_str(&format!(
                "lost {} {} {}\n",
                l.range.start,
                l.range.end,
                l.cause.as_str()
            ));
        }
        let tmp = dir.join(CHECKPOINT_TMP);
        let path = dir.join(CHECKPOINT_FILE);
        let mut file = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
        super::disk::created(&tmp);
        file.write_all(text.as_bytes())
            .map_err(StorageError::io("write", &tmp))?;
        super::disk::sync(&file, &tmp, false).map_err(StorageError::io("fsync", &tmp))?;
        drop(file);
        super::disk::rename(&tmp, &path).map_err(StorageError::io("rename", &path))?;
        sync_dir(dir)
    }

    /// Whether `[from, to)` is covered by one recorded lost range.
    pub fn is_known_lost(&self, from: u64, to: u64) -> bool {
        self.lost
            .iter()
            .any(|l| l.range.start <= from && to <= l.range.end)
    }

    /// The recorded lost range holding `offset`, if any.
    pub fn lost_range_of(&self, offset: u64) -> Option<&LostRange> {
        self.lost.iter().find(|l| l.range.contains(&offset))
    }

    /// Records a lost range (merged with nothing: ranges come from distinct gaps).
    pub fn add_lost(&mut self, range: Range<u64>, cause: LostCause) {
        self.lost.push(LostRange { range, cause });
        self.lost.sort_by_key(|l| l.range.start);
    }
}

/// `fsync`s a directory, so a created, renamed or deleted entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    super::disk::sync_dir(dir).map_err(StorageError::io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Checkpoint::default());
        let mut c = Checkpoint {
            recovery_point: 1200,
            lost: Vec::new(),
        };
        c.add_lost(1000..1100, LostCause::Repair);
        c.add_lost(10..20, LostCause::PowerCut);
        c.add_lost(30..40, LostCause::LeaderRetention);
        c.store(dir.path()).unwrap();
        let back = Checkpoint::load(dir.path()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.lost[0].range, 10..20, "kept in offset order");
        assert!(back.is_known_lost(1000, 1100) && back.is_known_lost(1050, 1060));
        assert!(!back.is_known_lost(999, 1100));
        assert_eq!(back.lost_range_of(15).unwrap().cause, LostCause::PowerCut);
        assert_eq!(
            back.lost_range_of(35).unwrap().cause,
            LostCause::LeaderRetention
        );
    }

    #[test]
    fn a_damaged_checkpoint_is_corruption_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "recovery-point x\n").unwrap();
        assert!(Checkpoint::load(dir.path()).unwrap_err().is_corruption());
    }
}
