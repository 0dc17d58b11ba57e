//! [`RedisConfig`]: where the server is, how to log in, which key prefix to
//! use; built by hand or from a `redis://`, `rediss://` or
//! `redis-cluster://` URL.

use std::fmt;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use syncforge_core::{Error, Result};

/// The key prefix when none is given, as in the TypeScript original.
pub const DEFAULT_KEY_PREFIX: &str = "dse";
/// How long [`RedisBackend::connect`](crate::RedisBackend::connect) waits for
/// the server by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may take by default before it fails as
/// [`Error::Unavailable`] (which the engine retries).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The port when none is given.
pub const DEFAULT_PORT: u16 = 6379;

/// Where a Redis server or cluster is and how to use it.
///
/// Build it field by field from [`Default`] or parse a URL with
/// [`from_url`](Self::from_url). `Debug` and `Display` never show the
/// password, and neither does any error the backend returns.
///
/// ```
/// use syncforge_backend_redis::RedisConfig;
///
/// let config = RedisConfig {
///     host: "redis.internal".to_owned(),
///     password: Some("s3cret".to_owned()),
///     key_prefix: "catalog".to_owned(),
///     ..RedisConfig::default()
/// };
/// assert_eq!(config.to_string(), "redis://:***@redis.internal:6379/0 (prefix \"catalog\")");
///
/// let cluster = RedisConfig::from_url("redis-cluster://10.0.0.1:7001?node=10.0.0.2:7001")?;
/// assert!(cluster.cluster);
/// assert_eq!(cluster.nodes, [("10.0.0.2".to_owned(), 7001)]);
/// # Ok::<(), syncforge_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Host name or IP address of the server (of one seed node for a cluster).
    pub host: String,
    /// Port of the server (default 6379).
    pub port: u16,
    /// Whether the server is a Redis Cluster: the client then discovers every
    /// node from the seed nodes and follows `MOVED` redirections. While a
    /// slot is being migrated, a call on its keys already moved is answered
    /// `ASK` and fails as transient, as every such call does until the
    /// migration ends; the first call after it finds the slot's new node.
    pub cluster: bool,
    /// More seed nodes of a cluster besides `host:port`, tried when it is down.
    pub nodes: Vec<(String, u16)>,
    /// ACL user name (Redis 6+); `None` logs in as the default user, and an
    /// empty name is refused. A user
    /// name without a password logs in as that user with an empty password,
    /// which a `nopass` user accepts and a user with a password refuses
    /// (`WRONGPASS`): never as the default user instead.
    pub username: Option<String>,
    /// Password; never shown by `Debug`, `Display` or errors.
    pub password: Option<String>,
    /// Database number (default 0). A cluster has only database 0.
    pub db: u8,
    /// Prefix of every key this backend writes (default `"dse"`). Two stores
    /// with different prefixes never see each other's data. Must not be
    /// empty, nor contain `{`, `}` or control characters.
    pub key_prefix: String,
    /// Whether to connect over TLS (crate feature `tls`, on by default).
    /// The server's certificate must be signed by an authority the system
    /// trusts (its store, or the bundle `SSL_CERT_FILE` names) or one of
    /// [`tls_root_certificates`](Self::tls_root_certificates). No client
    /// certificate is sent: the server's `tls-auth-clients` must be `no` or
    /// `optional`.
    pub tls: bool,
    /// PEM bundles of certificate authorities trusted besides the system's,
    /// for a server whose certificate a private authority signed (each
    /// bundle holds one certificate or more). Only with `tls`.
    pub tls_root_certificates: Vec<Vec<u8>>,
    /// How long connecting may take before it fails (default 5 s).
    pub connect_timeout: Duration,
    /// How long one command may take before it fails as transient, and the
    /// handle connects again in case its connection went silent (on a
    /// cluster, to the node the command went to) (default 10 s).
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            host: "127.0.0.1".to_owned(),
            port: DEFAULT_PORT,
            cluster: false,
            nodes: Vec::new(),
            username: None,
            password: None,
            db: 0,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            tls: false,
            tls_root_certificates: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl RedisConfig {
    /// Reads a URL:
    ///
    /// * `redis://[user[:password]@]host[:port][/db]` — one server;
    /// * `rediss://...` — the same over TLS;
    /// * `redis-cluster://[user[:password]@]host:port[?node=host:port&node=...]`
    ///   — a cluster, from one or more seed nodes (`rediss-cluster://` over TLS).
    ///
    /// A user without a password (`redis://app@host`) logs in as that user
    /// with an empty password, as [`username`](Self::username) says; an
    /// empty user and password (`redis://:@host`) are no credentials. Every
    /// form also takes `?prefix=...` for the key prefix. User,
    /// password and parameters may be percent-encoded, and a `/`, `?` or `@`
    /// in them must be (`%2F`, `%3F`, `%40`), as must a `#` in a parameter
    /// (`%23`). Anything else is refused with [`Error::InvalidConfig`],
    /// whose message never contains the password: option `url`, or the
    /// setting at fault (`host`, `db`, `key_prefix`...) as
    /// [`RedisBackend::connect`](crate::RedisBackend::connect) would refuse it.
    ///
    /// ```
    /// use syncforge_backend_redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_url("rediss://app:p%40ss@cache.example:6380/2?prefix=shop")?;
    /// assert_eq!((config.host.as_str(), config.port, config.db), ("cache.example", 6380, 2));
    /// assert_eq!(config.username.as_deref(), Some("app"));
    /// assert_eq!(config.password.as_deref(), Some("p@ss"));
    /// assert!(config.tls);
    /// assert_eq!(config.key_prefix, "shop");
    /// # Ok::<(), syncforge_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<RedisConfig> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            url_error("expected scheme://host (for example redis://127.0.0.1:6379)")
        })?;
        let (cluster, tls) = match scheme {
            "redis" => (false, false),
            "rediss" => (false, true),
            "redis-cluster" => (true, false),
            "rediss-cluster" => (true, true),
            // Not quoted: a URL mistyped before its "://" may hold the
            // password there.
            _ => {
                return Err(url_error(
                    "an unknown scheme: use redis, rediss, redis-cluster or rediss-cluster"
                        .to_owned(),
                ));
            }
        };
        // The user part ends at the first '/' or '?'. An '@' after that is
        // a password holding an unescaped '/' or '?' (base64 passwords often
        // do): parsed on, its pieces would be quoted as a host, port, database
        // or parameter in the error, so it is refused here, quoting nothing.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if rest[authority_end..].contains('@') {
            return Err(url_error(
                "an '@' after the host's first '/' or '?': percent-encode '/', '?' and '@' \
                 in the user name, password and parameters (%2F, %3F, %40)",
            ));
        }
        // A '#' in the database or a parameter went into it (a key prefix
        // of another store, silently). Not quoted: a parameter may follow
        // a password typed in the wrong place.
        if rest[authority_end..].contains('#') {
            return Err(url_error(
                "a '#' after the host: percent-encode it as %23 in a parameter",
            ));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        // The password may contain '@' only percent-encoded; the last '@'
        // still ends the user part, as browsers read it.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let mut config = RedisConfig {
            cluster,
            tls,
            ..RedisConfig::default()
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            let user = percent_decode(user, "user name")?;
            config.username = (!user.is_empty()).then_some(user);
            config.password = match password {
                // `redis://:@host`, as a URL built from two empty settings
                // reads: no credentials, not an empty password, which a
                // server without one refuses.
                Some("") if config.username.is_none() => None,
                Some(password) => Some(percent_decode(password, "password")?),
                None => None,
            };
        }
        let (host, port) = parse_host_port(hostport)?;
        config.host = host;
        config.port = port;
        if !path.is_empty() {
            config.db = decimal(path).ok_or_else(|| {
                url_error(
                    "the path after the host is not a database number from 0 to 255 (a \
                     password goes before an '@': redis://user:password@host)"
                        .to_owned(),
                )
            })?;
        }
        let mut seen_prefix = false;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "node" if cluster => config
                    .nodes
                    .push(parse_host_port(&percent_decode(value, "node")?)?),
                "node" => {
                    return Err(url_error(
                        "`node=` names cluster nodes: use a redis-cluster:// URL",
                    ))
                }
                "prefix" if seen_prefix => {
                    return Err(url_error("`prefix=` is given twice"));
                }
                "prefix" => {
                    seen_prefix = true;
                    config.key_prefix = percent_decode(value, "prefix")?;
                }
                // Not quoted, for the same reason as the path.
                _ => {
                    return Err(url_error(
                        "an unknown parameter (known: node, prefix)".to_owned(),
                    ))
                }
            }
        }
        // Refused now, as connecting would refuse them.
        config.check_addressing()?;
        Ok(config)
    }

    /// The address for messages: scheme, host, port (and the other seed
    /// nodes of a cluster), database; never the password.
    pub fn address(&self) -> String {
        let scheme = match (self.cluster, self.tls) {
            (false, false) => "redis",
            (false, true) => "rediss",
            (true, false) => "redis-cluster",
            (true, true) => "rediss-cluster",
        };
        let mut out = format!("{scheme}://{}", host_port(&self.host, self.port));
        if self.cluster {
            for (i, (host, port)) in self.nodes.iter().enumerate() {
                out.push(if i == 0 { '?' } else { '&' });
                out.push_str("node=");
                out.push_str(&host_port(host, *port));
            }
        } else {
            out.push_str(&format!("/{}", self.db));
        }
        out
    }

    /// The store's URL as it may be shown: [`address`](Self::address) with
    /// the user name and the key prefix (when not the default), never the
    /// password. Two stores on one server under two prefixes show apart,
    /// and [`from_url`](Self::from_url) reads it back as the same store
    /// (given the password).
    pub fn shown_url(&self) -> String {
        let mut out = self.address();
        if let (Some(user), Some(at)) = (&self.username, out.find("://")) {
            out.insert_str(at + 3, &format!("{}@", percent_encode(user)));
        }
        if self.key_prefix != DEFAULT_KEY_PREFIX {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str("prefix=");
            out.push_str(&percent_encode(&self.key_prefix));
        }
        out
    }

    /// Checks every setting, so that a bad one is refused before connecting.
    pub(crate) fn validate(&self) -> Result<()> {
        self.check_addressing()?;
        let invalid =
            |option: &'static str, reason: String| Error::InvalidConfig { option, reason };
        for (option, timeout) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
        ] {
            if timeout.is_zero() {
                return Err(invalid(option, "must be longer than zero".to_owned()));
            }
        }
        // A URL's empty user is no user; one set by hand (from an empty
        // environment variable, say) would log in as the user "", which
        // no server has, or, without a password, as the default user.
        if self.username.as_deref() == Some("") {
            return Err(invalid(
                "username",
                "is empty: use None to log in as the default user".to_owned(),
            ));
        }
        if self.tls && !cfg!(feature = "tls") {
            return Err(invalid(
                "tls",
                "TLS needs the `tls` feature of syncforge-backend-redis".to_owned(),
            ));
        }
        if !self.tls && !self.tls_root_certificates.is_empty() {
            return Err(invalid(
                "tls_root_certificates",
                "certificate authorities are for TLS: set `tls` (or use a rediss:// URL)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Checks what a URL gives: the hosts and ports, the database and the
    /// key prefix.
    fn check_addressing(&self) -> Result<()> {
        let invalid =
            |option: &'static str, reason: String| Error::InvalidConfig { option, reason };
        if self.host.is_empty() {
            return Err(invalid("host", "is empty".to_owned()));
        }
        if self.port == 0 || self.nodes.iter().any(|(_, port)| *port == 0) {
            return Err(invalid("port", "0 is not a port".to_owned()));
        }
        if self.nodes.iter().any(|(host, _)| host.is_empty()) {
            return Err(invalid("nodes", "a seed node has an empty host".to_owned()));
        }
        if let Some(reason) = bad_host(&self.host) {
            return Err(invalid("host", reason));
        }
        if let Some(reason) = self.nodes.iter().find_map(|(host, _)| bad_host(host)) {
            return Err(invalid("nodes", reason));
        }
        if !self.cluster && !self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "seed nodes are for a cluster: set `cluster` (or use a redis-cluster:// URL)"
                    .to_owned(),
            ));
        }
        if self.cluster && self.db != 0 {
            return Err(invalid(
                "db",
                format!("a Redis Cluster has only database 0, not {}", self.db),
            ));
        }
        if self.key_prefix.is_empty() {
            return Err(invalid("key_prefix", "is empty".to_owned()));
        }
        if let Some(bad) = self
            .key_prefix
            .chars()
            .find(|c| matches!(c, '{' | '}') || c.is_control())
        {
            return Err(invalid(
                "key_prefix",
                format!(
                    "{:?} contains {bad:?}: braces would change which cluster slot a collection's keys share, and control characters are refused",
                    self.key_prefix
                ),
            ));
        }
        Ok(())
    }
}

