//! One order is one trace: the request that accepts it and the consumers that persist
//! and confirm it, across the order queue, in both modes. Spans are captured with an
//! in-memory exporter.

#[path = "api/helpers/mod.rs"]
#[allow(dead_code, unused_imports)]
#[macro_use]
mod helpers;

use std::sync::OnceLock;
use std::time::Duration;

use helpers::{spawn_app, Mode, TestApp};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

fn tracing_setup() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static SETUP: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        flashsale::telemetry::init(false, Some(&provider));
        (exporter, provider)
    })
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Waits until spans named `names` exist for `order` and returns them.
async fn spans_of(order: &str, names: &[&str]) -> Vec<SpanData> {
    let (exporter, provider) = tracing_setup();
    let what = format!("spans {names:?} of order {order} all arrive");
    helpers::eventually(Duration::from_secs(10), &what, || async {
        let _ = provider.force_flush();
        let finished = exporter.get_finished_spans().unwrap();
        let spans: Vec<SpanData> = finished
            .iter()
            .filter(|s| attr(s, "order_id").as_deref() == Some(order))
            .cloned()
            .collect();
        if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
            Ok(spans)
        } else {
            let seen: Vec<_> = finished.iter().map(|s| s.name.to_string()).collect();
            Err(format!("spans seen: {seen:?}"))
        }
    })
    .await
}

async fn buy(
    app: &TestApp,
    token: &str,
    product: i64,
    key: &str,
    traceparent: Option<&str>,
) -> String {
    let mut req = app
        .client
        .post(format!("{}/orders/flash-sale/{product}", app.address))
        .bearer_auth(token)
        .header("Idempotency-Key", key);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    body["orderId"].as_str().expect("an order id").to_string()
}

in_both_modes!(one_order_is_one_trace_on_both_sides_of_the_queue);
async fn one_order_is_one_trace_on_both_sides_of_the_queue(mode: Mode) {
    tracing_setup();
    let app = spawn_app(mode).await;
    let product = app.sale(10, 5).await;
    let (_, token) = app.token_for_new_user();
    let names = ["place_order", "consume_order", "deliver_confirmation"];

    // A new trace starts at the request…
    let order = buy(&app, &token, product, "t1", None).await;
    assert_eq!(
        app.wait_settled(&token, &order).await["status"],
        "completed"
    );
    let spans = spans_of(&order, &names).await;
    let trace = spans
        .iter()
        .find(|s| s.name == "place_order")
        .unwrap()
        .span_context
        .trace_id();
    for name in names {
        let s = spans.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{name} is in the order's trace"
        );
    }
    // The steps inside each side are children in the same trace.
    let (exporter, _) = tracing_setup();
    let all = exporter.get_finished_spans().unwrap();
    for step in [
        "inventory_reserve",
        "queue_publish",
        "inventory_claim",
        "shard_write",
    ] {
        assert!(
            all.iter()
                .any(|s| s.name == step && s.span_context.trace_id() == trace),
            "{step} is in the order's trace"
        );
    }

    // …or continues the caller's W3C traceparent.
    let theirs = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{theirs}-00f067aa0ba902b7-01");
    let order = buy(&app, &token, product, "t2", Some(&traceparent)).await;
    let spans = spans_of(&order, &names).await;
    for name in names {
        let s = spans.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            s.span_context.trace_id().to_string(),
            theirs,
            "{name} continues the caller's trace"
        );
    }
    // The order's events carry its trace context in their headers.
    let is_completion = |e: &flashsale::events::Delivered| {
        e.envelope.kind == "OrderCompleted" && e.envelope.data["orderId"] == order.as_str()
    };
    let events = app
        .read_events(
            flashsale::events::ORDER_EVENTS,
            |seen| seen.iter().any(is_completion),
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .await;
    let completed = events
        .iter()
        .find(|e| is_completion(e))
        .expect("OrderCompleted");
    assert!(
        completed
            .traceparent
            .as_deref()
            .is_some_and(|t| t.contains(&theirs)),
        "{:?}",
        completed.traceparent
    );
    app.stop().await;
}
