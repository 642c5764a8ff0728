//! The log: an ordered run of segments in one directory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::batch::RecordBatch;
use super::config::{LogConfig, SyncPolicy};
use super::error::{Result, StorageError};
use super::frame::FILE_HEADER_LEN;
use super::segment::{Opened, Segment};

/// Name of the lock file that keeps two logs off one directory.
const LOCK_FILE: &str = "lock";

/// What opening a log found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments open after recovery.
    pub segments: usize,
    /// Segments whose index had to be rebuilt by scanning the store (0 after a
    /// clean close: the open then reads no record data).
    pub recovered_segments: usize,
    /// Bytes of torn or invalid tail cut from stores.
    pub truncated_bytes: u64,
    /// Segments deleted because an earlier one lost its tail (offsets must
    /// stay contiguous, as in Kafka's recovery).
    pub dropped_segments: usize,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub removed_segments: usize,
    pub removed_bytes: u64,
}

/// A segmented, append-only log of records addressed by 64-bit offsets.
///
/// Durability: [`Log::append`] puts the record in a write buffer and returns
/// its offset; [`Log::flush`] (and [`Log::append_batch`], which ends with
/// one) hands buffered records to the kernel, from which point they survive a
/// crash or SIGKILL of this process, and applies the [`SyncPolicy`] for
/// power loss. Under [`SyncPolicy::Always`] every `append` flushes and syncs.
/// Acknowledge a record to anyone only after the flush that covers it.
///
/// A write that fails leaves the on-disk tail unknown: the log then refuses
/// further writes ([`StorageError::Closed`]) until it is reopened, which
/// recovers through the same path as a crash.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Ordered by base offset; the last one is the active segment.
    segments: Vec<Segment>,
    /// Held for the log's lifetime: `flock` on the directory's lock file.
    _lock: DirLock,
    last_sync: Instant,
    failed: bool,
    closed: bool,
    opened: OpenReport,
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering from a crash if
    /// the last run did not close it.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        let opened = open_dir(&dir, &config)?;
        Ok(Log {
            dir,
            config,
            segments: opened.segments,
            _lock: opened.lock,
            last_sync: Instant::now(),
            failed: false,
            closed: false,
            opened: opened.report,
        })
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// What opening the log found (recovery work done, if any).
    pub fn open_report(&self) -> &OpenReport {
        &self.opened
    }

    /// Offset of the oldest record still held (equal to [`Log::next_offset`] when empty).
    pub fn lowest_offset(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.config.initial_offset, Segment::base)
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.active().next()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of all store files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size_bytes).sum()
    }

    fn active(&self) -> &Segment {
        // Invariant: `open` leaves at least one segment and nothing removes the last.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    fn check_writable(&self) -> Result<()> {
        if self.failed || self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn check_size(&self, len: usize) -> Result<()> {
        if len > self.config.max_record_bytes as usize {
            return Err(StorageError::RecordTooLarge {
                size: len,
                max: self.config.max_record_bytes,
            });
        }
        Ok(())
    }

    /// Marks the log failed if `r` is an error: the on-disk tail is then unknown.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            tracing::error!(dir = %self.dir.display(), error = %e, "write failed: log refuses writes until reopened");
            self.failed = true;
        }
        r
    }

    /// Appends one record and returns its offset. The record is buffered: it
    /// is durable per the sync policy after the next [`Log::flush`], except
    /// under [`SyncPolicy::Always`], where this call flushes and syncs.
    pub fn append(&mut self, record: &[u8]) -> Result<u64> {
        self.check_writable()?;
        self.check_size(record.len())?;
        let r = self.append_unchecked(record);
        let offset = self.guard(r)?;
        if self.config.sync == SyncPolicy::Always {
            self.flush()?;
        }
        Ok(offset)
    }

    fn append_unchecked(&mut self, record: &[u8]) -> Result<u64> {
        if !self.active().fits(record.len()) {
            self.roll()?;
        }
        self.active_mut().append(record)
    }

    /// Appends records in order and flushes once: returns their offsets.
    /// All or nothing on bad input: a too-large record rejects the whole batch
    /// before anything is written.
    pub fn append_batch<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<Range<u64>> {
        self.check_writable()?;
        for r in records {
            self.check_size(r.as_ref().len())?;
        }
        let first = self.next_offset();
        for record in records {
            let r = self.append_unchecked(record.as_ref());
            self.guard(r)?;
        }
        self.flush()?;
        Ok(first..self.next_offset())
    }

    /// Hands buffered records to the kernel (they then survive a process
    /// crash) and syncs to disk as the sync policy asks.
    pub fn flush(&mut self) -> Result<()> {
        self.check_writable()?;
        let r = self.active_mut().flush();
        self.guard(r)?;
        match self.config.sync {
            SyncPolicy::Always => self.sync(),
            SyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync(),
            SyncPolicy::Interval(_) | SyncPolicy::Never => Ok(()),
        }
    }

    /// Flushes and `fdatasync`s the active segment now, whatever the policy.
    /// (Rolled segments were synced when they were rolled.)
    pub fn sync(&mut self) -> Result<()> {
        self.check_writable()?;
        let r = self.active_mut().sync();
        self.guard(r)?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Under [`SyncPolicy::Interval`], syncs if the interval has passed since
    /// the last sync; for a timer, so an idle log is synced too. Returns
    /// whether it synced.
    pub fn sync_if_due(&mut self) -> Result<bool> {
        match self.config.sync {
            SyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => {
                self.sync()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&mut self) -> Result<()> {
        let next = self.next_offset();
        self.active_mut().seal()?;
        let segment = Segment::create(&self.dir, next, &self.config)?;
        self.segments.push(segment);
        Ok(())
    }

    fn check_range(&self, offset: u64) -> Result<()> {
        let (lowest, next) = (self.lowest_offset(), self.next_offset());
        if offset < lowest || offset >= next {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                lowest,
                next,
            });
        }
        Ok(())
    }

    /// Index of the segment holding `offset` (in range): a binary search.
    fn segment_for(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base() <= offset)
            .saturating_sub(1)
    }

    /// Reads the record at `offset`, checksum verified.
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        self.check_range(offset)?;
        self.segments[self.segment_for(offset)].read(offset)
    }

    /// Reads consecutive records from `from` whose frames (16 bytes of header
    /// each plus the record) fit in about `max_bytes`, always at least one
    /// record. `from == next_offset()` gives an empty batch (the reader is at
    /// the end); a corrupt record ends the batch, and is the error when it is
    /// the first.
    pub fn read_batch(&self, from: u64, max_bytes: usize) -> Result<RecordBatch> {
        let mut batch = RecordBatch::default();
        if from == self.next_offset() && from >= self.lowest_offset() {
            return Ok(batch);
        }
        self.check_range(from)?;
        let mut i = self.segment_for(from);
        let mut offset = from;
        loop {
            let segment = &self.segments[i];
            if batch.is_empty() {
                segment.read_batch_into(offset, u64::MAX, max_bytes, &mut batch, true)?;
            } else {
                match segment.read_batch_into(
                    offset,
                    u64::MAX,
                    max_bytes - batch.buf.len(),
                    &mut batch,
                    false,
                ) {
                    Ok(()) => {}
                    Err(e) if e.is_corruption() => break,
                    Err(e) => return Err(e),
                }
            }
            let reached = batch.next_offset().unwrap_or(offset);
            if reached != segment.next()
                || reached >= self.next_offset()
                || batch.buf.len() >= max_bytes
            {
                break;
            }
            offset = reached;
            i += 1;
        }
        Ok(batch)
    }

    /// Deletes every segment whose records are all below `lowest`; returns how
    /// many. The log keeps whole segments, so [`Log::lowest_offset`] may stay
    /// below `lowest`. If every record is below it, the active segment is
    /// rolled first; offsets continue where they were (never reused).
    pub fn truncate(&mut self, lowest: u64) -> Result<usize> {
        self.check_writable()?;
        let lowest = lowest.min(self.next_offset());
        if !self.active().is_empty() && self.active().next() <= lowest {
            let r = self.roll();
            self.guard(r)?;
        }
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].next() <= lowest {
            self.segments.remove(0).remove()?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Applies the retention settings as of `now`: deletes the oldest whole
    /// segments while the log is over its byte limit, then those whose newest
    /// record is older than the age limit. The active segment always stays.
    pub fn apply_retention(&mut self, now: SystemTime) -> Result<RetentionReport> {
        self.check_writable()?;
        let mut report = RetentionReport::default();
        let mut segments = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            segments.push((s.size_bytes(), s.modified()?));
        }
        let victims = self.config.retention.segments_to_delete(&segments, now);
        for _ in 0..victims {
            self.remove_oldest(&mut report)?;
        }
        Ok(report)
    }

    fn remove_oldest(&mut self, report: &mut RetentionReport) -> Result<()> {
        let segment = self.segments.remove(0);
        report.removed_bytes += segment.size_bytes();
        report.removed_segments += 1;
        tracing::debug!(store = %segment.store_path().display(), "retention removes segment");
        segment.remove()
    }

    /// A reader over the raw frames of the whole log, oldest first (the file
    /// headers are skipped): for copying or inspecting a log byte for byte.
    pub fn reader(&mut self) -> Result<LogReader<'_>> {
        if !self.closed && !self.failed {
            self.flush()?;
        }
        Ok(LogReader {
            log: self,
            segment: 0,
            position: FILE_HEADER_LEN as u64,
        })
    }

    /// Flushes, syncs and seals the active segment (its index is cut to its
    /// entries and marked clean), so the next open does no recovery scan.
    pub fn close(mut self) -> Result<()> {
        self.close_segments()
    }

    fn close_segments(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.failed {
            return Err(StorageError::Closed);
        }
        self.active_mut().seal()
    }

    /// Drops the log the way a killed process would: buffered records are
    /// lost and no segment is sealed. For crash tests only.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.closed = true;
    }
}

