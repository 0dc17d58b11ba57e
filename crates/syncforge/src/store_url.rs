//! Naming a store by URL: one parser for programs and for the `syncforge`
//! command.
//!
//! Each kind of store is one arm of [`StoreUrl::parse`], behind the cargo
//! feature that builds it in; a URL of a kind that is not built in is refused
//! with [`Error::FeatureDisabled`] naming the feature, never mistaken for a
//! path.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use syncforge_core::{unbracketed_ipv6, Error, Result, StorageBackend};

use crate::backends::{create_backend, BackendConfig};

/// The store kinds a URL can name, by scheme, and the cargo feature of each.
/// Listed whatever features are on, so that a URL of a kind this build lacks
/// is refused by name rather than read as a path.
const KINDS: [(&str, &str, &str); 9] = [
    // (scheme, kind, feature)
    ("memory", "memory", "memory"),
    ("file", "filesystem", "fs"),
    ("redis", "redis", "redis"),
    ("rediss", "redis", "redis"),
    ("redis-cluster", "redis", "redis"),
    ("rediss-cluster", "redis", "redis"),
    ("s3", "s3", "s3"),
    ("http", "sync server", "http-client"),
    ("https", "sync server", "http-client"),
];

/// A store named by a URL: what [`StoreUrl::parse`] reads.
///
/// | URL | store | feature |
/// |-----|-------|---------|
/// | `memory:` | a new in-process store, gone when the process ends | `memory` |
/// | `./data`, `/var/lib/app`, `file:///var/lib/app` | the filesystem store in that directory | `fs` |
/// | `redis://`, `rediss://`, `redis-cluster://` | Redis | `redis` |
/// | `s3://bucket/prefix?endpoint=..&region=..&allow_http=true` | S3 and compatibles | `s3` |
/// | `http://host:port`, `https://..` | a sync server (through its HTTP peer) | `http-client` |
///
/// A string that names no known kind before a `:`, or starts like an
/// address with no scheme (`127.0.0.1:8080`), is refused rather than taken
/// for a directory (`memroy:` is a typo, not a directory name): write
/// `./memroy:` to name such a directory. Credentials never come from a URL
/// except a Redis password, which [`Display`](fmt::Display) and `Debug`
/// never show.
///
/// ```
/// use syncforge::StoreUrl;
///
/// # #[cfg(feature = "fs")]
/// # {
/// use syncforge::BackendConfig;
/// let url: StoreUrl = "file:///var/lib/app%20data".parse()?;
/// assert_eq!(
///     url.backend_config(),
///     Some(&BackendConfig::Filesystem { directory: "/var/lib/app data".into() })
/// );
/// # }
/// # #[cfg(feature = "memory")]
/// assert_eq!("memory:".parse::<StoreUrl>()?.to_string(), "memory:");
/// assert!("ftp://example.com".parse::<StoreUrl>().is_err());
/// # Ok::<(), syncforge::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    target: Target,
    /// The URL as it may be shown: rebuilt from what was parsed, so it
    /// holds no password.
    shown: String,
}

/// What a [`StoreUrl`] names: one variant per way of reaching a store.
#[derive(Clone, PartialEq, Eq)]
enum Target {
    /// A storage backend, opened with [`create_backend`].
    Backend(BackendConfig),
    /// A sync server, reached through its HTTP peer at this base URL.
    #[cfg(feature = "http-client")]
    Server(String),
}

