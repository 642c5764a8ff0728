//! The storage layer's seam to the disk: every write, read, sync, space
//! allocation and file creation of a partition goes through here, so tests
//! can make the disk misbehave where it matters.
//!
//! Two test tools hang on it, both armed per directory (so tests in one
//! process do not disturb each other) and both free when unarmed (one relaxed
//! atomic load per call):
//!
//! - [`inject`]: the next calls at a [`Point`] under a directory fail with an
//!   errno (ENOSPC, EIO), or a write is cut short first.
//! - [`SimulatedDisk`]: a disk that forgets, as TigerBeetle's simulated
//!   storage and the LazyFS tool of Jepsen's tests do. It remembers, per
//!   file (followed across renames), the contents the last completed
//!   `fsync`/`fdatasync` covered, and the directory entries the last
//!   directory `fsync` covered. A
//!   [`SimulatedDisk::power_cut`] puts the directory back to exactly that,
//!   and may keep a random prefix of the bytes appended after the last sync
//!   (a torn last write).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Writing frames to a store file.
    Write,
    /// `fdatasync`/`fsync` of a file.
    Sync,
    /// Reading a store file.
    Read,
    /// Allocating index space (`posix_fallocate`).
    Allocate,
    /// Creating a segment's store file.
    Create,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with this errno (e.g. `libc::ENOSPC`, `libc::EIO`).
    Errno(i32),
    /// Write only this many bytes, then fail with the errno.
    ShortWrite { bytes: usize, errno: i32 },
}

struct Injected {
    dir: PathBuf,
    point: Point,
    fault: Fault,
    remaining: u32,
}

#[derive(Default)]
struct Sim {
    dir: PathBuf,
    /// The file each current name refers to (a file keeps its id across
    /// renames; inode numbers are not used, the kernel reuses them).
    ids: HashMap<PathBuf, u64>,
    next_id: u64,
    /// Contents of each file as of its last completed sync.
    data: HashMap<u64, Vec<u8>>,
    /// Directory entries (name -> file) as of the last directory sync.
    names: HashMap<PathBuf, u64>,
}

impl Sim {
    fn id_of(&mut self, path: &Path) -> u64 {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        self.next_id += 1;
        self.ids.insert(path.to_path_buf(), self.next_id);
        self.next_id
    }
}

#[derive(Default)]
struct State {
    faults: Vec<Injected>,
    sims: Vec<Sim>,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<State> = Mutex::new(State {
    faults: Vec::new(),
    sims: Vec::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rearm(state: &State) {
    ARMED.store(
        !state.faults.is_empty() || !state.sims.is_empty(),
        Ordering::Release,
    );
}

/// Makes the next `times` calls at `point` on files under `dir` fail with `fault`.
pub fn inject(dir: &Path, point: Point, fault: Fault, times: u32) {
    let mut s = state();
    s.faults.push(Injected {
        dir: dir.to_path_buf(),
        point,
        fault,
        remaining: times,
    });
    rearm(&s);
}

/// Removes every fault injected under `dir`.
pub fn clear(dir: &Path) {
    let mut s = state();
    s.faults.retain(|f| !f.dir.starts_with(dir));
    rearm(&s);
}

/// The fault to apply now at `point` for `path`, if one is armed.
fn take_fault(point: Point, path: &Path) -> Option<Fault> {
    if !ARMED.load(Ordering::Acquire) {
        return None;
    }
    let mut s = state();
    let i = s
        .faults
        .iter()
        .position(|f| f.point == point && path.starts_with(&f.dir))?;
    let fault = s.faults[i].fault;
    s.faults[i].remaining -= 1;
    if s.faults[i].remaining == 0 {
        s.faults.remove(i);
        rearm(&s);
    }
    Some(fault)
}

fn errno(fault: Fault) -> io::Error {
    match fault {
        Fault::Errno(e) | Fault::ShortWrite { errno: e, .. } => io::Error::from_raw_os_error(e),
    }
}

/// `pwrite` of all of `buf` at `position`.
pub(crate) fn write_at(file: &File, path: &Path, buf: &[u8], position: u64) -> io::Result<()> {
    match take_fault(Point::Write, path) {
        None => file.write_all_at(buf, position),
        Some(Fault::ShortWrite { bytes, errno: e }) => {
            file.write_all_at(&buf[..bytes.min(buf.len())], position)?;
            Err(io::Error::from_raw_os_error(e))
        }
        Some(f) => Err(errno(f)),
    }
}

/// `pread` of exactly `buf.len()` bytes at `position`.
pub(crate) fn read_at(file: &File, path: &Path, buf: &mut [u8], position: u64) -> io::Result<()> {
    match take_fault(Point::Read, path) {
        None => file.read_exact_at(buf, position),
        Some(f) => Err(errno(f)),
    }
}

/// `pread` of exactly `len` bytes at `position` into a new buffer, only if
/// they are all in the page cache when `cached_only` (`preadv2` with
/// `RWF_NOWAIT`): `Ok(None)` when the read would wait for the disk. Where
/// the kernel or file system cannot tell, the read is done as a plain
/// `pread`, as is every read that may wait. The bytes land in
/// uninitialised memory, so a read costs no zero-filling first (it showed
/// as 3-4 % of a consumer's node).
pub(crate) fn read_exact(
    file: &File,
    path: &Path,
    len: usize,
    position: u64,
    cached_only: bool,
) -> io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if let Some(f) = take_fault(Point::Read, path) {
        return Err(errno(f));
    }
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut nowait = cached_only && !UNSUPPORTED.load(Ordering::Relaxed);
    let mut done = 0usize;
    while done < len {
        let rest = &mut buf.spare_capacity_mut()[done..len];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let at = libc::off_t::try_from(position + done as u64).map_err(io::Error::other)?;
        // SAFETY: one iovec over the `len - done` bytes of spare capacity
        // `buf` owns past those read so far, on a descriptor `file` owns;
        // the kernel only writes there, and `buf`'s length is set below
        // to the bytes it wrote. A read that may wait is a plain `pread`,
        // which every kernel has.
        let n = unsafe {
            if nowait {
                libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT)
            } else {
                libc::pread(file.as_raw_fd(), iov.iov_base, iov.iov_len, at)
            }
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) if nowait => return Ok(None),
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) if nowait => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                nowait = false;
            }
            _ => return Err(e),
        }
    }
    // SAFETY: the loop ran until the kernel had written all `len` bytes.
    unsafe { buf.set_len(len) };
    Ok(Some(buf))
}

