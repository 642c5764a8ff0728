//! A segment: one store file and its index, covering offsets `[base, next)`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::batch::RecordBatch;
use super::checkpoint::sync_dir;
use super::config::LogConfig;
use super::error::{Result, StorageError};
use super::frame::{FILE_HEADER_LEN, FRAME_HEADER_LEN, FrameHeader, MAX_RECORD_BYTES};
use super::index::{Index, IndexState};
use super::read::PlannedRead;
use super::records::Frames;
use super::store::Store;

/// Bytes read at a time while rebuilding an index from its store.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// File name of a segment file: the base offset, zero-padded to 20 digits so
/// names sort like offsets.
pub fn file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// How a segment came to be open, for logging and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Its index was clean and agreed with the store: nothing was scanned.
    Clean,
    /// Its index was rebuilt from the store; `truncated_bytes` of torn tail,
    /// all of it beyond the recovery point, were cut from the store.
    Recovered { truncated_bytes: u64 },
    /// A frame that was known durable is damaged: the segment serves the
    /// records before it, read-only, and nothing was cut.
    Damaged(Damage),
}

/// Where and why durable data is damaged. The partition then refuses writes
/// until an operator runs `proglog repair`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file holding the damage.
    pub path: PathBuf,
    /// Byte position of the first bad frame (or of the missing data).
    pub position: u64,
    /// First offset that cannot be served.
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {} (offset {}): {}",
            self.path.display(),
            self.position,
            self.offset,
            self.reason
        )
    }
}

/// One segment, usable on its own: the LogActor gives each to a SegmentActor.
#[derive(Debug)]
pub struct Segment {
    base: u64,
    next: u64,
    store: Store,
    index: Index,
    max_store_bytes: u64,
    /// Only the active (last) segment takes appends.
    writable: bool,
    /// Set when the store holds damaged bytes from here on: reads stop here.
    damaged_at: Option<u64>,
}

