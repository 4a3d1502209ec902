use super::*;

/// Rapid reset is cut at the hundred-and-first abandoned request.
#[test]
fn a_burst_of_abandoned_requests_is_over_budget() {
    let t0 = Instant::now();
    let mut budget = Bucket::new(t0, ABANDONED_LIMIT as f64, ABANDONED_REFILL);
    for i in 0..ABANDONED_LIMIT {
        assert!(budget.take(t0), "request {i}");
    }
    assert!(!budget.take(t0));
}

/// A browser that abandons a request now and then, over a long-lived
/// connection, is never cut: a lifetime count cut it after a hundred.
#[test]
fn occasional_abandoned_requests_never_run_out() {
    let t0 = Instant::now();
    let mut budget = Bucket::new(t0, ABANDONED_LIMIT as f64, ABANDONED_REFILL);
    // 30 pending requests left behind every 45 s, for a day.
    for round in 0..2000u64 {
        let at = t0 + Duration::from_secs(45 * round);
        for i in 0..30 {
            assert!(budget.take(at), "round {round}, request {i}");
        }
    }
}

/// The size of what `f` returns: for an async fn, its future.
fn future_size<F, A, B, C, R>(_: &F) -> usize
where
    F: Fn(A, B, C) -> R,
{
    std::mem::size_of::<R>()
}

/// A request's future is boxed once per request, and every step that
/// holds it moves or copies it: the portal, connecting to the device and
/// draining a refused body are boxed out of it (5.6 KB before, 3.0 KB
/// after; docs/benchmarks.md, "Performance (issue 15)"). A change that
/// makes the hot path's future grow past this shows here.
#[test]
fn the_request_future_stays_small() {
    let size = future_size(&handle);
    assert!(size <= 3584, "the request future is {size} bytes");
}
