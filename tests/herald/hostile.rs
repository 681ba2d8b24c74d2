//! Hostile clients: what one user sends must not hurt another user, exhaust
//! the server, or forge a message. Each test names the attack it repels.

use crate::support::{TestDb, code, spawn_app};
use sqlx::Connection;
use tonic::Code;

/// Makes the database refuse any message whose content is `poison`, as it
/// would refuse a value it cannot store.
async fn poison_the_database(db: &TestDb) {
    if db.url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.content = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned message'); END",
        )
        .execute(&mut connection)
        .await
        .unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(
            "CREATE FUNCTION poison() RETURNS trigger AS $$
             BEGIN
                 IF NEW.content = 'poison' THEN
                     -- Slow, so that other sends queue into the next batch.
                     PERFORM pg_sleep(0.02);
                     RAISE EXCEPTION 'poisoned message';
                 END IF;
                 RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER poison BEFORE INSERT ON messages
                 FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .execute(&mut connection)
        .await
        .unwrap();
    }
}

async fn content_with_nul_is_refused_at_every_door(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    assert_eq!(
        code(alice.send(&chat.id, "a\0b").await),
        Code::InvalidArgument
    );
    let response = reqwest::Client::new()
        .post(app.url(&format!("/api/conversations/{}/messages", chat.id)))
        .bearer_auth(app.token("alice"))
        .json(&serde_json::json!({ "content": "nul \u{0} inside" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("U+0000"), "{body}");
    alice.send(&chat.id, "still fine").await.unwrap();
    app.stop().await;
}

async fn a_message_the_database_refuses_fails_alone_and_its_batch_mates_commit(db: TestDb) {
    const ORDINARY: usize = 4 * 150;
    const POISONED: usize = 60;
    let app = spawn_app(&db).await;
    poison_the_database(&db).await;
    let bob = app.user("bob").await;
    let group = bob
        .create_conversation(&["mallory", "carol"])
        .await
        .unwrap();
    let send_all = |name: &'static str, content: &'static str, count: usize| {
        let (app, group) = (&app, group.id.clone());
        async move {
            let user = app.user(name).await;
            let mut codes = Vec::with_capacity(count);
            for n in 0..count {
                let content = match content {
                    "" => format!("{name}-{n}"),
                    fixed => fixed.to_owned(),
                };
                let sent = user.send(&group, &content).await;
                codes.push(sent.map_or_else(|status| status.code(), |_| Code::Ok));
            }
            codes
        }
    };
    // Many writers at once, so poisoned messages share batches with others.
    let ordinary = (0..8).map(|n| send_all(["bob", "carol"][n % 2], "", ORDINARY / 8));
    let poisoned = (0..4).map(|_| send_all("mallory", "poison", POISONED / 4));
    let (ordinary, poisoned) = tokio::join!(
        futures_util::future::join_all(ordinary),
        futures_util::future::join_all(poisoned)
    );
    let ordinary = ordinary.concat();
    let refused = ordinary.iter().filter(|c| **c != Code::Ok).count();
    assert_eq!(refused, 0, "ordinary sends refused: {ordinary:?}");
    assert!(
        poisoned.concat().iter().all(|c| *c == Code::Unavailable),
        "every poisoned send fails"
    );
    let mut history = 0;
    let mut before = String::new();
    loop {
        let page = bob
            .messages(herald::pb::ListMessagesRequest {
                conversation_id: group.id.clone(),
                page_size: 500,
                before_id: before.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(first) = page.first() else { break };
        before = first.id.clone();
        assert!(page.iter().all(|m| m.content != "poison"));
        history += page.len();
    }
    assert_eq!(history, ORDINARY);
    app.stop().await;
}

on_every_backend!(
    content_with_nul_is_refused_at_every_door,
    a_message_the_database_refuses_fails_alone_and_its_batch_mates_commit,
);
