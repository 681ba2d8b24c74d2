//! Several `herald serve` processes on one PostgreSQL database: writers on
//! two nodes, SSE and gRPC subscribers on others, through each broker, with
//! the broker link cut mid-run. Every message must arrive exactly once, in
//! the order `ListMessages` shows.
//!
//! Arrival alone cannot tell a working broker from a dead one: each node's
//! feed also finds committed messages in the database (a gap filled after
//! 50 ms, the head polled every second). So with the link whole, most
//! messages must have come through the broker: the feed's fill counter
//! stays under a tenth of them.

use crate::support::{
    Nats, PATIENCE, Process, authorized, free_port, metric, mint, next_event, open_sse,
};
use futures_util::FutureExt;
use herald::pb;
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

const SECRET: &str = "cluster-secret-0123456789abcdef0123456789abcdef";
const PER_WRITER: usize = 150;

fn token(user: &str) -> String {
    mint(SECRET, user)
}

/// Starts `count` nodes on `database` with the broker `args`.
async fn nodes(database: &str, count: usize, args: &[String]) -> Vec<Process> {
    let mut nodes = Vec::new();
    // One after the other: the first one migrates.
    for _ in 0..count {
        nodes.push(
            Process::serve_on(database, |command| {
                command.args(["--jwt-secret", SECRET]).args(args);
            })
            .await,
        );
    }
    nodes
}

