//! Errors: [`QueryError`], why the API cannot start, and [`ApiError`],
//! what a request is answered when it cannot be served.
//!
//! Every error answer has the same JSON body, `{"error": "<code>",
//! "detail": "<sentence>"}` (plus `"parameter"` for a bad parameter), so
//! a client can branch on `error` and show `detail`. A database failure is
//! logged with PostgreSQL's description and answered without it: the
//! detail of a server error is not the client's business.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetpipe_postgres::PostgresError;
use serde::Serialize;
use utoipa::ToSchema;

/// Why the query API cannot start. Messages are one line and name the key.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A key of `[api]` is out of its domain.
    #[error("api.{key} {reason}")]
    Config {
        /// The key within `[api]`, e.g. `tokens[0].sha256`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The connection settings are refused, or a TLS file does not load.
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    /// The connection pool could not be built.
    #[error("api: connection pool: {0}")]
    Pool(String),
    /// The share-link table could not be created or checked.
    #[error("api: {step}: {detail}")]
    Database {
        /// What was being done.
        step: &'static str,
        /// PostgreSQL's description.
        detail: String,
    },
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_parameter`, `unauthorized`, `forbidden`,
    /// `not_found`, `unavailable`, `internal`.
    pub error: &'static str,
    /// The query parameter (or body field) at fault, for `bad_parameter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// What went wrong, in a sentence.
    pub detail: String,
}

/// A request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a parameter (or the body) is malformed or out of range.
    #[error("parameter {parameter}: {detail}")]
    BadParameter {
        /// The parameter, e.g. `bbox`.
        parameter: String,
        /// Why.
        detail: String,
    },
    /// 401: no token, an unknown one, or a share link that expired or was
    /// revoked.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// 403: the token is valid but this kind of request is not for it (a
    /// share link listing the fleet). Never for another vehicle: that is
    /// [`ApiError::NotFound`], so existence is not revealed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// 404: no such vehicle or share link, or one the token may not see.
    #[error("not found: {0}")]
    NotFound(String),
    /// 503: the database could not be reached or did not answer in time.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500: a query failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    /// A bad `parameter`.
    pub fn bad(parameter: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::BadParameter {
            parameter: parameter.into(),
            detail: detail.into(),
        }
    }

    /// A failed query: a timeout or a lost connection is 503 (try again),
    /// anything else 500.
    pub(crate) fn database(e: &tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let detail = fleetpipe_postgres::describe(e);
        let transient = e.is_closed()
            || e.code().is_some_and(|c| {
                [
                    SqlState::QUERY_CANCELED,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(c)
            });
        if transient {
            ApiError::Unavailable(detail)
        } else {
            ApiError::Internal(detail)
        }
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        let (error, parameter, detail) = match self {
            ApiError::BadParameter { parameter, detail } => {
                ("bad_parameter", Some(parameter.clone()), detail.clone())
            }
            ApiError::Unauthorized(why) => ("unauthorized", None, (*why).to_owned()),
            ApiError::Forbidden(why) => ("forbidden", None, (*why).to_owned()),
            ApiError::NotFound(what) => ("not_found", None, what.clone()),
            ApiError::Unavailable(_) => (
                "unavailable",
                None,
                "the database did not answer; try again".to_owned(),
            ),
            ApiError::Internal(_) => ("internal", None, "the query failed".to_owned()),
        };
        ErrorBody {
            error,
            parameter,
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(detail) | ApiError::Internal(detail) => {
                tracing::warn!(status = self.status().as_u16(), error = %detail, "api: query failed");
            }
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fleetpipe\""),
            );
        }
        response
    }
}
