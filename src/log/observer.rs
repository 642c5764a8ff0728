//! Where a partition reports how long its disk syncs took. Handed in where
//! partitions are opened (the agent passes its metrics), so the log layer
//! knows nothing of telemetry.

use std::sync::Arc;
use std::time::Duration;

/// Observes the durations of a partition's syncs; called on the blocking
/// pool, where the syncs run.
pub trait SyncObserver: Send + Sync + 'static {
    /// An `fdatasync` of the active segment (group commit, sync policy).
    fn sync(&self, took: Duration);
    /// Sealing a segment (flush, sync of store and index, truncation).
    fn seal(&self, took: Duration);
}

/// An optional observer, shared by every segment of a node.
pub type Observer = Option<Arc<dyn SyncObserver>>;
