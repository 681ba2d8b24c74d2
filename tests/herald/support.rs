//! Test helpers: a real herald on port 0 over a real database, and users
//! with real tonic clients.

use herald::{
    Auth, Herald, ServeConfig, Server,
    pb::{self, messenger_client::MessengerClient},
};
use sqlx::Connection;
use std::{net::SocketAddr, time::Duration};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, Status, Streaming, transport::Channel};

/// The HS256 secret every test server uses.
pub const SECRET: &[u8] = b"test-secret-that-is-long-enough-for-hs256";

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of the test's own: a SQLite file in a temporary folder, or a
/// fresh PostgreSQL database when `HERALD_TEST_DATABASE_URL` is set.
pub struct TestDb {
    pub url: String,
    pub _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// `None` (and a note on stderr) when the backend is not configured.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                Some(Self {
                    url,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let base = service_url("HERALD_TEST_DATABASE_URL", "PostgreSQL")?;
                let name = format!("herald_t_{}", herald::ConversationId::generate().as_str());
                let mut admin = sqlx::PgConnection::connect(&base)
                    .await
                    .expect("PostgreSQL is reachable");
                let create = format!("CREATE DATABASE \"{name}\"");
                sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&mut admin)
                    .await
                    .expect("a test database");
                Some(Self {
                    url: with_database(&base, &name),
                    _dir: None,
                })
            }
        }
    }
}

/// The URL of a service a test needs, from `variable`; `None` (and a note
/// that the test did not run) without it. Under CI (`CI` set, as `.ci/run`
/// runs) a missing service fails the test instead: CI must never pass
/// on tests that quietly did nothing.
pub fn service_url(variable: &str, what: &str) -> Option<String> {
    let url = std::env::var(variable).ok().filter(|url| !url.is_empty());
    if url.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{variable} is not set under CI, so this {what} test cannot run"
        );
        eprintln!("skipped: {variable} is not set, so this {what} test did not run");
    }
    url
}

/// `base` with its database name replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let (authority, query) = match rest.split_once('?') {
        Some((before, query)) => (before, format!("?{query}")),
        None => (rest, String::new()),
    };
    let host = authority.split('/').next().unwrap_or(authority);
    format!("{scheme}://{host}/{name}{query}")
}

/// A herald running in this process.
pub struct TestApp {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The `/metrics` listener, when the test gave it one.
    pub metrics: Option<SocketAddr>,
    pub herald: Herald,
    connections: herald::Connections,
    auth: Auth,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), herald::StartError>>,
}

/// Starts herald on `db` with default settings.
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// Starts herald on `db` after `tweak` adjusts its configuration.
pub async fn spawn_app_with(db: &TestDb, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let mut config = ServeConfig::new("127.0.0.1:0", "127.0.0.1:0", &db.url);
    config.drain_timeout = Duration::from_secs(3);
    tweak(&mut config);
    let auth = Auth::hs256(SECRET);
    let server = Server::bind(&config, auth.clone())
        .await
        .expect("herald starts");
    let (http, grpc) = (server.http_addr(), server.grpc_addr());
    let metrics = server.metrics_addr();
    let herald = server.herald().clone();
    let connections = server.connections();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestApp {
        http,
        grpc,
        metrics,
        herald,
        connections,
        auth,
        stop: Some(stop),
        task,
    }
}

impl TestApp {
    /// The server's open connections, as its connection cap sees them.
    pub fn connections(&self) -> &herald::Connections {
        &self.connections
    }

    /// A signed token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.token_for(user, Duration::from_secs(3600))
    }

    pub fn token_for(&self, user: &str, ttl: Duration) -> String {
        let user = herald::UserId::parse("user", user).expect("a valid user id");
        self.auth.mint(&user, ttl)
    }

    /// A user with a gRPC client of their own.
    pub async fn user(&self, id: &str) -> User {
        User::with_token(self, self.token(id)).await
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("the gRPC port accepts")
    }

    /// Shuts the server down as SIGTERM would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let finished = tokio::time::timeout(PATIENCE, &mut self.task).await;
        finished
            .expect("herald stops within the drain time")
            .expect("no panic")
            .expect("a clean stop");
    }
}

