//! Messages that change: edits and deletions by the author, reactions,
//! replies. Each change is an event at a position of its own: delivered
//! live, replayed on resume, bounded by membership, and the current state
//! is what history shows.

use crate::support::{TestDb, User, code, next_event, open_sse, spawn_app, spawn_app_with};
use herald::pb::{self, event::Kind};
use reqwest::StatusCode;
use tonic::{Code, Status};

async fn edit(user: &User, chat: &str, id: &str, content: &str) -> Result<pb::Message, Status> {
    let body = pb::EditMessageRequest {
        conversation_id: chat.into(),
        message_id: id.into(),
        content: content.into(),
    };
    Ok(user
        .client()
        .edit_message(user.request(body))
        .await?
        .into_inner())
}

pub(crate) async fn delete(user: &User, chat: &str, id: &str) -> Result<pb::Message, Status> {
    let body = pb::DeleteMessageRequest {
        conversation_id: chat.into(),
        message_id: id.into(),
    };
    Ok(user
        .client()
        .delete_message(user.request(body))
        .await?
        .into_inner())
}

async fn react(user: &User, chat: &str, id: &str, emoji: &str) -> Result<pb::Message, Status> {
    let body = pb::ReactRequest {
        conversation_id: chat.into(),
        message_id: id.into(),
        emoji: emoji.into(),
    };
    Ok(user.client().react(user.request(body)).await?.into_inner())
}

async fn unreact(user: &User, chat: &str, id: &str, emoji: &str) -> Result<pb::Message, Status> {
    let body = pb::UnreactRequest {
        conversation_id: chat.into(),
        message_id: id.into(),
        emoji: emoji.into(),
    };
    Ok(user
        .client()
        .unreact(user.request(body))
        .await?
        .into_inner())
}

async fn reply(user: &User, chat: &str, to: &str, content: &str) -> Result<pb::Message, Status> {
    let body = pb::CreateMessageRequest {
        conversation_id: chat.into(),
        content: content.into(),
        reply_to_id: to.into(),
        ..Default::default()
    };
    Ok(user
        .client()
        .create_message(user.request(body))
        .await?
        .into_inner())
}

/// (emoji, count, mine) of each reaction, in order.
fn reactions(message: &pb::Message) -> Vec<(String, i32, bool)> {
    let each = |r: &pb::Reaction| (r.emoji.clone(), r.count, r.mine);
    message.reactions.iter().map(each).collect()
}

/// The message `id` as `user` lists it.
async fn listed(user: &User, chat: &str, id: &str) -> pb::Message {
    let history = user.history(chat).await.unwrap();
    history.into_iter().find(|m| m.id == id).expect("listed")
}

/// What an event is, in a word, with the message it concerns.
fn what(event: &pb::Event) -> (String, String) {
    match event.kind.as_ref().expect("a kind") {
        Kind::Message(m) if m.deleted => ("message (deleted)".into(), m.id.clone()),
        Kind::Message(m) => (format!("message {}", m.content), m.id.clone()),
        Kind::Edited(m) => (format!("edit {}", m.content), m.id.clone()),
        Kind::Deleted(m) => (format!("delete {}", m.deleted), m.id.clone()),
        Kind::Reaction(r) => (
            format!("reaction {} {}", r.emoji, r.added),
            r.message_id.clone(),
        ),
        other => (format!("{other:?}"), String::new()),
    }
}

