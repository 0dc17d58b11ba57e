//! Every request to the object store goes through [`Io`]: one bound on the
//! requests in flight, and the one place where `object_store` errors become
//! syncforge errors.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use syncforge_core::{Error, Result};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use crate::BACKEND_NAME;

/// An object as read: its ETag and its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) etag: String,
    pub(crate) body: Bytes,
}

/// How a conditional put ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Put {
    /// Written; the object's new ETag.
    Done(String),
    /// The condition did not hold (the object exists, or has another ETag,
    /// or is gone).
    Lost,
}

/// The condition of a put.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Condition<'a> {
    /// Only if no object is there.
    Absent,
    /// Only if the object has this ETag.
    Tag(&'a str),
    /// Unconditionally.
    None,
}

/// The object store and the bound on requests in flight.
#[derive(Debug, Clone)]
pub(crate) struct Io {
    store: Arc<dyn ObjectStore>,
    in_flight: Arc<Semaphore>,
    /// Where this handle tries the store's conditional writes, once, before
    /// its first conditional write, and what it found: `Err` names the
    /// condition the store ignores.
    probes: Path,
    conditions: Arc<OnceCell<std::result::Result<(), &'static str>>>,
    /// Whether a check's write of its probe of each kind ([`ProbeWrite`])
    /// was refused for no reason it could see before: once may be a
    /// conflict, twice (each time a key never used before) is the store's
    /// verdict.
    probe_refused: Arc<[std::sync::atomic::AtomicBool; 2]>,
}

/// A write of the conditional-write check that the store may refuse for no
/// reason the check can see.
#[derive(Clone, Copy)]
enum ProbeWrite {
    /// The create of a new key, with nothing there.
    Create,
    /// The update of the probe with the ETag it has.
    Update,
}

impl ProbeWrite {
    /// What the store does wrong when it refuses this write every time.
    fn refusal(self) -> &'static str {
        match self {
            ProbeWrite::Create => "a create of a new key was refused",
            ProbeWrite::Update => "update-if-ETag (If-Match) refused the ETag the object has",
        }
    }
}

