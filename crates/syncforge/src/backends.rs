//! Building a backend from a configuration chosen at run time.

use std::path::PathBuf;
use std::sync::Arc;

use syncforge_core::{Error, Result, StorageBackend};

/// The metadata key under which an engine keeps its store's id (the
/// engine sets it; a store that holds it holds syncforge's data).
pub(crate) const STORE_ID_KEY: &str = "syncforge/store-id/v1";

/// A backend chosen by name, with its settings: what [`create_backend`] builds.
///
/// Every variant exists whatever features are enabled, so that asking for a
/// backend whose feature is off gives a clear error instead of a compile error
/// somewhere else.
///
/// `Debug` never shows a password: the one a Redis URL may carry is printed
/// as `***`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// The in-process store (feature `memory`, on by default).
    Memory,
    /// A directory per collection, one JSON file per record (feature `fs`).
    Filesystem {
        /// The store's root directory; created when missing.
        directory: PathBuf,
    },
    /// A Redis server or Redis Cluster (feature `redis`), by URL:
    /// `redis://[user[:password]@]host[:port][/db][?prefix=...]`,
    /// `rediss://...` for TLS, or
    /// `redis-cluster://host:port?node=host:port&node=...`. For every other
    /// setting (timeouts, ...), build `RedisBackend::connect(RedisConfig
    /// { .. })` and pass it to the builder's `backend`.
    Redis {
        /// The server's URL.
        url: String,
    },
    /// An S3 bucket or S3-compatible server (feature `s3`), by URL:
    /// `s3://bucket[/prefix][?region=..&endpoint=..&allow_http=true&path_style=true]`.
    /// Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or the default chain,
    /// never from the URL. For every other setting, build
    /// `S3Backend::new(S3Config::new(bucket).with_..(..))` and pass it to
    /// the builder's `backend`.
    S3 {
        /// The bucket's URL.
        url: String,
    },
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendConfig::Memory => f.write_str("Memory"),
            BackendConfig::Filesystem { directory } => f
                .debug_struct("Filesystem")
                .field("directory", directory)
                .finish(),
            BackendConfig::Redis { url } => f
                .debug_struct("Redis")
                .field("url", &without_password(url))
                .finish(),
            BackendConfig::S3 { url } => f
                .debug_struct("S3")
                .field("url", &s3_without_secrets(url))
                .finish(),
        }
    }
}

/// An S3 store URL as `Debug` shows it: any user part replaced by `***`,
/// and the parameters named without their values (an `endpoint` may hold a
/// user and password, and a credential given as a parameter is refused only
/// when the store is made, after a program may have logged the URL).
fn s3_without_secrets(url: &str) -> String {
    // The bucket ends at the first '/' or '?', as `S3Config::from_url`
    // reads it; a user part there (which a store refuses) may hold either,
    // so an '@' anywhere before the parameters hides the whole URL.
    let rest = url.strip_prefix("s3://").unwrap_or(url);
    let bucket_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (location, query) = url.split_once('?').unwrap_or((url, ""));
    if rest[..bucket_end].contains(':') || location.contains('@') {
        return "s3://***".to_owned();
    }
    // A parameter's name only when it is one: a secret's '?' can start
    // what looks like a parameter.
    let names: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let plain =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            format!("{}=***", if plain { name } else { "***" })
        })
        .collect();
    if names.is_empty() {
        location.to_owned()
    } else {
        format!("{location}?{}", names.join("&"))
    }
}

/// `url` with the password of its user part, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    // Split at the first `://` only after a scheme: in `redis:/app:pa://ss@h`
    // the first `://` lies inside the password.
    let split = url.split_once("://").filter(|(scheme, _)| {
        scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    let Some((scheme, rest)) = split else {
        // Malformed (`redis:/app:pw@host`, `app:pw@host:6379`): no user
        // part can be told apart, so all before the host is hidden.
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        };
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        // A user part holding an unescaped `/` or `?` (a hand-built URL that
        // a `StoreUrl` would refuse): hide all of it.
        None => match rest.rsplit_once('@') {
            Some((_, after)) => format!("{scheme}://***@{after}"),
            None => url.to_owned(),
        },
    }
}

impl BackendConfig {
    /// The backend's name, as its [`StorageBackend::name`] says it:
    /// `"memory"`, `"filesystem"`, `"redis"` or `"s3"`.
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Memory => "memory",
            BackendConfig::Filesystem { .. } => "filesystem",
            BackendConfig::Redis { .. } => "redis",
            BackendConfig::S3 { .. } => "s3",
        }
    }

    /// The cargo feature that provides this backend.
    pub fn feature(&self) -> &'static str {
        match self {
            BackendConfig::Memory => "memory",
            BackendConfig::Filesystem { .. } => "fs",
            BackendConfig::Redis { .. } => "redis",
            BackendConfig::S3 { .. } => "s3",
        }
    }
}

