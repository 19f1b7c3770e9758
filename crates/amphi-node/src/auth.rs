//! Who is asking: the token a request carries, before it is verified (the
//! space it is good for comes from the path). Verification and roles are
//! the room core's and the node state's business.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::error::ApiError;

/// The bearer token of a request (header, or `?token=`).
pub fn bearer(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    token_from_query(parts.uri.query())
}

/// `token=` from a query string.
pub fn token_from_query(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| t.to_owned())
}

/// A request's token, present but not yet verified (verification needs the
/// space from the path).
pub struct Token(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Token {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        bearer(parts)
            .filter(|t| !t.is_empty())
            .map(Token)
            .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Token {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        Ok(bearer(parts).filter(|t| !t.is_empty()).map(Token))
    }
}