impl Io {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, max_in_flight: usize, probes: Path) -> Self {
        Io {
            store,
            // More than the semaphore can count is as good as unbounded.
            in_flight: Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS))),
            probes,
            conditions: Arc::new(OnceCell::new()),
            probe_refused: Arc::new(Default::default()),
        }
    }

    /// Refuses a store that takes conditional puts but ignores their
    /// condition (an older S3-compatible server, a gateway in front of one):
    /// two writers would then overwrite each other's records and feed
    /// entries without either noticing; and one that refuses every update
    /// by ETag, which no write could get past. Tried once per handle, before
    /// its first conditional write: a create, a second create of the same
    /// key (which must be refused), an update with an ETag the object never
    /// had (which must be refused), an update with the ETag it has (which
    /// must go through), and the removal of the key — five requests.
    /// A transient failure is not remembered: the next write tries again
    /// (the probe is then removed in the background, so that the failure
    /// comes within the bound of one request).
    async fn check_conditions(&self) -> Result<()> {
        let found = self
            .conditions
            .get_or_try_init(|| async {
                // A key of its own each try: a request of an earlier try
                // still in flight cannot meet this one's.
                let probe = Path::from(format!("{}/{}", self.probes, ulid::Ulid::new()));
                let tried = self.try_conditions(&probe).await;
                if matches!(&tried, Err(error) if error.is_transient()) {
                    // The store did not answer in time: removing the probe
                    // now could take as long again before the caller heard
                    // (a handle's first write failed after twice its
                    // failure bound). Removed in the background instead;
                    // the next try uses a key of its own.
                    // Outside a runtime (a local directory driven by
                    // another executor) nothing runs in the background: it
                    // is removed before the failure is told. It takes no
                    // place among the requests in flight: holding one for
                    // as long as the store does not answer, it would make
                    // the next write wait that long before its own request.
                    let store = Arc::clone(&self.store);
                    let removal = async move {
                        let locations = futures::stream::once(async { Ok(probe) }).boxed();
                        let answers: Vec<_> = store.delete_stream(locations).collect().await;
                        if let Some(Err(error)) = answers.into_iter().next() {
                            tracing::debug!(%error, "a probe of conditional writes is left to remove");
                        }
                    };
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => drop(runtime.spawn(removal)),
                        Err(_) => removal.await,
                    }
                    return tried;
                }
                // Removed whatever the tries left.
                let removed = self.delete(vec![probe]).await;
                // A removal that cannot succeed (no permission to delete)
                // is said first: the probe it leaves would otherwise make
                // every later try look transient.
                match removed {
                    Err(error) if !error.is_transient() => Err(error),
                    removed => {
                        let found = tried?;
                        removed?;
                        Ok::<_, Error>(found)
                    }
                }
            })
            .await?;
        found.map_err(|ignored| {
            Error::storage(
                BACKEND_NAME,
                format!(
                    "this object store does not honour conditional writes ({ignored}, at a key \
                     under {}): writers would overwrite each other; use S3, an S3-compatible \
                     server with conditional writes, Azure, or S3Backend::local_directory",
                    self.probes
                ),
            )
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    async fn permit(&self) -> Result<SemaphorePermit<'_>> {
        // The semaphore is never closed; failing to acquire means the handle is being torn down.
        self.in_flight
            .acquire()
            .await
            .map_err(|_| Error::Closed { what: "S3 backend" })
    }

    /// Reads an object; `None` when there is none.
    pub(crate) async fn get(&self, path: &Path) -> Result<Option<Fetched>> {
        let _permit = self.permit().await?;
        let result = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(result) => result,
            // A bucket that is not there is no answer about the object: read
            // as absent, every record would be, and a delete would find
            // nothing to delete.
            Err(e @ object_store::Error::NotFound { .. }) if names_no_bucket(&e) => {
                return Err(missing_bucket(&e, "reading", path))
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                // A key the store can never hold (MinIO checks a key's
                // length before it reads) holds nothing: read as absent, a
                // write of it pending in a feed is settled as void, where
                // failing failed every read of the feed.
                let error = map_error(e, "reading", path);
                return if names_a_key_too_long(&error) {
                    Ok(None)
                } else {
                    Err(error)
                };
            }
        };
        let etag = result.meta.e_tag.clone();
        let body = result
            .bytes()
            .await
            .map_err(|e| map_error(e, "reading", path))?;
        let etag = etag.ok_or_else(|| no_etag(path))?;
        Ok(Some(Fetched { etag, body }))
    }

    /// Writes an object under `condition`, once the store was seen to
    /// honour conditions ([`check_conditions`](Self::check_conditions)).
    pub(crate) async fn put(
        &self,
        path: &Path,
        body: Bytes,
        condition: Condition<'_>,
    ) -> Result<Put> {
        if !matches!(condition, Condition::None) {
            self.check_conditions().await?;
        }
        self.put_unchecked(path, body, condition).await
    }

    /// The tries of [`check_conditions`](Self::check_conditions): `Err`
    /// names the condition the store ignored.
    async fn try_conditions(&self, probe: &Path) -> Result<std::result::Result<(), &'static str>> {
        let put = |body: &'static [u8], condition| {
            self.put_unchecked(probe, Bytes::from_static(body), condition)
        };
        let created = put(b"1", Condition::Absent).await?;
        if created == Put::Lost {
            // The key is this handle's own: an object there holding what
            // this create sent was left by this try (the create landed, its
            // answer was lost, and the client's resend was refused) or by an
            // earlier one whose removal failed. Not a verdict on the store:
            // the probe is removed, and the next conditional write tries
            // again.
            let left = self.get(probe).await?;
            if left.is_some_and(|object| object.body.as_ref() == b"1") {
                return Err(Error::unavailable(
                    BACKEND_NAME,
                    format!(
                        "the conditional-write check found its own key {probe} already written; \
                         it is removed, and tried again at the next write"
                    ),
                ));
            }
            // A create refused with no object there: once, S3's 409 to a
            // create racing another request on the key (a client's resend
            // of this very create can be one).
            return self.refused_once(probe, ProbeWrite::Create);
        }
        if put(b"2", Condition::Absent).await? != Put::Lost {
            return Ok(Err(
                "create-if-absent (If-None-Match: *) wrote over an existing object",
            ));
        }
        if put(b"3", Condition::Tag("\"syncforge-probe\"")).await? != Put::Lost {
            return Ok(Err(
                "update-if-ETag (If-Match) wrote with an ETag the object never had",
            ));
        }
        // A store that refuses every If-Match passes the two checks above,
        // and then every update of a record would lose a race that is not
        // there, try again for a minute, and fail as unavailable.
        if let Put::Done(etag) = created {
            if put(b"4", Condition::Tag(&etag)).await? == Put::Lost {
                // Landed, its answer lost and the client's resend refused:
                // the store took it.
                let left = self.get(probe).await?;
                if left.is_none_or(|object| object.body.as_ref() != b"4") {
                    // Or S3's 409 to an update racing another request on
                    // the key.
                    return self.refused_once(probe, ProbeWrite::Update);
                }
            }
        }
        Ok(Ok(()))
    }

    /// A conditional write of the probe refused for no reason it can see:
    /// the first time for its kind, a conflict with another request on the
    /// key (S3 answers one with 409), and a transient failure, so that the
    /// next write tries again on a new key; the second time, the store's
    /// verdict. Taken as a verdict at once, one conflict failed every later
    /// write of the handle; and two conflicts of different writes are no
    /// verdict on either.
    fn refused_once(
        &self,
        probe: &Path,
        write: ProbeWrite,
    ) -> Result<std::result::Result<(), &'static str>> {
        let refusal = write.refusal();
        let seen = match write {
            ProbeWrite::Create => &self.probe_refused[0],
            ProbeWrite::Update => &self.probe_refused[1],
        };
        if seen.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(Err(refusal));
        }
        Err(Error::unavailable(
            BACKEND_NAME,
            format!(
                "the conditional-write check's write of {probe} was refused ({refusal}); \
                 tried again at the next write"
            ),
        ))
    }

    /// [`put`](Self::put) without the check.
    async fn put_unchecked(
        &self,
        path: &Path,
        body: Bytes,
        condition: Condition<'_>,
    ) -> Result<Put> {
        let mode = match condition {
            Condition::Absent => PutMode::Create,
            Condition::Tag(etag) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag.to_owned()),
                version: None,
            }),
            Condition::None => PutMode::Overwrite,
        };
        let _permit = self.permit().await?;
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from_bytes(body), options)
            .await
        {
            Ok(result) => result.e_tag.map(Put::Done).ok_or_else(|| no_etag(path)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) if !matches!(condition, Condition::None) => Ok(Put::Lost),
            // An update of an object that is gone lost a race; a create
            // answered "not found" names a bucket that is not there.
            Err(ref e @ object_store::Error::NotFound { .. })
                if matches!(condition, Condition::Tag(_)) && !names_no_bucket(e) =>
            {
                Ok(Put::Lost)
            }
            Err(e @ object_store::Error::NotFound { .. })
                if matches!(condition, Condition::Absent) || names_no_bucket(&e) =>
            {
                Err(missing_bucket(&e, "writing", path))
            }
            Err(e) => Err(map_error(e, "writing", path)),
        }
    }

    /// Deletes objects (missing ones are fine) with the store's bulk delete:
    /// on S3 one request per 1,000 keys (`DeleteObjects`); stores without
    /// one delete each object themselves.
    pub(crate) async fn delete(&self, paths: Vec<Path>) -> Result<()> {
        let Some(first) = paths.first().cloned() else {
            return Ok(());
        };
        let _permit = self.permit().await?;
        let locations = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let results: Vec<object_store::Result<Path>> =
            self.store.delete_stream(locations).collect().await;
        for result in results {
            match result {
                Err(e @ object_store::Error::NotFound { .. }) if names_no_bucket(&e) => {
                    return Err(missing_bucket(&e, "deleting objects from", &first))
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                // A key someone else removed first, as some S3-compatible
                // servers list it in a bulk delete's answer.
                Err(e) if bulk_delete_code(&e).as_deref() == Some("NoSuchKey") => {}
                Err(e) => return Err(map_error(e, "deleting objects from", &first)),
            }
        }
        Ok(())
    }

    /// Lists objects under `prefix` after `offset` (exclusive), at most
    /// `max` of them, sorted by key. S3 answers 1,000 keys per request and
    /// in key order, so reading at most 1,000 costs one request.
    pub(crate) async fn list(
        &self,
        prefix: &Path,
        offset: Option<&Path>,
        max: Option<usize>,
    ) -> Result<Vec<ObjectMeta>> {
        let _permit = self.permit().await?;
        let stream = match offset {
            Some(offset) => self.store.list_with_offset(Some(prefix), offset),
            None => self.store.list(Some(prefix)),
        };
        let mut all: Vec<ObjectMeta> = stream
            .take(max.unwrap_or(usize::MAX))
            .try_collect()
            .await
            .map_err(|e| map_error(e, "listing", prefix))?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    /// The "directories" directly under `prefix`.
    pub(crate) async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        let _permit = self.permit().await?;
        let listed = self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| map_error(e, "listing", prefix))?;
        Ok(listed.common_prefixes)
    }
}

