//! The one error type of syncforge.
//!
//! Every refusal names the record, id or value it refused and why. Backends map
//! their private errors into the storage variants ([`Error::Unavailable`],
//! [`Error::Storage`], [`Error::Corrupt`]) in one place each, so that the
//! engine can tell a transient outage (retried) from bad input and permanent
//! failures (never retried).

use std::error::Error as StdError;
use std::sync::Arc;

/// A boxed error from a backend's own client library: what the error
/// constructors take.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An underlying error kept inside an [`Error`]: shared, so that an `Error`
/// can be cloned (events hand one error to many receivers).
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Result alias used throughout syncforge.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in syncforge.
///
/// Refusals of input (`Invalid*`, [`ClockDrift`](Error::ClockDrift),
/// [`StampAhead`](Error::StampAhead)) wrote nothing and are never retried.
/// Storage failures are mapped by each backend, in one place, into
/// [`Unavailable`](Error::Unavailable) (transient: the engine retries it),
/// [`Storage`](Error::Storage) (permanent) and [`Corrupt`](Error::Corrupt)
/// (stored data that cannot be read).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A record (or something offered as one) is malformed. Nothing was written.
    #[error("invalid record {}{}: {reason}", display_id(.id), display_field(.field))]
    InvalidRecord {
        /// The record's id, when it had a readable one.
        id: Option<String>,
        /// The field (or metadata key) at fault, when one is.
        field: Option<String>,
        /// What is wrong with it.
        reason: String,
    },

    /// A record id is empty, too long or contains control characters.
    #[error("invalid record id {id:?}: {reason}")]
    InvalidId {
        /// The refused id (shortened when very long).
        id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A collection name is empty, too long or contains control characters.
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidCollection {
        /// The refused name (shortened when very long).
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A stamp (or its string form) is malformed or out of range.
    #[error("invalid stamp {stamp:?}: {reason}")]
    InvalidStamp {
        /// The refused stamp as given (shortened when very long).
        stamp: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Records of a sync batch carry stamps further in the future than the
    /// allowed clock drift. The whole batch was refused; nothing was written.
    #[error(
        "clock drift: {} record(s) carry stamps up to {ahead_ms} ms ahead of local time \
         (limit {max_drift_ms} ms): {}",
        ids.len(),
        first_ids(ids)
    )]
    ClockDrift {
        /// Ids of the offending records (never empty).
        ids: Vec<String>,
        /// How far the newest offending stamp is ahead of local physical time.
        ahead_ms: u64,
        /// The configured maximum drift.
        max_drift_ms: u64,
    },

    /// The clock refused to take in one stamp lying further in the future
    /// than the allowed drift (see [`Hlc::observe`](crate::Hlc::observe)).
    #[error(
        "stamp {stamp} is {ahead_ms} ms ahead of local time, more than the allowed drift of {max_drift_ms} ms"
    )]
    StampAhead {
        /// The refused stamp.
        stamp: String,
        /// How far it is ahead of local physical time.
        ahead_ms: u64,
        /// The configured maximum drift.
        max_drift_ms: u64,
    },

    /// A configuration value was refused.
    #[error("invalid configuration `{option}`: {reason}")]
    InvalidConfig {
        /// The option's name.
        option: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// An argument of a call is out of its range. Nothing was read or written.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A conditional write lost its race again and again: the record kept
    /// changing between the read and the write. Nothing was written.
    #[error(
        "precondition failed: record {id:?} in collection {collection:?} kept changing between read and write"
    )]
    Precondition {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
    },

    /// The store could not be reached or timed out. Transient: the engine
    /// retries it with back-off.
    #[error("storage unavailable ({backend}): {source}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: SharedError,
    },

    /// The store answered with a permanent failure (permission denied,
    /// misconfiguration, ...). Not retried.
    #[error("storage error ({backend}): {message}")]
    Storage {
        /// Which backend.
        backend: &'static str,
        /// What went wrong, naming the object concerned and what to do.
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<SharedError>,
    },

    /// Stored data cannot be read as what it should be (a record file edited
    /// by hand, a damaged object). Not retried.
    #[error(
        "corrupt data ({backend}) in collection {collection:?}{} at {location}: {reason}",
        display_record(.id)
    )]
    Corrupt {
        /// Which backend.
        backend: &'static str,
        /// The collection holding the data.
        collection: String,
        /// The record concerned, when known.
        id: Option<String>,
        /// Where the data is: a path, a key, an object name.
        location: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The engine or backend was closed.
    #[error("closed: {what} can no longer be used")]
    Closed {
        /// What was closed.
        what: &'static str,
    },

    /// Another replica answered something that breaks the sync protocol (a
    /// change page that does not advance, ...). Nothing of that answer was
    /// applied.
    #[error("peer {peer:?} broke the sync protocol: {reason}")]
    PeerProtocol {
        /// The peer's id.
        peer: String,
        /// What was wrong with its answer.
        reason: String,
    },

    /// A feature needed for this request was not compiled in.
    #[error("backend `{backend}` is not available: enable the cargo feature `{feature}`")]
    FeatureDisabled {
        /// The requested backend.
        backend: String,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
}

fn display_id(id: &Option<String>) -> String {
    match id {
        Some(id) => format!("{id:?}"),
        None => "(without id)".to_owned(),
    }
}

fn display_field(field: &Option<String>) -> String {
    match field {
        Some(field) => format!(", field `{field}`"),
        None => String::new(),
    }
}

/// The ids a [`Error::ClockDrift`] message names: the first few, and how
/// many more there are. A batch of a million records stamped by one clock
/// running ahead would otherwise make a message, a log line and an HTTP
/// answer of every id.
fn first_ids(ids: &[String]) -> String {
    const NAMED: usize = 10;
    let named = ids.get(..NAMED).unwrap_or(ids).join(", ");
    match ids.len().saturating_sub(NAMED) {
        0 => named,
        more => format!("{named} and {more} more"),
    }
}

fn display_record(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(", record {id:?},"),
        None => String::new(),
    }
}

