//! `herald.v1.Admin` as a thin adapter over the core's Admin calls
//! (`engine::service::admin`), behind an interceptor that takes service
//! keys only: a user token is refused here as a key is by Messenger.

use super::{Authenticate, Herald};
use crate::{
    auth::{Auth, service::Service},
    domain::moderation::Action,
    pb::{self, admin_server::AdminServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

/// The Admin service with key authentication in front.
pub type AdminService =
    super::TooLargeIsInvalid<InterceptedService<AdminServer<Admin>, Authenticate<Service>>>;

/// Builds the Admin service, its requests bounded as Messenger's are.
pub fn service(herald: Herald, auth: Auth) -> AdminService {
    let largest = herald.limits().largest_request();
    let server = AdminServer::new(Admin { herald }).max_decoding_message_size(largest);
    let verify = |auth: &Auth, key: &str| auth.verify_key(key);
    super::TooLargeIsInvalid(InterceptedService::new(
        server,
        Authenticate { auth, verify },
    ))
}

/// The service key the interceptor verified.
fn key<R>(request: &Request<R>) -> Result<Service, Status> {
    super::verified(request)
}

/// Seconds since the epoch of a timestamp a client sent.
fn seconds(timestamp: Option<pb::Timestamp>) -> Option<i64> {
    timestamp.map(|timestamp| timestamp.seconds)
}

pub struct Admin {
    herald: Herald,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Admin {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let message = self
            .herald
            .publish(
                &key,
                &body.conversation_id,
                body.content,
                &body.sender_id,
                &body.client_message_id,
            )
            .await?;
        Ok(Response::new((&message).into()))
    }

    async fn create_conversation(
        &self,
        request: Request<pb::AdminCreateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let (conversation, _) = self
            .herald
            .create_conversation_for(&key, &body.creator_id, &body.participant_ids)
            .await?;
        Ok(Response::new((&conversation).into()))
    }

    async fn add_participants(
        &self,
        request: Request<pb::AddParticipantsRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let conversation = self
            .herald
            .add_participants_as_service(&key, &body.conversation_id, &body.user_ids)
            .await?;
        Ok(Response::new((&conversation).into()))
    }

    async fn remove_participant(
        &self,
        request: Request<pb::RemoveParticipantRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let conversation = self
            .herald
            .remove_participant_as_service(&key, &body.conversation_id, &body.user_id)
            .await?;
        Ok(Response::new((&conversation).into()))
    }

    async fn delete_message(
        &self,
        request: Request<pb::AdminDeleteMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let message = self
            .herald
            .delete_message_as_service(&key, &body.conversation_id, &body.message_id, &body.reason)
            .await?;
        Ok(Response::new((&message).into()))
    }

    async fn ban_user(
        &self,
        request: Request<pb::BanUserRequest>,
    ) -> Result<Response<pb::BanUserResponse>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let ban = Action::Ban {
            until: seconds(body.until),
            reason: body.reason,
        };
        self.herald.moderate(&key, &body.user_id, ban).await?;
        Ok(Response::new(pb::BanUserResponse {}))
    }

    async fn unban_user(
        &self,
        request: Request<pb::UnbanUserRequest>,
    ) -> Result<Response<pb::UnbanUserResponse>, Status> {
        let key = key(&request)?;
        let user = request.into_inner().user_id;
        self.herald.moderate(&key, &user, Action::Unban).await?;
        Ok(Response::new(pb::UnbanUserResponse {}))
    }

    async fn disconnect_user(
        &self,
        request: Request<pb::DisconnectUserRequest>,
    ) -> Result<Response<pb::DisconnectUserResponse>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let disconnect = Action::Disconnect {
            reason: body.reason,
        };
        self.herald
            .moderate(&key, &body.user_id, disconnect)
            .await?;
        Ok(Response::new(pb::DisconnectUserResponse {}))
    }

    async fn revoke_tokens(
        &self,
        request: Request<pb::RevokeTokensRequest>,
    ) -> Result<Response<pb::RevokeTokensResponse>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let revoke = Action::revoke(seconds(body.issued_before));
        self.herald.moderate(&key, &body.user_id, revoke).await?;
        Ok(Response::new(pb::RevokeTokensResponse {}))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let messages = self
            .herald
            .list_messages_as_service(
                &key,
                &body.conversation_id,
                body.page_size,
                &body.before_id,
                &body.after_id,
            )
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(Into::into).collect(),
        }))
    }

    type SubscribeAllStream = super::StreamResponse<pb::Event>;

    async fn subscribe_all(
        &self,
        request: Request<pb::SubscribeAllRequest>,
    ) -> Result<Response<Self::SubscribeAllStream>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let firehose = self
            .herald
            .subscribe_all(&key, &body.after_id, &body.kinds)
            .await?;
        let events = futures_util::stream::unfold(Some(firehose), |state| async move {
            let mut firehose = state?;
            match firehose.next().await {
                Ok(stored) => Some((Ok(stored.to_pb()), Some(firehose))),
                Err(end) => Some((Err(super::end_status(end)), None)),
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let webhook = self
            .herald
            .create_webhook(&key, &body.url, &body.kinds)
            .await?;
        Ok(Response::new(webhook))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let key = key(&request)?;
        let webhooks = self.herald.list_webhooks(&key).await?;
        Ok(Response::new(pb::ListWebhooksResponse { webhooks }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let key = key(&request)?;
        let id = request.into_inner().id;
        self.herald.delete_webhook(&key, &id).await?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn get_presence(
        &self,
        request: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let key = key(&request)?;
        let body = request.into_inner();
        let found = self
            .herald
            .presence_as_service(&key, &body.user_ids)
            .await?;
        Ok(Response::new(pb::GetPresenceResponse {
            presences: found
                .iter()
                .map(|(user, seen)| pb::presence(user, *seen))
                .collect(),
        }))
    }
}
