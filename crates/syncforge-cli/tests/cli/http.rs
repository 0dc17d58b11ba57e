//! Sync servers: `syncforge serve`, and http:// stores in the other commands.

use std::io::BufReader;
use std::process::{Child, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::support::{
    arg, command, counts, docs, export, syncforge, syncforge_env, syncforge_with, terminate,
    watching, KilledOnDrop,
};

/// A `syncforge serve` child process, stopped with SIGTERM when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(store: &str, tokens: &[&str]) -> Served {
        Served::start_at(store, "127.0.0.1:0", tokens)
    }

    /// Serves at `addr`; a port just given up may take a moment to come
    /// free, so a server that cannot listen there yet is started again, a
    /// few times. Any other failure to start fails the test, with what
    /// `serve` said.
    fn start_at(store: &str, addr: &str, tokens: &[&str]) -> Served {
        let mut args = vec!["serve", store, "--addr", addr, "--json"];
        args.extend(tokens);
        for _ in 0..50 {
            let mut child = command(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let (line, _) = syncforge_testkit::processes::read_line(
                BufReader::new(child.stdout.take().unwrap()),
                Duration::from_secs(60),
            )
            .unwrap();
            if line.is_empty() {
                let _ = syncforge_testkit::processes::wait(&mut child, Duration::from_secs(10));
                let mut said = String::new();
                let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut said);
                assert!(
                    !addr.ends_with(":0") && said.to_lowercase().contains("in use"),
                    "serve did not start: {said}"
                );
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // Drained for as long as the server runs: it may log there.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut BufReader::new(stderr), &mut std::io::sink());
            });
            let said: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("serve printed {line:?} instead of its address"));
            return Served {
                url: said["url"].as_str().unwrap().to_owned(),
                child,
            };
        }
        panic!("serve could not listen at {addr}");
    }

    /// Stops the server as a service manager does, and returns whether it
    /// exited cleanly.
    fn stop(mut self) -> bool {
        terminate(&mut self.child).success()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stores_sync_with_a_served_store_and_read_it_like_any_other() {
    let dir = TempDir::new().unwrap();
    let (hq, tablet, laptop) = (
        dir.path().join("hq"),
        dir.path().join("tablet"),
        dir.path().join("laptop"),
    );
    syncforge_with(&["put", arg(&hq), "inspections"], &docs("h", 3)).ok();
    syncforge_with(&["put", arg(&tablet), "inspections"], &docs("t", 4)).ok();
    let server = Served::start(
        arg(&hq),
        &["--token", "rw-secret", "--read-only-token", "ro"],
    );
    let url = server.url.as_str();
    let token = ["--bearer-token", "rw-secret"];

    // The tablet syncs both ways with the server; its engine keeps the cursors.
    let first =
        syncforge(&[&["sync", arg(&tablet), url, "--both", "--json"][..], &token].concat()).ok();
    let line = &first.json_lines()[0];
    assert_eq!(line["sent"], 4, "{first:?}");
    assert_eq!(line["to_src"]["added"], 3, "{first:?}");
    let again =
        syncforge(&[&["sync", arg(&tablet), url, "--both", "--json"][..], &token].concat()).ok();
    let line = &again.json_lines()[0];
    assert_eq!(line["sent"], 0, "{again:?}");
    let [added, updated, deleted, _, _] = counts(&line["to_src"]);
    assert_eq!((added, updated, deleted), (0, 0, 0), "{again:?}");

    // A laptop pulls from the server one way, with the read-only token.
    let pulled = syncforge(&["sync", url, arg(&laptop), "--json", "--bearer-token", "ro"]).ok();
    assert_eq!(counts(&pulled.json_lines()[0]), [7, 0, 0, 0, 0]);
    assert_eq!(
        export(&laptop, "inspections"),
        export(&tablet, "inspections")
    );

    // A new tablet's first two-way sync creates its store.
    let fresh = dir.path().join("fresh-tablet");
    let joined =
        syncforge(&[&["sync", arg(&fresh), url, "--both", "--json"][..], &token].concat()).ok();
    let line = &joined.json_lines()[0];
    assert_eq!(line["sent"], 0, "{joined:?}");
    assert_eq!(line["to_src"]["added"], 7, "{joined:?}");
    assert_eq!(
        export(&fresh, "inspections"),
        export(&tablet, "inspections")
    );

    // The server reads like a store.
    let listed = syncforge(&[&["ls", url][..], &token].concat()).ok();
    assert_eq!(listed.stdout, "inspections\n");
    let served = syncforge(&[&["export", url, "inspections"][..], &token].concat()).ok();
    assert_eq!(served.stdout, export(&tablet, "inspections"));
    let one =
        syncforge(&[&["get", url, "inspections", "t00002", "--json"][..], &token].concat()).ok();
    assert_eq!(one.json()["n"], 2);
    let stats = syncforge(&[&["stats", url, "--json"][..], &token].concat())
        .ok()
        .json();
    assert_eq!(stats["kind"], "sync server");
    assert_eq!(stats["collections"][0]["records"], 7);

    // Records can be imported into it; writing single records is local only.
    let imported = syncforge_with(
        &[&["import", url, "inspections", "--json"][..], &token].concat(),
        &export(&tablet, "inspections"),
    )
    .ok();
    assert_eq!(counts(&imported.json_lines()[0]), [0, 0, 0, 7, 0]);
    // The server merges with its own strategy: asking for another is a
    // mistake, refused before the input is even read. --batch-size is the
    // number of records a request carries.
    let refused = syncforge_with(
        &[&["import", url, "other", "--strategy", "crdt"][..], &token].concat(),
        "not even JSON",
    )
    .fails(2);
    assert!(refused.stderr.contains("its own strategy"), "{refused:?}");
    let parted = syncforge_with(
        &[
            &["import", url, "parted", "--json", "--batch-size", "3"][..],
            &token,
        ]
        .concat(),
        &export(&tablet, "inspections"),
    )
    .ok();
    assert_eq!(counts(&parted.json_lines()[0]), [7, 0, 0, 0, 0]);
    let listed = syncforge(&[&["ls", url][..], &token].concat()).ok();
    assert_eq!(listed.stdout, "inspections\nparted\n", "{listed:?}");
    syncforge_with(
        &[&["import", url, "parted", "--batch-size", "0"][..], &token].concat(),
        &export(&tablet, "inspections"),
    )
    .fails(2);
    let refused = syncforge_with(
        &[&["put", url, "inspections"][..], &token].concat(),
        "{\"id\": \"x\"}",
    )
    .fails(2);
    assert!(
        refused.stderr.contains("writes to a local store"),
        "{refused:?}"
    );

    assert!(server.stop(), "the server stops cleanly on SIGTERM");
    assert_eq!(
        syncforge(&["ls", arg(&hq), "inspections"])
            .ok()
            .stdout
            .lines()
            .count(),
        7
    );
}

#[test]
fn tokens_are_checked_and_never_shown() {
    let dir = TempDir::new().unwrap();
    let hq = dir.path().join("hq");
    syncforge_with(&["put", arg(&hq), "notes"], &docs("n", 1)).ok();
    let server = Served::start(
        arg(&hq),
        &["--token", "rw-secret", "--read-only-token", "ro-secret"],
    );
    let url = server.url.as_str();

    let none = syncforge(&["ls", url]).fails(1);
    assert!(
        none.stderr.contains("401") || none.stderr.to_lowercase().contains("token"),
        "{none:?}"
    );
    let wrong = syncforge(&["ls", url, "--bearer-token", "guess"]).fails(1);
    assert!(!wrong.stderr.contains("guess"), "{wrong:?}");
    // A token no client could send is the command line's fault, named as given.
    let malformed = syncforge(&["ls", url, "--bearer-token", "two words"]).fails(2);
    assert!(
        malformed
            .stderr
            .contains("--bearer-token (or SYNCFORGE_TOKEN): "),
        "{malformed:?}"
    );
    assert!(!malformed.stderr.contains("two words"), "{malformed:?}");
    let read_only = syncforge_with(
        &["import", url, "notes", "--bearer-token", "ro-secret"],
        &export(&hq, "notes"),
    )
    .fails(1);
    assert!(!read_only.stderr.contains("ro-secret"), "{read_only:?}");
    // The token given in the environment is not shown beside its flag.
    let help = syncforge_env(&["sync", "--help"], &[("SYNCFORGE_TOKEN", "rw-secret")]).ok();
    assert!(help.stdout.contains("SYNCFORGE_TOKEN"), "{help:?}");
    assert!(!help.stdout.contains("rw-secret"), "{help:?}");
    drop(server);

    let run = syncforge(&["serve", arg(&hq), "--addr", "127.0.0.1:0"]).fails(2);
    assert!(run.stderr.contains("--open"), "{run:?}");
    let run = syncforge(&["sync", "http://127.0.0.1:1", "http://127.0.0.1:2"]).fails(2);
    assert!(
        run.stderr.contains("one end must be a local store"),
        "{run:?}"
    );
}

#[test]
fn an_unreachable_server_is_a_clear_runtime_error() {
    let dir = TempDir::new().unwrap();
    let local = dir.path().join("local");
    syncforge_with(&["put", arg(&local), "notes"], &docs("n", 1)).ok();
    // Port 9 (discard) on loopback: nothing listens there.
    let run = syncforge(&["sync", arg(&local), "http://127.0.0.1:9", "--both"]).fails(1);
    let first = run.stderr.lines().next().unwrap();
    assert!(first.contains("http://127.0.0.1:9"), "{run:?}");
    assert!(run.stderr.contains("caused by"), "{run:?}");
}

/// Tokens given in a file stay out of the process list, and may be limited
/// to collections; a line the file cannot mean is refused by its number,
/// without quoting it.
#[test]
fn tokens_can_come_from_a_file_and_cover_some_collections() {
    let dir = TempDir::new().unwrap();
    let (hq, tablet) = (dir.path().join("hq"), dir.path().join("tablet"));
    syncforge_with(&["put", arg(&tablet), "inspections"], &docs("t", 2)).ok();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "\u{feff}# the tablets\nread-write tablet-secret inspections\r\n\nread-only dashboard-secret\n\
         read-write field-secret field%20notes\n",
    )
    .unwrap();
    let server = Served::start(arg(&hq), &["--token-file", arg(&tokens)]);
    let url = server.url.as_str();
    let records = export(&tablet, "inspections");
    let tablet_token = ["--bearer-token", "tablet-secret"];
    syncforge_with(
        &[&["import", url, "inspections"][..], &tablet_token].concat(),
        &records,
    )
    .ok();
    let elsewhere = syncforge_with(
        &[&["import", url, "other"][..], &tablet_token].concat(),
        &records,
    )
    .fails(1);
    assert!(elsewhere.stderr.contains("may not write"), "{elsewhere:?}");
    let listed = syncforge(&["ls", url, "--bearer-token", "dashboard-secret"]).ok();
    assert_eq!(listed.stdout, "inspections\n");
    let reading = syncforge_with(
        &[
            "import",
            url,
            "inspections",
            "--bearer-token",
            "dashboard-secret",
        ],
        &records,
    )
    .fails(1);
    assert!(reading.stderr.contains("may not write"), "{reading:?}");
    // A name holding a space is written percent-encoded: split at the
    // space, the line gave the token the collections "field" and "notes".
    let field_token = ["--bearer-token", "field-secret"];
    syncforge_with(
        &[&["import", url, "field notes"][..], &field_token].concat(),
        &records,
    )
    .ok();
    for other in ["field", "notes"] {
        let refused = syncforge_with(
            &[&["import", url, other][..], &field_token].concat(),
            &records,
        )
        .fails(1);
        assert!(refused.stderr.contains("may not write"), "{refused:?}");
    }
    drop(server);

    // A token file serve refuses, and what it says.
    let refused = |contents: &str| {
        std::fs::write(&tokens, contents).unwrap();
        let args = [
            "serve",
            arg(&hq),
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            arg(&tokens),
        ];
        syncforge(&args).fails(2).stderr
    };
    let said = refused("read-write fine\nadmin s3cret-value\n");
    assert!(
        said.contains("line 2") && !said.contains("s3cret-value"),
        "{said}"
    );
    let said = refused("read-only fine\nread-only fine2 bad\u{7}name\n");
    assert!(said.contains("line 2: a collection name"), "{said}");
    let said = refused("read-only fine\nread-only fine2 50%off\n");
    assert!(said.contains("line 2: a collection name"), "{said}");
    // A comment after a line's words was taken for collection names:
    // "notes # dashboard" scoped the token to `#` and `dashboard` too.
    let said = refused("read-only fine notes # dashboard\n");
    assert!(said.contains("line 1: a collection name"), "{said}");
    assert!(said.contains("%23"), "{said}");
    // Where the secret goes, it made a token whose secret was `#`.
    let said = refused("read-only # old dashboard\n");
    assert!(said.contains("line 1: the secret is missing"), "{said}");
    let said = refused("# nothing yet\n");
    assert!(said.contains("holds no token"), "{said}");
}

