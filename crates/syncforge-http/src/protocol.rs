//! The wire protocol, version 1: the JSON bodies the server sends and
//! accepts, the error body and its codes, and the compact form of cursor
//! ranges. `docs/http-protocol.md` specifies the same for clients in other
//! languages; these types are that specification in Rust, shared by the
//! server and the client (`HttpPeer`).
//!
//! Records travel in their canonical JSON form (the `Record` serde form):
//! the content fields, `_version`, `_timestamp`, `_deleted`, `_clientId` and
//! the per-field stamps under `_sync`.

use std::fmt;

use serde::{Deserialize, Serialize};
use syncforge_core::{Cursor, Record};

/// The protocol version this crate speaks: the `/v1` in every route, the
/// `protocol` field of [`Health`] and the value of the
/// [`PROTOCOL_HEADER`] on every response.
pub const PROTOCOL_VERSION: u32 = 1;

/// The response header naming the protocol version (`syncforge-protocol: 1`).
pub const PROTOCOL_HEADER: &str = "syncforge-protocol";

/// The prefix of every route of this protocol version.
pub const ROUTE_PREFIX: &str = "/v1";

/// The most skip ranges one change-feed request may carry.
pub const MAX_SKIP_RANGES: usize = 1024;

/// Why `token` cannot travel as a bearer token (`Authorization: Bearer
/// <token>`), or `None` when it can: a token is a non-empty secret of
/// visible ASCII characters, since a header's value is read trimmed, holds
/// no control character, and is read as ASCII by the server. The client's
/// tokens and the server's follow this one rule.
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) fn bearer_token_fault(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("is empty")
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("holds spaces or control characters (a line end read from a file, say)")
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Some("holds characters other than visible ASCII")
    } else {
        None
    }
}

/// `GET /v1/health`: the server is up; which store it serves and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the server answers.
    pub status: String,
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The id of the served store's change-feed numbering: when it changes,
    /// the server runs on a fresh store and every cursor a client kept for it
    /// is void.
    pub feed_id: String,
    /// What one request may carry.
    pub limits: Limits,
}

/// The server's limits, as [`Health`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most records one sync request may carry.
    pub max_records: usize,
    /// Most changes one feed page holds (a larger `limit` is lowered to it).
    pub max_page: usize,
    /// Longest long-poll wait, in milliseconds (a larger `wait` is lowered).
    pub max_wait_ms: u64,
}

/// `GET /v1/collections`: the collections the caller may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionList {
    /// The served store's feed id (see [`Health::feed_id`]).
    pub feed_id: String,
    /// Names of the collections holding at least one record, sorted.
    pub collections: Vec<String>,
}

/// `GET /v1/collections/{collection}/changes`: a page of the change feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// The served store's feed id: cursors are positions in this feed.
    pub feed_id: String,
    /// The collection read.
    pub collection: String,
    /// Changed records in increasing cursor order, each at its latest change.
    pub changes: Vec<WireChange>,
    /// The cursor to continue from (`after` of the next request).
    pub next: Cursor,
    /// Whether more changes may lie beyond `next`.
    pub more: bool,
}

/// One entry of a [`ChangesResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireChange {
    /// The feed position of the record's latest change.
    pub cursor: Cursor,
    /// The record as it is now, in its canonical JSON form.
    pub record: Record,
}

/// `POST /v1/collections/{collection}/sync`: what merging the pushed
/// records did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The served store's feed id: `echoes` are positions in this feed.
    pub feed_id: String,
    /// The collection synced.
    pub collection: String,
    /// Records that became visible.
    pub added: usize,
    /// Records that changed.
    pub updated: usize,
    /// Records that became deleted.
    pub deleted: usize,
    /// Records that changed nothing.
    pub unchanged: usize,
    /// Concurrent writes the merge met (merged): with the stored state, or
    /// between the push's own records of one id.
    pub conflicts: usize,
    /// Feed positions of the writes that stored exactly a pushed record: the
    /// client holds those states already, so it may leave them out of its
    /// later feed reads (`skip`).
    pub echoes: CursorRanges,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong with a request: a stable code, a message for people, and
