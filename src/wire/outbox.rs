//! The send side's bound: answers built but not yet sent on a connection.
//!
//! A client can pipeline calls and never read their answers. A
//! consumeBatch request of about 100 bytes is answered with up to 256 KiB,
//! and unsent answers wait in the connection's write queue: 4,000 such
//! calls from one client that read nothing held 1.2 GB on the node. Here a
//! call with a large answer reserves the most it can answer before it
//! reads the log ([`Outbox::reserve`]): it waits while its connection has
//! [`OUTBOX_BYTES`] unsent, and while the node's [`ByteBudget`] is spent;
//! once built, the answer keeps what it uses ([`Reserved::keep`]), and its
//! bytes are given back as they leave on the socket ([`Outbox::sent`]).
//! The server closes a connection whose unsent answers have not moved for
//! a while (see `rpc::server`), so a reader that stalls holds its share of
//! the budget for a bounded time.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use super::framed::ByteBudget;

/// Unsent answer bytes one connection may hold before its next large
/// answer waits (one answer may go past it: it is let through whenever
/// less than this is pending).
pub const OUTBOX_BYTES: usize = 4 << 20;

/// One connection's answers not yet sent, charged to the node's budget.
#[derive(Debug)]
pub struct Outbox {
    budget: Option<Rc<ByteBudget>>,
    limit: usize,
    /// Bytes reserved by reads whose answers are not built yet.
    reserved: Cell<usize>,
    /// Bytes of built answers not yet sent.
    unsent: Cell<usize>,
    /// When unsent bytes last moved: some went out, or some were added
    /// while none were unsent.
    moved: Cell<Instant>,
    /// Calls waiting for room on this connection.
    waiting: RefCell<Vec<Waker>>,
}

impl Outbox {
    /// An outbox of [`OUTBOX_BYTES`] charging `budget` (`None`: only the
    /// connection's own bound).
    pub fn new(budget: Option<Rc<ByteBudget>>) -> Rc<Outbox> {
        Outbox::with_limit(budget, OUTBOX_BYTES)
    }

    pub fn with_limit(budget: Option<Rc<ByteBudget>>, limit: usize) -> Rc<Outbox> {
        Rc::new(Outbox {
            budget,
            limit,
            reserved: Cell::new(0),
            unsent: Cell::new(0),
            moved: Cell::new(Instant::now()),
            waiting: RefCell::new(Vec::new()),
        })
    }

    /// Bytes held: reserved for answers being read, and built but unsent.
    pub fn pending(&self) -> usize {
        self.reserved.get() + self.unsent.get()
    }

    /// Since when built answers have waited with none of their bytes
    /// leaving; `None` while none wait (a read still reserving is not a
    /// stall of the peer's).
    pub fn stalled_since(&self) -> Option<Instant> {
        (self.unsent.get() > 0).then(|| self.moved.get())
    }

    /// Waits for room (this connection under its limit, the node's budget
    /// not spent), then reserves `bytes` for an answer.
    pub async fn reserve(self: &Rc<Self>, bytes: usize) -> Reserved {
        poll_fn(|cx| {
            if self.pending() >= self.limit {
                let mut waiting = self.waiting.borrow_mut();
                if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    waiting.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            match &self.budget {
                Some(budget) => budget.poll_room(cx),
                None => Poll::Ready(()),
            }
        })
        .await;
        self.reserved.set(self.reserved.get() + bytes);
        if let Some(budget) = &self.budget {
            budget.take(bytes);
        }
        Reserved {
            outbox: self.clone(),
            bytes,
        }
    }

    /// `n` bytes left on the socket: as many unsent answer bytes are
    /// given back (the writer counts every message, so this errs towards
    /// giving back).
    pub fn sent(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.moved.set(Instant::now());
        let released = n.min(self.unsent.get());
        self.unsent.set(self.unsent.get() - released);
        self.give_back(released);
    }

    /// Answer bytes that will not be waited for (their call failed: the
    /// answer may never be sent): given back as if sent.
    pub fn forget(&self, bytes: usize) {
        self.sent(bytes);
    }

    /// Gives `bytes` back to the budget and wakes waiting reads.
    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        if let Some(budget) = &self.budget {
            budget.give_back(bytes);
        }
        if self.pending() < self.limit {
            for w in std::mem::take(&mut *self.waiting.borrow_mut()) {
                w.wake();
            }
        }
    }
}

