//! The command line: `serve`, `migrate`, `reshard`, `tree`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "An actor-based flash-sale order engine"
)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "FLASHSALE_LOG_JSON")]
    pub log_json: bool,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the public and admin APIs: embedded mode (data under ./data) without a
    /// config file, cluster mode with config/cluster.toml.
    Serve {
        /// Settings file; environment variables FLASHSALE__SECTION__KEY override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// What this process runs: `api` takes orders (public listener, inventory,
        /// publishers, reconciler), `worker` persists and publishes them (consumers,
        /// shards, relays, event consumers; admin listener only), `all` both. Roles
        /// other than `all` need cluster mode. Overrides the config's `role`
        /// (FLASHSALE__ROLE).
        #[arg(long, value_parser = ["api", "worker", "all"])]
        role: Option<String>,
    },
    /// Create missing databases and apply migrations to the catalog and every shard.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Plan growing the shard count from the live data (a dry run: nothing changes):
    /// which users move to which new shard, and how many orders go with them.
    Reshard {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The shard count to grow to: a multiple of today's that divides 4096.
        #[arg(long)]
        to: usize,
        /// Also print every user that moves (user, from shard, to shard, orders).
        #[arg(long)]
        list: bool,
    },
    /// Move every order or notification message still in one RabbitMQ queue into
    /// another, then delete the emptied one: the last step of moving to queues of
    /// another type (docs/operations.md, "Quorum queues"). Nothing is lost if it stops
    /// half way; run it again.
    MoveQueue {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The queue to empty (for example the classic `flashsale.orders`).
        #[arg(long)]
        from: String,
        /// The queue to move into; declared with the config's `queue.kind` if missing.
        #[arg(long)]
        to: String,
    },
    /// Print the live supervisor tree of a running server.
    Tree {
        /// The server's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin_url: String,
        /// The admin token (embedded mode keeps it in data/admin-token).
        #[arg(long, env = "FLASHSALE__ADMIN__TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Redraw every second.
        #[arg(long)]
        watch: bool,
        /// Every pod of the fleet (as the registry knows it), each with its tree.
        #[arg(long)]
        fleet: bool,
    },
}