impl StoreUrl {
    /// Reads a store URL (see the [type's documentation](StoreUrl)).
    ///
    /// Fails with [`Error::InvalidConfig`] when the string is not a store URL
    /// (option `url`) or names a store that would refuse it when opened (the
    /// option at fault), and with [`Error::FeatureDisabled`] when it names a
    /// kind of store this build lacks. Messages never repeat a password.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        if url.is_empty() {
            return Err(invalid("the store URL is empty"));
        }
        // `fd00::1` starts like a scheme, but is an address.
        let first = url.split(['/', '\\']).next().unwrap_or_default();
        let scheme = scheme_of(url).filter(|_| !unbracketed_ipv6(first));
        let Some(scheme) = scheme else {
            if looks_like_an_address(url) {
                // Not quoted: text before an '@' would be a password.
                return Err(invalid(
                    "a host and port with no scheme is not a store URL: write http://host:port, \
                     redis://host:port or s3://bucket (a directory whose name has a ':' is \
                     written ./name)",
                ));
            }
            return directory(PathBuf::from(url));
        };
        let lower = scheme.to_ascii_lowercase();
        let Some(&(_, kind, feature)) = KINDS.iter().find(|(known, ..)| *known == lower) else {
            return Err(invalid(format!(
                "unknown store kind {scheme:?}: use memory:, a directory path, file:///path, \
                 redis://host:port, rediss://, redis-cluster://, s3://bucket/prefix or \
                 http(s)://host:port (a directory whose name has a ':' is written ./{scheme}:...)"
            )));
        };
        let rest = &url[scheme.len() + 1..];
        match lower.as_str() {
            "memory" => memory(rest),
            "file" => directory(file_path(rest)?),
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => redis(&lower, rest),
            #[cfg(feature = "s3")]
            "s3" => s3(rest),
            #[cfg(feature = "http-client")]
            "http" | "https" => server(&lower, rest),
            _ => Err(Error::FeatureDisabled {
                backend: kind.to_owned(),
                feature,
            }),
        }
    }

    /// The backend this URL names, when it names one.
    pub fn backend_config(&self) -> Option<&BackendConfig> {
        match &self.target {
            Target::Backend(config) => Some(config),
            #[cfg(feature = "http-client")]
            Target::Server(_) => None,
        }
    }

    /// The base URL of the sync server this URL names, when it names one:
    /// reach it with [`HttpPeer`](crate::http::HttpPeer).
    #[cfg(feature = "http-client")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http-client")))]
    pub fn server_url(&self) -> Option<&str> {
        match &self.target {
            Target::Server(base) => Some(base),
            Target::Backend(_) => None,
        }
    }

    /// The kind of store: `"memory"`, `"filesystem"`, `"sync server"`, ...
    pub fn kind(&self) -> &'static str {
        match &self.target {
            Target::Backend(config) => config.name(),
            #[cfg(feature = "http-client")]
            Target::Server(_) => "sync server",
        }
    }

    fn backend(config: BackendConfig, shown: String) -> StoreUrl {
        StoreUrl {
            target: Target::Backend(config),
            shown,
        }
    }
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<StoreUrl> {
        StoreUrl::parse(url)
    }
}

/// The URL again, in a form that never shows a password.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.shown)
    }
}

/// Opens the storage backend a URL names: [`StoreUrl::parse`], then
/// [`create_backend`]. A URL naming a sync server rather than a store is
/// refused with [`Error::InvalidConfig`]; reach a server through its peer
/// (`StoreUrl::server_url`, with the `http-client` feature).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge::Result<()> {
/// let store = syncforge::open_store("memory:").await?;
/// assert_eq!(store.name(), "memory");
/// # Ok(())
/// # }
/// ```
pub async fn open_store(url: &str) -> Result<Arc<dyn StorageBackend>> {
    let url = StoreUrl::parse(url)?;
    match &url.target {
        Target::Backend(config) => create_backend(config).await,
        #[cfg(feature = "http-client")]
        Target::Server(_) => Err(invalid(format!(
            "{url} is a sync server, not a store: sync with it through its HttpPeer"
        ))),
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        option: "url",
        reason: reason.into(),
    }
}

/// The scheme before the first `:`, when the string starts with one: a
/// letter, then letters, digits, `+`, `-`, `.`. A single letter is a Windows
/// drive (`C:\data`), not a scheme.
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (valid && scheme.len() > 1).then_some(scheme)
}

