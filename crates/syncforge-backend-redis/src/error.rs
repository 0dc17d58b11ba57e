//! The one place where Redis and client errors become syncforge errors.
//!
//! Lost connections, timeouts, a server still loading its data or full of
//! clients, a cluster between two states (`CLUSTERDOWN`, `TRYAGAIN`, a
//! failover's `READONLY`), too few replicas for `min-replicas-to-write`
//! (`NOREPLICAS`), writes stopped while a background save fails
//! (`MISCONF`), a script still unknown after it was loaded (`NOSCRIPT`)
//! are [`Error::Unavailable`]: transient, the engine retries them, also when
//! a script's `redis.call` met them. Wrong credentials, a
//! missing database, a key of the wrong type, ACL refusals, out-of-memory
//! and script errors are [`Error::Storage`] with a message saying what to
//! do; so is a redirection (`MOVED`, `ASK`) met through a plain `redis://`
//! URL naming one node of a cluster, which says to use a `redis-cluster://`
//! URL (a cluster client follows redirections, and one it could not follow
//! while a slot moves is transient). No message ever holds the password: the address comes from
//! [`RedisConfig::address`](crate::RedisConfig::address), and Redis never
//! repeats a password in its replies.

use std::fmt;

use fred::error::{Error as FredError, ErrorKind};
use syncforge_core::Error;

pub(crate) const BACKEND: &str = "redis";

/// Server replies that mean "not now" rather than "never".
const TRANSIENT_REPLIES: &[&str] = &[
    "LOADING",
    // A script still unknown after it was loaded: a node that a failover
    // promoted, or a `SCRIPT FLUSH`, between the load and the call. Nothing
    // ran; the retry loads it again.
    "NOSCRIPT",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
    // Fewer replicas answering than `min-replicas-to-write` asks for.
    "NOREPLICAS",
    // Writes stopped while the server's last background save failed
    // (`stop-writes-on-bgsave-error`, on by default): refused before the
    // script wrote anything, and taken again once a save succeeds.
    "MISCONF",
];

/// The client's own words for a command it gave up routing: redirected
/// (`MOVED`/`ASK`) more often than its attempts allow while a slot moves;
/// and the server's refusal of a connection while it holds as many clients
/// as it may.
const TRANSIENT_CLIENT_ERRORS: &[&str] = &[
    "Too many failed write attempts",
    "Max attempts reached",
    "Too many redirections",
    "Failed to route command",
    "ERR max number of clients reached",
    // fred's check of `CLUSTER INFO` on each new connection, when a node
    // reports a `cluster_state` other than `ok`: the cluster's
    // `CLUSTERDOWN`, met while connecting or reconnecting.
    "Invalid or missing cluster state",
];

/// A failure, with the operation and the server it concerned.
#[derive(Debug)]
struct RedisFailure {
    operation: String,
    address: String,
    source: FredError,
}

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.operation,
            self.address,
            self.source.details()
        )
    }
}

impl std::error::Error for RedisFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The code of the reply a script's `redis.call` got, when the server
/// wrapped it in a script error, as Redis before 7 does:
/// `ERR Error running script (call to f_<sha>): @user_script:1: -READONLY You
/// can't write against a read only replica.`, some versions with a second
/// `@user_script: 1:` before the code. Read by its first word alone, a
/// failover's `READONLY` inside a script would look like a script bug.
/// Redis 7 answers with the command's own code first, which needs nothing.
fn script_reply_code(details: &str) -> Option<&str> {
    let (_, message) = details
        .strip_prefix("ERR Error running script")?
        .split_once("): ")?;
    let is_location = |word: &str| {
        word.starts_with("@user_script")
            || word
                .strip_suffix(':')
                .is_some_and(|line| !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()))
    };
    let word = message.split_whitespace().find(|word| !is_location(word))?;
    let code = word.strip_prefix('-').unwrap_or(word);
    // A reply code is a word of capitals; a script's own message is not.
    (!code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase())).then_some(code)
}

/// Whether `error` says the client's connections should be made again: a
/// command that timed out (its connection may have gone silent), or a
/// write refused as `READONLY` (the server was made a replica), in either
/// form ([`script_reply_code`]).
pub(crate) fn calls_for_new_connections(error: &FredError) -> bool {
    *error.kind() == ErrorKind::Timeout || reply_code(error.details()) == "READONLY"
}

