//! A partition directory: its lock, its segments in offset order, and the
//! recovery that opens them after a crash or power cut.
//!
//! Recovery never destroys data on its own. Automatically it only cuts what
//! lies beyond the partition's recovery point (see [`super::checkpoint`]):
//! torn tails and segments left empty or short by a power cut, which is what
//! the sync policy allowed to be lost. Damage below the recovery point opens
//! the partition read-only and deletes nothing; cutting it is the operator's
//! explicit [`repair`].

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::checkpoint::{CHECKPOINT_FILE, CHECKPOINT_TMP, Checkpoint, LostCause, sync_dir};
use super::config::LogConfig;
use super::error::{Result, StorageError};
use super::frame::FrameHeader;
use super::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN};
use super::segment::{Damage, Opened, Segment, file_name, scan_frames};
use super::store::Store;

/// Name of the lock file that keeps two processes off one directory.
const LOCK_FILE: &str = "lock";

/// What opening a partition directory found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments open after recovery.
    pub segments: usize,
    /// Segments whose index had to be rebuilt by scanning the store (0 after a
    /// clean close: the open then reads no record data).
    pub recovered_segments: usize,
    /// Bytes of torn tail cut from stores (all beyond the recovery point).
    pub truncated_bytes: u64,
    /// Gaps between segments newly recorded as lost to a power cut.
    pub lost_ranges: usize,
}

/// Holds a log directory's lock (`flock` on its lock file) while alive.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

/// A partition directory opened and recovered: its segments in offset order
/// (the last one is the active segment), its checkpoint, any damage found,
/// and the lock that keeps other processes out.
#[derive(Debug)]
pub struct OpenedDir {
    pub segments: Vec<Segment>,
    pub report: OpenReport,
    pub checkpoint: Checkpoint,
    /// Damage in durable data: when not empty the partition must refuse
    /// writes until `proglog repair` has run.
    pub damage: Vec<Damage>,
    pub lock: DirLock,
}

