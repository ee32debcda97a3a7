//! Extractors whose rejections are problem+json.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, HttpCode};

/// JSON body in, JSON body out; a bad body is a problem+json 400/413/415.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            // serde's message says which field and why ("missing field `query`").
            use std::error::Error as _;
            let detail = e
                .source()
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text());
            ApiError::new(
                HttpCode::Core(engram_core::ErrorCode::InvalidRequest),
                format!("invalid request body: {detail}"),
            )
        }
        JsonRejection::JsonSyntaxError(e) => {
            use std::error::Error as _;
            let detail = e
                .source()
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text());
            ApiError::new(
                HttpCode::MalformedJson,
                format!("request body is not valid JSON: {detail}"),
            )
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            HttpCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    HttpCode::PayloadTooLarge,
                    "request body is larger than the server's limit",
                )
            } else {
                ApiError::invalid(format!(
                    "could not read the request body: {}",
                    e.body_text()
                ))
            }
        }
        other => ApiError::invalid(other.body_text()),
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query string; a bad one is a problem+json 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                use std::error::Error as _;
                let detail = e
                    .source()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text());
                Err(ApiError::invalid(format!("invalid query string: {detail}")))
            }
            Err(other) => Err(ApiError::invalid(other.body_text())),
        }
    }
}

/// A memory id in the path; a malformed one is a problem+json 400.
pub struct MemoryIdPath(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for MemoryIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid(e.body_text()))?;
        raw.parse()
            .map(MemoryIdPath)
            .map_err(|_| ApiError::invalid(format!("`{raw}` is not a memory id (a UUID)")))
    }
}

/// An API key id in the path; anything but 16 hex digits is a problem+json 404.
pub struct KeyIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid(e.body_text()))?;
        if raw.len() == 16 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(KeyIdPath(raw))
        } else {
            Err(ApiError::new(
                HttpCode::Core(engram_core::ErrorCode::NotFound),
                format!("API key {raw} not found (key ids are 16 hex digits)"),
            ))
        }
    }
}

/// A webhook id in the path; anything but a UUID is a problem+json 404.
pub struct WebhookIdPath(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for WebhookIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid(e.body_text()))?;
        raw.parse().map(WebhookIdPath).map_err(|_| {
            ApiError::new(
                HttpCode::Core(engram_core::ErrorCode::NotFound),
                format!("webhook {raw} not found (webhook ids are UUIDs)"),
            )
        })
    }
}
