//! Percent-decoding of the parts of a store URL, and telling an IPv6 address
//! left unbracketed, shared by every crate that reads one, so that a store
//! URL means the same wherever it is read.
//!
//! Decoding is strict: a `%` not followed by two hex digits is refused
//! rather than kept as it is, since a URL written by hand with a stray `%`
//! (`file:///data/50%off`) most likely meant something else, and guessing
//! would open a different store than the one its author had in mind.

use std::fmt;

/// Why a URL part could not be percent-decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeError {
    /// A `%` is not followed by two hex digits.
    Malformed,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EscapeError::Malformed => {
                "has a malformed %-escape (a % not followed by two hex digits)"
            }
            EscapeError::NotUtf8 => "is not UTF-8 once percent-decoded",
        })
    }
}

impl std::error::Error for EscapeError {}

/// `text` with its `%XX` escapes decoded.
///
/// ```
/// use syncforge_core::{percent_decode, EscapeError};
/// assert_eq!(percent_decode("a%20b").as_deref(), Ok("a b"));
/// assert_eq!(percent_decode("50%off"), Err(EscapeError::Malformed));
/// assert_eq!(percent_decode("%FF"), Err(EscapeError::NotUtf8));
/// ```
///
/// # Errors
///
/// [`EscapeError`] naming what is wrong; nothing of `text` is in it, since
/// a URL may hold a password.
pub fn percent_decode(text: &str) -> Result<String, EscapeError> {
    let malformed = text.match_indices('%').any(|(at, _)| {
        !text
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if malformed {
        return Err(EscapeError::Malformed);
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| EscapeError::NotUtf8)
}

/// Whether `address` is an IPv6 address left without its brackets, with or
/// without a port after it (`::1`, `fd00::1:6379`): its last group reads as
/// a port, and its first may read as a URL scheme (`fd00`), so a host and
/// port check would take it for something else. In a URL it is written
/// `[::1]:6379`.
///
/// ```
/// use syncforge_core::unbracketed_ipv6;
/// assert!(unbracketed_ipv6("fd00::1:6379"));
/// assert!(!unbracketed_ipv6("[::1]:6379"));
/// assert!(!unbracketed_ipv6("cache:6379"));
/// ```
pub fn unbracketed_ipv6(address: &str) -> bool {
    let ipv6 = |text: &str| text.parse::<std::net::Ipv6Addr>().is_ok();
    ipv6(address) || address.rsplit_once(':').is_some_and(|(host, _)| ipv6(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_at_the_end_or_before_one_hex_digit_is_malformed() {
        for text in ["%", "a%", "a%2", "%2x", "%%41", "%é1"] {
            assert_eq!(percent_decode(text), Err(EscapeError::Malformed), "{text}");
        }
    }

    #[test]
    fn escapes_decode_and_plain_text_is_kept() {
        assert_eq!(percent_decode("").as_deref(), Ok(""));
        assert_eq!(percent_decode("plain/text").as_deref(), Ok("plain/text"));
        assert_eq!(percent_decode("%2F%3f%C3%A9").as_deref(), Ok("/?é"));
        assert_eq!(percent_decode("%C3"), Err(EscapeError::NotUtf8));
    }
}
