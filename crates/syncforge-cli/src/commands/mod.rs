//! The commands, and what several of them share.

mod records;
#[cfg(feature = "http")]
mod serve;
mod signals;
mod stats;
mod sync;
mod transfer;
mod watch;

use anyhow::Result;
use serde_json::Value;
use syncforge::SyncResult;

use crate::cli::{Cli, Command, MergeOptions, Strategy};
use crate::output::Output;
use crate::progress::Progress;
use crate::store::EngineOptions;

/// What every command gets besides its own arguments.
pub(crate) struct Context {
    pub(crate) out: Output,
    pub(crate) progress: Progress,
    client_id: Option<String>,
    #[cfg(feature = "http")]
    bearer_token: Option<String>,
}

impl Context {
    /// Engine settings for a command that only reads or writes records.
    pub(crate) fn engine(&self) -> EngineOptions {
        EngineOptions {
            client_id: self.client_id.clone(),
            ..EngineOptions::default()
        }
    }

    /// The token to present to sync servers.
    #[cfg(feature = "http")]
    pub(crate) fn bearer_token(&self) -> Option<&str> {
        self.bearer_token.as_deref()
    }

    /// Engine settings for a command that merges records.
    pub(crate) fn merging(&self, merge: MergeOptions) -> EngineOptions {
        EngineOptions {
            client_id: self.client_id.clone(),
            strategy: merge.strategy.unwrap_or(Strategy::Timestamp).into(),
            batch_size: merge.batch_size,
        }
    }
}

/// Runs the command `cli` names.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    // A command that writes finishes its writes when its reader goes.
    let writes = match &cli.command {
        Command::Sync(_) | Command::Put(_) | Command::Delete(_) | Command::Import(_) => true,
        #[cfg(feature = "http")]
        Command::Serve(_) => true,
        Command::Ls(_)
        | Command::Get(_)
        | Command::Export(_)
        | Command::Stats(_)
        | Command::Watch(_) => false,
    };
    let mut context = Context {
        out: Output::new(cli.json, writes),
        progress: Progress::new(cli.no_progress),
        client_id: cli.client_id,
        #[cfg(feature = "http")]
        bearer_token: cli.bearer_token,
    };
    let outcome = match cli.command {
        Command::Sync(args) => sync::run(args, &mut context).await,
        Command::Ls(args) => records::ls(args, &mut context).await,
        Command::Get(args) => records::get(args, &mut context).await,
        Command::Put(args) => records::put(args, &mut context).await,
        Command::Delete(args) => records::delete(args, &mut context).await,
        Command::Export(args) => transfer::export(args, &mut context).await,
        Command::Import(args) => transfer::import(args, &mut context).await,
        Command::Stats(args) => stats::run(args, &mut context).await,
        Command::Watch(args) => watch::run(args, &mut context).await,
        #[cfg(feature = "http")]
        Command::Serve(args) => serve::run(args, &mut context).await,
    };
    // What was printed before a failure still goes out.
    let flushed = context.out.flush();
    outcome.and(flushed)
}

/// What a command that writes collection by collection says when its output
/// fails after the first `done` of `all` collections were `verb` (`last`
/// the last of them): the stores hold those, which the error would not say.
pub(crate) fn output_failed_after(verb: &str, done: usize, all: usize, last: &str) -> String {
    format!(
        "{done} of the {all} collections were {verb} before the output failed (the last: {last:?})"
    )
}

/// What a merge did to one collection of one store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) added: usize,
    pub(crate) updated: usize,
    pub(crate) deleted: usize,
    pub(crate) unchanged: usize,
    pub(crate) conflicts: usize,
}

impl Counts {
    pub(crate) fn of(result: &SyncResult) -> Counts {
        Counts {
            added: result.added,
            updated: result.updated,
            deleted: result.deleted,
            unchanged: result.unchanged,
            conflicts: result.conflicts.len(),
        }
    }

    /// Adds `other`, stopping at `usize::MAX`: a server's counts are not
    /// trusted, and one answering absurd ones must not end the command.
    pub(crate) fn add(&mut self, other: Counts) {
        self.added = self.added.saturating_add(other.added);
        self.updated = self.updated.saturating_add(other.updated);
        self.deleted = self.deleted.saturating_add(other.deleted);
        self.unchanged = self.unchanged.saturating_add(other.unchanged);
        self.conflicts = self.conflicts.saturating_add(other.conflicts);
    }

    /// "3 added, 1 updated, 0 deleted, 10 unchanged, 0 conflicts"
    pub(crate) fn human(&self) -> String {
        format!(
            "{} added, {} updated, {} deleted, {} unchanged, {} conflicts",
            self.added, self.updated, self.deleted, self.unchanged, self.conflicts
        )
    }

    /// The counts as the fields of a JSON object.
    pub(crate) fn json(&self) -> serde_json::Map<String, Value> {
        [
            ("added", self.added),
            ("updated", self.updated),
            ("deleted", self.deleted),
            ("unchanged", self.unchanged),
            ("conflicts", self.conflicts),
        ]
        .into_iter()
        .map(|(name, count)| (name.to_owned(), Value::from(count)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Counts;

    /// A server answering `usize::MAX` records added, twice, overflowed the
    /// sum: a panic in a debug build, a wrong count in a release one.
    #[test]
    fn counts_add_up_to_their_limit_and_no_further() {
        let huge = Counts {
            added: usize::MAX,
            conflicts: 1,
            ..Counts::default()
        };
        let mut total = huge;
        total.add(huge);
        assert_eq!(total.added, usize::MAX);
        assert_eq!(total.conflicts, 2);
    }
}
