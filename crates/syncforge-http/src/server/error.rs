//! Every refusal as a typed JSON error response: the one place where
//! syncforge's errors become HTTP statuses and error codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use syncforge_core::Error;

use crate::protocol::{ErrorBody, ErrorCode, ErrorDetail};

/// The most bytes of ids a `clock_drift` answer lists. The answer is not
/// counted against the server's room for bodies, and listing every id of
/// a large push stamped ahead (each up to 1 KiB) made it larger than the
/// push itself.
const MAX_LISTED_ID_BYTES: usize = 64 * 1024;

/// The first of `ids` whose JSON text fits in [`MAX_LISTED_ID_BYTES`], at
/// least one.
fn listed_ids(ids: &[String]) -> Vec<String> {
    let mut bytes = 0;
    let listed = ids
        .iter()
        .position(|id| {
            // As written in the answer: quoted, followed by a comma, each
            // `"` and `\` escaped (ids hold no control characters, the
            // only others JSON escapes). Counted raw, ids of quotes took
            // twice the bound.
            let escaped = id.bytes().filter(|b| matches!(b, b'"' | b'\\')).count();
            bytes += id.len() + escaped + 3;
            bytes > MAX_LISTED_ID_BYTES
        })
        .unwrap_or(ids.len())
        .max(1);
    ids.iter().take(listed).cloned().collect()
}

/// A request refused or failed, as the client will see it.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// Boxed: errors travel in every handler's `Result`, rarely taken.
    detail: Box<ErrorDetail>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            detail: Box::new(ErrorDetail::new(code, message)),
        }
    }

    /// Names the position of the refused record in the request.
    pub(crate) fn at_index(mut self, index: usize) -> Self {
        self.detail.index = Some(index);
        self
    }

    #[cfg(test)]
    pub(crate) fn code(&self) -> ErrorCode {
        self.detail.code
    }
}

/// What a client is told when the server's store cannot be reached.
const UNAVAILABLE: &str = "the server's store is unavailable for now: try again later";

/// What a client is told when the server's store failed.
const INTERNAL: &str = "the server's store failed; the server's log says why";

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let mut detail = match &error {
            Error::InvalidRecord { id, field, reason } => {
                let mut detail = ErrorDetail::new(ErrorCode::InvalidRecord, message);
                detail.id.clone_from(id);
                detail.field.clone_from(field);
                detail.reason = Some(reason.clone());
                detail
            }
            Error::InvalidId { id, reason } => {
                let mut detail = ErrorDetail::new(ErrorCode::InvalidId, message);
                detail.id = Some(id.clone());
                detail.reason = Some(reason.clone());
                detail
            }
            Error::InvalidStamp { stamp, reason } => {
                let mut detail = ErrorDetail::new(ErrorCode::InvalidStamp, message);
                detail.stamp = Some(stamp.clone());
                detail.reason = Some(reason.clone());
                detail
            }
            Error::StampAhead {
                stamp,
                ahead_ms,
                max_drift_ms,
            } => {
                let mut detail = ErrorDetail::new(ErrorCode::ClockDrift, message);
                detail.stamp = Some(stamp.clone());
                detail.ahead_ms = Some(*ahead_ms);
                detail.max_drift_ms = Some(*max_drift_ms);
                detail
            }
            Error::ClockDrift {
                ids,
                ahead_ms,
                max_drift_ms,
            } => {
                let mut detail = ErrorDetail::new(ErrorCode::ClockDrift, message);
                detail.ids = listed_ids(ids);
                detail.ahead_ms = Some(*ahead_ms);
                detail.max_drift_ms = Some(*max_drift_ms);
                detail
            }
            Error::InvalidCollection { reason, .. } => {
                let mut detail = ErrorDetail::new(ErrorCode::InvalidCollection, message);
                detail.reason = Some(reason.clone());
                detail
            }
            Error::InvalidArgument { reason, .. } | Error::InvalidConfig { reason, .. } => {
                let mut detail = ErrorDetail::new(ErrorCode::InvalidArgument, message);
                detail.reason = Some(reason.clone());
                detail
            }
            // The engine is closing, or a record kept changing under
            // concurrent writers: the same request later may succeed.
            Error::Closed { .. } | Error::Precondition { .. } => {
                ErrorDetail::new(ErrorCode::Unavailable, message)
            }
            // The store's own failures name its address, files or keys:
            // logged here, and told to the client without them.
            Error::Unavailable { .. } => {
                tracing::warn!(%error, "the store is unavailable");
                ErrorDetail::new(ErrorCode::Unavailable, UNAVAILABLE)
            }
            // Not the request's fault: the one 500.
            _ => {
                tracing::error!(%error, "request failed in the store");
                ErrorDetail::new(ErrorCode::Internal, INTERNAL)
            }
        };
        if detail.code == ErrorCode::Unknown {
            detail.code = ErrorCode::Internal;
        }
        ApiError {
            detail: Box::new(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.detail.code;
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(ErrorBody {
                error: *self.detail,
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        match code {
            ErrorCode::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"syncforge\""),
                );
            }
            ErrorCode::Unavailable | ErrorCode::Timeout => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's failures reach the server's log, not its clients: they
    /// name the store's address, files and keys.
    #[test]
    fn store_failures_are_told_without_the_stores_details() {
        let address = "redis://10.0.0.5:6379/0";
        for (error, code) in [
            (
                Error::unavailable("redis", format!("get at {address}: Connection refused")),
                ErrorCode::Unavailable,
            ),
            (
                Error::storage("fs", format!("writing /var/lib/app/{address}: disk full")),
                ErrorCode::Internal,
            ),
        ] {
            let refused = ApiError::from(error);
            assert_eq!(refused.code(), code);
            assert!(!refused.detail.message.contains(address), "{refused:?}");
        }
        // The request's own faults keep their explanation.
        let refused = ApiError::from(Error::InvalidArgument {
            name: "limit",
            reason: "must be at least 1".to_owned(),
        });
        assert!(refused.detail.message.contains("at least 1"), "{refused:?}");
    }

    /// A push of many records stamped ahead was answered with every id
    /// twice, in the message and in `ids`: for 10,000 ids of 1 KiB, 20 MB
    /// that no room of the server's counted. The answer now names what fits
    /// in 64 KiB, and the message counts them all.
    #[test]
    fn a_drift_answer_lists_what_fits_and_counts_all() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("{i:01024}")).collect();
        let refused = ApiError::from(Error::ClockDrift {
            ids: ids.clone(),
            ahead_ms: 9_000,
            max_drift_ms: 5_000,
        });
        let body = serde_json::to_vec(&ErrorBody {
            error: (*refused.detail).clone(),
        })
        .unwrap();
        assert!(body.len() < 96 * 1024, "{} bytes", body.len());
        // 63 ids of 1,024 bytes, quoted and with their commas, fit in 64 KiB.
        assert_eq!(refused.detail.ids, ids[..63]);
        assert!(refused.detail.message.contains("10000 record(s)"));
        // Ids of quotes, each escaped, listed twice the bound.
        let quotes = vec!["\"".repeat(1024); 10_000];
        let listed = serde_json::to_vec(&listed_ids(&quotes)).unwrap();
        assert!(
            listed.len() <= MAX_LISTED_ID_BYTES,
            "{} bytes",
            listed.len()
        );
        // One id larger than the bound is still named.
        let huge = ["h".repeat(MAX_LISTED_ID_BYTES + 1)];
        assert_eq!(listed_ids(&huge), huge);
    }
}
