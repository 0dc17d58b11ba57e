//! [`S3Config`]: where the bucket is, how to sign in, and how hard to try.

use std::ffi::OsString;
use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use syncforge_core::{Error, Result};

/// Everything [`S3Backend::new`](crate::S3Backend::new) needs to reach a
/// bucket on S3 or an S3-compatible server.
///
/// Built with [`S3Config::new`] and the `with_*` methods. Credentials are
/// optional: without them the default chain is used (the `AWS_*`
/// environment variables, web identity, ECS and EC2 instance metadata).
/// The HTTP client's `AWS_*` settings (`AWS_PROXY_URL`, ...) apply either
/// way. `Debug` never shows the access key id, the secret or the session token.
///
/// ```
/// use std::time::Duration;
/// use syncforge_backend_s3::S3Config;
///
/// // A MinIO, LocalStack or moto server on this machine.
/// let config = S3Config::new("readings")
///     .with_endpoint("http://127.0.0.1:9000")
///     .with_allow_http(true)
///     .with_path_style(true)
///     .with_credentials("minio", "minio-secret")
///     .with_request_timeout(Duration::from_secs(10));
/// assert!(!format!("{config:?}").contains("minio-secret"));
/// ```
#[derive(Clone)]
pub struct S3Config {
    pub(crate) bucket: String,
    /// `None`: the environment's (`AWS_REGION`, `AWS_DEFAULT_REGION`), else
    /// [`DEFAULT_REGION`].
    pub(crate) region: Option<String>,
    pub(crate) prefix: String,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    pub(crate) session_token: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) allow_http: bool,
    pub(crate) path_style: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_retries: usize,
    pub(crate) retry_timeout: Duration,
    pub(crate) options: StoreOptions,
}

/// Tuning shared by [`S3Config`] and [`S3Backend::from_store`](crate::S3Backend::from_store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Requests one handle keeps in flight at most (default 64: the writes
    /// of an engine batch, 100 records by default, go out in two rounds; at
    /// 20 ms a request, a sync of 1,000 records takes about 1.2 s instead of
    /// 1.6 s with 32).
    pub max_in_flight: NonZeroUsize,
    /// Every this many feed entries, the writer of the entry folds the older
    /// entries of its collection into a segment (default 256). Lower values
    /// keep fewer objects in the bucket and cost more compaction work.
    pub compaction_interval: NonZeroU64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_in_flight: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            compaction_interval: NonZeroU64::new(256).unwrap_or(NonZeroU64::MIN),
        }
    }
}

/// The region used when none is given, here or in the environment.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The region requests go to: the one configured, else the environment's
/// (read through `env`, as the AWS tools name it), else [`DEFAULT_REGION`].
fn region(configured: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    given_or_set(configured, env, &["AWS_REGION", "AWS_DEFAULT_REGION"])
        .unwrap_or_else(|| DEFAULT_REGION.to_owned())
}

/// Refuses a region no S3 service names: it becomes part of a host name and
/// of every request's signature, and a space or a `/` in it made every call
/// fail in the HTTP client, which a store reports as a passing outage to be
/// tried again, not as the configuration's mistake.
fn check_region(region: &str) -> Result<()> {
    let named = region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if named {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        option: "region",
        reason: format!(
            "{region:?} is not a region: letters, digits, '-', '_' and '.' only (such as \
             eu-west-1)"
        ),
    })
}

/// The endpoint requests go to: the one configured, else the environment's
/// (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else `AWS_ENDPOINT`,
/// read through `env`, as the AWS tools name and rank them), else none
/// (Amazon S3 itself). Read here, not left to the client's own reading of
/// the environment, so that an endpoint from either place is checked and
/// given the bucket in the same way, whatever the credentials.
fn endpoint(configured: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    given_or_set(
        configured,
        env,
        &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"],
    )
}

/// The client's settings from the `AWS_*` variables among `vars` (keys,
/// web identity, container credentials, ...), as
/// [`AmazonS3Builder::from_env`] reads them, less the endpoints and the
/// variables set empty: the endpoints are read and ranked by [`endpoint`]
/// (the client would rank `AWS_ENDPOINT_URL_S3` above a configured
/// endpoint), and an empty value (a template's unset variable) is no
/// setting, as the AWS tools take it, where the client took it as given:
/// empty keys in place of the role's, an empty endpoint (every request to a
/// relative address), an empty flag failing the build. A credential that
/// could not be sent is refused ([`check_credential`]).
/// The HTTP client's settings ([`client_options_env`]) are left out: they
/// apply with static credentials too.
fn client_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<AmazonS3Builder> {
    let mut builder = AmazonS3Builder::new();
    for (name, key, value) in aws_settings(vars) {
        match key {
            AmazonS3ConfigKey::Endpoint
            | AmazonS3ConfigKey::S3Endpoint
            | AmazonS3ConfigKey::Client(_) => continue,
            AmazonS3ConfigKey::AccessKeyId
            | AmazonS3ConfigKey::SecretAccessKey
            | AmazonS3ConfigKey::Token => check_credential(&name, &value)?,
            _ => {}
        }
        builder = builder.with_config(key, value);
    }
    Ok(builder)
}

