//! The index file: a header and fixed 12-byte entries, memory-mapped.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

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
/// size and mapped whole, so an append is a store into memory; a clean close
/// truncates it to the entries it holds and marks it clean.
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    file: File,
    /// Maps the whole file (header included).
    map: MmapMut,
    entries: u64,
    /// Entries the mapped file has room for.
    capacity: u64,
}

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
        let map = unsafe { MmapOptions::new().len(len as usize).map_mut(&file) }
            .map_err(StorageError::io("mmap", &path))?;
        Ok(Index {
            path,
            file,
            map,
            entries,
            capacity,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Forgets the entries from `entries` on (appends taken back).
    pub(crate) fn truncate_entries(&mut self, entries: u64) {
        self.entries = self.entries.min(entries);
    }

    /// Entries the index has room for.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries >= self.capacity
    }

    /// Appends an entry. The caller checks [`Index::is_full`] first.
    pub(crate) fn append(&mut self, relative: u32, position: u64) {
        debug_assert!(!self.is_full());
        let at = FILE_HEADER_LEN + self.entries as usize * INDEX_ENTRY_LEN;
        self.map[at..at + INDEX_ENTRY_LEN]
            .copy_from_slice(&frame::encode_entry(relative, position));
        self.entries += 1;
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
        let at = FILE_HEADER_LEN + i as usize * INDEX_ENTRY_LEN;
        Some(frame::decode_entry(&self.map[at..at + INDEX_ENTRY_LEN]))
    }

    /// Writes the entries to disk, cuts the file to exactly its entries and
    /// marks it clean. The map is dropped before the file shrinks (touching a
    /// mapped page past the end of a file raises SIGBUS). The index stays
    /// readable, mapped at its new size, but no longer accepts appends.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.map
            .flush()
            .map_err(StorageError::io("msync", &self.path))?;
        let len = FILE_HEADER_LEN as u64 + self.entries * INDEX_ENTRY_LEN as u64;
        // Swap in an anonymous placeholder so the file map can be dropped.
        let placeholder =
            MmapMut::map_anon(FILE_HEADER_LEN).map_err(StorageError::io("mmap", &self.path))?;
        drop(std::mem::replace(&mut self.map, placeholder));
        self.file
            .set_len(len)
            .map_err(StorageError::io("truncate", &self.path))?;
        self.file
            .write_all_at(&frame::file_header(INDEX_MAGIC, INDEX_FLAG_CLEAN), 0)
            .map_err(StorageError::io("write header of", &self.path))?;
        disk::sync(&self.file, &self.path, false).map_err(StorageError::io("fsync", &self.path))?;
        // SAFETY: as in `map`; the file now has exactly `len` bytes.
        self.map = unsafe { MmapOptions::new().len(len as usize).map_mut(&self.file) }
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