/// Whether `error` is the server's `BUSY` (a script runs), `LOADING`, or
/// `MISCONF` (its last background save failed, and it refuses writes and
/// pings until one succeeds): the connection it came on works, though the
/// server does not serve now. (Any other refusal, `NOAUTH` say, is better
/// met on new connections.)
pub(crate) fn answers_but_does_not_serve(error: &FredError) -> bool {
    matches!(reply_code(error.details()), "BUSY" | "LOADING" | "MISCONF")
}

/// The reply code of `details`, plain or wrapped in a script error
/// ([`script_reply_code`]); empty when there is none.
fn reply_code(details: &str) -> &str {
    script_reply_code(details)
        .or_else(|| details.split_whitespace().next())
        .unwrap_or("")
}

/// Whether `details` is the answer to a script stopped with `SCRIPT KILL`
/// (`ERR Script killed by user with SCRIPT KILL... script: ...` on Redis 7,
/// wrapped in `ERR Error running script` before): the server kills only a
/// script that has written nothing, so a retry is safe, as after `BUSY`.
fn killed_script(details: &str) -> bool {
    details.contains("Script killed by user with SCRIPT KILL")
}

/// Whether `details` is a script's command refused because the cluster is
/// down: with `cluster-allow-reads-when-down`, a node runs a script while
/// its cluster is down and refuses its first write (`ERR Script attempted
/// to execute a write command while the cluster is down and readonly` on
/// Redis 7, `Lua script attempted ...` wrapped in a script error before),
/// a reply with no code of its own. The cluster's state cannot change
/// while a script runs, so nothing was written: the cluster's
/// `CLUSTERDOWN`, met inside a script.
fn cluster_down_in_script(details: &str) -> bool {
    details.contains("attempted to execute a") && details.contains("while the cluster is down")
}

/// Maps a client error of `operation` against the server at `address`.
pub(crate) fn map(error: FredError, operation: impl Into<String>, address: &str) -> Error {
    let operation = operation.into();
    let details = error.details().to_owned();
    let reply_code = reply_code(&details);
    let refused_by_tls = *error.kind() == ErrorKind::IO && refused_by_tls(&details);
    let transient = match error.kind() {
        ErrorKind::IO if refused_by_tls => false,
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster
        | ErrorKind::Routing => true,
        _ => {
            TRANSIENT_REPLIES.contains(&reply_code)
                || TRANSIENT_CLIENT_ERRORS
                    .iter()
                    .any(|e| details.starts_with(e))
                || killed_script(&details)
                || cluster_down_in_script(&details)
        }
    };
    if transient {
        return Error::unavailable(
            BACKEND,
            RedisFailure {
                operation,
                address: address.to_owned(),
                source: error,
            },
        );
    }
    let advice = match (error.kind(), reply_code) {
        (ErrorKind::Auth, _) | (_, "WRONGPASS" | "NOAUTH") => {
            "authentication failed: check the username and password".to_owned()
        }
        _ if details.contains("without any password configured") => {
            "authentication failed: check the username and password".to_owned()
        }
        (_, "NOPERM") => {
            "the ACL user may not run this command or touch this key: grant it the key prefix's keys and EVALSHA, SCRIPT LOAD, HMGET, HGET, HSET, HSETNX, HDEL, SADD, SMEMBERS, EXISTS, GET, SET, UNLINK, ZADD, ZCARD, ZMSCORE, ZRANGE, ZRANGEBYSCORE, ZRANK, ZREM, ZREMRANGEBYRANK, ZSCORE (the scripts' commands are checked too), PING, SELECT (for a database other than 0), and on a cluster CLUSTER INFO, CLUSTER SLOTS and ASKING".to_owned()
        }
        (_, "WRONGTYPE") => {
            "a key under this key prefix holds a value of another type: is another application using the prefix? Use a key prefix of its own".to_owned()
        }
        (_, "OOM") => "the server is out of memory (maxmemory): free memory or raise the limit".to_owned(),
        _ if details.contains("DB index is out of range") => {
            "the database does not exist on this server: use a smaller db number".to_owned()
        }
        _ if details.contains("Error running script") || details.contains("user_script") => {
            "a syncforge script failed on the server".to_owned()
        }
        (ErrorKind::Config | ErrorKind::Url, _) => "the client configuration was refused".to_owned(),
        #[cfg(feature = "tls")]
        (ErrorKind::Tls, _) => {
            "TLS failed: check that the server speaks TLS and that its certificate is trusted".to_owned()
        }
        _ if refused_by_tls
            && (details.contains("CertificateRequired") || details.contains("HandshakeFailure")) =>
        {
            "the server refused the TLS handshake: it may ask for a client certificate, which this client does not send (set the server's tls-auth-clients to no or optional)".to_owned()
        }
        _ if refused_by_tls => {
            "the TLS handshake failed: check that the port serves TLS and that an authority the system trusts, or one of tls_root_certificates, signed the server's certificate for this host name".to_owned()
        }
        _ => "the server refused the command".to_owned(),
    };
    Error::storage_caused(
        BACKEND,
        format!("{operation} at {address}: {advice} ({details})"),
        error,
    )
}

