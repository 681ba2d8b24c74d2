//! Creating messages and paging through history.

use crate::support::{TestDb, code, contents, numbered, page, spawn_app, spawn_app_with};
use herald::pb;
use tonic::Code;

async fn a_created_message_comes_back_whole(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();

    let sent = alice.send(&conversation.id, "hello, bob 👋").await.unwrap();

    assert_eq!(sent.conversation_id, conversation.id);
    assert_eq!(sent.user_id, "alice");
    assert_eq!(sent.content, "hello, bob 👋");
    assert!(!sent.id.is_empty());
    assert!(sent.created_at.is_some());
    assert_eq!(
        alice.messages(page(&conversation.id)).await.unwrap(),
        [sent]
    );
}

async fn content_must_be_present_and_within_the_limit(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();

    let at_limit = "x".repeat(16 * 1024);
    assert!(alice.send(&conversation.id, &at_limit).await.is_ok());
    for content in [
        String::new(),
        "x".repeat(16 * 1024 + 1),
        "x".repeat(1024 * 1024),
    ] {
        let status = alice.send(&conversation.id, &content).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{} bytes",
            content.len()
        );
    }
}

async fn sending_needs_an_existing_conversation_of_ones_own(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, carol) = (app.user("alice").await, app.user("carol").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();

    assert_eq!(
        code(carol.send(&conversation.id, "let me in").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(carol.messages(page(&conversation.id)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(alice.send("0123456789abcdef0123456789abcdef", "hi").await),
        Code::NotFound
    );
    for malformed in ["", "tab\there", &"c".repeat(129)] {
        assert_eq!(
            code(alice.send(malformed, "hi").await),
            Code::InvalidArgument,
            "{malformed:?}"
        );
    }
}

async fn history_pages_newest_first_but_each_page_reads_oldest_first(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    for content in numbered("m", 1..=120) {
        alice.send(&conversation.id, &content).await.unwrap();
    }

    let newest = alice.messages(page(&conversation.id)).await.unwrap();
    assert_eq!(contents(&newest), numbered("m", 71..=120));

    let before = pb::ListMessagesRequest {
        before_id: newest[0].id.clone(),
        ..page(&conversation.id)
    };
    let older = alice.messages(before).await.unwrap();
    assert_eq!(contents(&older), numbered("m", 21..=70));

    let after = pb::ListMessagesRequest {
        after_id: older[9].id.clone(),
        page_size: 5,
        ..page(&conversation.id)
    };
    assert_eq!(
        contents(&alice.messages(after).await.unwrap()),
        numbered("m", 31..=35)
    );

    let oldest = pb::ListMessagesRequest {
        before_id: older[0].id.clone(),
        ..page(&conversation.id)
    };
    assert_eq!(
        contents(&alice.messages(oldest).await.unwrap()),
        numbered("m", 1..=20)
    );
}

async fn page_size_is_clamped_and_cursors_are_checked(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let other = alice.create_conversation(&["carol"]).await.unwrap();
    let elsewhere = alice.send(&other.id, "elsewhere").await.unwrap();
    for n in 1..=501 {
        alice
            .send(&conversation.id, &format!("m-{n}"))
            .await
            .unwrap();
    }

    let huge = pb::ListMessagesRequest {
        page_size: 10_000,
        ..page(&conversation.id)
    };
    let clamped = alice.messages(huge).await.unwrap();
    assert_eq!(clamped.len(), 500);
    assert_eq!(clamped[0].content, "m-2");

    let negative = pb::ListMessagesRequest {
        page_size: -1,
        ..page(&conversation.id)
    };
    assert_eq!(code(alice.messages(negative).await), Code::InvalidArgument);
    let both = pb::ListMessagesRequest {
        before_id: clamped[1].id.clone(),
        after_id: clamped[0].id.clone(),
        ..page(&conversation.id)
    };
    assert_eq!(code(alice.messages(both).await), Code::InvalidArgument);
    let unknown = pb::ListMessagesRequest {
        before_id: "987654321".into(),
        ..page(&conversation.id)
    };
    assert_eq!(code(alice.messages(unknown).await), Code::NotFound);
    let foreign = pb::ListMessagesRequest {
        after_id: elsewhere.id,
        ..page(&conversation.id)
    };
    assert_eq!(code(alice.messages(foreign).await), Code::NotFound);
    let malformed = pb::ListMessagesRequest {
        after_id: "a\u{7}".into(),
        ..page(&conversation.id)
    };
    assert_eq!(code(alice.messages(malformed).await), Code::InvalidArgument);
}

async fn a_user_over_the_rate_limit_is_told_to_slow_down(db: TestDb) {
    let app = spawn_app_with(&db, |config| {
        config.rate_limit = 0.001;
        config.rate_burst = 3.0;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();

    for n in 1..=3 {
        alice
            .send(&conversation.id, &format!("m-{n}"))
            .await
            .unwrap();
    }
    let status = alice
        .send(&conversation.id, "one too many")
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        bob.send(&conversation.id, "bob is not limited")
            .await
            .is_ok()
    );
}

on_every_backend!(
    a_created_message_comes_back_whole,
    content_must_be_present_and_within_the_limit,
    sending_needs_an_existing_conversation_of_ones_own,
    history_pages_newest_first_but_each_page_reads_oldest_first,
    page_size_is_clamped_and_cursors_are_checked,
    a_user_over_the_rate_limit_is_told_to_slow_down,
);
