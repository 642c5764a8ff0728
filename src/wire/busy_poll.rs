//! Polling the sockets for a moment after a reply instead of sleeping.
//!
//! A thread that sleeps in `epoll_wait` after answering pays for a wake-up
//! when the next request comes: on these VMs a halted vCPU takes tens of
//! microseconds to wake, about a third of a single call's round trip. So
//! after a reply leaves, the server's thread keeps polling (each poll is a
//! non-blocking `epoll_wait`) for up to a window, as Redpanda's reactor
//! polls and as the guest kernel's haltpoll does before halting. Only
//! replies that follow each other closely open a window, so sparse traffic
//! costs nothing. A client polls the same way after its requests (what it
//! sends is "a reply" here), for the answer.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// When to poll, given the times of replies (no clock, no task): a window
/// opens after a reply that came at most four windows after the one before
/// it, so a connection in a tight request-reply loop is polled for, and
/// sparse traffic (or a first reply after a pause) is not.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    max: Duration,
    last_reply: Option<Instant>,
    /// Polling until then, if a window is open.
    until: Option<Instant>,
}

impl Window {
    pub(crate) fn new(max: Duration) -> Window {
        Window {
            max,
            last_reply: None,
            until: None,
        }
    }

    /// A reply left at `now`: answers until when to poll, if at all.
    pub(crate) fn on_reply(&mut self, now: Instant) -> Option<Instant> {
        let dense = self
            .last_reply
            .is_some_and(|last| now.saturating_duration_since(last) <= self.max * 4);
        self.last_reply = Some(now);
        self.until = dense.then(|| now + self.max);
        self.until
    }

    /// Whether to go on polling at `now` (closes the window once it passed).
    fn poll_on(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now < until => true,
            Some(_) => {
                self.until = None;
                false
            }
            None => false,
        }
    }
}

/// One thread's poller, shared by the connections served on it.
#[derive(Clone)]
pub struct BusyPoll(Rc<Shared>);

struct Shared {
    window: RefCell<Window>,
    /// The poller task, asleep while no window is open.
    poller: RefCell<Option<Waker>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The poller learns that every handle is gone, and ends.
        if let Some(w) = self.poller.get_mut().take() {
            w.wake();
        }
    }
}

impl BusyPoll {
    /// A poller whose window is at most `max` (`None` when zero: off).
    /// Must be called inside a `LocalSet`: it starts the poller task, which
    /// ends once every handle is dropped.
    pub fn start(max: Duration) -> Option<BusyPoll> {
        if max.is_zero() {
            return None;
        }
        let shared = Rc::new(Shared {
            window: RefCell::new(Window::new(max)),
            poller: RefCell::new(None),
        });
        tokio::task::spawn_local(poll_after_replies(Rc::downgrade(&shared)));
        Some(BusyPoll(shared))
    }

    /// A reply has left: poll for the next request for a while.
    pub fn reply_sent(&self) {
        let opened = self.0.window.borrow_mut().on_reply(Instant::now());
        if opened.is_some()
            && let Some(w) = self.0.poller.borrow_mut().take()
        {
            w.wake();
        }
    }
}

/// Sleeps until a window opens, then yields until it closes: each yield
/// lets the runtime poll its sockets without blocking, and run what came.
async fn poll_after_replies(shared: Weak<Shared>) {
    loop {
        let open = std::future::poll_fn(|cx| {
            let Some(s) = shared.upgrade() else {
                return Poll::Ready(false);
            };
            if s.window.borrow().until.is_some() {
                return Poll::Ready(true);
            }
            *s.poller.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !open {
            return;
        }
        loop {
            let Some(s) = shared.upgrade() else {
                return;
            };
            if !s.window.borrow_mut().poll_on(Instant::now()) {
                break;
            }
            drop(s);
            // First the vCPU, to any thread that waits for it: when the
            // peer's thread shares this vCPU (a client and its node pinned
            // together, or a one-CPU container), spinning would hold the
            // vCPU that thread needs to answer. With none waiting it comes
            // back at once.
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_first_reply_or_one_after_a_pause_opens_no_window() {
        let t = Instant::now();
        let mut w = Window::new(MAX);
        assert_eq!(w.on_reply(t), None, "the first reply");
        assert_eq!(
            w.on_reply(t + us(201)),
            None,
            "just over four windows later"
        );
        assert_eq!(w.on_reply(t + us(5000)), None);
    }

    #[test]
    fn replies_at_most_four_windows_apart_open_one_after_each() {
        let t = Instant::now();
        let mut w = Window::new(MAX);
        w.on_reply(t);
        assert_eq!(
            w.on_reply(t + us(200)),
            Some(t + us(250)),
            "exactly four windows"
        );
        assert_eq!(w.on_reply(t + us(230)), Some(t + us(280)));
        assert_eq!(w.on_reply(t + us(800)), None, "a pause closes it");
    }

    #[test]
    fn the_poller_polls_only_while_the_window_is_open() {
        let t = Instant::now();
        let mut w = Window::new(MAX);
        w.on_reply(t);
        w.on_reply(t + us(10));
        assert!(w.poll_on(t + us(59)));
        assert!(!w.poll_on(t + us(60)), "closed at its end");
        assert!(!w.poll_on(t + us(61)));
    }
}
