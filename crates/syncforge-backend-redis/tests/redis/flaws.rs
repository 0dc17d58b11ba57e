//! One test per flaw of the TypeScript original's Redis backend (DESIGN.md,
//! item 9): unguarded read-then-write, a delete that leaves index entries,
//! a round trip per record in the change feed, and a `destroy()` that wipes
//! every collection under the prefix.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface};
use fred::types::{ClusterHash, CustomCommand, InfoKind};
use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{
    ClientId, CollectionName, Content, Cursor, Error, Hlc, IfAbsent, Record, StorageBackend, Write,
    WriteOutcome,
};
use tokio::sync::Barrier;

use crate::support::{
    assert_consistent, cluster, coll, dump_collection, edited, fresh_prefix, key, n_of, raw_client,
    record, refused_insert, remove_prefix, rid, standalone, sync_records, PrivateServer,
};

const RECORDS: usize = 50;
const ROUNDS: usize = 500;

/// Two writers, each on its own connection, write the same 50 records in
/// 500 rounds, each write as the engine makes it: read, edit, conditional
/// write, and again after a conflict. In every round both read the same
/// state and only then write, so one of them must lose the race and write
/// again: 1,000 increments, and every one of them must be in the final
/// counters. (Two engines merging on one Redis store are
/// `syncforge/tests/redis.rs`'s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_hammering_the_same_records_lose_no_update() {
    let Some(config) = standalone("hammer").await else {
        return;
    };
    let notes = coll("hammer");
    let setup = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("setup").unwrap());
    let creates: Vec<Write> = (0..RECORDS)
        .map(|i| Write::create(record(&mut hlc, &format!("r{i:02}"), 0)))
        .collect();
    setup.put_batch(&notes, &creates).await.unwrap();

    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = tokio::task::JoinSet::new();
    for engine in 0..2 {
        let store = RedisBackend::connect(config.clone()).await.unwrap();
        let barrier = Arc::clone(&barrier);
        let notes = notes.clone();
        tasks.spawn(async move {
            let mut hlc = Hlc::new(ClientId::new(&format!("engine-{engine}")).unwrap());
            let mut conflicts = 0;
            for round in 0..ROUNDS {
                let id = rid(&format!("r{:02}", round % RECORDS));
                let mut first = true;
                loop {
                    let stored = store.get(&notes, &id).await.unwrap().unwrap();
                    let next = edited(&mut hlc, &stored.record, n_of(&stored.record) + 1);
                    if first {
                        // Both engines hold the same state before either writes.
                        barrier.wait().await;
                        first = false;
                    }
                    match store
                        .put(&notes, &Write::replace(next, stored.token))
                        .await
                        .unwrap()
                    {
                        WriteOutcome::Written { .. } => break,
                        WriteOutcome::Conflict => {
                            // Each loss is to the other engine's write.
                            conflicts += 1;
                            assert!(conflicts < 10_000, "engine {engine} kept losing");
                        }
                    }
                }
            }
            store.close().await.unwrap();
            conflicts
        });
    }
    // A task that fails leaves the other waiting at the barrier for good:
    // the whole exchange is bounded in time, and the first failure ends it.
    let mut conflicts = 0;
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(task) = tasks.join_next().await {
            conflicts += task.unwrap();
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "two engines did not finish {ROUNDS} rounds within 2 minutes"
    );

    let all = setup.get_all(&notes).await.unwrap();
    assert_eq!(all.len(), RECORDS);
    let per_record = (2 * ROUNDS / RECORDS) as i64;
    for record in &all {
        assert_eq!(n_of(record), per_record, "{} lost an update", record.id());
        assert_eq!(record.version(), per_record as u64 + 1, "{}", record.id());
    }
    let total: i64 = all.iter().map(n_of).sum();
    assert_eq!(total, (2 * ROUNDS) as i64);
    assert!(
        conflicts >= ROUNDS,
        "every round is a real race: {conflicts} conflicts in {ROUNDS} rounds"
    );
    println!(
        "2 x {ROUNDS} writes on {RECORDS} records: {conflicts} lost races retried, no update lost"
    );

    let raw = raw_client(&config).await.unwrap();
    assert_consistent(&raw, &config.key_prefix, "hammer").await;
    raw.quit().await.ok();
    setup.close().await.unwrap();
    remove_prefix(&config).await;
}

/// The batch script stores each value with the sequence it assigns, also
/// when the handle's guess of the next sequences is wrong: after another
/// handle wrote, and after a conflict in the middle of a batch shifts every
/// later sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sequence_guesses_still_store_the_assigned_sequences() {
    let Some(config) = standalone("guess").await else {
        return;
    };
    let prefix = config.key_prefix.clone();
    let notes = coll("guesses");
    let first = RedisBackend::connect(config.clone()).await.unwrap();
    let second = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("guesser").unwrap());
    let batch = |hlc: &mut Hlc, from: usize| -> Vec<Write> {
        (from..from + 10)
            .map(|i| Write::create(record(hlc, &format!("g{i:03}"), 0)))
            .collect()
    };
    // No guess yet, then a right one.
    first.put_batch(&notes, &batch(&mut hlc, 0)).await.unwrap();
    first.put_batch(&notes, &batch(&mut hlc, 10)).await.unwrap();
    // Another handle moves the counter: the first one's guess is stale.
    second
        .put_batch(&notes, &batch(&mut hlc, 20))
        .await
        .unwrap();
    let mut stale = batch(&mut hlc, 30);
    // A conflict in the middle: every later write gets one sequence less
    // than guessed.
    stale[4] = Write::create(record(&mut hlc, "g000", 1));
    let outcomes = first.put_batch(&notes, &stale).await.unwrap();
    assert_eq!(outcomes[4], WriteOutcome::Conflict);
    let sequences: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            WriteOutcome::Written { cursor, .. } => Some(cursor.get()),
            WriteOutcome::Conflict => None,
        })
        .collect();
    assert_eq!(sequences, (31..=39).collect::<Vec<u64>>());
    // And once more after the conflict, with the guess right again.
    first.put_batch(&notes, &batch(&mut hlc, 40)).await.unwrap();

    let raw = raw_client(&config).await.unwrap();
    let stored = assert_consistent(&raw, &prefix, "guesses").await;
    assert_eq!(stored.len(), 49);
    raw.quit().await.ok();
    first.close().await.unwrap();
    second.close().await.unwrap();
    remove_prefix(&config).await;
}

