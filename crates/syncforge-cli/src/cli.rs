//! The command line: every command, option and `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use syncforge::{ConflictStrategy, Cursor};

/// What every `--help` says about naming stores.
const STORES: &str = "\
Stores are named by URL:
  memory:                  a new in-process store, gone when the command ends:
                           useful only within one command (nothing carries
                           from one syncforge command to the next)
  ./data, /var/lib/app     the filesystem store in that directory (created
  file:///var/lib/app      by the commands that write; the reading commands
                           refuse a directory that holds no store)
  redis://[:password@]host:port[/db][?prefix=P]   Redis (rediss:// over TLS;
  redis-cluster://host:port?node=host:port         a cluster from seed nodes)
  s3://bucket/prefix[?endpoint=URL&region=R&allow_http=true&path_style=true]
                           S3 or an S3-compatible store (allow_http=true
                           for an http:// endpoint); credentials from the
                           AWS_* environment variables
                           (the reading commands refuse a Redis or S3 prefix
                           that holds no store, as they do a directory)
  http://host:port         a sync server (`syncforge serve`); its token comes
  https://host:port        from --bearer-token or SYNCFORGE_TOKEN
A URL of a kind this build lacks is refused and names the cargo feature
that builds it in.";

/// Sync, inspect, import and export syncforge stores.
#[derive(Debug, Parser)]
#[command(
    name = "syncforge",
    version,
    about = "Sync, inspect, import and export syncforge stores",
    after_help = format!("{STORES}\n\nExamples:\n  \
        syncforge sync ./phone ./laptop --both\n  \
        syncforge ls ./laptop notes\n  \
        syncforge get ./laptop notes n1\n  \
        syncforge export ./laptop notes > notes.jsonl\n  \
        syncforge import ./server notes notes.jsonl\n\n\
        Exit codes: 0 success, 1 failure at run time, 2 usage error, \
        3 a sync that synced all but records the server refused.")
)]
pub(crate) struct Cli {
    /// Print machine-readable JSON instead of the human form.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// The client id this command writes as (default: a new one per run).
    /// Must be unique among the replicas that sync together.
    #[arg(long, global = true, env = "SYNCFORGE_CLIENT_ID", value_name = "ID")]
    pub(crate) client_id: Option<String>,

    /// Never draw progress bars (they are drawn only when stderr is a
    /// terminal anyway).
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,

    /// The token to present to sync servers (http:// and https:// stores).
    /// Prefer SYNCFORGE_TOKEN: a flag shows in the process list.
    #[cfg(feature = "http")]
    #[arg(
        long,
        global = true,
        env = "SYNCFORGE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) bearer_token: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    Sync(SyncArgs),
    Ls(LsArgs),
    Get(GetArgs),
    Put(PutArgs),
    Delete(DeleteArgs),
    Export(ExportArgs),
    Import(ImportArgs),
    Stats(StatsArgs),
    Watch(WatchArgs),
    #[cfg(feature = "http")]
    Serve(ServeArgs),
}

/// How concurrent edits are merged: every replica of a collection must use
/// the same strategy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Strategy {
    /// The whole record with the newest stamp wins (the library's default).
    Timestamp,
    /// Field by field, the newest stamp wins.
    Crdt,
}

impl From<Strategy> for ConflictStrategy {
    fn from(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Timestamp => ConflictStrategy::Timestamp,
            Strategy::Crdt => ConflictStrategy::Crdt,
        }
    }
}

/// Options of the commands that merge records.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct MergeOptions {
    /// How concurrent edits are merged; use the strategy the application
    /// uses for these collections [default: timestamp]. A sync server merges
    /// what it is sent with its own strategy: importing into one, or a sync
    /// to one without --both, refuses it.
    #[arg(long, value_enum)]
    pub(crate) strategy: Option<Strategy>,

    /// Records merged and written per batch, and the page size of the change
    /// feed (1 to 100000) [default: 100]. To a sync server, `sync` sends a
    /// page per request, and `import` N records per request (default: as
    /// many as the server takes).
    #[arg(long, value_name = "N", value_parser = batch_size)]
    pub(crate) batch_size: Option<usize>,
}

