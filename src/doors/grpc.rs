//! The gRPC door: `herald.v1.Messenger` as a thin adapter over the core,
//! plus the interceptor that turns a bearer token into verified [`Claims`];
//! `herald.v1.Admin`, for service keys, is `admin`.

use crate::{
    auth::{Auth, Claims, bearer},
    domain::{Event, moderation::Ending},
    engine::hub::Wants,
    engine::service::Herald,
    engine::stream::{EventStream, StreamEnd},
    error::Error,
    metrics::Transport,
    pb::{self, messenger_server::MessengerServer},
};
use futures_util::{Stream, stream};
use std::pin::Pin;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use tower_layer::Layer;

pub mod admin;
pub mod log;

use log::{SUBSCRIBE_EVENTS, SUBSCRIBE_MESSAGES, StreamLog};

/// The Messenger service with authentication in front.
pub type Service =
    TooLargeIsInvalid<InterceptedService<MessengerServer<Messenger>, Authenticate<Claims>>>;

/// Builds the authenticated Messenger service. Its request messages are
/// bounded by what a call can carry ([`Limits::largest_request`]), which
/// tonic checks from each message's length prefix, before buffering it.
///
/// [`Limits::largest_request`]: crate::engine::limits::Limits::largest_request
pub fn service(herald: Herald, auth: Auth) -> Service {
    let largest = herald.limits().largest_request();
    let server = MessengerServer::new(Messenger { herald }).max_decoding_message_size(largest);
    let verify = |auth: &Auth, token: &str| auth.verify(token);
    TooLargeIsInvalid(InterceptedService::new(
        server,
        Authenticate { auth, verify },
    ))
}

/// tonic answers a request message over the decoding limit with
/// OUT_OF_RANGE; the contract says oversized content is INVALID_ARGUMENT
/// (OUT_OF_RANGE means an impossible resume). This rewrites that one
/// answer, which tonic gives before any handler runs, as trailers only.
#[derive(Clone)]
pub struct TooLargeIsInvalid<S>(S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for TooLargeIsInvalid<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower_service::Service<axum::http::Request<B>> for TooLargeIsInvalid<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::MapOk<S::Future, fn(S::Response) -> S::Response>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(context)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        self.0.call(request).map_ok(too_large_is_invalid::<R>)
    }
}

fn too_large_is_invalid<R>(mut response: axum::http::Response<R>) -> axum::http::Response<R> {
    let headers = response.headers_mut();
    // tonic percent-encodes the message's spaces.
    let too_large = headers.get("grpc-status").is_some_and(|code| code == "11")
        && headers.get("grpc-message").is_some_and(|message| {
            message
                .as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if too_large {
        let invalid = axum::http::HeaderValue::from_static("3");
        headers.insert("grpc-status", invalid);
        headers.insert(
            "grpc-message",
            axum::http::HeaderValue::from_static("the request is larger than this call can carry"),
        );
    }
    response
}

/// The Messenger service as gRPC-Web (and plain gRPC) routes for the HTTP
/// port, so browsers can call it directly; tonic-web translates. Only its
/// own paths, and only requests with a gRPC content type, reach it: every
/// other request is the HTTP door's (and its 404).
pub fn web_routes(herald: Herald, auth: Auth) -> axum::Router {
    use tonic::server::NamedService;
    let web = tonic_web::GrpcWebLayer::new().layer(service(herald, auth));
    let path = format!("/{}/{{method}}", MessengerServer::<Messenger>::NAME);
    axum::Router::new()
        .route_service(&path, web)
        .route_layer(axum::middleware::from_fn(grpc_only))
}

/// Lets only gRPC and gRPC-Web requests through.
async fn grpc_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    match grpc {
        true => next.run(request).await,
        false => crate::doors::http::not_found().await,
    }
}

/// Verifies `authorization: Bearer <credential>` with `verify` and puts
/// what it verified into the request's extensions: a token's [`Claims`]
/// for Messenger, a service key's `Service` for Admin.
#[derive(Clone)]
pub struct Authenticate<T> {
    auth: Auth,
    verify: fn(&Auth, &str) -> Result<T, Error>,
}

impl<T: Clone + Send + Sync + 'static> tonic::service::Interceptor for Authenticate<T> {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization");
        let credential = header
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        let verified = match credential {
            Some(credential) => (self.verify)(&self.auth, credential)?,
            None => return Err(self.auth.refuse_missing().into()),
        };
        request.extensions_mut().insert(verified);
        Ok(request)
    }
}