/// A collection's change sequence ends at 2^53, the last integer a sorted
/// set's score and a JSON number hold exactly: the write that would take
/// the counter past it is refused, with its whole batch, and nothing is
/// written; up to it every write gets its own sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_sequence_ends_at_2_pow_53_with_a_refusal() {
    const LAST: u64 = 1 << 53;
    let Some(config) = standalone("exhausted").await else {
        return;
    };
    let prefix = config.key_prefix.clone();
    let notes = coll("exhausted");
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("counter").unwrap());
    let mut create = |id: &str| Write::create(record(&mut hlc, id, 0));
    store.put_batch(&notes, &[create("e0")]).await.unwrap();
    let raw = raw_client(&config).await.unwrap();
    let _: () = raw
        .set(
            key(&prefix, "exhausted", "seq"),
            (LAST - 1).to_string(),
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let written = |outcomes: Vec<WriteOutcome>| -> Vec<u64> {
        outcomes
            .iter()
            .map(|o| match o {
                WriteOutcome::Written { cursor, .. } => cursor.get(),
                WriteOutcome::Conflict => 0,
            })
            .collect()
    };
    // Two writes where one sequence is left: the batch is refused whole.
    let refused = store
        .put_batch(&notes, &[create("e1"), create("e2")])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("exhausted"), "{refused}");
    let missing: Option<String> = raw
        .hget(key(&prefix, "exhausted", "records"), "e1")
        .await
        .unwrap();
    assert_eq!(missing, None);
    // The last sequence is handed out once, and then no more.
    let last = store.put_batch(&notes, &[create("e1")]).await.unwrap();
    assert_eq!(written(last), vec![LAST]);
    let after = store.put_batch(&notes, &[create("e2")]).await.unwrap_err();
    assert!(after.to_string().contains("exhausted"), "{after}");
    let e3 = rid("e3");
    let inserted = store
        .insert_if_absent(&notes, &e3, &mut || Ok(record(&mut hlc, "e3", 0)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(inserted.to_string().contains("exhausted"), "{inserted}");
    let stored = assert_consistent(&raw, &prefix, "exhausted").await;
    assert_eq!(stored.len(), 2);
    raw.quit().await.ok();
    store.close().await.unwrap();
    remove_prefix(&config).await;
}

/// The batch script's fast path (a right guess, no repeated id, every
/// expectation holding: the writes go in as the handle laid them out) stores
/// exactly what its general path stores, and is not taken when it would
/// not: after another handle wrote (a stale guess), with an id twice in a
/// batch, with a token that no longer matches, and with a create of a
/// record that exists. The same batches run twice:
/// once through long-lived handles, whose guesses are right wherever they
/// can be, and once each through a handle of its own, which never guesses
/// and so always takes the general path. Outcomes and every stored byte —
/// values, both indexes with their scores, the counter, the newest stamp —
/// must be the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_stores_what_the_general_path_stores() {
    let Some(config) = standalone("fastpath").await else {
        return;
    };
    let prefix = config.key_prefix.clone();
    let batches = fast_path_batches();
    let fast = coll("fast");
    let general = coll("general");

    let main = RedisBackend::connect(config.clone()).await.unwrap();
    let other = RedisBackend::connect(config.clone()).await.unwrap();
    // Each batch's outcomes as sequences, 0 for a conflict.
    let sequences = |outcomes: Vec<WriteOutcome>| -> Vec<u64> {
        outcomes
            .iter()
            .map(|o| match o {
                WriteOutcome::Written { token, cursor } => {
                    assert_eq!(*token, syncforge_core::Token::Sequence(cursor.get()));
                    cursor.get()
                }
                WriteOutcome::Conflict => 0,
            })
            .collect()
    };
    let mut fast_outcomes = Vec::new();
    for (by_other, writes) in &batches {
        let store = if *by_other { &other } else { &main };
        fast_outcomes.push(sequences(store.put_batch(&fast, writes).await.unwrap()));
    }
    let mut general_outcomes = Vec::new();
    for (_, writes) in &batches {
        let store = RedisBackend::connect(config.clone()).await.unwrap();
        general_outcomes.push(sequences(store.put_batch(&general, writes).await.unwrap()));
        store.close().await.unwrap();
    }
    assert_eq!(fast_outcomes, general_outcomes);

    let range = |from: u64, to: u64| (from..=to).collect::<Vec<u64>>();
    let expected = vec![
        range(1, 10),
        range(11, 1_510),
        range(1_511, 1_515),
        range(1_516, 1_518),
        // Stale guess: the other handle moved the counter.
        range(1_519, 1_523),
        // Repeated ids: the second create and the second update conflict.
        vec![1_524, 0, 1_525, 0, 1_526],
        // A token that no longer matches; later writes get one less than guessed.
        vec![1_527, 0, 1_528, 1_529],
        // A create of a record that exists.
        vec![1_530, 0, 1_531],
        range(1_532, 1_534),
    ];
    assert_eq!(fast_outcomes, expected);

    let raw = raw_client(&config).await.unwrap();
    let stored = assert_consistent(&raw, &prefix, "fast").await;
    assert_eq!(stored.len(), 10 + 1_500 + 3 + 5 + 2 + 2 + 2 + 3);
    assert_consistent(&raw, &prefix, "general").await;
    let fast_dump = dump_collection(&raw, &prefix, "fast").await;
    let general_dump = dump_collection(&raw, &prefix, "general").await;
    assert_eq!(fast_dump, general_dump);
    // The record of the first create of the repeated id is the one stored.
    let f0: String = raw
        .hget(key(&prefix, "fast", "records"), "f0")
        .await
        .unwrap();
    assert!(f0.starts_with("1524 {"), "{f0}");
    assert!(f0.contains(r#""n":1"#), "{f0}");
    let g1: String = raw
        .hget(key(&prefix, "fast", "records"), "g1")
        .await
        .unwrap();
    assert!(g1.starts_with("1529 {"), "{g1}");
    raw.quit().await.ok();
    main.close().await.unwrap();
    other.close().await.unwrap();
    remove_prefix(&config).await;
}

/// A record the insert script writes is stored exactly as the batch
/// script's create stores it — value, both index entries with their scores,
/// the counter and the newest stamp — and its sequence comes from the same
/// counter, so batches after it still find their guess right. An insert of
/// a stored id answers the stored value and changes no byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_stores_what_a_create_stores() {
    let Some(config) = standalone("insert").await else {
        return;
    };
    let prefix = config.key_prefix.clone();
    let (inserted, created) = (coll("inserted"), coll("created"));
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("inserter").unwrap());
    let records: Vec<Record> = (0..6)
        .map(|i| record(&mut hlc, &format!("i{i}"), i))
        .collect();
    let first = store
        .put_batch(&inserted, &[Write::create(records[0].clone())])
        .await
        .unwrap();
    let mut cursors = vec![first];
    for one in &records[1..4] {
        let answer = store
            .insert_if_absent(&inserted, one.id(), &mut || Ok(one.clone()))
            .await
            .unwrap()
            .unwrap();
        let IfAbsent::Inserted { token, cursor, .. } = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(token, syncforge_core::Token::Sequence(cursor.get()));
        cursors.push(vec![WriteOutcome::Written { token, cursor }]);
    }
    let rest: Vec<Write> = records[4..].iter().cloned().map(Write::create).collect();
    cursors.push(store.put_batch(&inserted, &rest).await.unwrap());
    let all: Vec<Write> = records.iter().cloned().map(Write::create).collect();
    let created_outcomes = store.put_batch(&created, &all).await.unwrap();
    assert_eq!(cursors.concat(), created_outcomes);

    let raw = raw_client(&config).await.unwrap();
    let before = dump_collection(&raw, &prefix, "inserted").await;
    assert_eq!(before, dump_collection(&raw, &prefix, "created").await);
    let rival = record(&mut hlc, "i2", 99);
    let again = store
        .insert_if_absent(&inserted, rival.id(), &mut || Ok(rival.clone()))
        .await;
    let stored = store
        .get(&inserted, records[2].id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.unwrap().unwrap(), IfAbsent::Present(stored));
    assert_eq!(dump_collection(&raw, &prefix, "inserted").await, before);
    assert_consistent(&raw, &prefix, "inserted").await;
    raw.quit().await.ok();
    store.close().await.unwrap();
    remove_prefix(&config).await;
}

