//! `acks=all` on the leader: which holders of this node's own partition are
//! live (from membership, set by the Agent) and how far each has committed
//! (reported by their replicators with `replicated`). A produce with
//! `acks=all` is refused at once when fewer than `min-insync-replicas`
//! holders are live, and answered once that many (the leader included)
//! have committed its last record, or with a timeout.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Why an `acks=all` produce was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    /// Refused before appending: `live` holders, `required` needed.
    NotEnoughReplicas { live: u32, required: u32 },
    /// Appended on the leader; not enough holders confirmed in `after`.
    Timeout { after: Duration, confirmed: u32 },
}

/// The in-sync state of this node's own partition.
#[derive(Debug)]
pub struct InSync {
    /// Holders, the leader included, that must have committed a record.
    min_insync: usize,
    timeout: Duration,
    state: RefCell<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Live holders other than the leader.
    followers: BTreeSet<String>,
    /// Each node's committed position, as last reported.
    positions: BTreeMap<String, u64>,
    /// When the leader committed recent appends: (end offset, when), in
    /// offset order, at most [`COMMITS_KEPT`]; a report is timed against it.
    commits: VecDeque<(u64, Instant)>,
}

/// Recent leader commits kept to time replication lag by.
const COMMITS_KEPT: usize = 4096;

impl InSync {
    pub fn new(min_insync: usize, timeout: Duration) -> InSync {
        InSync {
            min_insync: min_insync.max(1),
            timeout,
            state: RefCell::default(),
            changed: Notify::new(),
        }
    }

    /// The live holders of the own partition other than this node.
    pub fn set_followers(&self, followers: impl IntoIterator<Item = String>) {
        let mut state = self.state.borrow_mut();
        state.followers = followers.into_iter().collect();
        let State {
            followers,
            positions,
            ..
        } = &mut *state;
        positions.retain(|node, _| followers.contains(node));
        drop(state);
        self.changed.notify_waiters();
    }

    /// The leader committed every record below `end` (an append was answered).
    pub fn leader_committed(&self, end: u64) {
        let mut state = self.state.borrow_mut();
        // Nobody to time: a node without followers keeps no commit log.
        if state.followers.is_empty() || state.commits.back().is_some_and(|(last, _)| *last >= end)
        {
            return;
        }
        if state.commits.len() == COMMITS_KEPT {
            state.commits.pop_front();
        }
        state.commits.push_back((end, Instant::now()));
    }

    /// `node`'s replica has committed every record below `committed`. Only
    /// live holders are kept: what a caller reports cannot grow this.
    /// Answers the replication lag this report shows: the time since the
    /// leader committed the newest append the replica now has (`None`
    /// when the report brings no append not already timed).
    pub fn report(&self, node: &str, committed: u64) -> Option<Duration> {
        let mut state = self.state.borrow_mut();
        if !state.followers.contains(node) {
            return None;
        }
        let before = state.positions.insert(node.to_string(), committed);
        let covered = state.commits.partition_point(|(end, _)| *end <= committed);
        let lag = covered
            .checked_sub(1)
            .map(|i| state.commits[i])
            .filter(|(end, _)| before.is_none_or(|b| *end > b))
            .map(|(_, at)| at.elapsed());
        drop(state);
        self.changed.notify_waiters();
        lag
    }

    /// Refuses when fewer holders than `min-insync-replicas` are live.
    pub fn check_live(&self) -> Result<(), AckError> {
        let live = self.state.borrow().followers.len() + 1;
        if live < self.min_insync {
            return Err(AckError::NotEnoughReplicas {
                live: live as u32,
                required: self.min_insync as u32,
            });
        }
        Ok(())
    }

    /// Holders (the leader included: its append is committed) that have
    /// every record below `end`.
    fn confirmed(&self, end: u64) -> usize {
        let state = self.state.borrow();
        1 + state
            .followers
            .iter()
            .filter(|f| state.positions.get(*f).is_some_and(|p| *p >= end))
            .count()
    }

    /// Waits until `min-insync-replicas` holders have every record below
    /// `end` (the leader has: its append was answered), or the timeout.
    pub async fn wait(&self, end: u64) -> Result<(), AckError> {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.confirmed(end) >= self.min_insync {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(self.timeout, waiting)
            .await
            .map_err(|_| AckError::Timeout {
                after: self.timeout,
                confirmed: self.confirmed(end) as u32,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_kept_for_live_holders_only() {
        let s = InSync::new(2, Duration::from_millis(10));
        s.set_followers(["b".to_string()]);
        for i in 0..1000 {
            s.report(&format!("stranger-{i}"), 5);
        }
        s.report("b", 5);
        assert_eq!(s.state.borrow().positions.len(), 1);
        s.set_followers(["c".to_string()]);
        assert!(s.state.borrow().positions.is_empty(), "b left: forgotten");
    }

    #[test]
    fn a_report_is_timed_against_the_leaders_commit_of_what_it_covers() {
        let s = InSync::new(2, Duration::from_millis(10));
        s.set_followers(["b".to_string()]);
        assert_eq!(s.report("b", 0), None, "nothing committed yet");
        s.leader_committed(10);
        std::thread::sleep(Duration::from_millis(2));
        s.leader_committed(20);
        assert_eq!(s.report("b", 5), None, "covers no whole append");
        let lag = s.report("b", 15).expect("covers the append ending at 10");
        assert!(lag >= Duration::from_millis(2), "{lag:?}");
        assert_eq!(s.report("b", 15), None, "already timed");
        assert!(s.report("b", 20).is_some());
        assert_eq!(s.report("stranger", 20), None);
        for end in 21..21 + 2 * COMMITS_KEPT as u64 {
            s.leader_committed(end);
        }
        assert_eq!(s.state.borrow().commits.len(), COMMITS_KEPT, "bounded");
    }

    #[test]
    fn too_few_live_holders_are_refused_at_once() {
        let s = InSync::new(2, Duration::from_millis(10));
        assert_eq!(
            s.check_live(),
            Err(AckError::NotEnoughReplicas {
                live: 1,
                required: 2
            })
        );
        s.set_followers(["b".to_string()]);
        assert_eq!(s.check_live(), Ok(()));
    }

    #[actix_rt::test]
    async fn a_write_is_confirmed_once_enough_followers_have_it() {
        let s = std::rc::Rc::new(InSync::new(2, Duration::from_secs(5)));
        s.set_followers(["b".to_string(), "c".to_string()]);
        s.report("b", 5);
        let waiting = tokio::task::spawn_local({
            let s = s.clone();
            async move { s.wait(10).await }
        });
        tokio::task::yield_now().await;
        s.report("x", 100); // not a holder: does not count
        s.report("c", 10);
        assert_eq!(waiting.await.unwrap(), Ok(()));
    }

    #[actix_rt::test]
    async fn an_unconfirmed_write_times_out() {
        let s = InSync::new(3, Duration::from_millis(20));
        s.set_followers(["b".to_string(), "c".to_string()]);
        s.report("b", 10);
        assert_eq!(
            s.wait(10).await,
            Err(AckError::Timeout {
                after: Duration::from_millis(20),
                confirmed: 2
            })
        );
    }
}
