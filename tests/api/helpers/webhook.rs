//! A receiver of the notification consumer's webhook on a port of its own: it keeps
//! every delivery (its JSON body and its `Idempotency-Key`) and can refuse the first
//! few, so that a test sees them delivered again.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;

type Deliveries = Arc<Mutex<Vec<(Value, String)>>>;

pub struct Webhook {
    /// Where the application posts (`notifications.webhook_url`).
    pub url: String,
    received: Deliveries,
    handle: actix_web::dev::ServerHandle,
}

impl Webhook {
    /// A receiver that answers `500` to its first `refuse` deliveries, `204` after.
    pub fn start(refuse: usize) -> Self {
        let received = Deliveries::default();
        let sink = received.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let sink = sink.clone();
            App::new().route(
                "/hook",
                web::post().to(move |req: HttpRequest, body: web::Json<Value>| {
                    let sink = sink.clone();
                    async move {
                        let key = req.headers().get("Idempotency-Key");
                        let key = key.and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        let mut seen = sink.lock().unwrap();
                        seen.push((body.into_inner(), key));
                        match seen.len() <= refuse {
                            true => HttpResponse::InternalServerError().finish(),
                            false => HttpResponse::NoContent().finish(),
                        }
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            received,
            handle,
        }
    }

    /// Every delivery so far: its body and its `Idempotency-Key`.
    pub fn received(&self) -> Vec<(Value, String)> {
        self.received.lock().unwrap().clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