/// A server that forgot the scripts (`SCRIPT FLUSH`, as after a restart or
/// a failover) gets the batch script loaded again and the batch sent once
/// more, built anew: every write happens once, and the next batch takes
/// the fast path from the sequences the first one answered. The server is
/// one this test starts, so no other test's scripts are flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_after_the_scripts_were_flushed_is_written_once() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let prefix = fresh_prefix("flushed");
    let config = server.config(&prefix);
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let raw = raw_client(&config).await.unwrap();
    let notes = coll("flushed");
    let mut hlc = Hlc::new(ClientId::new("flusher").unwrap());
    for round in 0..3_usize {
        let _: () = raw
            .custom(
                CustomCommand::new_static("SCRIPT", ClusterHash::Random, false),
                vec!["FLUSH"],
            )
            .await
            .unwrap();
        let writes: Vec<Write> = (0..5)
            .map(|i| Write::create(record(&mut hlc, &format!("s{round}-{i}"), 0)))
            .collect();
        let outcomes = store.put_batch(&notes, &writes).await.unwrap();
        let first = 5 * round as u64 + 1;
        let expected: Vec<WriteOutcome> = (first..first + 5)
            .map(|sequence| WriteOutcome::Written {
                token: syncforge_core::Token::Sequence(sequence),
                cursor: Cursor::new(sequence),
            })
            .collect();
        assert_eq!(outcomes, expected, "round {round}");
    }
    let stored = assert_consistent(&raw, &prefix, "flushed").await;
    assert_eq!(stored.len(), 15);
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// The batches of [`the_fast_path_stores_what_the_general_path_stores`],
/// each with whether the second handle writes it. Every sequence is known
/// beforehand: the collection starts empty.
fn fast_path_batches() -> Vec<(bool, Vec<Write>)> {
    let mut hlc = Hlc::new(ClientId::new("paths").unwrap());
    let creates = |hlc: &mut Hlc, name: &str, count: usize| -> Vec<Write> {
        (0..count)
            .map(|i| Write::create(record(hlc, &format!("{name}{i}"), 0)))
            .collect()
    };
    let a = creates(&mut hlc, "a", 10);
    // Record `a<i>` holds sequence `i + 1` after the first batch.
    let update = |hlc: &mut Hlc, i: usize, token: u64| {
        Write::replace(
            edited(hlc, &a[i].record, 1),
            syncforge_core::Token::Sequence(token),
        )
    };
    let updates: Vec<Write> = (0..5).map(|i| update(&mut hlc, i, i as u64 + 1)).collect();
    let repeated = vec![
        Write::create(record(&mut hlc, "f0", 1)),
        Write::create(record(&mut hlc, "f0", 2)),
        update(&mut hlc, 5, 6),
        update(&mut hlc, 5, 6),
        Write::create(record(&mut hlc, "f1", 0)),
    ];
    let one_fails = vec![
        Write::create(record(&mut hlc, "g0", 0)),
        update(&mut hlc, 6, 999),
        update(&mut hlc, 7, 8),
        Write::create(record(&mut hlc, "g1", 0)),
    ];
    let exists = vec![
        Write::create(record(&mut hlc, "x0", 0)),
        Write::create(record(&mut hlc, "a9", 1)),
        Write::create(record(&mut hlc, "x1", 0)),
    ];
    vec![
        (false, a.clone()),
        (false, creates(&mut hlc, "b", 1_500)),
        (false, updates),
        (true, creates(&mut hlc, "d", 3)),
        (false, creates(&mut hlc, "e", 5)),
        (false, repeated),
        (false, one_fails),
        (false, exists),
        (false, creates(&mut hlc, "h", 3)),
    ]
}