/// Builds the backend described by `config`.
///
/// Fails with [`Error::FeatureDisabled`] naming the cargo feature when that
/// backend was not compiled in, with [`Error::InvalidConfig`] naming the
/// option when a setting cannot work (an empty directory path, a directory
/// that cannot be created or opened), and with the backend's own error when
/// it cannot be opened. Opening a filesystem store writes nothing into a
/// directory that exists: one that cannot be written is found by the first
/// write, as [`Error::Storage`]: the engine's `build` for a new store (it
/// stores the store's id), the first put or sync for a store made before.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge::Result<()> {
/// use syncforge::{create_backend, BackendConfig};
/// let backend = create_backend(&BackendConfig::Memory).await?;
/// assert_eq!(backend.name(), "memory");
/// # Ok(())
/// # }
/// ```
pub async fn create_backend(config: &BackendConfig) -> Result<Arc<dyn StorageBackend>> {
    match config {
        #[cfg(feature = "memory")]
        BackendConfig::Memory => Ok(Arc::new(syncforge_backend_memory::MemoryBackend::new())),
        #[cfg(feature = "fs")]
        BackendConfig::Filesystem { directory } => {
            if directory.as_os_str().is_empty() {
                return Err(Error::InvalidConfig {
                    option: "directory",
                    reason: "the filesystem backend needs a directory; the path is empty"
                        .to_owned(),
                });
            }
            let store = syncforge_backend_fs::FsBackend::open(directory)
                .await
                .map_err(|error| match error {
                    Error::Storage { message, .. } => Error::InvalidConfig {
                        option: "directory",
                        reason: format!(
                            "{} cannot be used as a store: {message}",
                            directory.display()
                        ),
                    },
                    other => other,
                })?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "redis")]
        BackendConfig::Redis { url } => Ok(Arc::new(
            syncforge_backend_redis::RedisBackend::connect_url(url).await?,
        )),
        #[cfg(feature = "s3")]
        BackendConfig::S3 { url } => Ok(Arc::new(syncforge_backend_s3::S3Backend::new(
            syncforge_backend_s3::S3Config::from_url(url)?,
        )?)),
        #[allow(unreachable_patterns)] // reachable exactly when a feature is off
        other => Err(Error::FeatureDisabled {
            backend: other.name().to_owned(),
            feature: other.feature(),
        }),
    }
}

/// Whether the store `config` names already holds a syncforge store: the
/// id every engine writes when it first opens a store, or any collection.
/// Found without writing anything, where opening a store makes one: a
/// program that only reads asks this first, to refuse a typo (a directory,
/// a Redis key prefix or an S3 prefix holding nothing) instead of making a
/// store there. A memory store is always new, and holds none.
///
/// Fails as [`create_backend`] does for a backend it opens (every kind but
/// memory), and with the backend's error when it cannot be read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge::Result<()> {
/// use syncforge::{holds_store, BackendConfig};
/// assert!(!holds_store(&BackendConfig::Memory).await?);
/// # Ok(())
/// # }
/// ```
pub async fn holds_store(config: &BackendConfig) -> Result<bool> {
    match config {
        BackendConfig::Memory => Ok(false),
        #[cfg(feature = "fs")]
        BackendConfig::Filesystem { directory } => {
            syncforge_backend_fs::holds_store(directory).await
        }
        other => {
            let backend = create_backend(other).await?;
            let held = match backend.get_meta(STORE_ID_KEY).await {
                Ok(Some(_)) => Ok(true),
                Ok(None) => backend
                    .list_collections()
                    .await
                    .map(|names| !names.is_empty()),
                Err(error) => Err(error),
            };
            let closed = backend.close().await;
            let held = held?;
            closed?;
            Ok(held)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_an_s3_credential() {
        for (url, shown) in [
            ("s3://AKID:s3cret@bucket/p", "s3://***"),
            ("s3://AKID:s3?cret@bucket", "s3://***"),
            ("s3://AKID:s3/cret@bucket", "s3://***"),
            ("s3://tok/s3cret@bucket", "s3://***"),
            ("s3://bucket/p?s3cr/et@x", "s3://bucket/p?***=***"),
            (
                "s3://bucket/p?endpoint=https://k:s3cret@minio&region=eu",
                "s3://bucket/p?endpoint=***&region=***",
            ),
            (
                "s3://bucket/p?secret_access_key=s3cret",
                "s3://bucket/p?secret_access_key=***",
            ),
            ("s3://bucket/p", "s3://bucket/p"),
        ] {
            let text = format!(
                "{:?}",
                BackendConfig::S3 {
                    url: url.to_owned()
                }
            );
            assert!(text.contains(shown), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn debug_never_shows_a_redis_password() {
        for (url, shown) in [
            (
                "redis://app:s3cret@cache:6379/2?prefix=x",
                "redis://app:***@cache:6379/2?prefix=x",
            ),
            ("rediss://:s3cret@cache", "rediss://:***@cache"),
            ("redis://app@cache/0", "redis://app:***@cache/0"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("redis://app:s3/cret@cache:6379", "redis://***@cache:6379"),
            ("redis://app:s3?cret@cache", "redis://***@cache"),
            ("redis:/app:s3cret@cache", "***@cache"),
            ("app:s3cret@cache:6379", "***@cache:6379"),
            ("redis:/app:s3://cret@cache", "***@cache"),
        ] {
            let text = format!(
                "{:?}",
                BackendConfig::Redis {
                    url: url.to_owned()
                }
            );
            assert!(text.contains(shown), "{text}");
            assert!(!text.contains("cret"), "{text}");
        }
    }

    #[tokio::test]
    async fn redis_without_its_feature_names_the_feature() {
        let config = BackendConfig::Redis {
            url: "redis://127.0.0.1:1".to_owned(),
        };
        assert_eq!((config.name(), config.feature()), ("redis", "redis"));
        if cfg!(not(feature = "redis")) {
            assert!(matches!(
                create_backend(&config).await,
                Err(Error::FeatureDisabled {
                    feature: "redis",
                    ..
                })
            ));
        }
    }
}
