//! `GET /api/messages`: the caller's message stream as Server-Sent Events.
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
//! : keep-alive                     after 15 s without an event (--sse-heartbeat)
//! ```
//!
//! Resume: the `Last-Event-ID` header (browsers send it on reconnect) or
//! `?lastEventId=` (the header wins) replays what was missed, then goes
//! live, with no gap and no duplicate (see [`Herald::subscribe`]). The stream
//! closes when the subscriber falls behind, the token expires or the server
//! shuts down; EventSource then reconnects with the last id it saw.
//!
//! [`Herald::subscribe`]: crate::service::Herald::subscribe

use super::{AppState, StreamCaller, error_response};
use crate::{error::Error, hub::Delivery, metrics::Transport, pb, stream::MessageStream};
use axum::{
    Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use std::{convert::Infallible, time::Duration};

/// The body of the 406 answer to a request that does not accept SSE.
pub const NOT_EVENT_STREAM: &str = "This endpoint requires an EventSource connection";
/// The reconnection delay suggested to EventSource.
const RETRY: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/messages", get(subscribe))
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
    let mut stream = state.herald.subscribe(&caller, &resume).await?;
    stream.count_as(Transport::Sse);
    let sse = Sse::new(events(stream)).keep_alive(
        KeepAlive::new()
            .interval(state.heartbeat)
            .text("keep-alive"),
    );
    // Proxies such as nginx buffer responses unless told not to.
    let no_buffering = [(
        header::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    )];
    Ok((no_buffering, sse).into_response())
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

/// The events of one stream: the retry hint, a reset if any, then messages
/// until the stream ends. Dropping it (the client went away) drops the
/// subscription.
fn events(stream: MessageStream) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut head = vec![Event::default().retry(RETRY)];
    if let Some(reason) = stream.reset() {
        let data = serde_json::json!({ "reason": reason }).to_string();
        head.push(Event::default().event("reset").data(data));
    }
    let messages = stream::unfold(stream, |mut stream| async move {
        match stream.next().await {
            Ok(delivery) => Some((message_event(&delivery), stream)),
            Err(end) => {
                tracing::debug!(?end, "SSE stream ended");
                None
            }
        }
    });
    stream::iter(head).chain(messages).map(Ok)
}

/// The event of one message; its JSON is made once per fan-out.
fn message_event(delivery: &Delivery) -> Event {
    let message = &delivery.message;
    let json = delivery.encoded.get_or_init(|| {
        serde_json::to_string(&pb::Message::from(message)).unwrap_or_else(|error| {
            // Unreachable for strings and a server timestamp; never a panic.
            tracing::error!(%error, id = message.position.0, "message did not serialize");
            String::new()
        })
    });
    match json.is_empty() {
        true => Event::default().comment("a message could not be serialized"),
        false => Event::default()
            .id(message.position.id())
            .data(json.as_str()),
    }
}