/// A watch of a sync server outlives the server's restart: it used to end
/// with an error at the first failed read. A server back with another store
/// ends it with an error, since its cursor means nothing there.
#[test]
fn a_watch_outlives_a_server_restart_but_not_a_change_of_store() {
    let dir = TempDir::new().unwrap();
    let (hq, other) = (dir.path().join("hq"), dir.path().join("other"));
    syncforge_with(&["put", arg(&hq), "notes"], &docs("n", 1)).ok();
    syncforge_with(&["put", arg(&other), "notes"], &docs("o", 3)).ok();
    let watch_through_a_restart = |store_after: &std::path::Path| {
        let server = Served::start(arg(&hq), &["--open"]);
        let url = server.url.clone();
        // Its stderr kept until the end: the watcher reports there as it
        // retries.
        let (child, said, stderr) = watching(&["watch", &url, "notes", "--count", "1"]);
        let mut watcher = KilledOnDrop(Some(child));
        assert!(said.starts_with("watching"), "{said:?}");
        assert!(server.stop());
        // Down long enough for the watcher to find it gone.
        std::thread::sleep(Duration::from_millis(1_500));
        syncforge_with(&["put", arg(&hq), "notes"], "{\"id\": \"late\"}").ok();
        let server = Served::start_at(
            arg(store_after),
            url.trim_start_matches("http://"),
            &["--open"],
        );
        let child = watcher.0.take().unwrap();
        let output = syncforge_testkit::processes::finish(child, Duration::from_secs(90)).unwrap();
        drop(server);
        let mut told = String::new();
        let mut stderr = stderr;
        std::io::Read::read_to_string(&mut stderr, &mut told).unwrap();
        (output, told)
    };

    let (output, _) = watch_through_a_restart(&hq);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}: {printed}", output.status);
    assert!(printed.contains("late"), "{printed:?}");

    let (output, told) = watch_through_a_restart(&other);
    assert_eq!(output.status.code(), Some(1), "{told}");
    assert!(told.contains("another store"), "{told}");
}

