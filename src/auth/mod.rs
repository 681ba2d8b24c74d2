//! Who is calling: JWT verification, written once ([`Auth::verify`]) and
//! adapted by each transport (a tonic interceptor, an axum extractor).
//!
//! Every rejection gives the client the same [`Error::Unauthenticated`];
//! the reason goes to the debug log, never the token itself.

use crate::{
    domain::{
        UserId,
        moderation::{self, Standing},
    },
    error::Error,
    startup::start::StartError,
};
use jsonwebtoken::{Algorithm, Header};
use keys::Keys;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Clock-skew allowance when checking `exp`. Streams also end this long
/// after their token's `exp` at the latest.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// The longest a stream lasts, whatever its token's `exp` says.
pub const MAX_STREAM: Duration = Duration::from_secs(366 * 24 * 3600);

/// The shortest HS256 secret herald accepts (RFC 7518: at least the hash's
/// 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Claims {
    pub user: UserId,
    /// When the token stops being valid, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// When it was issued (`iat`), if it says: a revocation refuses tokens
    /// issued before it, and those that do not say.
    pub issued_at: Option<u64>,
    /// Set when the token is a stream ticket, which opens one stream only.
    pub ticket: Option<Ticket>,
    /// The request's place among its user's requests in flight (see
    /// [`crate::engine::limits::REQUESTS_PER_USER`]): held while any copy of these
    /// claims lives, which the doors keep for the request's length.
    pub(crate) _request: Option<Arc<crate::engine::limits::InFlightSlot>>,
}

/// A stream ticket's identity: redeemed once, across every node (see
/// `Herald::redeem`).
#[derive(Clone, Debug)]
pub struct Ticket {
    pub id: String,
    /// When the ticket itself expires; it need not be remembered after.
    pub expires_at: u64,
}

impl Claims {
    /// How long from now until a stream opened with this token must end;
    /// any `exp`, however far, is clamped to [`MAX_STREAM`].
    pub fn remaining(&self) -> Duration {
        let left = self
            .expires_at
            .saturating_add(LEEWAY.as_secs())
            .saturating_sub(unix_now());
        Duration::from_secs(left).min(MAX_STREAM)
    }
}

/// The `aud` of a stream ticket: a token good only for opening the SSE stream.
pub const STREAM_AUDIENCE: &str = "herald-stream";
/// How long a stream ticket can open a stream.
pub const TICKET_TTL: Duration = Duration::from_secs(60);

/// The claims herald reads and writes.
#[derive(Serialize, Deserialize)]
struct Wire {
    sub: String,
    exp: u64,
    /// Any JWT audience: a string or a list; only [`STREAM_AUDIENCE`] means
    /// something to herald.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
    /// On a stream ticket: when the token it was issued for expires, which is
    /// when a stream it opened must end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_exp: Option<u64>,
    /// On a stream ticket: its id, so it opens one stream only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// When it was issued; on a stream ticket, when the token it was issued
    /// for was, so revoking that token revokes the ticket and its stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

impl Wire {
    fn is_ticket(&self) -> bool {
        match &self.aud {
            Some(serde_json::Value::String(aud)) => aud == STREAM_AUDIENCE,
            Some(serde_json::Value::Array(auds)) => auds.iter().any(|aud| aud == STREAM_AUDIENCE),
            _ => false,
        }
    }
}

/// What a token may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Any call: stream tickets are refused.
    Api,
    /// Opening the SSE stream: stream tickets are welcome.
    Stream,
}

mod keys;
pub mod service;

pub use keys::IdentityConfig;
use service::{KeyRing, Service};

/// Verifies and mints tokens; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    keys: Arc<Keys>,
    guard: Arc<Guard>,
    refused: Arc<[AtomicU64; Refusal::ALL.len()]>,
    in_flight: crate::engine::limits::InFlight,
}

/// What a node checks on every call besides signatures, in memory: the
/// bans and revocations in force and the active service keys, kept up to
/// date from the store by `engine::moderation` (so a check never costs a
/// database read).
#[derive(Debug, Default)]
pub struct Guard {
    pub standing: RwLock<Standing>,
    pub keys: RwLock<KeyRing>,
}

