//! Waiting for a condition with a deadline instead of sleeping for a fixed time: a
//! shared 2-core machine can be slow at any moment, so a test waits for what it
//! needs to see, and fails only once a generous deadline has passed.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How often a wait for a condition looks again.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it answers `Ok`, and returns what it answered. Panics once
/// `within` has passed, saying what was awaited and the last `Err` (what was seen).
pub async fn eventually<T, E, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}; last seen: {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}
