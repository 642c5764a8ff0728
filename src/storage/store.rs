//! The store file: a header followed by frames, appended through a write buffer.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk;
use super::error::{Result, StorageError};
use super::frame::{self, FILE_HEADER_LEN, FRAME_HEADER_LEN, FrameHeader, STORE_MAGIC};
use super::write_behind::WriteBehind;

/// Frames are gathered here and handed to the kernel in one `pwrite`, so a
/// batch of small records costs one system call, not one each.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// One segment's store file. Frames are appended to a user-space buffer and
/// become visible to other processes (and survive a crash of this one) on
/// [`Store::flush`]; reads see buffered frames too.
#[derive(Debug)]
pub(crate) struct Store {
    path: PathBuf,
    /// Shared so an `fdatasync` can run on another thread.
    file: Arc<File>,
    /// Whole frames not yet written to the file. A frame is never split
    /// between the file and this buffer, so a frame is read from one place.
    buf: Vec<u8>,
    /// Length of the file as the kernel has it.
    flushed: u64,
    /// Bytes were written since the last `fdatasync`.
    unsynced: bool,
    /// Set while a replica catches up ([`Store::set_write_behind`]).
    write_behind: Option<WriteBehind>,
}

impl Store {
    /// Creates a new store file with its header. Fails if the file exists.
    pub(crate) fn create(path: &Path) -> Result<Store> {
        disk::before_create(path).map_err(StorageError::io("create", path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(StorageError::io("create", path))?;
        disk::created(path);
        let header = frame::file_header(STORE_MAGIC, 0);
        disk::write_at(&file, path, &header, 0)
            .map_err(StorageError::io("write header of", path))?;
        Ok(Store {
            path: path.to_path_buf(),
            file: Arc::new(file),
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
            flushed: FILE_HEADER_LEN as u64,
            unsynced: true,
            write_behind: None,
        })
    }

    /// Whether the file at `path` holds no header: shorter than one, or a
    /// header of zeros. Only a crash or power cut during a segment's creation
    /// leaves such a file (its size reached the disk, its bytes did not).
    pub(crate) fn is_blank(path: &Path) -> Result<bool> {
        let file = File::open(path).map_err(StorageError::io("open", path))?;
        let len = file
            .metadata()
            .map_err(StorageError::io("stat", path))?
            .len();
        if len < FILE_HEADER_LEN as u64 {
            return Ok(true);
        }
        let mut header = [0u8; FILE_HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(StorageError::io("read header of", path))?;
        Ok(header.iter().all(|b| *b == 0))
    }

    /// Rewrites a blank store file (see [`Store::is_blank`]) as an empty
    /// store with its header, synced.
    pub(crate) fn rewrite_blank(path: &Path) -> Result<Store> {
        tracing::warn!(path = %path.display(), "store file without a header (creation cut short): rewriting it empty");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StorageError::io("open", path))?;
        file.set_len(0)
            .map_err(StorageError::io("truncate", path))?;
        file.write_all_at(&frame::file_header(STORE_MAGIC, 0), 0)
            .map_err(StorageError::io("write header of", path))?;
        disk::sync(&file, path, false).map_err(StorageError::io("fsync", path))?;
        Ok(Store {
            path: path.to_path_buf(),
            file: Arc::new(file),
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
            flushed: FILE_HEADER_LEN as u64,
            unsynced: false,
            write_behind: None,
        })
    }

    /// Opens an existing store file and checks its header: a file that is
    /// not a store of this format is refused, never rewritten.
    pub(crate) fn open(path: &Path) -> Result<Store> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StorageError::io("open", path))?;
        let len = file
            .metadata()
            .map_err(StorageError::io("stat", path))?
            .len();
        let store = Store {
            path: path.to_path_buf(),
            file: Arc::new(file),
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
            flushed: len,
            unsynced: false,
            write_behind: None,
        };
        let mut header = [0u8; FILE_HEADER_LEN];
        let n = (len as usize).min(FILE_HEADER_LEN);
        store
            .file
            .read_exact_at(&mut header[..n], 0)
            .map_err(StorageError::io("read header of", path))?;
        frame::parse_file_header(&header[..n], STORE_MAGIC).map_err(|reason| {
            StorageError::UnsupportedFormat {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        Ok(store)
    }

    /// Asks the kernel to drop this file's cached pages, so what is read next
    /// comes from the disk. After a failed `fdatasync` the kernel may have
    /// marked pages clean that never reached the disk (the PostgreSQL
    /// "fsyncgate" lesson): the page cache is no longer the truth.
    pub(crate) fn drop_cached_pages(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain advisory call on a file descriptor this store owns.
        let rc =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            tracing::warn!(path = %self.path.display(), errno = rc, "posix_fadvise(DONTNEED) failed");
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the store, buffered ones included (the position of the next frame).
    pub(crate) fn size(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Appends one frame; returns its position.
    pub(crate) fn append(&mut self, header: &FrameHeader, record: &[u8]) -> Result<u64> {
        self.append_parts(&header.encode(), record)
    }

    /// Appends whole frames back to back, as they are; returns where the
    /// first starts. (Writing a large run straight from where it is,
    /// skipping the copy into the buffer, measured no faster: BENCHMARKS.md.)
    pub(crate) fn append_run(&mut self, frames: &[u8]) -> Result<u64> {
        self.append_parts(frames, &[])
    }

    /// Appends a frame given in two parts (never split between the buffer
    /// and the file); returns its position.
    fn append_parts(&mut self, head: &[u8], tail: &[u8]) -> Result<u64> {
        let frame_len = head.len() + tail.len();
        if !self.buf.is_empty() && self.buf.len() + frame_len > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        let position = self.size();
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(tail);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(position)
    }

    /// Hands buffered frames to the kernel. On failure nothing is dropped:
    /// the buffer is kept and a retry rewrites it at the same position.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        disk::write_at(&self.file, &self.path, &self.buf, self.flushed)
            .map_err(StorageError::io("write", &self.path))?;
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        if let Some(behind) = &mut self.write_behind {
            behind.flushed(self.flushed);
        }
        Ok(())
    }

    /// Flushes, then `fdatasync`s if anything was written since the last sync.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if self.unsynced {
            disk::sync(&self.file, &self.path, true)
                .map_err(StorageError::io("fdatasync", &self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Write-behind on or off (see [`super::write_behind`]): for a replica
    /// far behind its leader, whose copy no one reads yet. If the file
    /// cannot be opened a second time, appends go on without it.
    pub(crate) fn set_write_behind(&mut self, on: bool) {
        match (on, self.write_behind.is_some()) {
            (true, false) => match WriteBehind::open(&self.path, self.flushed) {
                Ok(behind) => self.write_behind = Some(behind),
                Err(e) => {
                    tracing::debug!(path = %self.path.display(), error = %e, "write-behind unavailable")
                }
            },
            (false, true) => self.write_behind = None,
            _ => {}
        }
    }

    pub(crate) fn sync_handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Length of the file as the kernel has it (buffered frames excluded).
    pub(crate) fn flushed_len(&self) -> u64 {
        self.flushed
    }

    /// Cuts the file to `len` bytes and drops buffered frames (recovery of a
    /// torn tail, or taking back appends whose write failed).
    pub(crate) fn truncate(&mut self, len: u64) -> Result<()> {
        self.buf.clear();
        // Its positions may be past the new end; the next append sets it again.
        self.write_behind = None;
        self.file
            .set_len(len)
            .map_err(StorageError::io("truncate", &self.path))?;
        self.flushed = len;
        self.unsynced = true;
        Ok(())
    }

    /// Copies the bytes `[position, position + out.len())` into `out`, from
    /// the file and/or the write buffer.
    pub(crate) fn read_at(&self, position: u64, out: &mut [u8]) -> Result<()> {
        let end = position + out.len() as u64;
        if end > self.size() {
            return Err(StorageError::corruption(
                &self.path,
                position,
                format!(
                    "read of {} bytes runs past the end of the store ({} bytes)",
                    out.len(),
                    self.size()
                ),
            ));
        }
        let from_file = end.min(self.flushed).saturating_sub(position) as usize;
        if from_file > 0 {
            disk::read_at(&self.file, &self.path, &mut out[..from_file], position)
                .map_err(StorageError::io("read", &self.path))?;
        }
        if from_file < out.len() {
            let start = (position + from_file as u64 - self.flushed) as usize;
            let n = out.len() - from_file;
            out[from_file..].copy_from_slice(&self.buf[start..start + n]);
        }
        Ok(())
    }

    /// Reads the frame at `position`, which the index says is `frame_len`
    /// bytes long, checks it is the record `offset`, and returns the record.
    #[cfg(test)]
    pub(crate) fn read_record(
        &self,
        position: u64,
        frame_len: u64,
        offset: u64,
    ) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; frame_len as usize];
        self.read_at(position, &mut bytes)?;
        let header = self.check_frame(position, &bytes, offset)?;
        debug_assert_eq!(header.frame_len(), frame_len);
        bytes.copy_within(FRAME_HEADER_LEN.., 0);
        bytes.truncate(header.len as usize);
        Ok(bytes)
    }

    /// Checks that `bytes` (read at `position`) is exactly one intact frame of
    /// the record `offset`.
    pub(crate) fn check_frame(
        &self,
        position: u64,
        bytes: &[u8],
        offset: u64,
    ) -> Result<FrameHeader> {
        check_frame(&self.path, position, bytes, offset)
    }

    /// The file and its path, for reads carried out on another thread.
    pub(crate) fn read_handle(&self) -> (Arc<File>, PathBuf) {
        (Arc::clone(&self.file), self.path.clone())
    }
}

/// Checks that `bytes` (read at `position` of `path`) is exactly one intact
/// frame of the record `offset`.
pub(crate) fn check_frame(
    path: &Path,
    position: u64,
    bytes: &[u8],
    offset: u64,
) -> Result<FrameHeader> {
    let Some(head) = bytes.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(StorageError::corruption(
            path,
            position,
            "frame shorter than its header",
        ));
    };
    let header = FrameHeader::decode(head);
    if header.frame_len() != bytes.len() as u64 {
        return Err(StorageError::corruption(
            path,
            position,
            format!(
                "frame says {} record bytes, the index leaves room for {}",
                header.len,
                bytes.len() - FRAME_HEADER_LEN
            ),
        ));
    }
    if header.offset != offset {
        return Err(StorageError::corruption(
            path,
            position,
            format!("frame holds offset {}, expected {offset}", header.offset),
        ));
    }
    if !header.matches(&bytes[FRAME_HEADER_LEN..]) {
        return Err(StorageError::corruption(
            path,
            position,
            format!("checksum mismatch in record {offset}"),
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_record(store: &mut Store, offset: u64, record: &[u8]) -> u64 {
        store
            .append(&FrameHeader::new(offset, record), record)
            .unwrap()
    }

    #[test]
    fn appended_records_read_back_before_and_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("s.store")).unwrap();
        let records: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut positions = Vec::new();
        for (i, r) in records.iter().enumerate() {
            positions.push(append_record(&mut store, i as u64, r));
        }
        assert_eq!(
            positions[0], FILE_HEADER_LEN as u64,
            "first frame follows the header"
        );
        let len = |i: usize| (FRAME_HEADER_LEN + records[i].len()) as u64;
        // Served from the write buffer.
        assert_eq!(
            store.read_record(positions[1], len(1), 1).unwrap(),
            records[1]
        );
        store.flush().unwrap();
        for i in 0..3 {
            assert_eq!(
                store.read_record(positions[i], len(i), i as u64).unwrap(),
                records[i]
            );
        }
    }

    #[test]
    fn store_reopens_with_its_size_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let mut store = Store::create(&path).unwrap();
        let pos = append_record(&mut store, 7, b"persisted");
        store.sync().unwrap();
        let size = store.size();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.size(), size);
        assert_eq!(store.read_record(pos, size - pos, 7).unwrap(), b"persisted");
    }

    #[test]
    fn a_store_writing_behind_reads_back_every_record_and_a_cut_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("s.store")).unwrap();
        store.set_write_behind(true);
        assert!(store.write_behind.is_some());
        // Well past what write-behind keeps cached: 24 MiB of 64 KiB records.
        let record = vec![7u8; 64 << 10];
        let positions: Vec<u64> = (0..384)
            .map(|i| append_record(&mut store, i, &record))
            .collect();
        store.flush().unwrap();
        let frame = (FRAME_HEADER_LEN + record.len()) as u64;
        for (i, &pos) in positions.iter().enumerate() {
            assert_eq!(store.read_record(pos, frame, i as u64).unwrap(), record);
        }
        // Positions past a cut would be wrong: off until the next append sets it.
        store.truncate(positions[1]).unwrap();
        assert!(store.write_behind.is_none());
    }

    #[test]
    fn unflushed_frames_are_not_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        let mut store = Store::create(&path).unwrap();
        append_record(&mut store, 0, b"buffered");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            FILE_HEADER_LEN as u64
        );
        store.flush().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), store.size());
    }

    #[test]
    fn foreign_file_is_an_unsupported_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.store");
        std::fs::write(&path, b"GIF89a-not-a-store").unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StorageError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn wrong_offset_or_flipped_byte_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("s.store")).unwrap();
        let pos = append_record(&mut store, 3, b"abc");
        store.flush().unwrap();
        let len = (FRAME_HEADER_LEN + 3) as u64;
        assert!(store.read_record(pos, len, 4).unwrap_err().is_corruption());
        let mut bytes = vec![0u8; len as usize];
        store.read_at(pos, &mut bytes).unwrap();
        bytes[FRAME_HEADER_LEN] ^= 1;
        assert!(
            store
                .check_frame(pos, &bytes, 3)
                .unwrap_err()
                .is_corruption()
        );
    }
}