/// The most retries of a transient failure ([`Error::is_transient`]) one
/// call may be given: the engine's `max_retries` and an HTTP peer's
/// `retries` refuse more. With a short first delay, more would keep a call
/// at a store or server that keeps failing for as long as the count lasts.
pub const MAX_RETRIES: u32 = 20;

impl Error {
    /// Whether retrying the same call later may succeed: true exactly for
    /// [`Error::Unavailable`], which is what the engine retries with back-off.
    /// Everything caused by input, permanent failures and corrupt data is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Shorthand for [`Error::InvalidRecord`] not about one field.
    pub fn invalid_record(id: Option<&str>, reason: impl Into<String>) -> Self {
        Error::InvalidRecord {
            id: id.map(shorten),
            field: None,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidRecord`] about field `field`.
    pub fn invalid_field(id: Option<&str>, field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidRecord {
            id: id.map(shorten),
            field: Some(shorten(field)),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidStamp`].
    pub fn invalid_stamp(stamp: &str, reason: impl Into<String>) -> Self {
        Error::InvalidStamp {
            stamp: shorten(stamp),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Storage`] with the underlying error.
    pub fn storage_caused(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Storage {
            backend,
            message: message.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// Shorthand for [`Error::Storage`] without a source.
    pub fn storage(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Storage {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Unavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            backend,
            source: Arc::from(source.into()),
        }
    }
}

/// Shortens a string from outside (a user's, a peer's) for an error message,
/// so a 1 MiB id does not become a 1 MiB message: its first 80 bytes or so,
/// and its length.
///
/// ```
/// let long = "x".repeat(1000);
/// assert_eq!(syncforge_core::shorten("short"), "short");
/// assert!(syncforge_core::shorten(&long).ends_with("... (1000 bytes)"));
/// ```
pub fn shorten(s: &str) -> String {
    const KEEP: usize = 80;
    if s.len() <= KEEP {
        return s.to_owned();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drift refusal counts every offending record but names only the
    /// first few: it named them all, so a batch of a million records made
    /// a message (and an HTTP answer) of a million ids.
    #[test]
    fn a_drift_message_names_the_first_ids_and_counts_all() {
        let drift = |count: usize| Error::ClockDrift {
            ids: (0..count).map(|i| format!("r{i}")).collect(),
            ahead_ms: 9_000,
            max_drift_ms: 5_000,
        };
        let message = drift(1_000).to_string();
        assert!(
            message.starts_with("clock drift: 1000 record(s)"),
            "{message}"
        );
        assert!(message.ends_with(": r0, r1, r2, r3, r4, r5, r6, r7, r8, r9 and 990 more"));
        assert!(drift(2).to_string().ends_with(": r0, r1"));
        assert!(drift(10).to_string().ends_with(", r9"));
    }
}
