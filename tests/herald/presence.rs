//! Presence: online while any stream of the user is open, offline once
//! after the last closes and the grace passes (not on a reload within it),
//! told to those who share a conversation and to nobody else, never
//! replayed.

use crate::support::{TestDb, next_event_or_presence as next_event, spawn_app_with};
use herald::pb::{self, event::Kind};
use std::time::Duration;

on_every_backend!(
    presence_follows_streams_with_a_grace_and_only_sharers_hear_of_it,
    a_node_started_later_learns_who_is_online_from_the_next_announcement,
);

const GRACE: Duration = Duration::from_millis(1_000);

fn presence(event: &pb::Event) -> (&str, bool) {
    match &event.kind {
        Some(Kind::Presence(p)) => {
            assert_eq!(event.id, "", "presence has no position");
            (p.user_id.as_str(), p.online)
        }
        other => panic!("expected presence, got {other:?}"),
    }
}

async fn presence_follows_streams_with_a_grace_and_only_sharers_hear_of_it(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.presence_grace = GRACE).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let pair = alice.create_conversation(&["bob"]).await.unwrap();
    let mut alices = alice.events("").await.unwrap();
    // bob takes part: being added shares nothing of his presence.
    let hi = bob.send(&pair.id, "hi alice").await.unwrap();
    match next_event(&mut alices).await.kind {
        Some(Kind::Message(message)) => assert_eq!(message.id, hi.id),
        other => panic!("expected bob's message, got {other:?}"),
    }
    let mut carols = carol.events("").await.unwrap();

    // bob's first stream brings him online; his second changes nothing.
    let phone = bob.subscribe("").await.unwrap();
    assert_eq!(presence(&next_event(&mut alices).await), ("bob", true));
    let laptop = bob.events("").await.unwrap();
    drop(phone);
    tokio::time::sleep(GRACE * 2).await;
    // Still online: the laptop's stream is open.
    let asked = pb::GetPresenceRequest {
        user_ids: vec!["bob".into(), "carol".into(), "zed".into()],
    };
    let answer = alice
        .client()
        .get_presence(alice.request(asked.clone()))
        .await
        .unwrap()
        .into_inner()
        .presences;
    assert_eq!(
        answer.len(),
        1,
        "only bob shares a conversation with alice: {answer:?}"
    );
    assert_eq!(
        (answer[0].user_id.as_str(), answer[0].online),
        ("bob", true)
    );
    assert!(answer[0].last_seen.is_some());
    // The same over REST.
    let rest: serde_json::Value = reqwest::Client::new()
        .get(app.url("/api/presence?userIds=bob,carol,zed"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["presences"][0]["userId"], "bob");
    assert_eq!(rest["presences"][0]["online"], true);
    assert_eq!(rest["presences"].as_array().unwrap().len(), 1);

    // The last stream closes: offline once, after the grace.
    drop(laptop);
    assert_eq!(presence(&next_event(&mut alices).await), ("bob", false));

    // A reload within the grace: online again, and no offline.
    let first = bob.subscribe("").await.unwrap();
    assert_eq!(presence(&next_event(&mut alices).await), ("bob", true));
    drop(first);
    let _reloaded = bob.subscribe("").await.unwrap();
    tokio::time::sleep(GRACE * 2).await;
    let marker = alice.send(&pair.id, "marker").await.unwrap();
    assert_eq!(
        next_event(&mut alices).await.id,
        marker.id,
        "no offline for a reload within the grace"
    );

    // carol shares nothing with bob: her stream heard none of it. Her
    // first event is the conversation alice makes with her now.
    let with_carol = alice.create_conversation(&["carol"]).await.unwrap();
    let hello = alice.send(&with_carol.id, "hello").await.unwrap();
    assert_eq!(next_event(&mut carols).await.id, hello.id);

    // Never replayed: resuming before the presence changes finds messages.
    let mut resumed = alice.events(&marker.id).await.unwrap();
    assert_eq!(next_event(&mut resumed).await.id, hello.id);
}

/// A node hears of the users another node already held only from that
/// node's periodic announcement: without it, they would stay offline there
/// until they reconnected.
async fn a_node_started_later_learns_who_is_online_from_the_next_announcement(db: TestDb) {
    if db.url.starts_with("sqlite:") {
        return; // Two nodes share PostgreSQL.
    }
    let first = node(&db).await;
    let alice = first.user("alice").await;
    let bob = first.user("bob").await;
    let pair = alice.create_conversation(&["bob"]).await.unwrap();
    bob.send(&pair.id, "hi").await.unwrap();
    // alice comes online on the first node before the second one listens.
    let _online = alice.events("").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = node(&db).await;
    let bob_there = second.user("bob").await;
    let online_there = || async {
        let asked = pb::GetPresenceRequest {
            user_ids: vec!["alice".into()],
        };
        let answer = bob_there
            .client()
            .get_presence(bob_there.request(asked))
            .await;
        let presences = answer.unwrap().into_inner().presences;
        presences.first().is_some_and(|presence| presence.online)
    };
    assert!(
        crate::support::eventually(online_there).await,
        "the second node learns of alice from the first's next announcement"
    );
    second.stop().await;
    first.stop().await;
}

/// A node on `db` that shares the test secret (so the cluster key) and
/// announces its users every half second.
async fn node(db: &TestDb) -> crate::support::TestApp {
    let secret = String::from_utf8(crate::support::SECRET.to_vec()).unwrap();
    spawn_app_with(db, move |config| {
        config.secret.jwt_secret = Some(secret.parse().unwrap());
        config.presence_interval = Duration::from_millis(500);
    })
    .await
}