impl Guard {
    /// Whether a call by `user` with a token issued at `issued_at` is
    /// refused now.
    pub fn refuses(&self, user: &UserId, issued_at: Option<u64>) -> Option<moderation::Refusal> {
        let standing = self
            .standing
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        if standing.is_empty() {
            return None;
        }
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        standing.refuses(user, issued_at, now)
    }
}

/// Why a token was refused, as counted for `/metrics` (never told to the
/// client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Signature,
    Expired,
    Algorithm,
    Claims,
    /// Issued before a revocation of the user's tokens.
    Revoked,
    /// A service key that is not (or no longer) active.
    UnknownKey,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Signature,
        Refusal::Expired,
        Refusal::Algorithm,
        Refusal::Claims,
        Refusal::Revoked,
        Refusal::UnknownKey,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::Algorithm => "algorithm",
            Refusal::Claims => "claims",
            Refusal::Revoked => "revoked",
            Refusal::UnknownKey => "unknown_key",
        }
    }
}

impl Auth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(secret, &IdentityConfig::default()).expect("an HS256 secret needs no files")
    }

    /// HS256 with `secret` (herald's own tokens and stream tickets), plus
    /// an identity provider's keys when `identity` names them.
    pub fn new(secret: &[u8], identity: &IdentityConfig) -> Result<Self, StartError> {
        Ok(Self {
            keys: Arc::new(Keys::load(secret, identity)?),
            guard: Arc::default(),
            refused: Arc::default(),
            in_flight: Default::default(),
        })
    }

    /// Verifies `token` for any call. Every failure is the same
    /// [`Error::Unauthenticated`].
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        self.verify_for(token, Use::Api)
    }

    /// Verifies `token` for `usage`: a stream ticket opens only the stream,
    /// which then lasts as long as the token the ticket was issued for.
    pub fn verify_for(&self, token: &str, usage: Use) -> Result<Claims, Error> {
        if token.len() > MAX_TOKEN_BYTES {
            tracing::debug!(bytes = token.len(), "token refused: too long");
            return Err(self.refuse(Refusal::Malformed));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            tracing::debug!(reason = ?error.kind(), "token refused");
            self.refuse(reason_of(error.kind()))
        })?;
        let (key, rules) = self.keys.for_header(&header).map_err(|reason| {
            tracing::debug!(reason = reason.as_str(), alg = ?header.alg, "token refused: no key fits");
            self.refuse(reason)
        })?;
        let data = jsonwebtoken::decode::<Wire>(token, &key, &rules).map_err(|error| {
            tracing::debug!(reason = ?error.kind(), "token refused");
            self.refuse(reason_of(error.kind()))
        })?;
        let user = UserId::parse("sub", &data.claims.sub).map_err(|error| {
            tracing::debug!(reason = %error, "token refused: bad sub claim");
            self.refuse(Refusal::Claims)
        })?;
        let claims = data.claims;
        // Issued in the future (past the leeway) is no token herald or a
        // sane provider makes, and would outlive any revocation.
        if claims
            .iat
            .is_some_and(|iat| iat > unix_now().saturating_add(LEEWAY.as_secs()))
        {
            tracing::debug!("token refused: issued in the future");
            return Err(self.refuse(Refusal::Claims));
        }
        match self.guard.refuses(&user, claims.iat) {
            None => {}
            Some(moderation::Refusal::Banned(reason)) => return Err(Error::Banned(reason)),
            Some(moderation::Refusal::Revoked) => {
                tracing::debug!("token refused: revoked");
                return Err(self.refuse(Refusal::Revoked));
            }
        }
        let issued_at = claims.iat;
        let (expires_at, ticket) = match (claims.is_ticket(), usage) {
            (false, _) => (claims.exp, None),
            (true, Use::Stream) => {
                let ticket = Ticket {
                    id: claims.jti.unwrap_or_default(),
                    expires_at: claims.exp,
                };
                (claims.session_exp.unwrap_or(claims.exp), Some(ticket))
            }
            (true, Use::Api) => {
                tracing::debug!("token refused: a stream ticket used for another call");
                return Err(self.refuse(Refusal::Claims));
            }
        };
        let Some(slot) = self.in_flight.enter(&user) else {
            return Err(Error::ResourceExhausted(
                "too many requests in flight for this user".into(),
            ));
        };
        Ok(Claims {
            user,
            expires_at,
            issued_at,
            ticket,
            _request: Some(Arc::new(slot)),
        })
    }

    /// A stream ticket for `claims`' user: opens the SSE stream within
    /// `TICKET_TTL`, and the stream lasts until `claims` expire.
    pub fn ticket(&self, claims: &Claims) -> (String, u64) {
        let exp = unix_now()
            .saturating_add(TICKET_TTL.as_secs())
            .min(claims.expires_at);
        let wire = Wire {
            sub: claims.user.to_string(),
            exp,
            aud: Some(serde_json::Value::String(STREAM_AUDIENCE.into())),
            session_exp: Some(claims.expires_at),
            jti: Some(crate::domain::random_hex()),
            iat: claims.issued_at,
        };
        (self.sign(&wire), exp)
    }

    /// Verifies a service key (`Bearer hk_...`) for the Admin service. An
    /// unknown or revoked key is the same [`Error::Unauthenticated`] as a
    /// bad token.
    pub fn verify_key(&self, key: &str) -> Result<Service, Error> {
        if !key.starts_with(service::KEY_PREFIX) {
            tracing::debug!("service key refused: not a service key");
            return Err(self.refuse(Refusal::Malformed));
        }
        let keys = self
            .guard
            .keys
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        keys.find(key).ok_or_else(|| {
            tracing::debug!("service key refused: unknown or revoked");
            self.refuse(Refusal::UnknownKey)
        })
    }

    /// What this node checks in memory, for `engine::moderation` to keep
    /// up to date.
    pub fn guard(&self) -> Arc<Guard> {
        self.guard.clone()
    }

    /// Counts a request that came with no token at all.
    pub fn refuse_missing(&self) -> Error {
        tracing::debug!("token refused: none given");
        self.refuse(Refusal::Missing)
    }

    /// Refusals so far, by reason.
    /// Registers the refused tokens, by reason.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let refused = Family::<Reason, Counter>::default();
        for (reason, count) in Refusal::ALL.iter().zip(self.refused.iter()) {
            let reason = reason.as_str();
            refused
                .get_or_create(&Reason { reason })
                .inc_by(count.load(Ordering::Relaxed));
        }
        registry.register("auth_failures", "Refused tokens, by reason", refused);
    }

    fn refuse(&self, reason: Refusal) -> Error {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        Error::Unauthenticated
    }

    /// Mints a token for `user` valid for `ttl`.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> String {
        let wire = Wire {
            sub: user.to_string(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            aud: None,
            session_exp: None,
            jti: None,
            iat: Some(unix_now()),
        };
        self.sign(&wire)
    }

    fn sign(&self, wire: &Wire) -> String {
        // HS256 signing with an HMAC key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), wire, &self.keys.encoding)
            .expect("HS256 signing failed")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The metrics reason of a jsonwebtoken failure.
fn reason_of(kind: &jsonwebtoken::errors::ErrorKind) -> Refusal {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => Refusal::Signature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::ImmatureSignature => Refusal::Claims,
        _ => Refusal::Malformed,
    }
}

