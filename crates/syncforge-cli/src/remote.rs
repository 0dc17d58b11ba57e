//! A sync server named by an `http(s)://` URL, reached through its
//! [`HttpPeer`].

use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::{Context as _, Result};
use syncforge::http::HttpPeer;
use syncforge::{ChangePage, CollectionName, Cursor, Record, StoreUrl, SyncPeer};

use crate::commands::{Context, Counts};
use crate::failure::usage;

/// A sync server.
pub(crate) struct Remote {
    url: StoreUrl,
    peer: HttpPeer,
}

/// What the peer's builder refused, as the command reports it: a malformed
/// token or address is the command line's fault (a usage error, named as
/// the user gave it); an HTTP client that cannot be made (its TLS roots
/// unreadable, say) is the machine's, a failure at run time.
fn build_refused(error: syncforge::Error) -> anyhow::Error {
    match error {
        syncforge::Error::InvalidConfig {
            option: "bearer_token",
            reason,
        } => usage(format!("--bearer-token (or SYNCFORGE_TOKEN): {reason}")),
        error @ syncforge::Error::InvalidConfig {
            option: "client", ..
        } => anyhow::Error::new(error),
        other => usage(other.to_string()),
    }
}

impl Remote {
    /// A peer for the server `url` names, presenting the command's token.
    pub(crate) fn connect(url: StoreUrl, cx: &Context) -> Result<Remote> {
        let Some(base) = url.server_url() else {
            return Err(usage(format!("{url} is not a sync server")));
        };
        let mut builder = HttpPeer::builder(base)
            .user_agent(concat!("syncforge-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = cx.bearer_token() {
            builder = builder.bearer_token(token);
        }
        let peer = builder.build().map_err(build_refused)?;
        Ok(Remote { url, peer })
    }

    pub(crate) fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The server as a peer of a local engine.
    pub(crate) fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// The id of the store the server serves.
    pub(crate) async fn feed_id(&self) -> Result<String> {
        let health = self
            .peer
            .health()
            .await
            .with_context(|| format!("cannot reach the sync server {}", self.url))?;
        Ok(health.feed_id)
    }

    /// The collections the token may read, sorted by name.
    pub(crate) async fn collections(&self) -> Result<Vec<CollectionName>> {
        let mut names = self
            .peer
            .collections()
            .await
            .with_context(|| format!("cannot list the collections of {}", self.url))?;
        names.sort();
        Ok(names)
    }

    /// A page of the server's feed; with a `wait`, a long poll.
    pub(crate) async fn page(
        &self,
        name: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
        wait: Duration,
    ) -> syncforge::Result<ChangePage> {
        if wait.is_zero() {
            self.peer.pull(name, after, limit).await
        } else {
            self.peer
                .wait_for_changes(name.clone(), after, limit, wait)
                .await
        }
    }

    /// Sends `records` to merge into the server's collection; what the
    /// merge did there.
    pub(crate) async fn push(&self, name: &CollectionName, records: Vec<Record>) -> Result<Counts> {
        let answer = self
            .peer
            .push_records(name.clone(), records)
            .await
            .with_context(|| format!("cannot send records to {}", self.url))?;
        Ok(Counts {
            added: answer.added,
            updated: answer.updated,
            deleted: answer.deleted,
            unchanged: answer.unchanged,
            conflicts: answer.conflicts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::build_refused;
    use crate::failure::{exit_code, RUNTIME_FAILURE, USAGE_ERROR};

    /// A client that could not be built was reported as a usage error
    /// (exit 2), as if the command line were at fault.
    #[test]
    fn a_client_that_cannot_be_built_is_a_failure_at_run_time() {
        let refused = |option, reason: &str| {
            exit_code(&build_refused(syncforge::Error::InvalidConfig {
                option,
                reason: reason.to_owned(),
            }))
        };
        assert_eq!(refused("client", "no TLS roots"), RUNTIME_FAILURE);
        assert_eq!(refused("bearer_token", "holds a newline"), USAGE_ERROR);
        assert_eq!(refused("base_url", "not http"), USAGE_ERROR);
    }
}
