//! REST: the same calls as gRPC, with the proto3 JSON mapping of the same
//! messages as bodies (from pbjson), so both doors speak one schema.

use super::{AppState, Caller, error_response};
use crate::{error::Error, pb};
use axum::{
    Json, Router,
    extract::{
        FromRequest, FromRequestParts, Path, Query, Request, State, rejection::JsonRejection,
    },
    http::{HeaderMap, StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{delete, get, patch, post, put},
};
use serde::{Deserialize, de::DeserializeOwned};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/conversations",
            post(create_conversation).get(list_conversations),
        )
        .route(
            "/api/conversations/{id}/messages",
            post(create_message).get(list_messages),
        )
        .route(
            "/api/conversations/{id}/messages/{message_id}",
            patch(edit_message).delete(delete_message),
        )
        .route(
            "/api/conversations/{id}/messages/{message_id}/reactions/{emoji}",
            put(react).delete(unreact),
        )
        .route("/api/conversations/{id}/read", post(mark_read))
        .route(
            "/api/conversations/{id}/participants",
            post(add_participants),
        )
        .route("/api/conversations/{id}/typing", post(set_typing))
        .route("/api/presence", get(get_presence))
        .route(
            "/api/conversations/{id}/participants/{user_id}",
            delete(remove_participant),
        )
        .route("/api/stream-tickets", post(stream_ticket))
        .route("/api/blocks", get(list_blocked))
        .route(
            "/api/blocks/{user_id}",
            put(block_user).delete(unblock_user),
        )
}

async fn create_conversation(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Body(body): Body<pb::CreateConversationRequest>,
) -> Result<(StatusCode, Json<pb::Conversation>), Error> {
    let (conversation, created) = state
        .herald
        .create_conversation(&caller.user, &body.participant_ids)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json((&conversation).into())))
}

/// `ListConversations` parameters, named as in the JSON mapping.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConversationsQuery {
    page_size: Option<i32>,
    page_token: Option<String>,
}

async fn list_conversations(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<ConversationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pb::ListConversationsResponse>, Error> {
    let Query(query) = query.map_err(|rejection| Error::invalid(rejection.body_text()))?;
    let (conversations, next_page_token) = state
        .herald
        .list_conversations(
            &caller.user,
            query.page_size.unwrap_or(0),
            query.page_token.as_deref().unwrap_or(""),
        )
        .await?;
    Ok(Json(pb::ListConversationsResponse {
        conversations: conversations.iter().map(Into::into).collect(),
        next_page_token,
    }))
}

/// The idempotency key is the body's `clientMessageId` or an
/// `Idempotency-Key` header (an empty one is none); both at once must agree.
async fn create_message(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(id): Segments<String>,
    headers: HeaderMap,
    Body(body): Body<pb::CreateMessageRequest>,
) -> Result<(StatusCode, Json<pb::Message>), Error> {
    let header = match headers.get("idempotency-key") {
        Some(value) => value
            .to_str()
            .map_err(|_| Error::invalid("Idempotency-Key must be printable"))?,
        None => "",
    };
    let key = match (header, body.client_message_id.as_str()) {
        (key, "") | ("", key) => key,
        (header, body) if header == body => header,
        _ => {
            return Err(Error::invalid(
                "Idempotency-Key and clientMessageId differ: give one key",
            ));
        }
    };
    let message = state
        .herald
        .create_message(&caller.user, &id, body.content, key, &body.reply_to_id)
        .await?;
    Ok((StatusCode::CREATED, Json((&message).into())))
}

/// The body's `content` replaces the message's (its ids come from the path).
async fn edit_message(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments((id, message_id)): Segments<(String, String)>,
    Body(body): Body<pb::EditMessageRequest>,
) -> Result<Json<pb::Message>, Error> {
    let message = state
        .herald
        .edit_message(&caller.user, &id, &message_id, body.content)
        .await?;
    Ok(Json((&message).into()))
}

async fn delete_message(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments((id, message_id)): Segments<(String, String)>,
) -> Result<Json<pb::Message>, Error> {
    let message = state
        .herald
        .delete_message(&caller.user, &id, &message_id)
        .await?;
    Ok(Json((&message).into()))
}

/// The emoji is the last path segment, percent-decoded.
async fn react(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(path): Segments<(String, String, String)>,
) -> Result<Json<pb::Message>, Error> {
    reaction(state, caller.user, path, true).await
}

async fn unreact(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(path): Segments<(String, String, String)>,
) -> Result<Json<pb::Message>, Error> {
    reaction(state, caller.user, path, false).await
}

/// Gives (`added`) or takes back a reaction named by its path.
async fn reaction(
    state: AppState,
    caller: crate::domain::UserId,
    (id, message_id, emoji): (String, String, String),
    added: bool,
) -> Result<Json<pb::Message>, Error> {
    let message = state
        .herald
        .react(&caller, &id, &message_id, &emoji, added)
        .await?;
    Ok(Json((&message).into()))
}

/// `ListMessages` parameters, named as in the JSON mapping.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PageQuery {
    pub page_size: Option<i32>,
    pub before_id: Option<String>,
    pub after_id: Option<String>,
}

