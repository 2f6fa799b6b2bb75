//! The error every endpoint answers with: an HTTP status and an [`ErrorBody`] with a stable
//! code, in CBOR or JSON as the client accepts.

use entidb_sync::wire::{ErrorBody, ErrorCode};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            body: ErrorBody {
                code,
                message: message.into(),
                oldest_cursor: None,
            },
        }
    }

    /// A server fault; the message is logged, the client sees a generic one.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(%message, "internal error");
        ApiError::new(
            ErrorCode::Internal,
            "internal server error (see the server log)",
        )
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> u16 {
        match self.body.code {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::BadRequest | ErrorCode::MalformedBody | ErrorCode::TooManyOps => 400,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::NotAcceptable => 406,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Rebootstrap => 410,
            ErrorCode::Unavailable => 503,
            _ => 500,
        }
    }

    /// Maps an engine error: bad input is the client's fault, everything else the server's.
    pub fn engine(e: &entidb::Error) -> ApiError {
        match e {
            entidb::Error::Document(_)
            | entidb::Error::InvalidCollectionName { .. }
            | entidb::Error::InvalidArgument(_) => {
                ApiError::new(ErrorCode::BadRequest, e.to_string())
            }
            entidb::Error::TooLarge { .. } => {
                ApiError::new(ErrorCode::PayloadTooLarge, e.to_string())
            }
            entidb::Error::FeedTruncated { oldest, .. } => ApiError {
                body: ErrorBody {
                    code: ErrorCode::Rebootstrap,
                    message: format!(
                        "the oplog no longer holds this cursor (oldest retained: {oldest}); bootstrap again"
                    ),
                    oldest_cursor: Some(*oldest),
                },
            },
            entidb::Error::Closed => ApiError::new(
                ErrorCode::Unavailable,
                "the database is closing; retry later",
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.body.code, self.body.message)
    }
}

impl std::error::Error for ApiError {}