/// A hard delete removes the record from the hash and from both indexes;
/// nothing of it stays in the feed or the time query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_index_entry() {
    let Some(config) = standalone("delete").await else {
        return;
    };
    let prefix = config.key_prefix.clone();
    let notes = coll("deletes");
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("deleter").unwrap());
    let mut records: Vec<Record> = (0..20)
        .map(|i| record(&mut hlc, &format!("d{i:02}"), i))
        .collect();
    let writes: Vec<Write> = records.iter().cloned().map(Write::create).collect();
    store.put_batch(&notes, &writes).await.unwrap();
    // Rewrite some first, so their index entries moved before the delete.
    for rec in records.iter_mut().step_by(3) {
        let stored = store.get(&notes, rec.id()).await.unwrap().unwrap();
        let next = edited(&mut hlc, &stored.record, 100);
        store
            .put(&notes, &Write::replace(next.clone(), stored.token))
            .await
            .unwrap();
        *rec = next;
    }
    let doomed: Vec<&Record> = records.iter().filter(|r| n_of(r) % 2 == 0).collect();
    for rec in &doomed {
        assert!(store.delete(&notes, rec.id()).await.unwrap());
    }

    let raw = raw_client(&config).await.unwrap();
    for rec in &doomed {
        let id = rec.id().as_str();
        let in_hash: bool = raw
            .hexists(key(&prefix, "deletes", "records"), id)
            .await
            .unwrap();
        let in_feed: Option<f64> = raw
            .zscore(key(&prefix, "deletes", "feed"), id)
            .await
            .unwrap();
        let in_time: Option<f64> = raw
            .zscore(key(&prefix, "deletes", "time"), id)
            .await
            .unwrap();
        assert_eq!(
            (in_hash, in_feed, in_time),
            (false, None, None),
            "{id} left something behind"
        );
    }
    let left = assert_consistent(&raw, &prefix, "deletes").await;
    assert_eq!(left.len(), records.len() - doomed.len());
    let page = store
        .changes(&notes, Cursor::START, NonZeroUsize::new(100).unwrap())
        .await
        .unwrap();
    assert_eq!(page.len(), left.len());
    assert!(page.records().all(|r| left.contains_key(r.id().as_str())));
    let since = store.changes_since_timestamp(&notes, 0).await.unwrap();
    assert_eq!(since.len(), left.len());

    raw.quit().await.ok();
    store.close().await.unwrap();
    remove_prefix(&config).await;
}

const CHANGES: usize = 100;

/// The commands one incremental sync of 100 changes sends, counted by the
/// server itself (`INFO commandstats`, calls inside scripts included), are
/// the same whether the collections hold 1,000 or 100,000 records. The
/// server is one this test starts, so nothing else is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_sync_sends_as_many_commands_into_100k_records_as_into_1k() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let mut counts = Vec::new();
    for size in [1_000, 100_000] {
        counts.push((size, incremental_sync_commands(&server, size).await));
    }
    let (small, large) = (&counts[0].1, &counts[1].1);
    println!("commands of an incremental sync of {CHANGES} changes: {small:?}");
    assert_eq!(small, large, "the command count grew with the collection");
    // Two scripts (one feed page, one conditional batch) and one HMGET
    // (get_many) from the client; the receiving handle registered its
    // collection when it was filled, so no SADD.
    assert_eq!(small.get("evalsha"), Some(&2), "{small:?}");
    assert_eq!(small.get("sadd"), None, "{small:?}");
}