/// Whether two ETags of an object name the same version of it, quoted or
/// not, weak (`W/`) or not. Some S3-compatible servers quote an ETag in a
/// listing and not in a read, and object_store quotes local ones from
/// 0.14.1 on: compared as they come, every feed entry would look replaced,
/// and an item kept from an older version would look void.
pub(crate) fn same_etag(listed: &str, read: &str) -> bool {
    fn bare(tag: &str) -> &str {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag.strip_prefix('"')
            .and_then(|tag| tag.strip_suffix('"'))
            .unwrap_or(tag)
    }
    bare(listed) == bare(read)
}

/// Whether a "not found" answer is S3's `NoSuchBucket`, about the bucket
/// rather than the object. Its code is read from the answer's body, which
/// object_store keeps at the end of the error's chain of causes (the body
/// is XML, so a key quoted in it cannot spell the code).
fn names_no_bucket(error: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.source().is_none() {
            return current.to_string().contains("<Code>NoSuchBucket</Code>");
        }
        cause = current.source();
    }
    false
}

/// The error for a request answered "not found" for its bucket: permanent,
/// naming what to check.
fn missing_bucket(error: &object_store::Error, doing: &str, path: &Path) -> Error {
    Error::storage_caused(
        BACKEND_NAME,
        format!("{doing} {path}: not found; does the bucket exist?"),
        StoreAnswer::of(error),
    )
}

