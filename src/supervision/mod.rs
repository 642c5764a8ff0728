//! Supervision: the one mechanism that restarts every actor of the node.
//!
//! [`start`] runs an actor under a [`Supervisor`] future instead of actix's:
//! each poll of the actor's context (its handlers, the futures it spawned or
//! waits on, their completions, its timers) runs inside `catch_unwind`. A
//! panic anywhere in that work, or the actor stopping itself while it still
//! has clients, is a failure: the futures in flight are dropped (their
//! callers see a closed reply), the actor's [`Supervised::restarting`] runs
//! (each actor documents what it keeps and what it reopens) and then its
//! `started`, and the mailbox is served again: messages queued meanwhile are
//! not lost.
//!
//! Each child has a [`RestartBudget`]. A failure past the budget is not
//! restarted: the actor is dropped and its parent is told with an
//! [`Escalation`]. A SegmentActor escalates to its LogActor (which restarts
//! itself, reopening the whole partition); the LogActors, MembershipActor
//! and the fronts escalate to the Agent, the root, whose answer is a
//! graceful shutdown with a non-zero exit status, so the orchestrator
//! restarts the node.
//!
//! Tests inject panics with [`InjectPanic`] at an actor's kinds of work:
//! each actor arms its [`Failpoints`] and fires them at its own sites.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::dev::{AsyncContextParts, ContextFut};
use actix::prelude::*;

/// Allows a few restarts in a sliding window; one more is an escalation.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: Vec<Instant>,
}

impl Default for RestartBudget {
    /// Three restarts a minute, as OTP's supervisors default to (roughly).
    fn default() -> Self {
        RestartBudget::new(3, Duration::from_secs(60))
    }
}

impl RestartBudget {
    /// `max` restarts within any `window`.
    pub fn new(max: usize, window: Duration) -> RestartBudget {
        RestartBudget {
            max,
            window,
            recent: Vec::new(),
        }
    }

    /// Records a failure; false when restarting it would exceed the budget.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        let window = self.window;
        self.recent.retain(|t| now.duration_since(*t) < window);
        self.recent.push(now);
        self.recent.len() <= self.max
    }

    /// Failures in the current window.
    pub fn count(&self) -> usize {
        self.recent.len()
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

/// A child spent its restart budget (or could not be restarted): told to
/// its parent, which decides.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Escalation {
    /// Which child, as its spec names it (e.g. `segment p-1/0`).
    pub child: String,
    /// The child's identity, for parents that run many of one kind.
    pub id: u64,
    /// The last failure and the budget spent.
    pub reason: String,
}

/// Where a child's escalation goes.
pub type Parent = Rc<dyn Fn(Escalation)>;

/// An escalation target that forwards to an actor.
pub fn parent<A>(addr: &Addr<A>) -> Parent
where
    A: Actor + Handler<Escalation>,
    A::Context: actix::dev::ToEnvelope<A, Escalation>,
{
    let recipient = addr.clone().recipient::<Escalation>();
    Rc::new(move |e| recipient.do_send(e))
}

/// How one child is supervised.
pub struct ChildSpec {
    /// For logs and escalations.
    pub name: String,
    pub id: u64,
    pub budget: RestartBudget,
    /// Told when the budget is spent; `None`: only logged.
    pub parent: Option<Parent>,
}

impl ChildSpec {
    pub fn new(name: impl Into<String>) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            id: 0,
            budget: RestartBudget::default(),
            parent: None,
        }
    }

    pub fn id(mut self, id: u64) -> ChildSpec {
        self.id = id;
        self
    }

    pub fn budget(mut self, budget: RestartBudget) -> ChildSpec {
        self.budget = budget;
        self
    }

    pub fn parent(mut self, parent: Option<Parent>) -> ChildSpec {
        self.parent = parent;
        self
    }
}

/// Starts `actor` on the current arbiter under a [`Supervisor`].
pub fn start<A>(spec: ChildSpec, actor: A) -> Addr<A>
where
    A: Supervised + Actor<Context = Context<A>>,
{
    start_with(spec, move |_| actor)
}

