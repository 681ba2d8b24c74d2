//! Who is calling over HTTP. The token comes from, in this order:
//! `Authorization: Bearer <token>`; the `herald_token` cookie (set it
//! `Secure; HttpOnly; SameSite=Strict`); the `?token=` query parameter, which
//! browsers' EventSource needs since it cannot set headers. Verification
//! itself is [`Auth::verify_for`], shared with gRPC.
//!
//! [`Caller`] refuses stream tickets; [`StreamCaller`], used only by the SSE
//! stream, accepts them.

use super::AppState;
use crate::{
    auth::{Claims, Use, bearer},
    error::Error,
};
use axum::{
    extract::{FromRequestParts, Query},
    http::{
        header::{AUTHORIZATION, COOKIE, HOST, ORIGIN},
        request::Parts,
    },
};
use serde::Deserialize;

/// The cookie herald reads a token from.
pub const TOKEN_COOKIE: &str = "herald_token";

/// The verified caller of an API request.
pub struct Caller(pub Claims);

/// The verified caller of the SSE stream (a stream ticket will do). A
/// ticket is not used up here: the stream redeems it once it knows it will
/// serve the request, so a refused request does not burn it.
pub struct StreamCaller(pub Claims);

#[derive(Deserialize)]
struct TokenParam {
    token: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        authenticate(parts, state, Use::Api).map(Caller)
    }
}

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        authenticate(parts, state, Use::Stream).map(StreamCaller)
    }
}

fn authenticate(parts: &Parts, state: &AppState, usage: Use) -> Result<Claims, Error> {
    let token = match parts.headers.get(AUTHORIZATION) {
        // A header that is present decides, even when it is wrong.
        Some(header) => header.to_str().ok().and_then(bearer).map(str::to_owned),
        None => match cookie(parts) {
            Some(token) => {
                same_origin_or_allowed(parts, &state.origins)?;
                Some(token)
            }
            None => Query::<TokenParam>::try_from_uri(&parts.uri)
                .ok()
                .and_then(|Query(param)| param.token),
        },
    };
    match token {
        Some(token) => state.auth.verify_for(&token, usage),
        None => Err(state.auth.refuse_missing()),
    }
}

/// A browser sends the cookie with requests that other sites' pages make;
/// a request that changes state on the cookie's strength must come from
/// herald's own origin or one allowed by `--cors-origin` (never `*`).
fn same_origin_or_allowed(parts: &Parts, allowed: &[String]) -> Result<(), Error> {
    if parts.method.is_safe() {
        return Ok(());
    }
    let origin = parts
        .headers
        .get(ORIGIN)
        .and_then(|value| value.to_str().ok());
    // HTTP/1.1 names the host in `Host`; HTTP/2 in `:authority`, which
    // hyper puts in the URI.
    let host = parts
        .headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()));
    let own = |origin: &str| {
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        authority.is_some() && authority == host
    };
    match origin {
        Some(origin) if own(origin) || allowed.iter().any(|a| a == origin) => Ok(()),
        _ => {
            tracing::debug!(
                ?origin,
                "cookie refused: a state-changing request from another origin"
            );
            Err(Error::Unauthenticated)
        }
    }
}

/// The token in the `herald_token` cookie, if any.
fn cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == TOKEN_COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}