/// A server that serves engine `a` and then engine `b`: a store replaced
/// under the server between a client's reads.
struct Switched {
    a: syncforge::SyncEngine,
    b: syncforge::SyncEngine,
    switched: std::sync::Arc<std::sync::atomic::AtomicBool>,
    how: Switch,
}

/// How the store behind a [`Switched`] server is replaced, and what the
/// server says of it.
#[derive(Clone, Copy, PartialEq)]
enum Switch {
    /// When its health is first asked for; the server names the new store.
    AtHealth,
    /// When the test says, under a server that keeps running: it still
    /// names the store it opened, and its health fails, as an engine's does
    /// whose store was wiped under it.
    Wiped,
}

impl Switched {
    fn new(a: syncforge::SyncEngine, b: syncforge::SyncEngine, how: Switch) -> Switched {
        Switched {
            a,
            b,
            switched: std::sync::Arc::default(),
            how,
        }
    }

    fn has_switched(&self) -> bool {
        self.switched.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn serving(&self) -> &syncforge::SyncEngine {
        if self.has_switched() {
            &self.b
        } else {
            &self.a
        }
    }
}

#[async_trait::async_trait]
impl syncforge::http::Replica for Switched {
    fn feed_id(&self) -> &str {
        match self.how {
            Switch::AtHealth => self.serving().store_id(),
            Switch::Wiped => self.a.store_id(),
        }
    }

