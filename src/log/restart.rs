//! Restart accounting shared by the supervised actors.

use std::time::{Duration, Instant};

/// Allows a few restarts in a sliding window; past that, a failure escalates
/// (the partition is marked failed) instead of restarting forever.
#[derive(Debug, Default)]
pub(crate) struct RestartBudget {
    recent: Vec<Instant>,
}

impl RestartBudget {
    /// Restarts allowed within [`RestartBudget::WINDOW`].
    pub(crate) const MAX: usize = 3;
    pub(crate) const WINDOW: Duration = Duration::from_secs(60);

    /// Records a restart; false when it is one too many.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.recent
            .retain(|t| now.duration_since(*t) < Self::WINDOW);
        self.recent.push(now);
        self.recent.len() <= Self::MAX
    }

    /// Restarts in the current window.
    pub(crate) fn count(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_three_restarts_then_escalates() {
        let mut b = RestartBudget::default();
        assert!(b.allow() && b.allow() && b.allow());
        assert!(!b.allow());
        assert_eq!(b.count(), 4);
    }
}