/// Shows the address and the user, with the password as `***`.
impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self.address();
        let (scheme, rest) = address.split_once("://").unwrap_or(("redis", &address));
        let user = self.username.as_deref().unwrap_or("");
        match (&self.password, user.is_empty()) {
            (Some(_), _) => write!(f, "{scheme}://{user}:***@{rest}")?,
            (None, false) => write!(f, "{scheme}://{user}@{rest}")?,
            (None, true) => write!(f, "{address}")?,
        }
        write!(f, " (prefix {:?})", self.key_prefix)
    }
}

/// Every field, with the password as `***`.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("cluster", &self.cluster)
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("key_prefix", &self.key_prefix)
            .field("tls", &self.tls)
            .field("tls_root_certificates", &self.tls_root_certificates.len())
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// Why `host` names no host, if it does not: a name or address with a port
/// or list in it (`cache:6380`, `h1,h2`), or characters no name has (a
/// percent-encoded name in a URL is not decoded: `%2D` is refused). Caught
/// here, it is a clear refusal instead of a lookup failing as transient.
/// The host is not quoted: credentials typed into it by mistake
/// (`app:s3cret@cache`) would be.
fn bad_host(host: &str) -> Option<String> {
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Some(
            "a host holds ':' and is no IPv6 address (a port goes in `port`, further nodes in \
             `nodes`, a user and password in their own fields or before the '@' of a URL; an \
             IPv6 address in a URL goes in brackets)"
                .to_owned(),
        );
    }
    host.chars()
        .find(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ',' | '/' | '?' | '#' | '@' | '%' | '[' | ']')
        })
        .map(|bad| format!("a host holds {bad:?}, which no host name or address does"))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `text` as a number written in decimal digits only: Rust's own parsing