/// A user talking to herald over gRPC.
pub struct User {
    token: String,
    client: MessengerClient<Channel>,
}

impl User {
    pub async fn with_token(app: &TestApp, token: String) -> Self {
        let client = MessengerClient::new(app.channel().await);
        Self { token, client }
    }

    /// This user's gRPC client.
    pub fn client(&self) -> MessengerClient<Channel> {
        self.client.clone()
    }

    /// `body` with this user's bearer token.
    pub fn request<T>(&self, body: T) -> Request<T> {
        authorized(body, &format!("Bearer {}", self.token))
    }

    /// `others` as `&str`s or `String`s (generated crowds need no second
    /// vector of borrows).
    pub async fn create_conversation(
        &self,
        others: &[impl AsRef<str>],
    ) -> Result<pb::Conversation, Status> {
        let participant_ids = others.iter().map(|o| o.as_ref().to_owned()).collect();
        let body = pb::CreateConversationRequest { participant_ids };
        Ok(self
            .client
            .clone()
            .create_conversation(self.request(body))
            .await?
            .into_inner())
    }

    pub async fn send(&self, conversation_id: &str, content: &str) -> Result<pb::Message, Status> {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation_id.into(),
            content: content.into(),
            ..Default::default()
        };
        Ok(self
            .client
            .clone()
            .create_message(self.request(body))
            .await?
            .into_inner())
    }

    pub async fn conversations(&self) -> Result<Vec<pb::Conversation>, Status> {
        let body = pb::ListConversationsRequest::default();
        Ok(self
            .client
            .clone()
            .list_conversations(self.request(body))
            .await?
            .into_inner()
            .conversations)
    }

    pub async fn messages(
        &self,
        body: pb::ListMessagesRequest,
    ) -> Result<Vec<pb::Message>, Status> {
        Ok(self
            .client
            .clone()
            .list_messages(self.request(body))
            .await?
            .into_inner()
            .messages)
    }

    pub async fn mark_read(
        &self,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<pb::Conversation, Status> {
        let body = pb::MarkReadRequest {
            conversation_id: conversation_id.into(),
            message_id: message_id.into(),
        };
        Ok(self
            .client
            .clone()
            .mark_read(self.request(body))
            .await?
            .into_inner())
    }

    /// Sends `count` messages of about 12 KiB each, more than transport
    /// buffers hold for a reader that stopped; returns their ids.
    pub async fn send_bulky(&self, conversation_id: &str, count: usize) -> Vec<String> {
        let filler = "x".repeat(12 * 1024);
        let mut sent = Vec::with_capacity(count);
        for n in 1..=count {
            sent.push(
                self.send(conversation_id, &format!("{n} {filler}"))
                    .await
                    .unwrap()
                    .id,
            );
        }
        sent
    }

    /// Opens a subscription; it is live once this returns.
    pub async fn subscribe(&self, after_id: &str) -> Result<Streaming<pb::Message>, Status> {
        let body = pb::SubscribeMessagesRequest {
            after_id: after_id.into(),
        };
        Ok(self
            .client
            .clone()
            .subscribe_messages(self.request(body))
            .await?
            .into_inner())
    }
}

impl User {
    /// Adds `users` to group `conversation_id`.
    pub async fn add(
        &self,
        conversation_id: &str,
        users: &[impl AsRef<str>],
    ) -> Result<pb::Conversation, Status> {
        let body = pb::AddParticipantsRequest {
            conversation_id: conversation_id.into(),
            user_ids: users.iter().map(|user| user.as_ref().to_owned()).collect(),
        };
        Ok(self
            .client
            .clone()
            .add_participants(self.request(body))
            .await?
            .into_inner())
    }

