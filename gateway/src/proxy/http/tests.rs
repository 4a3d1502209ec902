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
/// after), and no step is an `async fn` that would keep its arguments
/// twice (3,256 bytes before, 2,128 after; docs/benchmarks.md,
/// "Performance (issue 15)"). A change that makes the hot path's future
/// grow past this shows here.
#[test]
fn the_request_future_stays_small() {
    let size = future_size(&handle);
    assert!(size <= 2304, "the request future is {size} bytes");
}

/// The host memo answers only for the very bytes it was made from: a
/// request that changes the case, the port, or moves the name between
/// `Host` and the target is checked again.
#[test]
fn the_host_memo_matches_byte_for_byte() {
    let hv = |s: &'static str| HeaderValue::from_static(s);
    let auth = |s: &'static str| http::uri::Authority::from_static(s);
    let memo = HostMemo {
        host_header: Some(hv("pump.example:8443")),
        authority: None,
        host: Some(hv("pump.example:8443")),
        forwarded: hv("for=127.0.0.1;proto=https;host=\"pump.example:8443\""),
    };
    assert!(memo.is_for(Some(&hv("pump.example:8443")), None));
    assert!(!memo.is_for(Some(&hv("PUMP.example:8443")), None));
    assert!(!memo.is_for(Some(&hv("pump.example:8444")), None));
    assert!(!memo.is_for(None, Some(&auth("pump.example:8443"))));
    assert!(!memo.is_for(
        Some(&hv("pump.example:8443")),
        Some(&auth("pump.example:8443"))
    ));
    let h2 = HostMemo {
        host_header: None,
        authority: Some(auth("127.0.0.1:8443")),
        host: Some(hv("127.0.0.1:8443")),
        forwarded: hv("for=127.0.0.1;proto=https;host=\"127.0.0.1:8443\""),
    };
    assert!(h2.is_for(None, Some(&auth("127.0.0.1:8443"))));
    // `Authority`'s own == ignores case; the memo does not.
    assert!(!HostMemo {
        authority: Some(auth("pump.example")),
        ..h2
    }
    .is_for(None, Some(&auth("PUMP.example"))));
}
