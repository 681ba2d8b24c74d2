//! Conversations that change: members join and leave at stream positions,
//! and every door keeps to those boundaries. Read receipts and membership
//! changes travel on the event stream, in the same order as messages.

use crate::support::{
    TestApp, TestDb, User, code, next_event, next_message, open_sse, page, spawn_app,
};
use herald::pb::{self, event::Kind};
use std::collections::BTreeMap;
use tonic::{Code, Streaming};

on_every_backend!(
    a_one_to_one_conversation_keeps_its_participants,
    a_send_the_cache_would_allow_is_refused_by_the_insert_itself,
    only_the_creator_removes_others_and_anyone_may_leave,
    a_removed_member_is_refused_and_receives_nothing_more,
    a_new_member_sees_only_what_follows_the_add,
    read_receipts_reach_every_participant_and_every_device_once,
    resuming_across_a_removal_and_an_add_replays_exactly_the_membership,
    boundaries_hold_under_four_writers_while_members_come_and_go,
    the_event_stream_over_sse_names_what_is_not_a_message_and_resumes,
    a_replay_of_large_membership_changes_comes_in_pages_and_whole,
);

fn position(id: &str) -> i64 {
    id.parse().expect("event ids are positions")
}

/// One user's membership over time, read from a member's event stream:
/// the positions at which they were added and removed.
#[derive(Default, Debug)]
struct Intervals(Vec<(i64, Option<i64>)>);

impl Intervals {
    /// Members from the start (created with the conversation).
    fn from_start() -> Self {
        Self(vec![(0, None)])
    }

    fn apply(&mut self, user: &str, at: i64, change: &pb::MembershipChange) {
        if change.added_ids.iter().any(|id| id == user) {
            self.0.push((at, None));
        }
        if change.removed_ids.iter().any(|id| id == user)
            && let Some(last) = self.0.last_mut()
        {
            last.1 = Some(at);
        }
    }

    fn holds(&self, at: i64) -> bool {
        self.0
            .iter()
            .any(|(from, to)| *from <= at && to.is_none_or(|to| at <= to))
    }
}

/// The next `count` events of `stream`.
async fn next_events(stream: &mut Streaming<pb::Event>, count: usize) -> Vec<pb::Event> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(next_event(stream).await);
    }
    events
}

fn membership(event: &pb::Event) -> &pb::MembershipChange {
    match &event.kind {
        Some(Kind::Membership(change)) => change,
        other => panic!("expected a membership change, got {other:?}"),
    }
}

