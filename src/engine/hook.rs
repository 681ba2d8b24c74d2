//! The hook before commit (`--publish-hook`): each message sent, and each
//! edit, is first POSTed to the application as `{"conversationId",
//! "userId", "content"}`, signed like a webhook, and its answer decides:
//! `{"action": "allow"}`, `{"action": "deny", "reason": "..."}` (the
//! sender gets PERMISSION_DENIED / 403 with that reason) or `{"action":
//! "replace", "content": "..."}` (checked like any content).
//!
//! **Never in another sender's way.** The call runs in the sender's own
//! request, before the committer, so one slow hook call delays only its own
//! send, and at most by `--publish-hook-timeout`; calls at once are bounded
//! ([`CONCURRENT`]), and a send that finds no place within its timeout
//! fails like a hook that timed out. What a timeout, an error status, an
//! answer that is not the JSON above, or replaced content herald cannot
//! store mean is `--publish-hook-failure`: `closed` refuses the send
//! (UNAVAILABLE / 503), `open` lets it through as it was.

use crate::{
    domain::{Content, ConversationId, UserId, now_micros},
    engine::webhooks::{self, HttpsClient},
    error::Error,
    startup::config::HookFailure,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;

/// Hook calls in flight at once, across the node.
pub const CONCURRENT: usize = 256;
/// The largest answer read: anything longer is a failure.
const MAX_ANSWER: usize = 64 * 1024;

/// The configured hook; cheap to clone.
#[derive(Clone)]
pub struct PublishHook {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    secret: String,
    timeout: Duration,
    failure: HookFailure,
    client: HttpsClient,
    places: Semaphore,
}

/// What the hook decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Replace(Content),
}

#[derive(serde::Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    content: Option<String>,
}

impl PublishHook {
    pub fn new(url: String, secret: String, timeout: Duration, failure: HookFailure) -> Self {
        Self {
            inner: Arc::new(Inner {
                url,
                secret,
                timeout,
                failure,
                // The hook is the operator's own service, often on the same
                // host or network: private addresses are expected.
                client: webhooks::https_client(true),
                places: Semaphore::new(CONCURRENT),
            }),
        }
    }

    /// Asks the hook about `content` by `user` in `conversation`.
    pub async fn ask(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        content: &Content,
        max_content_bytes: usize,
    ) -> Result<Verdict, Error> {
        let inner = &self.inner;
        let asked = tokio::time::timeout(inner.timeout, async {
            let _place = inner.places.acquire().await;
            self.call(conversation, user, content).await
        })
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
        let answer = match asked {
            Ok(answer) => answer,
            Err(failure) => return self.failed(&failure),
        };
        match answer.action.as_str() {
            "allow" => Ok(Verdict::Allow),
            "deny" => Err(Error::Denied(match answer.reason.is_empty() {
                true => "denied by the application".into(),
                false => answer.reason,
            })),
            "replace" => match answer.content.map(|c| Content::parse(c, max_content_bytes)) {
                Some(Ok(content)) => Ok(Verdict::Replace(content)),
                _ => self.failed("a replacement herald cannot store"),
            },
            other => self.failed(&format!("an unknown action {other:?}")),
        }
    }

    /// A failed call under the configured policy.
    fn failed(&self, why: &str) -> Result<Verdict, Error> {
        tracing::warn!(why, "the publish hook failed");
        match self.inner.failure {
            HookFailure::Open => Ok(Verdict::Allow),
            HookFailure::Closed => Err(Error::HookFailed),
        }
    }

    async fn call(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        content: &Content,
    ) -> Result<Answer, String> {
        let inner = &self.inner;
        let body = serde_json::json!({
            "conversationId": conversation.as_str(),
            "userId": user.as_str(),
            "content": content.as_str(),
        })
        .to_string();
        let id = format!("hook_{}", crate::domain::random_hex());
        let timestamp = now_micros() / 1_000_000;
        let signature = webhooks::sign(&inner.secret, &id, timestamp, &body)?;
        let request = hyper::Request::post(&inner.url)
            .header("content-type", "application/json")
            .header("user-agent", "herald-publish-hook")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| error.to_string())?;
        let response = inner
            .client
            .request(request)
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status().as_u16()));
        }
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| "an answer too large or cut".to_owned())?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|_| "an answer that is not the hook's JSON".into())
    }
}