/// Whether `url`, which starts with no scheme or with what may be an IPv6
/// address's first group, starts like an address
/// rather than a path (`127.0.0.1:8080`, `[::1]:6379`, `::1:6379`,
/// `:password@host:6379`):
/// taken for a directory, a forgotten `http://` or `redis://` made a new
/// store in a directory named after the address, password and all. Its
/// first part has a `:`; after any user part (which may hold any character,
/// `/` included) comes an IPv6 literal, or a host and a port, or, after a
/// user part holding a password (`:pass@`), any host. Without a user
/// part the host must look like one (letters, digits, `.` and `-`, more than
/// one character), so that `C:data` and `my_data:2024` stay directories; a
/// directory whose name looks like an address (a time, `10:00`) is written
/// `./name`, as the refusal says.
fn looks_like_an_address(url: &str) -> bool {
    // A Windows drive path (`C:\\`, `C:/`): its `:` is the drive's, and an
    // `@` in the names after it (`C:\\Users\\jo@corp`) no user part's,
    // unless a host and port end it (`a:/pass@cache:6379`), which no
    // Windows name can (it holds no `:`).
    if let [drive, b':', b'/' | b'\\', ..] = url.as_bytes() {
        if drive.is_ascii_alphabetic() {
            return url.rsplit_once('@').is_some_and(|(_, address)| {
                !address.contains(['/', '\\'])
                    && address.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty()
                            && (1..=5).contains(&port.len())
                            && port.bytes().all(|b| b.is_ascii_digit())
                    })
            });
        }
    }
    let first = url.split(['/', '\\']).next().unwrap_or_default();
    if !first.contains(':') {
        return false;
    }
    let (address, user_part) = match url.rsplit_once('@') {
        Some((before, after)) => {
            let address = after.split(['/', '?', '\\']).next().unwrap_or_default();
            // `user:password@host`, port or not: a password is no part of
            // a directory's name by chance.
            if before.contains(':') && !address.is_empty() {
                return true;
            }
            (address, true)
        }
        None => (first, false),
    };
    if let Some(inside) = address.strip_prefix('[') {
        return inside
            .split_once(']')
            .is_some_and(|(host, _)| host.contains(':'));
    }
    if unbracketed_ipv6(address) {
        return true;
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let port_like = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
    let host_like = host.len() > 1
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !host.starts_with(['.', '-']);
    port_like && (host_like || (user_part && !host.is_empty()))
}

fn memory(rest: &str) -> Result<StoreUrl> {
    if !rest.is_empty() && rest != "//" {
        return Err(invalid(
            "memory: takes nothing after the colon (each memory store is new and empty)",
        ));
    }
    refuse_unless(cfg!(feature = "memory"), "memory")?;
    Ok(StoreUrl::backend(
        BackendConfig::Memory,
        "memory:".to_owned(),
    ))
}

/// A Redis server or cluster: the URL is read by `RedisConfig::from_url`
/// now, so that a bad one is refused before anything connects, and shown
/// as `RedisConfig::shown_url` gives it, without the password.
#[cfg(feature = "redis")]
fn redis(scheme: &str, rest: &str) -> Result<StoreUrl> {
    let url = format!("{scheme}:{rest}");
    let config = syncforge_backend_redis::RedisConfig::from_url(&url)?;
    Ok(StoreUrl::backend(
        BackendConfig::Redis { url },
        config.shown_url(),
    ))
}

/// An S3 bucket: the URL is read by `S3Config::from_url` now, so that a bad
/// one (or one carrying credentials) is refused before anything connects.
#[cfg(feature = "s3")]
fn s3(rest: &str) -> Result<StoreUrl> {
    let url = format!("s3:{rest}");
    syncforge_backend_s3::S3Config::from_url(&url)?;
    Ok(StoreUrl::backend(
        BackendConfig::S3 { url: url.clone() },
        url,
    ))
}

/// A sync server's base URL (`rest` follows `http:` or `https:`). Tokens
/// are given to the peer, never in the URL.
#[cfg(feature = "http-client")]
fn server(scheme: &str, rest: &str) -> Result<StoreUrl> {
    let Some(after_slashes) = rest.strip_prefix("//") else {
        return Err(invalid(format!(
            "a sync server's URL is {scheme}://host:port"
        )));
    };
    let authority = after_slashes.split(['/', '?', '#']).next().unwrap_or("");
    // Said here, where the message can name the command line's flags.
    if authority.contains('@') {
        return Err(invalid(
            "a sync server's URL carries no credentials: give the token to the peer \
             (syncforge: --bearer-token or SYNCFORGE_TOKEN)",
        ));
    }
    let base = format!("{scheme}://{}", after_slashes.trim_end_matches('/'));
    // The peer's own check (a host, a valid port, no query or fragment),
    // so that a URL it would refuse fails here, where it is read.
    syncforge_http::check_base_url(&base).map_err(|error| match error {
        Error::InvalidConfig { reason, .. } => invalid(reason),
        other => other,
    })?;
    Ok(StoreUrl {
        target: Target::Server(base.clone()),
        shown: base,
    })
}