/// The HTTP client's settings among the `AWS_*` variables of `vars`
/// (`AWS_PROXY_URL`, `AWS_PROXY_CA_CERTIFICATE`, `AWS_USER_AGENT`, ...),
/// as [`AmazonS3Builder::from_env`] reads them, less those set empty. The
/// configuration's own settings (timeouts, `allow_http`) are set over them.
fn client_options_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> ClientOptions {
    aws_settings(vars)
        .filter_map(|(_, key, value)| match key {
            AmazonS3ConfigKey::Client(key) => Some((key, value)),
            _ => None,
        })
        .fold(ClientOptions::new(), |options, (key, value)| {
            options.with_config(key, value)
        })
}

/// The client settings among `vars`: each `AWS_*` variable set, not empty,
/// whose name the client knows, with its name, key and value.
fn aws_settings(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> impl Iterator<Item = (String, AmazonS3ConfigKey, String)> {
    vars.into_iter().filter_map(|(name, value)| {
        let (Ok(name), Ok(value)) = (name.into_string(), value.into_string()) else {
            return None;
        };
        if !name.starts_with("AWS_") || value.is_empty() {
            return None;
        }
        let key = name
            .to_ascii_lowercase()
            .parse::<AmazonS3ConfigKey>()
            .ok()?;
        Some((name, key, value))
    })
}

/// Refuses a credential (named by `what`, never shown) holding a control
/// character, a trailing newline of a secret file say: the client puts the
/// key id and the session token in each request's headers, and panics on
/// every signed request when it cannot.
fn check_credential(what: &str, value: &str) -> Result<()> {
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidConfig {
            option: "credentials",
            reason: format!(
                "{what} holds a control character (a trailing newline?): no request could carry it"
            ),
        });
    }
    Ok(())
}

