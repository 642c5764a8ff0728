//! The index file: a header and fixed 12-byte entries, memory-mapped for
//! reading and written with `pwrite`.
//!
//! Appends go to a buffer that is written to the file in one call once it
//! holds [`PENDING_BYTES`] (checked before each append to the store, so it
//! exceeds that by one batch's entries at most), and on seal. Storing
//! entries through the map instead cost a page fault for every new page of
//! the index on the appending thread (the kernel reads or zeroes the page,
//! then marks it writable), and writeback of mapped dirty pages
//! write-protects them again, which flushes the other CPUs' TLBs: up to 6 %
//! and 2 % of the machine while a replica caught up (BENCHMARKS.md, Storage
//! core). The map only reads: the same page-cache pages, so what `pwrite`
//! wrote is what it shows. Until the index is sealed, its file is derived
//! data (an open that finds it not clean rebuilds it from the store), so
//! entries still buffered at a crash are never missed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use super::disk;
use super::error::{Result, StorageError};
use super::frame::{self, FILE_HEADER_LEN, INDEX_ENTRY_LEN, INDEX_FLAG_CLEAN, INDEX_MAGIC};

/// What an index file said about itself when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexState {
    /// Closed cleanly: the file holds exactly this many entries.
    Clean { entries: u64 },
    /// Not closed cleanly (or damaged): its entries must be rebuilt from the store.
    NeedsRebuild,
}

/// Maps a record's offset (relative to the segment base) to its frame's
/// position in the store. While writable the file is grown to its maximum
/// size and mapped whole (read-only); appends are buffered and written in
/// one `pwrite` per [`PENDING_BYTES`] of entries. A clean close writes the
/// rest, truncates the file to the entries it holds and marks it clean.
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    file: File,
    /// Maps the whole file (header included), for reading.
    map: Mmap,
    entries: u64,
    /// The last entries, encoded, not written to the file yet (the ones
    /// before them are: see [`Index::written`]).
    pending: Vec<u8>,
    /// Entries the mapped file has room for.
    capacity: u64,
}

/// Buffered entries are written once they reach this many bytes (5,462
/// entries): one call per 64 KiB of index, however often the store is
/// flushed (a record committed alone costs no second system call).
const PENDING_BYTES: usize = 64 << 10;