async fn the_author_edits_and_deletes_and_others_cannot(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let sent = alice.send(&chat, "helo").await.unwrap();

    let edited = edit(&alice, &chat, &sent.id, "hello").await.unwrap();
    assert_eq!(
        (edited.id.as_str(), edited.content.as_str()),
        (sent.id.as_str(), "hello")
    );
    assert!(edited.edited_at.is_some() && sent.edited_at.is_none());
    assert_eq!(
        edited.created_at, sent.created_at,
        "an edit keeps the send time"
    );
    assert_eq!(listed(&bob, &chat, &sent.id).await, edited);

    // Only the author; the others' attempts change nothing.
    assert_eq!(
        code(edit(&bob, &chat, &sent.id, "mine").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(delete(&bob, &chat, &sent.id).await),
        Code::PermissionDenied
    );
    assert_eq!(listed(&bob, &chat, &sent.id).await.content, "hello");

    let tombstone = delete(&alice, &chat, &sent.id).await.unwrap();
    assert!(tombstone.deleted);
    assert_eq!(tombstone.content, "");
    assert_eq!(
        listed(&bob, &chat, &sent.id).await,
        tombstone,
        "it stays in place"
    );
    assert_eq!(
        code(edit(&alice, &chat, &sent.id, "back").await),
        Code::FailedPrecondition
    );
    // Deleting again answers the tombstone and commits nothing.
    let mut events = bob.events("").await.unwrap();
    assert_eq!(delete(&alice, &chat, &sent.id).await.unwrap(), tombstone);
    let after = alice.send(&chat, "after").await.unwrap();
    assert_eq!(what(&next_event(&mut events).await).0, "message after");
    assert_eq!(
        after.id.parse::<i64>().unwrap(),
        tombstone.id.parse::<i64>().unwrap() + 3
    );
    app.stop().await;
}

async fn an_edit_meets_the_rules_of_sending_and_bad_ids_are_not_found(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.max_content_bytes = 64).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let other = alice.create_conversation(&["carol"]).await.unwrap().id;
    let sent = alice.send(&chat, "fine").await.unwrap();
    for content in ["", "   ", "nul\u{0}", &"x".repeat(65)] {
        let refused = edit(&alice, &chat, &sent.id, content).await;
        assert_eq!(code(refused), Code::InvalidArgument, "{content:?}");
    }
    let elsewhere = alice.send(&other, "elsewhere").await.unwrap();
    for id in ["999999", "abc", &elsewhere.id] {
        assert_eq!(
            code(edit(&alice, &chat, id, "x").await),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            code(delete(&alice, &chat, id).await),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            code(react(&bob, &chat, id, "👍").await),
            Code::NotFound,
            "{id}"
        );
    }
    // A stranger to the conversation learns nothing either.
    let carol = app.user("carol").await;
    assert_eq!(
        code(react(&carol, &chat, &sent.id, "👍").await),
        Code::NotFound
    );
    assert_eq!(listed(&bob, &chat, &sent.id).await.content, "fine");
    app.stop().await;
}

async fn edits_count_against_the_send_rate(db: TestDb) {
    let app = spawn_app_with(&db, |config| {
        config.rate_limit = 0.1;
        config.rate_burst = 3.0;
    })
    .await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let sent = alice.send(&chat, "one").await.unwrap();
    edit(&alice, &chat, &sent.id, "two").await.unwrap();
    edit(&alice, &chat, &sent.id, "three").await.unwrap();
    let refused = edit(&alice, &chat, &sent.id, "four").await;
    assert_eq!(code(refused), Code::ResourceExhausted);
    app.stop().await;
}

async fn reactions_are_one_per_user_and_emoji_and_at_most_twenty_emoji(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let sent = alice.send(&chat, "react to me").await.unwrap();

    react(&bob, &chat, &sent.id, "👍").await.unwrap();
    let twice = react(&bob, &chat, &sent.id, "👍").await.unwrap();
    assert_eq!(
        reactions(&twice),
        [("👍".into(), 1, true)],
        "repeating is a no-op"
    );
    let both = react(&alice, &chat, &sent.id, "👍").await.unwrap();
    assert_eq!(reactions(&both), [("👍".into(), 2, true)]);
    react(&alice, &chat, &sent.id, "👨‍👩‍👧").await.unwrap();
    let seen_by_bob = listed(&bob, &chat, &sent.id).await;
    assert_eq!(
        reactions(&seen_by_bob),
        [("👍".into(), 2, true), ("👨‍👩‍👧".into(), 1, false)],
        "mine is the reader's own, in the order first given"
    );
    let taken = unreact(&bob, &chat, &sent.id, "👍").await.unwrap();
    assert_eq!(
        reactions(&taken),
        [("👍".into(), 1, false), ("👨‍👩‍👧".into(), 1, false)]
    );
    unreact(&bob, &chat, &sent.id, "👍").await.unwrap();

    // Twenty distinct emoji; a twenty-first is refused, more of one is not.
    let emoji: Vec<String> = (0..18)
        .map(|n| char::from_u32(0x1F600 + n).unwrap().to_string())
        .collect();
    for one in &emoji {
        react(&bob, &chat, &sent.id, one).await.unwrap();
    }
    let refused = react(&bob, &chat, &sent.id, "🦀").await;
    assert_eq!(code(refused), Code::FailedPrecondition);
    react(&bob, &chat, &sent.id, "👍").await.unwrap();
    let full = listed(&alice, &chat, &sent.id).await;
    assert_eq!(full.reactions.len(), 20);
    assert!(!full.reactions.iter().any(|r| r.emoji == "🦀"));

    // One grapheme cluster, at most 32 bytes, nothing invisible or blank.
    for bad in ["", "👍👍", "ab", " ", "\u{7}", "\u{200b}", "👨‍👩‍👧‍👦‍👨‍👩‍👧‍👦"]
    {
        let refused = react(&bob, &chat, &sent.id, bad).await;
        assert_eq!(code(refused), Code::InvalidArgument, "{bad:?}");
    }
    // A deleted message loses its reactions and takes no more.
    let tombstone = delete(&alice, &chat, &sent.id).await.unwrap();
    assert!(tombstone.reactions.is_empty());
    let refused = react(&bob, &chat, &sent.id, "👍").await;
    assert_eq!(code(refused), Code::FailedPrecondition);
    app.stop().await;
}

