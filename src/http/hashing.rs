//! Password hashing on threads of its own, rationed so that a spike of logins costs
//! latency and only a flood costs errors.

use std::sync::Arc;

use super::error::ApiError;

/// Password hashing: one hash at a time per core, on threads of its own (as many as
/// cores: each hash takes tens of MiB, which the allocator keeps per thread, so few
/// threads keep memory bounded). A request that finds every core busy waits for one,
/// up to `wait`, behind at most `most_waiting` others; past either it is refused
/// (`503 overloaded`) at once. So a spike of logins before a sale costs latency, and
/// only a flood costs errors.
pub struct Hashing {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    most_waiting: usize,
    wait: std::time::Duration,
    /// Work for the hashing threads; they end when this is dropped.
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<HashJob>>,
}

type HashJob = Box<dyn FnOnce() + Send>;

impl Hashing {
    pub fn new(at_once: usize, most_waiting: usize, wait: std::time::Duration) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..at_once {
            let queue = queue.clone();
            let worker = move || loop {
                let job = queue
                    .lock()
                    .map_err(drop)
                    .and_then(|q| q.recv().map_err(drop));
                let Ok(job) = job else { return };
                // A panic is that request's (its answer is dropped), not the thread's.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            };
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(worker)
                .expect("a password hashing thread");
        }
        Hashing {
            permits: Arc::new(tokio::sync::Semaphore::new(at_once)),
            waiting: Default::default(),
            most_waiting,
            wait,
            jobs: std::sync::Mutex::new(jobs),
        }
    }

    /// Runs `work` on a hashing thread once admitted.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self.admit().await?;
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let _turn = permit;
            let _ = done.send(work());
        });
        let sent = self.jobs.lock().is_ok_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            return Err(ApiError::internal("the password hashing threads are gone"));
        }
        answer
            .await
            .map_err(|_| ApiError::internal("a password hash failed"))
    }

    /// A turn to hash, held until the permit is dropped.
    pub async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        use std::sync::atomic::Ordering::SeqCst;
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let refused = |why: &'static str| {
            metrics::counter!("flashsale_password_hashes_refused_total", "why" => why).increment(1);
            ApiError::Overloaded
        };
        if self.waiting.fetch_add(1, SeqCst) >= self.most_waiting {
            self.waiting.fetch_sub(1, SeqCst);
            return Err(refused("queue_full"));
        }
        let turn = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, SeqCst);
        match turn {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(refused("closed")),
            Err(_late) => Err(refused("waited_too_long")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hash_waits_for_a_core_briefly_behind_few_others() {
        let hashing = Arc::new(Hashing::new(1, 2, Duration::from_millis(500)));
        let busy = hashing.admit().await.expect("a core is free");
        // Two may wait for the busy core; a third is refused at once.
        let first = tokio::spawn({
            let h = hashing.clone();
            async move { h.admit().await.map(drop) }
        });
        let second = tokio::spawn({
            let h = hashing.clone();
            async move { h.admit().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(matches!(hashing.admit().await, Err(ApiError::Overloaded)));
        // The core comes free within the wait: the first waiter hashes, then the second.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(busy);
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        // A core busy for longer than the wait: the waiter is refused when it is over.
        let _busy = hashing.admit().await.expect("free again");
        let started = tokio::time::Instant::now();
        assert!(matches!(hashing.admit().await, Err(ApiError::Overloaded)));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }
}