impl Index {
    /// Looks at an existing index file without mapping it.
    pub(crate) fn inspect(path: &Path) -> Result<IndexState> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(IndexState::NeedsRebuild);
            }
            Err(e) => return Err(StorageError::io("open", path)(e)),
        };
        let len = file
            .metadata()
            .map_err(StorageError::io("stat", path))?
            .len();
        if len < FILE_HEADER_LEN as u64 {
            return Ok(IndexState::NeedsRebuild);
        }
        let mut header = [0u8; FILE_HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(StorageError::io("read header of", path))?;
        if header.iter().all(|b| *b == 0) {
            // Its size reached the disk before its header did (a power cut
            // while it was created or grown): the index is derived data,
            // rebuild it from the store.
            return Ok(IndexState::NeedsRebuild);
        }
        let flags = frame::parse_file_header(&header, INDEX_MAGIC).map_err(|reason| {
            StorageError::UnsupportedFormat {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        let body = len - FILE_HEADER_LEN as u64;
        if flags & INDEX_FLAG_CLEAN != 0 && body.is_multiple_of(INDEX_ENTRY_LEN as u64) {
            Ok(IndexState::Clean {
                entries: body / INDEX_ENTRY_LEN as u64,
            })
        } else {
            Ok(IndexState::NeedsRebuild)
        }
    }

    /// Creates (or replaces) an index file with no entries, writable, room for `capacity`.
    pub(crate) fn create(path: &Path, capacity: u64) -> Result<Index> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(StorageError::io("create", path))?;
        disk::created(path);
        file.write_all_at(&frame::file_header(INDEX_MAGIC, 0), 0)
            .map_err(StorageError::io("write header of", path))?;
        Self::map(path.to_path_buf(), file, 0, capacity)
    }

    /// Opens a clean index holding `entries`, growing it for appends when
    /// `capacity` is larger. Marks the file not-clean on disk first when it is
    /// to be written, so a crash from now on is detected.
    pub(crate) fn open(path: &Path, entries: u64, capacity: u64) -> Result<Index> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StorageError::io("open", path))?;
        let writable = capacity > entries;
        if writable {
            file.write_all_at(&frame::file_header(INDEX_MAGIC, 0), 0)
                .map_err(StorageError::io("write header of", path))?;
            disk::sync(&file, path, true).map_err(StorageError::io("fdatasync", path))?;
        }
        Self::map(path.to_path_buf(), file, entries, capacity.max(entries))
    }

    fn map(path: PathBuf, file: File, entries: u64, capacity: u64) -> Result<Index> {
        let len = FILE_HEADER_LEN as u64 + capacity * INDEX_ENTRY_LEN as u64;
        let current = file
            .metadata()
            .map_err(StorageError::io("stat", &path))?
            .len();
        if current > len {
            file.set_len(len)
                .map_err(StorageError::io("resize", &path))?;
        } else if current < len {
            disk::allocate(&file, &path, len).map_err(StorageError::io("allocate", &path))?;
        }
        // SAFETY: the file is owned by this process's log (guarded by the
        // directory lock) and is never truncated while mapped: `close` drops
        // the map before it resizes the file.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file) }
            .map_err(StorageError::io("mmap", &path))?;
        Ok(Index {
            path,
            file,
            map,
            entries,
            pending: Vec::new(),
            capacity,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Forgets the entries from `entries` on (appends taken back). Those
    /// already written stay in the file, never read (reads stop at
    /// [`Index::entries`]), until appends overwrite them or a seal cuts them.
    pub(crate) fn truncate_entries(&mut self, entries: u64) {
        let written = self.written();
        self.entries = self.entries.min(entries);
        let keep = self.entries.saturating_sub(written);
        self.pending.truncate(keep as usize * INDEX_ENTRY_LEN);
    }

    /// Entries in the file: those before the buffered ones.
    fn written(&self) -> u64 {
        self.entries - (self.pending.len() / INDEX_ENTRY_LEN) as u64
    }

    /// Entries the index has room for.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries >= self.capacity
    }

    /// Appends an entry (buffered; see [`Index::write_pending`]). The
    /// caller checks [`Index::is_full`] first, and calls
    /// [`Index::make_room`] before it appends to the store: an append never
    /// fails, so a frame in the store always has its entry.
    pub(crate) fn append(&mut self, relative: u32, position: u64) {
        debug_assert!(!self.is_full());
        self.pending
            .extend_from_slice(&frame::encode_entry(relative, position));
        self.entries += 1;
    }

    /// Writes the buffered entries once they reach [`PENDING_BYTES`]: the
    /// buffer stays near that size however rarely the store is flushed.
    pub(crate) fn make_room(&mut self) -> Result<()> {
        if self.pending.len() >= PENDING_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the buffered entries to the file, in one call.
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = FILE_HEADER_LEN as u64 + self.written() * INDEX_ENTRY_LEN as u64;
        self.file
            .write_all_at(&self.pending, at)
            .map_err(StorageError::io("write entries of", &self.path))?;
        self.pending.clear();
        Ok(())
    }

    /// Clears the clean flag on disk (synced), so the next open rebuilds the
    /// index from the store.
    pub(crate) fn mark_dirty(&self) -> Result<()> {
        self.file
            .write_all_at(&frame::file_header(INDEX_MAGIC, 0), 0)
            .map_err(StorageError::io("write header of", &self.path))?;
        disk::sync(&self.file, &self.path, true).map_err(StorageError::io("fdatasync", &self.path))
    }

    /// Entry `i` as (relative offset, store position), if it exists.
    pub(crate) fn entry(&self, i: u64) -> Option<(u32, u64)> {
        if i >= self.entries {
            return None;
        }
        let written = self.written();
        if i >= written {
            let at = (i - written) as usize * INDEX_ENTRY_LEN;
            return Some(frame::decode_entry(&self.pending[at..at + INDEX_ENTRY_LEN]));
        }
        let at = FILE_HEADER_LEN + i as usize * INDEX_ENTRY_LEN;
        Some(frame::decode_entry(&self.map[at..at + INDEX_ENTRY_LEN]))
    }

    /// Writes the entries to disk, cuts the file to exactly its entries and
    /// marks it clean. The map is dropped before the file shrinks (touching a
    /// mapped page past the end of a file raises SIGBUS). The index stays
    /// readable, mapped at its new size, but no longer accepts appends.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.write_pending()?;
        let len = FILE_HEADER_LEN as u64 + self.entries * INDEX_ENTRY_LEN as u64;
        // Swap in an anonymous placeholder so the file map can be dropped.
        let placeholder = MmapMut::map_anon(FILE_HEADER_LEN)
            .and_then(MmapMut::make_read_only)
            .map_err(StorageError::io("mmap", &self.path))?;
        drop(std::mem::replace(&mut self.map, placeholder));
        self.file
            .set_len(len)
            .map_err(StorageError::io("truncate", &self.path))?;
        self.file
            .write_all_at(&frame::file_header(INDEX_MAGIC, INDEX_FLAG_CLEAN), 0)
            .map_err(StorageError::io("write header of", &self.path))?;
        disk::sync(&self.file, &self.path, false).map_err(StorageError::io("fsync", &self.path))?;
        // SAFETY: as in `map`; the file now has exactly `len` bytes.
        self.map = unsafe { MmapOptions::new().len(len as usize).map(&self.file) }
            .map_err(StorageError::io("mmap", &self.path))?;
        self.capacity = self.entries;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_reading_past_the_end_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::create(&dir.path().join("i.index"), 4).unwrap();
        assert_eq!(index.entry(0), None);
        index.append(0, 8);
        index.append(1, 30);
        assert_eq!(index.entry(0), Some((0, 8)));
        assert_eq!(index.entry(1), Some((1, 30)));
        assert_eq!(index.entry(2), None, "EOF");
    }

    #[test]
    fn index_is_grown_while_open_and_cut_to_its_entries_on_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.index");
        let mut index = Index::create(&path, 100).unwrap();
        let grown = (FILE_HEADER_LEN + 100 * INDEX_ENTRY_LEN) as u64;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), grown);
        assert_eq!(
            Index::inspect(&path).unwrap(),
            IndexState::NeedsRebuild,
            "open index is not clean"
        );
        index.append(0, 8);
        index.append(1, 40);
        index.seal().unwrap();
        assert!(index.is_full(), "a sealed index takes no appends");
        assert_eq!(index.entry(1), Some((1, 40)), "still readable after seal");
        let real = (FILE_HEADER_LEN + 2 * INDEX_ENTRY_LEN) as u64;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), real);
        drop(index);
        assert_eq!(
            Index::inspect(&path).unwrap(),
            IndexState::Clean { entries: 2 }
        );
        let reopened = Index::open(&path, 2, 10).unwrap();
        assert_eq!(reopened.entry(1), Some((1, 40)));
        assert_eq!(reopened.entries(), 2);
        assert_eq!(
            Index::inspect(&path).unwrap(),
            IndexState::NeedsRebuild,
            "reopened for writing: dirty on disk"
        );
    }

    /// Entry `i` as the file holds it (not the buffer, not the map).
    fn entry_on_file(path: &Path, i: u64) -> (u32, u64) {
        let mut bytes = [0u8; INDEX_ENTRY_LEN];
        File::open(path)
            .unwrap()
            .read_exact_at(
                &mut bytes,
                FILE_HEADER_LEN as u64 + i * INDEX_ENTRY_LEN as u64,
            )
            .unwrap();
        frame::decode_entry(&bytes)
    }

    #[test]
    fn entries_are_buffered_until_written_and_read_back_from_either() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.index");
        let mut index = Index::create(&path, 10).unwrap();
        index.append(0, 8);
        index.append(1, 30);
        assert_eq!(
            entry_on_file(&path, 1),
            (0, 0),
            "buffered, not in the file yet"
        );
        assert_eq!(index.entry(1), Some((1, 30)), "read from the buffer");
        index.write_pending().unwrap();
        assert_eq!(entry_on_file(&path, 0), (0, 8));
        assert_eq!(entry_on_file(&path, 1), (1, 30));
        index.append(2, 51);
        assert_eq!(index.entry(0), Some((0, 8)), "read through the map");
        assert_eq!(index.entry(2), Some((2, 51)), "read from the buffer");
        index.write_pending().unwrap();
        assert_eq!(entry_on_file(&path, 2), (2, 51), "written after the others");
    }

    #[test]
    fn make_room_writes_the_buffer_once_it_holds_its_limit_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.index");
        let limit = (PENDING_BYTES / INDEX_ENTRY_LEN) as u64 + 1;
        let mut index = Index::create(&path, limit + 1).unwrap();
        let below = (PENDING_BYTES - 1) / INDEX_ENTRY_LEN;
        for i in 0..below as u64 {
            index.append(i as u32, 8 + i);
        }
        index.make_room().unwrap();
        assert_eq!(
            entry_on_file(&path, 0),
            (0, 0),
            "one entry short of the limit: kept"
        );
        for i in below as u64..limit {
            index.append(i as u32, 8 + i);
        }
        assert!(index.pending.len() >= PENDING_BYTES);
        index.make_room().unwrap();
        assert!(index.pending.is_empty());
        assert_eq!(
            entry_on_file(&path, limit - 1),
            ((limit - 1) as u32, 8 + limit - 1)
        );
    }

    #[test]
    fn entries_taken_back_are_forgotten_whether_written_or_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.index");
        let mut index = Index::create(&path, 10).unwrap();
        for i in 0..4 {
            index.append(i, 8 + 10 * i as u64);
        }
        index.write_pending().unwrap();
        index.append(4, 48);
        index.append(5, 58);
        // Back into the buffered ones: the written ones stay.
        index.truncate_entries(5);
        assert_eq!(
            (index.entries(), index.entry(4), index.entry(5)),
            (5, Some((4, 48)), None)
        );
        // Back into the written ones: appends continue from there.
        index.truncate_entries(2);
        assert_eq!((index.entries(), index.entry(2)), (2, None));
        index.append(2, 99);
        index.append(3, 120);
        index.seal().unwrap();
        drop(index);
        assert_eq!(
            Index::inspect(&path).unwrap(),
            IndexState::Clean { entries: 4 }
        );
        let reopened = Index::open(&path, 4, 4).unwrap();
        let entries: Vec<_> = (0..4).map(|i| reopened.entry(i).unwrap()).collect();
        assert_eq!(entries, [(0, 8), (1, 18), (2, 99), (3, 120)]);
    }

    #[test]
    fn index_full_at_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::create(&dir.path().join("i.index"), 2).unwrap();
        index.append(0, 8);
        assert!(!index.is_full());
        index.append(1, 20);
        assert!(index.is_full());
    }
}