impl Drop for Log {
    /// A log dropped without [`Log::close`] is closed here; errors can only be logged.
    fn drop(&mut self) {
        if let Err(e) = self.close_segments() {
            tracing::error!(dir = %self.dir.display(), error = %e, "closing log on drop failed");
        }
    }
}

/// Reads the raw frames of a log in order; see [`Log::reader`].
#[derive(Debug)]
pub struct LogReader<'a> {
    log: &'a Log,
    segment: usize,
    position: u64,
}

impl io::Read for LogReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while let Some(segment) = self.log.segments.get(self.segment) {
            let remaining = segment.size_bytes().saturating_sub(self.position);
            if remaining == 0 {
                self.segment += 1;
                self.position = FILE_HEADER_LEN as u64;
                continue;
            }
            let n = (remaining as usize).min(out.len());
            segment
                .read_raw(self.position, &mut out[..n])
                .map_err(io::Error::other)?;
            self.position += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
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
        if name == LOCK_FILE {
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
            let path = dir.join(super::segment::file_name(base, "index"));
            return Err(StorageError::corruption(
                path,
                0,
                "index file without its store file",
            ));
        }
        bases.push(base);
    }
    Ok(bases)
}

/// Holds a log directory's lock (`flock` on its lock file) while alive.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