/// the record and reason when a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorDetail {
    /// The kind of error; decides the HTTP status.
    pub code: ErrorCode,
    /// A readable explanation.
    pub message: String,
    /// Position of the refused record in the request's `records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Id of the refused record, when it had a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The field (or metadata key) at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Why the record or value was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `clock_drift`: ids of the records whose stamps are too far ahead;
    /// from a syncforge server, the first ones, as many as fit in 64 KiB
    /// (the message counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// `clock_drift`: how far the newest offending stamp is ahead, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead_ms: Option<u64>,
    /// `clock_drift`: the server's allowed drift, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drift_ms: Option<u64>,
    /// `invalid_stamp`, and `clock_drift` of a single stamp (no `ids`): the
    /// stamp refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
}

impl ErrorDetail {
    /// An error of `code` with `message` and nothing else.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorDetail {
            code,
            message: message.into(),
            index: None,
            id: None,
            field: None,
            reason: None,
            ids: Vec::new(),
            ahead_ms: None,
            max_drift_ms: None,
            stamp: None,
        }
    }
}

/// The error codes of protocol version 1. New codes may be added; a client
/// reads one it does not know as [`ErrorCode::Unknown`] and goes by the
/// HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 401: no bearer token, or one the server does not know.
    Unauthorized,
    /// 403: the token may not read (or write) this collection.
    Forbidden,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 413: more records than one request may carry.
    TooManyRecords,
    /// 415: a body that is not `application/json`.
    UnsupportedMediaType,
    /// 400: the body is not JSON, or not of the route's shape.
    MalformedJson,
    /// 400: a query parameter is malformed or out of range.
    InvalidArgument,
    /// 400: `after` is not a change-feed cursor.
    InvalidCursor,
    /// 400: the collection name is empty, too long or has control characters.
    InvalidCollection,
    /// 422: a record is malformed (`index`, `id`, `field`, `reason`).
    InvalidRecord,
    /// 422: a record id is empty, too long or has control characters.
    InvalidId,
    /// 422: a stamp is malformed.
    InvalidStamp,
    /// 422: records carry stamps further ahead of the server's clock than
    /// it allows (`ids`, `ahead_ms`, `max_drift_ms`); the batch was refused.
    ClockDrift,
    /// 503: the request took longer than the server's request timeout.
    Timeout,
    /// 503: the store is unreachable for now, or closed; try again later.
    Unavailable,
    /// 500: the store failed permanently or holds unreadable data.
    Internal,
    /// A code this version does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status the server answers with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge | ErrorCode::TooManyRecords => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::MalformedJson
            | ErrorCode::InvalidArgument
            | ErrorCode::InvalidCursor
            | ErrorCode::InvalidCollection => 400,
            ErrorCode::InvalidRecord
            | ErrorCode::InvalidId
            | ErrorCode::InvalidStamp
            | ErrorCode::ClockDrift => 422,
            ErrorCode::Timeout | ErrorCode::Unavailable => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

/// Sorted, disjoint, inclusive ranges of feed positions: `[[11, 20], [25,
/// 25]]` in JSON, `11-20,25` in a query string.
///
/// Read from JSON through [`CursorRanges::new`]'s checks: ranges out of
/// order, overlapping or ending before they start are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CursorRanges(Vec<[u64; 2]>);

impl<'de> Deserialize<'de> for CursorRanges {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ranges = Vec::<[u64; 2]>::deserialize(deserializer)?;
        CursorRanges::new(ranges).map_err(serde::de::Error::custom)
    }
}

impl CursorRanges {
    /// The ranges covering `cursors`, which may come in any order.
    pub fn from_cursors(cursors: impl IntoIterator<Item = Cursor>) -> Self {
        let mut positions: Vec<u64> = cursors.into_iter().map(Cursor::get).collect();
        positions.sort_unstable();
        positions.dedup();
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for position in positions {
            match ranges.last_mut() {
                Some(last) if last[1].checked_add(1) == Some(position) => last[1] = position,
                _ => ranges.push([position, position]),
            }
        }
        CursorRanges(ranges)
    }

