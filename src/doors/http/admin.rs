//! REST under `/api/admin/`: the Admin service for the application's
//! backend, the same calls as gRPC's `herald.v1.Admin` with the same JSON
//! bodies. A service key comes only in `Authorization: Bearer hk_...`: keys
//! are long-lived, so one in a query string (which access logs keep) is
//! never read, and a user token is refused here as a key is elsewhere.

use super::{
    AppState,
    api::{Body, OptionalBody, PageQuery, PresenceQuery, Segments},
};
use crate::{
    auth::{bearer, service::Service},
    domain::moderation::Action,
    error::Error,
    pb,
};
use axum::{
    Json, Router,
    extract::{FromRequestParts, Query, State},
    http::{StatusCode, header::AUTHORIZATION, request::Parts},
    routing::{delete, get, post, put},
};
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/conversations", post(create_conversation))
        .route(
            "/api/admin/conversations/{id}/messages",
            post(publish).get(list_messages),
        )
        .route(
            "/api/admin/conversations/{id}/messages/{message_id}",
            delete(delete_message),
        )
        .route(
            "/api/admin/conversations/{id}/participants",
            post(add_participants),
        )
        .route(
            "/api/admin/conversations/{id}/participants/{user_id}",
            delete(remove_participant),
        )
        .route("/api/admin/users/{user_id}/ban", put(ban).delete(unban))
        .route("/api/admin/users/{user_id}/disconnect", post(disconnect))
        .route("/api/admin/users/{user_id}/revoke", post(revoke))
        .route("/api/admin/presence", get(presence))
        .route("/api/admin/events", get(super::sse::firehose))
        .route(
            "/api/admin/webhooks",
            post(create_webhook).get(list_webhooks),
        )
        .route("/api/admin/webhooks/{id}", delete(delete_webhook))
}

/// The verified service key of an Admin request.
pub struct Key(pub Service);

impl FromRequestParts<AppState> for Key {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        match key {
            Some(key) => state.auth.verify_key(key).map(Key),
            None => Err(state.auth.refuse_missing()),
        }
    }
}

fn query<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Error> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| Error::invalid(rejection.body_text()))
}

async fn publish(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(id): Segments<String>,
    Body(body): Body<pb::PublishRequest>,
) -> Result<(StatusCode, Json<pb::Message>), Error> {
    let message = state
        .herald
        .publish(
            &key,
            &id,
            body.content,
            &body.sender_id,
            &body.client_message_id,
        )
        .await?;
    Ok((StatusCode::CREATED, Json((&message).into())))
}

async fn create_conversation(
    State(state): State<AppState>,
    Key(key): Key,
    Body(body): Body<pb::AdminCreateConversationRequest>,
) -> Result<(StatusCode, Json<pb::Conversation>), Error> {
    let (conversation, created) = state
        .herald
        .create_conversation_for(&key, &body.creator_id, &body.participant_ids)
        .await?;
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json((&conversation).into())))
}

async fn add_participants(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(id): Segments<String>,
    Body(body): Body<pb::AddParticipantsRequest>,
) -> Result<Json<pb::Conversation>, Error> {
    let conversation = state
        .herald
        .add_participants_as_service(&key, &id, &body.user_ids)
        .await?;
    Ok(Json((&conversation).into()))
}

async fn remove_participant(
    State(state): State<AppState>,
    Key(key): Key,
    Segments((id, user_id)): Segments<(String, String)>,
) -> Result<Json<pb::Conversation>, Error> {
    let conversation = state
        .herald
        .remove_participant_as_service(&key, &id, &user_id)
        .await?;
    Ok(Json((&conversation).into()))
}

/// `?reason=`, for the audit log.
#[derive(Deserialize)]
struct ReasonQuery {
    reason: Option<String>,
}

async fn delete_message(
    State(state): State<AppState>,
    Key(key): Key,
    Segments((id, message_id)): Segments<(String, String)>,
    reason: Result<Query<ReasonQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pb::Message>, Error> {
    let reason = query(reason)?.reason.unwrap_or_default();
    let message = state
        .herald
        .delete_message_as_service(&key, &id, &message_id, &reason)
        .await?;
    Ok(Json((&message).into()))
}

/// Body (optional): `{"until": "<RFC 3339>", "reason": "..."}`.
async fn ban(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(user_id): Segments<String>,
    OptionalBody(body): OptionalBody<pb::BanUserRequest>,
) -> Result<StatusCode, Error> {
    let ban = Action::Ban {
        until: body.until.map(|until| until.seconds),
        reason: body.reason,
    };
    state.herald.moderate(&key, &user_id, ban).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unban(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(user_id): Segments<String>,
) -> Result<StatusCode, Error> {
    state.herald.moderate(&key, &user_id, Action::Unban).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body (optional): `{"reason": "..."}`.
async fn disconnect(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(user_id): Segments<String>,
    OptionalBody(body): OptionalBody<pb::DisconnectUserRequest>,
) -> Result<StatusCode, Error> {
    let disconnect = Action::Disconnect {
        reason: body.reason,
    };
    state.herald.moderate(&key, &user_id, disconnect).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body (optional): `{"issuedBefore": "<RFC 3339>"}`, default now.
async fn revoke(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(user_id): Segments<String>,
    OptionalBody(body): OptionalBody<pb::RevokeTokensRequest>,
) -> Result<StatusCode, Error> {
    let revoke = Action::revoke(body.issued_before.map(|before| before.seconds));
    state.herald.moderate(&key, &user_id, revoke).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_messages(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(id): Segments<String>,
    page: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pb::ListMessagesResponse>, Error> {
    let page = query(page)?;
    let messages = state
        .herald
        .list_messages_as_service(
            &key,
            &id,
            page.page_size.unwrap_or(0),
            page.before_id.as_deref().unwrap_or(""),
            page.after_id.as_deref().unwrap_or(""),
        )
        .await?;
    Ok(Json(pb::ListMessagesResponse {
        messages: messages.iter().map(Into::into).collect(),
    }))
}

/// 201 with the webhook, its secret shown this once.
async fn create_webhook(
    State(state): State<AppState>,
    Key(key): Key,
    Body(body): Body<pb::CreateWebhookRequest>,
) -> Result<(StatusCode, Json<pb::Webhook>), Error> {
    let webhook = state
        .herald
        .create_webhook(&key, &body.url, &body.kinds)
        .await?;
    Ok((StatusCode::CREATED, Json(webhook)))
}

async fn list_webhooks(
    State(state): State<AppState>,
    Key(key): Key,
) -> Result<Json<pb::ListWebhooksResponse>, Error> {
    let webhooks = state.herald.list_webhooks(&key).await?;
    Ok(Json(pb::ListWebhooksResponse { webhooks }))
}

/// 204: removed.
async fn delete_webhook(
    State(state): State<AppState>,
    Key(key): Key,
    Segments(id): Segments<String>,
) -> Result<StatusCode, Error> {
    state.herald.delete_webhook(&key, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn presence(
    State(state): State<AppState>,
    Key(key): Key,
    asked: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pb::GetPresenceResponse>, Error> {
    let users = query(asked)?.users();
    let found = state.herald.presence_as_service(&key, &users).await?;
    Ok(Json(pb::GetPresenceResponse {
        presences: found
            .iter()
            .map(|(user, seen)| pb::presence(user, *seen))
            .collect(),
    }))
}