fn no_etag(path: &Path) -> Error {
    Error::storage(
        BACKEND_NAME,
        format!(
            "the object store returned no ETag for {path}: compare-and-swap writes need a store \
             with ETags (S3, Azure, MinIO, object_store's InMemory)"
        ),
    )
}

/// The one place where `object_store` errors become syncforge errors.
///
/// "Absent" and "condition failed" are answers, not errors, and are taken
/// out before this (see [`Io::get`], [`Io::put`]). What is left:
/// transport failures, timeouts, throttling and server errors are
/// [`Error::Unavailable`] (transient: the engine retries them); refused
/// credentials or permissions, unsupported operations and other client
/// errors are [`Error::Storage`] saying what to check. Messages name the
/// object and never carry credentials: requests are signed in headers
/// object_store does not print, and what an answer's body quotes of them
/// is taken out of the cause kept ([`StoreAnswer`]).
pub(crate) fn map_error(error: object_store::Error, doing: &str, path: &Path) -> Error {
    use object_store::Error as E;
    if let E::NotSupported { source } = &error {
        // `LocalDirectory` on a file system it cannot use: its reason is the
        // advice, where the general one would send the user to it.
        if let Some(coarse) = source.downcast_ref::<crate::local::CoarseTimes>() {
            return Error::storage(BACKEND_NAME, format!("{doing} {path}: {coarse}"));
        }
    }
    let message = error.to_string();
    let status = http_status(&message);
    let key_code = bulk_delete_code(&error);
    match error {
        // Refused with 403 like bad credentials, but the credentials are
        // fine: this machine's clock is not.
        _ if message.contains("<Code>RequestTimeTooSkewed</Code>") => Error::storage_caused(
            BACKEND_NAME,
            format!(
                "{doing} {path} was refused: this machine's clock is too far from the store's; \
                 set it right (S3 takes requests at most 15 minutes off)"
            ),
            StoreAnswer::of(&error),
        ),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => refused(&error, doing, path),
        _ if key_code.as_deref().is_some_and(names_credentials) => refused(&error, doing, path),
        // An expired or unknown session token is answered 400, which says
        // nothing more than "failed" without its code.
        _ if ["ExpiredToken", "InvalidToken", "TokenRefreshRequired"]
            .iter()
            .any(|code| message.contains(&format!("<Code>{code}</Code>"))) =>
        {
            refused(&error, doing, path)
        }
        // A listing's errors are not sorted out before this as a read's or
        // a write's are: told by its code here, a missing bucket is named
        // for listings too, where they said only that the listing failed.
        _ if key_code.as_deref() == Some("NoSuchBucket") || names_no_bucket(&error) => {
            missing_bucket(&error, doing, path)
        }
        _ if key_code.as_deref() == Some("NotImplemented") => unsupported(&error, doing, path),
        // MinIO's refusal of a path segment over 255 bytes, which S3 takes:
        // told apart as a local directory's "name too long" is, so that a
        // write of such a key pending in a feed is void instead of failing
        // every read of the feed after it.
        _ if message.contains("<Code>KeyTooLongError</Code>") => Error::storage_caused(
            BACKEND_NAME,
            format!(
                "{doing} {path} was refused: the store takes no key this long (MinIO takes at \
                 most 255 bytes between two '/'); keep record ids within 255 bytes encoded"
            ),
            StoreAnswer {
                text: without_credentials(&message),
                io: Some(std::io::Error::new(
                    std::io::ErrorKind::InvalidFilename,
                    "key too long",
                )),
            },
        ),
        // A code that says the delete can never succeed as asked stays until
        // someone acts; any other (S3's `SlowDown`, MinIO's `SlowDownWrite`
        // for a lost quorum, a code never seen) is tried again, as an
        // answer without a status is.
        other if key_code.as_deref().is_some_and(says_for_good) => Error::storage_caused(
            BACKEND_NAME,
            format!("{doing} {path} failed"),
            StoreAnswer::of(&other),
        ),
        E::NotImplemented { .. } | E::NotSupported { .. } => unsupported(&error, doing, path),
        // A server without conditional writes answers them 501 Not Implemented.
        other if status == Some(501) => unsupported(&other, doing, path),
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => Error::storage_caused(
            BACKEND_NAME,
            format!("{doing} {path}: the store refused the key"),
            StoreAnswer::of(&error),
        ),
        other if is_transient(&other, status, &message) => Error::unavailable(
            BACKEND_NAME,
            Described {
                message: format!("{doing} {path}"),
                source: StoreAnswer::of(&other),
            },
        ),
        other => Error::storage_caused(
            BACKEND_NAME,
            format!("{doing} {path} failed"),
            StoreAnswer::of(&other),
        ),
    }
}

/// Whether `error` is a local file system's refusal of a file name as too
/// long: a key that store can never hold, however often it is written.
pub(crate) fn names_a_key_too_long(error: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::InvalidFilename;
        }
        cause = current.source();
    }
    false
}

