//! `/openapi.json` describes the REST and SSE doors as they answer: every
//! operation it lists is called for real, and every answer's status,
//! content type and JSON body must be what the document says.

use crate::support::{TestApp, TestDb, open_sse, spawn_app};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The document, and which of its operations the test has seen answer.
struct Spec {
    /// The server's HTTP origin.
    base: String,
    doc: Value,
    seen: BTreeSet<(String, String)>,
}

impl Spec {
    async fn fetch(app: &TestApp) -> Self {
        let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        Self {
            base: app.url(""),
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Sends `method path` (the document's `template`), with `token` as a
    /// bearer if any, and checks the answer against the document.
    async fn check(
        &mut self,
        template: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request =
            reqwest::Client::new().request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let media = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| {
                value
                    .to_str()
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .unwrap_or_default();
        let what = format!("{method} {path} → {status} ({media})");
        self.seen
            .insert((template.to_owned(), method.as_str().to_lowercase()));
        let operation = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{what}: no such operation in the document"
        );
        let documented = self.resolve(&operation["responses"][status.as_str()]);
        assert!(documented.is_object(), "{what}: status not in the document");
        if status == StatusCode::NO_CONTENT {
            assert!(
                documented["content"].is_null(),
                "{what}: 204 has a body in the document"
            );
            assert!(
                response.bytes().await.unwrap().is_empty(),
                "{what}: a 204 with a body"
            );
            return (status, Value::Null);
        }
        let content = &documented["content"][&media];
        assert!(
            content.is_object(),
            "{what}: content type not in the document"
        );
        if media == "text/event-stream" {
            return (status, Value::Null);
        }
        let text = response.text().await.unwrap();
        let body = match media.as_str() {
            "application/json" => serde_json::from_str(&text).unwrap(),
            _ => Value::String(text),
        };
        self.validate(&content["schema"], &body, &what);
        (status, body)
    }

    /// Follows a `$ref` within the document.
    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node["$ref"].as_str() {
            Some(pointer) => self
                .doc
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => node,
        }
    }

    /// Checks `value` against `schema`, knowing the keywords the document
    /// uses, and refusing any other so that no check passes by omission.
    fn validate(&self, schema: &Value, value: &Value, at: &str) {
        let schema = self.resolve(schema);
        let keywords = schema
            .as_object()
            .unwrap_or_else(|| panic!("{at}: schema {schema}"));
        for keyword in keywords.keys() {
            assert!(
                [
                    "type",
                    "properties",
                    "required",
                    "additionalProperties",
                    "items",
                    "format",
                    "minimum",
                    "maximum",
                    "description",
                ]
                .contains(&keyword.as_str()),
                "{at}: the test knows no keyword {keyword}"
            );
        }
        if let Some(kind) = schema["type"].as_str() {
            let fits = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                other => panic!("{at}: unknown type {other}"),
            };
            assert!(fits, "{at}: {value} is not of type {kind}");
        }
        if schema["format"] == "date-time" {
            let text = value.as_str().unwrap();
            assert!(
                text.len() >= 20 && text.as_bytes()[10] == b'T' && text.ends_with('Z'),
                "{at}: {text} is not RFC 3339 UTC"
            );
        }
        if let Some(required) = schema["required"].as_array() {
            for name in required {
                let name = name.as_str().unwrap();
                assert!(value.get(name).is_some(), "{at}: {name} missing in {value}");
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema["properties"].as_object();
            for (name, field) in object {
                match properties.and_then(|properties| properties.get(name)) {
                    Some(property) => self.validate(property, field, &format!("{at}.{name}")),
                    None => assert!(
                        schema["additionalProperties"] != false,
                        "{at}: {name} is not in the document"
                    ),
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (index, item) in array.iter().enumerate() {
                self.validate(items, item, &format!("{at}[{index}]"));
            }
        }
    }

    /// Every operation the document lists.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    all.insert((path.clone(), method.clone()));
                }
            }
        }
        all
    }
}