    async fn check_feed_id(&self) -> syncforge::Result<()> {
        match self.how {
            Switch::AtHealth => self
                .switched
                .store(true, std::sync::atomic::Ordering::SeqCst),
            Switch::Wiped if self.has_switched() => {
                return Err(syncforge::Error::storage("test", "the store was replaced"))
            }
            Switch::Wiped => {}
        }
        Ok(())
    }

    async fn collections(&self) -> syncforge::Result<Vec<syncforge::CollectionName>> {
        syncforge::http::Replica::collections(self.serving()).await
    }

    async fn changes(
        &self,
        collection: &syncforge::CollectionName,
        after: syncforge::Cursor,
        limit: std::num::NonZeroUsize,
    ) -> syncforge::Result<syncforge::ChangePage> {
        syncforge::http::Replica::changes(self.serving(), collection, after, limit).await
    }

    async fn sync(
        &self,
        collection: &syncforge::CollectionName,
        records: Vec<syncforge::Record>,
    ) -> syncforge::Result<syncforge::http::SyncOutcome> {
        syncforge::http::Replica::sync(self.serving(), collection, records).await
    }

    fn watch(
        &self,
        wake: Box<dyn Fn(&syncforge::CollectionName) + Send + Sync>,
    ) -> syncforge::http::WatchGuard {
        syncforge::http::Replica::watch(self.serving(), wake)
    }
}

/// Engines holding `a` and `b` records of `notes`, served as one
/// [`Switched`] server; and the flag that switches it.
fn switched_server(
    runtime: &tokio::runtime::Runtime,
    (a, b): (usize, usize),
    how: Switch,
) -> (
    syncforge::http::Server,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    runtime.block_on(async {
        let engine = |records: usize| async move {
            let engine = syncforge::SyncEngine::builder().build().await.unwrap();
            for n in 0..records {
                let record = serde_json::json!({"id": format!("r{n}")});
                engine.put("notes", &record).await.unwrap();
            }
            engine
        };
        let replica = Switched::new(engine(a).await, engine(b).await, how);
        let switched = replica.switched.clone();
        let server = syncforge::http::Server::bind(
            replica,
            "127.0.0.1:0",
            syncforge::http::ServerOptions::default(),
        )
        .await
        .unwrap();
        (server, switched)
    })
}

/// A watch read the server's feed id (its health) only after working out
/// its cursor from the feed: a store replaced in between was then taken on
/// without a word, and followed from the old store's cursor, skipping the
/// new store's changes up to it. The id is read first now: the cursor is
/// the end of the store the watch follows.
#[test]
fn a_watch_takes_its_cursor_from_the_store_whose_id_it_keeps() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, _) = switched_server(&runtime, (3, 5), Switch::AtHealth);
    let url = format!("http://{}", server.local_addr());
    let (child, said, _stderr) = watching(&["watch", &url, "notes"]);
    drop(KilledOnDrop(Some(child)));
    assert!(said.trim_end().ends_with("after cursor 5"), "{said:?}");
    runtime.block_on(server.shutdown()).unwrap();
}