/// A request the credentials may not make: permanent, naming what to check.
fn refused(error: &object_store::Error, doing: &str, path: &Path) -> Error {
    Error::storage_caused(
        BACKEND_NAME,
        format!(
            "{doing} {path} was refused: check the credentials and that they may read, write, \
             list and delete objects under the prefix"
        ),
        StoreAnswer::of(error),
    )
}

/// The code S3 gave one key of a bulk delete. `DeleteObjects` answers `200
/// OK` and lists each key it did not delete with a code, which object_store
/// reports as a generic error quoting it: "DeleteObjects request failed for
/// key k: Access Denied (code: AccessDenied)". `None` for any other error.
fn bulk_delete_code(error: &object_store::Error) -> Option<String> {
    let object_store::Error::Generic { source, .. } = error else {
        return None;
    };
    let text = source.to_string();
    let rest = text.strip_prefix("DeleteObjects request failed for key ")?;
    let (_, code) = rest.rsplit_once("(code: ")?;
    code.strip_suffix(')').map(str::to_owned)
}

/// Whether a bulk delete's code for a key says the credentials may not
/// delete it (S3's codes for a refused, unknown or unsigned caller).
fn names_credentials(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied"
            | "AllAccessDisabled"
            | "AccountProblem"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
    )
}

/// Whether a bulk delete's code for a key says the delete can never succeed
/// as asked (S3's codes for an archived object or a request it cannot
/// take; a bucket that is not there and an operation the server lacks have
/// errors of their own).
fn says_for_good(code: &str) -> bool {
    matches!(
        code,
        "InvalidObjectState"
            | "InvalidBucketName"
            | "InvalidArgument"
            | "InvalidRequest"
            | "MalformedXML"
            | "MethodNotAllowed"
    )
}

/// A store that lacks an operation the backend needs.
fn unsupported(error: &object_store::Error, doing: &str, path: &Path) -> Error {
    Error::storage_caused(
        BACKEND_NAME,
        format!(
            "{doing} {path}: this object store cannot do what the backend needs (conditional \
             create and conditional update on ETags); use S3, an S3-compatible server with \
             conditional writes, Azure, or S3Backend::local_directory for a local \
             directory"
        ),
        StoreAnswer::of(error),
    )
}

/// Whether an error may go away by itself: no answer at all (connection,
/// timeout), or an HTTP status that says "later" (5xx but 501 and 505, which
/// say the server cannot do it; 429, 408; and S3's `400 RequestTimeout`,
/// its answer to a request body that came too slowly). `status` is the one
/// `message` (the error's) quotes ([`http_status`]). A local file's error is
/// transient only when it says "later" too (a timeout, an interrupted or
/// busy call): a permission, a full disk or a read-only file system stay
/// until someone acts.
fn is_transient(error: &object_store::Error, status: Option<u16>, message: &str) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.is::<object_store::client::HttpError>() {
            return true;
        }
        // A local file's failure (`LocalDirectory`): only these pass.
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::TimedOut | K::Interrupted | K::WouldBlock | K::ResourceBusy
            );
        }
        cause = current.source();
    }
    // object_store's answer to a redirect that names no place, which S3
    // sends to a client configured for another region than the bucket's:
    // it stays until the configuration changes.
    if message.contains("Received redirect without LOCATION") {
        return false;
    }
    match status {
        Some(501 | 505) => false,
        Some(400) => message.contains("<Code>RequestTimeout</Code>"),
        // S3's answer to a write racing another request on the key, which
        // says to try again.
        Some(409) => {
            message.contains("<Code>OperationAborted</Code>")
                || message.contains("<Code>ConditionalRequestConflict</Code>")
        }
        Some(status) => status >= 500 || status == 429 || status == 408,
        // No status and no transport error: an error of the store's own
        // (a test wrapper's, a task join): treat as transient, the engine's
        // retries are bounded.
        None => true,
    }
}

/// The status code object_store quotes in its message ("status code: 503 ...").
fn http_status(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// An underlying error with what was being done.
#[derive(Debug)]
struct Described {
    message: String,
    source: StoreAnswer,
}

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.message, self.source)
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What the store answered, kept as the cause of an error: the store's
/// error as text, with what an S3 answer quotes of the credentials taken
/// out, and without the chain of causes under it, whose text quotes the
/// answer again. S3 puts a rejected session token whole in the body of
/// `ExpiredToken` and `InvalidToken` (`<Token-0>`), and the access key id,
/// the string signed and the canonical request (with the session token's
/// header) in the body of `SignatureDoesNotMatch`; a program prints every
/// cause of an error it reports. A local file system's `io::Error` in that
/// chain is kept, by kind and text (no credentials there), for the callers
/// that look for it.
#[derive(Debug)]
struct StoreAnswer {
    text: String,
    io: Option<std::io::Error>,
}