/// A batch size: 1 to `MAX_BATCH_SIZE`, refused as the flag's usage error
/// before any input is read.
fn batch_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(size @ 1..=syncforge::MAX_BATCH_SIZE) => Ok(size),
        Ok(size) => Err(format!(
            "{size} is outside 1..={}",
            syncforge::MAX_BATCH_SIZE
        )),
        Err(error) => Err(error.to_string()),
    }
}

// The --batch-size help names the engine's default.
const _: () = assert!(syncforge::DEFAULT_BATCH_SIZE == 100);
// serve's --header-read-timeout defaults to the server's own default.
#[cfg(feature = "http")]
const _: () = assert!(syncforge::http::DEFAULT_HEADER_READ_TIMEOUT.as_secs() == 30);

/// Sync collections from SRC to DST through the change feed.
///
/// Only what changed since the last sync between the two stores travels: the
/// positions reached in SRC's change feed (and, with --both, in DST's) are
/// kept in the metadata of the local end (DST, or SRC when DST is a sync
/// server), so repeating the command sends nothing new, and a sync that was
/// interrupted resumes where it stopped. Prints one summary
/// line per collection: what the merge did to DST (added, updated, deleted,
/// unchanged, conflicts), and with --both what was sent to SRC. A sync
/// server's own merges are its business: the line counts the records sent
/// to it. A record a server refuses (larger than it takes in one request)
/// holds back no other change; it is counted as refused, and the command
/// exits with code 3 once every collection is synced.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge sync ./phone ./backup                 # every collection, one way\n  \
    syncforge sync ./phone ./laptop -c notes --both # both ways\n  \
    syncforge sync ./a ./b --strategy crdt --json   # counts as JSON Lines"))]
pub(crate) struct SyncArgs {
    /// The store changes come from.
    pub(crate) src: String,
    /// The store changes go to; it keeps the sync's cursors, unless it is a
    /// sync server (SRC keeps them then).
    pub(crate) dst: String,
    /// A collection to sync (repeatable; default: every collection of SRC,
    /// with --both of SRC and DST).
    #[arg(short, long = "collection", value_name = "COLLECTION")]
    pub(crate) collections: Vec<String>,
    /// Sync both ways: DST's changes go to SRC too. Either end may then be
    /// a directory or store not made yet (a new device's first sync).
    #[arg(long)]
    pub(crate) both: bool,
    #[command(flatten)]
    pub(crate) merge: MergeOptions,
}

/// List the collections of a store, or the records of a collection.
///
/// Soft-deleted records are listed too, marked "deleted": they stay stored so
/// that deletions travel in syncs.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge ls ./data            # collection names\n  \
    syncforge ls ./data notes      # record ids\n  \
    syncforge ls ./data notes --json"))]
pub(crate) struct LsArgs {
    /// The store.
    pub(crate) store: String,
    /// The collection whose records to list.
    pub(crate) collection: Option<String>,
}

/// Print one record (pretty JSON; compact with --json).
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge get ./data notes n1\n  \
    syncforge get ./data notes n1 --json > n1.json"))]
pub(crate) struct GetArgs {
    /// The store.
    pub(crate) store: String,
    /// The collection.
    pub(crate) collection: String,
    /// The record's id.
    pub(crate) id: String,
}

/// Write records read from FILE or stdin.
///
/// Each JSON object with a string "id" replaces that record's content. The
/// input is one object, a JSON array of objects, or objects one after
/// another (JSON Lines, or printed over several lines each, as `get` and
/// `jq .` print them). All of it is checked first: one bad object refuses the
/// whole input, naming its line, and nothing is written. Metadata keys
/// (_version, _sync, ...) are checked for their types and otherwise
/// ignored, so a record printed by `get` can be edited and put back. Prints
/// the stored records.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    echo '{{\"id\": \"n1\", \"title\": \"Q3\"}}' | syncforge put ./data notes\n  \
    syncforge put ./data notes edited.json"))]
pub(crate) struct PutArgs {
    /// The store.
    pub(crate) store: String,
    /// The collection (created by the first record written to it).
    pub(crate) collection: String,
    /// The file to read (default, or `-`: stdin).
    pub(crate) file: Option<PathBuf>,
}