/// Fills a sender and a receiver with `size` equal records, changes 100 of
/// them on the sender, then counts the commands of reading the sender's
/// feed after those changes and syncing them into the receiver.
async fn incremental_sync_commands(server: &PrivateServer, size: usize) -> BTreeMap<String, u64> {
    let people = coll("people");
    let sender = RedisBackend::connect(server.config(&fresh_prefix("sender")))
        .await
        .unwrap();
    let receiver = RedisBackend::connect(server.config(&fresh_prefix("receiver")))
        .await
        .unwrap();
    let mut hlc = Hlc::new(ClientId::new("origin").unwrap());
    let records: Vec<Record> = (0..size)
        .map(|i| record(&mut hlc, &format!("p{i:06}"), 0))
        .collect();
    // The sender's feed ends at its last write: the cursor a peer that
    // already synced everything holds.
    let mut cursor = Cursor::START;
    for chunk in records.chunks(1_000) {
        let writes: Vec<Write> = chunk.iter().cloned().map(Write::create).collect();
        for outcome in sender.put_batch(&people, &writes).await.unwrap() {
            match outcome {
                WriteOutcome::Written { cursor: c, .. } => cursor = cursor.max(c),
                WriteOutcome::Conflict => panic!("a create conflicted"),
            }
        }
        receiver.put_batch(&people, &writes).await.unwrap();
    }
    // Loads the feed script, so that loading is not counted below.
    let empty = sender
        .changes(&people, cursor, NonZeroUsize::MIN)
        .await
        .unwrap();
    assert!(empty.is_empty());
    // 100 changes spread over the collection.
    let mut editor = Hlc::new(ClientId::new("editor").unwrap());
    let ids: Vec<_> = (0..CHANGES)
        .map(|k| records[k * size / CHANGES].id().clone())
        .collect();
    let stored = sender.get_many(&people, &ids).await.unwrap();
    let edits: Vec<Write> = stored
        .into_iter()
        .map(|s| {
            let s = s.unwrap();
            Write::replace(edited(&mut editor, &s.record, 1), s.token)
        })
        .collect();
    sender.put_batch(&people, &edits).await.unwrap();

    let raw = raw_client(&server.config("count")).await.unwrap();
    reset_commandstats(&raw).await;
    let page = sender
        .changes(&people, cursor, NonZeroUsize::new(CHANGES).unwrap())
        .await
        .unwrap();
    assert_eq!(page.len(), CHANGES);
    let incoming: Vec<Record> = page.into_iter().collect();
    let synced = sync_records(&receiver, &people, &incoming, CHANGES, 0)
        .await
        .unwrap();
    assert_eq!(synced.written, CHANGES);
    let calls = commandstats(&raw).await;
    raw.quit().await.ok();
    sender.close().await.unwrap();
    receiver.close().await.unwrap();
    calls
}

/// A batch whose records add up to more than one script call takes (16
/// MiB of values) is written in several calls, each record once, in order:
/// a thousand large records in one call would outgrow the server's query
/// buffer, and the connection would be dropped and the request sent again
/// with the same result. Counted by a server this test starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_large_records_is_written_in_several_scripts() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let config = server.config(&fresh_prefix("large"));
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let blobs = coll("blobs");
    let mut hlc = Hlc::new(ClientId::new("large").unwrap());
    let blob = "x".repeat(1 << 20);
    let writes: Vec<Write> = (0..24)
        .map(|i| {
            let content =
                Content::from_value(serde_json::json!({ "id": format!("b{i:02}"), "blob": blob }))
                    .unwrap();
            Write::create(Record::create(content, hlc.now().unwrap()))
        })
        .collect();
    // Loads the script and registers the collection first.
    store.put_batch(&coll("warm"), &writes[..1]).await.unwrap();
    let raw = raw_client(&config).await.unwrap();
    reset_commandstats(&raw).await;
    let outcomes = store.put_batch(&blobs, &writes).await.unwrap();
    let calls = commandstats(&raw).await;
    assert_eq!(calls.get("evalsha"), Some(&2), "{calls:?}");
    let cursors: Vec<u64> = outcomes
        .iter()
        .map(|outcome| match outcome {
            WriteOutcome::Written { cursor, .. } => cursor.get(),
            WriteOutcome::Conflict => panic!("a create conflicted"),
        })
        .collect();
    assert_eq!(cursors, (1..=24).collect::<Vec<u64>>());
    let ids: Vec<_> = writes.iter().map(|w| w.record.id().clone()).collect();
    for (write, stored) in writes
        .iter()
        .zip(store.get_many(&blobs, &ids).await.unwrap())
    {
        assert_eq!(stored.unwrap().record, write.record);
    }
    assert_consistent(&raw, &config.key_prefix, "blobs").await;
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// Sets the server's command counts back to zero.
async fn reset_commandstats(raw: &fred::clients::Client) {
    let _: () = raw
        .custom(
            CustomCommand::new_static("CONFIG", ClusterHash::Random, false),
            vec!["RESETSTAT"],
        )
        .await
        .unwrap();
}

/// The server's command counts since the last reset, without the measuring
/// commands.
async fn commandstats(raw: &fred::clients::Client) -> BTreeMap<String, u64> {
    let stats: String = raw.info(Some(InfoKind::CommandStats)).await.unwrap();
    parse_commandstats(&stats)
}

/// `cmdstat_<name>:calls=N,...` lines, without the measuring commands.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

