//! `syncforge serve STORE`: the HTTP sync server.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::json;
use syncforge::http::{Access, AccessToken, Server, ServerOptions};

use super::signals::StopSignals;
use super::Context;
use crate::cli::ServeArgs;
use crate::failure::usage;
use crate::store::{parse_url, EngineOptions, Store};

pub(crate) async fn run(args: ServeArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    if url.backend_config().is_none() {
        return Err(usage(format!(
            "serve serves a local store, and {url} is a {}",
            url.kind()
        )));
    }
    // Each secret once, where it was given: named, never quoted, if repeated.
    let mut seen = HashMap::new();
    let from_file = match &args.token_file {
        Some(path) => token_file(path, &mut seen)?,
        None => Vec::new(),
    };
    if args.tokens.is_empty()
        && args.read_only_tokens.is_empty()
        && from_file.is_empty()
        && !args.open
    {
        return Err(usage(
            "give the clients' tokens with --token (read and write), --read-only-token or \
             --token-file, or serve without tokens with --open (a trusted network only)",
        ));
    }
    let mut tokens = Vec::new();
    for secret in &args.tokens {
        once(&mut seen, secret, "--token")?;
        tokens.push(checked(AccessToken::read_write(secret), "--token")?);
    }
    for secret in &args.read_only_tokens {
        once(&mut seen, secret, "--read-only-token")?;
        tokens.push(checked(
            AccessToken::read_only(secret),
            "--read-only-token",
        )?);
    }
    let options = tokens
        .into_iter()
        .chain(from_file)
        .fold(ServerOptions::default(), ServerOptions::token)
        .max_body_bytes(args.max_body_bytes)
        .max_connections(args.max_connections)
        .header_read_timeout(args.header_read_timeout);
    // Checked before the store is opened (which creates it): a bad token or
    // address is a usage error, and leaves nothing behind.
    options.validate().map_err(|error| match error {
        syncforge::Error::InvalidConfig {
            option: option @ ("max_body_bytes" | "max_connections" | "header_read_timeout"),
            reason,
        } => usage(format!("--{}: {reason}", option.replace('_', "-"))),
        other => usage(format!("cannot serve with these options: {other}")),
    })?;
    // A malformed address is the command line's fault; a host name that
    // does not resolve (the resolver down at boot) is a failure at run time,
    // which a supervisor may retry.
    std::net::ToSocketAddrs::to_socket_addrs(args.addr.as_str()).map_err(|error| {
        let told = format!("--addr {}: {error}", args.addr);
        if error.kind() == std::io::ErrorKind::InvalidInput {
            usage(told)
        } else {
            anyhow::anyhow!(told)
        }
    })?;
    // Bound before the store is opened too: an address in use or not
    // allowed leaves no new store behind either.
    let listener = tokio::net::TcpListener::bind(args.addr.as_str())
        .await
        .with_context(|| format!("cannot serve {url} at {}", args.addr))?;
    let store = Store::open(
        url,
        &EngineOptions {
            strategy: args.strategy.into(),
            ..cx.engine()
        },
    )
    .await?;
    let server = Server::from_listener(store.engine().clone(), listener, options)
        .with_context(|| format!("cannot serve {} at {}", store.url(), args.addr))?;
    // Listened for before the address is printed: a supervisor may stop the
    // server as soon as it has read it, and a signal with no listener yet
    // would end the process at once, without the clean shutdown.
    let mut signals = StopSignals::listen()?;
    if cx.out.json() {
        cx.out.value(&json!({
            "store": store.url().to_string(),
            "url": server.url(),
        }))?;
    } else {
        cx.out.line(&format!(
            "serving {} at {} (Ctrl-C stops)",
            store.url(),
            server.url()
        ))?;
    }
    cx.out.flush()?;
    signals.next().await?;
    // A clean stop waits for the requests under way (up to the request
    // timeout and a few seconds); a second signal stops at once, which
    // loses nothing acknowledged (a store's writes are whole when they are
    // answered).
    let clean_stop = async {
        server
            .shutdown()
            .await
            .context("the server did not stop cleanly")?;
        store.close().await
    };
    tokio::select! {
        stopped = clean_stop => stopped,
        again = signals.next() => {
            again?;
            Err(anyhow::anyhow!(
                "stopped at once by a second signal, without waiting for the requests under way"
            ))
        }
    }
}