/// Soft-delete a record.
///
/// The record stays stored, marked deleted, so that the deletion travels in
/// syncs. Prints the deleted record.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge delete ./data notes n1"))]
pub(crate) struct DeleteArgs {
    /// The store.
    pub(crate) store: String,
    /// The collection.
    pub(crate) collection: String,
    /// The record's id.
    pub(crate) id: String,
}

/// Print every record of a collection as JSON Lines, in canonical form.
///
/// One record per line, sorted by id, soft-deleted records included, each in
/// the canonical JSON form (sorted keys, per-field stamps): replicas that
/// have converged export byte-identical files, and `import` reads them back.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge export ./data notes > notes.jsonl\n  \
    diff <(syncforge export ./phone notes) <(syncforge export ./laptop notes)"))]
pub(crate) struct ExportArgs {
    /// The store.
    pub(crate) store: String,
    /// The collection.
    pub(crate) collection: String,
}

/// Merge records into a store from JSON Lines, a JSON array or the
/// TypeScript original's files.
///
/// Import is a sync: records merge with what the store holds (by the
/// chosen --strategy; a server merges by its own), so an import can be
/// repeated; records of one id in the
/// input merge into one. Records may be in syncforge's
/// canonical form (as `export` prints them) or in the TypeScript original's
/// form ({id, ...fields, _version, _timestamp, _deleted, _clientId}). The
/// whole input is checked first: a malformed line refuses the import with
/// its line number, and nothing is written. So does, for a sync server, a
/// record larger than the server takes in one request.
///
/// FILE may also be a directory holding one `<id>.json` file per record: a
/// collection directory of the original's filesystem store. --store-dir
/// imports a whole store directory of the original, each subdirectory into
/// the collection of its name.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge import ./data notes notes.jsonl\n  \
    syncforge export ./phone notes | syncforge import ./laptop notes\n  \
    syncforge import ./data inspections ./ts-data/inspections\n  \
    syncforge import ./data --store-dir ./ts-data"))]
pub(crate) struct ImportArgs {
    /// The store to import into.
    pub(crate) store: String,
    /// The collection to import into.
    #[arg(required_unless_present = "store_dir")]
    pub(crate) collection: Option<String>,
    /// JSON Lines (or objects printed one after another), a JSON array,
    /// or a directory of `<id>.json` files
    /// (default, or `-`: stdin).
    #[arg(conflicts_with = "store_dir")]
    pub(crate) file: Option<PathBuf>,
    /// A whole store directory of the TypeScript original: every
    /// subdirectory is a collection (but those whose names start with a
    /// dot, which are skipped with a warning).
    #[arg(long, value_name = "DIR", conflicts_with = "collection")]
    pub(crate) store_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) merge: MergeOptions,
}

/// Show what each collection of a store holds.
///
/// Per collection: records, deleted records, the feed head (the cursor after
/// the last change), the newest stamp and the size.
///
/// "records" counts every stored record, soft-deleted ones included; "json
/// bytes" is the size of their canonical JSON (what the filesystem store's
/// record files hold). Reads every record once.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge stats ./data\n  \
    syncforge stats ./data --json"))]
pub(crate) struct StatsArgs {
    /// The store.
    pub(crate) store: String,
}

/// Follow a collection's change feed and print each change as it is applied.
///
/// Starts at the end of the feed (only changes made from now on), or at the
/// start with --from-start, or after a cursor printed earlier with --after.
/// Finding the end reads the whole feed once (from a sync server, page by
/// page: every record of the collection), where a cursor given with --after
/// costs a page or two: a follower of a large collection keeps the cursor of
/// the last line it read and goes on after it.
/// Each line shows the change's cursor, so a later watch can go on from it.
/// Runs until interrupted (Ctrl-C or SIGTERM) or until --count changes were printed; a
/// store or sync server that is unreachable for a while is tried again
/// (after 1 s, then twice as long each time, up to 30 s). A watch whose
/// store was replaced meanwhile (a server now serving another store; a
/// Redis store it opened itself, wiped by a restart) stops with an error,
/// as its cursor means nothing in the new store's feed.
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge watch ./data notes\n  \
    syncforge watch ./data notes --from-start --json\n  \
    syncforge watch ./data notes --after 1200 --count 10"))]
