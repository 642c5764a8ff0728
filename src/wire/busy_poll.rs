//! Polling the sockets for a moment after a reply instead of sleeping.
//!
//! A thread that sleeps in `epoll_wait` after answering pays for a wake-up
//! when the next request comes: on these VMs a halted vCPU takes tens of
//! microseconds to wake, about a third of a single call's round trip. So
//! after a reply leaves, the server's thread keeps polling (each poll is a
//! non-blocking `epoll_wait`) for a window, as Redpanda's reactor polls and
//! as the guest kernel's haltpoll does before halting. A client polls the
//! same way after its requests (what it sends is "a reply" here), for the
//! answer.
//!
//! The window adapts as haltpoll's does, from the idle time the thread
//! sees (from its last reply to the next bytes it receives): it grows while
//! the next request came within the most allowed (polling longer would
//! have caught it), stays while requests come inside it, and shrinks to
//! none after pauses longer than the most. Sparse traffic costs nothing;
//! a slower request-reply loop (a TLS one, whose turn took longer than a
//! fixed 50 µs window and so paid for two wake-ups a call) gets the window
//! it needs.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The first window opened, and the least: below it, none (haltpoll's
/// `guest_halt_poll_grow_start`).
const GROW_START: Duration = Duration::from_micros(50);

/// The window after each reply, adapted to the idle times seen (no clock,
/// no task: the caller passes the times).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// The most a window may be.
    max: Duration,
    /// The window opened after the next reply (zero: none).
    current: Duration,
    /// The last reply, until bytes next arrive: the idle time runs from it.
    last_reply: Option<Instant>,
    /// Polling until then, if a window is open.
    until: Option<Instant>,
}

impl Window {
    pub(crate) fn new(max: Duration) -> Window {
        Window {
            max,
            current: Duration::ZERO,
            last_reply: None,
            until: None,
        }
    }

    /// A reply left at `now`: answers until when to poll, if at all.
    pub(crate) fn on_reply(&mut self, now: Instant) -> Option<Instant> {
        self.last_reply = Some(now);
        self.until = (!self.current.is_zero()).then(|| now + self.current);
        self.until
    }

    /// Bytes arrived at `now`: the thread has work, so the window closes;
    /// the first arrival after a reply adapts the next window to the idle
    /// time it ended.
    pub(crate) fn on_arrival(&mut self, now: Instant) {
        self.until = None;
        let Some(reply) = self.last_reply.take() else {
            return;
        };
        let idle = now.saturating_duration_since(reply);
        if idle <= self.current {
            // Caught by polling: keep the window.
        } else if idle <= self.max {
            // Polling longer would have caught it.
            self.current = if self.current < GROW_START {
                GROW_START.min(self.max)
            } else {
                (self.current * 2).min(self.max)
            };
        } else {
            // No window allowed would have: poll less, or not at all.
            self.current /= 2;
            if self.current < GROW_START {
                self.current = Duration::ZERO;
            }
        }
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

    /// The window the next reply opens.
    #[cfg(test)]
    pub(crate) fn next_window(&self) -> Duration {
        self.0.window.borrow().current
    }

    /// Bytes arrived on one of this thread's connections (costs a clock
    /// read only for the first arrival after a reply).
    pub fn bytes_arrived(&self) {
        let mut window = self.0.window.borrow_mut();
        // A window is open only after a reply, so without one there is
        // nothing to close or to measure.
        if window.last_reply.is_some() {
            window.on_arrival(Instant::now());
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

    const MAX: Duration = Duration::from_micros(200);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// After a reply at `t`, the next bytes come `idle` later and the next
    /// reply 5 µs after them (then at `t`); answers the window it opens.
    fn turn(w: &mut Window, t: &mut Instant, idle: u64) -> Option<Duration> {
        w.on_arrival(*t + us(idle));
        *t += us(idle + 5);
        w.on_reply(*t).map(|until| until - *t)
    }

    /// A window whose first reply was at `t`.
    fn started(max: Duration, t: Instant) -> Window {
        let mut w = Window::new(max);
        assert_eq!(w.on_reply(t), None, "a first reply opens no window");
        w
    }

    #[test]
    fn a_first_reply_opens_no_window() {
        let mut w = Window::new(MAX);
        assert_eq!(w.on_reply(Instant::now()), None);
    }

    #[test]
    fn the_window_grows_from_50_us_doubling_to_the_most_while_requests_come_within_it() {
        let mut t = Instant::now();
        let mut w = started(MAX, t);
        assert_eq!(turn(&mut w, &mut t, 150), Some(us(50)), "starts at 50 µs");
        assert_eq!(turn(&mut w, &mut t, 150), Some(us(100)));
        assert_eq!(turn(&mut w, &mut t, 150), Some(us(200)));
        assert_eq!(
            turn(&mut w, &mut t, 150),
            Some(us(200)),
            "caught: the window stays"
        );
        assert_eq!(turn(&mut w, &mut t, 200), Some(us(200)), "at the most");
    }

    #[test]
    fn a_window_never_exceeds_the_most() {
        let mut t = Instant::now();
        let mut w = started(us(80), t);
        assert_eq!(turn(&mut w, &mut t, 70), Some(us(50)));
        assert_eq!(turn(&mut w, &mut t, 80), Some(us(80)), "exactly the most");
        let mut small = started(us(20), t);
        assert_eq!(turn(&mut small, &mut t, 20), Some(us(20)));
    }

    #[test]
    fn requests_caught_keep_the_window_as_it_is() {
        let mut t = Instant::now();
        let mut w = started(MAX, t);
        assert_eq!(turn(&mut w, &mut t, 30), Some(us(50)));
        for _ in 0..10 {
            assert_eq!(turn(&mut w, &mut t, 30), Some(us(50)));
        }
    }

    #[test]
    fn pauses_longer_than_the_most_halve_the_window_then_close_it() {
        let mut t = Instant::now();
        let mut w = started(MAX, t);
        for _ in 0..3 {
            turn(&mut w, &mut t, 150);
        }
        assert_eq!(
            turn(&mut w, &mut t, 201),
            Some(us(100)),
            "one past the most"
        );
        assert_eq!(turn(&mut w, &mut t, 5000), Some(us(50)));
        assert_eq!(turn(&mut w, &mut t, 5000), None, "below 50 µs: none");
        assert_eq!(
            turn(&mut w, &mut t, 5000),
            None,
            "sparse traffic: no polling"
        );
    }

    #[test]
    fn bytes_close_the_window_and_only_the_first_after_a_reply_counts() {
        let t = Instant::now();
        let mut w = Window::new(MAX);
        w.on_reply(t);
        w.on_arrival(t + us(60));
        assert_eq!(w.on_reply(t + us(70)), Some(t + us(120)));
        assert!(w.poll_on(t + us(80)));
        w.on_arrival(t + us(90));
        assert!(!w.poll_on(t + us(91)), "closed by the arrival");
        // Later bytes of the same burst are not an idle time: no change.
        w.on_arrival(t + us(5000));
        assert_eq!(w.on_reply(t + us(5010)), Some(t + us(5060)));
    }

    #[test]
    fn the_poller_polls_only_while_the_window_is_open() {
        let t = Instant::now();
        let mut w = Window::new(MAX);
        w.on_reply(t);
        w.on_arrival(t + us(100));
        w.on_reply(t + us(110));
        assert!(w.poll_on(t + us(159)));
        assert!(!w.poll_on(t + us(160)), "closed at its end");
        assert!(!w.poll_on(t + us(161)));
    }
}
