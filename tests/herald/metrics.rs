//! `GET /metrics`: Prometheus text after real traffic.

use crate::support::{TestDb, open_sse, spawn_app};

/// The value of the sample `name` (with its labels, if any) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

async fn metrics_count_messages_streams_resumes_and_refusals(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let first = alice.send(&conversation.id, "before").await.unwrap();
    let mut sse = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", &first.id),
    )
    .await;
    let mut grpc = app.user("bob").await.subscribe("").await.unwrap();
    for n in 0..3 {
        alice
            .send(&conversation.id, &format!("m-{n}"))
            .await
            .unwrap();
    }
    assert_eq!(sse.next_contents(3).await.len(), 3);
    for _ in 0..3 {
        crate::support::next_message(&mut grpc).await;
    }
    let forged = reqwest::Client::new()
        .get(app.url("/api/conversations"))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let none = reqwest::get(app.url("/api/conversations")).await.unwrap();
    assert_eq!(none.status(), 401);

    let response = reqwest::get(app.url("/metrics")).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();

    assert_eq!(sample(&text, "herald_messages_created_total"), 4.0);
    assert!(sample(&text, "herald_deliveries_total") >= 6.0);
    assert_eq!(
        sample(&text, "herald_subscriptions_open{transport=\"sse\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "herald_subscriptions_open{transport=\"grpc\"}"),
        1.0
    );
    assert_eq!(sample(&text, "herald_resumes_total"), 1.0);
    assert_eq!(sample(&text, "herald_replayed_messages_total"), 0.0);
    assert_eq!(
        sample(&text, "herald_auth_failures_total{reason=\"malformed\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "herald_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert!(sample(&text, "herald_delivery_latency_seconds_count") >= 6.0);
    assert!(sample(&text, "herald_db_commit_seconds_count") >= 1.0);
    assert_eq!(
        sample(&text, "herald_subscriptions_dropped_lagging_total"),
        0.0
    );
    assert!(
        !text.contains("bob") && !text.contains("alice"),
        "no user ids in labels"
    );

    drop(sse);
    drop(grpc);
    app.wait_for_subscriptions(0).await;
    let text = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&text, "herald_subscriptions_open{transport=\"sse\"}"),
        0.0
    );
}

on_every_backend!(metrics_count_messages_streams_resumes_and_refusals);