impl Segment {
    /// Creates a new, empty, writable segment starting at `base`. A failure
    /// (a full disk above all) leaves no file behind.
    pub fn create(dir: &Path, base: u64, config: &LogConfig) -> Result<Segment> {
        let store_path = dir.join(file_name(base, "store"));
        let index_path = dir.join(file_name(base, "index"));
        let created = Store::create(&store_path).and_then(|store| {
            let index = Index::create(&index_path, config.index_capacity())?;
            Ok((store, index))
        });
        let (store, index) = match created {
            Ok(files) => files,
            Err(e) => {
                // Only remove what this call created: EEXIST means the files are someone's data.
                if !matches!(&e, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
                {
                    let _ = std::fs::remove_file(&index_path);
                    let _ = std::fs::remove_file(&store_path);
                    let _ = sync_dir(dir);
                }
                return Err(e);
            }
        };
        // The new file names must survive a power cut before anything in them is acknowledged.
        sync_dir(dir)?;
        Ok(Segment {
            base,
            next: base,
            store,
            index,
            max_store_bytes: config.max_store_bytes,
            writable: true,
            damaged_at: None,
        })
    }

    /// Opens an existing segment. A clean index whose last entry matches the
    /// end of the store is trusted as is (no scan); otherwise the index is
    /// rebuilt from the store. Every record below `recovery_point`, and every
    /// record of a sealed segment, is known durable: a bad frame there is
    /// [`Opened::Damaged`] and nothing is cut. A torn tail beyond it is what a
    /// crash or power cut leaves, and is cut. Frame validity is judged by the
    /// format alone, never by the current configuration. `writable` opens it
    /// as the active segment.
    pub fn open(
        dir: &Path,
        base: u64,
        config: &LogConfig,
        writable: bool,
        recovery_point: u64,
    ) -> Result<(Segment, Opened)> {
        let store_path = dir.join(file_name(base, "store"));
        let index_path = dir.join(file_name(base, "index"));
        let store = Store::open(&store_path)?;
        let (store, durable_below) = match Index::inspect(&index_path)? {
            IndexState::Clean { entries } => {
                let index = Index::open(&index_path, entries, entries)?;
                let mut segment = Segment {
                    base,
                    next: base + entries,
                    store,
                    index,
                    max_store_bytes: config.max_store_bytes,
                    writable: false,
                    damaged_at: None,
                };
                if segment.tail_is_consistent() {
                    if writable {
                        segment.make_writable(&index_path, config)?;
                    }
                    return Ok((segment, Opened::Clean));
                }
                tracing::warn!(index = %index_path.display(), "index marked clean disagrees with its store: rebuilding it");
                // A sealed segment was synced whole: all of it is durable.
                (segment.store, base + entries)
            }
            IndexState::NeedsRebuild => (store, recovery_point),
        };
        Self::rebuild(store, &index_path, base, config, writable, durable_below)
    }

    /// Reopens the index of a clean segment for appends, with its full
    /// capacity. On a full disk the segment opens as full instead, so the
    /// next append rolls and gets the typed disk-full error there.
    fn make_writable(&mut self, index_path: &Path, config: &LogConfig) -> Result<()> {
        let entries = self.index.entries();
        match Index::open(index_path, entries, config.index_capacity()) {
            Ok(index) => self.index = index,
            Err(e) if e.is_disk_full() => {
                tracing::warn!(index = %index_path.display(), error = %e, "no space to grow the index: the segment takes no more appends");
            }
            Err(e) => return Err(e),
        }
        self.writable = true;
        Ok(())
    }

    /// Rebuilds the index by scanning every frame of the store. At the first
    /// frame that is torn, fails its checksum or is out of sequence: below
    /// `durable_below` it is damage (reported, nothing cut); beyond it, it is
    /// a torn tail and the store is cut there.
    fn rebuild(
        mut store: Store,
        index_path: &Path,
        base: u64,
        config: &LogConfig,
        writable: bool,
        durable_below: u64,
    ) -> Result<(Segment, Opened)> {
        let size = store.size();
        let (positions, end, bad_frame) = scan_frames(&store, base)?;
        let next = base + positions.len() as u64;
        let damaged = next < durable_below && end < size;
        let opened = if damaged {
            let damage = Damage {
                path: store.path().to_path_buf(),
                position: end,
                offset: next,
                reason: format!(
                    "{bad_frame}, but every record below offset {durable_below} was synced to disk"
                ),
            };
            tracing::error!(%damage, "damaged record in durable data: the partition opens read-only");
            Opened::Damaged(damage)
        } else {
            let truncated_bytes = size - end;
            if truncated_bytes > 0 {
                tracing::warn!(
                    store = %store.path().display(),
                    valid_records = positions.len(),
                    truncated_bytes,
                    reason = %bad_frame,
                    "cutting torn tail (beyond the recovery point) from store"
                );
                store.truncate(end)?;
            }
            Opened::Recovered { truncated_bytes }
        };
        let writable = writable && !damaged;
        let exact = positions.len() as u64;
        let index = if writable {
            match Index::create(index_path, config.index_capacity().max(exact)) {
                Err(e) if e.is_disk_full() => {
                    tracing::warn!(index = %index_path.display(), error = %e, "no space for a full index: the segment takes no more appends");
                    Index::create(index_path, exact)?
                }
                other => other?,
            }
        } else {
            Index::create(index_path, exact)?
        };
        let mut segment = Segment {
            base,
            next,
            store,
            index,
            max_store_bytes: config.max_store_bytes,
            writable: true,
            damaged_at: damaged.then_some(end),
        };
        for (i, p) in positions.iter().enumerate() {
            segment.index.make_room()?;
            segment.index.append(i as u32, *p);
        }
        if damaged {
            // The index of the good prefix is kept; the store is left untouched.
            segment.index.seal()?;
            segment.writable = false;
        } else if !writable {
            segment.seal()?;
        }
        Ok((segment, opened))
    }

    /// The O(1) check that lets a clean open skip the scan: the first entry
    /// starts after the header and the last entry is an intact frame of the
    /// right offset that ends exactly where the store ends.
    fn tail_is_consistent(&self) -> bool {
        let n = self.index.entries();
        let size = self.store.size();
        if n == 0 {
            return size == FILE_HEADER_LEN as u64;
        }
        let (Some((_, first)), Some((rel, pos))) = (self.index.entry(0), self.index.entry(n - 1))
        else {
            return false;
        };
        if first != FILE_HEADER_LEN as u64 || rel as u64 != n - 1 || pos >= size {
            return false;
        }
        let frame_len = size - pos;
        if frame_len < FRAME_HEADER_LEN as u64 || frame_len > MAX_FRAME_BYTES {
            return false;
        }
        let mut bytes = vec![0u8; frame_len as usize];
        self.store.read_at(pos, &mut bytes).is_ok()
            && self.store.check_frame(pos, &bytes, self.next - 1).is_ok()
    }

    /// Takes back the records from `next` on (appended, never acknowledged):
    /// the store is cut where they began and the index forgets them. Used
    /// when their write failed, so "not appended" stays true.
    pub fn rollback(&mut self, next: u64) -> Result<()> {
        if next >= self.next || next < self.base {
            return Ok(());
        }
        let i = next - self.base;
        let position = self
            .index
            .entry(i)
            .map_or(self.store.size(), |(_, position)| position);
        self.store.truncate(position)?;
        self.index.truncate_entries(i);
        self.next = next;
        Ok(())
    }

    /// Bytes of the store file as the kernel has it (write buffer excluded).
    pub fn flushed_bytes(&self) -> u64 {
        self.store.flushed_len()
    }

    /// Drops the store's cached pages (after a failed `fdatasync`).
    pub fn drop_cached_pages(&self) {
        self.store.drop_cached_pages();
    }

    /// Where the damage begins, if this segment holds damaged data.
    pub fn damaged_at(&self) -> Option<u64> {
        self.damaged_at
    }

    /// End of the bytes that may be read: the store's end, or the damage.
    fn data_end(&self) -> u64 {
        self.damaged_at.unwrap_or_else(|| self.store.size())
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.base
    }

    /// Records in the segment.
    pub fn len(&self) -> u64 {
        self.next - self.base
    }

    /// Bytes of the store (header included; an index is a small fraction more).
    pub fn size_bytes(&self) -> u64 {
        self.store.size()
    }

    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    /// Whether a record of `len` bytes still fits (store and index limits).
    pub fn fits(&self, len: usize) -> bool {
        self.writable
            && !self.index.is_full()
            && self.store.size() + (FRAME_HEADER_LEN + len) as u64 <= self.max_store_bytes
    }

    /// Appends a record the caller has checked [`Segment::fits`]; returns its offset.
    pub fn append(&mut self, record: &[u8]) -> Result<u64> {
        debug_assert!(self.fits(record.len()));
        let offset = self.next;
        self.index.make_room()?;
        let position = self
            .store
            .append(&FrameHeader::new(offset, record), record)?;
        self.index.append((offset - self.base) as u32, position);
        self.next += 1;
        Ok(offset)
    }

    /// Appends `frames` as they are (a replica's copy of its leader's
    /// frames: checked by [`Frames::check`], so neither re-encoded nor
    /// checksummed again), in one write when they are many. Fails, writing
    /// nothing, when they do not all fit or do not start at
    /// [`Segment::next`]. Returns their offsets.
    pub fn append_frames(&mut self, frames: &Frames) -> Result<std::ops::Range<u64>> {
        let count = frames.len() as u64;
        let fits = self.writable
            && self.index.entries() + count <= self.index.capacity()
            && self.store.size() + frames.bytes() as u64 <= self.max_store_bytes;
        if !fits || frames.first() != self.next {
            return Err(StorageError::InvalidConfig(format!(
                "{count} frames from offset {} do not fit segment {} at its end {}: the LogActor should have rolled it",
                frames.first(),
                self.base,
                self.next
            )));
        }
        self.index.make_room()?;
        let start = self.store.append_run(frames.as_bytes())?;
        for i in 0..frames.len() {
            let relative = (self.next - self.base) as u32;
            self.index.append(relative, start + frames.start(i) as u64);
            self.next += 1;
        }
        Ok(frames.first()..self.next)
    }

    /// Write-behind on or off for this segment's store: on while a replica
    /// is far behind its leader (see `storage::write_behind`).
    pub fn set_write_behind(&mut self, on: bool) {
        self.store.set_write_behind(on);
    }

    /// Hands buffered frames to the kernel. Their index entries may stay
    /// buffered (see `storage::index`): until sealed, the index is rebuilt
    /// from the store after a crash, never trusted.
    pub fn flush(&mut self) -> Result<()> {
        self.store.flush()
    }

    /// The store file, for an `fdatasync` run off the caller's thread (the
    /// SegmentActor syncs on a blocking pool so the RPC thread never waits).
    pub fn sync_handle(&self) -> std::sync::Arc<std::fs::File> {
        self.store.sync_handle()
    }

    /// Whether the segment takes appends (it is the active one).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn sync(&mut self) -> Result<()> {
        self.store.sync()
    }