async fn list_messages(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(id): Segments<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pb::ListMessagesResponse>, Error> {
    let Query(query) = query.map_err(|rejection| Error::invalid(rejection.body_text()))?;
    let messages = state
        .herald
        .list_messages(
            &caller.user,
            &id,
            query.page_size.unwrap_or(0),
            query.before_id.as_deref().unwrap_or(""),
            query.after_id.as_deref().unwrap_or(""),
        )
        .await?;
    Ok(Json(pb::ListMessagesResponse {
        messages: messages.iter().map(Into::into).collect(),
    }))
}

async fn mark_read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(id): Segments<String>,
    Body(body): Body<pb::MarkReadRequest>,
) -> Result<Json<pb::Conversation>, Error> {
    let conversation = state
        .herald
        .mark_read(&caller.user, &id, &body.message_id)
        .await?;
    Ok(Json((&conversation).into()))
}

/// `GetPresence` parameters: `userIds` comma-separated.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PresenceQuery {
    user_ids: Option<String>,
}

impl PresenceQuery {
    /// The ids asked about.
    pub fn users(&self) -> Vec<String> {
        self.user_ids
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

async fn get_presence(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pb::GetPresenceResponse>, Error> {
    let Query(query) = query.map_err(|rejection| Error::invalid(rejection.body_text()))?;
    let found = state
        .herald
        .get_presence(&caller.user, &query.users())
        .await?;
    Ok(Json(pb::GetPresenceResponse {
        presences: found
            .iter()
            .map(|(user, seen)| pb::presence(user, *seen))
            .collect(),
    }))
}

/// 204: blocked (or already).
async fn block_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(user_id): Segments<String>,
) -> Result<StatusCode, Error> {
    state.herald.block_user(&caller.user, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 204: not blocked (any more).
async fn unblock_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(user_id): Segments<String>,
) -> Result<StatusCode, Error> {
    state.herald.unblock_user(&caller.user, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_blocked(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<pb::ListBlockedResponse>, Error> {
    let blocked = state.herald.list_blocked(&caller.user).await?;
    Ok(Json(pb::ListBlockedResponse {
        user_ids: blocked.iter().map(ToString::to_string).collect(),
    }))
}

/// 204: accepted, relayed or coalesced (see `signals`).
async fn set_typing(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(id): Segments<String>,
) -> Result<StatusCode, Error> {
    state.herald.set_typing(&caller.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"userIds": [...]}`, the JSON of `AddParticipantsRequest` without the
/// conversation, which the path names.
async fn add_participants(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments(id): Segments<String>,
    Body(body): Body<pb::AddParticipantsRequest>,
) -> Result<Json<pb::Conversation>, Error> {
    let conversation = state
        .herald
        .add_participants(&caller.user, &id, &body.user_ids)
        .await?;
    Ok(Json((&conversation).into()))
}

async fn remove_participant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Segments((id, user_id)): Segments<(String, String)>,
) -> Result<Json<pb::Conversation>, Error> {
    let conversation = state
        .herald
        .remove_participant(&caller.user, &id, &user_id)
        .await?;
    Ok(Json((&conversation).into()))
}

/// A short-lived token good only for opening the SSE stream, so that the
/// long-lived token never has to sit in a URL. The stream it opens lasts as
/// long as the caller's own token.
async fn stream_ticket(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<(StatusCode, Json<serde_json::Value>), Error> {
    let _metered = state.herald.meter(&caller.user, 1.0).await?;
    let (ticket, expires) = state.auth.ticket(&caller);
    let expires_at = pb::Timestamp {
        seconds: expires as i64,
        nanos: 0,
    }
    .to_rfc3339();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "ticket": ticket, "expiresAt": expires_at })),
    ))
}

/// A JSON body whose rejections use herald's error shape: 413 when too
/// large, 400 for everything else (bad JSON, wrong types, no content type).
pub(super) struct Body<T>(pub T);

/// A JSON body that may be left out: an empty body is `T::default()`.
pub(super) struct OptionalBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let bytes = match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ));
            }
            Err(rejection) => return Err(Error::invalid(rejection.body_text()).into_response()),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|error| Error::invalid(format!("invalid JSON body: {error}")).into_response())
    }
}

/// Path parameters, percent-decoded by axum; a path that does not decode
/// (not UTF-8) is answered with the JSON error of every other 400, not
/// axum's plain text.
pub(super) struct Segments<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Segments<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let why = format!("invalid path: {}", rejection.body_text());
                Err(Error::invalid(why).into_response())
            }
        }
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(Self(body)),
            Err(rejection) => Err(body_rejection(rejection)),
        }
    }
}

fn body_rejection(rejection: JsonRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    Error::invalid(format!("invalid JSON body: {}", rejection.body_text())).into_response()
}