/// Clearing one collection and closing a handle leave every other
/// collection, and every key of another prefix, exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_clear_touch_nothing_else() {
    let Some(first) = standalone("keep-a").await else {
        return;
    };
    let mut second = first.clone();
    second.key_prefix = fresh_prefix("keep-b");
    let a = RedisBackend::connect(first.clone()).await.unwrap();
    let b = RedisBackend::connect(second.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("keeper").unwrap());
    for (store, name) in [(&a, "c1"), (&a, "c2"), (&b, "c1")] {
        let writes: Vec<Write> = (0..30)
            .map(|i| Write::create(record(&mut hlc, &format!("{name}-{i}"), i)))
            .collect();
        store.put_batch(&coll(name), &writes).await.unwrap();
    }
    b.set_meta("peer", "cursor-1").await.unwrap();
    let raw = raw_client(&first).await.unwrap();
    let before_b = dump_prefix(&raw, &second.key_prefix).await;
    let before_a_c2 = assert_consistent(&raw, &first.key_prefix, "c2").await;
    assert!(!before_b.is_empty());

    a.clear_collection(&coll("c1")).await.unwrap();
    assert!(a.get_all(&coll("c1")).await.unwrap().is_empty());
    assert_eq!(
        assert_consistent(&raw, &first.key_prefix, "c2").await,
        before_a_c2
    );
    assert_eq!(dump_prefix(&raw, &second.key_prefix).await, before_b);
    assert_eq!(
        a.list_collections().await.unwrap(),
        vec![coll("c2")],
        "the cleared collection is no longer listed"
    );

    a.close().await.unwrap();
    assert_eq!(dump_prefix(&raw, &second.key_prefix).await, before_b);
    assert_eq!(
        b.get_meta("peer").await.unwrap().as_deref(),
        Some("cursor-1")
    );
    let reopened = RedisBackend::connect(first.clone()).await.unwrap();
    assert_eq!(
        assert_consistent(&raw, &first.key_prefix, "c2").await,
        before_a_c2
    );
    assert_eq!(reopened.get_all(&coll("c2")).await.unwrap().len(), 30);

    raw.quit().await.ok();
    reopened.close().await.unwrap();
    b.close().await.unwrap();
    remove_prefix(&first).await;
    remove_prefix(&second).await;
}

/// A key of a collection holding another type (another application's key
/// under the prefix, or one set by hand), or a counter holding no change
/// sequence, fails a write with a clear error before it writes anything: a
/// script that fails midway keeps what it wrote, so the scripts check every
/// key first. Each case has a collection of its own holding one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_fails_a_write_before_it_writes_anything() {
    let Some(config) = standalone("wrongtype").await else {
        return;
    };
    let prefix = config.key_prefix.clone();
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let raw = raw_client(&config).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("typist").unwrap());
    let cases = [
        ("feed", "x", "key prefix of its own"),
        ("time", "x", "key prefix of its own"),
        ("newest", "x", "key prefix of its own"),
        ("seq", "-1", "does not hold a change sequence"),
        ("seq", "1.5", "does not hold a change sequence"),
        ("seq", "x", "does not hold a change sequence"),
        ("seq", "9007199254740994", "does not hold a change sequence"),
        // Behind the feed (set back by hand, or deleted: read as 0), it
        // would hand out the sequence of the record written before.
        ("seq", "0", "does not hold a change sequence"),
    ];
    for (case, (part, value, said)) in cases.into_iter().enumerate() {
        let name = format!("wrongtype{case}");
        let notes = coll(&name);
        let kept = record(&mut hlc, "kept", 1);
        store
            .put_batch(&notes, &[Write::create(kept)])
            .await
            .unwrap();
        let target = key(&prefix, &name, part);
        let _: () = raw.del(&target).await.unwrap();
        let _: () = raw.set(&target, value, None, None, false).await.unwrap();
        let before = dump_prefix(&raw, &prefix).await;

        let new = Write::create(record(&mut hlc, "new", 1));
        let batch = store.put_batch(&notes, &[new]).await.unwrap_err();
        assert!(batch.to_string().contains(said), "{part}={value}: {batch}");
        // A counter that is no sequence is stored data the store cannot
        // read, as a record's; a key of another type is the server's refusal.
        assert_eq!(
            matches!(batch, Error::Corrupt { .. }),
            part == "seq",
            "{part}={value}: {batch:?}"
        );
        let inserted = refused_insert(&store, &notes, &mut hlc).await;
        assert!(
            inserted.to_string().contains(said),
            "{part}={value}: {inserted}"
        );
        if part == "feed" || part == "time" {
            let deleted = store.delete(&notes, &rid("kept")).await.unwrap_err();
            assert!(
                deleted.to_string().contains(said),
                "{part}={value}: {deleted}"
            );
        }
        assert_eq!(dump_prefix(&raw, &prefix).await, before, "{part}={value}");
    }
    raw.quit().await.ok();
    store.close().await.unwrap();
    remove_prefix(&config).await;
}

/// A collection `tag` on the test server holding one record, `r1`, with a
/// client of its own to change its keys by hand, or `None` (skipped).
struct Planted {
    config: RedisConfig,
    store: RedisBackend,
    raw: fred::clients::Client,
    notes: CollectionName,
    r1: Record,
}

impl Planted {
    async fn new(tag: &str) -> Option<Planted> {
        let config = standalone(tag).await?;
        let notes = coll(tag);
        let store = RedisBackend::connect(config.clone()).await.unwrap();
        let mut hlc = Hlc::new(ClientId::new(tag).unwrap());
        let r1 = record(&mut hlc, "r1", 1);
        store
            .put_batch(&notes, &[Write::create(r1.clone())])
            .await
            .unwrap();
        let raw = raw_client(&config).await.unwrap();
        Some(Planted {
            config,
            store,
            raw,
            notes,
            r1,
        })
    }

    /// The key of the collection's `part` (`records`, `feed`, `time`).
    fn key(&self, part: &str) -> String {
        key(&self.config.key_prefix, self.notes.as_str(), part)
    }

    async fn remove(self) {
        self.raw.quit().await.ok();
        self.store.close().await.unwrap();
        remove_prefix(&self.config).await;
    }
}