/// Extracts the token from an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The label of `herald_auth_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_and_names_its_user() {
        let auth = Auth::hs256(b"secret");
        let alice = UserId::parse("sub", "alice").unwrap();
        let claims = auth
            .verify(&auth.mint(&alice, Duration::from_secs(60)))
            .unwrap();
        assert_eq!(claims.user, alice);
        assert!(claims.remaining() > Duration::from_secs(60));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let alice = UserId::parse("sub", "alice").unwrap();
        let token = Auth::hs256(b"other").mint(&alice, Duration::from_secs(60));
        assert!(matches!(
            Auth::hs256(b"secret").verify(&token),
            Err(Error::Unauthenticated)
        ));
    }

    #[test]
    fn a_stream_ticket_opens_only_the_stream_which_lasts_the_session() {
        let auth = Auth::hs256(b"secret");
        let alice = UserId::parse("sub", "alice").unwrap();
        let session = auth
            .verify(&auth.mint(&alice, Duration::from_secs(3600)))
            .unwrap();
        let (ticket, exp) = auth.ticket(&session);
        assert!(exp < session.expires_at);
        assert!(auth.verify(&ticket).is_err(), "not for API calls");
        let stream = auth.verify_for(&ticket, Use::Stream).unwrap();
        assert_eq!(stream.user, alice);
        assert_eq!(stream.expires_at, session.expires_at);
    }

    #[test]
    fn bearer_takes_the_token_after_the_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
