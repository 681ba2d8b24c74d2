//! Who is calling over HTTP: `Authorization: Bearer <token>`, or `?token=`
//! for browsers' EventSource, which cannot set headers. The header wins when
//! both are present. Verification itself is [`Auth::verify`], shared with gRPC.

use super::AppState;
use crate::{
    auth::{Claims, bearer},
    error::Error,
};
use axum::{
    extract::{FromRequestParts, Query},
    http::{header::AUTHORIZATION, request::Parts},
};
use serde::Deserialize;

/// The verified caller of a request.
pub struct Caller(pub Claims);

#[derive(Deserialize)]
struct TokenParam {
    token: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = match parts.headers.get(AUTHORIZATION) {
            Some(header) => header.to_str().ok().and_then(bearer).map(str::to_owned),
            None => Query::<TokenParam>::try_from_uri(&parts.uri)
                .ok()
                .and_then(|Query(param)| param.token),
        };
        let Some(token) = token else {
            return Err(state.auth.refuse_missing());
        };
        state.auth.verify(&token).map(Caller)
    }
}