/// A stored value whose sequence lies past 2^53 (set by hand: the scripts
/// never hand one out) reads as corrupt data naming the record, where it
/// had read as a record that no update could ever match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_sequence_past_2_pow_53_is_corrupt() {
    let Some(planted) = Planted::new("farseq").await else {
        return;
    };
    let Planted {
        store, raw, notes, ..
    } = &planted;
    for (sequence, readable) in [((1u64 << 53), true), ((1 << 53) + 1, false)] {
        let value = format!("{sequence} {}", planted.r1.to_json_string());
        let _: () = raw
            .hset(planted.key("records"), ("r1", value))
            .await
            .unwrap();
        let read = store.get(notes, &rid("r1")).await;
        if readable {
            assert_eq!(read.unwrap().unwrap().record, planted.r1);
        } else {
            let err = read.unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { id: Some(id), .. } if id == "r1"),
                "{err}"
            );
            assert!(
                err.to_string().contains("is not a sequence number"),
                "{err}"
            );
        }
    }
    planted.remove().await;
}

/// A stored record whose bytes are not UTF-8 (written by something else)
/// was skipped by the change feed with a warning: the page's `next` passed
/// it, and a peer pulling the feed never received the record, nor an error;
/// `get` and `get_many` failed as a refused command, naming no record.
/// Every read reports it as corrupt, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_record_that_is_not_utf8_is_corrupt_to_every_read() {
    let Some(planted) = Planted::new("notutf8").await else {
        return;
    };
    let Planted {
        store, raw, notes, ..
    } = &planted;
    let _: () = raw
        .hset(
            planted.key("records"),
            ("r1", &b"1 {\"id\":\"r1\xff\"}"[..]),
        )
        .await
        .unwrap();
    let corrupt = |err: Error| {
        assert!(
            matches!(&err, Error::Corrupt { id: Some(id), .. } if id == "r1"),
            "{err}"
        );
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    };
    corrupt(
        store
            .changes(notes, Cursor::START, 10.try_into().unwrap())
            .await
            .unwrap_err(),
    );
    corrupt(store.changes_since_timestamp(notes, 0).await.unwrap_err());
    corrupt(store.get(notes, &rid("r1")).await.unwrap_err());
    corrupt(store.get_many(notes, &[rid("r1")]).await.unwrap_err());
    // Metadata too: corrupt data naming the field, not a failed conversion.
    let meta = format!("{}:meta", planted.config.key_prefix);
    let _: () = raw.hset(&meta, ("odd", &b"\xff\xfe"[..])).await.unwrap();
    for err in [
        store.get_meta("odd").await.unwrap_err(),
        store.set_meta_if_absent("odd", "x").await.unwrap_err(),
    ] {
        assert!(matches!(&err, Error::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("\"odd\" is not UTF-8"), "{err}");
    }
    planted.remove().await;
}

/// An entry of the feed or time index that no script writes (a score that
/// is not a whole number, put there by hand) failed reads as a server that
/// answers strangely, with a hint to check its version. It is corrupt data,
/// naming the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_index_entry_is_corrupt_naming_the_index() {
    let Some(planted) = Planted::new("foreignidx").await else {
        return;
    };
    let Planted {
        store, raw, notes, ..
    } = &planted;
    let names = |err: &Error, index: &str| {
        assert!(
            matches!(err, Error::Corrupt { location, .. } if location.ends_with(index)),
            "{err}"
        );
    };
    let feed = planted.key("feed");
    let _: () = raw
        .zadd(&feed, None, None, false, false, (1.5, "x"))
        .await
        .unwrap();
    let err = store
        .changes(notes, Cursor::START, 10.try_into().unwrap())
        .await
        .unwrap_err();
    names(&err, ":feed");
    let _: () = raw.zrem(&feed, "x").await.unwrap();
    // A slice of the time index ends on its last entry's time: a whole
    // slice (1,000 entries) of foreign ones, after every record's time.
    let time = planted.key("time");
    let foreign: Vec<(f64, String)> = (0..1_000)
        .map(|i| (1e13 + f64::from(i) + 0.5, format!("x{i}")))
        .collect();
    let _: () = raw
        .zadd(&time, None, None, false, false, foreign)
        .await
        .unwrap();
    names(
        &store.changes_since_timestamp(notes, 0).await.unwrap_err(),
        ":time",
    );
    planted.remove().await;
}

/// A plain `redis://` URL naming one node of a Redis Cluster connects (the
/// node answers PING), and then every command on a slot another node holds
/// is answered `MOVED`: that was retried as a transient failure until the
/// engine gave up, never saying why. It is a storage error that names the
/// cluster URL to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_naming_a_cluster_node_says_to_use_the_cluster_url() {
    let Some(mut config) = cluster("plainnode").await else {
        return;
    };
    config.cluster = false;
    config.nodes.clear();
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("plain").unwrap());
    let mut moved = 0;
    // Collections hash to slots by name: of ten, some are on other nodes.
    for name in ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"] {
        let Err(err) = store
            .put_batch(&coll(name), &[Write::create(record(&mut hlc, "r1", 1))])
            .await
        else {
            continue;
        };
        assert!(
            matches!(&err, Error::Storage { .. }) && !err.is_transient(),
            "{err:?}"
        );
        assert!(err.to_string().contains("redis-cluster://"), "{err}");
        moved += 1;
    }
    assert!(moved > 0, "every collection was on the node named");
    store.close().await.unwrap();
    let mut cleanup = config;
    cleanup.cluster = true;
    remove_prefix(&cleanup).await;
}

