//! The one error type of syncforge.
//!
//! Every refusal names the record, id or value it refused and why. Backends map
//! their private errors into the storage variants ([`Error::NotFound`],
//! [`Error::Precondition`], [`Error::Unavailable`], [`Error::Storage`]) so that
//! the engine can tell a lost race or a transient outage (retried) from bad
//! input (never retried).

use std::error::Error as StdError;

/// A boxed error from a backend's own client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Result alias used throughout syncforge.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in syncforge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A record (or something offered as one) is malformed. Nothing was written.
    #[error("invalid record {}: {reason}", display_id(.id))]
    InvalidRecord {
        /// The record's id, when it had a readable one.
        id: Option<String>,
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

    /// Remote stamps lie further in the future than the allowed clock drift.
    /// The whole batch was refused; nothing was written.
    #[error(
        "clock drift: {} record(s) carry stamps up to {ahead_ms} ms ahead of local time \
         (limit {max_drift_ms} ms): {}",
        ids.len(),
        ids.join(", ")
    )]
    ClockDrift {
        /// Ids of the offending records.
        ids: Vec<String>,
        /// How far the newest offending stamp is ahead of local physical time.
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

    /// The requested object does not exist in the store.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },

    /// A conditional write lost a race: the record changed since it was read.
    #[error(
        "precondition failed: record {id:?} in collection {collection:?} changed since it was read"
    )]
    Precondition {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
    },

    /// The store could not be reached or timed out. Transient: worth a retry.
    #[error("storage unavailable ({backend}): {source}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// The store answered with a permanent failure (corrupt data, permission
    /// denied, ...). Not retried.
    #[error("storage error ({backend}): {message}")]
    Storage {
        /// Which backend.
        backend: &'static str,
        /// What went wrong, naming the object concerned.
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The engine or backend was closed.
    #[error("closed: {what} can no longer be used")]
    Closed {
        /// What was closed.
        what: &'static str,
    },

    /// An argument of a call is out of its range (a page limit of 0, ...).
    /// Nothing was read or written.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// Why it was refused.
        reason: String,
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

impl Error {
    /// Whether retrying the same call may succeed: true for
    /// [`Error::Unavailable`] and [`Error::Precondition`] (re-read, merge again),
    /// false for everything caused by input or permanent failures.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Precondition { .. })
    }

    /// Shorthand for [`Error::InvalidRecord`].
    pub fn invalid_record(id: Option<&str>, reason: impl Into<String>) -> Self {
        Error::InvalidRecord {
            id: id.map(shorten),
            reason: reason.into(),
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
            source: source.into(),
        }
    }
}

/// Shortens a user-supplied string for an error message, so a 1 MiB id does
/// not become a 1 MiB message.
pub(crate) fn shorten(s: &str) -> String {
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