/// Whether `bucket` can stand in front of a host name, as virtual-hosted
/// requests put it: one label of lowercase letters, digits and `-`. A
/// dotted name is a host name of several labels, which the wildcard
/// certificate of `*.s3.<region>.amazonaws.com` (or of any endpoint) does
/// not cover; capitals, `_` and longer names are no host name at all.
fn fits_a_host_name(bucket: &str) -> bool {
    bucket.len() <= 63
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The `configured` value, else that of the first of the environment
/// variables `names` that is set (read through `env`). An empty value says
/// nothing: the next place is asked.
fn given_or_set(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    names: &[&str],
) -> Option<String> {
    let given = |value: &String| !value.is_empty();
    configured
        .map(str::to_owned)
        .filter(given)
        .or_else(|| names.iter().find_map(|name| env(name).filter(given)))
}

/// The prefix used when none is given (the TypeScript library's).
pub const DEFAULT_PREFIX: &str = "dse";

/// The longest bucket name S3 ever allowed (in us-east-1, before 2018);
/// a name of this form beyond 63 bytes may still name a bucket.
const MAX_LEGACY_BUCKET: usize = 255;

impl S3Config {
    /// A configuration for `bucket` in the environment's region
    /// (`AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`), prefix `dse`,
    /// HTTPS, virtual-hosted-style requests, credentials from the default
    /// chain, 30 s per request, 5 s to connect, 3 retries within 30 s, 64
    /// requests in flight.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            region: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            endpoint: None,
            allow_http: false,
            path_style: false,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            options: StoreOptions::default(),
        }
    }

    /// A configuration from a store URL:
    /// `s3://bucket[/prefix][?region=..&endpoint=..&allow_http=true&path_style=true]`.
    ///
    /// The prefix is the URL's path (default `dse`). An `endpoint` names an
    /// S3-compatible server and turns on path-style requests unless
    /// `path_style=false` says otherwise. Credentials never come from a URL
    /// (URLs end up in logs and shell histories): they come from the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`) or the default credential chain, and a URL that
    /// carries any is refused.
    ///
    /// ```
    /// use syncforge_backend_s3::S3Config;
    /// let config = S3Config::from_url("s3://readings/edge?endpoint=http://127.0.0.1:9000&allow_http=true")?;
    /// assert!(format!("{config:?}").contains("readings"));
    /// assert!(S3Config::from_url("s3://key:secret@readings").is_err());
    /// # Ok::<(), syncforge_core::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming what is wrong: option `url` (for
    /// credentials, a fragment, an unknown or repeated parameter, a
    /// malformed %-escape), or `bucket` or `prefix` for a name no store
    /// takes. The message never quotes what may be a secret.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig {
            option: "url",
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("an S3 store URL starts with s3://".to_owned()))?;
        if rest.contains('#') {
            return Err(invalid(
                "an S3 store URL takes no fragment ('#'): no bucket, prefix or parameter holds one"
                    .to_owned(),
            ));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        // Anywhere before the query: `s3://key/secret@bucket` would
        // otherwise be read as the bucket `key` under the prefix
        // `secret@bucket`, and the prefix's refusal would quote the secret.
        if bucket.contains(':') && !location.contains('@') {
            return Err(invalid(
                "an S3 store URL names a bucket, not a server, and a bucket name holds no ':': \
                 give the server as `?endpoint=http://host:port`, and credentials in \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .to_owned(),
            ));
        }
        if location.contains('@') {
            return Err(invalid(
                "an S3 store URL carries no credentials: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or use the default credential chain)"
                    .to_owned(),
            ));
        }
        if bucket.is_empty() {
            return Err(invalid(
                "the S3 store URL names no bucket: s3://bucket/prefix".to_owned(),
            ));
        }
        let mut config = S3Config::new(bucket);
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            config = config.with_prefix(prefix);
        }
        let mut path_style = None;
        let mut given: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "region" | "endpoint" | "allow_http" | "path_style" => {}
                "access_key_id" | "secret_access_key" | "session_token" | "access_key"
                | "secret_key" => {
                    return Err(invalid(format!(
                        "an S3 store URL carries no credentials ({key}): set them in the \
                         environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)"
                    )))
                }
                // Named only when it looks like a parameter's name: a
                // mistyped URL may have put a secret where a name goes.
                other => {
                    let named = if other.len() <= 32
                        && other
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        format!(" {other:?}")
                    } else {
                        String::new()
                    };
                    return Err(invalid(format!(
                        "unknown S3 URL parameter{named}: expected region, endpoint, \
                         allow_http or path_style"
                    )));
                }
            }
            // The last of two would win unseen: `region=a&region=b`.
            if given.contains(&key) {
                return Err(invalid(format!(
                    "the S3 URL parameter {key} is given twice"
                )));
            }
            given.push(key);
            let value = syncforge_core::percent_decode(value)
                .map_err(|error| invalid(format!("the value of {key} {error}")))?;
            // `endpoint=` was ignored for the environment's, yet turned on
            // path-style requests as if an endpoint had been given.
            if value.is_empty() {
                return Err(invalid(format!(
                    "the S3 URL parameter {key} is empty: give a value, or leave it out"
                )));
            }
            let flag = |value: &str| match value {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                other => Err(invalid(format!(
                    "{key} must be true or false, not {other:?}"
                ))),
            };
            config = match key {
                "region" => config.with_region(value),
                "endpoint" => config.with_endpoint(value),
                "allow_http" => config.with_allow_http(flag(&value)?),
                "path_style" => {
                    path_style = Some(flag(&value)?);
                    config
                }
                // Every other key was refused above.
                _ => config,
            };
        }
        if let Some(endpoint) = &config.endpoint {
            refuse_credentials_in(endpoint)?;
        }
        let path_style = path_style.unwrap_or(config.endpoint.is_some());
        let config = config.with_path_style(path_style);
        // Refused now, as opening would refuse them, before anything else
        // is done with the URL.
        config.check_bucket()?;
        crate::keys::Keys::new(&config.prefix)?;
        Ok(config)
    }

    /// Refuses a bucket name no store has: S3's rules (3 to 63 lowercase
    /// letters, digits, `.` and `-`) widened to what buckets made under
    /// its older rules may hold (up to 255 bytes, capitals and `_`), so
    /// that no bucket that exists is refused.
    fn check_bucket(&self) -> Result<()> {
        let bucket = &self.bucket;
        let fits = (3..=MAX_LEGACY_BUCKET).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !fits {
            return Err(Error::InvalidConfig {
                option: "bucket",
                reason: format!(
                    "{bucket:?} is not a bucket name: 3 to 63 lowercase letters, digits, \
                     '.' and '-' (up to {MAX_LEGACY_BUCKET}, with capitals and '_', \
                     for buckets made under S3's older rules)"
                ),
            });
        }
        Ok(())
    }

    /// The AWS region (default: `AWS_REGION` from the environment, else
    /// `AWS_DEFAULT_REGION`, else [`DEFAULT_REGION`]); an empty one is no
    /// region, and the environment's is taken. Letters, digits, `-`, `_`
    /// and `.` only: any other, here or in the environment, is refused with
    /// [`Error::InvalidConfig`] when the store is made.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The key prefix under which this store keeps everything (default `dse`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Static credentials instead of the default chain.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }

    /// A session token for temporary credentials.
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// The endpoint of an S3-compatible server (MinIO, LocalStack, R2, ...).
    /// Without one, the environment's `AWS_ENDPOINT_URL_S3` (else
    /// `AWS_ENDPOINT_URL`, else `AWS_ENDPOINT`) is taken as if given here,
    /// else Amazon S3's own.
    /// Such servers usually also need [`with_path_style`](Self::with_path_style);
    /// without it, requests go to the bucket's name in front of the
    /// endpoint's host (`https://bucket.host/...`), and an endpoint given as
    /// an IP address is refused when the store is made.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Allows plain HTTP (for a server on a trusted network or this machine).
    /// Without it, an `http://` endpoint is refused as
    /// [`Error::InvalidConfig`] (option `allow_http`) when the store is made.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Path-style requests (`endpoint/bucket/key`) instead of
    /// virtual-hosted-style ones (`bucket.endpoint/key`: the bucket in front
    /// of the endpoint's host, which therefore cannot be an IP address).
    /// A bucket whose name is no single host-name label (a dot, a capital,
    /// `_`, over 63 bytes) is always reached path-style, as the AWS SDKs do:
    /// in front of a host, a dotted name falls outside the endpoint's
    /// wildcard certificate, and the others are no host name.
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = path_style;
        self
    }

    /// How long one request may take (default 30 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Retries of a failed request (default 3), all within `within`
    /// (default 30 s). After that the error reaches the caller as
    /// `Error::Unavailable`, which the engine retries with its own back-off.
    pub fn with_retries(mut self, max_retries: usize, within: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_timeout = within;
        self
    }

    /// Requests kept in flight at most (default 64).
    pub fn with_max_in_flight(mut self, max: NonZeroUsize) -> Self {
        self.options.max_in_flight = max;
        self
    }

    /// Feed entries between two compactions (default 256).
    pub fn with_compaction_interval(mut self, entries: NonZeroU64) -> Self {
        self.options.compaction_interval = entries;
        self
    }

    /// The upper bound on how long one request can take to fail, retries
    /// included: what "an unreachable endpoint gives an error within a
    /// bounded time" means for this configuration.
    pub fn failure_bound(&self) -> Duration {
        let retries = u32::try_from(self.max_retries).unwrap_or(u32::MAX);
        let per_attempt = self.request_timeout.max(self.connect_timeout);
        let every_attempt = per_attempt
            .saturating_mul(retries.saturating_add(1))
            .saturating_add(MAX_BACKOFF.saturating_mul(retries));
        // A retry starts only within retry_timeout; the last one may then run its full time.
        let last_start = self.retry_timeout.saturating_add(MAX_BACKOFF);
        every_attempt.min(last_start.saturating_add(per_attempt))
    }

    /// The endpoint requests go to. The client takes a given endpoint with
    /// virtual-hosted-style requests as the bucket's own (it adds the bucket
    /// only to a path-style one): the bucket is put in front of its host
    /// here, which a host given as an IP address cannot take.
    fn request_endpoint(&self, endpoint: &str) -> Result<String> {
        let refuse = |option: &'static str, reason: String| Error::InvalidConfig { option, reason };
        let Some((scheme, rest)) = endpoint.split_once("://") else {
            return Err(refuse(
                "endpoint",
                format!("{endpoint:?} names no scheme: start it with https:// or http://"),
            ));
        };
        if self.uses_path_style() {
            return Ok(endpoint.to_owned());
        }
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
            return Err(refuse(
                "path_style",
                format!(
                    "virtual-hosted-style requests put the bucket in front of the endpoint's \
                     host, and {name} is an IP address: use path-style requests \
                     (with_path_style(true), path_style=true in a store URL)"
                ),
            ));
        }
        // The client puts `/` and the key after a virtual-hosted endpoint as
        // it is: a trailing `/` would start every key with one, which a
        // listing of the prefix never finds.
        let path = path.trim_end_matches('/');
        Ok(format!("{scheme}://{}.{host}{path}", self.bucket))
    }

    /// Whether requests are path-style: when asked for, and for a bucket
    /// whose name cannot stand in front of a host name
    /// ([`fits_a_host_name`]), as the AWS SDKs do.
    fn uses_path_style(&self) -> bool {
        self.path_style || !fits_a_host_name(&self.bucket)
    }

    /// The endpoint requests go to, as [`endpoint`] finds it in this
    /// configuration and the process's environment.
    pub(crate) fn endpoint(&self) -> Option<String> {
        endpoint(self.endpoint.as_deref(), |name| std::env::var(name).ok())
    }

    /// The object store client for this configuration.
    pub(crate) fn build(&self) -> Result<AmazonS3> {
        self.build_in(
            |name| std::env::var(name).ok(),
            || client_env(std::env::vars_os()),
            client_options_env(std::env::vars_os()),
        )
    }

    /// [`build`](Self::build), with the environment read through `env`,
    /// the client's own reading of it (without static credentials) made by
    /// `client_env`, and the HTTP client's settings from it in `client`.
    fn build_in(
        &self,
        env: impl Fn(&str) -> Option<String>,
        client_env: impl FnOnce() -> Result<AmazonS3Builder>,
        client: ClientOptions,
    ) -> Result<AmazonS3> {
        self.check_bucket()?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(Error::InvalidConfig {
                option: "credentials",
                reason: "an access key id needs its secret and the other way round".to_owned(),
            });
        }
        for (what, value) in [
            ("the access key id", &self.access_key_id),
            ("the secret access key", &self.secret_access_key),
            ("the session token", &self.session_token),
        ] {
            if let Some(value) = value {
                check_credential(what, value)?;
            }
        }
        for (option, duration) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if duration.is_zero() {
                return Err(Error::InvalidConfig {
                    option,
                    reason: "must be longer than zero".to_owned(),
                });
            }
        }
        let region = region(self.region.as_deref(), &env);
        check_region(&region)?;
        // Refused here, naming the option: the client would only refuse
        // the endpoint at the first request.
        let endpoint = endpoint(self.endpoint.as_deref(), &env);
        if let Some(endpoint) = &endpoint {
            refuse_credentials_in(endpoint)?;
            let plain = endpoint
                .get(..7)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
            if plain && !self.allow_http {
                return Err(Error::InvalidConfig {
                    option: "allow_http",
                    reason: format!(
                        "the endpoint {endpoint:?} is plain http: allow it with \
                         with_allow_http(true) (allow_http=true in a store URL)"
                    ),
                });
            }
        }
        // Without static credentials, the default chain: the AWS_* environment
        // (keys, web identity, container credentials), then instance metadata.
        let mut builder = if self.access_key_id.is_some() {
            AmazonS3Builder::new()
        } else {
            client_env()?
        };
        builder = builder
            .with_bucket_name(&self.bucket)
            .with_region(region)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(!self.uses_path_style())
            .with_client_options(
                client
                    .with_timeout(self.request_timeout)
                    .with_connect_timeout(self.connect_timeout)
                    .with_allow_http(self.allow_http),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: MAX_BACKOFF,
                    base: 2.0,
                },
                max_retries: self.max_retries,
                retry_timeout: self.retry_timeout,
            });
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(self.request_endpoint(endpoint)?);
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        // The builder's own error can quote configuration values; say what is wrong
        // in our words without them.
        builder.build().map_err(|e| Error::InvalidConfig {
            option: "s3",
            reason: describe_build_error(&e),
        })
    }
}