async fn every_operation_answers_as_the_openapi_document_says(db: TestDb) {
    let key = crate::support::service_key(&db.url, "openapi", "admin").await;
    let app = spawn_app(&db).await;
    let token_of_alice = app.token("alice");
    let mut spec = Spec::fetch(&app).await;
    let (alice, carol) = (app.token("alice"), app.token("carol"));
    let (alice, carol) = (Some(alice.as_str()), Some(carol.as_str()));
    let post = Method::POST;
    let get = Method::GET;
    let none: &[(&str, &str)] = &[];

    let conversations = "/api/conversations";
    let pair = json!({ "participantIds": ["bob"] });
    let (status, created) = spec
        .check(
            conversations,
            post.clone(),
            conversations,
            alice,
            Some(pair.clone()),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = spec
        .check(
            conversations,
            post.clone(),
            conversations,
            alice,
            Some(pair),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let bad = json!({ "participantIds": "bob" });
    let (status, _) = spec
        .check(
            conversations,
            post.clone(),
            conversations,
            alice,
            Some(bad),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = spec
        .check(conversations, get.clone(), conversations, None, None, none)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let id = created["id"].as_str().unwrap();
    let template = "/api/conversations/{id}/messages";
    let messages = format!("/api/conversations/{id}/messages");
    let mut last = Value::Null;
    for n in 0..3 {
        let key = format!("key-{n}");
        let (status, message) = spec
            .check(
                template,
                post.clone(),
                &messages,
                alice,
                Some(json!({ "content": format!("hello {n}") })),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        last = message;
    }
    let (status, _) = spec
        .check(
            template,
            post.clone(),
            &messages,
            carol,
            Some(json!({ "content": "x" })),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let nowhere = "/api/conversations/0123456789abcdef0123456789abcdef/messages";
    let (status, _) = spec
        .check(template, get.clone(), nowhere, alice, None, none)
        .await;
    assert!(
        [StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST].contains(&status),
        "{status}"
    );
    let (status, page) = spec
        .check(
            template,
            get.clone(),
            &format!("{messages}?pageSize=2"),
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);

    let read = format!("/api/conversations/{id}/read");
    let body = json!({ "messageId": last["id"] });
    let (status, _) = spec
        .check(
            "/api/conversations/{id}/read",
            post.clone(),
            &read,
            alice,
            Some(body),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, page) = spec
        .check(
            conversations,
            get.clone(),
            &format!("{conversations}?pageSize=1"),
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["conversations"][0]["lastMessage"], last);

    // A message changes: edited, reacted to, deleted.
    let one = format!("{messages}/{}", last["id"].as_str().unwrap());
    let template = "/api/conversations/{id}/messages/{messageId}";
    let edit = Some(json!({ "content": "edited" }));
    let (status, edited) = spec
        .check(template, Method::PATCH, &one, alice, edit.clone(), none)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(edited["content"], "edited");
    let reactions = "/api/conversations/{id}/messages/{messageId}/reactions/{emoji}";
    let thumbs = format!("{one}/reactions/%F0%9F%91%8D");
    let (status, reacted) = spec
        .check(reactions, Method::PUT, &thumbs, alice, None, none)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reacted["reactions"][0]["count"], 1);
    let (status, _) = spec
        .check(
            reactions,
            Method::PUT,
            &format!("{one}/reactions/ab"),
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = spec
        .check(reactions, Method::DELETE, &thumbs, alice, None, none)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Another message is deleted: a replay leaves out the changes a
    // deletion makes moot, and the stream below is a replay.
    let (status, other) = spec
        .check(
            "/api/conversations/{id}/messages",
            post.clone(),
            &messages,
            alice,
            Some(json!({ "content": "regretted" })),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let other = format!("{messages}/{}", other["id"].as_str().unwrap());
    let (status, tombstone) = spec
        .check(template, Method::DELETE, &other, alice, None, none)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tombstone["deleted"], true);
    let (status, _) = spec
        .check(template, Method::PATCH, &other, alice, edit, none)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let tickets = "/api/stream-tickets";
    let (status, ticket) = spec
        .check(tickets, post.clone(), tickets, alice, None, none)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let stream = "/api/messages";
    let accept = [("accept", "text/event-stream")];
    let with_ticket = format!("{stream}?token={}", ticket["ticket"].as_str().unwrap());
    let (status, _) = spec
        .check(stream, get.clone(), &with_ticket, None, None, &accept)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = spec
        .check(stream, get.clone(), stream, alice, None, none)
        .await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);

    // Membership: a group changes, a pair refuses; every change and the
    // receipt above reach the event stream as the document's schemas.
    let resume = [("lastEventId", last["id"].as_str().unwrap())];
    let mut events = open_sse(app.events_request(&app.token("alice")).query(&resume)).await;
    let group = json!({ "participantIds": ["bob", "carol"] });
    let (_, group) = spec
        .check(
            conversations,
            post.clone(),
            conversations,
            alice,
            Some(group),
            none,
        )
        .await;
    assert_eq!(group["creatorId"], "alice");
    let group = group["id"].as_str().unwrap();
    let add = "/api/conversations/{id}/participants";
    let dave = json!({ "userIds": ["dave"] });
    let (status, changed) = spec
        .check(
            add,
            post.clone(),
            &format!("/api/conversations/{group}/participants"),
            carol,
            Some(dave.clone()),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        changed["participantIds"],
        json!(["alice", "bob", "carol", "dave"])
    );
    let (status, _) = spec
        .check(
            add,
            post.clone(),
            &format!("/api/conversations/{id}/participants"),
            alice,
            Some(dave),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let remove = "/api/conversations/{id}/participants/{userId}";
    let delete = Method::DELETE;
    let (status, _) = spec
        .check(
            remove,
            delete.clone(),
            &format!("/api/conversations/{group}/participants/dave"),
            carol,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, left) = spec
        .check(
            remove,
            delete.clone(),
            &format!("/api/conversations/{group}/participants/carol"),
            carol,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(left["participantIds"], json!(["alice", "bob", "dave"]));
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    for (name, kind) in [
        ("read", "ReadReceipt"),
        ("edit", "Message"),
        ("reaction", "ReactionChange"),
        ("reaction", "ReactionChange"),
        ("message", "Message"),
        ("delete", "Message"),
        ("membership", "MembershipChange"),
        ("membership", "MembershipChange"),
    ] {
        let event = events.next_event().await.unwrap();
        assert_eq!(event.event, name);
        let data: Value = serde_json::from_str(&event.data).unwrap();
        spec.validate(&schema(kind), &data, &format!("event: {name}"));
    }
    // Blocks: block, list, unblock, and the refusals a blocked user meets.
    let blocks = "/api/blocks/{userId}";
    let put = Method::PUT;
    let (status, _) = spec
        .check(
            blocks,
            put.clone(),
            "/api/blocks/mallory",
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = spec
        .check(blocks, put.clone(), "/api/blocks/alice", alice, None, none)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "nobody blocks themselves");
    let (status, listed) = spec
        .check("/api/blocks", Method::GET, "/api/blocks", alice, None, none)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["userIds"], json!(["mallory"]));
    let (status, _) = spec
        .check(
            blocks,
            Method::DELETE,
            "/api/blocks/mallory",
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let typing = "/api/conversations/{id}/typing";
    let (status, _) = spec
        .check(
            typing,
            post.clone(),
            &format!("/api/conversations/{group}/typing"),
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = spec
        .check(
            typing,
            post.clone(),
            &format!("/api/conversations/{group}/typing"),
            carol,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "carol left");
    // alice's own signal is not hers to receive; bob's is.
    let bob = app.user("bob").await;
    let request = bob.request(herald::pb::SetTypingRequest {
        conversation_id: group.to_owned(),
    });
    bob.client().set_typing(request).await.unwrap();
    let event = events.next_event().await.unwrap();
    assert_eq!(event.event, "typing");
    spec.validate(
        &schema("Typing"),
        &serde_json::from_str(&event.data).unwrap(),
        "event: typing",
    );
    // Presence: bob's stream opening brings him online for alice, who
    // shares a conversation he took part in; carol left, so she is not
    // answered.
    bob.send(group, "here").await.unwrap();
    let bobs = bob.events("").await.unwrap();
    let event = loop {
        let event = events.next_event().await.unwrap();
        if event.event == "presence" {
            break event;
        }
    };
    let data: Value = serde_json::from_str(&event.data).unwrap();
    spec.validate(&schema("Presence"), &data, "event: presence");
    assert_eq!(
        (data["userId"].as_str(), data["online"].as_bool()),
        (Some("bob"), Some(true))
    );
    let presence = "/api/presence";
    let (status, answer) = spec
        .check(
            presence,
            get.clone(),
            "/api/presence?userIds=bob,zed",
            alice,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["presences"].as_array().unwrap().len(), 1, "{answer}");
    drop(bobs);
    let stream = "/api/events";
    let (status, _) = spec
        .check(stream, get.clone(), stream, alice, None, &accept)
        .await;
    assert_eq!(status, StatusCode::OK);

    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _) = spec.check(path, get.clone(), path, None, None, none).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    admin_operations(&mut spec, &key, group, &token_of_alice).await;

    let unseen: Vec<_> = spec.operations().difference(&spec.seen).cloned().collect();
    assert!(unseen.is_empty(), "operations never called: {unseen:?}");
}

/// The Admin service under `/api/admin/`, with a service key of every
/// scope; a banned user's calls answer as the document says too.
async fn admin_operations(spec: &mut Spec, key: &str, group: &str, alice: &str) {
    let key = Some(key);
    let none: &[(&str, &str)] = &[];
    let (post, get, delete, put) = (Method::POST, Method::GET, Method::DELETE, Method::PUT);
    let template = "/api/admin/conversations";
    let body = json!({ "creatorId": "alice", "participantIds": ["bob", "dave"] });
    let (status, created) = spec
        .check(template, post.clone(), template, key, Some(body), none)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    let (status, _) = spec
        .check(
            template,
            post.clone(),
            template,
            Some(alice),
            Some(json!({})),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a token is no key");

    let template = "/api/admin/conversations/{id}/messages";
    let path = format!("/api/admin/conversations/{id}/messages");
    let (status, published) = spec
        .check(
            template,
            post.clone(),
            &path,
            key,
            Some(json!({ "content": "notice" })),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(published["system"], true);
    let (status, _) = spec
        .check(
            template,
            post.clone(),
            &path,
            key,
            Some(json!({ "content": "" })),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = spec
        .check(
            template,
            get.clone(),
            &format!("{path}?pageSize=5"),
            key,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["messages"][0], published);

    let template = "/api/admin/conversations/{id}/messages/{messageId}";
    let one = format!("{path}/{}?reason=test", published["id"].as_str().unwrap());
    let (status, tombstone) = spec
        .check(template, delete.clone(), &one, key, None, none)
        .await;
    assert_eq!(
        (status, tombstone["deleted"].clone()),
        (StatusCode::OK, json!(true))
    );

    let template = "/api/admin/conversations/{id}/participants";
    let path = format!("/api/admin/conversations/{id}/participants");
    let body = json!({ "userIds": ["erin"] });
    let (status, _) = spec
        .check(template, post.clone(), &path, key, Some(body), none)
        .await;
    assert_eq!(status, StatusCode::OK);
    let template = "/api/admin/conversations/{id}/participants/{userId}";
    let (status, _) = spec
        .check(
            template,
            delete.clone(),
            &format!("{path}/bob"),
            key,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let template = "/api/admin/presence";
    let (status, _) = spec
        .check(
            template,
            get.clone(),
            "/api/admin/presence?userIds=alice,bob",
            key,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    for (template, action) in [
        ("/api/admin/users/{userId}/disconnect", "disconnect"),
        ("/api/admin/users/{userId}/revoke", "revoke"),
    ] {
        let path = format!("/api/admin/users/zed/{action}");
        let (status, _) = spec
            .check(template, post.clone(), &path, key, None, none)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{action}");
    }
    let template = "/api/admin/webhooks";
    let body = json!({ "url": "http://127.0.0.1:9/hook", "kinds": ["message"] });
    let (status, _) = spec
        .check(template, post.clone(), template, key, Some(body), none)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a private address");
    let (status, listed) = spec
        .check(template, get.clone(), template, key, None, none)
        .await;
    assert_eq!(
        (status, listed["webhooks"].clone()),
        (StatusCode::OK, serde_json::Value::Null)
    );
    let template = "/api/admin/webhooks/{id}";
    let (status, _) = spec
        .check(
            template,
            delete.clone(),
            "/api/admin/webhooks/nothing",
            key,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let template = "/api/admin/events";
    let accept = [("accept", "text/event-stream")];
    let (status, _) = spec
        .check(
            template,
            get.clone(),
            "/api/admin/events?kinds=message,edit",
            key,
            None,
            &accept,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = spec
        .check(template, get.clone(), template, key, None, none)
        .await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);

    let template = "/api/admin/users/{userId}/ban";
    let body = json!({ "reason": "testing" });
    let (status, _) = spec
        .check(
            template,
            put.clone(),
            "/api/admin/users/alice/ban",
            key,
            Some(body),
            none,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Banned: alice's calls are 403, as every user operation documents.
    let messages = format!("/api/conversations/{group}/messages");
    let (status, answer) = spec
        .check(
            "/api/conversations/{id}/messages",
            get.clone(),
            &messages,
            Some(alice),
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, _) = spec
        .check(
            template,
            delete.clone(),
            "/api/admin/users/alice/ban",
            key,
            None,
            none,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

on_every_backend!(every_operation_answers_as_the_openapi_document_says);

/// schemathesis (pinned by scripts/test.sh) generates requests from the
/// served document, valid and invalid ones, with a fixed seed, and checks
/// every answer against it: the document states every constraint the
/// server enforces (a valid request refused or an invalid one accepted
/// fails it), and no request gets a 5xx. What only the caller or the
/// stored state decides is listed in tests/schemathesis/schemathesis.toml.
/// The endless SSE streams are left out (the check above calls them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_based_run_of_the_document_finds_no_disagreement() {
    let st = std::env::var("HERALD_SCHEMATHESIS").unwrap_or_default();
    if !crate::support::tools_ready("schemathesis", std::path::Path::new(&st).is_file()) {
        return;
    }
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    // Rates lifted: the run measures the document, not the limiter.
    let app = crate::support::spawn_app_with(&db, |config| {
        config.rate_limit = 1e9;
        config.rate_burst = 1e9;
        config.call_rate_limit = 1e9;
        config.call_rate_burst = 1e9;
    })
    .await;
    let token = app.token("alice");
    let scratch = tempfile::tempdir().unwrap();
    let settings = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemathesis/schemathesis.toml"
    );
    let run = tokio::process::Command::new(&st)
        .args(["--config-file", settings, "run", &app.url("/openapi.json")])
        .args(["--checks", "all", "--max-examples", "30", "--seed", "1"])
        .args(["--workers", "1", "--request-timeout", "5", "--no-color"])
        .args(["--exclude-operation-id", "subscribeMessages"])
        .args(["--exclude-operation-id", "subscribeEvents"])
        // The Admin service takes a service key, not this token: the
        // check above calls each of its operations with one.
        .args(["--exclude-path-regex", "^/api/admin/"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // A fresh directory: no example database of an earlier run.
        .current_dir(scratch.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within 5 minutes")
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).replace(&token, "<token>");
    assert!(output.status.success(), "{report}");
    app.stop().await;
}
