//! problem+json (RFC 9457) errors.
//!
//! One table ([`status_of`]) maps each core [`ErrorCode`] to an HTTP status;
//! every 4xx and 5xx the server sends — including malformed bodies, unknown
//! routes and oversized requests — has the same shape:
//!
//! ```json
//! {"type": "urn:engram:problem:invalid_filter", "title": "Invalid filter", "status": 400,
//!  "detail": "unknown operator `like` at `filters.user_id`; …", "code": "invalid_filter",
//!  "request_id": "…"}
//! ```
//!
//! A 5xx says only "internal error"; the cause goes to the log with the request id.
//!
//! The same table serves every transport: the Mem0 routes answer with its
//! status and code in Mem0's JSON shape ([`crate::mem0`]), and an MCP tool
//! reports a failure whose status is a 4xx with its message and anything
//! else as an internal error ([`ApiError::public_detail`]).

#![deny(clippy::wildcard_enum_match_arm)]

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engram_core::{Error, ErrorCode};
use serde::Serialize;
use utoipa::ToSchema;

/// The problem+json body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:engram:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case error code.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// HTTP-level codes that have no core equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpCode {
    Core(ErrorCode),
    MalformedJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    RouteNotFound,
    MethodNotAllowed,
    Timeout,
    RateLimited,
    /// The `Host` header names a host this server does not answer to.
    HostNotAllowed,
    /// A web page's origin that may not call this server.
    OriginNotAllowed,
}

impl HttpCode {
    /// The stable snake_case code clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpCode::Core(c) => c.as_str(),
            HttpCode::MalformedJson => "malformed_json",
            HttpCode::UnsupportedMediaType => "unsupported_media_type",
            HttpCode::PayloadTooLarge => "payload_too_large",
            HttpCode::RouteNotFound => "route_not_found",
            HttpCode::MethodNotAllowed => "method_not_allowed",
            HttpCode::Timeout => "timeout",
            HttpCode::RateLimited => "rate_limited",
            HttpCode::HostNotAllowed => "host_not_allowed",
            HttpCode::OriginNotAllowed => "origin_not_allowed",
        }
    }
}

/// The status table. No wildcard arm (denied for this module): a new code
/// must be placed here deliberately.
pub fn status_of(code: HttpCode) -> StatusCode {
    match code {
        HttpCode::Core(c) => match c {
            ErrorCode::InvalidRequest | ErrorCode::InvalidFilter | ErrorCode::MissingScope => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::EmbeddingModelMismatch | ErrorCode::ModelSwitched => StatusCode::CONFLICT,
            ErrorCode::LimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::StoreFailure | ErrorCode::EmbedderFailure | ErrorCode::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ErrorCode::LlmUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LlmFailure => StatusCode::BAD_GATEWAY,
        },
        HttpCode::MalformedJson => StatusCode::BAD_REQUEST,
        HttpCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        HttpCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        HttpCode::RouteNotFound => StatusCode::NOT_FOUND,
        HttpCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        HttpCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        HttpCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        HttpCode::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
        HttpCode::OriginNotAllowed => StatusCode::FORBIDDEN,
    }
}

/// An error on its way to becoming a problem+json response.
#[derive(Debug)]
pub struct ApiError {
    pub code: HttpCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: HttpCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(HttpCode::Core(ErrorCode::InvalidRequest), detail)
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    /// Whether the caller caused it (a 4xx): its detail is then theirs to read.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// What a client may be told: the detail of a 4xx; for anything else a
    /// generic text, with the real cause logged under the request's id.
    pub fn public_detail(self) -> String {
        if self.is_client_error() {
            return self.detail;
        }
        tracing::error!(code = self.code.as_str(), detail = %self.detail, "internal error");
        "internal error; the server log has details under this request's id".to_owned()
    }

    /// Seconds after which the same request may succeed (`Retry-After`).
    pub fn retry_after(&self) -> Option<&'static str> {
        if self.code == HttpCode::Core(ErrorCode::ModelSwitched) {
            Some("1")
        } else if self.code == HttpCode::Core(ErrorCode::QueueFull) {
            Some("10")
        } else {
            None
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError {
            code: HttpCode::Core(e.code),
            detail: e.message,
        }
    }
}

fn title(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_owned()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code;
        let retry_after = self.retry_after();
        let body = Problem {
            kind: format!("urn:engram:problem:{}", code.as_str()),
            title: title(status),
            status: status.as_u16(),
            detail: self.public_detail(),
            code: code.as_str().to_owned(),
            request_id: crate::request_id::current(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            // Transient: the same request succeeds when sent again.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}