/// The longest pause between two retries of one request.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The builder's error without values that may be credentials.
fn describe_build_error(error: &object_store::Error) -> String {
    let text = error.to_string();
    if text.contains("ccess") || text.contains("ecret") || text.contains("oken") {
        "the credentials are incomplete or malformed".to_owned()
    } else {
        text
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |set: bool| if set { "<redacted>" } else { "<default chain>" };
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &hidden(self.access_key_id.is_some()))
            .field(
                "secret_access_key",
                &hidden(self.secret_access_key.is_some()),
            )
            .field(
                "session_token",
                &if self.session_token.is_some() {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("options", &self.options)
            .finish()
    }
}

/// Refuses an endpoint that carries credentials (`https://key:secret@host`):
/// every message and log naming the store would show them. The endpoint is
/// not quoted in the refusal, for the same reason.
fn refuse_credentials_in(endpoint: &str) -> Result<()> {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    if authority
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(Error::InvalidConfig {
            option: "endpoint",
            reason: "holds credentials (user:password@): give them with with_credentials \
                     or the AWS_* environment variables, never in the endpoint, which \
                     messages and logs show"
                .to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Asserts that `error` refuses the configuration option `named`.
    fn refused_as(error: &Error, named: &str) {
        assert!(
            matches!(error, Error::InvalidConfig { option, .. } if *option == named),
            "{error}"
        );
    }

    /// The client takes an endpoint given with virtual-hosted-style
    /// requests as the bucket's own: every request of a store whose endpoint
    /// was given without path style went to the endpoint's root, where the
    /// server took the first segment of the key prefix for the bucket.
    #[test]
    fn a_virtual_hosted_endpoint_carries_the_bucket_in_its_host() {
        let endpoint = |endpoint: &str, path_style: bool| {
            S3Config::new("readings")
                .with_path_style(path_style)
                .request_endpoint(endpoint)
        };
        assert_eq!(
            endpoint("https://s3.example", false).unwrap(),
            "https://readings.s3.example"
        );
        assert_eq!(
            endpoint("https://s3.example:9000/base", false).unwrap(),
            "https://readings.s3.example:9000/base"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:9000", true).unwrap(),
            "http://127.0.0.1:9000"
        );
        for ip in [
            "http://127.0.0.1:9000",
            "http://[::1]:9000",
            "https://10.0.0.7",
        ] {
            refused_as(&endpoint(ip, false).unwrap_err(), "path_style");
        }
        refused_as(&endpoint("minio:9000", true).unwrap_err(), "endpoint");
        // Refused when the store is made, before any request.
        let made = S3Config::new("readings")
            .with_endpoint("http://127.0.0.1:9000")
            .with_allow_http(true)
            .build();
        refused_as(&made.unwrap_err(), "path_style");
    }

    /// An environment variable as the process's environment holds it.
    fn os_var((name, value): (&str, &str)) -> (OsString, OsString) {
        (OsString::from(name), OsString::from(value))
    }

    /// `AWS_ENDPOINT_URL_S3`, which the AWS tools rank above
    /// `AWS_ENDPOINT_URL`, was read by the client alone, which ranked it
    /// above the configured endpoint too: requests went there, unchecked
    /// (no bucket in front of its host, no `allow_http`). It is read and
    /// ranked here, and the endpoint chosen is the one the client takes.
    #[test]
    fn the_s3_endpoint_of_the_environment_ranks_below_a_configured_one() {
        let env = |name: &str| {
            match name {
                "AWS_ENDPOINT_URL_S3" => Some("https://s3-only.example"),
                "AWS_ENDPOINT_URL" => Some("https://any-service.example"),
                _ => None,
            }
            .map(str::to_owned)
        };
        assert_eq!(
            endpoint(None, env).as_deref(),
            Some("https://s3-only.example")
        );
        // The process's environment, as the client reads it.
        let vars = || {
            [
                ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
                ("AWS_ENDPOINT", "http://127.0.0.1:9"),
                ("AWS_ALLOW_HTTP", "true"),
            ]
            .map(os_var)
        };
        let from_vars = || client_env(vars());
        let made = S3Config::new("readings")
            .with_endpoint("https://mine.example")
            .build_in(env, from_vars, ClientOptions::new())
            .unwrap();
        let shown = format!("{made:?}");
        assert!(
            shown.contains("https://readings.mine.example") && !shown.contains("127.0.0.1:9"),
            "{shown}"
        );
        let made = S3Config::new("readings")
            .build_in(env, from_vars, ClientOptions::new())
            .unwrap();
        let shown = format!("{made:?}");
        assert!(
            shown.contains("https://readings.s3-only.example") && !shown.contains("127.0.0.1:9"),
            "{shown}"
        );
        // Set but empty, as a template leaves an unset variable: Amazon S3.
        let empty = || [("AWS_ENDPOINT_URL_S3", ""), ("AWS_ENDPOINT_URL", "")].map(os_var);
        let made = S3Config::new("readings")
            .build_in(
                |_| Some(String::new()),
                || client_env(empty()),
                ClientOptions::new(),
            )
            .unwrap();
        let shown = format!("{made:?}");
        assert!(
            shown.contains("https://readings.s3.us-east-1.amazonaws.com"),
            "{shown}"
        );
    }

    /// A region with a space or a `/` was taken, and every call then failed
    /// in the HTTP client, reported as an outage to be tried again: it is
    /// the configuration's mistake, from the configuration or the
    /// environment, and said so when the store is made.
    #[test]
    fn a_region_no_service_names_is_refused_when_the_store_is_made() {
        let build = |config: S3Config, region: Option<&'static str>| {
            config.build_in(
                move |name| {
                    (name == "AWS_REGION")
                        .then(|| region.map(str::to_owned))
                        .flatten()
                },
                || client_env(std::iter::empty()),
                ClientOptions::new(),
            )
        };
        for bad in ["eu west-1", "eu/west", "eu-west-1?x", "r\u{e9}gion"] {
            for made in [
                build(S3Config::new("readings").with_region(bad), None),
                build(S3Config::new("readings"), Some(bad)),
            ] {
                assert!(
                    matches!(
                        made,
                        Err(Error::InvalidConfig {
                            option: "region",
                            ..
                        })
                    ),
                    "{bad}: {made:?}"
                );
            }
        }
        let url = S3Config::from_url("s3://readings?region=eu%20west-1").unwrap();
        assert!(matches!(
            build(url, None),
            Err(Error::InvalidConfig {
                option: "region",
                ..
            })
        ));
        for good in ["eu-west-1", "garage", "us_east", "local.zone"] {
            build(S3Config::new("readings").with_region(good), None).unwrap();
        }
    }

    /// `AWS_*` variables set empty (a template's unset variable) were taken
    /// as given: empty keys in place of the role's (every request refused),
    /// an empty flag failing the build. The AWS tools take them as unset.
    #[test]
    fn empty_aws_variables_are_no_settings() {
        let vars = [
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_SKIP_SIGNATURE", ""),
            ("AWS_S3_EXPRESS", ""),
        ]
        .map(os_var);
        let made = S3Config::new("readings")
            .build_in(|_| None, || client_env(vars), ClientOptions::new())
            .unwrap();
        let shown = format!("{made:?}");
        assert!(!shown.contains("StaticCredentialProvider"), "{shown}");
    }

    /// A credential holding a control character (the trailing newline of a
    /// secret file) was taken, and the client panicked on every signed
    /// request putting it in a header: refused, without showing it.
    #[test]
    fn a_credential_no_request_could_carry_is_refused() {
        let secret = "wJalrXUtnFEMI";
        for config in [
            S3Config::new("readings").with_credentials("AKIA\n", secret),
            S3Config::new("readings").with_credentials("AKIA", format!("{secret}\r")),
            S3Config::new("readings")
                .with_credentials("AKIA", secret)
                .with_session_token("token\n"),
        ] {
            let error = config
                .build_in(
                    |_| None,
                    || Ok(AmazonS3Builder::new()),
                    ClientOptions::new(),
                )
                .unwrap_err();
            refused_as(&error, "credentials");
            assert!(!error.to_string().contains(secret), "{error}");
        }
        let vars = [("AWS_SESSION_TOKEN", "token\n")].map(os_var);
        let error = client_env(vars).unwrap_err();
        refused_as(&error, "credentials");
        assert!(error.to_string().contains("AWS_SESSION_TOKEN"), "{error}");
    }

    /// A virtual-hosted endpoint given with a trailing `/` made every key
    /// start with `/` (`https://readings.s3.example//dse/...`): writes and
    /// reads by key worked, listings of the prefix never found them.
    #[test]
    fn a_trailing_slash_of_a_virtual_hosted_endpoint_is_dropped() {
        let config = S3Config::new("readings");
        for (given, used) in [
            ("https://s3.example.com/", "https://readings.s3.example.com"),
            (
                "https://s3.example.com//",
                "https://readings.s3.example.com",
            ),
            (
                "https://s3.example.com/base/",
                "https://readings.s3.example.com/base",
            ),
            ("https://s3.example.com", "https://readings.s3.example.com"),
        ] {
            assert_eq!(config.request_endpoint(given).unwrap(), used, "{given}");
        }
    }

    /// The HTTP client's settings in the environment (`AWS_PROXY_URL`, ...)
    /// were read, then replaced whole by the configuration's timeouts: a
    /// proxy the environment names was never used. They are kept, with
    /// static credentials too, under the configuration's own settings.
    #[test]
    fn the_client_settings_of_the_environment_are_kept() {
        let vars = || {
            [
                ("AWS_PROXY_URL", "http://proxy.example:3128"),
                ("AWS_USER_AGENT", "fleet-agent/7"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_TIMEOUT", "1s"),
                ("AWS_ACCESS_KEY_ID", "AKIAFROMENV"),
                ("AWS_SECRET_ACCESS_KEY", "from-env"),
            ]
            .map(os_var)
        };
        for config in [
            S3Config::new("readings"),
            S3Config::new("readings").with_credentials("AKIA", "secret"),
        ] {
            let made = config
                .build_in(|_| None, || client_env(vars()), client_options_env(vars()))
                .unwrap();
            let shown = format!("{made:?}");
            assert!(shown.contains("http://proxy.example:3128"), "{shown}");
            assert!(shown.contains("fleet-agent/7"), "{shown}");
            // The configuration's own settings win over the environment's.
            assert!(shown.contains("allow_http: Parsed(false)"), "{shown}");
            assert!(shown.contains("timeout: Some(Parsed(30s))"), "{shown}");
        }
    }

    /// A bucket whose name is no host-name label was put in front of the
    /// endpoint's host all the same: a dotted name outside the endpoint's
    /// wildcard certificate, capitals and `_` no host name, each failing
    /// every request as a transient connection failure, retried for good.
    /// Such a bucket is reached path-style, as the AWS SDKs do.
    #[test]
    fn a_bucket_that_is_no_host_name_is_reached_path_style() {
        for bucket in ["logs.example.com", "Logs", "old_logs", &"l".repeat(64)] {
            assert_eq!(
                S3Config::new(bucket)
                    .request_endpoint("https://s3.example")
                    .unwrap(),
                "https://s3.example",
                "{bucket}"
            );
            let made = S3Config::new(bucket)
                .build_in(
                    |_| None,
                    || Ok(AmazonS3Builder::new()),
                    ClientOptions::new(),
                )
                .unwrap();
            let shown = format!("{made:?}");
            assert!(
                shown.contains(&format!("amazonaws.com/{bucket}")),
                "{bucket}: {shown}"
            );
        }
        assert_eq!(
            S3Config::new("logs-2024")
                .request_endpoint("https://s3.example")
                .unwrap(),
            "https://logs-2024.s3.example"
        );
    }

    /// An endpoint from the environment (`AWS_ENDPOINT_URL`, which the
    /// client read itself) was taken as the bucket's own with
    /// virtual-hosted-style requests, so requests went to the endpoint's
    /// root, where the server read the prefix as the bucket. It is now
    /// checked and given the bucket as a configured one is, and a
    /// configured one comes first.
    #[test]
    fn an_endpoint_from_the_environment_is_taken_as_a_configured_one() {
        let env = |url: &'static str| {
            move |name: &str| (name == "AWS_ENDPOINT_URL").then(|| url.to_owned())
        };
        let made = S3Config::new("readings").build_in(
            env("https://127.0.0.1:9000"),
            || Ok(AmazonS3Builder::new()),
            ClientOptions::new(),
        );
        refused_as(&made.unwrap_err(), "path_style");
        let made = S3Config::new("readings").build_in(
            env("http://minio.example"),
            || Ok(AmazonS3Builder::new()),
            ClientOptions::new(),
        );
        refused_as(&made.unwrap_err(), "allow_http");
        assert!(S3Config::new("readings")
            .with_path_style(true)
            .with_allow_http(true)
            .build_in(
                env("http://127.0.0.1:9000"),
                || Ok(AmazonS3Builder::new()),
                ClientOptions::new()
            )
            .is_ok());
        assert_eq!(
            endpoint(None, env("https://minio.example")).as_deref(),
            Some("https://minio.example")
        );
        assert_eq!(
            endpoint(Some("https://r2.example"), env("https://minio.example")).as_deref(),
            Some("https://r2.example")
        );
        let older = |name: &str| (name == "AWS_ENDPOINT").then(|| "https://old.example".to_owned());
        assert_eq!(
            endpoint(None, older).as_deref(),
            Some("https://old.example")
        );
        assert_eq!(endpoint(None, |_| Some(String::new())), None);
    }

    #[test]
    fn store_urls_give_bucket_prefix_and_endpoint() {
        let config = S3Config::from_url(
            "s3://readings/edge/site-3?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A9000&allow_http=true",
        )
        .unwrap();
        assert_eq!(config.bucket, "readings");
        assert_eq!(config.prefix, "edge/site-3");
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(config.allow_http && config.path_style);

        let plain = S3Config::from_url("s3://readings").unwrap();
        assert_eq!(plain.prefix, DEFAULT_PREFIX);
        assert!(!plain.path_style && !plain.allow_http && plain.endpoint.is_none());
        let virtual_hosted =
            S3Config::from_url("s3://readings?endpoint=https://s3.example&path_style=false")
                .unwrap();
        assert!(!virtual_hosted.path_style);
    }

    /// A bucket outside us-east-1 is reached with `AWS_REGION` set, as with
    /// the AWS tools: the region defaulted to us-east-1 whatever the
    /// environment said.
    #[test]
    fn the_region_comes_from_the_configuration_then_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        let set = &[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ];
        assert_eq!(region(None, env(set)), "eu-west-1");
        assert_eq!(
            region(None, env(&[("AWS_DEFAULT_REGION", "ap-south-1")])),
            "ap-south-1"
        );
        assert_eq!(region(None, env(&[])), DEFAULT_REGION);
        assert_eq!(region(Some("us-west-2"), env(set)), "us-west-2");
        let empty = &[("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "ap-south-1")];
        assert_eq!(region(None, env(empty)), "ap-south-1");
        assert_eq!(region(Some(""), env(set)), "eu-west-1");
        assert_eq!(S3Config::new("b").region, None);
    }

    #[test]
    fn store_urls_never_carry_credentials_and_refuse_what_they_do_not_know() {
        for url in [
            "s3://AKID:s3cr3tvalue@readings",
            "s3://readings?access_key_id=AKID",
            "s3://readings?secret_access_key=s3cr3tvalue",
            "s3://readings?colour=blue",
            "s3://readings?allow_http=maybe",
            "s3://",
            "http://readings",
            // A secret read as a prefix, or as a parameter's name, is not
            // quoted back.
            "s3://AKID/s3cr3tvalue@readings",
            "s3://readings/p?s3cr3tvalue/x@y",
            // Mistakes that would otherwise fail only at the first request,
            // or take the last of two values unseen.
            "s3://readings?region=eu-west-1&region=us-east-1",
            "s3://readings?region=eu-west-1#s3cr3tvalue",
            "s3://readings?region=eu%zz",
            // Ignored for the environment's (an empty `endpoint` turning on
            // path-style requests all the same).
            "s3://readings?endpoint=",
            "s3://readings?region=",
        ] {
            let err = S3Config::from_url(url).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { option: "url", .. }),
                "{url}: {err}"
            );
            assert!(!err.to_string().contains("s3cr3tvalue"), "{url}: {err}");
        }
    }

    /// A server's address where the bucket goes (`s3://localhost:9000/b`)
    /// was refused as carrying credentials, which it did not.
    #[test]
    fn a_server_where_the_bucket_goes_is_told_to_go_in_endpoint() {
        let err = S3Config::from_url("s3://localhost:9000/readings").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { option: "url", reason } if reason.contains("?endpoint=")
                && !reason.contains("carries no credentials")),
            "{err}"
        );
    }

    /// A bucket or prefix the store refuses when made was taken by the URL,
    /// and refused only later (after a command had read its input).
    #[test]
    fn names_a_store_would_refuse_are_refused_when_the_url_is_read() {
        for (url, option) in [
            ("s3://ab", "bucket"),
            ("s3://read%20ings", "bucket"),
            ("s3://readings!", "bucket"),
            ("s3://bucket/a//c", "prefix"),
            ("s3://bucket/my%20prefix", "prefix"),
        ] {
            let err = S3Config::from_url(url).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidConfig { option: found, .. } if *found == option),
                "{url}: {err:?}"
            );
        }
        assert!(S3Config::from_url("s3://bucket/a/b").is_ok());
        // Buckets made under S3's older rules are still taken.
        let legacy = "Legacy_Bucket".repeat(20);
        assert!(S3Config::from_url(&format!("s3://{}", &legacy[..255])).is_ok());
        let too_long = S3Config::from_url(&format!("s3://{legacy}")).unwrap_err();
        assert!(matches!(
            too_long,
            Error::InvalidConfig {
                option: "bucket",
                ..
            }
        ));
    }

    #[test]
    fn debug_hides_credentials() {
        let config = S3Config::new("bucket")
            .with_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI")
            .with_session_token("FwoGZXIvYXdzEXAMPLE");
        let text = format!("{config:?}");
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI", "FwoGZXIvYXdzEXAMPLE"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(matches!(
            S3Config::new("ab").build(),
            Err(Error::InvalidConfig {
                option: "bucket",
                ..
            })
        ));
        let mut half = S3Config::new("bucket");
        half.access_key_id = Some("id".to_owned());
        assert!(matches!(
            half.build(),
            Err(Error::InvalidConfig {
                option: "credentials",
                ..
            })
        ));
        assert!(S3Config::new("bucket")
            .with_request_timeout(Duration::ZERO)
            .build()
            .is_err());
    }

    #[test]
    fn an_endpoint_holding_credentials_is_refused_without_showing_them() {
        for endpoint in [
            "https://KEYID:SECRETKEY@minio.internal:9000",
            "https://SECRETKEY@minio.internal",
        ] {
            let refused = S3Config::new("readings")
                .with_endpoint(endpoint)
                .build()
                .err()
                .unwrap();
            assert!(
                matches!(
                    &refused,
                    Error::InvalidConfig {
                        option: "endpoint",
                        ..
                    }
                ),
                "{refused}"
            );
            assert!(!refused.to_string().contains("SECRETKEY"), "{refused}");
        }
        let url = "s3://readings?endpoint=https://KEYID:SECRETKEY@minio.internal";
        let refused = S3Config::from_url(url).err().unwrap();
        assert!(!refused.to_string().contains("SECRETKEY"), "{refused}");
        // An `@` past the host is no credential.
        let fine = S3Config::new("readings").with_endpoint("https://minio.internal/a@b");
        assert!(fine.build().is_ok());
    }

    #[test]
    fn a_plain_http_endpoint_needs_allow_http() {
        let url = "s3://readings?endpoint=http://127.0.0.1:9000";
        let error = S3Config::from_url(url).unwrap().build().unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidConfig {
                    option: "allow_http",
                    ..
                }
            ),
            "{error:?}"
        );
        S3Config::from_url(&format!("{url}&allow_http=true"))
            .unwrap()
            .build()
            .unwrap();
        S3Config::new("readings")
            .with_endpoint("https://127.0.0.1:9000")
            .with_path_style(true)
            .build()
            .unwrap();
    }

    #[test]
    fn the_failure_bound_of_endless_timeouts_is_endless() {
        // Four attempts of the default 30 s end first.
        let endless = S3Config::new("bucket").with_retries(3, Duration::MAX);
        assert_eq!(
            endless.failure_bound(),
            Duration::from_secs(120) + 3 * MAX_BACKOFF
        );
        let endless = S3Config::new("bucket").with_request_timeout(Duration::MAX);
        assert_eq!(endless.failure_bound(), Duration::MAX);
    }

    #[test]
    fn the_failure_bound_covers_every_attempt() {
        let config = S3Config::new("bucket")
            .with_request_timeout(Duration::from_secs(1))
            .with_connect_timeout(Duration::from_millis(500))
            .with_retries(2, Duration::from_secs(10));
        assert_eq!(
            config.failure_bound(),
            Duration::from_secs(3) + 2 * MAX_BACKOFF
        );
    }
}