/// A server's store replaced while the server runs (a Redis flushed or
/// restarted without persistence) is still named by the id the server
/// opened it with; only the server's health fails. A watch looked at that
/// health for a local store only, and followed the new store's feed from
/// the old store's cursor, skipping its changes up to it without a word:
/// it stops with an error now.
#[test]
fn a_watch_stops_when_the_store_behind_a_running_server_is_replaced() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, switched) = switched_server(&runtime, (3, 5), Switch::Wiped);
    let url = format!("http://{}", server.local_addr());
    let (child, said, _stderr) = watching(&["watch", &url, "notes", "--interval", "100ms"]);
    assert!(said.trim_end().ends_with("after cursor 3"), "{said:?}");
    switched.store(true, std::sync::atomic::Ordering::SeqCst);
    let output = syncforge_testkit::processes::finish(child, Duration::from_secs(60)).unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.is_empty(), "{printed:?}");
    runtime.block_on(server.shutdown()).unwrap();
}

/// The server's limits a proxy in front needs are options of `serve`, and
/// a refused setting or token names the flag it came from.
#[test]
fn serve_takes_the_limits_a_proxy_needs_and_names_refused_flags() {
    use std::io::{Read as _, Write as _};

    let dir = TempDir::new().unwrap();
    let (hq, tablet) = (dir.path().join("hq"), dir.path().join("tablet"));
    let big = format!("{{\"id\": \"big\", \"text\": \"{}\"}}", "x".repeat(3_000));
    syncforge_with(&["put", arg(&tablet), "notes"], &big).ok();
    let server = Served::start(
        arg(&hq),
        &[
            "--open",
            "--max-body-bytes",
            "2000",
            "--max-connections",
            "1",
            "--header-read-timeout",
            "3s",
        ],
    );
    // The client reads the bound from the server and does not send the
    // record; the sync goes on past it, counts it as refused, and exits
    // with code 3 once done, naming it (a script checking the exit code
    // tells it from a sync that did not happen).
    let small = r#"{"id": "small", "text": "x"}"#;
    syncforge_with(&["put", arg(&tablet), "notes"], small).ok();
    let refused = syncforge(&["sync", arg(&tablet), &server.url, "-c", "notes"]).fails(3);
    assert!(
        refused.stdout.contains("notes: 1 sent, 1 refused"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("2000 bytes"), "{refused:?}");
    assert!(
        refused.stderr.contains("1 record(s) were not sent") && refused.stderr.contains("\"big\""),
        "{refused:?}"
    );
    let json = syncforge(&["sync", arg(&tablet), &server.url, "-c", "notes", "--json"]).fails(3);
    let line: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(line["refused"][0]["id"], "big", "{json:?}");
    // An import, which promises all or nothing, sends nothing when one of
    // its records is larger than the server takes: the small record sent
    // first in its own request was merged before.
    let exported = syncforge(&["export", arg(&tablet), "notes"]).ok();
    let mut lines: Vec<&str> = exported.stdout.lines().collect();
    lines.sort_by_key(|line| line.contains("\"big\""));
    let lines = lines.join("\n");
    let import = syncforge_with(
        &["import", &server.url, "imported", "--batch-size", "1"],
        &lines,
    )
    .fails(1);
    assert!(
        import.stderr.contains("nothing was imported") && import.stderr.contains("\"big\""),
        "{import:?}"
    );
    syncforge(&["get", &server.url, "imported", "small"]).fails(1);
    // A one-way sync to a server merges nothing here: a strategy for it is
    // refused, not ignored.
    let strategy = syncforge(&["sync", arg(&tablet), &server.url, "--strategy", "crdt"]).fails(2);
    assert!(strategy.stderr.contains("--strategy: "), "{strategy:?}");
    // One connection is served; a second is told to come back.
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut first = std::net::TcpStream::connect(&address).unwrap();
    first
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut second = std::net::TcpStream::connect(&address).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    second
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = second.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // The first, its headers never finished, is closed after three seconds.
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(15), "still open");
    drop(server);

    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", arg(&hq), "--addr", "127.0.0.1:0"];
        args.extend(extra);
        syncforge(&args).fails(2)
    };
    let run = serve(&["--open", "--max-body-bytes", "0"]);
    assert!(
        run.stderr.contains("--max-body-bytes: must be at least 1"),
        "{run:?}"
    );
    let run = serve(&["--read-only-token", "two words"]);
    assert!(run.stderr.contains("--read-only-token: "), "{run:?}");
    assert!(!run.stderr.contains("two words"), "{run:?}");
    let run = serve(&["--token", "same-secret", "--read-only-token", "same-secret"]);
    assert!(
        run.stderr
            .contains("--read-only-token: the same secret as --token"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("same-secret"), "{run:?}");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "read-only fine\nread-write bad\u{7}secret\n").unwrap();
    let run = serve(&["--token-file", arg(&tokens)]);
    assert!(
        run.stderr
            .contains("line 2: a token's secret holds spaces or control"),
        "{run:?}"
    );
    assert!(!run.stderr.contains('\u{7}'), "{run:?}");
    std::fs::write(&tokens, "read-only twice\nread-write twice notes\n").unwrap();
    let run = serve(&["--token-file", arg(&tokens)]);
    assert!(run.stderr.contains("line 2: the same secret as"), "{run:?}");
    assert!(run.stderr.contains("line 1"), "{run:?}");
    // A file of any size was read whole (`/dev/zero` until memory ran out).
    // Its bound falls inside a character of two bytes.
    let comment = format!("#  {}\n", "é".repeat(1 << 19));
    std::fs::write(&tokens, format!("read-only fine\n{comment}")).unwrap();
    let run = serve(&["--token-file", arg(&tokens)]);
    assert!(run.stderr.contains("larger than 1024 KiB"), "{run:?}");
    // A malformed address is a usage error; an unreadable token file is a
    // failure at run time, as an unreadable input file is.
    let run = syncforge(&["serve", arg(&hq), "--open", "--addr", "127.0.0.1"]).fails(2);
    assert!(run.stderr.contains("--addr 127.0.0.1: "), "{run:?}");
    let missing = dir.path().join("no-such-tokens");
    let run = syncforge(&["serve", arg(&hq), "--token-file", arg(&missing)]).fails(1);
    assert!(
        run.stderr.contains("cannot read the --token-file"),
        "{run:?}"
    );
}