impl Drop for Outbox {
    /// A closed connection's unsent answers are gone with it.
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.pending());
        }
    }
}

/// Bytes reserved for one answer, given back when dropped unless kept.
#[derive(Debug)]
pub struct Reserved {
    outbox: Rc<Outbox>,
    bytes: usize,
}

impl Reserved {
    /// The answer will use `used` bytes (at most those reserved): the rest
    /// is given back now.
    pub fn shrink_to(&mut self, used: usize) {
        let back = self.bytes - used.min(self.bytes);
        self.bytes -= back;
        self.outbox.reserved.set(self.outbox.reserved.get() - back);
        self.outbox.give_back(back);
    }

    /// The answer was built with `used` bytes (at most those reserved):
    /// they stay held, as unsent, until they leave on the socket.
    pub fn keep(mut self, used: usize) {
        self.shrink_to(used);
        let outbox = &self.outbox;
        outbox.reserved.set(outbox.reserved.get() - self.bytes);
        if outbox.unsent.get() == 0 {
            outbox.moved.set(Instant::now());
        }
        outbox.unsent.set(outbox.unsent.get() + self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(limit: usize) -> Rc<ByteBudget> {
        Rc::new(ByteBudget::new(limit))
    }

    #[tokio::test]
    async fn answers_wait_at_the_limit_and_go_on_as_bytes_are_sent() {
        let node = budget(1 << 30);
        let outbox = Outbox::with_limit(Some(node.clone()), 100);
        outbox.reserve(60).await.keep(60);
        // Under the limit: the next one goes, past it.
        outbox.reserve(60).await.keep(60);
        assert_eq!((outbox.pending(), node.used()), (120, 120));
        // At the limit: the third waits until enough is sent.
        let waiting = tokio::time::timeout(Duration::from_millis(20), outbox.reserve(10)).await;
        assert!(waiting.is_err(), "a reservation past the limit waits");
        outbox.sent(20);
        assert_eq!(outbox.pending(), 100, "still at the limit");
        let mut third = Box::pin(outbox.reserve(10));
        assert!(futures::poll!(&mut third).is_pending());
        outbox.sent(1);
        third.await.keep(10);
        assert_eq!((outbox.pending(), node.used()), (109, 109));
        assert!(outbox.stalled_since().is_some(), "built answers wait");
        outbox.sent(1 << 20);
        assert_eq!((outbox.pending(), node.used()), (0, 0), "never below zero");
        assert!(outbox.stalled_since().is_none());
    }

    #[tokio::test]
    async fn what_an_answer_does_not_use_is_given_back_at_once() {
        let node = budget(1 << 30);
        let outbox = Outbox::with_limit(Some(node.clone()), 1 << 20);
        outbox.reserve(256 << 10).await.keep(1000);
        assert_eq!((outbox.pending(), node.used()), (1000, 1000));
        drop(outbox.reserve(4096).await);
        assert_eq!(outbox.pending(), 1000, "an answer not built keeps nothing");
        outbox.sent(1000);
        let reading = outbox.reserve(4096).await;
        assert!(
            outbox.stalled_since().is_none(),
            "a read still reserving is no stall of the peer's"
        );
        assert_eq!(outbox.pending(), 4096);
        outbox.sent(4096);
        assert_eq!(
            outbox.pending(),
            4096,
            "sent bytes release built answers only"
        );
        drop(reading);
        outbox.reserve(10).await.keep(10);
        drop(outbox);
        assert_eq!(
            node.used(),
            0,
            "a closed connection gives back what it held"
        );
    }

    #[tokio::test]
    async fn a_spent_node_budget_holds_every_connection_back() {
        let node = budget(100);
        let (a, b) = (
            Outbox::with_limit(Some(node.clone()), 1 << 20),
            Outbox::with_limit(Some(node.clone()), 1 << 20),
        );
        a.reserve(100).await.keep(100);
        let waiting = tokio::time::timeout(Duration::from_millis(20), b.reserve(10)).await;
        assert!(waiting.is_err(), "the node's budget is spent");
        a.sent(50);
        b.reserve(10).await.keep(10);
        assert_eq!(node.used(), 60);
    }
}
