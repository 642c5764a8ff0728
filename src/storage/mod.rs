//! The storage core: plain synchronous Rust, no actors.
//!
//! A partition is a directory of segments ([`open_dir`]); a segment is a
//! store file of checksummed frames plus an index of fixed entries (mapped
//! for reads, written with `pwrite`). See [`frame`] for the byte layout and [`checkpoint`] for the
//! recovery point that keeps recovery from destroying durable data. Actors
//! (`crate::log`) drive this, and are the only engine: rolling, commit and
//! retention live there.

mod batch;
pub mod checkpoint;
mod config;
mod dir;
pub mod disk;
mod error;
pub mod frame;
mod index;
mod read;
mod records;
mod segment;
mod store;
mod write_behind;

pub use batch::RecordBatch;
pub use checkpoint::{Checkpoint, LostCause, LostRange};
pub use config::{DEFAULT_MIN_FREE_BYTES, LogConfig, Retention, SyncPolicy};
pub use dir::{DirLock, OpenReport, OpenedDir, RepairCut, RepairReport, open_dir, repair};
pub use error::{Result, StorageError};
pub use read::PlannedRead;
pub use records::{Frames, FramesError, Records, Values, recycled_buffer};
pub use segment::{Damage, Opened, Segment, file_name};
