//! A TCP proxy in front of a real service, to cut, stall or hold its connections as an
//! outage or a slow network would.

use std::time::Duration;

/// A TCP proxy to a real service that a test can cut (refusing and dropping every
/// connection, as an outage would) and restore.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct ProxyState {
    up: bool,
    connections: Vec<tokio::task::AbortHandle>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState {
            up: true,
            connections: Vec::new(),
        }));
        let stalled = std::sync::Arc::new(AtomicBool::new(false));
        let holding = std::sync::Arc::new(AtomicBool::new(false));
        let (shared, held, sent) = (state.clone(), stalled.clone(), holding.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                // Checked and recorded under one lock, so that a cut cannot miss a
                // connection accepted just before it.
                let mut state = shared.lock().unwrap();
                if !state.up {
                    continue; // dropped: the connection is refused
                }
                let (held, sent) = (held.clone(), sent.clone());
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        forward(inbound, outbound, sent, held).await;
                    }
                });
                state.connections.push(task.abort_handle());
            }
        });
        Self {
            port,
            state,
            stalled,
            held: holding,
        }
    }

    /// The service goes away: open connections break, new ones are refused. Answers
    /// how many connections were open.
    pub fn cut(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.up = false;
        state.connections.retain(|c| !c.is_finished());
        let open = state.connections.len();
        for c in state.connections.drain(..) {
            c.abort();
        }
        open
    }

    pub fn restore(&self) {
        self.state.lock().unwrap().up = true;
    }

    /// The service goes on receiving, but its answers are held back until `resume`
    /// (a broker whose confirms are late, a network that lost its way back).
    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// What clients send is held back until `let_through`: the service never sees a
    /// statement sent meanwhile, and its sender waits (a writer frozen mid-commit).
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn let_through(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each read waiting while `wait` is set.
async fn copy_unless(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    wait: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while wait.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Copies both ways; what goes out waits while `held`, what comes back while `stalled`.
async fn forward(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    tokio::select! {
        _ = copy_unless(from_client, to_server, held) => {}
        _ = copy_unless(from_server, to_client, stalled) => {}
    }
}