/// Whether `details`, an I/O error's, is a TLS handshake's verdict (rustls
/// hands it over as `InvalidData`): a certificate not trusted or not for
/// this host, a peer that speaks no TLS or none acceptable. Connecting again
/// meets the same verdict, so it is no transient failure.
fn refused_by_tls(details: &str) -> bool {
    [
        "InvalidCertificate",
        "InvalidMessage",
        "AlertReceived",
        "PeerIncompatible",
        "PeerMisbehaved",
        "NoCertificatesPresented",
    ]
    .iter()
    .any(|verdict| details.contains(verdict))
}

/// Whether the server sent the command to another node of a cluster
/// (`MOVED`, `ASK`).
pub(crate) fn is_redirection(error: &FredError) -> bool {
    let details = error.details();
    details.starts_with("MOVED ") || details.starts_with("ASK ")
}

/// A redirection met by a client that does not follow them: a plain
/// `redis://` URL naming one node of a Redis Cluster. Retrying would meet it
/// again on every command of that slot, so it is no transient failure, and
/// the message says what URL to use.
pub(crate) fn redirected(error: FredError, operation: &str, address: &str) -> Error {
    let details = error.details().to_owned();
    Error::storage_caused(
        BACKEND,
        format!(
            "{operation} at {address}: the server is a node of a Redis Cluster and sent the \
             command to another node ({details}); connect with a redis-cluster://host:port URL, \
             which follows the cluster's redirections"
        ),
        error,
    )
}

/// The error for a connection attempt that did not finish in time.
pub(crate) fn connect_timeout(address: &str, timeout: std::time::Duration) -> Error {
    Error::unavailable(
        BACKEND,
        format!("connecting to {address}: no answer within {timeout:?}"),
    )
}

/// The error for a server older than the scripts need: connecting again
/// meets the same server, so it is no transient failure.
pub(crate) fn server_too_old(
    address: &str,
    found: &fred::types::Version,
    (major, minor): (u64, u64),
) -> Error {
    Error::storage(
        BACKEND,
        format!(
            "connecting at {address}: the server runs Redis {found}, and syncforge needs \
             Redis {major}.{minor} or newer (its scripts call ZMSCORE): upgrade the server"
        ),
    )
}

/// The error for a write whose answer may come from the client sending it
/// again on a new connection: the first send may have run, and the answer
/// (a conflict, the record already there, nothing to delete) would then
/// describe that run's effect as another writer's. Its outcome is unknown,
/// which is what [`Error::Unavailable`] tells the caller.
pub(crate) fn maybe_sent_twice(operation: &str, address: &str) -> Error {
    Error::unavailable(
        BACKEND,
        format!(
            "{operation} at {address}: the connection was made again while the command was \
             under way, and the client may have sent it twice; its outcome is unknown"
        ),
    )
}

/// The error for stored data this backend cannot read.
pub(crate) fn corrupt(collection: &str, id: Option<&str>, key: &str, reason: String) -> Error {
    Error::Corrupt {
        backend: BACKEND,
        collection: collection.to_owned(),
        id: id.map(str::to_owned),
        location: key.to_owned(),
        reason,
    }
}

/// The counter key a write script found holding no change sequence, named
/// in its error ([`scripts`](crate::scripts)' `bad_counter`), in whatever
/// wrapping the server gives a script's error.
pub(crate) fn bad_counter_key(details: &str) -> Option<&str> {
    let (_, named) = details.split_once("ERR syncforge: ")?;
    let (key, _) = named.split_once(" does not hold a change sequence")?;
    Some(key)
}