/// A log directory opened and recovered: its segments in offset order, the
/// last one writable, and the lock that keeps other processes out.
#[derive(Debug)]
pub struct OpenedDir {
    pub segments: Vec<Segment>,
    pub report: OpenReport,
    pub lock: DirLock,
}

/// Opens (creating if needed) the log directory `dir`: takes its lock,
/// refuses foreign files, opens every segment (rebuilding any index a crash
/// left dirty), drops segments after a gap so offsets stay contiguous, and
/// creates the first segment of an empty log. Shared by [`Log`] and the
/// actor layer, so both recover the same way.
pub fn open_dir(dir: &Path, config: &LogConfig) -> Result<OpenedDir> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
    let lock = DirLock(lock_dir(dir)?);
    let bases = scan_dir(dir)?;

    let mut report = OpenReport::default();
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
    let count = bases.len();
    for (i, base) in bases.into_iter().enumerate() {
        let (segment, how) = Segment::open(dir, base, config, i + 1 == count)?;
        if let Opened::Recovered { truncated_bytes } = how {
            report.recovered_segments += 1;
            report.truncated_bytes += truncated_bytes;
        }
        segments.push(segment);
    }
    // Offsets must be contiguous: a segment that lost its tail makes every
    // later segment unreachable, so they go (Kafka does the same).
    if let Some(gap) = segments.windows(2).position(|w| w[0].next() != w[1].base()) {
        let dropped = segments.split_off(gap + 1);
        tracing::warn!(
            dir = %dir.display(),
            after_offset = segments[gap].next(),
            dropped = dropped.len(),
            "gap in offsets after recovery: deleting later segments"
        );
        report.dropped_segments = dropped.len();
        for s in dropped {
            s.remove()?;
        }
        let base = segments[gap].base();
        drop(segments.pop());
        let (segment, _) = Segment::open(dir, base, config, true)?;
        segments.push(segment);
    }
    if segments.is_empty() {
        segments.push(Segment::create(dir, config.initial_offset, config)?);
    }
    report.segments = segments.len();
    if report.recovered_segments > 0 {
        tracing::info!(dir = %dir.display(), ?report, "log recovered after an unclean shutdown");
    }
    Ok(OpenedDir {
        segments,
        report,
        lock,
    })
}
