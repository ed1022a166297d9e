//! Builds the application from settings: migrations and backends ([`backends`]), the
//! supervisor tree and its directory ([`tree`]), secrets ([`secrets`]), and both HTTP
//! listeners bound to their own sockets (port 0 works, the real ports are reported
//! back); then runs it until it is stopped or its tree gives up.

mod backends;
mod secrets;
mod tree;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use ractor::ActorRef;
use ractor_supervisor::SupervisorMsg;
use tokio::task::JoinHandle;

use crate::actors::directory::Directory;
use crate::actors::registry::{Deregister, PodIdentity, RegistryMsg};
use crate::auth::Tokens;
use crate::config::{Secret, Settings};
use crate::http::{self, AppState};
use crate::shards::migrate;
use crate::supervisors::slot::Slot;
use crate::supervisors::stats::Quiesce;
use crate::supervisors::Policy;
use backends::Backends;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("embedded storage {path}: {source}")]
    Embedded { path: String, source: sqlx::Error },
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("cannot bind {what} listener {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the supervisor tree: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("the catalog did not come up: {0}")]
    Catalog(String),
    #[error("Kafka settings: {0}")]
    Events(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the supervisor tree gave up after too many restarts")]
    TreeGaveUp,
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

pub struct Application {
    /// `None` for a worker, which serves only the admin listener.
    pub public_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub admin_token: Secret,
    /// Whether the admin token was generated at this start (and must be printed).
    pub admin_token_generated: bool,
    pub state: web::Data<AppState>,
    public: Option<Server>,
    admin: Server,
    root: ActorRef<SupervisorMsg>,
    root_done: JoinHandle<()>,
    stopping: Arc<AtomicBool>,
}

/// Stops a running application: HTTP first (requests in flight finish), then what
/// they left in the actors' inboxes, then the actor tree.
#[derive(Clone)]
pub struct StopHandle {
    public: Option<ServerHandle>,
    admin: ServerHandle,
    root: ActorRef<SupervisorMsg>,
    directory: Arc<Directory>,
    draining: Arc<AtomicBool>,
    quiesce: Arc<Quiesce>,
    registry: Arc<Slot<RegistryMsg>>,
    /// Set by the first stop; a second one (the listeners ending) does nothing.
    stopping: Arc<AtomicBool>,
}

/// How long a stop waits for the rounds under way and the actors' inboxes.
const DRAIN_ACTORS: Duration = Duration::from_secs(10);

impl StopHandle {
    /// What a stop signal does: `/readyz` answers 503 at once while both listeners keep
    /// serving for `drain` (a load balancer stops sending meanwhile); then `stop`.
    pub async fn drain_then_stop(&self, drain: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            drain_secs = drain.as_secs(),
            "draining: /readyz answers 503, still serving"
        );
        tokio::time::sleep(drain).await;
        self.stop().await;
    }

    /// Top-down: the listeners stop accepting and finish their requests; the actors
    /// that pull work (queue consumers, relays, event consumers, the reconciler) start
    /// no new round and finish the one under way (a consumer acknowledges its batch);
    /// the inboxes empty (the inventory's marks and releases, the shards' writes); the
    /// pod leaves the fleet registry; then the tree stops and its pools close.
    pub async fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.draining.store(true, Ordering::SeqCst);
        if let Some(public) = &self.public {
            public.stop(true).await;
        }
        self.admin.stop(true).await;
        let rounds = self.quiesce.stop();
        let queued = self.directory.queued_work();
        let started = tokio::time::Instant::now();
        let settled = || self.quiesce.busy() == 0 && self.directory.queued_work() == 0;
        while !settled() && started.elapsed() < DRAIN_ACTORS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if settled() {
            tracing::info!(
                rounds,
                queued,
                ms = started.elapsed().as_millis() as u64,
                "drained: requests served, rounds under way finished (batches acknowledged), inboxes empty"
            );
        } else {
            tracing::warn!(
                rounds,
                queued,
                rounds_left = self.quiesce.busy(),
                queued_left = self.directory.queued_work(),
                "the drain did not finish in time; stopping the tree (unacknowledged messages are redelivered)"
            );
        }
        match self.registry.call(Deregister).await {
            Ok(()) => tracing::info!("left the fleet registry"),
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the fleet registry; the pod will show as gone")
            }
        }
        self.root.stop(Some("shutdown".into()));
    }
}

