//! Every error the API answers: JSON `{error, message}` with the status that fits, and for an
//! invalid task the same located diagnostics `maxions validate` prints.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::Diagnostic;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    diagnostics: Vec<DiagnosticView>,
}

/// The body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `invalid_task`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict`, `too_large`, `unsupported_media_type`, `unavailable`,
    /// `internal`.
    pub error: String,
    /// What went wrong and what to do, in words.
    pub message: String,
    /// For `invalid_task`: every problem, located in the submitted file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<DiagnosticView>,
}

/// One problem `maxions validate` found, as `--format json` gives it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiagnosticView {
    pub file: String,
    /// 1-based; absent when the problem has no position.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// `error` or `warning`.
    pub severity: String,
    /// A stable kebab-case identifier, e.g. `unknown-field`.
    pub code: String,
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl From<&Diagnostic> for DiagnosticView {
    fn from(d: &Diagnostic) -> Self {
        Self {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            severity: if d.is_error() { "error" } else { "warning" }.to_owned(),
            code: d.code.to_owned(),
            message: d.message.clone(),
            hint: d.hint.clone(),
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            diagnostics: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn invalid_task(message: impl Into<String>, diagnostics: Vec<DiagnosticView>) -> Self {
        Self {
            diagnostics,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_task", message)
        }
    }

    /// An unknown run id, said the same way everywhere.
    pub fn no_run(id: &str) -> Self {
        Self::not_found(format!(
            "no run has the id `{}` (see GET /maxions)",
            crate::cli::terminal::printable(id)
        ))
    }
}

impl From<crate::daemon::handle::Refusal> for ApiError {
    fn from(refusal: crate::daemon::handle::Refusal) -> Self {
        use crate::daemon::handle::Refusal;
        let message = refusal.to_string();
        match refusal {
            Refusal::NotActive(id) => Self::no_run(&id),
            Refusal::Busy(..) | Refusal::TaskGone(_) => Self::conflict(message),
            Refusal::Invalid(_, validation) => Self {
                status: StatusCode::CONFLICT,
                ..Self::invalid_task(
                    message,
                    validation.diagnostics.iter().map(Into::into).collect(),
                )
            },
            Refusal::Stopping => Self::unavailable(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
            diagnostics: self.diagnostics,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route `{}`; the routes are in GET /openapi.json",
        crate::cli::terminal::printable(uri.path())
    ))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "`{method}` is not allowed on `{}`; see GET /openapi.json",
            crate::cli::terminal::printable(uri.path())
        ),
    )
}

/// Maps an extractor's rejection (a malformed query, body or header) to a JSON error.
pub fn rejection(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = rejection.to_string();
    let status = rejection.into_response().status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "the request body is larger than {} KiB",
            super::BODY_LIMIT / 1024
        )
    } else {
        message
    };
    ApiError::new(status, code, message)
}
