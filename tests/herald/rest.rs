//! REST: the same calls as gRPC, in the proto3 JSON mapping.

use crate::support::{TestApp, TestDb, call, open_sse, spawn_app, spawn_app_with};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// Asks for a conversation of the token's user and `other`.
async fn create_pair(app: &TestApp, token: &str, other: &str) -> (StatusCode, Value) {
    let body = json!({ "participantIds": [other] });
    call(app, token, Method::POST, "/api/conversations", Some(body)).await
}

async fn the_rest_calls_follow_the_contract(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    let pair = json!({ "participantIds": ["bob"] });

    let (status, created) = call(
        &app,
        &alice,
        Method::POST,
        "/api/conversations",
        Some(pair.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["participantIds"], json!(["alice", "bob"]));
    let (status, found) = create_pair(&app, &bob, "alice").await;
    assert_eq!(status, StatusCode::OK, "an existing pair is found");
    assert_eq!(found["id"], created["id"]);
    let id = created["id"].as_str().unwrap();

    let messages_path = format!("/api/conversations/{id}/messages");
    let mut sent = Vec::new();
    for n in 1..=5 {
        let (status, message) = call(
            &app,
            &alice,
            Method::POST,
            &messages_path,
            Some(json!({ "content": format!("m-{n}") })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(message["conversationId"], created["id"]);
        assert_eq!(message["userId"], "alice");
        assert!(
            message["createdAt"].as_str().unwrap().ends_with('Z'),
            "{message}"
        );
        sent.push(message);
    }

    let (status, page) = call(
        &app,
        &bob,
        Method::GET,
        &format!("{messages_path}?pageSize=2"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["messages"], json!(sent[3..5]));
    let before = format!(
        "{messages_path}?pageSize=2&beforeId={}",
        sent[3]["id"].as_str().unwrap()
    );
    assert_eq!(
        call(&app, &bob, Method::GET, &before, None).await.1["messages"],
        json!(sent[1..3])
    );
    let after = format!(
        "{messages_path}?afterId={}",
        sent[2]["id"].as_str().unwrap()
    );
    assert_eq!(
        call(&app, &bob, Method::GET, &after, None).await.1["messages"],
        json!(sent[3..5])
    );

    let (status, listed) = call(&app, &bob, Method::GET, "/api/conversations", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["conversations"][0]["unreadCount"], "5");
    assert_eq!(listed["conversations"][0]["lastMessage"], sent[4]);

    let read = json!({ "messageId": sent[2]["id"] });
    let (status, marked) = call(
        &app,
        &bob,
        Method::POST,
        &format!("/api/conversations/{id}/read"),
        Some(read),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(marked["unreadCount"], "2");
}

async fn errors_have_the_contract_status_and_a_json_body(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.max_body_bytes = 64 * 1024).await;
    let (alice, carol) = (app.token("alice"), app.token("carol"));
    let (_, conversation) = create_pair(&app, &alice, "bob").await;
    let path = format!(
        "/api/conversations/{}/messages",
        conversation["id"].as_str().unwrap()
    );

    let cases: Vec<(&str, StatusCode, (StatusCode, Value))> = vec![
        (
            "bad token",
            StatusCode::UNAUTHORIZED,
            call(&app, "nope", Method::GET, "/api/conversations", None).await,
        ),
        (
            "not a participant",
            StatusCode::FORBIDDEN,
            call(&app, &carol, Method::GET, &path, None).await,
        ),
        (
            "no such conversation",
            StatusCode::NOT_FOUND,
            call(
                &app,
                &alice,
                Method::GET,
                "/api/conversations/nothing/messages",
                None,
            )
            .await,
        ),
        (
            "empty content",
            StatusCode::BAD_REQUEST,
            call(
                &app,
                &alice,
                Method::POST,
                &path,
                Some(json!({ "content": "" })),
            )
            .await,
        ),
        (
            "content as a number",
            StatusCode::BAD_REQUEST,
            call(
                &app,
                &alice,
                Method::POST,
                &path,
                Some(json!({ "content": 5 })),
            )
            .await,
        ),
        (
            "a bad page size",
            StatusCode::BAD_REQUEST,
            call(
                &app,
                &alice,
                Method::GET,
                &format!("{path}?pageSize=many"),
                None,
            )
            .await,
        ),
        (
            "oversized content",
            StatusCode::BAD_REQUEST,
            call(
                &app,
                &alice,
                Method::POST,
                &path,
                Some(json!({ "content": "x".repeat(20_000) })),
            )
            .await,
        ),
        (
            "oversized body",
            StatusCode::PAYLOAD_TOO_LARGE,
            call(
                &app,
                &alice,
                Method::POST,
                &path,
                Some(json!({ "content": "x".repeat(70_000) })),
            )
            .await,
        ),
    ];
    for (what, expected, (status, body)) in cases {
        assert_eq!(status, expected, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
    }

    let response = Client::new()
        .post(app.url(&path))
        .bearer_auth(&alice)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = Client::new()
        .get(app.url("/api/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "error": herald::UNAUTHENTICATED })
    );
}

async fn the_authorization_header_wins_over_the_query_token(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.token("alice");
    let client = Client::new();

    let by_query = client
        .get(app.url(&format!("/api/conversations?token={alice}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::OK);
    let bad_header = client
        .get(app.url(&format!("/api/conversations?token={alice}")))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_header.status(), StatusCode::UNAUTHORIZED);
    let good_header = client
        .get(app.url("/api/conversations?token=forged"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(good_header.status(), StatusCode::OK);
}

async fn a_message_reads_the_same_in_grpc_rest_and_sse(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut sse = open_sse(app.sse_request(&app.token("bob"))).await;

    let over_grpc = alice
        .send(&conversation.id, "one schema \"everywhere\" ✓")
        .await
        .unwrap();

    let event = sse.next_event().await.unwrap();
    let (_, page) = call(
        &app,
        &app.token("bob"),
        Method::GET,
        &format!("/api/conversations/{}/messages", conversation.id),
        None,
    )
    .await;
    let as_json = serde_json::to_value(&over_grpc).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&event.data).unwrap(), as_json);
    assert_eq!(page["messages"][0], as_json);
}

async fn cors_answers_configured_origins_only(db: TestDb) {
    let app = spawn_app_with(&db, |config| {
        config.cors_origin = vec!["http://chat.example".into()]
    })
    .await;
    let preflight = |origin: &'static str| {
        Client::new()
            .request(Method::OPTIONS, app.url("/api/messages"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "authorization,last-event-id",
            )
            .send()
    };

    let allowed = preflight("http://chat.example").await.unwrap();
    let refused = preflight("http://evil.example").await.unwrap();

    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://chat.example"
    );
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

async fn health_and_the_chat_page_are_served(db: TestDb) {
    let app = spawn_app(&db).await;

    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    let page = reqwest::get(app.url("/")).await.unwrap();
    let script = reqwest::get(app.url("/app.js")).await.unwrap();

    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<script src=\"/app.js\">")
    );
    assert!(script.text().await.unwrap().contains("new EventSource"));
}

on_every_backend!(
    the_rest_calls_follow_the_contract,
    errors_have_the_contract_status_and_a_json_body,
    the_authorization_header_wins_over_the_query_token,
    a_message_reads_the_same_in_grpc_rest_and_sse,
    cors_answers_configured_origins_only,
    health_and_the_chat_page_are_served,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405_on_each_door() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = spawn_app(&db).await;
    let token = app.token("alice");
    for (method, path) in [
        (Method::GET, "/nothing"),
        (Method::POST, "/api/nothing"),
        (Method::GET, "/api/conversation"),
        (Method::POST, "/herald.v1.Messenger/CreateMessage"),
    ] {
        let (status, body) = call(&app, &token, method.clone(), path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    let (status, body) = call(&app, &token, Method::DELETE, "/api/conversations", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string(), "{body}");
    // The gRPC port: an rpc that does not exist is UNIMPLEMENTED.
    let mut client = tonic::client::Grpc::new(app.channel().await);
    client.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<
        herald::pb::ListConversationsRequest,
        herald::pb::ListConversationsResponse,
    >::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/herald.v1.Messenger/NoSuchRpc");
    let request = crate::support::authorized(
        herald::pb::ListConversationsRequest::default(),
        &format!("Bearer {token}"),
    );
    let status = client.unary(request, path, codec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    app.stop().await;
}
