//! The storage core: plain synchronous Rust, no actors.
//!
//! A [`Log`] is a directory of segments; a segment is a store file of
//! checksummed frames plus a memory-mapped index of fixed entries. See
//! [`frame`] for the byte layout and [`Log`] for the durability contract.
//! Actors (`crate::log`) wrap this; it knows nothing of them.

mod batch;
mod config;
mod error;
pub mod frame;
mod index;
mod log;
mod segment;
mod store;

pub use batch::RecordBatch;
pub use config::{LogConfig, Retention, SyncPolicy};
pub use error::{Result, StorageError};
pub use log::{DirLock, Log, LogReader, OpenReport, OpenedDir, RetentionReport, open_dir};
pub use segment::{Opened, Segment, file_name};