/// `fdatasync` (`data_only`) or `fsync` of `file`.
pub fn sync(file: &File, path: &Path, data_only: bool) -> io::Result<()> {
    if let Some(f) = take_fault(Point::Sync, path) {
        return Err(errno(f));
    }
    if data_only {
        file.sync_data()?;
    } else {
        file.sync_all()?;
    }
    if ARMED.load(Ordering::Acquire) {
        record_sync(file, path)?;
    }
    Ok(())
}

/// Starts writeback of the bytes `range` of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Not a sync: nothing is
/// durable until an `fdatasync`. A no-op where the file system has no
/// writeback (tmpfs).
pub(crate) fn start_writeback(file: &File, range: &Range<u64>) -> io::Result<()> {
    sync_file_range(file, range, libc::SYNC_FILE_RANGE_WRITE)
}

/// Waits for the writeback of the bytes `range` of `file`, then drops their
/// pages from the page cache (`posix_fadvise(DONTNEED)`, which drops only
/// clean pages: a page written since stays). Call it on a handle of its own:
/// the wait consumes a writeback error on the handle it runs on.
pub(crate) fn drop_written_back(file: &File, range: &Range<u64>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if range.is_empty() {
        return Ok(()); // a length of 0 would mean "to the end of the file"
    }
    sync_file_range(
        file,
        range,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )?;
    let (at, len) = off_len(range)?;
    // SAFETY: a plain advisory call on a file descriptor `file` owns.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), at, len, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

fn off_len(range: &Range<u64>) -> io::Result<(libc::off_t, libc::off_t)> {
    let at = libc::off_t::try_from(range.start).map_err(io::Error::other)?;
    let len =
        libc::off_t::try_from(range.end.saturating_sub(range.start)).map_err(io::Error::other)?;
    Ok((at, len))
}

fn sync_file_range(file: &File, range: &Range<u64>, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (at, len) = off_len(range)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a plain call on a file descriptor `file` owns, over a range
    // of it; it touches no memory of this process.
    match unsafe { libc::sync_file_range(file.as_raw_fd(), at, len, flags) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Grows `file` to `len` bytes with its blocks allocated.
pub(crate) fn allocate(file: &File, path: &Path, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(f) = take_fault(Point::Allocate, path) {
        return Err(errno(f));
    }
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: a plain call on a file descriptor `file` owns.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Checks for an injected failure before a segment file is created.
pub(crate) fn before_create(path: &Path) -> io::Result<()> {
    match take_fault(Point::Create, path) {
        None => Ok(()),
        Some(f) => Err(errno(f)),
    }
}

/// Tells the simulated disk that `path` was just created (a new file, unless
/// the name already existed).
pub(crate) fn created(path: &Path) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let mut s = state();
    if let Some(sim) = s.sims.iter_mut().find(|d| path.starts_with(&d.dir)) {
        sim.id_of(path);
    }
}

/// Renames `from` to `to` (the file keeps its identity).
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    if ARMED.load(Ordering::Acquire) {
        let mut s = state();
        if let Some(sim) = s.sims.iter_mut().find(|d| to.starts_with(&d.dir)) {
            let id = sim.id_of(from);
            sim.ids.remove(from);
            sim.ids.insert(to.to_path_buf(), id);
        }
    }
    Ok(())
}

/// `fsync` of a directory, so its entries are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    if ARMED.load(Ordering::Acquire) {
        record_dir_sync(dir)?;
    }
    Ok(())
}

