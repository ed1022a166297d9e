//! Open-loop scheduling: every request has an intended send time fixed in advance, and
//! its latency is measured from that time, so a slow server cannot slow the generator
//! down and hide its own delays (no coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Offsets of `n` arrivals spread evenly over `window` (all at once for a zero window).
pub fn burst(n: usize, window: Duration) -> Vec<Duration> {
    (0..n)
        .map(|i| window.mul_f64(i as f64 / n.max(1) as f64))
        .collect()
}

/// Offsets of a constant arrival rate for `duration`.
pub fn constant_rate(rate: f64, duration: Duration) -> Vec<Duration> {
    assert!(rate > 0.0, "a positive rate");
    let n = (rate * duration.as_secs_f64()).round() as usize;
    (0..n)
        .map(|i| Duration::from_secs_f64(i as f64 / rate))
        .collect()
}

/// Runs `job(i)` at `start + offsets[i]` for every i, never waiting for earlier jobs,
/// with at most `max_in_flight` running (beyond that a job starts late, and its
/// lateness counts in its latency). Each job gets its intended instant; returns all
/// results in arrival order.
pub async fn run<T, F, Fut>(offsets: &[Duration], max_in_flight: usize, job: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let start = Instant::now() + Duration::from_millis(20);
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = Vec::with_capacity(offsets.len());
    for (i, offset) in offsets.iter().enumerate() {
        let intended = start + *offset;
        tokio::time::sleep_until(intended).await;
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let fut = job(i, intended);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("a request task panicked"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_rate_spaces_arrivals_evenly() {
        let a = constant_rate(200.0, Duration::from_secs(3));
        assert_eq!(a.len(), 600);
        assert_eq!(a[0], Duration::ZERO);
        assert_eq!(a[1], Duration::from_millis(5));
        assert!(a[599] < Duration::from_secs(3));
    }

    #[test]
    fn a_burst_fits_its_window() {
        let b = burst(1000, Duration::from_millis(500));
        assert_eq!(b.len(), 1000);
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        assert!(*b.last().unwrap() < Duration::from_millis(500));
        assert!(burst(10, Duration::ZERO).iter().all(|d| d.is_zero()));
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_start_on_time_even_when_earlier_ones_are_slow() {
        let offsets = constant_rate(10.0, Duration::from_secs(1));
        let started = run(&offsets, 100, |i, intended| async move {
            let lateness = Instant::now().duration_since(intended);
            // Every job is slow; an open loop still starts the next one on time.
            tokio::time::sleep(Duration::from_secs(5)).await;
            (i, lateness)
        })
        .await;
        assert_eq!(started.len(), 10);
        assert!(
            started
                .iter()
                .all(|(_, late)| *late < Duration::from_millis(5)),
            "{started:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_client_delays_jobs_and_that_delay_is_visible() {
        let offsets = constant_rate(10.0, Duration::from_secs(1));
        let late = run(&offsets, 1, |_, intended| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Instant::now().duration_since(intended)
        })
        .await;
        // With one slot, later requests wait for earlier ones: measured from the
        // intended time, their latency grows instead of staying at 300 ms.
        assert!(late[9] > Duration::from_millis(2000), "{late:?}");
    }
}