/// The directory of a `file:` URL (the part after `file:`): `///path`,
/// `//localhost/path` or `/path`, percent-encoded; on Windows, the path
/// `/C:/data` is the drive path `C:/data`.
fn file_path(rest: &str) -> Result<PathBuf> {
    let authority_and_path =
        match rest.strip_prefix("//") {
            Some(authority_and_path) => authority_and_path,
            // RFC 8089's form without an authority.
            None if rest.starts_with('/') => rest,
            None => return Err(invalid(
                "a file URL is file:///absolute/path; name a relative directory by its path alone",
            )),
        };
    let path = match authority_and_path.find('/') {
        Some(0) => authority_and_path,
        Some(slash) if authority_and_path[..slash].eq_ignore_ascii_case("localhost") => {
            &authority_and_path[slash..]
        }
        _ => return Err(invalid(
            "a file URL names a directory on this machine: file:///path or file://localhost/path",
        )),
    };
    if path.contains(['?', '#']) {
        return Err(invalid(
            "a file URL takes no query or fragment (percent-encode '?' and '#' in names as %3F and %23)",
        ));
    }
    let decoded = syncforge_core::percent_decode(path)
        .map_err(|error| invalid(format!("the file URL's path {error}")))?;
    if decoded.contains('\0') {
        return Err(invalid(
            "the file URL's path holds a NUL byte (%00), which no file name can",
        ));
    }
    let path = if cfg!(windows) {
        windows_drive_path(&decoded)
    } else {
        &decoded
    };
    Ok(PathBuf::from(path))
}

/// `path` without the `/` a file URL puts before a drive letter
/// (`/C:/data`, which Windows would read as a path on the current drive).
fn windows_drive_path(path: &str) -> &str {
    match path.as_bytes() {
        [b'/', drive, b':', b'/', ..] if drive.is_ascii_alphabetic() => &path[1..],
        _ => path,
    }
}

/// The filesystem store in `directory`, shown as its path.
fn directory(directory: PathBuf) -> Result<StoreUrl> {
    refuse_unless(cfg!(feature = "fs"), "file")?;
    if directory.as_os_str().is_empty() {
        return Err(invalid("the directory path is empty"));
    }
    let shown = directory.display().to_string();
    Ok(StoreUrl::backend(
        BackendConfig::Filesystem { directory },
        shown,
    ))
}