/// [`start`], building the actor with its context (to learn its address).
pub fn start_with<A>(spec: ChildSpec, build: impl FnOnce(&mut Context<A>) -> A) -> Addr<A>
where
    A: Supervised + Actor<Context = Context<A>>,
{
    let mut ctx = Context::new();
    let actor = build(&mut ctx);
    let addr = ctx.address();
    let fut = ctx.into_future(actor);
    actix_rt::spawn(Supervisor {
        fut: Some(fut),
        spec,
    });
    addr
}

/// Runs one actor's context; turns its panics and stops into restarts.
pub struct Supervisor<A>
where
    A: Supervised + Actor<Context = Context<A>>,
{
    fut: Option<ContextFut<A, Context<A>>>,
    spec: ChildSpec,
}

impl<A> Future for Supervisor<A>
where
    A: Supervised + Actor<Context = Context<A>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let Some(fut) = this.fut.as_mut() else {
                return Poll::Ready(());
            };
            let failure = match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *fut).poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                // Stopped with no client left: a normal end.
                Ok(Poll::Ready(())) if !fut.ctx().parts().connected() => {
                    this.fut = None;
                    return Poll::Ready(());
                }
                Ok(Poll::Ready(())) => "stopped itself after a failure".to_string(),
                Err(panic) => format!("panicked: {}", panic_message(&*panic)),
            };
            if !this.restart(failure) {
                return Poll::Ready(());
            }
        }
    }
}

impl<A> Supervisor<A>
where
    A: Supervised + Actor<Context = Context<A>>,
{
    /// Restarts the actor after `failure`, or drops it and escalates. True
    /// when it was restarted.
    fn restart(&mut self, failure: String) -> bool {
        let name = &self.spec.name;
        let Some(mut fut) = self.fut.take() else {
            return false;
        };
        if !self.spec.budget.allow() {
            let reason = format!(
                "{failure}; {} failures within {:?}: restart budget spent",
                self.spec.budget.count(),
                self.spec.budget.window()
            );
            tracing::error!(actor = %name, %reason, "escalating to the parent");
            discard(fut);
            self.escalate(reason);
            return false;
        }
        tracing::error!(actor = %name, %failure, "actor failed: restarting it");
        match catch_unwind(AssertUnwindSafe(|| fut.restart())) {
            Ok(true) => {
                self.fut = Some(fut);
                true
            }
            // No client is left to serve: nothing to restart.
            Ok(false) => false,
            Err(panic) => {
                let reason = format!("restarting it panicked: {}", panic_message(&*panic));
                tracing::error!(actor = %name, %reason, "escalating to the parent");
                discard(fut);
                self.escalate(reason);
                false
            }
        }
    }

    fn escalate(&self, reason: String) {
        let escalation = Escalation {
            child: self.spec.name.clone(),
            id: self.spec.id,
            reason,
        };
        match &self.spec.parent {
            Some(parent) => parent(escalation),
            None => {
                tracing::error!(actor = %escalation.child, reason = %escalation.reason, "no parent to escalate to: the actor is gone")
            }
        }
    }
}

/// Drops a failed actor's context. Dropping stops the actor (its
/// `stopping` and `stopped` run): a panic there is logged, not propagated.
fn discard<A>(fut: ContextFut<A, Context<A>>)
where
    A: Actor<Context = Context<A>>,
{
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(fut))) {
        tracing::error!(panic = %panic_message(&*panic), "a failed actor panicked while stopping");
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// An actor's kinds of work, where a test may inject a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The next message handled.
    Handler,
    /// The next completion of work the actor started (a sync, a reopen, an
    /// accept, a checkpoint write: each actor says which).
    Completion,
    /// The next run of a timer.
    Timer,
    /// The next RPC or HTTP call served by a connection (the fronts only):
    /// the connection is closed, the front keeps serving.
    Connection,
}