async fn move_queue(settings: Settings, from: &str, to: &str) -> ExitCode {
    if settings.mode != crate::config::Mode::Cluster {
        eprintln!("flashsale: move-queue needs a cluster config (--config config/cluster.toml)");
        return ExitCode::from(2);
    }
    let q = &settings.queue;
    let progress = |moved: u64, held: u64| eprintln!("moved {moved} of {held} message(s)");
    let url = q.url.expose();
    match crate::actors::queue::amqp::move_queue(url, from, to, q.kind, progress).await {
        Ok(m) => {
            if m.deleted {
                println!(
                    "{from}: {} message(s) moved into {to}; {from} deleted",
                    m.messages
                );
            } else {
                println!(
                    "{from}: {} message(s) moved into {to}; {from} kept: a consumer still reads it \
                     or a message arrived meanwhile (run again once no pod uses it)",
                    m.messages
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flashsale: move-queue failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<PathBuf>) -> Result<Settings, ExitCode> {
    Settings::load(config.as_deref()).map_err(|e| {
        eprintln!("flashsale: {e}");
        ExitCode::from(2)
    })
}

pub async fn run(cli: Cli) -> ExitCode {
    if matches!(cli.command, Some(Command::Migrate { .. })) {
        crate::telemetry::init_logging(cli.log_json);
    }
    let serve_default = Command::Serve {
        config: None,
        role: None,
    };
    match cli.command.unwrap_or(serve_default) {
        Command::Serve { config, role } => {
            let mut settings = match load(config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            if let Some(role) = role {
                settings.role = role.parse().expect("clap checked the role");
                if let Err(e) = settings.validate() {
                    eprintln!("flashsale: {e}");
                    return ExitCode::from(2);
                }
            }
            let provider = match &settings.telemetry.otlp_endpoint {
                Some(endpoint) => match crate::telemetry::otlp_provider(
                    endpoint,
                    &settings.telemetry.service_name,
                ) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("flashsale: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            crate::telemetry::init(cli.log_json, provider.as_ref());
            let code = serve(settings).await;
            if let Some(p) = provider {
                // Send the spans still buffered.
                let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
            }
            code
        }
        Command::Tree {
            admin_url,
            admin_token,
            watch,
            fleet,
        } => {
            let token = match admin_token
                .or_else(|| std::fs::read_to_string("data/admin-token").ok())
            {
                Some(t) => t.trim().to_string(),
                None => {
                    eprintln!("flashsale: --admin-token (or FLASHSALE__ADMIN__TOKEN) is required");
                    return ExitCode::from(2);
                }
            };
            match crate::tree::run(&admin_url, &token, watch, fleet).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flashsale: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reshard { config, to, list } => match load(config) {
            Ok(settings) => reshard(settings, to, list).await,
            Err(code) => code,
        },
        Command::MoveQueue { config, from, to } => match load(config) {
            Ok(settings) => move_queue(settings, &from, &to).await,
            Err(code) => code,
        },
        Command::Migrate { config } => {
            let settings = match load(config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            if settings.mode != crate::config::Mode::Cluster {
                eprintln!(
                    "flashsale: migrate needs a cluster config (--config config/cluster.toml)"
                );
                return ExitCode::from(2);
            }
            match crate::shards::migrate::migrate_all(&settings).await {
                Ok(report) => {
                    for (db, n) in report {
                        println!("{db}: {n} migration(s) applied");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flashsale: migrate failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn reshard(settings: Settings, to: usize, list: bool) -> ExitCode {
    use crate::shards::reshard;
    if settings.mode != crate::config::Mode::Cluster {
        eprintln!("flashsale: reshard needs a cluster config (--config config/cluster.toml)");
        return ExitCode::from(2);
    }
    let urls: Vec<String> = settings
        .shards
        .urls
        .iter()
        .map(|u| u.expose().to_string())
        .collect();
    if let Err(e) = reshard::check_target(urls.len(), to) {
        eprintln!("flashsale: {e}");
        return ExitCode::from(2);
    }
    if list {
        println!("{:<40} {:>5} {:>5} {:>8}", "user", "from", "to", "orders");
    }
    let each = |m: &reshard::UserMove| {
        if list {
            println!("{:<40} {:>5} {:>5} {:>8}", m.user, m.from, m.to, m.orders);
        }
    };
    match reshard::plan(&urls, to, each).await {
        Ok(plan) => {
            if list {
                println!();
            }
            print!("{}", reshard::render(&plan));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flashsale: reshard: cannot read the shards: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let settings_mode = settings.mode;
    let data_dir = settings.embedded.data_dir.clone();
    let configured_token = settings.admin.token.is_some();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("flashsale: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let embedded = settings_mode == crate::config::Mode::Embedded;
    let mode = if embedded { "embedded" } else { "cluster" };
    let role = app.state.settings.role;
    match role {
        crate::config::Role::All => println!("flashsale is serving ({mode} mode)"),
        _ => println!("flashsale is serving ({mode} mode, role {})", role.as_str()),
    }
    match app.public_addr {
        Some(addr) => println!("  public API   http://{addr}"),
        None => println!("  public API   none (a worker serves the admin listener only)"),
    }
    println!("  admin API    http://{}/admin", app.admin_addr);
    println!("  pod          {}", app.state.pod.id);
    if app.admin_token_generated {
        let kept = if embedded {
            format!("kept in {}", data_dir.join("admin-token").display())
        } else {
            "generated for this run".to_string()
        };
        println!(
            "  admin token  {}  ({kept}; FLASHSALE__ADMIN__TOKEN sets one)",
            app.admin_token.expose()
        );
    }
    if embedded {
        // The token itself only when it was just generated (and printed above anyway).
        let token = if app.admin_token_generated {
            app.admin_token.expose().to_string()
        } else if configured_token {
            "\"$FLASHSALE__ADMIN__TOKEN\"".to_string()
        } else {
            format!("\"$(cat {})\"", data_dir.join("admin-token").display())
        };
        println!("  demo sale    cargo run --release -p flashsale-load -- burst --buyers 2000 --stock 100 \\");
        println!(
            "                 --target http://{} --admin-url http://{} --admin-token {token} --jwt-secret-file {}",
            app.public_addr.expect("embedded mode runs every role"),
            app.admin_addr,
            data_dir.join("jwt-secret").display()
        );
    }
    let stop = app.stop_handle();
    let shutdown = app.state.settings.shutdown.clone();
    let mut signals = StopSignals::listen();
    tokio::spawn(async move {
        signals.next().await;
        tokio::spawn(async move {
            signals.next().await;
            eprintln!("flashsale: a second stop signal: exiting at once");
            std::process::exit(1);
        });
        let drain = Duration::from_secs(shutdown.drain_secs);
        let grace = Duration::from_secs(shutdown.grace_secs);
        if tokio::time::timeout(grace, stop.drain_then_stop(drain))
            .await
            .is_err()
        {
            eprintln!("flashsale: the stop did not finish within shutdown.grace_secs; exiting");
            std::process::exit(1);
        }
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashsale: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM, listened to from the start: a second signal that comes while
/// the first one's drain has only just begun is still heard.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
                terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next stop signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