/// Writes `PER_WRITER` messages as `user` through `node`, counting them in `written`.
async fn write(node: &Process, user: &str, conversation: &str, written: &AtomicUsize) {
    let mut client = node.client().await;
    let bearer = format!("Bearer {}", token(user));
    for n in 1..=PER_WRITER {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.into(),
            content: format!("{user}-{n}"),
            ..Default::default()
        };
        client
            .create_message(authorized(body, &bearer))
            .await
            .unwrap();
        written.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the whole scenario on `nodes`; `cut` breaks the broker link midway.
async fn deliver_across_nodes(nodes: &[Process], cut: impl std::future::Future<Output = ()>) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a = a.client().await;
    let group = pb::CreateConversationRequest {
        participant_ids: vec!["bob".into(), "carol".into()],
    };
    let group = on_a
        .create_conversation(authorized(group, &format!("Bearer {}", token("alice"))))
        .await
        .unwrap()
        .into_inner();
    let sse_request = reqwest::Client::new()
        .get(format!("http://{}/api/messages", b.http))
        .header("accept", "text/event-stream")
        .bearer_auth(token("bob"));
    let mut bob_on_b = open_sse(sse_request).await;
    let subscribe = authorized(
        pb::SubscribeMessagesRequest::default(),
        &format!("Bearer {}", token("carol")),
    );
    let mut carol_on_c = c
        .client()
        .await
        .subscribe_messages(subscribe)
        .await
        .unwrap()
        .into_inner();

    let written = AtomicUsize::new(0);
    let writers = async {
        let midway = async {
            while written.load(Ordering::Relaxed) < PER_WRITER {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            cut.await;
        };
        let alice = write(a, "alice", &group.id, &written);
        let bob = write(b, "bob", &group.id, &written);
        tokio::join!(alice, bob, midway);
        written.load(Ordering::Relaxed)
    };
    let written = tokio::time::timeout(Duration::from_secs(60), writers)
        .await
        .expect("the writers finish");
    assert_eq!(written, 2 * PER_WRITER);

    let total = 2 * PER_WRITER;
    let mut over_sse = Vec::with_capacity(total);
    while over_sse.len() < total {
        over_sse.push(bob_on_b.next_message().await.id);
    }
    let mut over_grpc = Vec::with_capacity(total);
    while over_grpc.len() < total {
        let message = tokio::time::timeout(PATIENCE, carol_on_c.message())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        over_grpc.push(message.id);
    }
    let history = pb::ListMessagesRequest {
        conversation_id: group.id.clone(),
        page_size: 500,
        ..Default::default()
    };
    let history = on_a
        .list_messages(authorized(history, &format!("Bearer {}", token("alice"))))
        .await
        .unwrap();
    let history: Vec<String> = history
        .into_inner()
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(history.len(), total);
    assert_eq!(over_sse, history, "SSE on node B");
    assert_eq!(over_grpc, history, "gRPC on node C");
}

/// Checks that the subscribers' nodes got the messages through the broker:
/// a node that read more than a tenth of them from the database itself
/// (gaps filled, head polled) had a broker that did not deliver.
async fn delivered_by_the_broker(nodes: &[Process]) {
    for node in &nodes[1..] {
        let filled = metric(&node.http, "herald_feed_unreported_messages_total").await;
        assert!(
            filled <= (2 * PER_WRITER / 10) as f64,
            "node {} found {filled} of {} messages without a report from the broker",
            node.http,
            2 * PER_WRITER
        );
    }
}

/// Runs `select` (a list over herald's LISTEN connections to `database`,
/// `$1`) as an administrator; returns how many rows say true.
async fn on_listeners(admin_url: &str, database: &str, select: &str) -> i64 {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let sql = format!(
        "SELECT {select} FROM pg_stat_activity
         WHERE application_name = 'herald-listener' AND datname = $1"
    );
    // `select` is one of this file's literals.
    let rows: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(database)
        .fetch_all(&mut admin)
        .await
        .unwrap();
    rows.into_iter().filter(|done| *done).count() as i64
}

/// Terminates every herald LISTEN connection to `database`; returns how many.
async fn terminate_listeners(admin_url: &str, database: &str) -> i64 {
    on_listeners(admin_url, database, "pg_terminate_backend(pid)").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_listen_notify_deliver_through_the_broker() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let nodes = nodes(&db.url, 3, &[]).await;

    deliver_across_nodes(&nodes, async {}).await;

    delivered_by_the_broker(&nodes).await;
    for node in nodes {
        assert!(node.terminate().await.0.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_listen_notify_lose_nothing_when_listeners_are_killed() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let nodes = nodes(&db.url, 3, &[]).await;
    let admin = std::env::var("HERALD_TEST_DATABASE_URL").unwrap();
    let name = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();

    deliver_across_nodes(&nodes, async {
        assert_eq!(
            terminate_listeners(&admin, &name).await,
            3,
            "one listener per node"
        );
    })
    .await;

    // Each node LISTENs again (not only fills from the database), and
    // counted the loss once.
    let listening =
        crate::support::eventually(|| async { on_listeners(&admin, &name, "true").await == 3 })
            .await;
    assert!(listening, "every node LISTENs again");
    for node in &nodes {
        assert_eq!(
            metric(&node.http, "herald_broker_reconnects_total").await,
            1.0
        );
    }
    for node in nodes {
        let (exit, log) = node.terminate().await;
        assert!(exit.success());
        assert!(log.contains("LISTEN connection was lost"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_nats_lose_nothing_when_nats_goes_away() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    if !Nats::available() {
        return;
    }
    let mut nats = Nats::start(free_port(), &[]).await;
    let args = ["--broker", "nats", "--nats-url", &nats.url()].map(String::from);
    let nodes = nodes(&db.url, 3, &args).await;

    deliver_across_nodes(&nodes, async {
        nats.process.kill().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats = Nats::start(nats.port, &[]).await;
    })
    .await;

    for node in nodes {
        let (exit, log) = node.terminate().await;
        assert!(exit.success());
        assert!(log.contains("NATS reconnected"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_machines_nats_when_it_is_configured() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let Some(url) = crate::support::service_url("HERALD_TEST_NATS_URL", "NATS") else {
        return;
    };
    // A subject of this test's own: other deployments on the same NATS must not mix in.
    let subject = format!(
        "herald.test.{}",
        herald::ConversationId::generate().as_str()
    );
    let args = [
        "--broker",
        "nats",
        "--nats-url",
        &url,
        "--nats-subject",
        &subject,
    ]
    .map(String::from);
    let nodes = nodes(&db.url, 3, &args).await;

    deliver_across_nodes(&nodes, async {}).await;

    delivered_by_the_broker(&nodes).await;
    for node in nodes {
        assert!(node.terminate().await.0.success());
    }
}

/// A user's gRPC calls to one node.
struct On {
    client: herald::pb::messenger_client::MessengerClient<tonic::transport::Channel>,
    bearer: String,
}

impl On {
    async fn node(node: &Process, user: &str) -> Self {
        Self {
            client: node.client().await,
            bearer: format!("Bearer {}", token(user)),
        }
    }

    /// Creates a conversation of this user and `others`; its id.
    async fn create(&self, others: &[&str]) -> String {
        let body = pb::CreateConversationRequest {
            participant_ids: others.iter().map(|other| other.to_string()).collect(),
        };
        let request = authorized(body, &self.bearer);
        let created = self.client.clone().create_conversation(request).await;
        created.unwrap().into_inner().id
    }

    async fn send(&self, conversation: &str, content: &str) -> Result<pb::Message, tonic::Status> {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.into(),
            content: content.into(),
            ..Default::default()
        };
        let request = authorized(body, &self.bearer);
        Ok(self
            .client
            .clone()
            .create_message(request)
            .await?
            .into_inner())
    }

    async fn change(&self, conversation: &str, add: &str, remove: &str) {
        let mut client = self.client.clone();
        if !add.is_empty() {
            let body = pb::AddParticipantsRequest {
                conversation_id: conversation.into(),
                user_ids: vec![add.into()],
            };
            client
                .add_participants(authorized(body, &self.bearer))
                .await
                .unwrap();
        }
        if !remove.is_empty() {
            let body = pb::RemoveParticipantRequest {
                conversation_id: conversation.into(),
                user_id: remove.into(),
            };
            client
                .remove_participant(authorized(body, &self.bearer))
                .await
                .unwrap();
        }
    }

    async fn events(&self) -> tonic::Streaming<pb::Event> {
        let request = authorized(pb::SubscribeEventsRequest::default(), &self.bearer);
        self.client
            .clone()
            .subscribe_events(request)
            .await
            .unwrap()
            .into_inner()
    }
}

/// Membership changed on node A while subscribers listen on B (gRPC
/// events) and C (SSE messages) and a writer keeps sending on C: the
/// message right after each removal never reaches the removed user, the
/// one right after each add always reaches the new member, and a removed
/// user's send is refused on a node whose cache knew them as a member.
async fn membership_changes_apply_at_their_position_on_every_node(nodes: &[Process]) {
    const ROUNDS: usize = 5;
    const ERIN: usize = 60;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = On::node(a, "alice").await;
    let bob_on_b = On::node(b, "bob").await;
    let erin_on_c = On::node(c, "erin").await;
    let group = alice.create(&["bob", "erin"]).await;
    let mut truth = alice.events().await;
    let mut bob_events = bob_on_b.events().await;
    let dave_sse = reqwest::Client::new()
        .get(format!("http://{}/api/messages", c.http))
        .header("accept", "text/event-stream")
        .bearer_auth(token("dave"));
    let mut dave_messages = open_sse(dave_sse).await;
    // Node B now caches bob as a member of the group.
    bob_on_b.send(&group, "bob warms node B").await.unwrap();

    let writer = async {
        for n in 1..=ERIN {
            erin_on_c.send(&group, &format!("erin {n}")).await.unwrap();
        }
    };
    let rounds = async {
        let mut refused = 0;
        for round in 0..ROUNDS {
            alice.change(&group, "", "bob").await;
            alice.send(&group, &format!("gone {round}")).await.unwrap();
            let late = bob_on_b.send(&group, "after my removal").await;
            assert_eq!(late.unwrap_err().code(), tonic::Code::PermissionDenied);
            refused += 1;
            alice.change(&group, "bob", "").await;
            alice.change(&group, "dave", "").await;
            alice.send(&group, &format!("back {round}")).await.unwrap();
            alice.change(&group, "", "dave").await;
        }
        refused
    };
    let ((), refused) = tokio::join!(writer, rounds);
    assert_eq!(refused, ROUNDS);

    let total = 1 + ERIN + 6 * ROUNDS;
    let mut all = Vec::with_capacity(total);
    for _ in 0..total {
        all.push(next_event(&mut truth).await);
    }
    let mut member = std::collections::HashMap::from([("bob", true), ("dave", false)]);
    let mut expected_bob = Vec::new();
    let mut expected_dave = Vec::new();
    for event in &all {
        let change = match &event.kind {
            Some(pb::event::Kind::Membership(change)) => Some(change),
            _ => None,
        };
        for user in ["bob", "dave"] {
            let added = change.is_some_and(|c| c.added_ids.iter().any(|id| id == user));
            let removed = change.is_some_and(|c| c.removed_ids.iter().any(|id| id == user));
            if added {
                member.insert(user, true);
            }
            let sees = member[user];
            if removed {
                member.insert(user, false);
            }
            if sees {
                match user {
                    "bob" => expected_bob.push(event.id.clone()),
                    _ if change.is_none() => expected_dave.push(event.id.clone()),
                    _ => {}
                }
            }
        }
    }
    let mut bob_got = Vec::new();
    while bob_got.len() < expected_bob.len() {
        bob_got.push(next_event(&mut bob_events).await.id);
    }
    assert_eq!(bob_got, expected_bob, "bob's events on node B");
    let mut dave_got = Vec::new();
    while dave_got.len() < expected_dave.len() {
        dave_got.push(dave_messages.next_message().await.id);
    }
    assert_eq!(
        dave_got, expected_dave,
        "dave's messages over SSE on node C"
    );
    // Spelled out: each "gone" (one position after bob's removal, or
    // close behind) missed bob; each "back" (after dave's add) reached dave.
    let with = |prefix: &str| -> Vec<String> {
        all.iter()
            .filter(|event| match &event.kind {
                Some(pb::event::Kind::Message(m)) => m.content.starts_with(prefix),
                _ => false,
            })
            .map(|event| event.id.clone())
            .collect()
    };
    assert!(with("gone").iter().all(|id| !bob_got.contains(id)));
    assert!(with("back").iter().all(|id| dave_got.contains(id)));
    assert_eq!(with("back").len(), ROUNDS);
    // Nothing more is on its way to either: what each gets next is new.
    alice.change(&group, "dave", "").await;
    let marker = alice.send(&group, "marker").await.unwrap();
    let add = next_event(&mut bob_events).await;
    assert!(
        matches!(add.kind, Some(pb::event::Kind::Membership(_))),
        "{add:?}"
    );
    assert_eq!(next_event(&mut bob_events).await.id, marker.id);
    assert_eq!(dave_messages.next_message().await.id, marker.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_across_three_nodes_over_listen_notify() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let nodes = nodes(&db.url, 3, &["--broker".into(), "postgres".into()]).await;
    membership_changes_apply_at_their_position_on_every_node(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_across_three_nodes_over_nats() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    if !Nats::available() {
        return;
    }
    let nats = Nats::start(free_port(), &[]).await;
    let args = ["--broker", "nats", "--nats-url", &nats.url()].map(String::from);
    let nodes = nodes(&db.url, 3, &args).await;
    membership_changes_apply_at_their_position_on_every_node(&nodes).await;
}

/// alice edits, deletes and reacts on node A; bob's event stream on B and
/// carol's on C carry each change once, in the order of the positions, and
/// what history shows on B afterwards is the state they leave.
async fn message_changes_cross_nodes_in_order(nodes: &[Process]) {
    use pb::event::Kind;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = On::node(a, "alice").await;
    let group = alice.create(&["bob", "carol"]).await;
    let mut streams = vec![
        On::node(b, "bob").await.events().await,
        On::node(c, "carol").await.events().await,
    ];
    let first = alice.send(&group, "first").await.unwrap();
    let mut client = alice.client.clone();
    let answer = pb::CreateMessageRequest {
        conversation_id: group.clone(),
        content: "second".into(),
        reply_to_id: first.id.clone(),
        ..Default::default()
    };
    let second = client
        .create_message(authorized(answer, &alice.bearer))
        .await
        .unwrap()
        .into_inner();
    let (chat, bearer) = (group.clone(), alice.bearer.clone());
    let edit = pb::EditMessageRequest {
        conversation_id: chat.clone(),
        message_id: first.id.clone(),
        content: "first, edited".into(),
    };
    client
        .edit_message(authorized(edit, &bearer))
        .await
        .unwrap();
    for emoji in ["👍", "🎉"] {
        let react = pb::ReactRequest {
            conversation_id: chat.clone(),
            message_id: second.id.clone(),
            emoji: emoji.into(),
        };
        client.react(authorized(react, &bearer)).await.unwrap();
    }
    let delete = pb::DeleteMessageRequest {
        conversation_id: chat.clone(),
        message_id: first.id.clone(),
    };
    client
        .delete_message(authorized(delete, &bearer))
        .await
        .unwrap();
    let what = |event: pb::Event| match event.kind {
        Some(Kind::Message(m)) if m.reply_to_id.is_empty() => format!("message {}", m.content),
        Some(Kind::Message(m)) => format!("message {} replying to {}", m.content, m.reply_to_id),
        Some(Kind::Edited(m)) if m.edited_at.is_none() || m.created_at != first.created_at => {
            format!("edit {m:?} without its times")
        }
        Some(Kind::Edited(m)) => format!("edit {} {}", m.id, m.content),
        Some(Kind::Reaction(r)) => format!("reaction {} {}", r.message_id, r.emoji),
        Some(Kind::Deleted(m)) => format!("delete {} {}", m.id, m.deleted),
        other => format!("{other:?}"),
    };
    let expected = [
        "message first".to_string(),
        format!("message second replying to {}", first.id),
        format!("edit {} first, edited", first.id),
        format!("reaction {} 👍", second.id),
        format!("reaction {} 🎉", second.id),
        format!("delete {} true", first.id),
    ];
    for stream in &mut streams {
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            seen.push(what(next_event(stream).await));
        }
        assert_eq!(seen, expected);
    }
    let bob = On::node(b, "bob").await;
    let list = authorized(crate::support::page(&group), &bob.bearer);
    let history = bob.client.clone().list_messages(list).await.unwrap();
    let history = history.into_inner().messages;
    assert_eq!(history.len(), 2);
    assert!(history[0].deleted && history[0].content.is_empty());
    let emoji: Vec<&str> = history[1]
        .reactions
        .iter()
        .map(|r| r.emoji.as_str())
        .collect();
    assert_eq!(emoji, ["👍", "🎉"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_changes_across_three_nodes_over_listen_notify() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let nodes = nodes(&db.url, 3, &["--broker".into(), "postgres".into()]).await;
    message_changes_cross_nodes_in_order(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_changes_across_three_nodes_over_nats() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    if !Nats::available() {
        return;
    }
    let nats = Nats::start(free_port(), &[]).await;
    let args = ["--broker", "nats", "--nats-url", &nats.url()].map(String::from);
    let nodes = nodes(&db.url, 3, &args).await;
    message_changes_cross_nodes_in_order(&nodes).await;
}

/// alice types on node A: bob's event stream on B and carol's on C get one
/// signal each through the broker, dave's on A gets one (not a second
/// through the broker's echo), alice's own gets none.
async fn typing_crosses_nodes_once(nodes: &[Process]) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = On::node(a, "alice").await;
    let group = alice.create(&["bob", "carol", "dave"]).await;
    let mut streams = vec![
        On::node(b, "bob").await.events().await,
        On::node(c, "carol").await.events().await,
        On::node(a, "dave").await.events().await,
    ];
    let mut own = alice.events().await;
    let typing = pb::SetTypingRequest {
        conversation_id: group.clone(),
    };
    alice
        .client
        .clone()
        .set_typing(authorized(typing, &alice.bearer))
        .await
        .unwrap();
    // Signals are not ordered with messages: wait for each one before the
    // marker, so "exactly one" is what the marker proves.
    for stream in &mut streams {
        let signal = next_event(stream).await;
        assert!(
            matches!(&signal.kind, Some(pb::event::Kind::Typing(t)) if t.user_id == "alice"),
            "{signal:?}"
        );
    }
    let marker = alice.send(&group, "marker").await.unwrap();
    for stream in &mut streams {
        assert_eq!(next_event(stream).await.id, marker.id, "one signal only");
    }
    assert_eq!(
        next_event(&mut own).await.id,
        marker.id,
        "not to the sender"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_across_three_nodes_over_listen_notify() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let nodes = nodes(&db.url, 3, &["--broker".into(), "postgres".into()]).await;
    typing_crosses_nodes_once(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_across_three_nodes_over_nats() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    if !Nats::available() {
        return;
    }
    let nats = Nats::start(free_port(), &[]).await;
    let args = ["--broker", "nats", "--nats-url", &nats.url()].map(String::from);
    let nodes = nodes(&db.url, 3, &args).await;
    typing_crosses_nodes_once(&nodes).await;
}

/// Presence crosses nodes: bob online on B and then offline after the
/// grace, as alice on A sees it; carol's node C is killed with SIGKILL and
/// alice sees carol go offline once C's claims lapse (2.5 intervals of 1 s
/// here; 25 s with the default interval, within the 30 s asked).
async fn presence_crosses_nodes_and_a_dead_node_takes_its_users_offline(mut nodes: Vec<Process>) {
    use crate::support::next_event_or_presence;
    let alice = On::node(&nodes[0], "alice").await;
    alice.create(&["bob"]).await;
    alice.create(&["carol"]).await;
    // Each takes part in their pair (asking for it): presence is shared
    // only through conversations a user took part in.
    On::node(&nodes[1], "bob").await.create(&["alice"]).await;
    On::node(&nodes[2], "carol").await.create(&["alice"]).await;
    let mut alices = alice.events().await;

    let bobs = On::node(&nodes[1], "bob").await.events().await;
    assert_eq!(
        presence(next_event_or_presence(&mut alices).await),
        ("bob".into(), true)
    );
    drop(bobs);
    assert_eq!(
        presence(next_event_or_presence(&mut alices).await),
        ("bob".into(), false)
    );

    let _carols = On::node(&nodes[2], "carol").await.events().await;
    assert_eq!(
        presence(next_event_or_presence(&mut alices).await),
        ("carol".into(), true)
    );
    let killed = std::time::Instant::now();
    nodes[2].child.kill().await.unwrap();
    assert_eq!(
        presence(next_event_or_presence(&mut alices).await),
        ("carol".into(), false)
    );
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(1_500) && after < Duration::from_secs(30),
        "carol went offline {after:?} after her node died"
    );
}

const PRESENCE_TIMING: [&str; 4] = ["--presence-grace", "300ms", "--presence-interval", "1s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_three_nodes_over_listen_notify() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let mut args: Vec<String> = ["--broker", "postgres"].map(String::from).to_vec();
    args.extend(PRESENCE_TIMING.map(String::from));
    let nodes = nodes(&db.url, 3, &args).await;
    presence_crosses_nodes_and_a_dead_node_takes_its_users_offline(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_three_nodes_over_nats() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    if !Nats::available() {
        return;
    }
    let nats = Nats::start(free_port(), &[]).await;
    let mut args: Vec<String> = ["--broker", "nats", "--nats-url", &nats.url()]
        .map(String::from)
        .to_vec();
    args.extend(PRESENCE_TIMING.map(String::from));
    let nodes = nodes(&db.url, 3, &args).await;
    presence_crosses_nodes_and_a_dead_node_takes_its_users_offline(nodes).await;
}

/// Who went online or offline, from a presence event.
fn presence(event: pb::Event) -> (String, bool) {
    match event.kind {
        Some(pb::event::Kind::Presence(p)) => (p.user_id, p.online),
        other => panic!("expected presence, got {other:?}"),
    }
}

/// One node on PostgreSQL's broker announcing every `interval`, with a
/// short grace.
async fn presence_node(db: &crate::support::TestDb, interval: &str) -> Process {
    let args = ["--broker", "postgres", "--presence-grace", "300ms"]
        .into_iter()
        .chain(["--presence-interval", interval])
        .map(String::from)
        .collect::<Vec<_>>();
    nodes(&db.url, 1, &args).await.remove(0)
}

/// Alice on `observer` sharing a pair with carol on `node`, once alice has
/// seen carol come online: alice's events, and carol's open stream.
async fn alice_sees_carol_online(
    observer: &Process,
    node: &Process,
) -> (tonic::Streaming<pb::Event>, tonic::Streaming<pb::Event>) {
    use crate::support::next_event_or_presence;
    let alice = On::node(observer, "alice").await;
    alice.create(&["carol"]).await;
    let carol = On::node(node, "carol").await;
    carol.create(&["alice"]).await;
    let mut alices = alice.events().await;
    let carols = carol.events().await;
    assert_eq!(
        presence(next_event_or_presence(&mut alices).await),
        ("carol".into(), true)
    );
    (alices, carols)
}

/// A node's claims last by its own pace: a node that announces every
/// second and dies is taken offline within seconds by a node that itself
/// announces every twenty (by the observer's pace, it took 50 s and more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_go_offline_by_its_own_pace_not_the_observers() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let observer = presence_node(&db, "20s").await;
    let mut dying = presence_node(&db, "1s").await;
    let (mut alices, _carols) = alice_sees_carol_online(&observer, &dying).await;
    dying.child.kill().await.unwrap();
    // Within PATIENCE (20 s): 2.5 of the dead node's seconds, and a tick.
    assert_eq!(
        presence(crate::support::next_event_or_presence(&mut alices).await),
        ("carol".into(), false)
    );
}

/// A node that stops on SIGTERM says goodbye: its users go offline on the
/// other nodes after the grace, not when its claims would lapse (2.5 of
/// its 60 s, far past PATIENCE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_takes_its_users_offline_at_once() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let observer = presence_node(&db, "60s").await;
    let leaving = presence_node(&db, "60s").await;
    let (mut alices, carols) = alice_sees_carol_online(&observer, &leaving).await;
    let (exit, _) = leaving.terminate().await;
    assert!(exit.success(), "{exit:?}");
    drop(carols);
    assert_eq!(
        presence(crate::support::next_event_or_presence(&mut alices).await),
        ("carol".into(), false)
    );
}

/// A token for `user` issued a minute ago: what a revocation made now refuses.
fn older_token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "sub": user, "exp": now + 600, "iat": now - 60 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// How one of bob's streams ended, and how long after `since`.
struct Ended {
    what: String,
    after: Duration,
}

/// Opens bob's SSE event stream and gRPC message stream on `node` with
/// `token`, and returns a task for each that reports how it ended.
async fn watch_streams(
    node: &Process,
    token: &str,
    since: std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>,
) -> Vec<tokio::task::JoinHandle<Ended>> {
    let request = reqwest::Client::new()
        .get(format!("http://{}/api/events", node.http))
        .header("accept", "text/event-stream")
        .bearer_auth(token);
    let mut sse = open_sse(request).await;
    let mut grpc = node
        .client()
        .await
        .subscribe_messages(authorized(
            pb::SubscribeMessagesRequest::default(),
            &format!("Bearer {token}"),
        ))
        .await
        .unwrap()
        .into_inner();
    let elapsed = |since: &std::sync::OnceLock<tokio::time::Instant>| {
        since.get().expect("the action was taken").elapsed()
    };
    let sse_since = since.clone();
    let sse_task = tokio::spawn(async move {
        loop {
            match sse.next_event().await {
                Some(event) if event.event == "disconnect" => {
                    return Ended {
                        what: format!("sse {}", event.data),
                        after: elapsed(&sse_since),
                    };
                }
                Some(_) => continue,
                None => {
                    return Ended {
                        what: "sse ended without a disconnect event".into(),
                        after: elapsed(&sse_since),
                    };
                }
            }
        }
    });
    let grpc_task = tokio::spawn(async move {
        let status = loop {
            match grpc.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break tonic::Status::ok("ended"),
                Err(status) => break status,
            }
        };
        Ended {
            what: format!("grpc {:?}", status.code()),
            after: elapsed(&since),
        }
    });
    vec![sse_task, grpc_task]
}

/// Waits for bob's streams on every node to end; returns what they said
/// and the slowest.
async fn ends(tasks: Vec<tokio::task::JoinHandle<Ended>>) -> (Vec<String>, Duration) {
    let mut said = Vec::new();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let ended = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the stream ends")
            .unwrap();
        said.push(ended.what);
        slowest = slowest.max(ended.after);
    }
    (said, slowest)
}

/// A call of `token`'s user on `node`.
async fn call_on(node: &Process, token: String) -> Result<(), tonic::Status> {
    let body = pb::ListConversationsRequest::default();
    node.client()
        .await
        .list_conversations(authorized(body, &format!("Bearer {token}")))
        .await
        .map(drop)
}

/// A ban, a disconnection and a revocation made on node A end bob's SSE
/// and gRPC streams on B and C within 2 s, and his next call on C is
/// refused; a node started after the ban refuses him too.
async fn moderation_reaches_every_node(database: &str, args: &[String]) {
    let key = crate::support::service_key(database, "mods", "moderate,publish").await;
    let nodes = nodes(database, 3, args).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let bob = token("bob");
    let mut admin = a.admin().await;
    let bearer = format!("Bearer {key}");
    let mut figures = Vec::new();

    // A system message published on A reaches bob on B as one.
    let chat = a
        .client()
        .await
        .create_conversation(authorized(
            pb::CreateConversationRequest {
                participant_ids: vec!["bob".into()],
            },
            &format!("Bearer {}", token("alice")),
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let request = reqwest::Client::new()
        .get(format!("http://{}/api/messages", b.http))
        .header("accept", "text/event-stream")
        .bearer_auth(&bob);
    let mut on_b = open_sse(request).await;
    let notice = pb::PublishRequest {
        conversation_id: chat,
        content: "maintenance tonight".into(),
        ..Default::default()
    };
    let published = admin
        .publish(authorized(notice, &bearer))
        .await
        .unwrap()
        .into_inner();
    let heard = on_b.next_message().await;
    assert_eq!((heard.id, heard.system), (published.id, true));
    drop(on_b);

    // A ban.
    let since = std::sync::Arc::new(std::sync::OnceLock::new());
    let mut watching = watch_streams(b, &bob, since.clone()).await;
    watching.extend(watch_streams(c, &bob, since.clone()).await);
    since.set(tokio::time::Instant::now()).unwrap();
    let ban = pb::BanUserRequest {
        user_id: "bob".into(),
        until: None,
        reason: "spam".into(),
    };
    admin.ban_user(authorized(ban, &bearer)).await.unwrap();
    let (said, slowest) = ends(watching).await;
    assert_eq!(
        said,
        [
            r#"sse {"reason":"banned: spam"}"#,
            "grpc PermissionDenied",
            r#"sse {"reason":"banned: spam"}"#,
            "grpc PermissionDenied"
        ]
    );
    assert!(slowest < Duration::from_secs(2), "the ban took {slowest:?}");
    figures.push(("ban", slowest));
    let refused = call_on(c, bob.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // The log is read in order by a node that starts later: an entry
    // after the ban does not hide it.
    let alice_out = pb::DisconnectUserRequest {
        user_id: "alice".into(),
        reason: String::new(),
    };
    admin
        .disconnect_user(authorized(alice_out, &bearer))
        .await
        .unwrap();
    let late = Process::serve_on(database, |command| {
        command.args(["--jwt-secret", SECRET]).args(args);
    })
    .await;
    let refused = call_on(&late, bob.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    late.terminate().await;

    // Lifted on every node, then a disconnection.
    admin
        .unban_user(authorized(
            pb::UnbanUserRequest {
                user_id: "bob".into(),
            },
            &bearer,
        ))
        .await
        .unwrap();
    for node in [b, c] {
        assert!(crate::support::eventually(|| call_on(node, bob.clone()).map(|r| r.is_ok())).await);
    }
    let since = std::sync::Arc::new(std::sync::OnceLock::new());
    let mut watching = watch_streams(b, &bob, since.clone()).await;
    watching.extend(watch_streams(c, &bob, since.clone()).await);
    since.set(tokio::time::Instant::now()).unwrap();
    let disconnect = pb::DisconnectUserRequest {
        user_id: "bob".into(),
        reason: String::new(),
    };
    admin
        .disconnect_user(authorized(disconnect, &bearer))
        .await
        .unwrap();
    let (said, slowest) = ends(watching).await;
    let expected = [r#"sse {"reason":"disconnected"}"#, "grpc Unavailable"];
    assert_eq!(said, [expected, expected].concat());
    assert!(
        slowest < Duration::from_secs(2),
        "the disconnection took {slowest:?}"
    );
    figures.push(("disconnect", slowest));
    call_on(c, bob.clone())
        .await
        .expect("a disconnection bans nobody");

    // A revocation: the older token's streams end, and it is refused.
    let older = older_token("bob");
    let since = std::sync::Arc::new(std::sync::OnceLock::new());
    let mut watching = watch_streams(b, &older, since.clone()).await;
    watching.extend(watch_streams(c, &older, since.clone()).await);
    since.set(tokio::time::Instant::now()).unwrap();
    let revoke = pb::RevokeTokensRequest {
        user_id: "bob".into(),
        issued_before: None,
    };
    admin
        .revoke_tokens(authorized(revoke, &bearer))
        .await
        .unwrap();
    let (said, slowest) = ends(watching).await;
    let expected = [r#"sse {"reason":"token revoked"}"#, "grpc Unauthenticated"];
    assert_eq!(said, [expected, expected].concat());
    assert!(
        slowest < Duration::from_secs(2),
        "the revocation took {slowest:?}"
    );
    figures.push(("revoke", slowest));
    let refused = call_on(c, older).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    eprintln!("moderation reached every node within: {figures:?}");
    for node in nodes {
        node.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_across_three_nodes_over_listen_notify() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    moderation_reaches_every_node(&db.url, &["--broker".into(), "postgres".into()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_across_three_nodes_over_nats() {
    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    if !Nats::available() {
        return;
    }
    let nats = Nats::start(free_port(), &[]).await;
    let args = ["--broker", "nats", "--nats-url", &nats.url()].map(String::from);
    moderation_reaches_every_node(&db.url, &args).await;
}