async fn a_reply_names_a_message_of_its_conversation_that_the_sender_saw(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    // A group, so carol can join it late.
    let group = alice
        .create_conversation(&["bob", "dave"])
        .await
        .unwrap()
        .id;
    let other = alice.create_conversation(&["carol"]).await.unwrap().id;
    let first = alice.send(&group, "question").await.unwrap();
    let answer = reply(&bob, &group, &first.id, "answer").await.unwrap();
    assert_eq!(answer.reply_to_id, first.id);
    assert_eq!(
        listed(&alice, &group, &answer.id).await.reply_to_id,
        first.id
    );
    let mut events = alice.events("").await.unwrap();
    reply(&bob, &group, &answer.id, "and more").await.unwrap();
    match next_event(&mut events).await.kind {
        Some(Kind::Message(message)) => assert_eq!(message.reply_to_id, answer.id),
        other => panic!("expected the reply, got {other:?}"),
    }

    let elsewhere = alice.send(&other, "elsewhere").await.unwrap();
    assert_eq!(
        code(reply(&alice, &group, &elsewhere.id, "x").await),
        Code::NotFound
    );
    alice.add(&group, &["carol"]).await.unwrap();
    let carol = app.user("carol").await;
    let before_her = reply(&carol, &group, &first.id, "x").await;
    assert_eq!(code(before_her), Code::NotFound, "sent before carol joined");
    assert_eq!(
        code(reply(&carol, &group, "abc", "x").await),
        Code::NotFound
    );
    app.stop().await;
}

async fn changes_are_events_at_their_own_positions_replayed_exactly_on_resume(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let first = alice.send(&chat, "first").await.unwrap();
    let mut live = bob.events(&first.id).await.unwrap();
    let mut messages = bob.subscribe("").await.unwrap();

    let second = alice.send(&chat, "second").await.unwrap();
    edit(&alice, &chat, &first.id, "first, fixed")
        .await
        .unwrap();
    react(&bob, &chat, &second.id, "🎉").await.unwrap();
    unreact(&bob, &chat, &second.id, "🎉").await.unwrap();
    delete(&alice, &chat, &second.id).await.unwrap();
    let last = reply(&alice, &chat, &first.id, "last").await.unwrap();

    let expected = [
        ("message second".to_string(), second.id.clone()),
        ("edit first, fixed".into(), first.id.clone()),
        ("reaction 🎉 true".into(), second.id.clone()),
        ("reaction 🎉 false".into(), second.id.clone()),
        ("delete true".into(), second.id.clone()),
        ("message last".into(), last.id.clone()),
    ];
    let mut ids = Vec::new();
    for want in &expected {
        let event = next_event(&mut live).await;
        assert_eq!(&what(&event), want);
        ids.push(event.id.parse::<i64>().unwrap());
    }
    assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{ids:?}");
    // The message stream carries new messages only.
    let contents = crate::support::next_contents(&mut messages, 2).await;
    assert_eq!(contents, ["second", "last"]);

    // A resume from before the changes replays exactly them, once, in
    // order, each message as it now is: "second" is a tombstone by now.
    let mut resumed = bob.events(&first.id).await.unwrap();
    // Left out: the reactions to "second", deleted since.
    let mut replayed: Vec<_> = expected
        .iter()
        .filter(|(what, _)| !what.starts_with("reaction"))
        .cloned()
        .collect();
    replayed[0].0 = "message (deleted)".into();
    for want in &replayed {
        let event = next_event(&mut resumed).await;
        assert_eq!(&what(&event), want);
        // Replayed, a message and a change carry all they carried live.
        match event.kind {
            Some(Kind::Edited(message)) => {
                assert!(message.edited_at.is_some() && message.created_at == first.created_at);
                assert_eq!(message.user_id, "alice");
            }
            Some(Kind::Message(message)) if message.id == last.id => {
                assert_eq!(message.reply_to_id, first.id);
            }
            _ => {}
        }
    }
    // Taking back a reaction never given changes nothing: no event.
    unreact(&bob, &chat, &second.id, "🦄").await.unwrap();
    let very_last = alice.send(&chat, "very last").await.unwrap();
    assert_eq!(next_event(&mut live).await.id, very_last.id);
    let mut from_the_middle = bob.events(&ids[2].to_string()).await.unwrap();
    for want in &expected[4..] {
        assert_eq!(&what(&next_event(&mut from_the_middle).await), want);
    }
    app.stop().await;
}