/// also takes a leading `+` (`redis://h:+6379/+2`), which no Redis URL has.
fn decimal<N: std::str::FromStr>(text: &str) -> Option<N> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host_port(text: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| url_error("an unclosed '[' in the host".to_owned()))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(url_error(
                        "expected ':port' after the host's ']'".to_owned(),
                    ))
                }
            },
        }
    } else {
        // An IPv6 address, whose last group reads as a port (`fd00::1:2`):
        // it goes in brackets, as in every URL.
        if syncforge_core::unbracketed_ipv6(text) {
            return Err(Error::InvalidConfig {
                option: "host",
                reason: "an IPv6 address goes in brackets: redis://[::1]:6379".to_owned(),
            });
        }
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    // Neither the host nor the port is quoted in these errors: a URL whose
    // '@' was left out (`redis://app:s3cret`) holds the password there.
    if host.is_empty() {
        return Err(url_error("no host before the port".to_owned()));
    }
    let port = match port {
        Some(port) => decimal::<u16>(port).filter(|p| *p != 0).ok_or_else(|| {
            url_error(
                "what follows the host's last ':' is not a port from 1 to 65535 (a password \
                     goes before an '@': redis://user:password@host)"
                    .to_owned(),
            )
        })?,
        None => DEFAULT_PORT,
    };
    Ok((host.to_owned(), port))
}