/// Opens (creating if needed) the partition directory `dir`: takes its lock,
/// refuses foreign files, opens every segment (rebuilding any index a crash
/// left dirty, cutting only torn tails beyond the recovery point), records
/// gaps a power cut left beyond the recovery point, reports damage below it,
/// and creates the first segment of an empty log. Deletes no record.
pub fn open_dir(dir: &Path, config: &LogConfig) -> Result<OpenedDir> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
    let lock = DirLock(lock_dir(dir)?);
    let bases = scan_dir(dir)?;
    let mut checkpoint = Checkpoint::load(dir)?;
    let recovery_point = effective_recovery_point(dir, &bases, &checkpoint)?;
    let mut checkpoint_changed = recovery_point != checkpoint.recovery_point;
    checkpoint.recovery_point = recovery_point;

    let mut report = OpenReport::default();
    let mut damage: Vec<Damage> = Vec::new();
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
    let count = bases.len();
    for (i, &base) in bases.iter().enumerate() {
        let store_path = dir.join(file_name(base, "store"));
        if Store::is_blank(&store_path)? {
            if base < recovery_point {
                damage.push(Damage {
                    path: store_path,
                    position: 0,
                    offset: base,
                    reason: format!(
                        "store file has no header, but every record below offset {recovery_point} was synced"
                    ),
                });
                continue;
            }
            drop(Store::rewrite_blank(&store_path)?);
        }
        let (segment, how) = Segment::open(dir, base, config, i + 1 == count, recovery_point)?;
        match how {
            Opened::Clean => {}
            Opened::Recovered { truncated_bytes } => {
                report.recovered_segments += 1;
                report.truncated_bytes += truncated_bytes;
            }
            Opened::Damaged(d) => {
                report.recovered_segments += 1;
                damage.push(d);
            }
        }
        segments.push(segment);
    }

    // Gaps between segments: lost to a power cut beyond the recovery point
    // (recorded, so they are known from now on), known from the checkpoint,
    // or damage.
    for w in 1..segments.len() {
        let (end, next_base) = (segments[w - 1].next(), segments[w].base());
        if end > next_base {
            return Err(StorageError::corruption(
                segments[w].store_path(),
                0,
                format!(
                    "segment starts at offset {next_base}, but the one before holds records up to {end}"
                ),
            ));
        }
        let gap = end..next_base;
        if gap.is_empty()
            || checkpoint.is_known_lost(gap.start, gap.end)
            || damage.iter().any(|d| gap.contains(&d.offset))
        {
            continue;
        }
        if gap.start >= recovery_point {
            tracing::warn!(dir = %dir.display(), from = gap.start, to = gap.end, "records beyond the recovery point were lost to a power cut: recording the gap");
            checkpoint.add_lost(gap, LostCause::PowerCut);
            checkpoint_changed = true;
            report.lost_ranges += 1;
        } else {
            damage.push(Damage {
                path: segments[w - 1].store_path().to_path_buf(),
                position: segments[w - 1].size_bytes(),
                offset: gap.start,
                reason: format!(
                    "records [{}, {}) are missing, but every record below offset {recovery_point} was synced",
                    gap.start, gap.end
                ),
            });
        }
    }
    if let Some(last) = segments.last()
        && last.next() < recovery_point
        && last.damaged_at().is_none()
    {
        damage.push(Damage {
            path: last.store_path().to_path_buf(),
            position: last.size_bytes(),
            offset: last.next(),
            reason: format!(
                "the log ends at offset {}, but every record below offset {recovery_point} was synced",
                last.next()
            ),
        });
    }
    // What recovery kept is made durable now, so the recovery point can
    // cover the whole log (a later power cut cannot take it back).
    if damage.is_empty()
        && let Some(last) = segments.last_mut()
    {
        if report.recovered_segments > 0 && last.is_writable() {
            last.sync()?;
        }
        if last.next() > checkpoint.recovery_point {
            checkpoint.recovery_point = last.next();
            checkpoint_changed = true;
        }
    }
    if segments.is_empty() {
        // An empty log starts past every offset it ever gave out.
        let base = first_free_offset(config, &checkpoint);
        segments.push(Segment::create(dir, base, config)?);
    }
    if checkpoint_changed {
        checkpoint.store(dir)?;
    }
    report.segments = segments.len();
    if report.recovered_segments > 0 || !damage.is_empty() {
        tracing::info!(dir = %dir.display(), ?report, damaged = damage.len(), "log recovered after an unclean shutdown");
    }
    Ok(OpenedDir {
        segments,
        report,
        checkpoint,
        damage,
        lock,
    })
}

/// The first offset an empty log may use: never one below the recovery
/// point or inside a lost range, so no offset is ever given out twice.
fn first_free_offset(config: &LogConfig, checkpoint: &Checkpoint) -> u64 {
    checkpoint.lost.iter().map(|l| l.range.end).fold(
        config.initial_offset.max(checkpoint.recovery_point),
        u64::max,
    )
}

/// The checkpoint's recovery point, raised to the end of the newest sealed
/// segment: a clean index means its store was synced whole, and so were the
/// segments sealed before it.
fn effective_recovery_point(dir: &Path, bases: &[u64], checkpoint: &Checkpoint) -> Result<u64> {
    let mut point = checkpoint.recovery_point;
    for &base in bases.iter().rev() {
        let index = dir.join(file_name(base, "index"));
        if let Ok(super::index::IndexState::Clean { entries }) =
            super::index::Index::inspect(&index)
        {
            point = point.max(base + entries);
            break;
        }
    }
    Ok(point)
}

/// Takes the directory's lock, so a second process cannot open the same log.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StorageError::io("create lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io("lock", &path)(e)),
    }
}