/// This process as the fleet registry shows it: `pod.id` or hostname-pid, and
/// `pod.admin_url` or the admin listener's address (the hostname in place of an
/// address that means every interface).
fn pod_identity(settings: &Settings, admin: SocketAddr) -> PodIdentity {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let id = match settings.pod.id.as_str() {
        "" => format!("{hostname}-{}", std::process::id()),
        id => id.to_string(),
    };
    let admin_url = match settings.pod.admin_url.as_str() {
        "" if admin.ip().is_unspecified() => format!("http://{hostname}:{}", admin.port()),
        "" => format!("http://{admin}"),
        url => url.trim_end_matches('/').to_string(),
    };
    PodIdentity {
        id,
        role: settings.role.as_str().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        admin_url,
        started_at: crate::domain::now_ms(),
    }
}

fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let metrics = crate::telemetry::metrics_handle();
        let q = &settings.queue;
        crate::telemetry::register_rare_counters(
            &[&q.orders_queue, &q.notifications_queue],
            settings.partition_count(),
        );
        let backends = Backends::prepare(&settings).await?;
        let public_listener = match settings.role.takes_orders() {
            true => Some(bind("public", &settings.http.listen)?),
            false => None,
        };
        let admin_listener = bind("admin", &settings.admin.listen)?;
        let admin_addr = admin_listener.local_addr().expect("bound");
        let pod = pod_identity(&settings, admin_addr);

        let policy = Policy::from(&settings.supervision);
        let built = tree::spawn(&settings, &backends, &policy, pod.clone()).await?;
        let (directory, root) = (built.directory, built.root);

        let jwt_secret = match &settings.auth.jwt_secret {
            Some(s) => s.clone(),
            None => backends.jwt_secret(&directory).await?,
        };
        let (admin_token, admin_token_generated) = match &settings.admin.token {
            Some(t) => (t.clone(), false),
            None => backends.admin_token()?,
        };
        let hashing = Arc::new(crate::http::Hashing::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            settings.auth.hash_waiters,
            Duration::from_millis(settings.auth.hash_wait_ms),
        ));
        let state = web::Data::new(AppState {
            directory,
            tokens: Tokens::new(jwt_secret.expose().as_bytes(), settings.auth.token_ttl_secs),
            admin_token: admin_token.clone(),
            tree: std::sync::Arc::new(root.tree),
            policy,
            metrics,
            settings: std::sync::Arc::new(settings),
            draining: Arc::new(AtomicBool::new(false)),
            pod,
            registry: built.registry,
            order_consumers: built.order_consumers,
            quiesce: built.quiesce,
            peers: reqwest::Client::builder()
                .timeout(Duration::from_millis(1500))
                .build()
                .expect("an HTTP client"),
            countdown: Arc::default(),
            hashing,
        });
        let public_addr = public_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound"));
        let bind_err = |what, addr: SocketAddr| {
            move |source| StartError::Bind {
                what,
                addr: addr.to_string(),
                source,
            }
        };
        let public = match public_listener {
            Some(listener) => {
                let addr = public_addr.expect("bound");
                let workers = state.settings.http.workers;
                Some(
                    http::public_server(state.clone(), listener, workers)
                        .map_err(bind_err("public", addr))?,
                )
            }
            None => None,
        };
        let admin = http::admin_server(state.clone(), admin_listener)
            .map_err(bind_err("admin", admin_addr))?;
        Ok(Self {
            public_addr,
            admin_addr,
            admin_token,
            admin_token_generated,
            state,
            public,
            admin,
            root: root.actor,
            root_done: root.done,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            public: self.public.as_ref().map(Server::handle),
            admin: self.admin.handle(),
            root: self.root.clone(),
            directory: self.state.directory.clone(),
            draining: self.state.draining.clone(),
            quiesce: self.state.quiesce.clone(),
            registry: self.state.registry.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Serves until stopped. Ends with an error when the supervisor tree gives up,
    /// so that the process exits non-zero and its orchestrator restarts it.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let stop = self.stop_handle();
        // A worker has no public listener: its place is taken by one that never ends.
        let public = async move {
            match self.public {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        };
        let public = tokio::spawn(public);
        let admin = tokio::spawn(self.admin);
        let mut root_done = self.root_done;
        let served = tokio::select! {
            // A stop ends the listeners first and the tree last, but this task may see
            // both ended at once: the listeners' end is the one that counts.
            biased;
            r = public => r.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r),
            r = admin => r.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r),
            _ = &mut root_done => {
                if stop.stopping.load(Ordering::SeqCst) {
                    // The tree ended because a stop stopped it, not because it gave up.
                    return Ok(());
                }
                if let Some(public) = &stop.public {
                    public.stop(false).await;
                }
                stop.admin.stop(false).await;
                return Err(RunError::TreeGaveUp);
            }
        };
        // The first stop may still be draining; shutdown.grace_secs bounds it (cli).
        stop.stop().await;
        let _ = tokio::time::timeout(Duration::from_secs(60), root_done).await;
        served.map_err(RunError::from)
    }
}