/// Decodes `%XX` escapes. `what` names the part for the error, which never
/// repeats the text (it may be a password). A `%` not followed by two hex
/// digits is refused rather than kept as it is.
fn percent_decode(text: &str, what: &str) -> Result<String> {
    syncforge_core::percent_decode(text).map_err(|error| url_error(format!("the {what} {error}")))
}

/// The bytes [`percent_encode`] keeps: the unreserved ones of RFC 3986.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` with every byte but the unreserved ones of RFC 3986 %-escaped:
/// what [`percent_decode`] reads back as `text`.
fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

fn url_error(reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        option: "url",
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shown URL names the same store, user and prefix included, and
    /// never the password.
    #[test]
    fn the_shown_url_reads_back_as_the_same_store_without_its_password() {
        for url in [
            "rediss://app:hunter2@cache.example:6380/2?prefix=shop",
            "redis://a%40b%3Ac:hunter2@h/0?prefix=p%2Fq%20r",
            "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&prefix=x",
            "redis://localhost",
        ] {
            let config = RedisConfig::from_url(url).unwrap();
            let shown = config.shown_url();
            assert!(!shown.contains("hunter2"), "{shown}");
            let again = RedisConfig::from_url(&shown).unwrap();
            assert_eq!(
                again,
                RedisConfig {
                    password: None,
                    ..config
                },
                "{url} shown as {shown}"
            );
        }
        assert_eq!(
            RedisConfig::from_url("rediss://app:pw@cache:6380/2?prefix=shop")
                .unwrap()
                .shown_url(),
            "rediss://app@cache:6380/2?prefix=shop"
        );
    }

    #[test]
    fn plain_urls() {
        let config = RedisConfig::from_url("redis://localhost").unwrap();
        assert_eq!(
            config,
            RedisConfig {
                host: "localhost".to_owned(),
                ..RedisConfig::default()
            }
        );
        let config = RedisConfig::from_url("redis://:pw@127.0.0.1:7000/3").unwrap();
        assert_eq!(config.password.as_deref(), Some("pw"));
        assert_eq!(config.username, None);
        assert_eq!((config.port, config.db), (7000, 3));
        let config = RedisConfig::from_url("redis://[::1]:7001/").unwrap();
        assert_eq!((config.host.as_str(), config.port), ("::1", 7001));
        assert_eq!(config.address(), "redis://[::1]:7001/0");
    }

    #[test]
    fn cluster_urls() {
        let config = RedisConfig::from_url(
            "rediss-cluster://u:p@10.0.0.1:7001?node=10.0.0.2:7002&node=[fe80::1]:7003&prefix=x",
        )
        .unwrap();
        assert!(config.cluster && config.tls);
        assert_eq!(
            config.nodes,
            [("10.0.0.2".to_owned(), 7002), ("fe80::1".to_owned(), 7003)]
        );
        assert_eq!(config.key_prefix, "x");
        assert_eq!(
            config.address(),
            "rediss-cluster://10.0.0.1:7001?node=10.0.0.2:7002&node=[fe80::1]:7003"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for url in [
            "http://h",
            "redis:/h",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/256",
            "redis://h:+6379",
            "redis://h/+2",
            "redis://h/x",
            "redis://h?node=a:1",
            "redis://h?color=blue",
            "redis://u:secret%zz@h",
            // A sign is no hex digit, though `u8::from_str_radix` takes one.
            "redis://u:pa%+Fss@h",
            "redis://u:secret%-1@h",
            "redis-cluster://h:7000?node=a%+31:7001",
            "redis://[::1",
            // Unescaped '/' or '?' in the password: the text after either
            // would be read as the host, port, database or a parameter.
            "redis://app:secret/x@cache:6379",
            "redis://app:6380/secret@h",
            "redis://:7000/1secret@h",
            "redis://u:pa?secret@h",
            "redis-cluster://u:pa?secret@h:7000&node=h:7001",
            // The '@' left out: the password reads as the port, or as a
            // host with a port.
            "redis://app:secret",
            "redis://:secret",
            "redis://[app:secret",
            "redis://app:6380/secret",
            "redis://app:6380?secret",
            "redis:/u:secret@h?prefix=http://x",
        ] {
            assert_url_refused_without(url, "secret");
        }
        // Credentials typed into the host field, or a seed node's.
        for (host, nodes) in [
            ("app:secret@cache", vec![]),
            ("app:secret", vec![]),
            ("cache", vec![("app:secret@n1".to_owned(), 7001)]),
            ("app secret", vec![]),
        ] {
            let config = RedisConfig {
                host: host.to_owned(),
                nodes,
                cluster: true,
                ..RedisConfig::default()
            };
            let error = config.validate().unwrap_err();
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    /// A '#' went into the key prefix (another store, silently) or the
    /// password; a second `prefix=` silently won; and what connecting
    /// refuses (an empty prefix, a database on a cluster) was taken by the
    /// URL and refused only later. All are refused when the URL is read.
    #[test]
    fn urls_a_store_would_refuse_or_misread_are_refused_when_read() {
        assert_url_refused_without("redis://h?prefix=shop#secret", "secret");
        assert_url_refused_without("redis://h/0#secret", "secret");
        // In the password, a '#' is the password's own.
        assert_eq!(
            RedisConfig::from_url("redis://:pa#ss@h")
                .unwrap()
                .password
                .as_deref(),
            Some("pa#ss")
        );
        assert_url_refused_without("redis://h?prefix=a&prefix=secret", "secret");
        for (url, option) in [
            ("redis://h?prefix=", "key_prefix"),
            ("redis://h?prefix=a%7Bb", "key_prefix"),
            ("redis-cluster://h:7000/3", "db"),
        ] {
            let error = RedisConfig::from_url(url).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidConfig { option: found, .. } if *found == option),
                "{url}: {error:?}"
            );
        }
        assert_eq!(
            RedisConfig::from_url("redis://h?prefix=a%23b")
                .unwrap()
                .key_prefix,
            "a#b"
        );
    }

    /// `url` is refused as a bad `url`, in a message that does not quote
    /// `hidden`.
    fn assert_url_refused_without(url: &str, hidden: &str) {
        let error = RedisConfig::from_url(url).unwrap_err();
        assert!(
            matches!(error, Error::InvalidConfig { option: "url", .. }),
            "{url}: {error:?}"
        );
        assert!(!error.to_string().contains(hidden), "{error}");
    }

    /// Parameters may be percent-encoded, `node=` as much as `prefix=`.
    #[test]
    fn node_parameters_are_percent_decoded() {
        let config = RedisConfig::from_url("redis-cluster://a:7000?node=10.0.0.2%3A7001").unwrap();
        assert_eq!(config.nodes, [("10.0.0.2".to_owned(), 7001)]);
        let config =
            RedisConfig::from_url("redis-cluster://a:7000?node=%5Bfe80%3A%3A1%5D%3A7003").unwrap();
        assert_eq!(config.nodes, [("fe80::1".to_owned(), 7003)]);
    }

    /// A sign after '%' is no hex digit: refused in every part, quoting none
    /// of it.
    #[test]
    fn a_signed_percent_escape_is_refused() {
        for url in [
            "redis://u:pa%+Fss@h",
            "redis://u:sekr%+Fet@h",
            "redis://sekr%+F:pass@h",
            "redis://h?prefix=sekr%+Fb",
        ] {
            assert_url_refused_without(url, "sekr");
        }
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let config = RedisConfig::from_url("redis://ann:hunter2@h:1/4?prefix=p").unwrap();
        for text in [
            format!("{config}"),
            format!("{config:?}"),
            format!("{config:#?}"),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        assert_eq!(config.to_string(), "redis://ann:***@h:1/4 (prefix \"p\")");
        let no_password = RedisConfig::from_url("redis://ann@h:1/4").unwrap();
        assert_eq!(
            no_password.to_string(),
            "redis://ann@h:1/4 (prefix \"dse\")"
        );
    }

    #[test]
    fn validation_names_the_option() {
        let check = |config: RedisConfig| match config.validate() {
            Err(Error::InvalidConfig { option, .. }) => option,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let base = RedisConfig::default;
        assert!(base().validate().is_ok());
        assert_eq!(
            check(RedisConfig {
                username: Some(String::new()),
                password: Some("pw".to_owned()),
                ..base()
            }),
            "username"
        );
        assert_eq!(
            check(RedisConfig {
                key_prefix: "a{b}".to_owned(),
                ..base()
            }),
            "key_prefix"
        );
        assert_eq!(
            check(RedisConfig {
                key_prefix: String::new(),
                ..base()
            }),
            "key_prefix"
        );
        assert_eq!(
            check(RedisConfig {
                cluster: true,
                db: 1,
                ..base()
            }),
            "db"
        );
        assert_eq!(
            check(RedisConfig {
                nodes: vec![("h".to_owned(), 1)],
                ..base()
            }),
            "nodes"
        );
        assert_eq!(
            check(RedisConfig {
                command_timeout: Duration::ZERO,
                ..base()
            }),
            "command_timeout"
        );
        assert_eq!(
            check(RedisConfig {
                host: String::new(),
                ..base()
            }),
            "host"
        );
        for host in [
            "cache:6380",
            "h1:7000,h2",
            ":",
            "a b",
            "cache/0",
            "user@cache",
            "cache%2Dhost",
            "[cache]",
        ] {
            let config = RedisConfig {
                host: host.to_owned(),
                ..base()
            };
            assert_eq!(check(config), "host", "{host:?}");
        }
        for host in ["::1", "fe80::1", "10.0.0.1", "redis.internal", "cache-1"] {
            let config = RedisConfig {
                host: host.to_owned(),
                ..base()
            };
            assert!(config.validate().is_ok(), "{host:?}");
        }
        assert_eq!(
            check(RedisConfig {
                cluster: true,
                nodes: vec![("h2:7001".to_owned(), 7001)],
                ..base()
            }),
            "nodes"
        );
        // A list where a cluster URL takes `?node=`, and an IPv6 address
        // without its brackets.
        // Refused as the URL is read, naming the host.
        // `fd00::1:2` was read as host `fd00::1`, port 2.
        for url in [
            "redis-cluster://h1:7000,h2:7001",
            "redis://::1",
            "redis://fd00::1:2",
            "redis://u:pw@::1:6379/0",
            "redis-cluster://[::1]:7000?node=fd00::2:7001",
            // Percent-encoded: no host name holds a '%', and none is
            // decoded, so the lookup would fail as if the server were down.
            "redis://cache%2Dhost:6379",
        ] {
            let error = RedisConfig::from_url(url).unwrap_err();
            assert!(
                matches!(error, Error::InvalidConfig { option: "host", .. }),
                "{url}: {error:?}"
            );
        }
        assert_eq!(RedisConfig::from_url("redis://[::1]").unwrap().host, "::1");
    }
}
