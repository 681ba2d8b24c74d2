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
    alice.send(&conversation.id, "missed").await.unwrap();
    // Bob resumes after the first: one message to replay.
    let mut sse = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", &first.id),
    )
    .await;
    assert_eq!(sse.next_contents(1).await, ["missed"]);
    // And once from an id nobody has: an impossible replay.
    let mut reset = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", "999999"),
    )
    .await;
    assert_eq!(reset.next_event().await.unwrap().event, "reset");
    drop(reset);
    let mut grpc = app.user("bob").await.subscribe("").await.unwrap();
    app.wait_for_subscriptions(2).await;
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
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();

    // Exact where the traffic fixes the number: five messages; three live
    // ones queued to two streams each (the first two were sent before any
    // stream), each written once; two resumes, one replayed message, one
    // impossible replay; nobody lagged.
    assert_eq!(sample(&text, "herald_messages_created_total"), 5.0);
    assert_eq!(sample(&text, "herald_deliveries_total"), 6.0);
    assert_eq!(sample(&text, "herald_delivery_latency_seconds_count"), 6.0);
    assert_eq!(
        sample(&text, "herald_subscriptions_open{transport=\"sse\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "herald_subscriptions_open{transport=\"grpc\"}"),
        1.0
    );
    assert_eq!(sample(&text, "herald_resumes_total"), 2.0);
    assert_eq!(sample(&text, "herald_replayed_messages_total"), 1.0);
    assert_eq!(sample(&text, "herald_resets_total"), 1.0);
    assert_eq!(
        sample(&text, "herald_auth_failures_total{reason=\"malformed\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "herald_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    // Group commit: one to five commits for five messages, by timing.
    let commits = sample(&text, "herald_db_commit_seconds_count");
    assert!((1.0..=5.0).contains(&commits), "{commits} commits");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_leave_the_public_port_for_a_listener_of_their_own() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = crate::support::spawn_app_with(&db, |config| {
        config.metrics_addr = Some("127.0.0.1:0".into());
    })
    .await;
    let public = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(public.status(), 404, "not on the HTTP port");
    let internal = app.metrics.expect("a metrics listener");
    let open = crate::support::metric(&internal.to_string(), "herald_connections_open").await;
    assert!(open >= 1.0, "the scrape's own connection is open");
    app.stop().await;
}