    /// Removes `user` from group `conversation_id`.
    pub async fn remove(
        &self,
        conversation_id: &str,
        user: &str,
    ) -> Result<pb::Conversation, Status> {
        let body = pb::RemoveParticipantRequest {
            conversation_id: conversation_id.into(),
            user_id: user.into(),
        };
        Ok(self
            .client
            .clone()
            .remove_participant(self.request(body))
            .await?
            .into_inner())
    }

    /// Opens this user's event stream; it is live once this returns.
    pub async fn events(&self, after_id: &str) -> Result<Streaming<pb::Event>, Status> {
        let body = pb::SubscribeEventsRequest {
            after_id: after_id.into(),
        };
        Ok(self
            .client
            .clone()
            .subscribe_events(self.request(body))
            .await?
            .into_inner())
    }

    /// Every message of `conversation_id` this user may list, oldest
    /// first, read a page at a time from the newest.
    pub async fn history(&self, conversation_id: &str) -> Result<Vec<pb::Message>, Status> {
        let mut pages: Vec<Vec<pb::Message>> = Vec::new();
        loop {
            let mut request = page(conversation_id);
            request.page_size = 500;
            if let Some(oldest) = pages.last().and_then(|page| page.first()) {
                request.before_id = oldest.id.clone();
            }
            let page = self.messages(request).await?;
            if page.is_empty() {
                break;
            }
            pages.push(page);
        }
        Ok(pages.into_iter().rev().flatten().collect())
    }
}

/// The next event on `stream` other than presence (which comes whenever
/// users open and close streams, and is tested on its own); fails the test
/// if none comes in time.
pub async fn next_event(stream: &mut Streaming<pb::Event>) -> pb::Event {
    loop {
        let event = next_event_or_presence(stream).await;
        if !matches!(event.kind, Some(pb::event::Kind::Presence(_))) {
            return event;
        }
    }
}

/// The next event on `stream`, presence included.
pub async fn next_event_or_presence(stream: &mut Streaming<pb::Event>) -> pb::Event {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => panic!("no event within {PATIENCE:?}"),
    }
}

/// `body` with `authorization` set to `value`.
pub fn authorized<T>(body: T, value: &str) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        value.parse().expect("a valid header value"),
    );
    request
}

