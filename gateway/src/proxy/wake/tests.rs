use std::sync::atomic::AtomicUsize;

use super::*;

/// A future that counts its polls and finishes once `done` says so.
async fn counted(polls: &AtomicUsize, done: tokio::sync::oneshot::Receiver<()>) -> &'static str {
    let mut done = done;
    std::future::poll_fn(|cx| {
        polls.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut done).poll(cx).map(|_| "main")
    })
    .await
}

#[tokio::test]
async fn the_branch_that_finishes_first_wins() {
    let polls = AtomicUsize::new(0);
    let (finish, done) = tokio::sync::oneshot::channel();
    let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    finish.send(()).unwrap();
    let main = std::pin::pin!(counted(&polls, done));
    match race(main, stop_rx).await {
        Raced::Main(out) => assert_eq!(out, "main"),
        Raced::Stop(_) => panic!("stop won"),
    }
}

/// The point of the race: a wake-up of one branch polls that branch only.
#[tokio::test]
async fn a_stop_wake_up_does_not_poll_main_and_stop_can_win() {
    let polls = AtomicUsize::new(0);
    let (_finish, done) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<u8>();
    let main = std::pin::pin!(counted(&polls, done));
    let mut raced = std::pin::pin!(race(main, stop_rx));
    // First poll: both branches, both pending.
    assert!(futures_poll(raced.as_mut()).is_pending());
    assert_eq!(polls.load(Ordering::Relaxed), 1);
    // Nothing woke either: polling again polls neither.
    assert!(futures_poll(raced.as_mut()).is_pending());
    assert_eq!(polls.load(Ordering::Relaxed), 1);
    stop_tx.send(7).unwrap();
    match futures_poll(raced.as_mut()) {
        Poll::Ready(Raced::Stop(Ok(7))) => {}
        _ => panic!("stop did not win"),
    }
    assert_eq!(
        polls.load(Ordering::Relaxed),
        1,
        "main was polled for stop's wake-up"
    );
}

/// When both are ready in one poll, main wins (the connection's own end
/// is reported before a timer that fired at the same moment).
#[tokio::test]
async fn main_wins_a_tie() {
    let polls = AtomicUsize::new(0);
    let (finish, done) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let main = std::pin::pin!(counted(&polls, done));
    let mut raced = std::pin::pin!(race(main, stop_rx));
    assert!(futures_poll(raced.as_mut()).is_pending());
    finish.send(()).unwrap();
    stop_tx.send(()).unwrap();
    assert!(matches!(
        futures_poll(raced.as_mut()),
        Poll::Ready(Raced::Main("main"))
    ));
}

/// A branch woken while the task sleeps wakes the task.
#[tokio::test]
async fn a_branch_wake_up_wakes_the_task() {
    let (finish, done) = tokio::sync::oneshot::channel::<()>();
    let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let raced = race(done, stop_rx);
    let waiter = tokio::spawn(async move { matches!(raced.await, Raced::Main(Ok(()))) });
    tokio::task::yield_now().await;
    finish.send(()).unwrap();
    assert!(waiter.await.unwrap());
}

/// One poll with a waker that does nothing.
fn futures_poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    f.poll(&mut Context::from_waker(&waker))
}