async fn a_member_who_joined_later_hears_no_change_to_what_came_before(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, carol) = (app.user("alice").await, app.user("carol").await);
    let group = alice
        .create_conversation(&["bob", "dave"])
        .await
        .unwrap()
        .id;
    // Carol is in another conversation from its start: that membership says
    // nothing of this group's history.
    carol.create_conversation(&["erin"]).await.unwrap();
    let old = alice.send(&group, "old").await.unwrap();
    alice.add(&group, &["carol"]).await.unwrap();
    let mut carols = carol.events("").await.unwrap();
    assert_eq!(carol.conversations().await.unwrap().len(), 2);

    // Changes to a message carol never saw: not for her, live or replayed.
    edit(&alice, &group, &old.id, "old, edited").await.unwrap();
    react(&alice, &group, &old.id, "👀").await.unwrap();
    delete(&alice, &group, &old.id).await.unwrap();
    // Changes to one she saw: hers.
    let new = alice.send(&group, "new").await.unwrap();
    edit(&alice, &group, &new.id, "new, edited").await.unwrap();
    assert_eq!(
        what(&next_event(&mut carols).await),
        ("message new".into(), new.id.clone())
    );
    assert_eq!(
        what(&next_event(&mut carols).await),
        ("edit new, edited".into(), new.id.clone())
    );
    // Her history starts at her joining.
    let history = carol.history(&group).await.unwrap();
    assert_eq!(crate::support::contents(&history), ["new, edited"]);
    // Bob saw it all: his replay holds her joining, then the changes to old.
    let bob = app.user("bob").await;
    let mut bobs = bob.events(&old.id).await.unwrap();
    let joined = next_event(&mut bobs).await;
    assert!(matches!(joined.kind, Some(Kind::Membership(_))));
    // Its edit, superseded, and its reactions, deleted since, are left out.
    let change_to_old = next_event(&mut bobs).await;
    assert_eq!(what(&change_to_old), ("delete true".into(), old.id.clone()));
    // Hers, from her joining, holds none of them.
    let mut replayed = carol.events(&joined.id).await.unwrap();
    assert_eq!(
        what(&next_event(&mut replayed).await),
        ("message new, edited".into(), new.id.clone())
    );
    assert_eq!(
        what(&next_event(&mut replayed).await),
        ("edit new, edited".into(), new.id.clone())
    );
    // And a change she could not see is no resume point of hers.
    assert_eq!(
        code(carol.events(&change_to_old.id).await),
        Code::OutOfRange
    );
    app.stop().await;
}