fn record_sync(file: &File, path: &Path) -> io::Result<()> {
    let mut s = state();
    let Some(sim) = s.sims.iter_mut().find(|d| path.starts_with(&d.dir)) else {
        return Ok(());
    };
    use std::os::fd::AsRawFd;
    let id = sim.id_of(path);
    // Through /proc: the file may be open for writing only.
    let content = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    sim.data.insert(id, content);
    Ok(())
}

fn record_dir_sync(dir: &Path) -> io::Result<()> {
    let mut s = state();
    let Some(sim) = s.sims.iter_mut().find(|d| dir == d.dir) else {
        return Ok(());
    };
    let mut names = HashMap::new();
    for path in list(dir)? {
        names.insert(path.clone(), sim.id_of(&path));
    }
    sim.names = names;
    Ok(())
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// A directory on a disk that forgets what was not synced (see the module
/// docs). Detached on drop.
pub struct SimulatedDisk {
    dir: PathBuf,
}

/// What a [`SimulatedDisk::power_cut`] did, for the test's report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerCut {
    /// Files whose directory entry was never synced: gone.
    pub files_forgotten: usize,
    /// Bytes of unsynced data forgotten.
    pub bytes_forgotten: u64,
    /// Bytes of unsynced data that survived as a torn prefix.
    pub bytes_torn_kept: u64,
}

impl SimulatedDisk {
    /// Starts simulating `dir` (flat: its files, not sub-directories); what
    /// is in it now counts as durable.
    pub fn attach(dir: &Path) -> io::Result<SimulatedDisk> {
        let mut sim = Sim {
            dir: dir.to_path_buf(),
            ..Sim::default()
        };
        for path in list(dir)? {
            let id = sim.id_of(&path);
            sim.data.insert(id, std::fs::read(&path)?);
            sim.names.insert(path, id);
        }
        let mut s = state();
        s.sims.retain(|d| d.dir != dir);
        s.sims.push(sim);
        rearm(&s);
        Ok(SimulatedDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Cuts the power: every file in the directory goes back to what its
    /// last sync covered, entries not covered by a directory sync vanish,
    /// and, for each file, `tear(unsynced_len)` says how many bytes of data
    /// appended after its last sync survive anyway (0 for none). Processes
    /// using the directory must be gone (their files closed) first.
    pub fn power_cut(&self, mut tear: impl FnMut(u64) -> u64) -> io::Result<PowerCut> {
        let s = state();
        let Some(sim) = s.sims.iter().find(|d| d.dir == self.dir) else {
            return Ok(PowerCut::default());
        };
        let mut report = PowerCut::default();
        let current = list(&self.dir)?;
        for path in &current {
            let now = std::fs::read(path)?;
            let id = sim.ids.get(path);
            match sim.names.get(path) {
                Some(durable) if Some(durable) == id => {
                    let mut content = sim.data.get(durable).cloned().unwrap_or_default();
                    if now.len() > content.len() && now.starts_with(&content) {
                        let extra = (now.len() - content.len()) as u64;
                        let kept = tear(extra).min(extra);
                        content
                            .extend_from_slice(&now[content.len()..content.len() + kept as usize]);
                        report.bytes_torn_kept += kept;
                        report.bytes_forgotten += extra - kept;
                    } else {
                        report.bytes_forgotten += now.len().abs_diff(content.len()) as u64;
                    }
                    std::fs::write(path, &content)?;
                }
                _ => {
                    report.files_forgotten += 1;
                    report.bytes_forgotten += now.len() as u64;
                    std::fs::remove_file(path)?;
                }
            }
        }
        // Entries removed or renamed away after the last directory sync come back.
        for (path, id) in &sim.names {
            if !current.contains(path) || sim.ids.get(path) != Some(id) {
                std::fs::write(path, sim.data.get(id).cloned().unwrap_or_default())?;
            }
        }
        drop(s);
        // What is on disk now is the new durable state.
        SimulatedDisk::attach(&self.dir).map(std::mem::forget)?;
        Ok(report)
    }
}

impl Drop for SimulatedDisk {
    fn drop(&mut self) {
        let mut s = state();
        s.sims.retain(|d| d.dir != self.dir);
        rearm(&s);
    }
}