/// Panics armed by a test: one per kind of work, fired once.
#[derive(Debug, Default, Clone)]
pub struct Failpoints {
    armed: Rc<Cell<u8>>,
}

impl Failpoints {
    fn bit(work: Work) -> u8 {
        1 << (work as u8)
    }

    pub fn arm(&self, work: Work) {
        self.armed.set(self.armed.get() | Self::bit(work));
    }

    /// Panics if `work` was armed (once).
    #[inline]
    pub fn hit(&self, work: Work) {
        let armed = self.armed.get();
        if armed & Self::bit(work) != 0 {
            self.armed.set(armed & !Self::bit(work));
            panic!("injected panic ({work:?})");
        }
    }
}

/// Test-only: makes the actor panic at its next `work`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct InjectPanic(pub Work);

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

    #[test]
    fn failpoints_fire_once_and_only_where_armed() {
        let f = Failpoints::default();
        f.arm(Work::Timer);
        f.hit(Work::Handler);
        let fired = catch_unwind(AssertUnwindSafe(|| f.hit(Work::Timer)));
        assert!(fired.is_err());
        f.hit(Work::Timer);
    }

    struct Counter {
        restarts: Rc<Cell<u32>>,
        restarted: Rc<tokio::sync::Notify>,
        failpoints: Failpoints,
        value: u32,
    }

    impl Actor for Counter {
        type Context = Context<Self>;
    }

    impl Supervised for Counter {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.restarts.set(self.restarts.get() + 1);
            self.restarted.notify_one();
        }
    }

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Bump;

    impl Handler<Bump> for Counter {
        type Result = u32;
        fn handle(&mut self, _: Bump, _: &mut Context<Self>) -> u32 {
            self.failpoints.hit(Work::Handler);
            self.value += 1;
            self.value
        }
    }

    impl Handler<InjectPanic> for Counter {
        type Result = ();
        fn handle(&mut self, InjectPanic(work): InjectPanic, ctx: &mut Context<Self>) {
            self.failpoints.arm(work);
            match work {
                Work::Timer => {
                    ctx.run_later(Duration::ZERO, |act, _| act.failpoints.hit(Work::Timer));
                }
                Work::Completion => {
                    ctx.spawn(
                        async {}
                            .into_actor(self)
                            .map(|_, act, _| act.failpoints.hit(Work::Completion)),
                    );
                }
                _ => {}
            }
        }
    }

    #[actix_rt::test]
    async fn a_panic_in_any_kind_of_work_restarts_the_actor_then_escalates() {
        let restarts = Rc::new(Cell::new(0));
        let restarted = Rc::new(tokio::sync::Notify::new());
        let escalated = Rc::new(Cell::new(false));
        let seen = escalated.clone();
        let spec = ChildSpec::new("counter").parent(Some(Rc::new(move |_| seen.set(true))));
        let addr = start(
            spec,
            Counter {
                restarts: restarts.clone(),
                restarted: restarted.clone(),
                failpoints: Failpoints::default(),
                value: 0,
            },
        );
        for (i, work) in [Work::Handler, Work::Completion, Work::Timer]
            .into_iter()
            .enumerate()
        {
            addr.send(InjectPanic(work)).await.unwrap();
            if work == Work::Handler {
                assert!(
                    addr.send(Bump).await.is_err(),
                    "the panicking call gets no answer"
                );
            }
            restarted.notified().await;
            // Served after the restart, state kept (this actor keeps it).
            let value = addr.send(Bump).await.unwrap();
            assert_eq!(restarts.get(), i as u32 + 1);
            assert!(value >= 1);
        }
        assert!(!escalated.get());
        addr.send(InjectPanic(Work::Handler)).await.unwrap();
        assert!(addr.send(Bump).await.is_err());
        assert!(escalated.get(), "the fourth failure in a minute escalates");
        assert!(addr.send(Bump).await.is_err(), "and the actor is gone");
    }
}