/// What the interceptor verified.
fn verified<T: Clone + Send + Sync + 'static, R>(request: &Request<R>) -> Result<T, Status> {
    // Only reachable without the interceptor, which the services always add.
    request
        .extensions()
        .get::<T>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated.into())
}

/// The claims the interceptor verified.
fn claims<R>(request: &Request<R>) -> Result<Claims, Status> {
    verified(request)
}

pub struct Messenger {
    herald: Herald,
}

/// A server stream of `T` as tonic returns it.
type StreamResponse<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Messenger {
    /// Gives (`added`) or takes back the reaction `(conversation, message,
    /// emoji)` names.
    async fn reaction(
        &self,
        caller: &crate::domain::UserId,
        (conversation, message, emoji): (String, String, String),
        added: bool,
    ) -> Result<Response<pb::Message>, Status> {
        let message = self
            .herald
            .react(caller, &conversation, &message, &emoji, added)
            .await?;
        Ok(Response::new((&message).into()))
    }

    /// Opens the caller's stream of what `wants` asks for, each event
    /// written as `convert` makes it, logged as `method`.
    async fn open<T: Send + 'static>(
        &self,
        (claims, method): (&Claims, &'static str),
        after_id: &str,
        wants: Wants,
        convert: fn(&Event) -> Option<T>,
    ) -> Result<Response<StreamResponse<T>>, Status> {
        let mut stream = self.herald.subscribe(claims, after_id, wants).await?;
        if let Some(reason) = stream.reset() {
            return Err(Error::ResumeImpossible(reason.to_owned()).into());
        }
        stream.serve_as(Transport::Grpc);
        let ends = crate::net::listener::StreamEnds(stream.ends_at());
        let mut response =
            Response::new(Box::pin(relay(stream, method, convert)) as StreamResponse<T>);
        response.extensions_mut().insert(ends);
        Ok(response)
    }
}

