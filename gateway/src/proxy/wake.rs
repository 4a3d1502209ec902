//! A race of two futures in which each is polled only when its own waker
//! fired. `tokio::select!` polls every branch whenever any of them wakes the
//! task; for a client connection that is hyper's connection future, woken by
//! every read and write, and beside it the idle timer, the first-request
//! timer, the shutdown, abuse and logout tokens and the policy watches,
//! which change a few times a day. Polling those on every wake-up cost
//! about 15 % of a request's instructions (docs/benchmarks.md,
//! "Performance (issue 15)").

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Which of the two finished first.
pub enum Raced<M, S> {
    Main(M),
    Stop(S),
}

/// Runs `main` and `stop` until one finishes. When both are ready in the
/// same poll, `main` wins: it was polled first. Both are pinned by the
/// caller (`pin!`, then `as_mut()`): the race adds no allocation but its
/// wakers.
pub fn race<M: Future + Unpin, S: Future + Unpin>(main: M, stop: S) -> Race<M, S> {
    let task = Arc::new(AtomicWaker::new());
    let main_flag = Arc::new(Branch::new(task.clone()));
    let stop_flag = Arc::new(Branch::new(task.clone()));
    Race {
        main,
        stop,
        main_waker: Waker::from(main_flag.clone()),
        stop_waker: Waker::from(stop_flag.clone()),
        main_flag,
        stop_flag,
        task,
    }
}

pub struct Race<M, S> {
    main: M,
    stop: S,
    main_flag: Arc<Branch>,
    stop_flag: Arc<Branch>,
    main_waker: Waker,
    stop_waker: Waker,
    /// The task that awaits the race.
    task: Arc<AtomicWaker>,
}

/// One branch's waker: notes that the branch has something to do, then
/// wakes the task.
struct Branch {
    woken: AtomicBool,
    task: Arc<AtomicWaker>,
}

impl Branch {
    fn new(task: Arc<AtomicWaker>) -> Branch {
        // Both are polled the first time.
        Branch {
            woken: AtomicBool::new(true),
            task,
        }
    }

    fn take(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<M: Future + Unpin, S: Future + Unpin> Future for Race<M, S> {
    type Output = Raced<M::Output, S::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Registered before the flags are read: a wake-up that comes after
        // the read finds this waker and polls the task again.
        self.task.register(cx.waker());
        let this = &mut *self;
        if this.main_flag.take() {
            let mut branch = Context::from_waker(&this.main_waker);
            if let Poll::Ready(out) = Pin::new(&mut this.main).poll(&mut branch) {
                return Poll::Ready(Raced::Main(out));
            }
        }
        if this.stop_flag.take() {
            let mut branch = Context::from_waker(&this.stop_waker);
            if let Poll::Ready(out) = Pin::new(&mut this.stop).poll(&mut branch) {
                return Poll::Ready(Raced::Stop(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
