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
    pending: Cell<usize>,
    /// When the pending bytes last moved: some went out, or some were
    /// reserved while none were pending.
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
            pending: Cell::new(0),
            moved: Cell::new(Instant::now()),
            waiting: RefCell::new(Vec::new()),
        })
    }

    /// Answer bytes reserved or built and not yet sent.
    pub fn pending(&self) -> usize {
        self.pending.get()
    }

    /// Since when pending bytes have not moved; `None` while none are pending.
    pub fn stalled_since(&self) -> Option<Instant> {
        (self.pending.get() > 0).then(|| self.moved.get())
    }

    /// Waits for room (this connection under its limit, the node's budget
    /// not spent), then reserves `bytes` for an answer.
    pub async fn reserve(self: &Rc<Self>, bytes: usize) -> Reserved {
        poll_fn(|cx| {
            if self.pending.get() >= self.limit {
                self.waiting.borrow_mut().push(cx.waker().clone());
                return Poll::Pending;
            }
            match &self.budget {
                Some(budget) => budget.poll_room(cx),
                None => Poll::Ready(()),
            }
        })
        .await;
        self.take(bytes);
        Reserved {
            outbox: self.clone(),
            bytes,
        }
    }

    /// `n` bytes left on the socket: that many pending are given back (the
    /// writer counts every message, so this errs towards giving back).
    pub fn sent(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.moved.set(Instant::now());
        self.give_back(n);
    }

    fn take(&self, bytes: usize) {
        if self.pending.get() == 0 {
            self.moved.set(Instant::now());
        }
        self.pending.set(self.pending.get() + bytes);
        if let Some(budget) = &self.budget {
            budget.take(bytes);
        }
    }

    /// Gives back `bytes`, or what is pending if less (the writer may have
    /// counted some of a reservation as sent already).
    fn give_back(&self, bytes: usize) {
        let bytes = bytes.min(self.pending.get());
        if bytes == 0 {
            return;
        }
        self.pending.set(self.pending.get() - bytes);
        if let Some(budget) = &self.budget {
            budget.give_back(bytes);
        }
        if self.pending.get() < self.limit {
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
            budget.give_back(self.pending.get());
        }
    }
}

/// Bytes reserved for one answer; what [`keep`](Reserved::keep) does not
/// keep is given back when this is dropped.
#[derive(Debug)]
pub struct Reserved {
    outbox: Rc<Outbox>,
    bytes: usize,
}

impl Reserved {
    /// The answer was built with `used` bytes (at most those reserved):
    /// they stay pending until they are sent.
    pub fn keep(mut self, used: usize) {
        self.bytes -= used.min(self.bytes);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.outbox.give_back(self.bytes);
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
        assert!(outbox.stalled_since().is_some());
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