fn message(event: &pb::Event) -> &pb::Message {
    match &event.kind {
        Some(Kind::Message(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn users(app: &TestApp, names: &[&str]) -> Vec<User> {
    let mut users = Vec::new();
    for name in names {
        users.push(app.user(name).await);
    }
    users
}

async fn a_one_to_one_conversation_keeps_its_participants(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let pair = alice.create_conversation(&["bob"]).await.unwrap();
    assert_eq!(pair.creator_id, "", "a pair has no creator");

    assert_eq!(
        code(alice.add(&pair.id, &["carol"]).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(alice.remove(&pair.id, "alice").await),
        Code::FailedPrecondition
    );
    // The REST door answers 409.
    let response = reqwest::Client::new()
        .post(app.url(&format!("/api/conversations/{}/participants", pair.id)))
        .bearer_auth(app.token("alice"))
        .json(&serde_json::json!({ "userIds": ["carol"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let pair = &alice.conversations().await.unwrap()[0];
    assert_eq!(pair.participant_ids, ["alice", "bob"]);
}

async fn only_the_creator_removes_others_and_anyone_may_leave(db: TestDb) {
    let app = spawn_app(&db).await;
    let [alice, bob, carol, mallory] =
        &users(&app, &["alice", "bob", "carol", "mallory"]).await[..]
    else {
        unreachable!()
    };
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    assert_eq!(group.creator_id, "alice");

    assert_eq!(
        code(carol.remove(&group.id, "bob").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(mallory.add(&group.id, &["mallory"]).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(mallory.remove(&group.id, "mallory").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(alice.remove(&group.id, "mallory").await),
        Code::NotFound
    );
    assert_eq!(
        code(alice.add(&group.id, &[] as &[&str]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(alice.add(&group.id, &[""]).await),
        Code::InvalidArgument
    );

    // Any participant adds; adding a member again changes nothing.
    let added = carol.add(&group.id, &["dave", "bob"]).await.unwrap();
    assert_eq!(added.participant_ids, ["alice", "bob", "carol", "dave"]);

    // Bob leaves: his answer is the group as it is without him.
    let left = bob.remove(&group.id, "bob").await.unwrap();
    assert_eq!(left.participant_ids, ["alice", "carol", "dave"]);
    assert_eq!(left.creator_id, "alice");

    // The creator removes others.
    let after = alice.remove(&group.id, "carol").await.unwrap();
    assert_eq!(after.participant_ids, ["alice", "dave"]);

    // Over the group limit is refused whole.
    let crowd: Vec<String> = (0..1_000).map(|n| format!("user{n}")).collect();
    assert_eq!(
        code(alice.add(&group.id, &crowd).await),
        Code::InvalidArgument
    );
    assert_eq!(
        alice.conversations().await.unwrap()[0].participant_ids,
        ["alice", "dave"]
    );
}

async fn a_removed_member_is_refused_and_receives_nothing_more(db: TestDb) {
    let app = spawn_app(&db).await;
    let [alice, bob] = &users(&app, &["alice", "bob"]).await[..] else {
        unreachable!()
    };
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let mut bob_messages = bob.subscribe("").await.unwrap();
    let mut bob_events = bob.events("").await.unwrap();
    let before = bob.send(&group.id, "before").await.unwrap();
    assert_eq!(next_message(&mut bob_messages).await.id, before.id);
    assert_eq!(next_event(&mut bob_events).await.id, before.id);

    alice.remove(&group.id, "bob").await.unwrap();
    let after = alice
        .send(&group.id, "one position after the removal")
        .await
        .unwrap();

    // Bob's event stream hears of his removal, then nothing of the group.
    let removal = next_event(&mut bob_events).await;
    assert_eq!(membership(&removal).removed_ids, ["bob"]);
    assert_eq!(position(&removal.id) + 1, position(&after.id));
    assert_eq!(
        code(bob.send(&group.id, "still here?").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(bob.messages(page(&group.id)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(bob.mark_read(&group.id, &before.id).await),
        Code::PermissionDenied
    );
    assert!(bob.conversations().await.unwrap().is_empty());

    // Proof that nothing is merely late: a conversation bob is still in
    // comes next on both streams.
    let other = alice.create_conversation(&["bob"]).await.unwrap();
    let marker = alice.send(&other.id, "marker").await.unwrap();
    assert_eq!(next_message(&mut bob_messages).await.id, marker.id);
    assert_eq!(next_event(&mut bob_events).await.id, marker.id);
}

async fn a_new_member_sees_only_what_follows_the_add(db: TestDb) {
    let app = spawn_app(&db).await;
    let [alice, carol] = &users(&app, &["alice", "carol"]).await[..] else {
        unreachable!()
    };
    let group = alice.create_conversation(&["bob", "erin"]).await.unwrap();
    alice.send(&group.id, "old 1").await.unwrap();
    let old = alice.send(&group.id, "old 2").await.unwrap();
    let mut carol_messages = carol.subscribe("").await.unwrap();
    let mut carol_events = carol.events("").await.unwrap();

    let added = alice.add(&group.id, &["carol"]).await.unwrap();
    assert_eq!(added.participant_ids, ["alice", "bob", "carol", "erin"]);
    let listed = &carol.conversations().await.unwrap()[0];
    assert_eq!(listed.last_message, None, "nothing she can see yet");
    let new = alice
        .send(&group.id, "one position after the add")
        .await
        .unwrap();

    let add = next_event(&mut carol_events).await;
    let change = membership(&add);
    assert_eq!(change.added_ids, ["carol"]);
    assert_eq!(change.actor_id, "alice");
    let after_add = change.conversation.as_ref().unwrap();
    assert_eq!(after_add.participant_ids, ["alice", "bob", "carol", "erin"]);
    assert_eq!(position(&add.id) + 1, position(&new.id));
    assert_eq!(message(&next_event(&mut carol_events).await).id, new.id);
    assert_eq!(next_message(&mut carol_messages).await.id, new.id);

    // History, the conversation list and resume points begin at the add.
    let history = carol.history(&group.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].id, new.id);
    let listed = &carol.conversations().await.unwrap()[0];
    assert_eq!(listed.last_message.as_ref().unwrap().id, new.id);
    assert_eq!(
        listed.unread_count, 1,
        "only what came after the add is unread"
    );
    assert_eq!(code(carol.subscribe(&old.id).await), Code::OutOfRange);
    assert_eq!(code(carol.events(&old.id).await), Code::OutOfRange);
    // A message from before the add is as unknown to her as one that
    // never existed: no cursor tells her which ids were there.
    assert_eq!(
        code(carol.mark_read(&group.id, &old.id).await),
        Code::NotFound
    );
    let mut before_old = page(&group.id);
    before_old.before_id = old.id.clone();
    assert_eq!(code(carol.messages(before_old).await), Code::NotFound);
    let mut after_old = page(&group.id);
    after_old.after_id = old.id.clone();
    assert_eq!(code(carol.messages(after_old).await), Code::NotFound);
}

async fn read_receipts_reach_every_participant_and_every_device_once(db: TestDb) {
    let app = spawn_app(&db).await;
    let [alice, bob] = &users(&app, &["alice", "bob"]).await[..] else {
        unreachable!()
    };
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let mut alices = alice.events("").await.unwrap();
    let mut bobs_phone = bob.events("").await.unwrap();
    let mut bobs_laptop = bob.events("").await.unwrap();
    let mut bobs_messages = bob.subscribe("").await.unwrap();

    let first = alice.send(&group.id, "first").await.unwrap();
    let marked = bob.mark_read(&group.id, &first.id).await.unwrap();
    assert_eq!(marked.unread_count, 0);
    // Marking the same message again moves nothing and says nothing.
    bob.mark_read(&group.id, &first.id).await.unwrap();
    let second = alice.send(&group.id, "second").await.unwrap();

    for stream in [&mut alices, &mut bobs_phone, &mut bobs_laptop] {
        let events = next_events(stream, 3).await;
        assert_eq!(message(&events[0]).id, first.id);
        let Some(Kind::Read(read)) = &events[1].kind else {
            panic!("expected a read receipt, got {:?}", events[1]);
        };
        assert_eq!(
            (
                read.conversation_id.as_str(),
                read.user_id.as_str(),
                read.message_id.as_str()
            ),
            (group.id.as_str(), "bob", first.id.as_str())
        );
        assert!(position(&events[1].id) > position(&first.id));
        assert_eq!(message(&events[2]).id, second.id, "one receipt, not two");
    }
    // The message stream carries messages only.
    assert_eq!(next_message(&mut bobs_messages).await.id, first.id);
    assert_eq!(next_message(&mut bobs_messages).await.id, second.id);
    // Receipts are not messages: not in history, not unread, not "last".
    assert_eq!(alice.history(&group.id).await.unwrap().len(), 2);
    let listed = &bob.conversations().await.unwrap()[0];
    assert_eq!(listed.last_message.as_ref().unwrap().id, second.id);
    assert_eq!(listed.unread_count, 1);
}

async fn resuming_across_a_removal_and_an_add_replays_exactly_the_membership(db: TestDb) {
    let app = spawn_app(&db).await;
    let [alice, carol] = &users(&app, &["alice", "carol"]).await[..] else {
        unreachable!()
    };
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let seen = {
        let mut carol_events = carol.events("").await.unwrap();
        let mut carol_messages = carol.subscribe("").await.unwrap();
        let seen = alice.send(&group.id, "seen").await.unwrap();
        assert_eq!(next_event(&mut carol_events).await.id, seen.id);
        assert_eq!(next_message(&mut carol_messages).await.id, seen.id);
        seen
    }; // carol goes offline

    alice.remove(&group.id, "carol").await.unwrap();
    let away = alice.send(&group.id, "while carol was away").await.unwrap();
    alice.add(&group.id, &["carol"]).await.unwrap();
    let back = alice.send(&group.id, "carol is back").await.unwrap();

    let mut carol_events = carol.events(&seen.id).await.unwrap();
    let replayed = next_events(&mut carol_events, 3).await;
    assert_eq!(membership(&replayed[0]).removed_ids, ["carol"]);
    assert_eq!(membership(&replayed[1]).added_ids, ["carol"]);
    assert_eq!(message(&replayed[2]).id, back.id);
    let mut carol_messages = carol.subscribe(&seen.id).await.unwrap();
    assert_eq!(next_message(&mut carol_messages).await.id, back.id);

    let history: Vec<String> = carol
        .history(&group.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(history, [seen.id.clone(), back.id.clone()]);
    assert!(!history.contains(&away.id));
    // A resume point inside the gap is not carol's to use.
    assert_eq!(code(carol.subscribe(&away.id).await), Code::OutOfRange);
}

/// Four writers keep sending while carol and dave are removed and added
/// over and over. Each one's streams must hold exactly the events of the
/// positions at which they were members (read from alice's stream, who
/// stays), in order, and their history must equal what they received.
async fn boundaries_hold_under_four_writers_while_members_come_and_go(db: TestDb) {
    const PER_WRITER: usize = 40;
    const ROUNDS: usize = 6;
    let app = spawn_app(&db).await;
    let everyone = users(&app, &["alice", "bob", "erin", "frank", "carol", "dave"]).await;
    let [alice, bob, erin, frank, carol, dave] = &everyone[..] else {
        unreachable!()
    };
    let group = alice
        .create_conversation(&["bob", "erin", "frank", "carol"])
        .await
        .unwrap();
    let mut truth = alice.events("").await.unwrap();
    let mut carol_events = carol.events("").await.unwrap();
    let mut carol_messages = carol.subscribe("").await.unwrap();
    let mut dave_events = dave.events("").await.unwrap();
    let mut dave_messages = dave.subscribe("").await.unwrap();

    let write = |user: &'static str, who: &User| {
        let who = who.client();
        let token = app.token(user);
        let id = group.id.clone();
        async move {
            for n in 1..=PER_WRITER {
                let body = pb::CreateMessageRequest {
                    conversation_id: id.clone(),
                    content: format!("{user} {n}"),
                    ..Default::default()
                };
                let request = crate::support::authorized(body, &format!("Bearer {token}"));
                who.clone().create_message(request).await.unwrap();
            }
        }
    };
    let changes = async {
        for round in 0..ROUNDS {
            alice.remove(&group.id, "carol").await.unwrap();
            alice.add(&group.id, &["dave"]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(3 + round as u64)).await;
            alice.add(&group.id, &["carol"]).await.unwrap();
            alice.remove(&group.id, "dave").await.unwrap();
        }
    };
    tokio::join!(
        write("alice", alice),
        write("bob", bob),
        write("erin", erin),
        write("frank", frank),
        changes
    );

    // The truth: every event of the group in order, from alice, who stays.
    let total = 4 * PER_WRITER + 4 * ROUNDS;
    let all = next_events(&mut truth, total).await;
    let mut intervals = BTreeMap::from([
        ("carol", Intervals::from_start()),
        ("dave", Intervals::default()),
    ]);
    for event in &all {
        if let Some(Kind::Membership(change)) = &event.kind {
            for (user, held) in intervals.iter_mut() {
                held.apply(user, position(&event.id), change);
            }
        }
    }
    let expected = |user: &str, messages_only: bool| -> Vec<String> {
        all.iter()
            .filter(|event| intervals[user].holds(position(&event.id)))
            .filter(|event| !messages_only || matches!(event.kind, Some(Kind::Message(_))))
            .map(|event| event.id.clone())
            .collect()
    };

    for (user, events, messages) in [
        ("carol", &mut carol_events, &mut carol_messages),
        ("dave", &mut dave_events, &mut dave_messages),
    ] {
        let want = expected(user, false);
        let got: Vec<String> = next_events(events, want.len())
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, want, "{user}'s events");
        let want_messages = expected(user, true);
        assert!(
            want_messages.len() > 10 && want_messages.len() < 4 * PER_WRITER,
            "{user} was a member for part of the run: {}",
            want_messages.len()
        );
        let mut got = Vec::new();
        while got.len() < want_messages.len() {
            got.push(next_message(messages).await.id);
        }
        assert_eq!(got, want_messages, "{user}'s messages");
    }
    // Carol ends a member: her history is exactly what she received.
    let history: Vec<String> = carol
        .history(&group.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(history, expected("carol", true), "carol's history");
    // Nothing more is on its way: the next event each gets is a new one.
    let marker = alice.send(&group.id, "marker").await.unwrap();
    assert_eq!(next_event(&mut carol_events).await.id, marker.id);
    let readded = alice.add(&group.id, &["dave"]).await.unwrap();
    let add = next_event(&mut dave_events).await;
    assert_eq!(membership(&add).added_ids, ["dave"]);
    assert_eq!(readded.participant_ids.len(), 6);
}

/// `/api/events` over SSE, changed over REST: messages unnamed as on
/// `/api/messages`, receipts and changes named, every one with its id, and
/// a resume with `Last-Event-ID` replays exactly what followed.
async fn the_event_stream_over_sse_names_what_is_not_a_message_and_resumes(db: TestDb) {
    let app = spawn_app(&db).await;
    let http = reqwest::Client::new();
    let rest = |method: reqwest::Method, path: &str, user: &str| {
        http.request(method, app.url(path))
            .bearer_auth(app.token(user))
    };
    let events = |user: &str| app.events_request(&app.token(user));
    let group: pb::Conversation = rest(reqwest::Method::POST, "/api/conversations", "alice")
        .json(&serde_json::json!({ "participantIds": ["bob", "carol"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut bob = open_sse(events("bob")).await;

    let sent: pb::Message = rest(
        reqwest::Method::POST,
        &format!("/api/conversations/{}/messages", group.id),
        "alice",
    )
    .json(&serde_json::json!({ "content": "hello" }))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let read = rest(
        reqwest::Method::POST,
        &format!("/api/conversations/{}/read", group.id),
        "bob",
    )
    .json(&serde_json::json!({ "messageId": sent.id }))
    .send()
    .await
    .unwrap();
    assert_eq!(read.status(), 200);
    let added = rest(
        reqwest::Method::POST,
        &format!("/api/conversations/{}/participants", group.id),
        "bob",
    )
    .json(&serde_json::json!({ "userIds": ["dave"] }))
    .send()
    .await
    .unwrap();
    assert_eq!(added.status(), 200);
    let added: pb::Conversation = added.json().await.unwrap();
    assert_eq!(added.participant_ids, ["alice", "bob", "carol", "dave"]);
    let removed = rest(
        reqwest::Method::DELETE,
        &format!("/api/conversations/{}/participants/dave", group.id),
        "bob",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(removed.status(), 403, "only the creator removes others");
    let left = rest(
        reqwest::Method::DELETE,
        &format!("/api/conversations/{}/participants/dave", group.id),
        "dave",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(left.status(), 200);

    let message = bob.next_message().await;
    assert_eq!(message.id, sent.id);
    let receipt = bob.next_event().await.unwrap();
    assert_eq!(receipt.event, "read");
    let receipt_json: pb::ReadReceipt = serde_json::from_str(&receipt.data).unwrap();
    assert_eq!(receipt_json.user_id, "bob");
    assert_eq!(receipt_json.message_id, sent.id);
    let add = bob.next_event().await.unwrap();
    assert_eq!(add.event, "membership");
    let add_json: pb::MembershipChange = serde_json::from_str(&add.data).unwrap();
    assert_eq!(add_json.added_ids, ["dave"]);
    assert_eq!(add_json.actor_id, "bob");
    let leave = bob.next_event().await.unwrap();
    assert_eq!(leave.event, "membership");
    assert!(position(&receipt.id) < position(&add.id) && position(&add.id) < position(&leave.id));

    // Resume after the receipt: the two changes, in order, then live.
    let mut resumed = open_sse(events("bob").header("last-event-id", receipt.id.as_str())).await;
    assert_eq!(resumed.next_event().await.unwrap().id, add.id);
    assert_eq!(resumed.next_event().await.unwrap().id, leave.id);
    // /api/messages still carries messages only: resuming it from the
    // message finds nothing to replay, and the next message is live.
    let mut messages = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", sent.id.as_str()),
    )
    .await;
    let next = app
        .user("alice")
        .await
        .send(&group.id, "next")
        .await
        .unwrap();
    assert_eq!(messages.next_message().await.id, next.id);
    assert_eq!(resumed.next_message().await.id, next.id);
    // A resume point that names nothing of bob's: reset, then live.
    let mut reset = open_sse(events("bob").header("last-event-id", "999999")).await;
    assert_eq!(reset.next_event().await.unwrap().event, "reset");
    let last = app
        .user("alice")
        .await
        .send(&group.id, "last")
        .await
        .unwrap();
    assert_eq!(reset.next_message().await.id, last.id);
}

/// Each change of a 1,000-member group carries the member list (about
/// 56 KB in memory): 30 of them are more than one replay page holds, so
/// the replay is cut by bytes and read on; every change still arrives,
/// once, in order.
async fn a_replay_of_large_membership_changes_comes_in_pages_and_whole(db: TestDb) {
    const CHANGES: usize = 30;
    let app = crate::support::spawn_app_with(&db, |config| {
        config.call_rate_limit = 100_000.0;
        config.call_rate_burst = 100_000.0;
    })
    .await;
    let alice = app.user("alice").await;
    let others: Vec<String> = (0..998).map(|n| format!("member-{n:04}")).collect();
    let group = alice.create_conversation(&others).await.unwrap();
    let start = alice.send(&group.id, "start").await.unwrap();
    let mut changes = Vec::new();
    for n in 0..CHANGES {
        let who = format!("guest-{n}");
        alice.add(&group.id, &[&who]).await.unwrap();
        changes.push(("add", who.clone()));
        alice.remove(&group.id, &who).await.unwrap();
        changes.push(("remove", who));
    }
    let end = alice.send(&group.id, "end").await.unwrap();

    let mut resumed = alice.events(&start.id).await.unwrap();
    let mut last = position(&start.id);
    for (kind, who) in &changes {
        let event = next_event(&mut resumed).await;
        assert!(position(&event.id) > last, "in order");
        last = position(&event.id);
        let change = membership(&event);
        let named = match *kind {
            "add" => &change.added_ids,
            _ => &change.removed_ids,
        };
        assert_eq!(named, std::slice::from_ref(who));
        assert_eq!(
            change.conversation.as_ref().unwrap().participant_ids.len(),
            999 + usize::from(*kind == "add")
        );
    }
    assert_eq!(next_event(&mut resumed).await.id, end.id);
}

/// The insert's own check (a trigger) refuses a message from someone who is
/// no longer a participant, whatever a node has cached: here the row is
/// removed behind herald's back, so the cache still says yes.
async fn a_send_the_cache_would_allow_is_refused_by_the_insert_itself(db: TestDb) {
    use sqlx::Connection;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    bob.send(&group.id, "cached").await.unwrap();
    let remove = "DELETE FROM participants WHERE conversation_id = $1 AND user_id = 'bob'";
    if db.url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(remove)
            .bind(&group.id)
            .execute(&mut connection)
            .await
            .unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(remove)
            .bind(&group.id)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    assert_eq!(
        code(bob.send(&group.id, "refused").await),
        Code::PermissionDenied
    );
    alice.send(&group.id, "still fine").await.unwrap();
    app.stop().await;
}