pub(crate) struct WatchArgs {
    /// The store.
    pub(crate) store: String,
    /// The collection.
    pub(crate) collection: String,
    /// Print the whole feed first.
    #[arg(long, conflicts_with = "after")]
    pub(crate) from_start: bool,
    /// Start after this cursor, one of this store's feed (a cursor past
    /// its end is refused; none is past 2^53).
    #[arg(long, value_name = "CURSOR",
          value_parser = clap::value_parser!(u64).range(..=Cursor::LARGEST.get()))]
    pub(crate) after: Option<u64>,
    /// Stop after printing this many changes (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// How often to look for new changes (more than zero).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = interval)]
    pub(crate) interval: Duration,
}

/// Serve a store over HTTP: the sync server other replicas sync with.
///
/// Clients sync with it as with any store (`syncforge sync ./tablet
/// http://host:8080 --both`, or `HttpPeer` in a program). Every request but
/// /v1/health needs one of the tokens given with --token (read and write),
/// --read-only-token or --token-file; --open serves without tokens, for a
/// trusted network only. Prints the URL it listens on, then serves until
/// interrupted (Ctrl-C or SIGTERM), finishing the requests in progress; a
/// second signal stops it at once (exit code 1).
#[cfg(feature = "http")]
#[derive(Debug, Args)]
#[command(after_help = format!("{STORES}\n\nExamples:\n  \
    syncforge serve ./data --addr 127.0.0.1:8080 --token \"$SYNC_TOKEN\"\n  \
    syncforge serve ./data --addr 0.0.0.0:8080 --token rw-secret --read-only-token dashboard\n  \
    syncforge serve ./data --addr 0.0.0.0:8080 --token-file /etc/syncforge/tokens\n  \
    syncforge serve memory: --addr 127.0.0.1:0 --open      # a throwaway server"))]
pub(crate) struct ServeArgs {
    /// The store to serve (a local store, not another server).
    pub(crate) store: String,
    /// The address to listen on (port 0: any free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub(crate) addr: String,
    /// A token that may read and write every collection (repeatable).
    #[arg(long = "token", value_name = "TOKEN")]
    pub(crate) tokens: Vec<String>,
    /// A token that may only read (repeatable).
    #[arg(long = "read-only-token", value_name = "TOKEN")]
    pub(crate) read_only_tokens: Vec<String>,
    /// Tokens from a file, one a line: `read-write SECRET [COLLECTION...]`
    /// or `read-only SECRET [COLLECTION...]` (no collection: every one; a
    /// name holding a space or a % written %20 or %25, a leading # as
    /// %23); blank lines and lines starting with `#` are skipped (a `#`
    /// after a line's words is refused). Unlike --token,
    /// keeps the secrets out of the process list.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Serve without tokens: anyone who reaches the address may read and
    /// write.
    #[arg(long, conflicts_with_all = ["tokens", "read_only_tokens", "token_file"])]
    pub(crate) open: bool,
    /// How concurrent edits pushed by clients are merged; use the strategy
    /// the application uses for these collections.
    #[arg(long, value_enum, default_value_t = Strategy::Timestamp)]
    pub(crate) strategy: Strategy,
    /// Largest request body in bytes; behind a proxy, at most the proxy's
    /// own limit (clients read it and split their pushes to fit).
    #[arg(long, value_name = "BYTES", default_value_t = syncforge::http::DEFAULT_MAX_BODY_BYTES)]
    pub(crate) max_body_bytes: usize,
    /// Most connections served at once; past it, clients are told to come
    /// back (503).
    #[arg(long, value_name = "N", default_value_t = syncforge::http::DEFAULT_MAX_CONNECTIONS)]
    pub(crate) max_connections: usize,
    /// Time a client has to send a request's headers, and longest idle time
    /// of a connection between requests; behind a proxy, longer than the
    /// proxy keeps idle connections to the server.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = interval)]
    pub(crate) header_read_timeout: Duration,
}

/// A polling interval: a duration longer than zero (zero would poll without
/// pause).
fn interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}