#[tonic::async_trait]
impl pb::messenger_server::Messenger for Messenger {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let caller = claims(&request)?.user;
        let ids = request.into_inner().participant_ids;
        let (conversation, _) = self.herald.create_conversation(&caller, &ids).await?;
        Ok(Response::new((&conversation).into()))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let (conversations, next_page_token) = self
            .herald
            .list_conversations(&caller, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: conversations.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn create_message(
        &self,
        request: Request<pb::CreateMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let message = self
            .herald
            .create_message(
                &caller,
                &body.conversation_id,
                body.content,
                &body.client_message_id,
                &body.reply_to_id,
            )
            .await?;
        Ok(Response::new((&message).into()))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let message = self
            .herald
            .edit_message(
                &caller,
                &body.conversation_id,
                &body.message_id,
                body.content,
            )
            .await?;
        Ok(Response::new((&message).into()))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let message = self
            .herald
            .delete_message(&caller, &body.conversation_id, &body.message_id)
            .await?;
        Ok(Response::new((&message).into()))
    }

    async fn react(
        &self,
        request: Request<pb::ReactRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let named = (body.conversation_id, body.message_id, body.emoji);
        self.reaction(&caller, named, true).await
    }

    async fn unreact(
        &self,
        request: Request<pb::UnreactRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let named = (body.conversation_id, body.message_id, body.emoji);
        self.reaction(&caller, named, false).await
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let messages = self
            .herald
            .list_messages(
                &caller,
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

    type SubscribeMessagesStream = StreamResponse<pb::Message>;

    async fn subscribe_messages(
        &self,
        request: Request<pb::SubscribeMessagesRequest>,
    ) -> Result<Response<Self::SubscribeMessagesStream>, Status> {
        let claims = claims(&request)?;
        let after_id = &request.get_ref().after_id;
        self.open(
            (&claims, SUBSCRIBE_MESSAGES),
            after_id,
            Wants::Messages,
            |event| match pb::event::Kind::from(event) {
                pb::event::Kind::Message(message) => Some(message),
                _ => None,
            },
        )
        .await
    }

    type SubscribeEventsStream = StreamResponse<pb::Event>;

    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let claims = claims(&request)?;
        let after_id = &request.get_ref().after_id;
        self.open(
            (&claims, SUBSCRIBE_EVENTS),
            after_id,
            Wants::Everything,
            |event| Some(pb::Event::from(event)),
        )
        .await
    }

    async fn set_typing(
        &self,
        request: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        self.herald
            .set_typing(&caller, &body.conversation_id)
            .await?;
        Ok(Response::new(pb::SetTypingResponse {}))
    }

    async fn get_presence(
        &self,
        request: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let found = self.herald.get_presence(&caller, &body.user_ids).await?;
        Ok(Response::new(pb::GetPresenceResponse {
            presences: found
                .iter()
                .map(|(user, seen)| pb::presence(user, *seen))
                .collect(),
        }))
    }

    async fn block_user(
        &self,
        request: Request<pb::BlockUserRequest>,
    ) -> Result<Response<pb::BlockUserResponse>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        self.herald.block_user(&caller, &body.user_id).await?;
        Ok(Response::new(pb::BlockUserResponse {}))
    }

    async fn unblock_user(
        &self,
        request: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        self.herald.unblock_user(&caller, &body.user_id).await?;
        Ok(Response::new(pb::UnblockUserResponse {}))
    }

    async fn list_blocked(
        &self,
        request: Request<pb::ListBlockedRequest>,
    ) -> Result<Response<pb::ListBlockedResponse>, Status> {
        let caller = claims(&request)?.user;
        let blocked = self.herald.list_blocked(&caller).await?;
        Ok(Response::new(pb::ListBlockedResponse {
            user_ids: blocked.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn add_participants(
        &self,
        request: Request<pb::AddParticipantsRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let conversation = self
            .herald
            .add_participants(&caller, &body.conversation_id, &body.user_ids)
            .await?;
        Ok(Response::new((&conversation).into()))
    }

    async fn remove_participant(
        &self,
        request: Request<pb::RemoveParticipantRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let conversation = self
            .herald
            .remove_participant(&caller, &body.conversation_id, &body.user_id)
            .await?;
        Ok(Response::new((&conversation).into()))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let caller = claims(&request)?.user;
        let body = request.into_inner();
        let conversation = self
            .herald
            .mark_read(&caller, &body.conversation_id, &body.message_id)
            .await?;
        Ok(Response::new((&conversation).into()))
    }
}

/// The stream as gRPC messages made by `convert` (events it makes nothing
/// of are skipped), ending with a status that says why it ended, logged as
/// `method`. Dropping it (the client went away) drops the subscription.
fn relay<T>(
    stream: EventStream,
    method: &'static str,
    convert: fn(&Event) -> Option<T>,
) -> impl Stream<Item = Result<T, Status>> {
    let log = StreamLog {
        method,
        opened: std::time::Instant::now(),
        code: tonic::Code::Cancelled,
    };
    // The stream is borrowed from the state, not moved out of it: a future
    // holding both would keep room for two (an idle stream's largest part).
    stream::unfold(Some((stream, log)), move |mut state| async move {
        let (stream, log) = state.as_mut()?;
        loop {
            match stream.next().await {
                Ok(delivery) => {
                    if let Some(item) = convert(&delivery.event) {
                        return Some((Ok(item), state));
                    }
                }
                Err(end) => {
                    let status = end_status(end);
                    log.code = status.code();
                    return Some((Err(status), None));
                }
            }
        }
    })
}

fn end_status(end: StreamEnd) -> Status {
    match end {
        StreamEnd::Lagged => Status::aborted(
            "subscription fell behind; resubscribe with after_id set to the last id received",
        ),
        StreamEnd::TokenExpired => Status::unauthenticated(crate::error::UNAUTHENTICATED),
        StreamEnd::Unavailable => {
            Status::unavailable("the replay could not be read; resubscribe with after_id")
        }
        StreamEnd::ShuttingDown => {
            Status::unavailable("server is shutting down; reconnect with after_id")
        }
        StreamEnd::Ended(Ending::Banned(reason)) => Error::Banned(reason).into(),
        StreamEnd::Ended(Ending::Revoked) => Status::unauthenticated(crate::error::UNAUTHENTICATED),
        StreamEnd::Ended(ending @ Ending::Disconnected(_)) => Status::unavailable(ending.reason()),
    }
}
