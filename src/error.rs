//! The one error type of herald's core, mapped once to a gRPC status (here)
//! and once to an HTTP response (in `http`).
//!
//! Clients get fixed, safe messages; causes of internal failures go to the
//! log, never to the client.

use std::sync::Arc;
use tonic::{Code, Status};

/// The message of every authentication failure, whatever the reason, so a
/// client cannot probe why a token was refused.
pub const UNAUTHENTICATED: &str = "missing or invalid token";

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// No token, or a token that does not verify.
    #[error("{UNAUTHENTICATED}")]
    Unauthenticated,
    /// The caller is not a participant of the conversation.
    #[error("not a participant of this conversation")]
    PermissionDenied,
    /// A participant asked for what only someone else may do; the message
    /// says who.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The caller is banned (`Admin.BanUser`); the message says why.
    #[error("you are banned{}", reason_suffix(.0))]
    Banned(String),
    /// The application's publish hook refused the message; its reason.
    #[error("{0}")]
    Denied(String),
    /// The publish hook failed and its policy is `closed`.
    #[error("the publish hook failed; try again")]
    HookFailed,
    /// A well-formed id that names nothing; the field says which kind.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Malformed input: the message says what is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The call does not apply to this resource as it is (changing the
    /// participants of a one-to-one conversation).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A rate or connection limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A resume point that cannot be replayed from.
    #[error("{0}")]
    ResumeImpossible(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The database failed; the cause is logged, not returned. Shared, so
    /// one failed commit can be every writer's answer.
    #[error("database unavailable")]
    Database(Arc<sqlx::Error>),
}

fn reason_suffix(reason: &str) -> String {
    match reason.is_empty() {
        true => String::new(),
        false => format!(": {reason}"),
    }
}

impl From<sqlx::Error> for Error {
    fn from(cause: sqlx::Error) -> Self {
        Self::Database(Arc::new(cause))
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Logs what the client will not see: the cause of a database failure.
    pub(crate) fn log_cause(&self) {
        if let Self::Database(cause) = self {
            tracing::error!(error = %cause, "database call failed");
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.log_cause();
        let code = match &error {
            Error::Unauthenticated => Code::Unauthenticated,
            Error::PermissionDenied | Error::Forbidden(_) | Error::Banned(_) | Error::Denied(_) => {
                Code::PermissionDenied
            }
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::ResumeImpossible(_) => Code::OutOfRange,
            Error::ShuttingDown | Error::Database(_) | Error::HookFailed => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}