/// Every key under `prefix` with a dump of its value.
async fn dump_prefix(raw: &fred::clients::Client, prefix: &str) -> HashMap<String, String> {
    let keys: Vec<String> = raw
        .custom(
            CustomCommand::new_static("KEYS", ClusterHash::Random, false),
            vec![format!("{prefix}:*")],
        )
        .await
        .unwrap();
    let mut out = HashMap::new();
    for key in keys {
        let kind: String = raw
            .custom(
                CustomCommand::new_static("TYPE", ClusterHash::FirstKey, false),
                vec![key.clone()],
            )
            .await
            .unwrap();
        let value = match kind.as_str() {
            "hash" => format!("{:?}", {
                let mut m: Vec<(String, String)> = raw
                    .hgetall::<HashMap<String, String>, _>(&key)
                    .await
                    .unwrap()
                    .into_iter()
                    .collect();
                m.sort();
                m
            }),
            "zset" => format!(
                "{:?}",
                raw.zrange::<Vec<(String, f64)>, _, _, _>(&key, 0, -1, None, false, None, true)
                    .await
                    .unwrap()
            ),
            "set" => {
                let mut members: Vec<String> = raw
                    .custom(
                        CustomCommand::new_static("SMEMBERS", ClusterHash::FirstKey, false),
                        vec![key.clone()],
                    )
                    .await
                    .unwrap();
                members.sort();
                format!("{members:?}")
            }
            _ => format!("{:?}", raw.get::<Option<String>, _>(&key).await.unwrap()),
        };
        out.insert(key, format!("{kind}: {value}"));
    }
    out
}

/// An entry of the collection registry that is no collection name, or no
/// text at all (written there by something else), made `list_collections`
/// and `newest_stamp` fail, and so every engine opening on the store: it is
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_entry_that_is_no_collection_name_is_skipped() {
    let Some(config) = standalone("registry").await else {
        return;
    };
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    store
        .put(&coll("kept"), &Write::create(record(&mut hlc, "r1", 1)))
        .await
        .unwrap();
    let raw = raw_client(&config).await.unwrap();
    // Not a collection name, and not even UTF-8 (which failed the whole
    // reply before any entry could be skipped).
    let added: i64 = fred::interfaces::SetsInterface::sadd(
        &raw,
        format!("{}:collections", config.key_prefix),
        vec![
            fred::types::Value::from("bad\nname"),
            fred::types::Value::Bytes(b"\xff\xfe"[..].to_vec().into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(added, 2);
    assert_eq!(store.list_collections().await.unwrap(), [coll("kept")]);
    assert!(store.newest_stamp().await.unwrap().is_some());
    // A newest-stamp member that is not text is a corrupt key, named as
    // such, not a command the server refused.
    let added: i64 = raw
        .zadd(
            key(&config.key_prefix, "kept", "newest"),
            None,
            None,
            false,
            false,
            (1.0, fred::types::Value::Bytes(b"\xff"[..].to_vec().into())),
        )
        .await
        .unwrap();
    assert_eq!(added, 1);
    let error = store.newest_stamp().await.unwrap_err();
    assert!(
        matches!(error, syncforge_core::Error::Corrupt { .. }),
        "{error:?}"
    );
    raw.quit().await.ok();
    remove_prefix(&config).await;
    store.close().await.unwrap();
}

/// Records sharing one `_timestamp`, more than a slice holds, are read by
/// time in slices of at most 1,000, each starting just after the last
/// record of the one before: every record once, and no script call reads
/// the whole tie. Counted on a server of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sharing_a_timestamp_are_read_by_time_in_bounded_slices() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let config = server.config("tied");
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let notes = coll("notes");
    let tied: Vec<Write> = (0..2_500)
        .map(|i| {
            let stamp = syncforge_core::Stamp::new(5_000, i, "tied").unwrap();
            let content =
                Content::from_value(serde_json::json!({ "id": format!("t{i:04}") })).unwrap();
            Write::create(Record::create(content, &stamp))
        })
        .collect();
    store.put_batch(&notes, &tied).await.unwrap();
    let later = syncforge_core::Stamp::new(6_000, 0, "tied").unwrap();
    let content = Content::from_value(serde_json::json!({ "id": "later" })).unwrap();
    store
        .put_batch(&notes, &[Write::create(Record::create(content, &later))])
        .await
        .unwrap();
    let raw = raw_client(&config).await.unwrap();
    // Loads the script, so that loading is not counted below.
    assert!(store
        .changes_since_timestamp(&notes, 6_000)
        .await
        .unwrap()
        .is_empty());
    reset_commandstats(&raw).await;
    let read = store.changes_since_timestamp(&notes, 4_999).await.unwrap();
    let calls = commandstats(&raw).await;
    let mut ids: Vec<String> = read.iter().map(|r| r.id().as_str().to_owned()).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..2_500).map(|i| format!("t{i:04}")).collect();
    expected.push("later".to_owned());
    expected.sort();
    assert_eq!(ids, expected);
    // Three slices (1,000, 1,000, 501 records): the first by time, the
    // others by rank after their anchor; no read of the whole tie.
    assert_eq!(calls.get("evalsha"), Some(&3), "{calls:?}");
    assert_eq!(calls.get("zrangebyscore"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("zrange"), Some(&2), "{calls:?}");
    assert_eq!(calls.get("zrank"), Some(&2), "{calls:?}");
    // From exactly the tie's time: strictly after it.
    let after = store.changes_since_timestamp(&notes, 5_000).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id().as_str(), "later");
    raw.quit().await.ok();
    store.close().await.unwrap();
}