/// The error for a reply whose shape is not what the command returns.
pub(crate) fn unexpected_reply(operation: &str, address: &str, what: &str) -> Error {
    Error::storage(
        BACKEND,
        format!(
            "{operation} at {address}: unexpected reply ({what}); is the server a Redis 6.2 or newer?"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(error: &Error) -> &'static str {
        match error {
            Error::Unavailable { .. } => "unavailable",
            Error::Storage { .. } => "storage",
            _ => "other",
        }
    }

    /// After a timeout, a ping refused as `BUSY` (a long script runs) keeps
    /// the connections: every caller's commands would otherwise be sent
    /// again once the server is free, beside the ones it still holds.
    #[test]
    fn a_busy_loading_or_unsaving_server_counts_as_answering() {
        for (kind, details, answered) in [
            (
                ErrorKind::Unknown,
                "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
                true,
            ),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
                true,
            ),
            (
                ErrorKind::Unknown,
                "MISCONF Errors writing to the AOF file: No space left on device",
                true,
            ),
            (ErrorKind::Timeout, "Request timed out.", false),
            (ErrorKind::IO, "Connection reset by peer", false),
            (ErrorKind::Canceled, "Canceled.", false),
            (ErrorKind::Unknown, "Request timed out.", false),
            (ErrorKind::Auth, "NOAUTH Authentication required.", false),
        ] {
            let error = FredError::new(kind, details);
            assert_eq!(answers_but_does_not_serve(&error), answered, "{details}");
        }
    }

    #[test]
    fn transient_failures_are_unavailable() {
        for (kind, details) in [
            (ErrorKind::IO, "Connection reset by peer"),
            (ErrorKind::Timeout, "Request timed out."),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            (
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
            ),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
            (
                ErrorKind::Unknown,
                "NOREPLICAS Not enough good replicas to write.",
            ),
            (
                ErrorKind::Unknown,
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            ),
            (ErrorKind::Unknown, "ERR max number of clients reached"),
            (
                ErrorKind::Unknown,
                "NOSCRIPT No matching script. Please use EVAL.",
            ),
            // A script stopped by `SCRIPT KILL` (as Redis 7.0 answers, and
            // as 6.2 wraps it): it wrote nothing.
            (
                ErrorKind::Unknown,
                "ERR Script killed by user with SCRIPT KILL... script: \
                 3fcf51a9b854b8f66cb8685600b0d7df968f4398, on @user_script:1.",
            ),
            (
                ErrorKind::Unknown,
                "ERR Error running script (call to f_3fcf51a9b854b8f66cb8685600b0d7df968f4398): \
                 @user_script:1: Script killed by user with SCRIPT KILL...",
            ),
        ] {
            let error = map(FredError::new(kind, details), "get", "redis://h:1/0");
            assert_eq!(kind_of(&error), "unavailable", "{details}");
            assert!(error.is_transient());
            assert!(error.to_string().contains("redis://h:1/0"), "{error}");
        }
    }

    /// fred checks `CLUSTER INFO` on every new connection to a cluster
    /// node and refuses one whose `cluster_state` is not `ok`: a cluster
    /// down while connecting or reconnecting, as transient as `CLUSTERDOWN`.
    #[test]
    fn a_cluster_in_a_failed_state_at_connect_is_transient() {
        let error = map(
            FredError::new(ErrorKind::Protocol, "Invalid or missing cluster state."),
            "connecting",
            "redis-cluster://h:7000",
        );
        assert_eq!(kind_of(&error), "unavailable", "{error:?}");
        assert!(error.is_transient());
        assert!(
            error.to_string().contains("redis-cluster://h:7000"),
            "{error}"
        );
    }

    /// Redis before 7 wraps the error a script's `redis.call` got in a
    /// script error (`ERR Error running script ...`); a transient code
    /// inside stays transient, in either of the forms servers give.
    #[test]
    fn transient_codes_inside_a_script_error_are_transient() {
        // What a failed script's call gives, as this backend maps it.
        let script_error = |wrapped: &str| {
            let details = format!("ERR Error running script (call to f_0a1b2c): {wrapped}");
            let error = map(
                FredError::new(ErrorKind::Unknown, details.clone()),
                "writing records",
                "redis://h:1/0",
            );
            (details, error)
        };
        for wrapped in [
            "@user_script:1: -READONLY You can't write against a read only replica.",
            "@user_script:4: @user_script: 4: -READONLY You can't write against a read only replica.",
            "@user_script:2: -MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "@user_script:1: LOADING Redis is loading the dataset in memory",
            "@user_script:3: @user_script: 3: -TRYAGAIN Multiple keys request during rehashing of slot",
            "@user_script:1: -CLUSTERDOWN The cluster is down",
            "@user_script:9: Lua script attempted to execute a write command while the cluster is down and readonly",
        ] {
            let (details, error) = script_error(wrapped);
            assert_eq!(kind_of(&error), "unavailable", "{details}");
            assert!(error.is_transient());
        }
        // Redis 7's own words when a script's write meets a cluster that is
        // down but lets reads through (`cluster-allow-reads-when-down`).
        for details in [
            "ERR Script attempted to execute a write command while the cluster is down and readonly script: 0a1b2c, on @user_script:120.",
            "ERR Script attempted to execute a command while the cluster is down script: 0a1b2c, on @user_script:3.",
        ] {
            let error = map(
                FredError::new(ErrorKind::Unknown, details),
                "writing records",
                "redis-cluster://h:7000",
            );
            assert_eq!(kind_of(&error), "unavailable", "{details}");
        }
        // What the scripts raise themselves, and a permanent code inside a
        // script error, stay permanent, with the code's own advice.
        for (wrapped, advice) in [
            ("@user_script:1: boom", "script failed"),
            (
                "@user_script:55: ERR syncforge: dse:c:{n}:seq does not hold a change sequence",
                "script failed",
            ),
            (
                "@user_script:1: @user_script: 1: -WRONGTYPE Operation against a key holding the wrong kind of value",
                "key prefix of its own",
            ),
            (
                "@user_script:1: @user_script: 1: -OOM command not allowed when used memory > 'maxmemory'.",
                "out of memory",
            ),
        ] {
            let (details, error) = script_error(wrapped);
            assert_eq!(kind_of(&error), "storage", "{details}");
            assert!(error.to_string().contains(advice), "{error}");
        }
    }

    /// The commands the scripts call (`redis.call('NAME', ...)`), which
    /// Redis checks against the user's ACL as it runs them.
    fn script_commands() -> Vec<String> {
        let mut names: Vec<String> = crate::scripts::Scripts::new()
            .sources()
            .iter()
            .flat_map(|source| {
                source
                    .split("redis.call('")
                    .skip(1)
                    .filter_map(|call| call.split('\'').next())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 15, "{names:?}");
        names
    }

    /// The advice for an ACL refusal names every command the backend and
    /// fred's connection setup send, so granting them all is enough.
    #[test]
    fn noperm_advice_names_every_command_sent() {
        let error = map(
            FredError::new(
                ErrorKind::Unknown,
                "NOPERM User app has no permissions to run the 'ping' command",
            ),
            "connecting",
            "redis://h:1/0",
        );
        let text = error.to_string();
        for command in [
            // Connecting: fred's setup and the backend's check.
            "PING",
            "SELECT",
            "CLUSTER INFO",
            "CLUSTER SLOTS",
            "ASKING",
            // The backend's own commands.
            "EVALSHA",
            "SCRIPT LOAD",
            "HMGET",
            "HGET",
            "HSET",
            "SADD",
            "SMEMBERS",
            "EXISTS",
            "ZRANGE",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(script_commands())
        {
            assert!(
                text.split([' ', ',', '(', ')'])
                    .collect::<Vec<_>>()
                    .windows(command.split(' ').count())
                    .any(|words| words.join(" ") == command),
                "{command} missing: {text}"
            );
        }
    }

    #[test]
    fn timeouts_and_read_only_replies_call_for_new_connections() {
        for (kind, details, expected) in [
            (ErrorKind::Timeout, "Request timed out.", true),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
                true,
            ),
            (
                ErrorKind::Unknown,
                "ERR Error running script (call to f_0a1b): @user_script:1: -READONLY You can't write against a read only replica.",
                true,
            ),
            (ErrorKind::IO, "Connection reset by peer", false),
            (ErrorKind::Unknown, "NOSCRIPT No matching script.", false),
            (ErrorKind::Unknown, "ERR READONLY is not a code here", false),
        ] {
            assert_eq!(
                calls_for_new_connections(&FredError::new(kind, details)),
                expected,
                "{details}"
            );
        }
    }

    #[test]
    fn permanent_failures_say_what_to_do() {
        for (kind, details, advice) in [
            (
                ErrorKind::Auth,
                "WRONGPASS invalid username-password pair or user is disabled.",
                "check the username and password",
            ),
            (
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                "key prefix of its own",
            ),
            (
                ErrorKind::Unknown,
                "ERR DB index is out of range",
                "database does not exist",
            ),
            (
                ErrorKind::Unknown,
                "ERR Error running script (call to f_x): @user_script:1: boom",
                "script failed",
            ),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions",
                "ACL",
            ),
        ] {
            let error = map(FredError::new(kind, details), "put_batch", "redis://h:1/0");
            assert_eq!(kind_of(&error), "storage", "{details}");
            assert!(!error.is_transient());
            let text = error.to_string();
            assert!(text.contains(advice), "{text}");
            assert!(text.contains("put_batch at redis://h:1/0"), "{text}");
        }
    }
}