    /// Position and frame length of record `offset`, from the index.
    fn locate(&self, offset: u64) -> Result<(u64, u64)> {
        let i = offset - self.base;
        let corrupt =
            |reason: String| StorageError::corruption(self.index.path(), i * 12 + 8, reason);
        let (rel, pos) = self
            .index
            .entry(i)
            .ok_or_else(|| corrupt(format!("no index entry for offset {offset}")))?;
        if rel as u64 != i {
            return Err(corrupt(format!(
                "index entry {i} holds relative offset {rel}"
            )));
        }
        if offset >= self.next {
            return Err(corrupt(format!("no index entry for offset {offset}")));
        }
        let end = match self.index.entry(i + 1) {
            Some((_, next_pos)) => next_pos,
            None => self.data_end(),
        };
        let frame_len = end.saturating_sub(pos);
        if frame_len < FRAME_HEADER_LEN as u64 || frame_len > MAX_FRAME_BYTES {
            return Err(corrupt(format!(
                "index gives record {offset} an impossible frame length {frame_len}"
            )));
        }
        Ok((pos, frame_len))
    }

    /// Reads record `offset` (which the caller checked is committed, i.e.
    /// flushed, and in this segment), checksum verified.
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        self.plan_read(offset)?.record_from_disk()
    }

    /// Reads consecutive committed records from `from` (below `until`) whose
    /// frames fit in `max_bytes`, at least one whatever its size, with one
    /// copy. A corrupt record ends the batch before it, or is the error if
    /// it is the first.
    pub fn read_batch(&self, from: u64, until: u64, max_bytes: usize) -> Result<RecordBatch> {
        self.plan_batch(from, until, max_bytes)?.batch_from_disk()
    }

    /// Plans the read of committed record `offset`: the index lookup is done
    /// here, the bytes are read by [`PlannedRead`] on any thread.
    pub fn plan_read(&self, offset: u64) -> Result<PlannedRead> {
        let (position, frame_len) = self.locate(offset)?;
        let (file, path) = self.store.read_handle();
        Ok(PlannedRead {
            file,
            path,
            position,
            len: frame_len as usize,
            first: offset,
            until: offset + 1,
        })
    }

    /// Plans a batch read (see [`Segment::read_batch`]).
    pub fn plan_batch(&self, from: u64, until: u64, max_bytes: usize) -> Result<PlannedRead> {
        let (position, first_len) = self.locate(from)?;
        // Committed records are in the file: never read the write buffer.
        let mut end = self.data_end().min(self.store.flushed_len());
        // Nor past record `until` when it is here: a read of a few records
        // costs their bytes, not `max_bytes` (a range of 64 small records
        // read 256 KiB and used 16 KiB). An index entry that does not fit
        // (before the end of the first frame) leaves the end as it was: the
        // frames are checked as they are read.
        if until > from
            && until < self.next
            && let Some((_, until_at)) = self.index.entry(until - self.base)
            && until_at >= position + first_len
        {
            end = end.min(until_at);
        }
        let want = (max_bytes as u64)
            .max(first_len)
            .min(end.saturating_sub(position));
        let (file, path) = self.store.read_handle();
        Ok(PlannedRead {
            file,
            path,
            position,
            len: want as usize,
            first: from,
            until: until.min(self.next),
        })
    }

    /// Makes the segment read-only and durable: store synced, index cut to
    /// its entries and marked clean, so the next open trusts it without a scan.
    pub fn seal(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.store.sync()?;
        self.index.seal()?;
        self.writable = false;
        Ok(())
    }

    /// Last modification of the store: the age of its newest record.
    pub fn modified(&self) -> Result<SystemTime> {
        std::fs::metadata(self.store.path())
            .and_then(|m| m.modified())
            .map_err(StorageError::io("stat", self.store.path()))
    }

    /// Deletes both files.
    pub fn remove(self) -> Result<()> {
        let store_path: PathBuf = self.store.path().to_path_buf();
        let index_path: PathBuf = self.index.path().to_path_buf();
        drop(self);
        std::fs::remove_file(&store_path).map_err(StorageError::io("remove", &store_path))?;
        std::fs::remove_file(&index_path).map_err(StorageError::io("remove", &index_path))?;
        match store_path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }

    /// Marks the segment suspect after a read found damage in it: its index
    /// is flagged not-clean on disk, so the next open scans the whole store
    /// and finds the damage again instead of trusting the index.
    pub fn mark_suspect(&mut self) -> Result<()> {
        self.index.mark_dirty()
    }
}

