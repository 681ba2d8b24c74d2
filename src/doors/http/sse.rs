//! `GET /api/messages` and `GET /api/events`: the caller's message stream,
//! or every event of their conversations, as Server-Sent Events.
//!
//! Framing, exactly as sent:
//!
//! ```text
//! retry: 1000                      once, first: reconnect after 1 s
//!
//! event: reset                     only when the requested replay is impossible
//! data: {"reason":"..."}
//!
//! id: 42                           one per message, no `event:` line, so
//! data: {"id":"42",...}            EventSource.onmessage receives it
//!
//! id: 43                           /api/events only: other events are
//! event: read                      named (`read`, `membership`), with the
//! data: {"conversationId":...}     JSON of the inner object of `Event`
//!
//! event: typing                    /api/events only: signals (`typing`,
//! data: {"conversationId":...}     `presence`) have no position, so no
//!                                  `id:`, and are never replayed
//!
//! : keep-alive                     after 15 s without an event (--sse-heartbeat)
//! ```
//!
//! Resume: the `Last-Event-ID` header (browsers send it on reconnect) or
//! `?lastEventId=` (the header wins) replays what was missed, then goes
//! live, with no gap and no duplicate (see [`Herald::subscribe`]). The stream
//! closes when the subscriber falls behind, the token expires or the server
//! shuts down; EventSource then reconnects with the last id it saw.
//!
//! [`Herald::subscribe`]: crate::engine::service::Herald::subscribe

use super::{AppState, StreamCaller, error_response};
use crate::{
    domain,
    engine::hub::{Delivery, Wants},
    engine::stream::{EventStream, StreamEnd},
    error::Error,
    metrics::Transport,
    pb,
};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use std::{convert::Infallible, time::Duration};

/// The body of the 406 answer to a request that does not accept SSE.
pub const NOT_EVENT_STREAM: &str = "This endpoint requires an EventSource connection";
/// The reconnection delay suggested to EventSource.
const RETRY: Duration = Duration::from_secs(1);

/// The stream routes and what each carries. herald's own HTTP/1.1 writer
/// (`listener/h1_stream.rs`) takes a connection whose first request is one
/// of these paths ([`STREAM_PATHS`]): one list, so the two cannot drift.
const STREAMS: [(&str, Wants); 2] = [
    (STREAM_PATHS[0], Wants::Messages),
    (STREAM_PATHS[1], Wants::Everything),
];

/// The paths of [`STREAMS`].
pub const STREAM_PATHS: [&str; 2] = ["/api/messages", "/api/events"];

pub fn router() -> Router<AppState> {
    STREAMS
        .into_iter()
        .fold(Router::new(), |router, (path, wants)| {
            router.route(
                path,
                get(move |state, caller, headers, query| {
                    subscribe(state, caller, headers, query, wants)
                }),
            )
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeQuery {
    last_event_id: Option<String>,
}

async fn subscribe(
    State(state): State<AppState>,
    StreamCaller(caller): StreamCaller,
    headers: HeaderMap,
    query: Result<Query<ResumeQuery>, QueryRejection>,
    wants: Wants,
) -> Result<Response, Error> {
    if !accepts_event_stream(&headers) {
        return Ok(error_response(StatusCode::NOT_ACCEPTABLE, NOT_EVENT_STREAM));
    }
    let from_header = headers.get("last-event-id").map(|value| {
        value
            .to_str()
            .map_err(|_| Error::invalid("Last-Event-ID must be printable"))
    });
    let resume = match from_header {
        Some(header) => header?.to_owned(),
        None => {
            let Query(query) = query.map_err(|rejection| Error::invalid(rejection.body_text()))?;
            query.last_event_id.unwrap_or_default()
        }
    };
    // Only now is a stream ticket used up (see `StreamCaller`): a request
    // refused for its headers or query does not burn it.
    state.herald.redeem(&caller).await?;
    let mut stream = state.herald.subscribe(&caller, &resume, wants).await?;
    stream.serve_as(Transport::Sse);
    let headers = stream_headers();
    let ends = crate::net::listener::StreamEnds(stream.ends_at());
    let body = Body::from_stream(events(stream, state.heartbeat));
    let mut response = (headers, body).into_response();
    response.extensions_mut().insert(ends);
    Ok(response)
}

/// `GET /api/admin/events`: the firehose as Server-Sent Events, framed as
/// `/api/events` frames events; `?kinds=a,b` filters, `Last-Event-ID` (or
/// `?lastEventId=`) resumes.
pub(super) async fn firehose(
    State(state): State<AppState>,
    super::admin::Key(key): super::admin::Key,
    headers: HeaderMap,
    query: Result<Query<FirehoseQuery>, QueryRejection>,
) -> Result<Response, Error> {
    if !accepts_event_stream(&headers) {
        return Ok(error_response(StatusCode::NOT_ACCEPTABLE, NOT_EVENT_STREAM));
    }
    let Query(query) = query.map_err(|rejection| Error::invalid(rejection.body_text()))?;
    let resume = match headers.get("last-event-id") {
        Some(header) => header
            .to_str()
            .map_err(|_| Error::invalid("Last-Event-ID must be printable"))?
            .to_owned(),
        None => query.last_event_id.unwrap_or_default(),
    };
    let kinds: Vec<String> = query
        .kinds
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|kind| !kind.is_empty())
        .map(str::to_owned)
        .collect();
    let firehose = state.herald.subscribe_all(&key, &resume, &kinds).await?;
    let heartbeat = state.heartbeat;
    let batches = stream::unfold(firehose, move |mut firehose| async move {
        let first = match tokio::time::timeout(heartbeat, firehose.next()).await {
            Err(_) => return Some((Bytes::from_static(b": keep-alive\n\n"), firehose)),
            Ok(Err(end)) => {
                tracing::debug!(?end, "firehose ended");
                return None;
            }
            Ok(Ok(event)) => event,
        };
        let mut out = String::with_capacity(512);
        write_event(&mut out, &stored_delivery(first));
        while out.len() < MAX_BATCH_BYTES {
            let Some(stored) = firehose.try_next() else {
                break;
            };
            write_event(&mut out, &stored_delivery(stored));
        }
        Some((Bytes::from(out), firehose))
    });
    let head = format!("retry: {}\n\n", RETRY.as_millis());
    let body = stream::once(async move { Bytes::from(head) })
        .chain(batches)
        .map(Ok::<_, Infallible>);
    Ok((stream_headers(), Body::from_stream(body)).into_response())
}

/// A firehose event as `write_event` writes it: a message's JSON also
/// carries `offlineRecipients`.
fn stored_delivery(stored: crate::engine::firehose::Stored) -> std::sync::Arc<Delivery> {
    let delivery = Delivery::new(stored.event, std::sync::Arc::from([]));
    if !stored.offline.is_empty()
        && let pb::event::Kind::Message(message) = pb::event::Kind::from(&delivery.event)
        && let Ok(mut json) = serde_json::to_value(&message)
    {
        json["offlineRecipients"] = stored.offline.into();
        let _ = delivery.encoded.set(json.to_string());
    }
    delivery
}

/// The firehose's query: a resume point and the kinds wanted.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FirehoseQuery {
    last_event_id: Option<String>,
    kinds: Option<String>,
}

/// The headers of every event stream.
fn stream_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Proxies such as nginx buffer responses unless told not to.
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ]
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim() == "text/event-stream")
        })
}