/// Lists the segment base offsets in `dir`, refusing files that are not ours.
fn scan_dir(dir: &Path) -> Result<Vec<u64>> {
    // base -> (has store, has index)
    let mut found: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("list directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("list directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(StorageError::UnexpectedFile { path: entry.path() });
        };
        if name == LOCK_FILE || name == CHECKPOINT_FILE || name == CHECKPOINT_TMP {
            continue;
        }
        let parsed = name.split_once('.').and_then(|(stem, ext)| {
            let base = (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
                .then(|| stem.parse::<u64>().ok())
                .flatten()?;
            matches!(ext, "store" | "index").then_some((base, ext == "store"))
        });
        let Some((base, is_store)) = parsed else {
            return Err(StorageError::UnexpectedFile { path: entry.path() });
        };
        let slot = found.entry(base).or_default();
        if is_store {
            slot.0 = true;
        } else {
            slot.1 = true;
        }
    }
    let mut bases = Vec::with_capacity(found.len());
    for (base, (has_store, _)) in found {
        if !has_store {
            // A crash between creating a segment's two files: the index holds
            // no records (it is derived from the store), so it goes.
            let path = dir.join(file_name(base, "index"));
            tracing::warn!(index = %path.display(), "index file without its store file: removing it");
            std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            sync_dir(dir)?;
            continue;
        }
        bases.push(base);
    }
    Ok(bases)
}

/// What `repair` found in one segment: its intact frames end at offset
/// `next`, byte `end`, of a store of `size` bytes (`stop` says why).
struct Scanned {
    base: u64,
    next: u64,
    end: u64,
    size: u64,
    stop: String,
    path: PathBuf,
}

/// One cut `repair` makes (or, in a dry run, would make).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairCut {
    /// The store file cut.
    pub path: PathBuf,
    /// Byte position of the cut: everything from here on goes.
    pub position: u64,
    /// Bytes that go.
    pub bytes: u64,
    /// Offsets that will never be served again.
    pub lost: Range<u64>,
    pub reason: String,
}

/// What `repair` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Segments scanned, every frame checked.
    pub segments: usize,
    pub records_checked: u64,
    pub cuts: Vec<RepairCut>,
    /// Offset the log continues at after the repair (never below any offset
    /// it gave out before).
    pub next_offset: u64,
    /// True when nothing was changed (dry run).
    pub dry_run: bool,
}