/// The largest frame the format admits.
const MAX_FRAME_BYTES: u64 = FRAME_HEADER_LEN as u64 + MAX_RECORD_BYTES as u64;

/// Scans a store's frames from its header on, while each is whole, in
/// sequence from `base` and matches its checksum. Returns the positions of
/// the good frames, where the good bytes end, and what stopped the scan.
pub(crate) fn scan_frames(store: &Store, base: u64) -> Result<(Vec<u64>, u64, String)> {
    let size = store.size();
    let mut positions: Vec<u64> = Vec::new();
    let mut pos = FILE_HEADER_LEN as u64;
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = pos;
    let in_window = |start: u64, len: u64, wstart: u64, wlen: usize| {
        start >= wstart && start + len <= wstart + wlen as u64
    };
    let stop = loop {
        if pos == size {
            break "end of file".to_string();
        }
        if pos + FRAME_HEADER_LEN as u64 > size {
            break format!("torn frame header at byte {pos}");
        }
        if !in_window(pos, FRAME_HEADER_LEN as u64, window_start, window.len()) {
            let n = (size - pos).min(SCAN_CHUNK_BYTES as u64) as usize;
            window.resize(n, 0);
            store.read_at(pos, &mut window)?;
            window_start = pos;
        }
        let at = (pos - window_start) as usize;
        let Some(head) = window[at..].first_chunk::<FRAME_HEADER_LEN>() else {
            break format!("torn frame header at byte {pos}");
        };
        let header = FrameHeader::decode(head);
        let expected = base + positions.len() as u64;
        if !header.len_is_possible() {
            break format!("impossible record length {} at byte {pos}", header.len);
        }
        if header.offset != expected {
            break format!(
                "frame at byte {pos} holds offset {}, expected {expected}",
                header.offset
            );
        }
        if pos + header.frame_len() > size {
            break format!("torn frame of record {expected} at byte {pos}");
        }
        if !in_window(pos, header.frame_len(), window_start, window.len()) {
            let n =
                (size - pos).min(SCAN_CHUNK_BYTES.max(header.frame_len() as usize) as u64) as usize;
            window.resize(n, 0);
            store.read_at(pos, &mut window)?;
            window_start = pos;
        }
        let at = (pos - window_start) as usize;
        let record = &window[at + FRAME_HEADER_LEN..at + header.frame_len() as usize];
        if !header.matches(record) {
            break format!("checksum mismatch in record {expected} at byte {pos}");
        }
        positions.push(pos);
        pos += header.frame_len();
    };
    Ok((positions, pos, stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::frame::INDEX_ENTRY_LEN;

    fn config(max_store_bytes: u64, max_entries: u64) -> LogConfig {
        LogConfig {
            max_store_bytes,
            max_index_bytes: (FILE_HEADER_LEN + INDEX_ENTRY_LEN * max_entries as usize) as u64,
            max_record_bytes: 64,
            ..LogConfig::default()
        }
    }

    #[test]
    fn segment_is_full_at_max_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 16, &config(1 << 20, 3)).unwrap();
        for expected in 16..19 {
            assert!(s.fits(10));
            assert_eq!(s.append(b"0123456789").unwrap(), expected);
        }
        assert!(!s.fits(10), "three entries fill the index");
        s.flush().unwrap(); // reads serve committed (flushed) records only
        assert_eq!(s.read(17).unwrap(), b"0123456789");
    }

    #[test]
    fn a_batch_read_reads_the_bytes_of_the_records_it_may_answer_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0, &config(1 << 20, 100)).unwrap();
        // Record i holds i + 1 bytes: its frame is FRAME_HEADER_LEN + i + 1.
        for i in 0..10u64 {
            s.append(&vec![7u8; i as usize + 1]).unwrap();
        }
        s.flush().unwrap();
        let frames = |r: std::ops::Range<u64>| r.map(|i| FRAME_HEADER_LEN + i as usize + 1).sum();
        let plan = |from, until, max_bytes| s.plan_batch(from, until, max_bytes).unwrap();
        assert_eq!(plan(2, 5, 1 << 20).len, frames(2..5), "records 2, 3, 4");
        assert_eq!(plan(2, 3, 1 << 20).len, frames(2..3), "one record");
        assert_eq!(plan(2, 9, 1 << 20).len, frames(2..9), "the last but one");
        assert_eq!(plan(2, 10, 1 << 20).len, frames(2..10), "to the end");
        assert_eq!(
            plan(2, u64::MAX, 1 << 20).len,
            frames(2..10),
            "past the end"
        );
        assert_eq!(
            plan(2, 9, frames(2..4)).len,
            frames(2..4),
            "max_bytes first"
        );
        assert_eq!(plan(2, 9, 1).len, frames(2..3), "at least one record");
        let batch = plan(2, 5, 1 << 20).batch_from_disk().unwrap();
        let offsets: Vec<u64> = batch.iter().map(|(offset, _)| offset).collect();
        assert_eq!(offsets, vec![2, 3, 4]);

        // A damaged entry for record 5 that points inside record 2's frame
        // does not cut that frame: the read ends where it would have.
        let (at_2, _) = s.locate(2).unwrap();
        s.index.write_pending().unwrap(); // the entries in the file, to damage
        let damaged = crate::storage::frame::encode_entry(5, at_2 + 4);
        let entry_5 = (FILE_HEADER_LEN + 5 * INDEX_ENTRY_LEN) as u64;
        let index = std::fs::OpenOptions::new()
            .write(true)
            .open(s.index.path())
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&index, &damaged, entry_5).unwrap();
        assert_eq!(
            s.index.entry(5),
            Some((5, at_2 + 4)),
            "the map sees the damage"
        );
        let plan = |from, until, max_bytes| s.plan_batch(from, until, max_bytes).unwrap();
        assert_eq!(
            plan(2, 5, 1 << 20).len,
            frames(2..10),
            "to the end, as before"
        );
        assert_eq!(
            plan(2, 4, 1 << 20).len,
            frames(2..4),
            "other bounds unaffected"
        );
    }

    /// A leader's frames for `values` at offsets `first..`.
    fn leader_frames(first: u64, values: &[Vec<u8>]) -> Frames {
        let mut buf = Vec::new();
        for (i, v) in values.iter().enumerate() {
            buf.extend_from_slice(&FrameHeader::new(first + i as u64, v).encode());
            buf.extend_from_slice(v);
        }
        Frames::check(buf, first).unwrap()
    }

    #[test]
    fn frames_are_written_as_they_are_small_runs_buffered_large_ones_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            max_record_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let mut s = Segment::create(dir.path(), 100, &config).unwrap();
        let small: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8; 10]).collect();
        // 300 records of 1 KiB: past a quarter of the write buffer.
        let large: Vec<Vec<u8>> = (0..300).map(|i| vec![i as u8; 1024]).collect();
        assert_eq!(
            s.append_frames(&leader_frames(100, &small)).unwrap(),
            100..103
        );
        assert_eq!(
            s.append_frames(&leader_frames(103, &large)).unwrap(),
            103..403
        );
        s.flush().unwrap();
        assert_eq!(s.read(101).unwrap(), small[1]);
        assert_eq!(s.read(103).unwrap(), large[0]);
        assert_eq!(s.read(402).unwrap(), large[299]);
        // Frames are only ever written at the segment's end.
        let stale = leader_frames(5, &small);
        assert!(s.append_frames(&stale).is_err());
        assert_eq!(s.next(), 403, "nothing written");
        // The bytes are the leader's: reopening checks every frame.
        let end = s.next();
        drop(s);
        let (reopened, opened) = Segment::open(dir.path(), 100, &config, true, 0).unwrap();
        assert!(
            matches!(opened, Opened::Recovered { truncated_bytes: 0 }),
            "{opened:?}"
        );
        assert_eq!(reopened.next(), end);
        assert_eq!(reopened.read(402).unwrap(), large[299]);
    }

    #[test]
    fn frames_that_do_not_all_fit_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0, &config(1 << 20, 3)).unwrap();
        let four: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; 4]).collect();
        assert!(s.append_frames(&leader_frames(0, &four)).is_err());
        assert_eq!(s.next(), 0, "not even the ones that fit");
        assert_eq!(
            s.append_frames(&leader_frames(0, &four[..3])).unwrap(),
            0..3
        );
    }

    #[test]
    fn segment_is_full_at_max_store_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let frame = (FRAME_HEADER_LEN + 10) as u64;
        let max = FILE_HEADER_LEN as u64 + 2 * frame + 5;
        let mut s = Segment::create(dir.path(), 0, &config(max, 100)).unwrap();
        s.append(b"0123456789").unwrap();
        s.append(b"0123456789").unwrap();
        assert!(!s.fits(10), "a third frame would pass max_store_bytes");
        assert!(s.fits(0) == (s.size_bytes() + FRAME_HEADER_LEN as u64 <= max));
    }

    #[test]
    fn sealed_segment_reopens_clean_and_remove_deletes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1 << 20, 100);
        let mut s = Segment::create(dir.path(), 5, &cfg).unwrap();
        s.append(b"a").unwrap();
        s.append(b"bb").unwrap();
        s.seal().unwrap();
        assert!(!s.fits(1));
        drop(s);
        let (s, how) = Segment::open(dir.path(), 5, &cfg, true, 0).unwrap();
        assert_eq!(how, Opened::Clean);
        assert_eq!((s.base(), s.next()), (5, 7));
        assert_eq!(s.read(6).unwrap(), b"bb");
        s.remove().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