impl StoreAnswer {
    fn of(error: &object_store::Error) -> StoreAnswer {
        let mut io = None;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = cause {
            if let Some(found) = current.downcast_ref::<std::io::Error>() {
                io = Some(std::io::Error::new(found.kind(), found.to_string()));
                break;
            }
            cause = current.source();
        }
        StoreAnswer {
            text: without_credentials(&error.to_string()),
            io,
        }
    }
}

impl std::fmt::Display for StoreAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for StoreAnswer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io
            .as_ref()
            .map(|io| io as &(dyn std::error::Error + 'static))
    }
}

/// The elements of an S3 error body that quote credentials: their content
/// is replaced (`Token-0`, `Token-1`... by their common start).
const CREDENTIAL_ELEMENTS: [&str; 8] = [
    "Token-",
    "AWSAccessKeyId",
    // The header an `AuthorizationHeaderMalformed` or `InvalidArgument`
    // answer quotes (`Credential=<access key id>/...`).
    "ArgumentValue",
    "StringToSign",
    "StringToSignBytes",
    "CanonicalRequest",
    "CanonicalRequestBytes",
    "SignatureProvided",
];

/// `text` with the content of every [`CREDENTIAL_ELEMENTS`] element
/// replaced by `(removed)`; the rest (the code, the message) as it was.
fn without_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let (before, tag) = rest.split_at(open);
        out.push_str(before);
        let Some(end) = tag.find('>') else {
            rest = tag;
            break;
        };
        let (opening, after) = tag.split_at(end + 1);
        out.push_str(opening);
        rest = after;
        let name = &opening[1..opening.len() - 1];
        // Neither a closing tag nor an empty element (`<Token-0/>`).
        let quotes_credentials = !name.starts_with('/')
            && !name.ends_with('/')
            && CREDENTIAL_ELEMENTS
                .iter()
                .any(|element| name.starts_with(element));
        if quotes_credentials {
            // Up to the element's end, or the whole rest of a cut body.
            let content = rest.find("</").unwrap_or(rest.len());
            out.push_str("(removed)");
            rest = &rest[content..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: message.to_owned().into(),
        }
    }

    /// MinIO's refusal of a long key was a permanent storage fault like
    /// any other: a write of such a key pending in a feed failed every read
    /// of the feed after it, where a local directory's refusal of the name
    /// makes it void.
    #[test]
    fn a_key_too_long_for_the_store_is_told_apart() {
        let path = Path::from("dse/notes/r/aaaa");
        let refused = map_error(
            generic(
                "Client error with status 400 Bad Request: <?xml version=\"1.0\" \
                 encoding=\"UTF-8\"?><Error><Code>KeyTooLongError</Code><Message>Your key is \
                 too long</Message></Error>",
            ),
            "writing",
            &path,
        );
        assert!(names_a_key_too_long(&refused), "{refused:?}");
        assert!(matches!(refused, Error::Storage { .. }), "{refused:?}");
        assert!(refused.to_string().contains("255 bytes"), "{refused}");
        let other = map_error(
            generic("Client error with status 400 Bad Request: <Code>InvalidArgument</Code>"),
            "writing",
            &path,
        );
        assert!(!names_a_key_too_long(&other), "{other:?}");
    }

    #[test]
    fn etags_compare_without_quotes_or_a_weak_mark() {
        assert!(same_etag("\"abc\"", "abc"));
        assert!(same_etag("abc", "\"abc\""));
        assert!(same_etag("W/\"abc\"", "\"abc\""));
        assert!(same_etag("\"abc\"", "\"abc\""));
        assert!(!same_etag("\"abc\"", "\"abd\""));
        assert!(!same_etag("\"abc", "abc"));
    }

    /// `usize::MAX` for "no bound" is more than a semaphore counts, which
    /// panicked when the store was made.
    #[test]
    fn any_bound_on_requests_in_flight_makes_a_store() {
        let io = Io::new(
            Arc::new(object_store::memory::InMemory::new()),
            usize::MAX,
            Path::from("probe"),
        );
        assert_eq!(io.in_flight.available_permits(), Semaphore::MAX_PERMITS);
    }

    /// S3's bulk delete answers `200 OK` and names each key it did not
    /// delete with a code, which object_store quotes in a generic error
    /// without a status: every such refusal read as transient, so
    /// credentials that may not delete failed every write as "try again".
    #[test]
    fn a_bulk_delete_refusal_is_classified_by_its_code() {
        let path = Path::from("p/k");
        let in_bulk = |code: &str| {
            map_error(
                generic(&format!(
                    "DeleteObjects request failed for key p/k: Some text (code: {code})"
                )),
                "deleting objects from",
                &path,
            )
        };
        let denied = in_bulk("AccessDenied");
        assert!(
            matches!(&denied, Error::Storage { message, .. } if message.contains("credentials")),
            "{denied}"
        );
        assert!(in_bulk("SlowDown").is_transient());
        assert!(in_bulk("InternalError").is_transient());
        // MinIO's lost write quorum, and a code never seen: tried again.
        assert!(in_bulk("SlowDownWrite").is_transient());
        assert!(in_bulk("SomethingNew").is_transient());
        let archived = in_bulk("InvalidObjectState");
        assert!(matches!(&archived, Error::Storage { .. }), "{archived}");
        let no_bucket = in_bulk("NoSuchBucket");
        assert!(
            matches!(&no_bucket, Error::Storage { message, .. } if message.contains("does the bucket exist")),
            "{no_bucket}"
        );
        let gone = generic("DeleteObjects request failed for key p/k: Not found (code: NoSuchKey)");
        assert_eq!(bulk_delete_code(&gone).as_deref(), Some("NoSuchKey"));
        assert_eq!(bulk_delete_code(&generic("(code: AccessDenied)")), None);
    }

    #[test]
    fn statuses_are_classified() {
        let path = Path::from("p/k");
        let server = map_error(
            generic("Error performing PUT in 1s - Server returned non-2xx status code: 503 Service Unavailable"),
            "writing",
            &path,
        );
        assert!(server.is_transient(), "{server}");
        let bad = map_error(
            generic("Server returned non-2xx status code: 400 Bad Request: <Error/>"),
            "writing",
            &path,
        );
        assert!(matches!(bad, Error::Storage { .. }), "{bad}");
        // S3's answer to a body sent too slowly: sent again, it goes through.
        let slow = map_error(
            generic("Server returned non-2xx status code: 400 Bad Request: <Error><Code>RequestTimeout</Code><Message>Your socket connection to the server was not read from or written to within the timeout period.</Message></Error>"),
            "writing",
            &path,
        );
        assert!(slow.is_transient(), "{slow}");
        let skewed = map_error(
            generic("Server returned non-2xx status code: 403 Forbidden: <Error><Code>RequestTimeTooSkewed</Code></Error>"),
            "writing",
            &path,
        );
        assert!(!skewed.is_transient(), "{skewed}");
        // A bucket in another region than configured: retrying only waits.
        let elsewhere = map_error(
            generic("Error performing GET https://b.s3.us-east-1.amazonaws.com/dse/m/kx in 40ms - Received redirect without LOCATION, this normally indicates an incorrectly configured region"),
            "reading",
            &path,
        );
        assert!(matches!(elsewhere, Error::Storage { .. }), "{elsewhere}");
        let denied = map_error(
            object_store::Error::PermissionDenied {
                path: "p/k".to_owned(),
                source: "403".into(),
            },
            "reading",
            &path,
        );
        assert!(
            matches!(&denied, Error::Storage { message, .. } if message.contains("credentials"))
        );
        let unsupported = map_error(
            object_store::Error::NotImplemented {
                operation: "put_opts with PutMode::Update".to_owned(),
                implementer: "LocalFileSystem".to_owned(),
            },
            "writing",
            &path,
        );
        assert!(
            matches!(&unsupported, Error::Storage { message, .. } if message.contains("conditional"))
        );
        // A local directory's file errors: retried only when they say
        // "later".
        let local = |kind: std::io::ErrorKind| {
            map_error(
                object_store::Error::Generic {
                    store: "LocalDirectory",
                    source: Box::new(std::io::Error::new(kind, "from the file system")),
                },
                "writing",
                &path,
            )
        };
        for permanent in [
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let error = local(permanent);
            assert!(
                matches!(error, Error::Storage { .. }),
                "{permanent:?}: {error}"
            );
        }
        assert!(local(std::io::ErrorKind::TimedOut).is_transient());
        // A server without conditional writes: not worth retrying, and told
        // apart from other failures.
        let not_implemented = map_error(
            generic("Error performing PUT - Server returned non-2xx status code: 501 Not Implemented: <Error/>"),
            "writing",
            &path,
        );
        assert!(!not_implemented.is_transient(), "{not_implemented}");
        assert!(
            matches!(&not_implemented, Error::Storage { message, .. } if message.contains("conditional")),
            "{not_implemented}"
        );
    }

    /// A 409 to a plain put racing another request on the key says "try
    /// again": it was taken for a permanent refusal, so a peer cursor's
    /// save failed where a retry would have gone through.
    #[test]
    fn a_conflict_that_says_try_again_is_transient() {
        let path = Path::from("p/m/k");
        let conflict = |code: &str| {
            map_error(
                object_store::Error::AlreadyExists {
                    path: "p/m/k".to_owned(),
                    source: format!(
                        "Server returned non-2xx status code: 409 Conflict: <Error><Code>{code}</Code></Error>"
                    )
                    .into(),
                },
                "writing",
                &path,
            )
        };
        assert!(conflict("OperationAborted").is_transient());
        assert!(conflict("ConditionalRequestConflict").is_transient());
        assert!(!conflict("BucketAlreadyOwnedByYou").is_transient());
    }

    /// A local directory on a file system without microsecond times was
    /// told to use a local directory: the reason is now the message.
    #[test]
    fn a_file_system_with_coarse_times_is_named_as_the_reason() {
        let error = map_error(
            object_store::Error::NotSupported {
                source: Box::new(crate::local::CoarseTimes("/mnt/fat/store".into())),
            },
            "writing",
            &Path::from("dse/c/x/f/0000000000000001"),
        );
        let Error::Storage { message, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(message.contains("modification times"), "{message}");
        assert!(!message.contains("local_directory"), "{message}");
    }

    /// S3 quotes a rejected session token whole in the body of
    /// `ExpiredToken`, and the access key and the signed request in that of
    /// `SignatureDoesNotMatch`: the error kept that body as its cause, and a
    /// program printing every cause printed the credentials.
    #[test]
    fn credentials_an_answer_quotes_are_not_kept() {
        let chain = |error: &Error| {
            let mut text = String::new();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
            while let Some(current) = cause {
                text.push_str(&current.to_string());
                text.push('\n');
                cause = current.source();
            }
            text
        };
        let path = Path::from("p/k");
        for (status, body) in [
            (
                "400 Bad Request",
                "<Error><Code>ExpiredToken</Code><Message>The provided token has expired.\
                 </Message><Token-0>FwoGZXIvYXdzEXAMPLESESSIONTOKEN</Token-0></Error>",
            ),
            (
                "403 Forbidden",
                "<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIAEXAMPLEKEYID\
                 </AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 EXAMPLESIGNED</StringToSign>\
                 <CanonicalRequest>PUT /p/k x-amz-security-token:FwoGZXIvYXdzEXAMPLESESSIONTOKEN\
                 </CanonicalRequest></Error>",
            ),
            // A body cut short inside an element.
            (
                "400 Bad Request",
                "<Error><Token-0>FwoGZXIvYXdzEXAMPLESESSIONTOKEN",
            ),
        ] {
            for error in [
                generic(&format!(
                    "Server returned non-2xx status code: {status}: {body}"
                )),
                object_store::Error::PermissionDenied {
                    path: "p/k".to_owned(),
                    source: format!("Server returned non-2xx status code: {status}: {body}").into(),
                },
            ] {
                let text = chain(&map_error(error, "writing", &path));
                for secret in ["EXAMPLESESSIONTOKEN", "AKIAEXAMPLEKEYID", "EXAMPLESIGNED"] {
                    assert!(!text.contains(secret), "{text}");
                }
                assert!(text.contains("(removed)"), "{text}");
            }
        }
        // The code and message stay.
        let expired = chain(&map_error(
            generic(
                "Server returned non-2xx status code: 400 Bad Request: <Error><Code>\
                 ExpiredToken</Code><Token-0>t</Token-0></Error>",
            ),
            "writing",
            &path,
        ));
        assert!(expired.contains("<Code>ExpiredToken</Code>"), "{expired}");
        assert!(expired.contains("check the credentials"), "{expired}");
        assert_eq!(
            without_credentials("a <Token-0>t</Token-0> b <Code>X</Code> <"),
            "a <Token-0>(removed)</Token-0> b <Code>X</Code> <"
        );
        assert_eq!(
            without_credentials(
                "<Token-0/><Code>InvalidArgument</Code><ArgumentValue>AWS4-HMAC-SHA256 \
                 Credential=AKIAEXAMPLEKEYID/x</ArgumentValue>"
            ),
            "<Token-0/><Code>InvalidArgument</Code><ArgumentValue>(removed)</ArgumentValue>"
        );
    }

    /// S3 refuses a request from a machine whose clock is off with 403,
    /// as it refuses bad credentials: the error said to check the
    /// credentials, which were fine.
    #[test]
    fn a_clock_too_far_off_is_told_apart_from_bad_credentials() {
        let skewed = object_store::Error::PermissionDenied {
            path: "p/k".to_owned(),
            source: "Server returned non-2xx status code: 403 Forbidden: <Error><Code>\
                     RequestTimeTooSkewed</Code><Message>The difference between the request \
                     time and the current time is too large.</Message></Error>"
                .into(),
        };
        let error = map_error(skewed, "writing", &Path::from("p/k"));
        let Error::Storage { message, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(message.contains("clock"), "{message}");
        assert!(!message.contains("credentials"), "{message}");
    }

    /// Only S3's own code in an answer's body makes "not found" about the
    /// bucket: a key that spells the code is still an object not found.
    #[test]
    fn a_missing_bucket_is_told_from_a_missing_object() {
        let not_found = |body: &str| object_store::Error::NotFound {
            path: "dse/c/x/r/NoSuchBucket".to_owned(),
            source: format!("Server returned non-2xx status code: 404 Not Found: {body}").into(),
        };
        assert!(names_no_bucket(&not_found(
            "<Error><Code>NoSuchBucket</Code><BucketName>b</BucketName></Error>"
        )));
        assert!(!names_no_bucket(&not_found(
            "<Error><Code>NoSuchKey</Code><Key>dse/c/x/r/NoSuchBucket</Key></Error>"
        )));
    }
}
