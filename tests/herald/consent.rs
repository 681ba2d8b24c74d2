//! Consent: nobody learns a stranger's presence or fills a stranger's
//! conversation list. Presence is shared only through conversations the
//! user took part in; a user can block another; adding strangers costs
//! more than adding people you know.

use crate::support::{
    TestDb, User, code, next_event, next_event_or_presence, spawn_app, spawn_app_with,
};
use herald::pb::{self, event::Kind};
use tonic::Code;

/// Who among `users` `asker` may see the presence of.
async fn visible(asker: &User, users: &[&str]) -> Vec<String> {
    let request = pb::GetPresenceRequest {
        user_ids: users.iter().map(|user| user.to_string()).collect(),
    };
    let found = asker.client().get_presence(asker.request(request)).await;
    let found = found.unwrap().into_inner().presences;
    found.into_iter().map(|presence| presence.user_id).collect()
}

async fn block(user: &User, other: &str) {
    let request = pb::BlockUserRequest {
        user_id: other.into(),
    };
    user.client()
        .block_user(user.request(request))
        .await
        .unwrap();
}

async fn presence_is_shared_only_through_conversations_the_user_took_part_in(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    // alice puts bob in a group: that shares nothing of bob's.
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let mut alices = alice.events("").await.unwrap();
    let _online = bob.events("").await.unwrap();
    assert!(visible(&alice, &["bob"]).await.is_empty());
    // Nor does alice's stream hear of him: the next thing on it (after
    // the tracker has had time to tell) is her own marker.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let marker = alice.send(&group.id, "marker").await.unwrap();
    let next = next_event_or_presence(&mut alices).await;
    assert!(
        matches!(&next.kind, Some(Kind::Message(m)) if m.id == marker.id),
        "no presence of bob: {next:?}"
    );
    assert_eq!(
        visible(&bob, &["alice"]).await,
        ["alice"],
        "alice created it"
    );
    // bob takes part: now alice may see him.
    bob.send(&group.id, "hello").await.unwrap();
    assert_eq!(visible(&alice, &["bob"]).await, ["bob"]);
    // Reading is taking part too.
    let carol = app.user("carol").await;
    assert!(visible(&alice, &["carol"]).await.is_empty());
    let last = carol
        .messages(crate::support::page(&group.id))
        .await
        .unwrap();
    carol.mark_read(&group.id, &last[0].id).await.unwrap();
    assert_eq!(visible(&alice, &["carol"]).await, ["carol"]);
    app.stop().await;
}

async fn a_blocked_user_cannot_add_the_blocker_and_hears_nothing_of_them(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mallory = app.user("mallory").await;
    block(&bob, "mallory").await;
    // mallory cannot put bob anywhere.
    assert_eq!(
        code(mallory.create_conversation(&["bob"]).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(mallory.create_conversation(&["bob", "carol"]).await),
        Code::PermissionDenied
    );
    let hers = mallory
        .create_conversation(&["carol", "dave"])
        .await
        .unwrap();
    assert_eq!(
        code(mallory.add(&hers.id, &["bob"]).await),
        Code::PermissionDenied
    );
    // In a group alice made, bob takes part; mallory sees none of it.
    let group = alice
        .create_conversation(&["bob", "mallory"])
        .await
        .unwrap();
    bob.send(&group.id, "hi all").await.unwrap();
    let _online = bob.events("").await.unwrap();
    assert_eq!(visible(&alice, &["bob"]).await, ["bob"]);
    assert!(visible(&mallory, &["bob"]).await.is_empty());
    // bob's typing reaches alice and not mallory.
    let mut alices = alice.events("").await.unwrap();
    let mut mallorys = mallory.events("").await.unwrap();
    let typing = pb::SetTypingRequest {
        conversation_id: group.id.clone(),
    };
    bob.client().set_typing(bob.request(typing)).await.unwrap();
    let heard = next_event(&mut alices).await;
    assert!(matches!(heard.kind, Some(Kind::Typing(_))), "{heard:?}");
    let after = alice.send(&group.id, "after bob typed").await.unwrap();
    let next = next_event(&mut mallorys).await;
    assert!(
        matches!(&next.kind, Some(Kind::Message(message)) if message.id == after.id),
        "mallory hears the message, not bob typing: {next:?}"
    );
    // The list, and lifting the block.
    let listed = bob
        .client()
        .list_blocked(bob.request(pb::ListBlockedRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.user_ids, ["mallory"]);
    let unblock = pb::UnblockUserRequest {
        user_id: "mallory".into(),
    };
    bob.client()
        .unblock_user(bob.request(unblock))
        .await
        .unwrap();
    mallory.create_conversation(&["bob"]).await.unwrap();
    app.stop().await;
}

async fn adding_strangers_costs_more_than_adding_people_you_know(db: TestDb) {
    // A burst of 8 calls, and nearly no refill.
    let app = spawn_app_with(&db, |config| {
        config.call_rate_burst = 8.0;
        config.call_rate_limit = 0.01;
    })
    .await;
    let crowd = |range: std::ops::RangeInclusive<usize>| -> Vec<String> {
        range.map(|n| format!("u{n}")).collect()
    };
    // bob brings alice and fifty others together: 2.04 calls for the group,
    // 5.1 for the 51 strangers.
    let bob = app.user("bob").await;
    let mut first = crowd(1..=50);
    first.push("alice".into());
    bob.create_conversation(&first).await.unwrap();
    // The same sixty users cost alice, who knows fifty of them, 3.2 calls;
    // carol, who knows none, 8.2: more than she has.
    let sixty = crowd(1..=60);
    app.user("alice")
        .await
        .create_conversation(&sixty)
        .await
        .unwrap();
    let carol = app.user("carol").await;
    assert_eq!(
        code(carol.create_conversation(&sixty).await),
        Code::ResourceExhausted
    );
    app.stop().await;
}

on_every_backend!(
    presence_is_shared_only_through_conversations_the_user_took_part_in,
    a_blocked_user_cannot_add_the_blocker_and_hears_nothing_of_them,
    adding_strangers_costs_more_than_adding_people_you_know,
);