/// The stream's bytes: the retry hint and a reset if any, then messages
/// until the stream ends, with a comment after each idle `heartbeat`.
/// Every message already queued when the subscriber is written to goes out
/// in the same write (up to [`MAX_BATCH`]): under load one write serves many
/// events. Dropping the body (the client went away) drops the subscription.
fn events(
    stream: EventStream,
    heartbeat: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let mut head = format!("retry: {}\n\n", RETRY.as_millis());
    if let Some(reason) = stream.reset() {
        let data = serde_json::json!({ "reason": reason });
        head.push_str(&format!("event: reset\ndata: {data}\n\n"));
    }
    // `None` once moderation ended it: its last event is written, nothing after.
    let batches = stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        let first = match tokio::time::timeout(heartbeat, stream.next()).await {
            Err(_) => return Some((Bytes::from_static(b": keep-alive\n\n"), Some(stream))),
            Ok(Err(StreamEnd::Ended(ending))) => {
                tracing::debug!(?ending, "SSE stream ended by moderation");
                let data = serde_json::json!({ "reason": ending.reason() });
                return Some((
                    Bytes::from(format!("event: disconnect\ndata: {data}\n\n")),
                    None,
                ));
            }
            Ok(Err(end)) => {
                tracing::debug!(?end, "SSE stream ended");
                return None;
            }
            Ok(Ok(delivery)) => delivery,
        };
        let mut out = String::with_capacity(512);
        write_event(&mut out, &first);
        for _ in 1..MAX_BATCH {
            if out.len() >= MAX_BATCH_BYTES {
                break;
            }
            let Some(delivery) = stream.try_next() else {
                break;
            };
            write_event(&mut out, &delivery);
        }
        Some((Bytes::from(out), Some(stream)))
    });
    stream::once(async move { Bytes::from(head) })
        .chain(batches)
        .map(Ok)
}

/// The most events written to a subscriber at once.
const MAX_BATCH: usize = 64;
/// Past this many bytes a write takes no more events: what a reader that
/// stopped leaves in the server's buffers stays small.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Appends one event: a message unnamed (so `onmessage` receives it),
/// others named by kind. Its JSON is made once per fan-out, by the first
/// subscription that writes it.
fn write_event(out: &mut String, delivery: &Delivery) {
    let event = &delivery.event;
    let json = delivery.encoded.get_or_init(|| {
        let json = match pb::event::Kind::from(event) {
            pb::event::Kind::Message(inner) => serde_json::to_string(&inner),
            pb::event::Kind::Read(inner) => serde_json::to_string(&inner),
            pb::event::Kind::Membership(inner) => serde_json::to_string(&inner),
            pb::event::Kind::Typing(inner) => serde_json::to_string(&inner),
            pb::event::Kind::Presence(inner) => serde_json::to_string(&inner),
            pb::event::Kind::Edited(inner) | pb::event::Kind::Deleted(inner) => {
                serde_json::to_string(&inner)
            }
            pb::event::Kind::Reaction(inner) => serde_json::to_string(&inner),
        };
        json.unwrap_or_else(|error| {
            // Unreachable for strings and a server timestamp; never a panic.
            tracing::error!(%error, id = event.position.0, "an event did not serialize");
            String::new()
        })
    });
    if json.is_empty() {
        out.push_str(": an event could not be serialized\n\n");
        return;
    }
    // Signals have no position: no `id:`, so they never move the client's
    // resume point.
    if event.has_position() {
        out.push_str("id: ");
        out.push_str(&event.position.id());
        out.push('\n');
    }
    let name = match &event.body {
        domain::Body::Message { .. } => None,
        domain::Body::Edited(_) => Some("edit"),
        domain::Body::Deleted(_) => Some("delete"),
        domain::Body::Reaction { .. } => Some("reaction"),
        domain::Body::Read(_) => Some("read"),
        domain::Body::Membership(_) => Some("membership"),
        domain::Body::Typing => Some("typing"),
        domain::Body::Presence { .. } => Some("presence"),
    };
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(json);
    out.push_str("\n\n");
}