/// [`Error::FeatureDisabled`] for the kind of `scheme` unless it is
/// `built` in, as [`StoreUrl::parse`] answers every kind it needs a
/// feature's code to read: the memory and directory kinds need none to be
/// read, and would otherwise pass until the store is opened.
fn refuse_unless(built: bool, scheme: &str) -> Result<()> {
    match KINDS.iter().find(|(known, ..)| *known == scheme) {
        Some(&(_, kind, feature)) if !built => Err(Error::FeatureDisabled {
            backend: kind.to_owned(),
            feature,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "memory", feature = "fs"))]
    fn backend(url: &str) -> BackendConfig {
        StoreUrl::parse(url)
            .unwrap()
            .backend_config()
            .unwrap()
            .clone()
    }

    #[cfg(feature = "fs")]
    fn dir(path: &str) -> BackendConfig {
        BackendConfig::Filesystem {
            directory: PathBuf::from(path),
        }
    }

    fn refused(url: &str) -> String {
        match StoreUrl::parse(url) {
            Err(Error::InvalidConfig {
                option: "url",
                reason,
            }) => reason,
            other => panic!("{url:?} gave {other:?}"),
        }
    }

    #[cfg(feature = "memory")]
    #[test]
    fn memory_urls() {
        assert_eq!(backend("memory:"), BackendConfig::Memory);
        assert_eq!(backend("MEMORY:"), BackendConfig::Memory);
    }

    #[cfg(feature = "fs")]
    #[test]
    fn paths() {
        assert_eq!(backend("./data"), dir("./data"));
        assert_eq!(backend("data"), dir("data"));
        assert_eq!(backend("/var/lib/app"), dir("/var/lib/app"));
        assert_eq!(backend("C:\\data"), dir("C:\\data"));
        // A drive path whose names hold an `@` after a `:` (the drive's).
        for name in ["C:\\Users\\jo@corp\\store", "D:/backups/a:b@c"] {
            assert_eq!(backend(name), dir(name), "{name}");
        }
        assert_eq!(backend("./memroy:"), dir("./memroy:"));
        assert_eq!(backend("dir/with:colon"), dir("dir/with:colon"));
        // Directory names with a ':' that no address has.
        for name in [
            "a:b",
            "my_data:2024",
            "C:data",
            "C:/data",
            "x/10:00",
            "[old]/store",
            "mail@home/a",
        ] {
            assert_eq!(backend(name), dir(name), "{name}");
        }
    }

    #[cfg(feature = "fs")]
    #[test]
    fn file_urls_are_decoded() {
        assert_eq!(backend("file:///var/lib/app"), dir("/var/lib/app"));
        assert_eq!(backend("file://localhost/srv/x"), dir("/srv/x"));
        assert_eq!(backend("file:///a%20b/%C3%A9"), dir("/a b/é"));
        assert_eq!(backend("file:/srv/x"), dir("/srv/x"));
        assert_eq!(windows_drive_path("/C:/data"), "C:/data");
        assert_eq!(windows_drive_path("/srv/C:/data"), "/srv/C:/data");
        assert!(refused("file:relative").contains("file:///absolute/path"));
        assert!(refused("file://otherhost/x").contains("this machine"));
        assert!(refused("file:///x?y=1").contains("no query"));
        assert!(refused("file:///%FF").contains("UTF-8"));
        // A stray '%' is not kept as it is: the store opened would not be
        // the one meant.
        for url in ["file:///data/50%off", "file:///a%2", "file:///a%"] {
            assert!(refused(url).contains("malformed %-escape"), "{url}");
        }
        assert!(refused("file:///tmp/a%00b").contains("NUL"));
    }

    #[test]
    fn bad_urls_are_refused_by_name() {
        assert!(refused("").contains("empty"));
        assert!(refused("memory:x").contains("nothing after"));
        let unknown = refused("ftp://example.com/x");
        assert!(unknown.contains("\"ftp\""), "{unknown}");
        assert!(refused("memroy:").contains("./memroy:"));
        // A forgotten scheme: refused, not a new directory named after the
        // address, and the text (which may hold a password) not repeated.
        for address in [
            "127.0.0.1:8080",
            "[::1]:6379",
            "::1:6379",
            "2001:db8::1:6379",
            "fd00::1",
            ":s3cret@cache:6379",
            "10.0.0.1:6379/0",
            ":ab/s3cret@10.0.0.1:6379",
            "a:/s3cret@cache:6379",
            ":s3cret@h:6379",
            ":s3cret@[::1]:6379",
            ":s3cret@my_redis:6379",
            ":s3cret@cache",
            ":s3cret@cache/0",
        ] {
            let reason = refused(address);
            assert!(reason.contains("http://host:port"), "{reason}");
            assert!(!reason.contains("s3cret"), "{reason}");
        }
    }

    #[cfg(feature = "http-client")]
    #[test]
    fn sync_servers_are_named_by_their_base_url() {
        let url = StoreUrl::parse("HTTPS://sync.example.com:8443/api/").unwrap();
        assert_eq!(url.server_url(), Some("https://sync.example.com:8443/api"));
        assert_eq!(url.backend_config(), None);
        assert_eq!(url.kind(), "sync server");
        assert_eq!(url.to_string(), "https://sync.example.com:8443/api");
        let message = refused("http://tablet:secret@sync.example.com");
        assert!(message.contains("no credentials"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(refused("http:sync.example.com").contains("host:port"));
        assert!(refused("http://").contains("empty host"));
        let query = refused("http://h/?token=secret-x");
        assert!(query.contains("query"), "{query}");
        assert!(!query.contains("secret-x"), "{query}");
        // Read by the peer's own check: each of these would only fail later,
        // when a peer is built on it.
        for bad in [
            "http://:8080",
            "http://exa mple.com",
            "http://h:port",
            "http://h:99999",
        ] {
            let message = refused(bad);
            assert!(
                message.contains("invalid") || message.contains("empty"),
                "{bad}: {message}"
            );
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_urls_are_read_and_shown_without_their_password() {
        let url = StoreUrl::parse("rediss://app:hunter2@cache.example:6380/2?prefix=shop").unwrap();
        assert_eq!(url.kind(), "redis");
        assert_eq!(
            url.to_string(),
            "rediss://app@cache.example:6380/2?prefix=shop"
        );
        // Another prefix on the same server is another store, shown apart;
        // what is shown reads back as the same store.
        let other = StoreUrl::parse("rediss://cache.example:6380/2?prefix=other").unwrap();
        assert_eq!(
            other.to_string(),
            "rediss://cache.example:6380/2?prefix=other"
        );
        let again = StoreUrl::parse(&url.to_string()).unwrap();
        assert_eq!(again.to_string(), url.to_string());
        assert!(!format!("{url:?}").contains("hunter2"));
        match url.backend_config() {
            Some(BackendConfig::Redis { url }) => assert!(url.starts_with("rediss://app:")),
            other => panic!("{other:?}"),
        }
        let refused = StoreUrl::parse("redis://:hunter2@host:port")
            .unwrap_err()
            .to_string();
        assert!(!refused.contains("hunter2"), "{refused}");
        let cluster =
            StoreUrl::parse("redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002").unwrap();
        assert_eq!(
            cluster.to_string(),
            "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002"
        );
    }

    /// The refusal a build without `feature` gives for `url`.
    #[cfg(any(
        not(feature = "memory"),
        not(feature = "fs"),
        not(feature = "redis"),
        not(feature = "s3"),
        not(feature = "http-client")
    ))]
    fn disabled(url: &str) -> (String, &'static str) {
        match StoreUrl::parse(url) {
            Err(Error::FeatureDisabled { backend, feature }) => (backend, feature),
            other => panic!("{url:?} gave {other:?}"),
        }
    }

    /// Paths and `file://` URLs need no code of the filesystem backend to
    /// be read, and were taken without it: the store then failed only when
    /// opened.
    #[cfg(not(feature = "fs"))]
    #[test]
    fn paths_name_their_feature_when_it_is_off() {
        for url in ["./data", "/var/lib/app", "file:///var/lib/app"] {
            assert_eq!(disabled(url), ("filesystem".to_owned(), "fs"), "{url}");
        }
        // A malformed one is still refused as such.
        assert!(refused("file:relative").contains("file:///absolute/path"));
    }

    #[cfg(not(feature = "memory"))]
    #[test]
    fn memory_urls_name_their_feature_when_it_is_off() {
        assert_eq!(disabled("memory:"), ("memory".to_owned(), "memory"));
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_urls_name_their_feature_when_it_is_off() {
        assert_eq!(
            disabled("redis://:secret@127.0.0.1:6379"),
            ("redis".to_owned(), "redis")
        );
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_urls_name_their_feature_when_it_is_off() {
        assert_eq!(
            disabled("s3://bucket/prefix?region=eu-west-1"),
            ("s3".to_owned(), "s3")
        );
    }

    #[cfg(not(feature = "http-client"))]
    #[test]
    fn server_urls_name_their_feature_when_it_is_off() {
        assert_eq!(
            disabled("https://sync.example.com"),
            ("sync server".to_owned(), "http-client")
        );
    }

    #[test]
    fn a_refused_s3_url_never_shows_its_credentials() {
        let message = StoreUrl::parse("s3://:s3cr3tvalue@bucket")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("s3cr3tvalue"), "{message}");
    }

    #[cfg(all(feature = "fs", feature = "memory"))]
    #[test]
    fn display_gives_the_store_back() {
        for url in ["memory:", "./data", "/var/lib/app"] {
            assert_eq!(StoreUrl::parse(url).unwrap().to_string(), url);
        }
        assert_eq!(StoreUrl::parse("file:///srv").unwrap().to_string(), "/srv");
        assert_eq!(StoreUrl::parse("./d").unwrap().kind(), "filesystem");
    }
}