/// A store synced with the server that serves it merged every record into
/// itself and said nothing: refused, as two local ends that are one store.
#[test]
fn sync_refuses_a_server_serving_the_local_end() {
    let dir = TempDir::new().unwrap();
    let hq = dir.path().join("hq");
    syncforge_with(&["put", arg(&hq), "notes"], r#"{"id": "n1"}"#).ok();
    let server = Served::start(arg(&hq), &["--open"]);
    for (src, dst) in [
        (arg(&hq), server.url.as_str()),
        (server.url.as_str(), arg(&hq)),
    ] {
        let run = syncforge(&["sync", src, dst]).fails(2);
        assert!(
            run.stderr.contains("same store") && run.stderr.contains("the server serves"),
            "{run:?}"
        );
    }
}

/// A collection named `.` or `..` cannot be named in a URL path, so the
/// HTTP client refuses it before any request. A whole-store sync with a
/// server stopped there (`.` sorts first), and the collections after it
/// were never synced: they are synced, and the command fails at the end
/// naming the ones it could not sync.
#[test]
fn a_collection_no_url_can_name_holds_back_no_other() {
    let dir = TempDir::new().unwrap();
    let (hq, backup, tablet) = (
        dir.path().join("hq"),
        dir.path().join("backup"),
        dir.path().join("tablet"),
    );
    syncforge_with(&["put", arg(&hq), "."], r#"{"id": "d1"}"#).ok();
    syncforge_with(&["put", arg(&hq), "notes"], &docs("n", 2)).ok();
    syncforge_with(&["put", arg(&tablet), ".."], r#"{"id": "t1"}"#).ok();
    syncforge_with(&["put", arg(&tablet), "tasks"], &docs("t", 3)).ok();
    let server = Served::start(arg(&hq), &["--open"]);
    let url = server.url.as_str();

    let pulled = syncforge(&["sync", url, arg(&backup)]).fails(1);
    assert!(
        pulled.stderr.contains("1 collection(s) were not synced")
            && pulled.stderr.contains("\".\""),
        "{pulled:?}"
    );
    assert_eq!(export(&backup, "notes"), export(&hq, "notes"));

    let pushed = syncforge(&["sync", arg(&tablet), url]).fails(1);
    assert!(
        pushed.stderr.contains("1 collection(s) were not synced")
            && pushed.stderr.contains("\"..\""),
        "{pushed:?}"
    );
    assert_eq!(export(&hq, "tasks"), export(&tablet, "tasks"));
}

/// A clean stop waits for the requests under way, up to the request
/// timeout; a second SIGTERM (or Ctrl-C) stops the server at once. The
/// second one was swallowed, and the server could not be hurried.
#[test]
fn a_second_stop_signal_stops_the_server_at_once() {
    use std::io::Write as _;

    let dir = TempDir::new().unwrap();
    let mut server = Served::start(arg(&dir.path().join("hq")), &["--open"]);
    // A push whose body is still coming: a clean stop waits for it. The
    // server asks for the body (`100 Continue`) once it reads it: from then
    // on the request is under way.
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut pushing = std::net::TcpStream::connect(&address).unwrap();
    pushing
        .write_all(
            b"POST /v1/collections/notes/sync HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .unwrap();
    pushing
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut asked = [0u8; 12];
    std::io::Read::read_exact(&mut pushing, &mut asked).unwrap();
    assert_eq!(&asked, b"HTTP/1.1 100");
    pushing.write_all(b"{\"records\": [").unwrap();
    let pid = server.child.id().to_string();
    let term = || {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    term();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the first signal waits for the push under way"
    );
    term();
    let stopped = syncforge_testkit::processes::wait(&mut server.child, Duration::from_secs(10));
    let status = stopped.expect("a second signal stops the server within 10 s");
    assert_eq!(status.code(), Some(1), "{status:?}");
    drop(pushing);
}
