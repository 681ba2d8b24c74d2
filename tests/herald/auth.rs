//! Every door refuses every bad token the same way.

use crate::support::{SECRET, TestDb, User, authorized, spawn_app};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use herald::{UNAUTHENTICATED, pb};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Code;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(algorithm: Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}.")
}

/// Authorization header values that must all be refused, with what they are.
fn refused_headers() -> Vec<(&'static str, String)> {
    let valid = json!({ "sub": "alice", "exp": now() + 3600 });
    let bearer = |token: String| format!("Bearer {token}");
    vec![
        ("garbage", bearer("not-a-jwt".into())),
        (
            "wrong secret",
            bearer(signed(Algorithm::HS256, b"another-secret", valid.clone())),
        ),
        (
            "expired",
            bearer(signed(
                Algorithm::HS256,
                SECRET,
                json!({ "sub": "alice", "exp": now() - 60 }),
            )),
        ),
        ("alg none", bearer(unsigned(valid.clone()))),
        (
            "another algorithm",
            bearer(signed(Algorithm::HS512, SECRET, valid.clone())),
        ),
        (
            "no exp",
            bearer(signed(Algorithm::HS256, SECRET, json!({ "sub": "alice" }))),
        ),
        (
            "no sub",
            bearer(signed(
                Algorithm::HS256,
                SECRET,
                json!({ "exp": now() + 3600 }),
            )),
        ),
        (
            "empty sub",
            bearer(signed(
                Algorithm::HS256,
                SECRET,
                json!({ "sub": "", "exp": now() + 3600 }),
            )),
        ),
        (
            "not bearer",
            format!("Basic {}", signed(Algorithm::HS256, SECRET, valid)),
        ),
        ("oversized", bearer("a".repeat(10 * 1024))),
    ]
}

async fn every_rpc_refuses_a_missing_or_bad_token_with_one_message(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut client = pb::messenger_client::MessengerClient::new(app.channel().await);

    let missing = client
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(missing.message(), UNAUTHENTICATED);

    for (what, header) in refused_headers() {
        let calls = [
            client
                .list_conversations(authorized(pb::ListConversationsRequest::default(), &header))
                .await
                .map(|_| ()),
            client
                .create_message(authorized(pb::CreateMessageRequest::default(), &header))
                .await
                .map(|_| ()),
            client
                .subscribe_messages(authorized(pb::SubscribeMessagesRequest::default(), &header))
                .await
                .map(|_| ()),
        ];
        for result in calls {
            let status = result.expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what}");
            assert_eq!(status.message(), UNAUTHENTICATED, "{what}");
        }
    }
}

async fn a_token_from_any_jwt_library_with_extra_claims_works(db: TestDb) {
    let app = spawn_app(&db).await;
    let claims = json!({ "sub": "alice", "exp": now() + 60, "iat": now(), "iss": "someone", "aud": "herald" });
    let alice = User::with_token(&app, signed(Algorithm::HS256, SECRET, claims)).await;

    let conversation = alice.create_conversation(&["bob"]).await.unwrap();

    assert_eq!(conversation.participant_ids, ["alice", "bob"]);
}

async fn health_needs_no_token_and_says_serving(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);

    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
    assert_eq!(status.into_inner().status, serving as i32);
}

/// The services that reflection version `$version` lists over `$channel`.
macro_rules! listed_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new($channel);
        let mut responses = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        match responses.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|service| service.name)
                .collect::<Vec<_>>(),
            other => panic!("not a service list: {other:?}"),
        }
    }};
}

async fn both_reflection_versions_list_messenger_and_health_without_a_token(db: TestDb) {
    let app = spawn_app(&db).await;

    let v1 = listed_services!(v1, app.channel().await);
    let v1alpha = listed_services!(v1alpha, app.channel().await);

    for services in [v1, v1alpha] {
        assert!(
            services.contains(&"herald.v1.Messenger".to_owned()),
            "{services:?}"
        );
        assert!(
            services.contains(&"grpc.health.v1.Health".to_owned()),
            "{services:?}"
        );
    }
}

on_every_backend!(
    every_rpc_refuses_a_missing_or_bad_token_with_one_message,
    a_token_from_any_jwt_library_with_extra_claims_works,
    health_needs_no_token_and_says_serving,
    both_reflection_versions_list_messenger_and_health_without_a_token,
);