/// The largest `--token-file` read: a million bytes hold thousands of
/// tokens.
const MAX_TOKEN_FILE: u64 = 1 << 20;

/// The tokens of a `--token-file`: `read-write SECRET [COLLECTION...]` or
/// `read-only SECRET [COLLECTION...]` a line, each collection name
/// percent-encoded; blank lines and `#` comments (on lines of their own)
/// are skipped. A line that
/// says anything else is a usage error naming it (never quoting it: it may
/// hold a secret).
fn token_file(path: &Path, seen: &mut HashMap<String, String>) -> Result<Vec<AccessToken>> {
    // Unreadable is a failure at run time, as for any input file.
    let unreadable = || format!("cannot read the --token-file {}", path.display());
    let file = std::fs::File::open(path).with_context(unreadable)?;
    // Read up to one byte past the bound, so that a file past it (a
    // mistyped path, `/dev/zero`) is refused instead of read whole.
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(unreadable)?;
    // The length first: a cut through a character would otherwise be
    // refused as text that is not UTF-8, a failure instead of a usage error.
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(usage(format!(
            "the --token-file {} is larger than {} KiB: not a token file",
            path.display(),
            MAX_TOKEN_FILE / 1024
        )));
    }
    let text = String::from_utf8(bytes).with_context(unreadable)?;
    // A byte-order mark, as some editors write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let here = format!("--token-file {} line {}", path.display(), index + 1);
        let mut words = line.split_whitespace();
        let access = match words.next() {
            Some("read-write") => Access::ReadWrite,
            Some("read-only") => Access::Read,
            _ => {
                return Err(usage(format!(
                    "{here}: expected `read-write SECRET [COLLECTION...]` \
                     or `read-only SECRET [COLLECTION...]`"
                )))
            }
        };
        let Some(secret) = words.next() else {
            return Err(usage(format!("{here}: the secret is missing")));
        };
        // A comment where the secret goes would otherwise become a token
        // whose secret is `#`, scoped to the comment's words.
        if secret.starts_with('#') {
            return Err(usage(format!(
                "{here}: the secret is missing (a comment takes a line of its own)"
            )));
        }
        once(seen, secret, &here)?;
        let token = checked(AccessToken::new(secret, access), &here)?;
        // Names are separated by whitespace, so one holding a space (or a
        // `%`) is written percent-encoded: `field%20notes`. Checked here,
        // to name the line; not quoted, in case the secret and a name were
        // swapped. A word starting with `#` is refused, not read as a
        // name: a comment after the words would otherwise widen the token
        // to every word of it.
        let collections = words
            .map(|word| {
                Some(word)
                    .filter(|word| !word.starts_with('#'))
                    .and_then(|word| syncforge::core::percent_decode(word).ok())
                    .filter(|name| syncforge::core::validate_collection(name).is_ok())
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| {
                usage(format!(
                    "{here}: a collection name is not valid (write a space as %20, a % as %25, \
                     a leading # as %23; a comment takes a line of its own)"
                ))
            })?;
        tokens.push(if collections.is_empty() {
            token
        } else {
            token.collections(collections)
        });
    }
    if tokens.is_empty() {
        return Err(usage(format!(
            "--token-file {} holds no token",
            path.display()
        )));
    }
    Ok(tokens)
}

/// Notes that `secret` was given `here`; a usage error naming both places
/// if it was given before.
fn once(seen: &mut HashMap<String, String>, secret: &str, here: &str) -> Result<()> {
    match seen.get(secret) {
        Some(before) => Err(usage(format!(
            "{here}: the same secret as {before}; give each secret once"
        ))),
        None => {
            seen.insert(secret.to_owned(), here.to_owned());
            Ok(())
        }
    }
}

/// `token`, if the server would take it: otherwise a usage error naming
/// `source`, where the user gave it (never quoting the secret).
fn checked(token: AccessToken, source: &str) -> Result<AccessToken> {
    match ServerOptions::default().token(token.clone()).validate() {
        Ok(()) => Ok(token),
        Err(syncforge::Error::InvalidConfig { reason, .. }) => {
            Err(usage(format!("{source}: {reason}")))
        }
        Err(other) => Err(usage(format!("{source}: {other}"))),
    }
}