async fn edits_and_reactions_make_nothing_unread_and_a_deletion_is_no_longer_unread(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let one = alice.send(&chat, "one").await.unwrap();
    let two = alice.send(&chat, "two").await.unwrap();
    let unread = |conversations: Vec<pb::Conversation>| conversations[0].unread_count;
    assert_eq!(unread(bob.conversations().await.unwrap()), 2);
    edit(&alice, &chat, &one.id, "one, edited").await.unwrap();
    react(&alice, &chat, &one.id, "✅").await.unwrap();
    assert_eq!(unread(bob.conversations().await.unwrap()), 2);
    delete(&alice, &chat, &two.id).await.unwrap();
    let conversations = bob.conversations().await.unwrap();
    assert_eq!(unread(conversations.clone()), 1);
    let last = conversations[0].last_message.clone().unwrap();
    assert!(
        last.deleted && last.id == two.id,
        "the tombstone is the last message"
    );
    // Alice's list shows her reaction as hers.
    bob.mark_read(&chat, &two.id).await.unwrap();
    assert_eq!(unread(bob.conversations().await.unwrap()), 0);
    let mine = alice.conversations().await.unwrap();
    assert_eq!(mine[0].last_message.as_ref().unwrap().id, two.id);
    // The last message shows its reactions, as each reader sees them.
    let three = alice.send(&chat, "three").await.unwrap();
    react(&bob, &chat, &three.id, "👍").await.unwrap();
    let last =
        |conversations: Vec<pb::Conversation>| conversations[0].last_message.clone().unwrap();
    assert_eq!(
        reactions(&last(bob.conversations().await.unwrap())),
        [("👍".into(), 1, true)]
    );
    assert_eq!(
        reactions(&last(alice.conversations().await.unwrap())),
        [("👍".into(), 1, false)]
    );
    app.stop().await;
}

/// The content of a deleted message is gone from the database: its row
/// and every other holds an empty string, and on SQLite the file and its
/// log no longer hold the bytes.
async fn a_deleted_messages_content_is_erased_from_the_database(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let secret = "the-secret-that-must-go-0123456789";
    // Long enough to take overflow pages, which a deletion frees.
    let long = format!("{}{secret}", "x".repeat(6_000));
    let sent = alice.send(&chat, &long).await.unwrap();
    react(&alice, &chat, &sent.id, "🔥").await.unwrap();
    edit(&alice, &chat, &sent.id, &format!("{long}, edited"))
        .await
        .unwrap();
    for n in 0..20 {
        alice.send(&chat, &format!("filler {n}")).await.unwrap();
    }
    delete(&alice, &chat, &sent.id).await.unwrap();

    let pattern = format!("%{secret}%");
    // Rows holding the content, and the deleted message's reactions.
    let sql = "SELECT (SELECT COUNT(*) FROM messages WHERE content LIKE $1)
                    + (SELECT COUNT(*) FROM reactions WHERE message_position = $2)";
    let position = sent.id.parse::<i64>().unwrap();
    let left: i64 = if db.url.starts_with("sqlite:") {
        let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        sqlx::query_scalar(sql)
            .bind(&pattern)
            .bind(position)
            .fetch_one(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        sqlx::query_scalar(sql)
            .bind(&pattern)
            .bind(position)
            .fetch_one(&mut connection)
            .await
            .unwrap()
    };
    assert_eq!(left, 0, "no row holds the content, no reaction is left");
    // The log is emptied within a second or so of the deletion.
    if let Some(dir) = &db._dir {
        let holds = |file: &str| {
            let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
            bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes())
        };
        let erased =
            crate::support::eventually(|| async { !holds("herald.db") && !holds("herald.db-wal") })
                .await;
        assert!(erased, "the file or its log still holds the content");
    }
    app.stop().await;
}