    /// Ranges as given, checked: each `[start, end]` with `start <= end`,
    /// ascending and not overlapping.
    pub fn new(ranges: Vec<[u64; 2]>) -> Result<Self, String> {
        let mut previous: Option<u64> = None;
        for &[start, end] in &ranges {
            if start > end {
                return Err(format!("range {start}-{end} ends before it starts"));
            }
            if previous.is_some_and(|p| start <= p) {
                return Err(format!(
                    "range {start}-{end} is not after the range before it"
                ));
            }
            previous = Some(end);
        }
        Ok(CursorRanges(ranges))
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[[u64; 2]] {
        &self.0
    }

    /// Whether there is no range.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of positions covered.
    pub fn positions(&self) -> u64 {
        self.0
            .iter()
            .map(|[start, end]| (end - start).saturating_add(1))
            .fold(0, u64::saturating_add)
    }

    /// The range holding `position`, if one does.
    pub fn find(&self, position: u64) -> Option<[u64; 2]> {
        let index = self.0.partition_point(|range| range[1] < position);
        self.0
            .get(index)
            .copied()
            .filter(|range| range[0] <= position)
    }

    /// Reads the query-string form: comma-separated `N` or `START-END`,
    /// ascending and disjoint, at most `max_ranges` of them.
    pub fn parse_query(text: &str, max_ranges: usize) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(CursorRanges::default());
        }
        // Counted before anything is kept: the count is the bound.
        let count = text.split(',').count();
        if count > max_ranges {
            return Err(format!(
                "{count} ranges, more than the {max_ranges} one request may carry"
            ));
        }
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{part:?} is not a feed position"));
            }
            part.parse::<u64>()
                .map_err(|_| format!("{part:?} is not a feed position"))
        };
        let ranges = text
            .split(',')
            .map(|item| match item.split_once('-') {
                Some((start, end)) => Ok([number(start)?, number(end)?]),
                None => number(item).map(|position| [position, position]),
            })
            .collect::<Result<Vec<_>, String>>()?;
        CursorRanges::new(ranges)
    }
}

impl fmt::Display for CursorRanges {
    /// The query-string form, `11-20,25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, [start, end]) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_become_merged_ranges() {
        let ranges =
            CursorRanges::from_cursors([5, 3, 4, 9, 11, 10, 4].into_iter().map(Cursor::new));
        assert_eq!(ranges.ranges(), &[[3, 5], [9, 11]]);
        assert_eq!(ranges.positions(), 6);
        assert_eq!(ranges.to_string(), "3-5,9-11");
        assert_eq!(ranges.find(4), Some([3, 5]));
        assert_eq!(ranges.find(6), None);
        assert_eq!(ranges.find(11), Some([9, 11]));
        assert_eq!(ranges.find(12), None);
    }

    #[test]
    fn the_query_form_reads_back_and_bad_forms_are_refused() {
        let ranges = CursorRanges::parse_query("1,3-5,9", 10).unwrap();
        assert_eq!(ranges.ranges(), &[[1, 1], [3, 5], [9, 9]]);
        assert_eq!(ranges.to_string(), "1,3-5,9");
        assert!(CursorRanges::parse_query("", 10).unwrap().is_empty());
        for bad in [
            "5-3",
            "3,1",
            "1-4,4",
            "x",
            "1,,2",
            "-1",
            "1-",
            "+1",
            "99999999999999999999",
        ] {
            assert!(CursorRanges::parse_query(bad, 10).is_err(), "{bad}");
        }
        assert!(CursorRanges::parse_query("1,2,3", 2).is_err());
    }

    #[test]
    fn the_json_form_is_read_through_the_same_checks() {
        let read: CursorRanges = serde_json::from_str("[[1,1],[3,5]]").unwrap();
        assert_eq!(read.ranges(), &[[1, 1], [3, 5]]);
        assert_eq!(serde_json::to_string(&read).unwrap(), "[[1,1],[3,5]]");
        for bad in ["[[5,3]]", "[[3,5],[1,2]]", "[[1,4],[4,6]]"] {
            let refused = serde_json::from_str::<CursorRanges>(bad).unwrap_err();
            assert!(refused.to_string().contains("range"), "{bad}: {refused}");
        }
        let whole: CursorRanges = serde_json::from_str("[[0,18446744073709551615]]").unwrap();
        assert_eq!(whole.positions(), u64::MAX);
    }

    #[test]
    fn error_codes_have_their_statuses_and_unknown_codes_read() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"}}"#).unwrap();
        assert_eq!(body.error.code, ErrorCode::Unknown);
        assert_eq!(ErrorCode::ClockDrift.status(), 422);
        assert_eq!(ErrorCode::Unauthorized.status(), 401);
        let text =
            serde_json::to_string(&ErrorDetail::new(ErrorCode::TooManyRecords, "m")).unwrap();
        assert_eq!(text, r#"{"code":"too_many_records","message":"m"}"#);
    }
}
