//! Produce sessions whose order must hold.
//!
//! A produce stream sends many batches without waiting for each answer. If
//! one of them fails, a later one of the same stream must not be appended
//! behind the gap (the client would see its records out of order when it
//! retries the failed one). Each stream is a session; once any batch of a
//! session fails, the session is poisoned and every later batch of it is
//! refused as not appended.

use std::collections::{HashSet, VecDeque};

use super::error::LogError;

/// Sessions remembered at most; the oldest is forgotten first. Bounded so
/// no client can grow it: a session is poisoned only by a failure.
const MAX_POISONED: usize = 4096;

/// A bounded set of poisoned session ids, and a watermark below which
/// every session is poisoned.
#[derive(Debug, Default, Clone)]
pub(crate) struct PoisonedSessions {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    below: u64,
}

impl PoisonedSessions {
    pub(crate) fn insert(&mut self, session: u64) {
        if self.set.insert(session) {
            self.order.push_back(session);
            if self.order.len() > MAX_POISONED
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, session: Option<u64>) -> bool {
        session.is_some_and(|s| s < self.below || self.set.contains(&s))
    }

    /// The error a batch of `session` gets when that session is poisoned:
    /// not appended, so the client may send it again in a new stream.
    pub(crate) fn refusal(&self, session: Option<u64>, partition: &str) -> Option<LogError> {
        self.contains(session).then(|| {
            LogError::unavailable(
                partition,
                "an earlier batch of this produce stream failed; later batches are not appended",
            )
        })
    }

    /// Poisons every session opened so far. After a restart the batch an
    /// actor was handling when it failed is unknown: every stream that may
    /// have had one in flight must stop (its client opens a new one).
    pub(crate) fn poison_open_sessions(&mut self) {
        self.below = self.below.max(super::messages::sessions_opened());
    }

    /// Adds what `other` poisoned.
    pub(crate) fn extend(&mut self, other: &PoisonedSessions) {
        self.below = self.below.max(other.below);
        for s in &other.order {
            self.insert(*s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisoned_sessions_are_bounded_and_forget_the_oldest() {
        let mut p = PoisonedSessions::default();
        for s in 0..(MAX_POISONED as u64 + 10) {
            p.insert(s);
        }
        assert!(!p.contains(Some(0)));
        assert!(p.contains(Some(MAX_POISONED as u64 + 9)));
        assert!(!p.contains(None));
        assert_eq!(p.order.len(), MAX_POISONED);
    }

    #[test]
    fn a_batch_of_a_poisoned_session_is_refused_as_not_appended() {
        let mut p = PoisonedSessions::default();
        p.insert(7);
        assert!(matches!(
            p.refusal(Some(7), "n-1"),
            Some(LogError::Unavailable { partition, .. }) if partition == "n-1"
        ));
        assert!(p.refusal(Some(8), "n-1").is_none());
        assert!(p.refusal(None, "n-1").is_none());
    }

    #[test]
    fn a_restart_poisons_every_session_opened_before_it() {
        let (old, mut p) = (crate::log::new_session(), PoisonedSessions::default());
        p.poison_open_sessions();
        let new = crate::log::new_session();
        assert!(p.contains(Some(old)));
        assert!(!p.contains(Some(new)));
        let mut q = PoisonedSessions::default();
        q.extend(&p);
        assert!(q.contains(Some(old)) && !q.contains(Some(new)));
    }
}