/// REST: PATCH and DELETE a message, PUT and DELETE a reaction by its
/// percent-encoded emoji; statuses as gRPC's; `/api/events` names them.
async fn the_rest_door_and_the_event_stream_carry_changes(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    let chat = app
        .user("alice")
        .await
        .create_conversation(&["bob"])
        .await
        .unwrap()
        .id;
    let sent = app
        .user("alice")
        .await
        .send(&chat, "via rest")
        .await
        .unwrap();
    let mut stream = open_sse(app.events_request(&bob)).await;
    let http = reqwest::Client::new();
    let message = |id: &str| app.url(&format!("/api/conversations/{chat}/messages/{id}"));
    let call =
        |method: reqwest::Method, url: String, token: &str, body: Option<serde_json::Value>| {
            let mut request = http.request(method, url).bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            request.send()
        };
    let patch = reqwest::Method::PATCH;
    let edited = call(
        patch.clone(),
        message(&sent.id),
        &alice,
        Some(serde_json::json!({"content": "edited"})),
    )
    .await
    .unwrap();
    assert_eq!(edited.status(), StatusCode::OK);
    let edited: serde_json::Value = edited.json().await.unwrap();
    assert_eq!(edited["content"], "edited");
    assert!(edited["editedAt"].is_string());
    let not_hers = call(
        patch.clone(),
        message(&sent.id),
        &bob,
        Some(serde_json::json!({"content": "x"})),
    );
    assert_eq!(not_hers.await.unwrap().status(), StatusCode::FORBIDDEN);

    let reaction = |emoji: &str| format!("{}/reactions/{emoji}", message(&sent.id));
    let put = call(reqwest::Method::PUT, reaction("%F0%9F%91%8D"), &bob, None)
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let put: serde_json::Value = put.json().await.unwrap();
    assert_eq!(
        put["reactions"],
        serde_json::json!([{"emoji": "👍", "count": 1, "mine": true}])
    );
    for bad in ["%07", "%F0%9F%91%8D%F0%9F%91%8D", &"%C3%A9".repeat(17)] {
        let refused = call(reqwest::Method::PUT, reaction(bad), &bob, None)
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // A segment that is not UTF-8 gets the JSON error of every other 400.
    let garbled = call(reqwest::Method::PUT, reaction("%FF"), &bob, None)
        .await
        .unwrap();
    assert_eq!(garbled.status(), StatusCode::BAD_REQUEST);
    let error: serde_json::Value = garbled.json().await.unwrap();
    let why = error["error"].as_str().unwrap_or_default();
    assert!(why.starts_with("invalid path"), "{error}");
    let gone = call(
        reqwest::Method::DELETE,
        reaction("%F0%9F%91%8D"),
        &bob,
        None,
    )
    .await
    .unwrap();
    assert_eq!(gone.status(), StatusCode::OK);
    let deleted = call(reqwest::Method::DELETE, message(&sent.id), &alice, None)
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let deleted: serde_json::Value = deleted.json().await.unwrap();
    assert_eq!(deleted["deleted"], true);
    assert!(
        deleted.get("content").is_none(),
        "empty, so omitted: {deleted}"
    );
    let again = call(
        patch,
        message(&sent.id),
        &alice,
        Some(serde_json::json!({"content": "x"})),
    );
    assert_eq!(again.await.unwrap().status(), StatusCode::CONFLICT);
    let unknown = call(reqwest::Method::DELETE, message("424242"), &alice, None)
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    for (name, check) in [
        ("edit", "edited"),
        ("reaction", "true"),
        ("reaction", "false"),
        ("delete", "true"),
    ] {
        let event = loop {
            let event = stream.next_event().await.expect("the stream goes on");
            if event.event != "presence" {
                break event;
            }
        };
        assert_eq!(event.event, name);
        assert!(!event.id.is_empty(), "{name} carries an id");
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        let found = match name {
            "edit" => data["content"].as_str().unwrap_or_default().to_string(),
            "reaction" => data["added"].as_bool().unwrap_or(false).to_string(),
            _ => data["deleted"].as_bool().unwrap_or(false).to_string(),
        };
        assert_eq!(found, check, "{name}: {data}");
    }
    app.stop().await;
}

/// A member who left hears no change after leaving, and makes none; one who
/// comes back hears no change to what was sent while away, live or replayed.
async fn leaving_ends_changes_both_ways_and_coming_back_does_not_reopen_the_gap(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, dave) = (app.user("alice").await, app.user("dave").await);
    let group = alice
        .create_conversation(&["bob", "dave"])
        .await
        .unwrap()
        .id;
    // A pair of alice and dave carries the markers that prove "nothing else came".
    let pair = alice.create_conversation(&["dave"]).await.unwrap().id;
    let anchor = dave.send(&pair, "anchor").await.unwrap();
    let seen = alice.send(&group, "dave saw this").await.unwrap();
    let his = dave.send(&group, "dave's own").await.unwrap();
    let mut daves = dave.events(&his.id).await.unwrap();
    alice.remove(&group, "dave").await.unwrap();
    assert!(matches!(
        next_event(&mut daves).await.kind,
        Some(Kind::Membership(_))
    ));

    // Out: he cannot change his message or react, and hears nothing of
    // changes to what he saw.
    assert_eq!(
        code(edit(&dave, &group, &his.id, "x").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(delete(&dave, &group, &his.id).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(react(&dave, &group, &seen.id, "👍").await),
        Code::PermissionDenied
    );
    edit(&alice, &group, &seen.id, "edited after he left")
        .await
        .unwrap();
    react(&alice, &group, &seen.id, "👋").await.unwrap();
    let away = alice.send(&group, "while dave was away").await.unwrap();
    let marker = alice.send(&pair, "marker one").await.unwrap();
    assert_eq!(
        next_event(&mut daves).await.id,
        marker.id,
        "nothing of the group"
    );

    // Back: changes to what was sent while he was away are not his.
    alice.add(&group, &["dave"]).await.unwrap();
    let back = next_event(&mut daves).await;
    assert!(matches!(back.kind, Some(Kind::Membership(_))));
    edit(&alice, &group, &away.id, "away, edited")
        .await
        .unwrap();
    let marker = alice.send(&pair, "marker two").await.unwrap();
    assert_eq!(
        next_event(&mut daves).await.id,
        marker.id,
        "not the edit of the gap"
    );
    let mut replayed = dave.events(&back.id).await.unwrap();
    assert_eq!(
        next_event(&mut replayed).await.id,
        marker.id,
        "nor on replay"
    );
    // A replay of his time in the group shows what he saw there, not what
    // was written after he left: that message is withheld, as a tombstone.
    let mut replayed = dave.events(&anchor.id).await.unwrap();
    match next_event(&mut replayed).await.kind {
        Some(Kind::Message(message)) => {
            assert_eq!(message.id, seen.id);
            assert_eq!((message.content.as_str(), message.deleted), ("", true));
            assert!(message.edited_at.is_none());
        }
        other => panic!("expected the message he saw, got {other:?}"),
    }
    app.stop().await;
}

/// A send retried with its key after the message changed answers the
/// message as it now is, not a refusal for "a different message".
async fn a_retried_send_after_an_edit_answers_the_message_as_it_now_is(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let send = || {
        let body = pb::CreateMessageRequest {
            conversation_id: chat.clone(),
            content: "helo".into(),
            client_message_id: "retry-me".into(),
            ..Default::default()
        };
        let mut client = alice.client();
        let request = alice.request(body);
        async move { client.create_message(request).await.map(|r| r.into_inner()) }
    };
    let sent = send().await.unwrap();
    let edited = edit(&alice, &chat, &sent.id, "hello").await.unwrap();
    assert_eq!(send().await.unwrap(), edited);
    let tombstone = delete(&alice, &chat, &sent.id).await.unwrap();
    assert_eq!(send().await.unwrap(), tombstone);
    app.stop().await;
}

/// Deleting and reacting are metered by the call rate: a reaction storm
/// is refused before it floods anyone's stream.
async fn a_reaction_storm_is_refused_at_the_call_rate(db: TestDb) {
    let app = spawn_app_with(&db, |config| {
        config.call_rate_limit = 0.1;
        config.call_rate_burst = 6.0;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let sent = alice.send(&chat, "storm").await.unwrap();
    let mut refused = None;
    for round in 0..12 {
        let answer = match round % 2 {
            0 => react(&bob, &chat, &sent.id, "👍").await,
            _ => unreact(&bob, &chat, &sent.id, "👍").await,
        };
        if let Err(status) = answer {
            refused = Some((round, status.code()));
            break;
        }
    }
    let (round, status) = refused.expect("the storm is refused");
    assert_eq!(status, Code::ResourceExhausted);
    assert!(round <= 6, "refused at round {round}");
    // Deletions are metered the same way.
    let mut deleted = 0;
    loop {
        let sent = alice.send(&chat, "to delete").await.unwrap();
        match delete(&alice, &chat, &sent.id).await {
            Ok(_) => deleted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                break;
            }
        }
        assert!(deleted <= 6, "deletions are not metered");
    }
    app.stop().await;
}

on_every_backend!(
    the_author_edits_and_deletes_and_others_cannot,
    an_edit_meets_the_rules_of_sending_and_bad_ids_are_not_found,
    edits_count_against_the_send_rate,
    reactions_are_one_per_user_and_emoji_and_at_most_twenty_emoji,
    a_reply_names_a_message_of_its_conversation_that_the_sender_saw,
    changes_are_events_at_their_own_positions_replayed_exactly_on_resume,
    a_member_who_joined_later_hears_no_change_to_what_came_before,
    edits_and_reactions_make_nothing_unread_and_a_deletion_is_no_longer_unread,
    a_deleted_messages_content_is_erased_from_the_database,
    the_rest_door_and_the_event_stream_carry_changes,
    leaving_ends_changes_both_ways_and_coming_back_does_not_reopen_the_gap,
    a_reaction_storm_is_refused_at_the_call_rate,
    a_retried_send_after_an_edit_answers_the_message_as_it_now_is,
);