/// The explicit, destructive repair of a damaged partition directory (the
/// node must be stopped: the directory lock is taken). Every frame of every
/// segment is checked, whatever the index says. Each damaged store is cut at
/// its first bad frame; the records lost are recorded in the checkpoint, and
/// the log continues past every offset it gave out, so none is reused. With
/// `dry_run`, nothing is changed and the report says what would be cut.
pub fn repair(dir: &Path, config: &LogConfig, dry_run: bool) -> Result<RepairReport> {
    config.validate()?;
    if !dir.is_dir() {
        return Err(StorageError::io("open directory", dir)(
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let _lock = lock_dir(dir)?;
    let bases = scan_dir(dir)?;
    let mut checkpoint = Checkpoint::load(dir)?;
    let mut report = RepairReport {
        dry_run,
        ..RepairReport::default()
    };
    let mut scanned: Vec<Scanned> = Vec::new();
    let mut highest_seen = 0u64;
    for &base in &bases {
        let path = dir.join(file_name(base, "store"));
        report.segments += 1;
        if Store::is_blank(&path)? {
            let size = std::fs::metadata(&path)
                .map_err(StorageError::io("stat", &path))?
                .len();
            scanned.push(Scanned {
                base,
                next: base,
                end: 0,
                size,
                stop: "store file has no header".into(),
                path,
            });
            continue;
        }
        let store = Store::open(&path)?;
        let (positions, end, stop) = scan_frames(&store, base)?;
        let next = base + positions.len() as u64;
        report.records_checked += positions.len() as u64;
        highest_seen = highest_seen.max(next);
        if end < store.size() {
            highest_seen = highest_seen.max(highest_frame_after(&store, end, next)?);
        }
        let index = dir.join(file_name(base, "index"));
        if let Ok(super::index::IndexState::Clean { entries }) =
            super::index::Index::inspect(&index)
        {
            highest_seen = highest_seen.max(base + entries);
        }
        let size = store.size();
        scanned.push(Scanned {
            base,
            next,
            end,
            size,
            stop,
            path,
        });
    }
    let resume = highest_seen
        .max(checkpoint.recovery_point)
        .max(first_free_offset(config, &checkpoint));
    for (i, seg) in scanned.iter().enumerate() {
        let upto = scanned.get(i + 1).map_or(resume, |n| n.base);
        let damaged = seg.end < seg.size;
        let lost = seg.next..upto.max(seg.next);
        let known = lost.is_empty() || checkpoint.is_known_lost(lost.start, lost.end);
        if !damaged && known {
            continue;
        }
        let position = if damaged { seg.end } else { seg.size };
        report.cuts.push(RepairCut {
            path: seg.path.clone(),
            position,
            bytes: seg.size - position,
            lost: lost.clone(),
            reason: if damaged {
                seg.stop.clone()
            } else {
                "records missing between segments".into()
            },
        });
    }
    report.next_offset = resume;
    if dry_run || report.cuts.is_empty() {
        return Ok(report);
    }
    for cut in &report.cuts {
        if cut.bytes > 0 {
            let file = OpenOptions::new()
                .write(true)
                .open(&cut.path)
                .map_err(StorageError::io("open", &cut.path))?;
            let keep = if cut.position < FILE_HEADER_LEN as u64 {
                0
            } else {
                cut.position
            };
            file.set_len(keep)
                .map_err(StorageError::io("truncate", &cut.path))?;
            file.sync_all()
                .map_err(StorageError::io("fsync", &cut.path))?;
            // Its index is rebuilt from the cut store at the next open.
            let index = cut.path.with_extension("index");
            match std::fs::remove_file(&index) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &index)(e)),
            }
            if keep == 0 {
                drop(Store::rewrite_blank(&cut.path)?);
            }
        }
        if !cut.lost.is_empty() && !checkpoint.is_known_lost(cut.lost.start, cut.lost.end) {
            checkpoint.add_lost(cut.lost.clone(), LostCause::Repair);
        }
    }
    // The log goes on past every offset it gave out: a new active segment at `resume`.
    let last_next = scanned.last().map_or(resume, |s| s.next);
    if last_next < resume && !bases.contains(&resume) {
        drop(Segment::create(dir, resume, config)?);
    }
    sync_dir(dir)?;
    checkpoint.recovery_point = checkpoint.recovery_point.max(last_next.min(resume));
    checkpoint.store(dir)?;
    tracing::warn!(dir = %dir.display(), cuts = report.cuts.len(), next = resume, "partition repaired");
    Ok(report)
}

/// The offset after the highest intact frame found anywhere past `from` in
/// a damaged store (a byte-by-byte search): offsets up to it were given out
/// and must not be given again. `at_least` if none is found.
fn highest_frame_after(store: &Store, from: u64, at_least: u64) -> Result<u64> {
    let size = store.size();
    let mut bytes = vec![0u8; (size - from) as usize];
    store.read_at(from, &mut bytes)?;
    let mut highest = at_least;
    let mut i = 0usize;
    while i + FRAME_HEADER_LEN <= bytes.len() {
        let Some(head) = bytes[i..].first_chunk::<FRAME_HEADER_LEN>() else {
            break;
        };
        let header = FrameHeader::decode(head);
        let end = i as u64 + header.frame_len();
        if header.len_is_possible()
            && header.offset >= at_least
            && end <= bytes.len() as u64
            && header.matches(&bytes[i + FRAME_HEADER_LEN..end as usize])
        {
            highest = highest.max(header.offset + 1);
            i = end as usize;
        } else {
            i += 1;
        }
    }
    Ok(highest)
}