/// The next message on `stream`; fails the test if none comes in time.
pub async fn next_message(stream: &mut Streaming<pb::Message>) -> pb::Message {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

/// The next `count` message contents on `stream`.
pub async fn next_contents(stream: &mut Streaming<pb::Message>, count: usize) -> Vec<String> {
    let mut contents = Vec::with_capacity(count);
    for _ in 0..count {
        contents.push(next_message(stream).await.content);
    }
    contents
}

/// How `stream` ends, skipping any messages still on it.
pub async fn end_of(stream: &mut Streaming<pb::Message>, within: Duration) -> Status {
    let ending = async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Status::ok("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    };
    tokio::time::timeout(within, ending)
        .await
        .expect("the stream ends in time")
}

/// The status code of a call that must fail.
pub fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> tonic::Code {
    result.expect_err("the call must fail").code()
}

/// A list-messages request for one conversation.
pub fn page(conversation_id: &str) -> pb::ListMessagesRequest {
    pb::ListMessagesRequest {
        conversation_id: conversation_id.into(),
        ..Default::default()
    }
}

/// The contents of `messages`, in order.
pub fn contents(messages: &[pb::Message]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

/// `prefix-from` .. `prefix-to` (inclusive), the contents tests send.
pub fn numbered(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix}-{n}")).collect()
}

// ---- HTTP -----------------------------------------------------------------

impl TestApp {
    /// The full URL of `path` on the HTTP port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// A request for the SSE stream with `token` in the Authorization header.
    pub fn sse_request(&self, token: &str) -> reqwest::RequestBuilder {
        self.stream_request("/api/messages", token)
    }

    /// A request for the SSE event stream (`/api/events`), likewise.
    pub fn events_request(&self, token: &str) -> reqwest::RequestBuilder {
        self.stream_request("/api/events", token)
    }

    fn stream_request(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .get(self.url(path))
            .header("accept", "text/event-stream")
            .bearer_auth(token)
    }
}

/// The events of an open SSE response, parsed by eventsource-stream.
pub struct SseStream {
    events: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<eventsource_stream::Event, String>> + Send>,
    >,
}

/// Sends `request` and expects an event stream.
pub async fn open_sse(request: reqwest::RequestBuilder) -> SseStream {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let response = request.send().await.expect("the HTTP port answers");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let events = response
        .bytes_stream()
        .eventsource()
        .map(|event| event.map_err(|error| error.to_string()));
    SseStream {
        events: Box::pin(events),
    }
}

impl SseStream {
    /// The next dispatched event (one with data), or `None` when the stream ends.
    pub async fn next_event(&mut self) -> Option<eventsource_stream::Event> {
        use futures_util::StreamExt;
        let next = async {
            loop {
                match self.events.next().await? {
                    Ok(event) if event.data.is_empty() => continue,
                    Ok(event) => return Some(event),
                    Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(PATIENCE, next)
            .await
            .expect("an event or the end, in time")
    }

    /// The next message event, parsed from its JSON.
    pub async fn next_message(&mut self) -> pb::Message {
        let event = self.next_event().await.expect("the stream goes on");
        assert_eq!(event.event, "message", "a message event has no event: line");
        let message: pb::Message = serde_json::from_str(&event.data).expect("a message as JSON");
        assert_eq!(event.id, message.id, "the event id is the message id");
        message
    }

    /// The next `count` message contents.
    pub async fn next_contents(&mut self, count: usize) -> Vec<String> {
        let mut contents = Vec::with_capacity(count);
        for _ in 0..count {
            contents.push(self.next_message().await.content);
        }
        contents
    }
}

// ---- the real binary --------------------------------------------------------

/// `herald` as built by cargo, with a clean environment for its settings.
pub fn herald_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    // A clean environment: a developer's own HERALD_* settings must not
    // leak into the suite.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// A `herald serve` process on port 0, with its whole stderr kept.
pub struct Process {
    pub child: tokio::process::Child,
    pub http: String,
    pub grpc: String,
    pub stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_task: JoinHandle<()>,
}

impl Process {
    /// Starts `herald serve` on a SQLite file in `dir`, after `configure`
    /// adds arguments or environment, and waits until it serves.
    pub async fn serve(
        dir: &std::path::Path,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        Self::serve_on(&format!("sqlite://{}/herald.db", dir.display()), configure).await
    }

    /// Starts `herald serve` on `database` (any URL).
    pub async fn serve_on(
        database: &str,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut command = herald_command();
        command
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--database-url",
                database,
            ])
            .args(["--drain-timeout", "3s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("herald runs");
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready, serving) = oneshot::channel();
        let kept = stderr.clone();
        let stderr_task = tokio::spawn(async move {
            let mut ready = Some(ready);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("herald is serving")
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(line.clone());
                }
                kept.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let line = tokio::time::timeout(PATIENCE, serving)
            .await
            .expect("herald starts in time")
            .expect("herald starts");
        // `name=value` in text logs, `"name":"value"` in JSON logs.
        let field = |name: &str| match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(event) => event["fields"][name].as_str().unwrap().to_owned(),
            Err(_) => line
                .split(&format!("{name}="))
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        };
        Self {
            child,
            http: field("http"),
            grpc: field("grpc"),
            stdout,
            stderr,
            stderr_task,
        }
    }

    /// Waits until stderr holds `needle`; returns stderr so far.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let seen = async {
            loop {
                let log = self.stderr.lock().unwrap().clone();
                if log.contains(needle) {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(PATIENCE, seen)
            .await
            .unwrap_or_else(|_| panic!("the log says {needle:?} in time"))
    }

    /// Sends SIGTERM and waits for the exit; returns it and the whole stderr.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("still running").to_string();
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(kill.success());
        let exit = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("herald exits in time")
            .unwrap();
        let _ = tokio::time::timeout(PATIENCE, self.stderr_task).await;
        let stderr = self.stderr.lock().unwrap().clone();
        (exit, stderr)
    }
}

/// Whether an external tool a test needs is here. When it is not, the test
/// says it skipped, unless `HERALD_REQUIRE_TOOLS` is set (scripts/test.sh
/// sets it after installing them), which makes that a failure.
pub fn tools_ready(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var_os("HERALD_REQUIRE_TOOLS").is_none(),
            "{what} missing; scripts/test.sh installs them"
        );
        eprintln!("skipped: {what} missing (scripts/test.sh installs them)");
    }
    present
}

impl Process {
    /// A gRPC client of this process.
    pub async fn client(&self) -> MessengerClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("the gRPC port accepts");
        MessengerClient::new(channel)
    }
}

/// A token for `user` signed with `secret`, valid for ten minutes.
pub fn mint(secret: &str, user: &str) -> String {
    let user = herald::UserId::parse("user", user).expect("a valid user id");
    Auth::hs256(secret.as_bytes()).mint(&user, Duration::from_secs(600))
}

impl TestApp {
    /// Waits until the hub holds exactly `count` subscriptions.
    pub async fn wait_for_subscriptions(&self, count: usize) {
        let hub = self.herald.hub().clone();
        let reached = async move {
            while hub.subscription_count() != count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(PATIENCE, reached)
            .await
            .expect("the hub reaches the expected number of subscriptions");
    }
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether `check` comes true within [`PATIENCE`], asking every 50 ms.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Sends `method path` to `app`'s HTTP port as `token`, with an optional
/// JSON body; returns the status and the JSON answer (null if none).
pub async fn call(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    call_at(&app.http.to_string(), token, method, path, body).await
}

/// [`call`] to the HTTP address `http` (a [`Process`]'s, say).
pub async fn call_at(
    http: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{http}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the HTTP port answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// A loopback port nothing listens on (at the moment it is asked for).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A NATS server of the test's own, so the test can take it away; `None`
/// (and a note, or a failure under `HERALD_REQUIRE_TOOLS`) without
/// nats-server.
pub struct Nats {
    pub port: u16,
    pub process: tokio::process::Child,
}

impl Nats {
    /// Whether nats-server is here to start (see [`tools_ready`]).
    pub fn available() -> bool {
        let present = std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok();
        tools_ready("nats-server", present)
    }

    /// Starts nats-server on `port` with `args` and waits until it listens.
    pub async fn start(port: u16, args: &[&str]) -> Self {
        let process = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server runs");
        let ready = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, ready)
            .await
            .expect("nats-server listens");
        Self { port, process }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// The value of metric `name` (a whole series name, labels included) in
/// herald's `/metrics` at `http`.
pub async fn metric(http: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

/// Opens an SSE stream (`path`) over HTTP/1.1 on a raw socket with a tiny
/// receive buffer and reads only the response head: a subscriber that
/// never reads its body. `headers` are more header lines, each ending in
/// CRLF (a token, say).
pub async fn stuck_sse(http: &str, path: &str, headers: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(http.parse().unwrap()).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

// ---- the application behind herald ----------------------------------------

/// Runs `herald key ARGS --database-url DATABASE`; returns its stdout, or
/// its stderr as the error.
pub async fn key_command(database: &str, args: &[&str]) -> Result<String, String> {
    let output = herald_command()
        .arg("key")
        .args(args)
        .args(["--database-url", database])
        .output()
        .await
        .expect("herald key runs");
    match output.status.success() {
        true => Ok(String::from_utf8(output.stdout).unwrap()),
        false => Err(String::from_utf8(output.stderr).unwrap()),
    }
}

/// A new service key `name` with `scopes`, made as an operator makes one.
pub async fn service_key(database: &str, name: &str, scopes: &str) -> String {
    let out = key_command(database, &["create", name, "--scope", scopes])
        .await
        .expect("the key is created");
    out.trim().to_owned()
}

impl TestApp {
    /// An Admin client of this server.
    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel().await)
    }
}

impl Process {
    /// An Admin client of this process.
    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("the gRPC port accepts");
        pb::admin_client::AdminClient::new(channel)
    }
}
