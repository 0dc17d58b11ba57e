//! The conformance checks, one public function each, so a backend's tests can
//! run one on its own (to debug it) or all of them
//! ([`run_conformance`](crate::run_conformance)).
//!
//! Every check writes only to collections of its own, named with the run id
//! of its [`Context`], does bounded work, and returns a message saying what
//! was expected and what the backend did when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use syncforge_core::{
    Change, CollectionName, Cursor, Hlc, IfAbsent, Record, RecordId, StorageBackend, SystemClock,
    TimeSource, Token, Write, WriteOutcome, MAX_NAME_BYTES,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{
    edited, ensure, ensure_absent, ensure_eq, ensure_nothing_after, expect_closed,
    expect_closed_or_declined, limit, n_of, put_conflicts, put_ok, record, rid, rids, shortened,
    soft_deleted, sorted, written, CheckResult, Context, OrFail,
};

/// Reads every change after `after` page by page, checking each page's
/// invariants, and returns them in feed order with the final cursor.
async fn read_feed(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    after: Cursor,
    page_size: usize,
) -> CheckResult<(Vec<Change>, Cursor)> {
    const MAX_PAGES: usize = 10_000;
    let mut cursor = after;
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = store
            .changes(collection, cursor, limit(page_size))
            .await
            .or_fail("changes")?;
        ensure!(
            page.changes.len() <= page_size,
            "changes(after {cursor}, limit {page_size}) returned {} changes",
            page.changes.len()
        );
        let mut previous = cursor;
        for change in &page.changes {
            ensure!(
                change.cursor > previous,
                "changes(after {cursor}) returned cursor {} after {previous}: cursors must be strictly increasing and greater than the cursor asked for",
                change.cursor
            );
            previous = change.cursor;
        }
        ensure!(
            page.next >= previous,
            "changes(after {cursor}).next ({}) must be at least the last cursor returned ({previous}), or the cursor asked for when empty",
            page.next
        );
        // What a peer checks of a page it receives: also that `next` is
        // not past the largest cursor any feed hands out.
        page.check_after(cursor)?;
        all.extend(page.changes);
        if !page.more {
            return Ok((all, page.next));
        }
        ensure!(
            page.next > cursor,
            "changes(after {cursor}) reported more changes but made no progress"
        );
        cursor = page.next;
    }
    Err(format!(
        "the change feed did not end within {MAX_PAGES} pages"
    ))
}

/// Get, create-only put, replace with the right token, stale tokens.
pub async fn crud(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("crud");
    let mut hlc = ctx.clock("crud")?;

    ensure_absent(
        store,
        &coll,
        "a",
        "get of a record never written must be None",
    )
    .await?;

    let first = record(&mut hlc, "a", 1)?;
    let (token1, seq1) = put_ok(
        store,
        &coll,
        &Write::create(first.clone()),
        "create-only put of a new record",
    )
    .await?;
    let stored = store.get(&coll, &rid("a")).await.or_fail("get")?;
    let stored = stored.ok_or("get after create returned None")?;
    ensure_eq!(
        stored.record,
        first,
        "get after create returns the record written"
    );
    ensure_eq!(
        stored.token,
        token1,
        "get after create returns the token of the write"
    );

    let rival = record(&mut hlc, "a", 99)?;
    put_conflicts(
        store,
        &coll,
        &Write::create(rival),
        "create-only put of an existing record",
    )
    .await?;
    let stored = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("record vanished")?;
    ensure_eq!(
        stored.record,
        first,
        "a conflicting create must leave the record unchanged"
    );
    ensure_eq!(
        stored.token,
        token1,
        "a conflicting create must leave the token unchanged"
    );
    // A token of the kind this store never hands out holds for nothing: not
    // taken for no token (a create), nor for the current one.
    let foreign = match &token1 {
        Token::Sequence(seq) => Token::Tag(seq.to_string()),
        _ => Token::Sequence(seq1.get()),
    };
    for id in ["a", "never-written"] {
        let write = Write::replace(record(&mut hlc, id, 98)?, foreign.clone());
        let what = format!("replace of {id} with a token of the other kind ({foreign:?})");
        put_conflicts(store, &coll, &write, &what).await?;
    }
    ensure_eq!(
        store.get(&coll, &rid("a")).await.or_fail("get")?,
        Some(stored.clone()),
        "a replace with a token of the other kind leaves the record as it was"
    );
    ensure_absent(
        store,
        &coll,
        "never-written",
        "a replace with a token of the other kind creates nothing",
    )
    .await?;

    let second = edited(&mut hlc, &first, 2)?;
    let (token2, seq2) = put_ok(
        store,
        &coll,
        &Write::replace(second.clone(), token1.clone()),
        "replace with the current token",
    )
    .await?;
    ensure!(
        seq2 > seq1,
        "sequence of a later write ({seq2}) must exceed the earlier one ({seq1})"
    );
    ensure!(token2 != token1, "a write must change the record's token");
    let stored = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("record vanished")?;
    ensure_eq!(
        stored.record,
        second,
        "get after replace returns the new record"
    );
    ensure_eq!(
        stored.token,
        token2,
        "get after replace returns the new token"
    );

    let stale = edited(&mut hlc, &second, 3)?;
    let write = Write::replace(stale, token1.clone());
    put_conflicts(store, &coll, &write, "replace with a stale token").await?;
    let stored = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("record vanished")?;
    ensure_eq!(
        stored.record,
        second,
        "a stale replace must leave the record unchanged"
    );
    ensure_eq!(
        stored.token,
        token2,
        "a stale replace must leave the token unchanged"
    );

    let absent = record(&mut hlc, "b", 1)?;
    let write = Write::replace(absent, token2.clone());
    put_conflicts(
        store,
        &coll,
        &write,
        "replace of a record that does not exist",
    )
    .await?;
    ensure_absent(
        store,
        &coll,
        "b",
        "a replace that conflicted must not create the record",
    )
    .await?;

    let deleted = soft_deleted(&mut hlc, &second)?;
    put_ok(
        store,
        &coll,
        &Write::replace(deleted.clone(), token2),
        "writing a soft-deleted record",
    )
    .await?;
    let stored = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("soft-deleted record vanished")?;
    ensure!(
        stored.record.is_deleted(),
        "a soft-deleted record reads back deleted"
    );
    ensure_eq!(
        stored.record,
        deleted,
        "a soft-deleted record reads back as written"
    );
    // A soft-deleted record exists: a create of its id conflicts, and
    // leaves the tombstone (its stamps and versions) as it was.
    put_conflicts(
        store,
        &coll,
        &Write::create(record(&mut hlc, "a", 7)?),
        "create of an id holding a soft-deleted record",
    )
    .await?;
    let after = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("soft-deleted record vanished")?;
    ensure_eq!(
        after,
        stored,
        "a create that conflicted leaves the soft-deleted record as it was"
    );
    Ok(())
}

/// `get_many` answers in the order asked, with `None` for missing ids.
pub async fn get_many(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("get-many");
    let mut hlc = ctx.clock("get-many")?;
    let mut tokens = BTreeMap::new();
    let mut records = BTreeMap::new();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let rec = record(&mut hlc, id, i as i64)?;
        let (token, _) = put_ok(store, &coll, &Write::create(rec.clone()), "create").await?;
        tokens.insert(id, token);
        records.insert(id, rec);
    }

    let ids = ["c", "missing", "a", "a", "b"];
    let got = store
        .get_many(&coll, &rids(&ids))
        .await
        .or_fail("get_many")?;
    ensure_eq!(
        got.len(),
        ids.len(),
        "get_many returns one entry per id asked"
    );
    for (id, entry) in ids.iter().zip(&got) {
        match (entry, records.get(id)) {
            (None, None) => {}
            (Some(stored), Some(expected)) => {
                ensure_eq!(&stored.record, expected, "get_many entry for {id:?}");
                ensure_eq!(
                    Some(&stored.token),
                    tokens.get(id),
                    "get_many token for {id:?}"
                );
            }
            (entry, _) => return Err(format!("get_many entry for {id:?} is wrong: {entry:?}")),
        }
    }

    ensure!(
        store
            .get_many(&coll, &[])
            .await
            .or_fail("get_many")?
            .is_empty(),
        "get_many of no ids returns nothing"
    );
    let unknown = store
        .get_many(&ctx.collection("get-many-unknown"), &rids(&["a", "b"]))
        .await
        .or_fail("get_many")?;
    ensure_eq!(
        unknown.len(),
        2,
        "get_many on an unknown collection returns one entry per id"
    );
    ensure!(
        unknown.iter().all(Option::is_none),
        "get_many on an unknown collection finds nothing"
    );
    Ok(())
}

/// `get_all` returns every record, soft-deleted ones included.
pub async fn get_all(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("get-all");
    let mut hlc = ctx.clock("get-all")?;
    let mut expected = Vec::new();
    for i in 0..6 {
        let mut rec = record(&mut hlc, &format!("r{i}"), i)?;
        if i % 3 == 0 {
            rec = soft_deleted(&mut hlc, &rec)?;
        }
        put_ok(store, &coll, &Write::create(rec.clone()), "create").await?;
        expected.push(rec);
    }
    let all = sorted(store.get_all(&coll).await.or_fail("get_all")?);
    ensure_eq!(
        all,
        sorted(expected),
        "get_all returns every record, soft-deleted ones too"
    );
    ensure!(
        store
            .get_all(&ctx.collection("get-all-unknown"))
            .await
            .or_fail("get_all")?
            .is_empty(),
        "get_all of an unknown collection is empty"
    );
    Ok(())
}

/// Each write of a batch succeeds or conflicts on its own, in order.
pub async fn batch_with_mixed_outcomes(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("batch");
    let mut hlc = ctx.clock("batch")?;
    let mut tokens = BTreeMap::new();
    let mut before = BTreeMap::new();
    for id in ["existing", "current", "stale"] {
        let rec = record(&mut hlc, id, 0)?;
        let (token, _) = put_ok(store, &coll, &Write::create(rec.clone()), "create").await?;
        tokens.insert(id, token);
        before.insert(id, rec);
    }
    let stale_token = tokens["stale"].clone();
    // Move "stale" on, so its first token is out of date.
    let moved = edited(&mut hlc, &before["stale"], 1)?;
    let (stale_now, _) = put_ok(
        store,
        &coll,
        &Write::replace(moved.clone(), stale_token.clone()),
        "replace",
    )
    .await?;

    let new_record = record(&mut hlc, "new", 1)?;
    let current_next = edited(&mut hlc, &before["current"], 1)?;
    let twice_first = record(&mut hlc, "twice", 1)?;
    let writes = vec![
        Write::create(new_record.clone()),
        Write::create(record(&mut hlc, "existing", 1)?),
        Write::replace(current_next.clone(), tokens["current"].clone()),
        Write::replace(edited(&mut hlc, &moved, 2)?, stale_token),
        Write::replace(record(&mut hlc, "absent", 1)?, tokens["existing"].clone()),
        Write::create(twice_first.clone()),
        Write::create(record(&mut hlc, "twice", 2)?),
    ];
    let outcomes = store.put_batch(&coll, &writes).await.or_fail("put_batch")?;
    ensure_eq!(
        outcomes.len(),
        writes.len(),
        "put_batch returns one outcome per write"
    );
    let expect_written = [true, false, true, false, false, true, false];
    let mut last_cursor = Cursor::START;
    for (i, (outcome, should_write)) in outcomes.iter().zip(expect_written).enumerate() {
        match outcome {
            WriteOutcome::Written { cursor, .. } if should_write => {
                ensure!(
                    *cursor > last_cursor,
                    "batch write #{i}: cursors of a batch must increase in write order"
                );
                last_cursor = *cursor;
            }
            WriteOutcome::Conflict if !should_write => {}
            other => {
                return Err(format!(
                    "batch write #{i} ({}): expected {}, got {other:?}",
                    writes[i].record.id(),
                    if should_write { "Written" } else { "Conflict" }
                ))
            }
        }
    }

    let coll = &coll;
    let get = |id: &'static str| async move {
        store
            .get(coll, &rid(id))
            .await
            .or_fail("get")
            .map(|s| s.map(|s| (s.record, s.token)))
    };
    ensure_eq!(
        get("new").await?.map(|s| s.0),
        Some(new_record),
        "batch: new record created"
    );
    ensure_eq!(
        get("existing").await?,
        Some((before["existing"].clone(), tokens["existing"].clone())),
        "batch: a conflicting create leaves the record unchanged"
    );
    ensure_eq!(
        get("current").await?.map(|s| s.0),
        Some(current_next),
        "batch: replace with the current token"
    );
    ensure_eq!(
        get("stale").await?,
        Some((moved, stale_now)),
        "batch: a stale replace leaves the record unchanged"
    );
    ensure_eq!(
        get("absent").await?,
        None,
        "batch: a replace of an absent record creates nothing"
    );
    ensure_eq!(
        get("twice").await?.map(|s| s.0),
        Some(twice_first),
        "batch: of two creates of one id, the first wins"
    );

    ensure!(
        store
            .put_batch(coll, &[])
            .await
            .or_fail("put_batch")?
            .is_empty(),
        "an empty batch has no outcomes"
    );
    Ok(())
}

/// The change feed: increasing sequences, each record once at its latest
/// change, `limit`, `next` and `more`, records arriving with old stamps.
pub async fn change_feed(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("feed");
    let mut hlc = ctx.clock("feed")?;

    ensure_nothing_after(
        store,
        &coll,
        Cursor::START,
        "in the feed of an unknown collection",
    )
    .await?;

    let mut records = Vec::new();
    for i in 0..30 {
        records.push(record(&mut hlc, &format!("r{i:02}"), i)?);
    }
    let writes: Vec<Write> = records.iter().cloned().map(Write::create).collect();
    let outcomes = store.put_batch(&coll, &writes).await.or_fail("put_batch")?;
    // The largest page a caller may ask for: a store bounds its own work
    // and answers what there is, where sizing a buffer or a count by it
    // would abort or overflow.
    let whole = store
        .changes(&coll, Cursor::START, NonZeroUsize::MAX)
        .await
        .or_fail("changes with the largest limit")?;
    ensure!(
        whole.changes.len() <= records.len()
            && (whole.more || whole.changes.len() == records.len()),
        "a page of the largest limit answered {} of {} changes, more {}",
        whole.changes.len(),
        records.len(),
        whole.more
    );
    let mut sequences = BTreeMap::new();
    for (rec, outcome) in records.iter().zip(&outcomes) {
        sequences.insert(rec.id().clone(), written(outcome, "batch create")?.1);
    }
    // Rewrite a third of them: each must then appear once, at its rewrite.
    for rec in records.iter_mut().step_by(3) {
        let stored = store
            .get(&coll, rec.id())
            .await
            .or_fail("get")?
            .ok_or("record vanished")?;
        let next = edited(&mut hlc, rec, 100)?;
        let (_, seq) = put_ok(
            store,
            &coll,
            &Write::replace(next.clone(), stored.token),
            "replace",
        )
        .await?;
        sequences.insert(rec.id().clone(), seq);
        *rec = next;
    }

    let (all, end) = read_feed(store, &coll, Cursor::START, 1_000).await?;
    ensure_eq!(all.len(), records.len(), "the feed holds each record once");
    for change in &all {
        ensure_eq!(
            sequences.get(change.record.id()),
            Some(&change.cursor),
            "the feed lists {} at the cursor of its latest write",
            change.record.id()
        );
    }
    let feed_records: Vec<Record> = all.iter().map(|c| c.record.clone()).collect();
    ensure_eq!(
        sorted(feed_records),
        sorted(records.clone()),
        "the feed holds the latest records"
    );

    for size in [1, 7, 30] {
        let (paged, paged_end) = read_feed(store, &coll, Cursor::START, size).await?;
        ensure_eq!(
            paged,
            all,
            "paging with limit {size} reaches every change exactly once"
        );
        ensure_eq!(
            paged_end,
            end,
            "paging with limit {size} ends at the same cursor"
        );
    }
    let page = store
        .changes(&coll, Cursor::new(0), limit(7))
        .await
        .or_fail("changes")?;
    ensure!(
        page.changes.len() == 7 && page.more,
        "a page of 7 out of 30 is full and has more"
    );
    let page = store
        .changes(&coll, Cursor::START, limit(records.len()))
        .await
        .or_fail("changes")?;
    ensure!(
        page.changes.len() == records.len(),
        "a page as large as the feed holds all of it"
    );
    // `more` says more changes may lie beyond: a full page may say so at
    // the end of the feed, as long as the next page ends it.
    if page.more {
        let after = store
            .changes(&coll, page.next, limit(10))
            .await
            .or_fail("changes")?;
        ensure!(
            after.changes.is_empty() && !after.more,
            "after a page holding exactly the remaining changes, nothing lies beyond"
        );
    }
    ensure_nothing_after(store, &coll, end, "after the end of the feed").await?;
    let beyond = Cursor::new(end.get() + 1_000);
    ensure_nothing_after(store, &coll, beyond, "past the end of the feed").await?;

    // A record arriving by sync, stamped long ago, still appears after the cursor.
    let (_, mut old_clock) = ctx.manual_clock("feed-old", 1_000)?;
    let synced = record(&mut old_clock, "synced", 1)?;
    let (_, seq) = put_ok(store, &coll, &Write::create(synced.clone()), "create").await?;
    let after = store
        .changes(&coll, end, limit(10))
        .await
        .or_fail("changes")?;
    ensure_eq!(
        after.changes.len(),
        1,
        "a record synced with an old stamp appears in the feed"
    );
    ensure_eq!(
        after.changes[0].record,
        synced,
        "the synced record in the feed"
    );
    ensure_eq!(after.changes[0].cursor, seq, "the synced record's cursor");
    ensure!(
        seq > end,
        "a later write gets a greater cursor, whatever its stamp"
    );
    Ok(())
}

/// Rewriting records between pages of a read loses none of them.
pub async fn change_feed_paging_with_rewrites(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("feed-rewrites");
    let mut hlc = ctx.clock("feed-rewrites")?;
    let mut current = BTreeMap::new();
    let writes: Vec<Write> = (0..20)
        .map(|i| record(&mut hlc, &format!("r{i:02}"), i).map(Write::create))
        .collect::<CheckResult<_>>()?;
    for outcome in store.put_batch(&coll, &writes).await.or_fail("put_batch")? {
        written(&outcome, "batch create")?;
    }
    for w in &writes {
        current.insert(w.record.id().clone(), w.record.clone());
    }

    // The reader keeps the newest state it saw of each record.
    let mut seen: BTreeMap<RecordId, Record> = BTreeMap::new();
    let mut cursor = Cursor::START;
    for round in 0..40 {
        let page = store
            .changes(&coll, cursor, limit(3))
            .await
            .or_fail("changes")?;
        for change in page.changes {
            seen.insert(change.record.id().clone(), change.record);
        }
        cursor = page.next;
        if !page.more {
            break;
        }
        // Between pages, rewrite one record already read and one not yet read.
        for id in [
            rid(&format!("r{:02}", (round * 7) % 20)),
            rid(&format!("r{:02}", (round * 3 + 11) % 20)),
        ] {
            if round >= 6 {
                break;
            }
            let stored = store
                .get(&coll, &id)
                .await
                .or_fail("get")?
                .ok_or("record vanished")?;
            let next = edited(&mut hlc, &stored.record, 1_000 + round)?;
            put_ok(
                store,
                &coll,
                &Write::replace(next.clone(), stored.token),
                "replace between pages",
            )
            .await?;
            current.insert(id, next);
        }
    }
    let tail = store
        .changes(&coll, cursor, limit(100))
        .await
        .or_fail("changes")?;
    ensure!(
        tail.changes.is_empty(),
        "the reader reached the end of the feed"
    );
    ensure_eq!(
        seen,
        current,
        "a reader paging through rewrites ends with every record's latest state"
    );
    Ok(())
}

/// `changes_since_timestamp` returns records whose timestamp is strictly greater.
pub async fn changes_since_timestamp(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("since");
    let (time, mut hlc) = ctx.manual_clock("since", 1_000)?;
    let mut at = BTreeMap::new();
    for (id, millis) in [("t1", 1_000), ("t2a", 2_000), ("t2b", 2_000), ("t3", 3_000)] {
        time.set(millis);
        let rec = record(&mut hlc, id, 0)?;
        put_ok(store, &coll, &Write::create(rec.clone()), "create").await?;
        at.insert(id, rec);
    }
    let ids = |records: Vec<Record>| -> Vec<String> {
        let mut ids: Vec<String> = records.iter().map(|r| r.id().to_string()).collect();
        ids.sort();
        ids
    };
    let since = |millis: u64| {
        let coll = &coll;
        async move {
            store
                .changes_since_timestamp(coll, millis)
                .await
                .or_fail("changes_since_timestamp")
        }
    };
    ensure_eq!(ids(since(0).await?), ["t1", "t2a", "t2b", "t3"], "since 0");
    ensure_eq!(ids(since(1_999).await?), ["t2a", "t2b", "t3"], "since 1999");
    ensure_eq!(
        ids(since(2_000).await?),
        ["t3"],
        "since 2000 (strictly greater)"
    );
    ensure!(
        since(3_000).await?.is_empty(),
        "since the newest timestamp is empty"
    );
    let all = since(0).await?;
    ensure_eq!(
        sorted(all),
        sorted(at.values().cloned().collect()),
        "the records returned are the stored ones"
    );

    // A rewrite moves the record in time; it is found once, at its new time.
    time.set(5_000);
    let t1 = store
        .get(&coll, &rid("t1"))
        .await
        .or_fail("get")?
        .ok_or("record vanished")?;
    let moved = edited(&mut hlc, &t1.record, 1)?;
    put_ok(
        store,
        &coll,
        &Write::replace(moved.clone(), t1.token),
        "replace",
    )
    .await?;
    ensure_eq!(
        since(3_000).await?,
        vec![moved.clone()],
        "a rewritten record at its new timestamp"
    );
    ensure_eq!(
        ids(since(0).await?),
        ["t1", "t2a", "t2b", "t3"],
        "a rewritten record appears once"
    );

    // A soft delete counts at the tombstone's time; a hard delete removes it.
    time.set(6_000);
    let t2a = store
        .get(&coll, &rid("t2a"))
        .await
        .or_fail("get")?
        .ok_or("record vanished")?;
    let gone = soft_deleted(&mut hlc, &t2a.record)?;
    put_ok(
        store,
        &coll,
        &Write::replace(gone, t2a.token),
        "soft delete",
    )
    .await?;
    ensure_eq!(
        ids(since(5_000).await?),
        ["t2a"],
        "a soft delete counts at its tombstone's time"
    );
    ensure!(
        store.delete(&coll, &rid("t3")).await.or_fail("delete")?,
        "hard delete of t3"
    );
    ensure_eq!(
        ids(since(2_000).await?),
        ["t1", "t2a"],
        "a hard-deleted record is gone"
    );
    ensure!(
        store
            .changes_since_timestamp(&ctx.collection("since-unknown"), 0)
            .await
            .or_fail("changes_since_timestamp")?
            .is_empty(),
        "an unknown collection has no changes"
    );
    Ok(())
}

/// Hard delete removes a record for good and says whether it existed.
pub async fn hard_delete(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("delete");
    let mut hlc = ctx.clock("delete")?;
    let keep = record(&mut hlc, "keep", 1)?;
    let doomed = record(&mut hlc, "doomed", 1)?;
    put_ok(store, &coll, &Write::create(keep.clone()), "create").await?;
    let (stale, seq) = put_ok(store, &coll, &Write::create(doomed), "create").await?;

    ensure!(
        store
            .delete(&coll, &rid("doomed"))
            .await
            .or_fail("delete")?,
        "delete of an existing record returns true"
    );
    ensure_absent(store, &coll, "doomed", "a deleted record is gone").await?;
    ensure!(
        !store
            .delete(&coll, &rid("doomed"))
            .await
            .or_fail("delete")?,
        "deleting again returns false"
    );
    ensure!(
        !store
            .delete(&ctx.collection("delete-unknown"), &rid("x"))
            .await
            .or_fail("delete")?,
        "deleting in an unknown collection returns false"
    );
    ensure_eq!(
        store.get_all(&coll).await.or_fail("get_all")?,
        vec![keep.clone()],
        "get_all after delete"
    );
    let (feed, _) = read_feed(store, &coll, Cursor::START, 100).await?;
    ensure!(
        feed.iter().all(|c| c.record.id() == "keep") && feed.len() == 1,
        "a hard-deleted record leaves the change feed"
    );
    // A token read before the delete holds no more: a writer holding it
    // would otherwise bring the record back unseen.
    let revived = record(&mut hlc, "doomed", 3)?;
    let stale_replace = Write::replace(revived, stale);
    put_conflicts(
        store,
        &coll,
        &stale_replace,
        "replace of a hard-deleted record with a token from before the delete",
    )
    .await?;
    ensure_absent(
        store,
        &coll,
        "doomed",
        "a replace that conflicted must not bring back a hard-deleted record",
    )
    .await?;

    let again = record(&mut hlc, "doomed", 2)?;
    let (_, seq_again) = put_ok(
        store,
        &coll,
        &Write::create(again.clone()),
        "create-only put of a hard-deleted id",
    )
    .await?;
    ensure!(
        seq_again > seq,
        "a record written after a delete gets a greater sequence"
    );
    ensure_eq!(
        store
            .get(&coll, &rid("doomed"))
            .await
            .or_fail("get")?
            .map(|s| s.record),
        Some(again.clone()),
        "a re-created record"
    );
    // Nor does it hold for the record created again under that id.
    put_conflicts(
        store,
        &coll,
        &stale_replace,
        "replace of a re-created record with a token from before the delete",
    )
    .await?;
    ensure_eq!(
        store
            .get(&coll, &rid("doomed"))
            .await
            .or_fail("get")?
            .map(|s| s.record),
        Some(again),
        "a re-created record after a stale replace"
    );
    Ok(())
}

/// `list_collections` lists non-empty collections; `clear_collection` empties one.
pub async fn collections_list_and_clear(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let first = ctx.collection("list-1");
    let second = ctx.collection("list-2");
    let mut hlc = ctx.clock("list")?;
    let listed = |name: CollectionName| async move {
        store
            .list_collections()
            .await
            .or_fail("list_collections")
            .map(|names| names.contains(&name))
    };
    ensure!(
        !listed(first.clone()).await?,
        "a collection never written is not listed"
    );

    let mut last_sequence = Cursor::START;
    for id in ["a", "b"] {
        let (_, seq) = put_ok(
            store,
            &first,
            &Write::create(record(&mut hlc, id, 1)?),
            "create",
        )
        .await?;
        last_sequence = seq;
    }
    let survivor = record(&mut hlc, "only", 1)?;
    put_ok(store, &second, &Write::create(survivor.clone()), "create").await?;
    ensure!(
        listed(first.clone()).await?,
        "a written collection is listed"
    );
    ensure!(
        listed(second.clone()).await?,
        "a written collection is listed"
    );
    let names = store.list_collections().await.or_fail("list_collections")?;
    ensure!(
        names.iter().filter(|n| **n == first).count() == 1,
        "list_collections names each collection once"
    );

    store
        .clear_collection(&first)
        .await
        .or_fail("clear_collection")?;
    ensure!(
        store.get_all(&first).await.or_fail("get_all")?.is_empty(),
        "a cleared collection is empty"
    );
    ensure_absent(store, &first, "a", "a cleared record is gone").await?;
    let (feed, _) = read_feed(store, &first, Cursor::START, 100).await?;
    ensure!(feed.is_empty(), "a cleared collection's feed is empty");
    ensure!(
        !listed(first.clone()).await?,
        "a cleared collection is not listed"
    );
    ensure_eq!(
        store.get_all(&second).await.or_fail("get_all")?,
        vec![survivor],
        "clearing one collection leaves the others"
    );

    // A reader's cursor from before the clear still sees later writes.
    let (_, seq) = put_ok(
        store,
        &first,
        &Write::create(record(&mut hlc, "a", 2)?),
        "create after clear",
    )
    .await?;
    ensure!(
        seq > last_sequence,
        "sequences keep increasing after a clear ({seq} after {last_sequence})"
    );
    let page = store
        .changes(&first, last_sequence, limit(10))
        .await
        .or_fail("changes")?;
    ensure_eq!(
        page.changes.len(),
        1,
        "a write after a clear appears after the old cursor"
    );

    ensure!(
        store
            .delete(&second, &rid("only"))
            .await
            .or_fail("delete")?,
        "delete"
    );
    ensure!(
        !listed(second).await?,
        "a collection whose last record was deleted is not listed"
    );
    store
        .clear_collection(&ctx.collection("list-unknown"))
        .await
        .or_fail("clear_collection of an unknown collection")?;
    Ok(())
}

/// `newest_stamp` is at least the newest stamp written, on the writing
/// handle, on one that answered before the writes, and on one opened after.
pub async fn newest_stamp(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("newest");
    let mut hlc = ctx.clock("newest")?;
    // Another handle, which has answered once before the writes: what it
    // learnt then must not stand in for what is stored later.
    let other = ctx.factory.open().await;
    other.newest_stamp().await.or_fail("newest_stamp")?;
    let rec = record(&mut hlc, "a", 1)?;
    put_ok(store, &coll, &Write::create(rec.clone()), "create").await?;
    let newest = store.newest_stamp().await.or_fail("newest_stamp")?;
    ensure!(
        newest.as_ref().is_some_and(|n| n >= rec.newest_stamp()),
        "newest_stamp ({newest:?}) must be at least the stamp just written ({:?})",
        rec.newest_stamp()
    );
    let later = edited(&mut hlc, &rec, 2)?;
    let token = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("record vanished")?
        .token;
    put_ok(
        store,
        &coll,
        &Write::replace(later.clone(), token),
        "replace",
    )
    .await?;
    // A stamp of the clock's future, which no reading of the clock at the
    // time of the check gives: a store answering the time instead of what
    // it holds fails here.
    let mut ahead_clock = ahead_clock(ctx, "newest-ahead")?;
    let ahead = record(&mut ahead_clock, "ahead", 1)?;
    put_ok(store, &coll, &Write::create(ahead.clone()), "create").await?;
    let (_, mut old_clock) = ctx.manual_clock("newest-old", 1_000)?;
    put_ok(
        store,
        &coll,
        &Write::create(record(&mut old_clock, "old", 1)?),
        "create",
    )
    .await?;
    let newest = store.newest_stamp().await.or_fail("newest_stamp")?;
    let seen = other.newest_stamp().await.or_fail("newest_stamp")?;
    let opened = ctx.factory.open().await;
    let fresh = opened.newest_stamp().await.or_fail("newest_stamp")?;
    opened.close().await.or_fail("close")?;
    for (handle, stamp) in [
        ("this", &newest),
        ("another", &seen),
        ("a newly opened", &fresh),
    ] {
        ensure!(
            stamp.as_ref().is_some_and(|n| n >= later.newest_stamp()),
            "{handle} handle's newest_stamp ({stamp:?}) must be at least the newest stamp \
             written by the clock ({:?}), also after an older record arrives",
            later.newest_stamp()
        );
        ensure!(
            stamp.as_ref().is_some_and(|n| n >= ahead.newest_stamp()),
            "{handle} handle's newest_stamp ({stamp:?}) must be at least the stamp written \
             {} s ahead of the clock ({:?}): is it the time rather than what is stored?",
            AHEAD_MILLIS / 1000,
            ahead.newest_stamp()
        );
    }
    // Not just any large stamp: every stamp these checks (and the tests
    // sharing a server) write is of the past or of the next few minutes.
    // An engine opening on a store that answered a stamp far ahead would
    // stamp its writes there, and its peers would refuse them.
    let now = SystemClock.now_millis();
    for (handle, stamp) in [
        ("this", &newest),
        ("another", &seen),
        ("a newly opened", &fresh),
    ] {
        ensure!(
            stamp
                .as_ref()
                .is_some_and(|n| n.millis() <= now.saturating_add(NEWEST_STAMP_AHEAD_AT_MOST)),
            "{handle} handle's newest_stamp ({stamp:?}) lies more than ten minutes ahead of \
             the clock ({now}): no stamp written was"
        );
    }
    other.close().await.or_fail("close")
}

/// How far ahead of the system clock [`ahead_clock`] stamps: beyond any
/// time a check reads while it runs, within the drift an engine accepts
/// (5 minutes) and well within [`NEWEST_STAMP_AHEAD_AT_MOST`].
const AHEAD_MILLIS: u64 = 3 * 60 * 1000;

/// A clock standing [`AHEAD_MILLIS`] ahead of the system clock, for
/// records whose stamps a store must have kept, not made up from the time.
fn ahead_clock(ctx: &Context<'_>, who: &str) -> CheckResult<Hlc> {
    let now = SystemClock.now_millis();
    let (_, hlc) = ctx.manual_clock(who, now.saturating_add(AHEAD_MILLIS))?;
    Ok(hlc)
}

/// How far ahead of the clock [`newest_stamp`] may find a stamp: what a
/// test may write ahead (the default drift bound, 5 minutes), twice.
const NEWEST_STAMP_AHEAD_AT_MOST: u64 = 10 * 60 * 1000;

/// Metadata: absent is `None`, values overwrite, keys are independent.
pub async fn meta(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let key = format!("{}-meta", ctx.run);
    let other = format!("{}-meta-other", ctx.run);
    ensure_eq!(
        store.get_meta(&key).await.or_fail("get_meta")?,
        None,
        "an absent meta key"
    );
    for value in ["v1", "v2", "", "line 1\nline 2 — ünïcode 🙂"] {
        store.set_meta(&key, value).await.or_fail("set_meta")?;
        ensure_eq!(
            store.get_meta(&key).await.or_fail("get_meta")?.as_deref(),
            Some(value),
            "get_meta after set_meta overwrote the value"
        );
    }
    ensure_eq!(
        store.get_meta(&other).await.or_fail("get_meta")?,
        None,
        "meta keys are independent"
    );
    Ok(())
}

/// Metadata keys as the engine writes them (`syncforge/peer-cursor/v1/`
/// and a JSON list of a peer id, a collection and a direction) hold `/`,
/// quotes, brackets and any text a name may, run to 4 KB (a peer id and a
/// collection name of 1,024 bytes each, every byte escaped), differ only in
/// case, and one may begin another: each is a key of its own, as it is.
pub async fn meta_keys_as_the_engine_writes_them(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let key = |peer: &str, collection: &str| {
        let parts = serde_json::json!([peer, collection, "pulled"]);
        format!("{}/peer-cursor/v1/{parts}", ctx.run)
    };
    let mut keys: Vec<String> = unusual_names(&ctx.run)
        .iter()
        .map(|name| key(name, "notes"))
        .collect();
    let first = key("", "notes");
    keys.push(format!("{first}x"));
    keys.push(first);
    keys.push(key(
        &"\"".repeat(MAX_NAME_BYTES),
        &"\\".repeat(MAX_NAME_BYTES),
    ));
    keys.push(format!("{}/Store-Id", ctx.run));
    keys.push(format!("{}/store-id", ctx.run));
    for (n, key) in keys.iter().enumerate() {
        store
            .set_meta(key, &n.to_string())
            .await
            .or_fail("set_meta")?;
    }
    for (n, key) in keys.iter().enumerate() {
        ensure_eq!(
            store.get_meta(key).await.or_fail("get_meta")?,
            Some(n.to_string()),
            "key {key:?} holds its own value"
        );
    }
    // An empty value is a value: a key holding one is not empty.
    let empty = format!("{}/empty/[\"\"]", ctx.run);
    let kept = store
        .set_meta_if_absent(&empty, "")
        .await
        .or_fail("set_meta_if_absent")?;
    ensure_eq!(kept, "", "set_meta_if_absent of an empty value stores it");
    let kept = store
        .set_meta_if_absent(&empty, "x")
        .await
        .or_fail("set_meta_if_absent")?;
    ensure_eq!(kept, "", "a key holding an empty value keeps it");
    Ok(())
}

/// `set_meta_if_absent` stores only into an empty key, atomically: of
/// writers racing through several handles, exactly one value wins, every
/// writer is told that value, and a reader on another handle never sees a
/// value it read replaced.
pub async fn meta_if_absent(ctx: &Context<'_>) -> CheckResult {
    const RACERS: usize = 8;
    let store = &*ctx.store;
    let key = format!("{}-meta-once", ctx.run);
    let kept = store
        .set_meta_if_absent(&key, "first")
        .await
        .or_fail("set_meta_if_absent")?;
    ensure_eq!(
        kept,
        "first",
        "set_meta_if_absent on an empty key stores the value"
    );
    let kept = store
        .set_meta_if_absent(&key, "second")
        .await
        .or_fail("set_meta_if_absent")?;
    ensure_eq!(
        kept,
        "first",
        "set_meta_if_absent on a set key keeps and returns the old value"
    );
    ensure_eq!(
        store.get_meta(&key).await.or_fail("get_meta")?.as_deref(),
        Some("first"),
        "set_meta_if_absent on a set key changes nothing"
    );

    let mut racers = Vec::with_capacity(RACERS);
    for _ in 0..RACERS {
        racers.push(ctx.factory.open().await);
    }
    let watcher = ctx.factory.open().await;
    for race in 0..META_RACES {
        let key = format!("{}-meta-race-{race}", ctx.run);
        meta_race(store, &racers, &watcher, &key).await?;
    }
    close_all(&racers).await?;
    watcher.close().await.or_fail("close")
}

/// Keys [`meta_if_absent`] races on, one race each: a store that checks and
/// then sets loses a race only now and then.
const META_RACES: usize = 10;

/// Reads of a raced key the watcher of one race makes at most.
const META_WATCHES: usize = 2_000;

/// How long the watcher of one race reads at most.
const META_WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// One race of [`meta_if_absent`] on `key`: each of `racers` sets it if
/// absent at once, while `watcher` reads it over and over. The racers must
/// all be told the value stored, and the watcher must never see a value
/// replaced: a store that checks and then sets lets a second racer
/// overwrite the first, even where it tells every racer the last value.
async fn meta_race(
    store: &dyn StorageBackend,
    racers: &[Arc<dyn StorageBackend>],
    watcher: &Arc<dyn StorageBackend>,
    key: &str,
) -> CheckResult {
    let start = Arc::new(Barrier::new(racers.len() + 1));
    let racing = Arc::new(AtomicUsize::new(racers.len()));
    let mut tasks = JoinSet::new();
    for (n, handle) in racers.iter().enumerate() {
        let (handle, key, start, racing) = (
            Arc::clone(handle),
            key.to_owned(),
            Arc::clone(&start),
            Arc::clone(&racing),
        );
        tasks.spawn(async move {
            start.wait().await;
            let kept = handle.set_meta_if_absent(&key, &format!("racer-{n}")).await;
            racing.fetch_sub(1, Ordering::SeqCst);
            kept
        });
    }
    let watching = {
        let (watcher, key) = (Arc::clone(watcher), key.to_owned());
        tokio::spawn(async move {
            start.wait().await;
            let began = tokio::time::Instant::now();
            let mut first: Option<String> = None;
            for _ in 0..META_WATCHES {
                // Read before the look, so that the last look comes after
                // every racer ended.
                let over = racing.load(Ordering::SeqCst) == 0;
                let value = watcher.get_meta(&key).await.or_fail("get_meta")?;
                match (&first, value) {
                    (None, value) => first = value,
                    (Some(seen), Some(value)) => ensure!(
                        *seen == value,
                        "racing set_meta_if_absent calls replaced a value another handle \
                         had read: {seen:?}, then {value:?}"
                    ),
                    (Some(seen), None) => {
                        return Err(format!(
                            "a value another handle had read of a racing \
                             set_meta_if_absent ({seen:?}) vanished"
                        ))
                    }
                }
                if over || began.elapsed() > META_WATCH_FOR {
                    break;
                }
                tokio::task::yield_now().await;
            }
            CheckResult::Ok(())
        })
    };
    let mut answers = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let kept = joined
            .map_err(|e| format!("a racing task failed: {e}"))?
            .or_fail("set_meta_if_absent")?;
        answers.insert(kept);
    }
    watching
        .await
        .map_err(|e| format!("the watching task failed: {e}"))??;
    ensure_eq!(
        answers.len(),
        1,
        "racing set_meta_if_absent calls must all be told the one value that won: {answers:?}"
    );
    ensure_eq!(
        store.get_meta(key).await.or_fail("get_meta")?,
        answers.into_iter().next(),
        "the stored value is the one every racer was told"
    );
    Ok(())
}

/// `close` keeps data; a closed handle refuses every call; other handles work.
pub async fn close_keeps_data(ctx: &Context<'_>) -> CheckResult {
    let coll = ctx.collection("close");
    let key = format!("{}-close-meta", ctx.run);
    let mut hlc = ctx.clock("close")?;
    let handle = ctx.factory.open().await;
    let bystander = ctx.factory.open().await;

    // The soft-deleted record is stamped ahead of the clock, so that only a
    // store that kept its stamps answers a newest_stamp at least as new.
    let mut ahead = ahead_clock(ctx, "close-ahead")?;
    let mut records = Vec::new();
    for i in 0..3 {
        let rec = if i == 2 {
            let rec = record(&mut ahead, &format!("r{i}"), i)?;
            soft_deleted(&mut ahead, &rec)?
        } else {
            record(&mut hlc, &format!("r{i}"), i)?
        };
        written(
            &handle
                .put(&coll, &Write::create(rec.clone()))
                .await
                .or_fail("create")?,
            "create",
        )?;
        records.push(rec);
    }
    handle.set_meta(&key, "kept").await.or_fail("set_meta")?;
    handle.close().await.or_fail("close")?;

    let probe = record(&mut hlc, "probe", 1)?;
    expect_closed(handle.get(&coll, &rid("r0")).await, "get")?;
    expect_closed(handle.get_many(&coll, &rids(&["r0"])).await, "get_many")?;
    expect_closed(handle.get_all(&coll).await, "get_all")?;
    expect_closed(
        handle.put(&coll, &Write::create(probe.clone())).await,
        "put",
    )?;
    expect_closed(
        handle
            .put_batch(&coll, &[Write::create(probe.clone())])
            .await,
        "put_batch",
    )?;
    // Calls with nothing to do are refused too, not answered empty.
    expect_closed(handle.put_batch(&coll, &[]).await, "put_batch of nothing")?;
    expect_closed(handle.get_many(&coll, &[]).await, "get_many of nothing")?;
    // The calls a store may decline (`None`, having done nothing) are
    // refused when it answers them.
    expect_closed_or_declined(handle.get_now(&coll, &rid("r0")), "get_now")?;
    expect_closed_or_declined(
        handle.put_now(&coll, &Write::create(probe.clone())),
        "put_now",
    )?;
    let mut make = || Ok(probe.clone());
    expect_closed_or_declined(
        handle.insert_if_absent_now(&coll, &rid("probe"), &mut make),
        "insert_if_absent_now",
    )?;
    expect_closed_or_declined(
        handle
            .insert_if_absent(&coll, &rid("probe"), &mut make)
            .await,
        "insert_if_absent",
    )?;
    let unset = format!("{key}-unset");
    expect_closed(
        handle.set_meta_if_absent(&unset, "set").await,
        "set_meta_if_absent",
    )?;
    expect_closed(handle.delete(&coll, &rid("r0")).await, "delete")?;
    expect_closed(
        handle.changes(&coll, Cursor::new(0), limit(10)).await,
        "changes",
    )?;
    expect_closed(
        handle.changes_since_timestamp(&coll, 0).await,
        "changes_since_timestamp",
    )?;
    expect_closed(handle.list_collections().await, "list_collections")?;
    expect_closed(handle.clear_collection(&coll).await, "clear_collection")?;
    expect_closed(handle.newest_stamp().await, "newest_stamp")?;
    expect_closed(handle.get_meta(&key).await, "get_meta")?;
    expect_closed(handle.set_meta(&key, "changed").await, "set_meta")?;

    ensure_eq!(
        sorted(
            bystander
                .get_all(&coll)
                .await
                .or_fail("get_all on another handle")?
        ),
        sorted(records.clone()),
        "closing one handle leaves other handles working"
    );
    bystander.close().await.or_fail("close")?;

    let reopened = ctx.factory.open().await;
    ensure_eq!(
        sorted(
            reopened
                .get_all(&coll)
                .await
                .or_fail("get_all after reopen")?
        ),
        sorted(records.clone()),
        "close keeps every record (read back after reopening)"
    );
    let (feed, _) = read_feed(&*reopened, &coll, Cursor::START, 2).await?;
    ensure_eq!(
        sorted(feed.into_iter().map(|change| change.record).collect()),
        sorted(records.clone()),
        "the change feed survives reopening, each record once"
    );
    ensure_eq!(
        reopened
            .get_meta(&key)
            .await
            .or_fail("get_meta after reopen")?
            .as_deref(),
        Some("kept"),
        "meta survives close and reopen"
    );
    ensure_absent(
        &*reopened,
        &coll,
        "probe",
        "writes refused by a closed handle must not have happened",
    )
    .await?;
    ensure_eq!(
        reopened
            .get_meta(&unset)
            .await
            .or_fail("get_meta after reopen")?,
        None,
        "a set_meta_if_absent refused by a closed handle must not have happened"
    );
    let newest = reopened
        .newest_stamp()
        .await
        .or_fail("newest_stamp after reopen")?;
    ensure!(
        newest
            .as_ref()
            .is_some_and(|n| n >= records[2].newest_stamp()),
        "newest_stamp ({newest:?}) survives reopening: at least the stamp written {} s \
         ahead of the clock ({:?})",
        AHEAD_MILLIS / 1000,
        records[2].newest_stamp()
    );
    let stored = reopened
        .get(&coll, &rid("r0"))
        .await
        .or_fail("get")?
        .ok_or("record lost on reopen")?;
    let next = edited(&mut hlc, &stored.record, 10)?;
    written(
        &reopened
            .put(&coll, &Write::replace(next, stored.token))
            .await
            .or_fail("replace after reopen")?,
        "a reopened handle writes with the token it read",
    )?;
    reopened.close().await.or_fail("close")?;
    Ok(())
}

const HANDLES: usize = 2;
const TASKS_PER_HANDLE: usize = 4;
const INCREMENTS_PER_TASK: i64 = 25;
const MAX_ATTEMPTS_PER_INCREMENT: usize = 2_000;

/// The writers of [`concurrent_writers_lose_no_update_in`]: how many handles
/// are opened, how many writers share each, and how many increments each
/// writer makes.
#[derive(Debug, Clone, Copy)]
pub struct Crowd {
    /// Handles opened on the store, each as another process would.
    pub handles: usize,
    /// Concurrent writers on each handle.
    pub writers_per_handle: usize,
    /// Increments each writer makes.
    pub increments: i64,
}

/// Read → merge → conditional write through two handles, retried on
/// conflict: every increment survives.
pub async fn concurrent_writers_lose_no_update(ctx: &Context<'_>) -> CheckResult {
    concurrent_writers_lose_no_update_in(
        ctx,
        Crowd {
            handles: HANDLES,
            writers_per_handle: TASKS_PER_HANDLE,
            increments: INCREMENTS_PER_TASK,
        },
    )
    .await
    .map(drop)
}

/// [`concurrent_writers_lose_no_update`] with a crowd of another size, for
/// a backend's own stress test. Returns the collection written, for checks
/// of more than the counter (its change feed, say).
pub async fn concurrent_writers_lose_no_update_in(
    ctx: &Context<'_>,
    crowd: Crowd,
) -> CheckResult<CollectionName> {
    let Crowd {
        handles: handle_count,
        writers_per_handle,
        increments,
    } = crowd;
    let coll = ctx.collection("concurrent");
    let mut setup = ctx.clock("concurrent-setup")?;
    let counter = record(&mut setup, "counter", 0)?;
    written(
        &ctx.store
            .put(&coll, &Write::create(counter))
            .await
            .or_fail("create")?,
        "create the counter",
    )?;

    let writers = handle_count * writers_per_handle;
    let start = Arc::new(Barrier::new(writers));
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    let mut clients = Vec::new();
    for h in 0..handle_count {
        let handle = ctx.factory.open().await;
        handles.push(Arc::clone(&handle));
        for t in 0..writers_per_handle {
            let hlc = ctx.clock(&format!("writer-{h}-{t}"))?;
            clients.push(hlc.client().clone());
            tasks.spawn(increment(
                Arc::clone(&handle),
                coll.clone(),
                hlc,
                Arc::clone(&start),
                increments,
            ));
        }
    }
    let mut conflicts = 0;
    while let Some(joined) = tasks.join_next().await {
        conflicts += joined.map_err(|e| format!("a writer task failed: {e}"))??;
    }
    close_all(&handles).await?;

    let stored = ctx
        .store
        .get(&coll, &rid("counter"))
        .await
        .or_fail("get")?
        .ok_or("the counter vanished")?;
    let total = writers as i64 * increments;
    ensure_eq!(
        n_of(&stored.record),
        Some(total),
        "the counter after every increment (lost updates?)"
    );
    ensure_eq!(
        stored.record.version(),
        total as u64 + 1,
        "the version vector total counts the create and every increment"
    );
    for client in &clients {
        ensure_eq!(
            stored.record.versions().get(client),
            increments as u64,
            "the version vector entry of writer {client}"
        );
    }
    // All writers first read the same state and only then write: one wins,
    // every other one must have been refused, whatever the scheduling.
    ensure!(
        conflicts >= writers - 1,
        "only {conflicts} conflicts among {writers} writers that all wrote over the same read state"
    );
    Ok(coll)
}

/// Records each writer of [`a_feed_read_during_writes_misses_nothing`]
/// creates at least.
const FEED_WRITES_PER_WRITER: usize = 40;

/// Records each writer of [`a_feed_read_during_writes_misses_nothing`]
/// creates at most: past the least, a writer goes on only until the reader
/// has read a page while writers were still writing, which a fast store
/// may otherwise finish before the reader's first look.
const FEED_MOST_WRITES_PER_WRITER: usize = 2_000;

/// How long a writer of [`a_feed_read_during_writes_misses_nothing`] goes on
/// past its least, waiting for the reader to overlap it.
const FEED_OVERLAP_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Whether the reader of a check of a feed read during writes has read
/// writes while writers were still writing: without it the check proves
/// nothing. Shared by the reader and its writers.
#[derive(Default)]
struct Overlap(AtomicBool);

impl Overlap {
    /// Records a page read while `writing` writers had not finished, when
    /// it held what they wrote (`wrote`).
    fn saw(&self, wrote: bool, writing: &AtomicUsize) {
        if wrote && writing.load(Ordering::SeqCst) > 0 {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the reader has read during the writes.
    fn proved(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Whether a writer that began at `began` and made `made` writes of its
    /// `least` makes another: past the least only until the reader has read
    /// during the writes, within [`FEED_OVERLAP_WAIT`].
    fn writes_on(&self, made: usize, least: usize, began: tokio::time::Instant) -> bool {
        made < least || (!self.proved() && began.elapsed() < FEED_OVERLAP_WAIT)
    }

    /// How long a reader caught up with writers still writing waits before
    /// it looks again: the writers' turn, without a store (a server
    /// answering one request at a time) kept busy by empty reads. Shorter
    /// until it has read during the writes, so that it looks again before
    /// writers on a fast store reach their most; a sleep, not a yield, so
    /// that a reader's bound of pages outlasts [`FEED_OVERLAP_WAIT`].
    fn pause(&self) -> std::time::Duration {
        std::time::Duration::from_millis(if self.proved() { 5 } else { 1 })
    }
}

/// A reader paging the change feed while writers on other handles create
/// records, keeping only the cursor each page gives it, sees every record:
/// a write that took a position below one a reader has passed, and became
/// visible after, would be missed for good. The reader and the writers
/// start together, and the reader must have read records while writers
/// were still writing, or the check proved nothing.
pub async fn a_feed_read_during_writes_misses_nothing(ctx: &Context<'_>) -> CheckResult {
    const PAGE: usize = 7;
    const MAX_PAGES: usize = 50_000;
    let coll = ctx.collection("feed-during-writes");
    let writers = HANDLES * TASKS_PER_HANDLE;
    let start = Arc::new(Barrier::new(writers + 1));
    let writing = Arc::new(AtomicUsize::new(writers));
    let overlapped = Arc::new(Overlap::default());
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    for h in 0..HANDLES {
        let handle = ctx.factory.open().await;
        handles.push(Arc::clone(&handle));
        for t in 0..TASKS_PER_HANDLE {
            let hlc = ctx.clock(&format!("feed-writer-{h}-{t}"))?;
            let writer = FeedWriter {
                store: Arc::clone(&handle),
                coll: coll.clone(),
                hlc,
                prefix: format!("w{h}-{t}-"),
                start: Arc::clone(&start),
                writing: Arc::clone(&writing),
                overlapped: Arc::clone(&overlapped),
            };
            tasks.spawn(writer.write());
        }
    }

    start.wait().await;
    let mut cursor = Cursor::START;
    let mut seen = BTreeSet::new();
    let mut expected = BTreeSet::new();
    let mut read_all = false;
    let mut finished = 0;
    for _ in 0..MAX_PAGES {
        // A writer's failure is the check's, at once.
        while let Some(joined) = tasks.try_join_next() {
            expected.extend(joined.map_err(|e| format!("a writer task failed: {e}"))??);
            finished += 1;
        }
        // Read on until a page that ends the feed was asked for after the
        // last writer finished.
        let done = finished == writers;
        let page = ctx
            .store
            .changes(&coll, cursor, limit(PAGE))
            .await
            .or_fail("changes")?;
        // Looked at after the page came: a writer still writing then was
        // writing while the page was read.
        overlapped.saw(!page.changes.is_empty(), &writing);
        ensure!(
            page.next >= cursor,
            "a feed page moved the cursor back from {cursor} to {}",
            page.next
        );
        seen.extend(page.changes.iter().map(|c| c.record.id().to_string()));
        cursor = page.next;
        if done && !page.more {
            read_all = true;
            break;
        }
        if !page.more {
            tokio::time::sleep(overlapped.pause()).await;
        }
    }
    ensure!(
        read_all,
        "the feed was not read to its end in {MAX_PAGES} pages"
    );
    close_all(&handles).await?;
    ensure!(
        overlapped.proved(),
        "the reader read no record while writers were still writing ({} records written): \
         the check proved nothing",
        expected.len()
    );
    let missed: Vec<&String> = expected.difference(&seen).collect();
    ensure!(
        missed.is_empty(),
        "a reader keeping its cursor missed {} of {} records: {:?}",
        missed.len(),
        expected.len(),
        missed.iter().take(10).collect::<Vec<_>>()
    );
    Ok(())
}

/// One writer of [`a_feed_read_during_writes_misses_nothing`].
struct FeedWriter {
    store: Arc<dyn StorageBackend>,
    coll: CollectionName,
    hlc: Hlc,
    /// Of the ids it writes.
    prefix: String,
    /// Passed by every writer and the reader before anyone starts.
    start: Arc<Barrier>,
    /// Writers that have not finished yet.
    writing: Arc<AtomicUsize>,
    /// Whether the reader has read records while writers were writing.
    overlapped: Arc<Overlap>,
}

impl FeedWriter {
    /// Creates [`FEED_WRITES_PER_WRITER`] records, then more until the
    /// reader has overlapped the writes (within bounds). Returns their ids.
    async fn write(mut self) -> CheckResult<Vec<String>> {
        // Counted down however the writer ends, so the reader never takes
        // a failed writer for one still writing.
        struct Finished(Arc<AtomicUsize>);
        impl Drop for Finished {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.start.wait().await;
        let _finished = Finished(Arc::clone(&self.writing));
        let began = tokio::time::Instant::now();
        let mut ids = Vec::new();
        for i in 0..FEED_MOST_WRITES_PER_WRITER {
            if !self.overlapped.writes_on(i, FEED_WRITES_PER_WRITER, began) {
                break;
            }
            let id = format!("{}{i}", self.prefix);
            let created = record(&mut self.hlc, &id, 1)?;
            let outcome = self
                .store
                .put(&self.coll, &Write::create(created))
                .await
                .or_fail("create")?;
            written(&outcome, "create while a reader pages the feed")?;
            ids.push(id);
            // On a store whose calls never wait (in memory), a writer would
            // otherwise run to its end in one poll, holding a worker and
            // the timers the reader sleeps on.
            tokio::task::yield_now().await;
        }
        Ok(ids)
    }
}

/// One writer: increments the counter `increments` times, retrying lost
/// races. Returns how many conflicts it met. Its first write waits at `start` until every writer has
/// read the counter, so the first round is a real race.
async fn increment(
    store: Arc<dyn StorageBackend>,
    coll: CollectionName,
    mut hlc: syncforge_core::Hlc,
    start: Arc<Barrier>,
    increments: i64,
) -> CheckResult<usize> {
    let mut conflicts = 0;
    let mut first_write = true;
    for _ in 0..increments {
        let mut attempts = 0;
        loop {
            attempts += 1;
            ensure!(
                attempts <= MAX_ATTEMPTS_PER_INCREMENT,
                "writer {} gave up after {MAX_ATTEMPTS_PER_INCREMENT} conflicts in a row",
                hlc.client()
            );
            let stored = store
                .get(&coll, &rid("counter"))
                .await
                .or_fail("get")?
                .ok_or("the counter vanished")?;
            let n = n_of(&stored.record).ok_or("the counter has no number")?;
            let next = edited(&mut hlc, &stored.record, n + 1)?;
            if first_write {
                first_write = false;
                start.wait().await;
            } else {
                // Let the other writers read the same state, so races happen.
                tokio::task::yield_now().await;
            }
            match store
                .put(&coll, &Write::replace(next, stored.token))
                .await
                .or_fail("conditional put")?
            {
                WriteOutcome::Written { .. } => break,
                WriteOutcome::Conflict => conflicts += 1,
            }
        }
    }
    Ok(conflicts)
}

/// Of several writers creating the same id at once, exactly one wins.
pub async fn concurrent_creates_have_one_winner(ctx: &Context<'_>) -> CheckResult {
    let coll = ctx.collection("concurrent-create");
    let outcomes = contend(ctx, &coll, "creator", |handle, coll, rec| async move {
        handle.put(&coll, &Write::create(rec)).await
    })
    .await?;
    let mut winners = Vec::new();
    for (rec, outcome) in outcomes {
        if let WriteOutcome::Written { .. } = outcome.or_fail("create")? {
            winners.push(rec);
        }
    }
    ensure_eq!(
        winners.len(),
        1,
        "exactly one concurrent create of an id wins"
    );
    let stored = ctx
        .store
        .get(&coll, &rid("contested"))
        .await
        .or_fail("get")?
        .map(|s| s.record);
    ensure_eq!(
        stored.as_ref(),
        winners.first(),
        "the stored record is the winner's"
    );
    Ok(())
}

/// Runs `attempt` at once on [`HANDLES`] new handles, [`TASKS_PER_HANDLE`]
/// tasks each, every task with a record of id `contested` of its own, made
/// by the clock `{who}-{handle}-{task}`. Returns each task's record with
/// what its attempt answered, once every task ended and the handles are
/// closed.
async fn contend<T, F, Fut>(
    ctx: &Context<'_>,
    coll: &CollectionName,
    who: &str,
    attempt: F,
) -> CheckResult<Vec<(Record, T)>>
where
    F: Fn(Arc<dyn StorageBackend>, CollectionName, Record) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(Barrier::new(HANDLES * TASKS_PER_HANDLE));
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    for h in 0..HANDLES {
        let handle = ctx.factory.open().await;
        handles.push(Arc::clone(&handle));
        for t in 0..TASKS_PER_HANDLE {
            let mut hlc = ctx.clock(&format!("{who}-{h}-{t}"))?;
            let rec = record(&mut hlc, "contested", (h * TASKS_PER_HANDLE + t) as i64)?;
            let attempt = attempt(Arc::clone(&handle), coll.clone(), rec.clone());
            let start = Arc::clone(&start);
            tasks.spawn(async move {
                start.wait().await;
                (rec, attempt.await)
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.map_err(|e| format!("a task of {who} failed: {e}"))?);
    }
    close_all(&handles).await?;
    Ok(answers)
}

/// The calls a store may answer at once (`get_now`, `put_now`,
/// `insert_if_absent_now`), on an open handle: where the store answers one,
/// it answers as the awaited call does (a create of a stored id conflicts,
/// a stale token conflicts, the token read matches a replace, `make` runs
/// once, a failing `make` or a record of another id writes nothing); where
/// it declines (`None`), it has done nothing. The engine tries these first,
/// so a store that got them wrong would pass every other check.
pub async fn answers_at_once(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("at-once");
    let mut hlc = ctx.clock("at-once")?;
    let first = record(&mut hlc, "a", 1)?;

    let mut made = 0;
    let answer = store.insert_if_absent_now(&coll, &rid("a"), &mut || {
        made += 1;
        Ok(first.clone())
    });
    match answer {
        None => {
            ensure_eq!(made, 0, "a declined insert_if_absent_now calls no make");
            let stored = store.get(&coll, &rid("a")).await.or_fail("get")?;
            ensure!(
                stored.is_none(),
                "a declined insert_if_absent_now wrote {stored:?}"
            );
            put_ok(store, &coll, &Write::create(first.clone()), "create").await?;
        }
        Some(answer) => {
            ensure_eq!(made, 1, "insert_if_absent_now of a new id calls make once");
            let IfAbsent::Inserted { record, cursor, .. } =
                answer.or_fail("insert_if_absent_now of a new id")?
            else {
                return Err("insert_if_absent_now of a new id answered Present".to_owned());
            };
            ensure_eq!(
                record,
                first,
                "insert_if_absent_now of a new id inserts the record made"
            );
            listed_at(store, &coll, &first, cursor, "insert_if_absent_now").await?;
        }
    }
    let stored = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("record a is not stored")?;
    ensure_eq!(stored.record, first, "the stored record is the one written");
    if let Some(now) = store.get_now(&coll, &rid("a")) {
        ensure_eq!(
            now.or_fail("get_now")?,
            Some(stored.clone()),
            "get_now answers what get does"
        );
    }
    if let Some(now) = store.get_now(&coll, &rid("missing")) {
        let now = now.or_fail("get_now")?;
        ensure!(now.is_none(), "get_now of a missing id answered {now:?}");
    }

    // A stored id: answered as it is, nothing written.
    let rival = record(&mut hlc, "a", 2)?;
    let mut made = 0;
    let answer = store.insert_if_absent_now(&coll, &rid("a"), &mut || {
        made += 1;
        Ok(rival.clone())
    });
    // Whether it answers or declines: the engine takes a record made and
    // not written for a broken store.
    ensure_eq!(made, 0, "insert_if_absent_now of a stored id calls no make");
    if let Some(answer) = answer {
        ensure_eq!(
            answer.or_fail("insert_if_absent_now of a stored id")?,
            IfAbsent::Present(stored.clone()),
            "insert_if_absent_now of a stored id answers the stored state"
        );
    }
    if let Some(outcome) = store.put_now(&coll, &Write::create(rival.clone())) {
        ensure_eq!(
            outcome.or_fail("put_now")?,
            WriteOutcome::Conflict,
            "put_now of a create of a stored id"
        );
    }
    let unchanged = store.get(&coll, &rid("a")).await.or_fail("get")?;
    ensure_eq!(
        unchanged,
        Some(stored.clone()),
        "refused or declined writes at once leave the record as it was"
    );

    // A replace with the token read, then one with that token gone stale.
    let second = edited(&mut hlc, &first, 3)?;
    let replace = Write::replace(second.clone(), stored.token.clone());
    if let Some(outcome) = store.put_now(&coll, &replace) {
        let WriteOutcome::Written { token, cursor } = outcome.or_fail("put_now")? else {
            return Err("put_now of a replace with the current token conflicted".to_owned());
        };
        listed_at(store, &coll, &second, cursor, "put_now").await?;
        let now = store
            .get(&coll, &rid("a"))
            .await
            .or_fail("get")?
            .ok_or("record a vanished")?;
        ensure_eq!(now.record, second, "put_now wrote the replacement");
        ensure_eq!(now.token, token, "get answers the token put_now gave");
        let third = edited(&mut hlc, &second, 4)?;
        if let Some(outcome) = store.put_now(&coll, &Write::replace(third, stored.token.clone())) {
            ensure_eq!(
                outcome.or_fail("put_now")?,
                WriteOutcome::Conflict,
                "put_now with a stale token"
            );
        }
        let after = store.get(&coll, &rid("a")).await.or_fail("get")?;
        ensure_eq!(
            after,
            Some(now),
            "a stale put_now leaves the record as it was"
        );
    } else {
        let after = store.get(&coll, &rid("a")).await.or_fail("get")?;
        ensure_eq!(after, Some(stored), "a declined put_now writes nothing");
    }

    // A create of a new id (what the engine sends a lone put of a record
    // it did not find): written, at the token and position it answers.
    let fresh = record(&mut hlc, "d", 6)?;
    match store.put_now(&coll, &Write::create(fresh.clone())) {
        Some(outcome) => {
            let outcome = outcome.or_fail("put_now")?;
            let (token, cursor) = written(&outcome, "put_now of a create of a new id")?;
            listed_at(store, &coll, &fresh, cursor, "put_now of a create").await?;
            let now = store
                .get(&coll, &rid("d"))
                .await
                .or_fail("get")?
                .ok_or("record d is not stored")?;
            ensure_eq!(now.record, fresh, "put_now of a create wrote the record");
            ensure_eq!(
                now.token,
                token,
                "get answers the token put_now of a create gave"
            );
        }
        None => ensure_absent(store, &coll, "d", "a declined put_now of a create").await?,
    }

    // A failing make, and a record of another id: nothing written.
    let failed = store.insert_if_absent_now(&coll, &rid("b"), &mut || {
        Err(syncforge_core::Error::invalid_record(None, "made to fail"))
    });
    let other = record(&mut hlc, "c", 5)?;
    let wrong = store.insert_if_absent_now(&coll, &rid("b"), &mut || Ok(other.clone()));
    refused_inserts_wrote_nothing(store, &coll, failed, wrong, "insert_if_absent_now").await
}

/// Fails unless the change feed lists `record` (its last change) at
/// `cursor`, the position its write was given.
async fn listed_at(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    record: &Record,
    cursor: Cursor,
    what: &str,
) -> CheckResult {
    let (feed, _) = read_feed(store, collection, Cursor::START, 100).await?;
    let listed = feed.iter().find(|change| change.record.id() == record.id());
    ensure!(
        listed.is_some_and(|change| change.cursor == cursor && change.record == *record),
        "{what}: the feed lists {listed:?}, not the write at cursor {cursor}"
    );
    Ok(())
}

/// The answers of two inserts of id `b` that must write nothing, made by
/// `call`: `failed`, whose `make` failed with "made to fail", and `wrong`,
/// whose `make` built record `c`. A call that may decline (`_now`) may
/// answer `None`; `insert_if_absent`, having answered once, may not.
async fn refused_inserts_wrote_nothing(
    store: &dyn StorageBackend,
    coll: &CollectionName,
    failed: Option<Result<IfAbsent, syncforge_core::Error>>,
    wrong: Option<Result<IfAbsent, syncforge_core::Error>>,
    call: &str,
) -> CheckResult {
    let may_decline = call.ends_with("_now");
    let answered = |answer| match answer {
        None if !may_decline => Err(format!("{call} answered once and not again")),
        answer => Ok(answer),
    };
    // The caller's error as it is (the engine tells it to the caller as
    // the caller's), and a record of another id refused for good (sent
    // again, it would be refused again).
    if let Some(failed) = answered(failed)? {
        ensure!(
            matches!(&failed, Err(e @ syncforge_core::Error::InvalidRecord { .. })
                if e.to_string().contains("made to fail")),
            "a failing make's error comes back as it is, got {failed:?}"
        );
    }
    if let Some(wrong) = answered(wrong)? {
        ensure!(
            matches!(&wrong, Err(e) if !e.is_transient()),
            "{call} of id b given a record of id c answers an error that is not transient, \
             got {wrong:?}"
        );
    }
    let left = store
        .get_many(coll, &rids(&["b", "c"]))
        .await
        .or_fail("get_many")?;
    ensure_eq!(left, vec![None, None], "a failed {call} writes nothing");
    Ok(())
}

/// `insert_if_absent`: a new record is written once, with a token and a
/// feed position like a create's; a stored one is answered and left alone;
/// a failing `make` or a record of another id writes nothing; of
/// concurrent inserts of one id on several handles exactly one writes. A
/// store without the one step answers `None` without calling `make`.
pub async fn insert_if_absent(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("insert-if-absent");
    // Ahead of the clock, so that newest_stamp can only be as new as the
    // inserted record if the store kept its stamp.
    let mut hlc = ahead_clock(ctx, "inserter")?;
    let first = record(&mut hlc, "a", 1)?;
    let mut made = 0;
    let answer = store
        .insert_if_absent(&coll, &rid("a"), &mut || {
            made += 1;
            Ok(first.clone())
        })
        .await;
    let Some(answer) = answer else {
        ensure_eq!(made, 0, "a store without insert_if_absent calls no make");
        let stored = store.get(&coll, &rid("a")).await.or_fail("get")?;
        ensure!(
            stored.is_none(),
            "a store without insert_if_absent wrote {stored:?}"
        );
        return Ok(());
    };
    ensure_eq!(made, 1, "insert_if_absent of a new id calls make once");
    let IfAbsent::Inserted {
        record: inserted,
        token,
        cursor,
    } = answer.or_fail("insert_if_absent of a new id")?
    else {
        return Err("insert_if_absent of a new id did not insert it".to_owned());
    };
    ensure_eq!(inserted, first, "the inserted record is the one made");
    let stored = store
        .get(&coll, &rid("a"))
        .await
        .or_fail("get")?
        .ok_or("get after insert_if_absent returned None")?;
    ensure_eq!(stored.record, first, "get returns the inserted record");
    ensure_eq!(stored.token, token, "get returns the insert's token");
    let (feed, end) = read_feed(store, &coll, Cursor::START, 10).await?;
    ensure_eq!(
        feed,
        vec![Change {
            cursor,
            record: first.clone()
        }],
        "the feed holds the insert at its cursor"
    );
    let newest = store.newest_stamp().await.or_fail("newest_stamp")?;
    ensure!(
        newest.as_ref() >= Some(first.newest_stamp()),
        "newest_stamp {newest:?} is older than the inserted record's, stamped {} s ahead \
         of the clock ({:?})",
        AHEAD_MILLIS / 1000,
        first.newest_stamp()
    );

    // A stored id: answered, nothing written, make called at most once.
    let rival = record(&mut hlc, "a", 2)?;
    let mut made = 0;
    let answer = store
        .insert_if_absent(&coll, &rid("a"), &mut || {
            made += 1;
            Ok(rival.clone())
        })
        .await
        .ok_or("insert_if_absent answered once and not again")?
        .or_fail("insert_if_absent of a stored id")?;
    ensure!(made <= 1, "make was called {made} times");
    ensure_eq!(
        answer,
        IfAbsent::Present(stored.clone()),
        "insert_if_absent of a stored id answers the stored state"
    );
    let (after, _) = read_feed(store, &coll, end, 10).await?;
    ensure!(
        after.is_empty(),
        "insert_if_absent of a stored id wrote {after:?}"
    );
    let replaced = edited(&mut hlc, &first, 3)?;
    put_ok(
        store,
        &coll,
        &Write::replace(replaced, token),
        "a replace with the insert's token",
    )
    .await?;

    // A failing make, and a record of another id: nothing written.
    let failed = store
        .insert_if_absent(&coll, &rid("b"), &mut || {
            Err(syncforge_core::Error::invalid_record(None, "made to fail"))
        })
        .await;
    let other = record(&mut hlc, "c", 4)?;
    let wrong = store
        .insert_if_absent(&coll, &rid("b"), &mut || Ok(other.clone()))
        .await;
    refused_inserts_wrote_nothing(store, &coll, failed, wrong, "insert_if_absent").await?;

    // Concurrent inserts of one id: one is written, the rest see it.
    let answers = contend(ctx, &coll, "inserter", |handle, coll, rec| async move {
        handle
            .insert_if_absent(&coll, &rid("contested"), &mut || Ok(rec.clone()))
            .await
    })
    .await?;
    let (mut winners, mut seen) = (Vec::new(), Vec::new());
    for (rec, answer) in answers {
        match answer.ok_or("insert_if_absent answered once and not again")? {
            Ok(IfAbsent::Inserted { record, .. }) => {
                ensure_eq!(record, rec, "the inserted record is the one made");
                winners.push(record);
            }
            Ok(IfAbsent::Present(stored)) => seen.push(stored.record),
            Err(e) => return Err(format!("a concurrent insert_if_absent failed: {e}")),
        }
    }
    ensure_eq!(
        winners.len(),
        1,
        "exactly one concurrent insert_if_absent of an id writes"
    );
    ensure!(
        seen.iter().all(|r| Some(r) == winners.first()),
        "every other concurrent insert_if_absent sees the winner's record"
    );
    Ok(())
}

/// Closes the extra handles a check opened.
async fn close_all(handles: &[Arc<dyn StorageBackend>]) -> CheckResult {
    for handle in handles {
        handle.close().await.or_fail("close")?;
    }
    Ok(())
}

/// Clears every collection this run wrote, so shared stores do not collect
/// test data, and checks that none is listed afterwards.
pub async fn clear_run_collections(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let prefix = format!("{}-", ctx.run);
    let ours = |names: Vec<CollectionName>| -> Vec<CollectionName> {
        names
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    let written = ours(store.list_collections().await.or_fail("list_collections")?);
    ensure!(
        !written.is_empty(),
        "list_collections lists none of the collections this run wrote"
    );
    for name in &written {
        store
            .clear_collection(name)
            .await
            .or_fail("clear_collection")?;
    }
    let left = ours(store.list_collections().await.or_fail("list_collections")?);
    ensure_eq!(
        left,
        Vec::<CollectionName>::new(),
        "collections left after clearing them all"
    );
    Ok(())
}

/// A name of exactly `len` bytes starting with `prefix`.
fn padded(prefix: &str, len: usize) -> String {
    let mut name = prefix.to_owned();
    while name.len() < len {
        name.push('x');
    }
    name
}

/// Names that are valid but unusual: path-like, case variants, reserved
/// device names, unicode in both normal forms, the longest allowed.
fn unusual_names(run: &str) -> Vec<String> {
    let mut names: Vec<String> = [
        "../x",
        "a/b",
        "a%2Fb",
        "a%2fb",
        "a\\b",
        "a_b",
        "a.b",
        "a b",
        " a",
        "a ",
        "A",
        "a",
        "con",
        "CON",
        "nul",
        "aux.txt",
        ".",
        "..",
        "...",
        "~",
        "a:b",
        "*",
        "?",
        "#",
        "名前",
        "\u{e9}",
        "e\u{301}",
        "🙂",
        "a\u{200b}b",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Longest names, differing only at the end: truncating or plainly hashing
    // a prefix would merge them.
    names.push(padded(run, MAX_NAME_BYTES - 1) + "1");
    names.push(padded(run, MAX_NAME_BYTES - 1) + "2");
    names.push("é".repeat(MAX_NAME_BYTES / 2));
    names
}

/// Unusual but valid ids work and are all distinct: each is created, read,
/// replaced and deleted, and nothing done to one touches another.
pub async fn unusual_ids(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("odd-ids");
    let mut hlc = ctx.clock("odd-ids")?;
    let names = unusual_names(&ctx.run);
    for (i, id) in names.iter().enumerate() {
        let outcome = store
            .put(&coll, &Write::create(record(&mut hlc, id, i as i64)?))
            .await
            .or_fail("create")?;
        written(
            &outcome,
            &format!(
                "create of id {:?} (is it confused with another id?)",
                shortened(id)
            ),
        )?;
    }
    for (i, id) in names.iter().enumerate() {
        let stored = store.get(&coll, &rid(id)).await.or_fail("get")?;
        let stored = stored.ok_or_else(|| format!("id {:?} not found", shortened(id)))?;
        ensure_eq!(stored.record.id(), id.as_str(), "the id reads back exactly");
        ensure_eq!(
            n_of(&stored.record),
            Some(i as i64),
            "the record of id {:?}",
            shortened(id)
        );
    }
    let ids: Vec<RecordId> = names.iter().map(|id| rid(id)).collect();
    let many = store.get_many(&coll, &ids).await.or_fail("get_many")?;
    for (i, (id, entry)) in names.iter().zip(&many).enumerate() {
        ensure_eq!(
            entry.as_ref().and_then(|s| n_of(&s.record)),
            Some(i as i64),
            "get_many entry for id {:?}",
            shortened(id)
        );
    }
    let all_ids: BTreeSet<String> = store
        .get_all(&coll)
        .await
        .or_fail("get_all")?
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    ensure_eq!(
        all_ids,
        names.iter().cloned().collect::<BTreeSet<_>>(),
        "get_all returns every id exactly"
    );
    let (feed, _) = read_feed(store, &coll, Cursor::START, 7).await?;
    let mut fed: Vec<String> = feed
        .iter()
        .map(|change| change.record.id().to_string())
        .collect();
    fed.sort();
    let mut expected = names.clone();
    expected.sort();
    ensure_eq!(fed, expected, "the feed lists every unusual id once");

    // Each id replaced with its token, then each deleted, one at a time:
    // after each call every other record is as it was, so a store that
    // folds two ids into one key for a replace or a delete (but not for a
    // create) is caught.
    let mut state: Vec<Option<i64>> = (0..names.len()).map(|i| Some(i as i64)).collect();
    let replaced = |i: usize| (names.len() + i) as i64;
    for (i, id) in names.iter().enumerate() {
        let stored = store
            .get(&coll, &ids[i])
            .await
            .or_fail("get")?
            .ok_or_else(|| format!("id {:?} not found", shortened(id)))?;
        let next = edited(&mut hlc, &stored.record, replaced(i))?;
        put_ok(
            store,
            &coll,
            &Write::replace(next, stored.token),
            &format!("replace of id {:?} with its token", shortened(id)),
        )
        .await?;
        state[i] = Some(replaced(i));
        ensure_unusual_ids(store, &coll, &names, &ids, &state, "replacing", id).await?;
    }
    for (i, id) in names.iter().enumerate() {
        ensure!(
            store.delete(&coll, &ids[i]).await.or_fail("delete")?,
            "delete of id {:?} must report it deleted",
            shortened(id)
        );
        state[i] = None;
        ensure_unusual_ids(store, &coll, &names, &ids, &state, "deleting", id).await?;
    }
    let left = store.get_all(&coll).await.or_fail("get_all")?;
    ensure!(
        left.is_empty(),
        "every unusual id was deleted, yet get_all returns {} records",
        left.len()
    );
    Ok(())
}

/// Fails unless the records of `ids` (named `names`) hold the numbers of
/// `state` (`None`: absent), after `doing` (replacing or deleting) `id`.
async fn ensure_unusual_ids(
    store: &dyn StorageBackend,
    coll: &CollectionName,
    names: &[String],
    ids: &[RecordId],
    state: &[Option<i64>],
    doing: &str,
    id: &str,
) -> CheckResult {
    let many = store.get_many(coll, ids).await.or_fail("get_many")?;
    ensure_eq!(
        many.len(),
        ids.len(),
        "get_many answers one entry per id asked for"
    );
    for ((name, entry), expected) in names.iter().zip(&many).zip(state) {
        ensure_eq!(
            entry.as_ref().and_then(|s| n_of(&s.record)),
            *expected,
            "the record of id {:?} after {doing} id {:?} (only that record may change)",
            shortened(name),
            shortened(id)
        );
        if let Some(stored) = entry {
            ensure_eq!(
                stored.record.id(),
                name.as_str(),
                "the id reads back exactly after {doing} id {:?}",
                shortened(id)
            );
        }
    }
    Ok(())
}

/// Unusual but valid collection names work literally and are all distinct.
/// They are shared between runs, so only run-unique ids are written there,
/// and deleted again.
pub async fn unusual_collection_names(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let mut hlc = ctx.clock("odd-colls")?;
    let names = unusual_names(&ctx.run);
    let id_prefix = format!("{}-odd-coll-", ctx.run);
    let id_of = |i: usize| format!("{id_prefix}{i}");
    let names: Vec<CollectionName> = names
        .iter()
        .map(|name| {
            CollectionName::new(name.as_str())
                .map_err(|e| format!("an unusual but valid collection name was refused: {e}"))
        })
        .collect::<CheckResult<_>>()?;
    for (i, name) in names.iter().enumerate() {
        let outcome = store
            .put(name, &Write::create(record(&mut hlc, &id_of(i), i as i64)?))
            .await
            .or_fail("create")?;
        written(
            &outcome,
            &format!("create in collection {:?}", shortened(name)),
        )?;
    }
    let listed: BTreeSet<CollectionName> = store
        .list_collections()
        .await
        .or_fail("list_collections")?
        .into_iter()
        .collect();
    for (i, name) in names.iter().enumerate() {
        ensure!(
            listed.contains(name),
            "list_collections names collection {:?} exactly",
            shortened(name)
        );
        let ours: Vec<String> = store
            .get_all(name)
            .await
            .or_fail("get_all")?
            .iter()
            .map(|r| r.id().to_string())
            .filter(|id| id.starts_with(&id_prefix))
            .collect();
        ensure_eq!(
            ours,
            vec![id_of(i)],
            "collection {:?} holds only its own record (is it confused with another collection?)",
            shortened(name)
        );
        ensure_eq!(
            store
                .get(name, &rid(&id_of(i)))
                .await
                .or_fail("get")?
                .and_then(|s| n_of(&s.record)),
            Some(i as i64),
            "the record in collection {:?}",
            shortened(name)
        );
    }
    for (i, name) in names.iter().enumerate() {
        ensure!(
            store
                .delete(name, &rid(&id_of(i)))
                .await
                .or_fail("delete")?,
            "cleaning up collection {:?}",
            shortened(name)
        );
    }
    Ok(())
}

/// Cursors stay ahead of every cursor handed out in a collection, by any
/// handle, across a clear and across the deletion of its newest record;
/// and a token read before a clear holds for nothing after it.
///
/// A store whose handles count feed positions each on their own, seeded
/// from what they find when opened, handed a position a reader had passed
/// to a handle opened after a clear or a delete: the reader never saw the
/// write made at it.
pub async fn cursors_stay_ahead_across_handles(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let mut hlc = ctx.clock("ahead")?;
    let cleared = ctx.collection("ahead-cleared");
    let other = ctx.factory.open().await;
    let (t1, _) = put_ok(
        store,
        &cleared,
        &Write::create(record(&mut hlc, "r1", 1)?),
        "create",
    )
    .await?;
    put_ok(
        store,
        &cleared,
        &Write::create(record(&mut hlc, "r2", 1)?),
        "create",
    )
    .await?;
    let (_, c3) = put_ok(
        &*other,
        &cleared,
        &Write::create(record(&mut hlc, "r3", 1)?),
        "create by another handle",
    )
    .await?;
    store
        .clear_collection(&cleared)
        .await
        .or_fail("clear_collection")?;
    // The handle that wrote r3 sees it gone, and creates it anew.
    ensure_absent(
        &*other,
        &cleared,
        "r3",
        "a record another handle cleared is gone for the handle that wrote it",
    )
    .await?;
    let (_, c3_again) = put_ok(
        &*other,
        &cleared,
        &Write::create(record(&mut hlc, "r3", 2)?),
        "create, by the handle that wrote r3, of an id another handle cleared",
    )
    .await?;
    ensure!(
        c3_again > c3,
        "r3 created again after a clear lies past its first cursor ({c3_again} vs {c3})"
    );
    put_conflicts(
        store,
        &cleared,
        &Write::replace(record(&mut hlc, "r1", 2)?, t1),
        "a replace with a token read before the collection was cleared",
    )
    .await?;
    ensure_absent(
        store,
        &cleared,
        "r1",
        "a refused replace after a clear writes nothing",
    )
    .await?;
    let fresh = ctx.factory.open().await;
    let (_, cx) = put_ok(
        &*fresh,
        &cleared,
        &Write::create(record(&mut hlc, "x", 1)?),
        "create by a handle opened after the clear",
    )
    .await?;
    let (_, cy) = put_ok(
        &*other,
        &cleared,
        &Write::create(record(&mut hlc, "y", 1)?),
        "create after the clear",
    )
    .await?;
    ensure!(
        cx > c3 && cy > c3 && cx != cy,
        "cursors after a clear ({cx} by a new handle, {cy} by an older one) must lie past every \
         cursor handed out before it ({c3}) and differ"
    );
    let (seen, _) = read_feed(&*fresh, &cleared, c3, 10).await?;
    let ids: BTreeSet<&str> = seen
        .iter()
        .map(|change| change.record.id().as_str())
        .collect();
    ensure_eq!(
        ids,
        BTreeSet::from(["r3", "x", "y"]),
        "a reader at the last cursor before a clear sees every write after it"
    );

    let deleted = ctx.collection("ahead-deleted");
    put_ok(
        store,
        &deleted,
        &Write::create(record(&mut hlc, "d1", 1)?),
        "create",
    )
    .await?;
    let (_, c2) = put_ok(
        store,
        &deleted,
        &Write::create(record(&mut hlc, "d2", 1)?),
        "create",
    )
    .await?;
    ensure!(
        store.delete(&deleted, &rid("d2")).await.or_fail("delete")?,
        "delete of an existing record returns true"
    );
    let later = ctx.factory.open().await;
    let (_, c3) = put_ok(
        &*later,
        &deleted,
        &Write::create(record(&mut hlc, "d3", 1)?),
        "create by a handle opened after a delete",
    )
    .await?;
    ensure!(
        c3 > c2,
        "a write after the newest record was deleted ({c3}) must lie past its cursor ({c2})"
    );
    let (seen, _) = read_feed(&*later, &deleted, c2, 10).await?;
    ensure!(
        seen.iter()
            .any(|change| change.record.id().as_str() == "d3"),
        "a reader at a deleted record's cursor sees the write made after it"
    );
    close_all(&[other, fresh, later]).await
}

/// The feed read in pages of 1, 2, 3 and 5 over runs of deleted records
/// and rewrites holds what one large page holds, every page checked as a
/// reader checks it; after a clear, a reader ends, and one at the old end
/// finds the next write.
///
/// A store that set `next` to the last change it returned answered a page
/// whose whole window was deleted with `next == after` and "more", and a
/// reader asked it again for ever; one that said "more" only for a full
/// page ended a reader early.
pub async fn paging_over_deleted_records(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("sparse");
    let mut hlc = ctx.clock("sparse")?;
    let mut records = Vec::new();
    for n in 0..20 {
        records.push(record(&mut hlc, &format!("r{n:02}"), n)?);
    }
    let writes: Vec<Write> = records.iter().cloned().map(Write::create).collect();
    let outcomes = store.put_batch(&coll, &writes).await.or_fail("put_batch")?;
    let mut tokens = Vec::new();
    for outcome in &outcomes {
        tokens.push(written(outcome, "a create of a new record")?.0);
    }
    for n in 2..12 {
        let id = format!("r{n:02}");
        ensure!(
            store.delete(&coll, &rid(&id)).await.or_fail("delete")?,
            "delete of {id}"
        );
    }
    let mut latest = records[12].clone();
    let mut token = tokens[12].clone();
    for n in [100, 101] {
        let next = edited(&mut hlc, &latest, n)?;
        token = put_ok(
            store,
            &coll,
            &Write::replace(next.clone(), token),
            "rewrite",
        )
        .await?
        .0;
        latest = next;
    }
    // The rewrites of r12 are the collection's last writes: every page
    // size ends the feed at the same cursor, with nothing superseded after
    // it to read ahead over.
    let (whole, end) = read_feed(store, &coll, Cursor::START, 1_000).await?;
    ensure_eq!(
        whole.len(),
        10,
        "the feed holds the ten records left, once each"
    );
    for page_size in [1, 2, 3, 5] {
        let (paged, paged_end) = read_feed(store, &coll, Cursor::START, page_size).await?;
        ensure_eq!(
            paged,
            whole,
            "the feed read in pages of {page_size} holds what one page holds"
        );
        ensure_eq!(
            paged_end,
            end,
            "pages of {page_size} end where one page ends"
        );
    }
    store
        .clear_collection(&coll)
        .await
        .or_fail("clear_collection")?;
    read_feed(store, &coll, Cursor::START, 1).await?;
    let (_, after_clear) = put_ok(
        store,
        &coll,
        &Write::create(record(&mut hlc, "z", 1)?),
        "create after a clear",
    )
    .await?;
    let (seen, _) = read_feed(store, &coll, end, 1).await?;
    ensure!(
        seen.len() == 1 && seen[0].cursor == after_clear,
        "a reader at the feed's end before a clear finds the write after it: {seen:?}"
    );
    Ok(())
}

/// Clearing a collection whose name reads as a pattern or a path, or is a
/// prefix of other names, clears that collection alone.
///
/// A store that cleared by key or object pattern, or by a prefix without
/// its delimiter, cleared `a b` and `ab` with `a`, and everything with `*`.
pub async fn clear_takes_names_literally(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let mut hlc = ctx.clock("literal")?;
    let tags = ["a", "a b", "a.b", "a/b", "ab", "A", "*", "?", "[ab]", "a*"];
    let names: Vec<CollectionName> = tags.iter().map(|tag| ctx.collection(tag)).collect();
    for name in &names {
        put_ok(
            store,
            name,
            &Write::create(record(&mut hlc, "r", 1)?),
            "create",
        )
        .await?;
    }
    let mut cleared = BTreeSet::new();
    for tag in ["*", "?", "[ab]", "a*", "a"] {
        let target = ctx.collection(tag);
        store
            .clear_collection(&target)
            .await
            .or_fail("clear_collection")?;
        cleared.insert(tag);
        for (tag, name) in tags.iter().zip(&names) {
            let held = store.get_all(name).await.or_fail("get_all")?.len();
            let expected = usize::from(!cleared.contains(tag));
            ensure_eq!(
                held,
                expected,
                "collection {name:?} after clearing {target:?} (cleared so far: {cleared:?})"
            );
        }
    }
    Ok(())
}

/// What a write answers is what the store then holds: the token `get`
/// gives, and the cursor the feed lists the record at, for each write of a
/// batch with conflicts among its writes, and for an insert if absent
/// (which also lies past the writes before it).
///
/// A store whose batch numbered its writes without the refused ones, or
/// whose insert read the counter without moving it, answered tokens and
/// cursors that were not the record's: the engine's next replace conflicted
/// for ever, or a reader skipped the insert.
pub async fn answers_match_what_is_stored(ctx: &Context<'_>) -> CheckResult {
    let store = &*ctx.store;
    let coll = ctx.collection("answers");
    let mut hlc = ctx.clock("answers")?;
    let (stale, before) = put_ok(
        store,
        &coll,
        &Write::create(record(&mut hlc, "s", 1)?),
        "create",
    )
    .await?;
    let current = put_ok(
        store,
        &coll,
        &Write::replace(record(&mut hlc, "s", 2)?, stale.clone()),
        "replace",
    )
    .await?;
    let batch = vec![
        Write::create(record(&mut hlc, "a", 1)?),
        Write::create(record(&mut hlc, "a", 2)?),
        Write::create(record(&mut hlc, "b", 1)?),
        Write::replace(record(&mut hlc, "s", 3)?, stale),
        Write::create(record(&mut hlc, "c", 1)?),
        Write::replace(record(&mut hlc, "s", 4)?, current.0),
    ];
    let outcomes = store.put_batch(&coll, &batch).await.or_fail("put_batch")?;
    let refused: Vec<bool> = outcomes
        .iter()
        .map(|o| *o == WriteOutcome::Conflict)
        .collect();
    ensure_eq!(
        refused,
        [false, true, false, true, false, false],
        "a batch's repeated create and stale replace are refused, the rest written"
    );
    let (feed, _) = read_feed(store, &coll, current.1, 100).await?;
    for (write, outcome) in batch.iter().zip(&outcomes) {
        let WriteOutcome::Written { token, cursor } = outcome else {
            continue;
        };
        let id = write.record.id();
        let stored = store.get(&coll, id).await.or_fail("get")?;
        ensure_eq!(
            stored.map(|stored| stored.token),
            Some(token.clone()),
            "get of {id:?} gives the token its write in the batch answered"
        );
        ensure!(
            feed.iter()
                .any(|change| change.record.id() == id && change.cursor == *cursor),
            "the feed lists {id:?} at the cursor its write in the batch answered ({cursor})"
        );
    }
    let last = feed.last().map_or(before, |change| change.cursor);
    let made = record(&mut hlc, "q", 1)?;
    let inserted = match store.insert_if_absent_now(&coll, &rid("q"), &mut || Ok(made.clone())) {
        Some(inserted) => Some(inserted),
        None => {
            store
                .insert_if_absent(&coll, &rid("q"), &mut || Ok(made.clone()))
                .await
        }
    };
    let Some(inserted) = inserted else {
        // The store leaves inserts to the engine's read and create.
        return Ok(());
    };
    let IfAbsent::Inserted { token, cursor, .. } = inserted.or_fail("insert_if_absent")? else {
        return Err("insert_if_absent of a new id found it present".to_owned());
    };
    ensure!(
        cursor > last,
        "an insert ({cursor}) lies past the writes before it ({last})"
    );
    let stored = store.get(&coll, &rid("q")).await.or_fail("get")?;
    ensure_eq!(
        stored.map(|stored| stored.token),
        Some(token),
        "get of an inserted record gives the token the insert answered"
    );
    let (after_insert, _) = read_feed(store, &coll, last, 10).await?;
    ensure_eq!(
        after_insert
            .iter()
            .map(|change| (change.record.id().as_str(), change.cursor))
            .collect::<Vec<_>>(),
        [("q", cursor)],
        "the feed lists the insert at the cursor it answered"
    );
    Ok(())
}

/// Records rewritten and recreated by the writers of
/// [`a_feed_read_during_rewrites_ends_at_every_latest_state`].
const REWRITTEN_RECORDS: usize = 12;

/// Edits each writer of
/// [`a_feed_read_during_rewrites_ends_at_every_latest_state`] makes, and
/// the most it makes while the reader has not yet read during the edits.
const EDITS_PER_WRITER: usize = 30;
const MOST_EDITS_PER_WRITER: usize = 2_000;

/// A reader paging the feed while writers on two handles rewrite records,
/// and delete and create them again, holds every record's latest state
/// once it has read to the end, keeping only the cursor each page gives it.
///
/// Creates alone cannot show a store that hands out a replace's position
/// before the new state can be read (a feed entry written before the
/// record): a reader took the old state at the new position, passed it,
/// and never saw the new one. The reader and the writers start together,
/// and the reader must have read changes while writers were still writing,
/// or the check proved nothing.
pub async fn a_feed_read_during_rewrites_ends_at_every_latest_state(
    ctx: &Context<'_>,
) -> CheckResult {
    const PAGE: usize = 5;
    const MAX_PAGES: usize = 100_000;
    let store = &*ctx.store;
    let coll = ctx.collection("feed-during-rewrites");
    let mut setup = ctx.clock("rewrites-setup")?;
    for n in 0..REWRITTEN_RECORDS {
        let first = record(&mut setup, &format!("r{n:02}"), 0)?;
        put_ok(store, &coll, &Write::create(first), "create").await?;
    }
    let writers = HANDLES * 2;
    let start = Arc::new(Barrier::new(writers + 1));
    let writing = Arc::new(AtomicUsize::new(writers));
    let overlapped = Arc::new(Overlap::default());
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    for h in 0..HANDLES {
        let handle = ctx.factory.open().await;
        handles.push(Arc::clone(&handle));
        for t in 0..2 {
            let rewriter = Rewriter {
                store: Arc::clone(&handle),
                coll: coll.clone(),
                hlc: ctx.clock(&format!("rewriter-{}", h * 2 + t))?,
                writer: h * 2 + t,
                start: Arc::clone(&start),
                overlapped: Arc::clone(&overlapped),
            };
            let writing = Arc::clone(&writing);
            tasks.spawn(async move {
                let edited = rewriter.rewrite().await;
                writing.fetch_sub(1, Ordering::AcqRel);
                edited
            });
        }
    }
    start.wait().await;
    let mut cursor = Cursor::START;
    let mut seen: BTreeMap<RecordId, Record> = BTreeMap::new();
    let mut pages = 0;
    // Read while the writers write, then to the end once they are done.
    let mut done = false;
    loop {
        pages += 1;
        ensure!(
            pages <= MAX_PAGES,
            "the feed did not end within {MAX_PAGES} pages"
        );
        let page = store
            .changes(&coll, cursor, limit(PAGE))
            .await
            .or_fail("changes")?;
        page.check_after(cursor)?;
        // Looked at after the page came: a writer still writing then was
        // writing while the page was read. Only the writers' own edits
        // count: the records made before they started are there from the
        // start, also on a feed that shows nothing newer until writes stop.
        let edited_by_a_writer = page
            .changes
            .iter()
            .any(|change| change.record.newest_stamp().client() != setup.client());
        overlapped.saw(edited_by_a_writer, &writing);
        for change in page.changes {
            seen.insert(change.record.id().clone(), change.record);
        }
        cursor = page.next;
        if !page.more {
            if done {
                break;
            }
            if writing.load(Ordering::Acquire) == 0 {
                while let Some(joined) = tasks.join_next().await {
                    joined.map_err(|e| format!("a writer task failed: {e}"))??;
                }
                done = true;
            } else {
                // Caught up with writers still writing: look again soon.
                tokio::time::sleep(overlapped.pause()).await;
            }
        }
    }
    close_all(&handles).await?;
    ensure!(
        overlapped.proved(),
        "the reader read no change while writers were still editing: the check proved nothing"
    );
    // Every delete is followed by its writer's create: every record is
    // there at the end, and each is compared below.
    let stored = store.get_all(&coll).await.or_fail("get_all")?;
    ensure_eq!(
        stored.len(),
        REWRITTEN_RECORDS,
        "records stored once the rewriters are done"
    );
    for stored in stored {
        ensure_eq!(
            seen.get(stored.id()),
            Some(&stored),
            "a reader at the end of the feed holds {:?} as it is stored",
            stored.id()
        );
    }
    Ok(())
}

/// One writer of [`a_feed_read_during_rewrites_ends_at_every_latest_state`].
struct Rewriter {
    store: Arc<dyn StorageBackend>,
    coll: CollectionName,
    hlc: Hlc,
    writer: usize,
    start: Arc<Barrier>,
    overlapped: Arc<Overlap>,
}

impl Rewriter {
    /// Rewrites records read just before (again on a conflict), every
    /// eighth edit deleting its record and creating it again:
    /// [`EDITS_PER_WRITER`] edits, then more until the reader has read
    /// during the edits (within bounds).
    async fn rewrite(mut self) -> CheckResult {
        const TRIES: usize = 50;
        let (store, coll) = (&*self.store, &self.coll);
        self.start.wait().await;
        let began = tokio::time::Instant::now();
        for edit in 0..MOST_EDITS_PER_WRITER {
            if !self.overlapped.writes_on(edit, EDITS_PER_WRITER, began) {
                break;
            }
            let id = rid(&format!(
                "r{:02}",
                (self.writer * 7 + edit * 5) % REWRITTEN_RECORDS
            ));
            if edit % 8 == 7 {
                store.delete(coll, &id).await.or_fail("delete")?;
                let again = record(&mut self.hlc, id.as_str(), 0)?;
                // Another writer may have made it again first.
                store
                    .put(coll, &Write::create(again))
                    .await
                    .or_fail("create")?;
            } else {
                for _ in 0..TRIES {
                    let Some(stored) = store.get(coll, &id).await.or_fail("get")? else {
                        break;
                    };
                    let n = n_of(&stored.record).unwrap_or(0);
                    let next = edited(&mut self.hlc, &stored.record, n + 1)?;
                    let write = Write::replace(next, stored.token);
                    if store.put(coll, &write).await.or_fail("replace")? != WriteOutcome::Conflict {
                        break;
                    }
                }
            }
            // On a store whose calls never wait (in memory), a writer would
            // otherwise run to its end in one poll.
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

/// A collection another handle cleared and then wrote again is listed,
/// from every handle, and its stamps count in the store's newest; so is a
/// collection holding only a soft-deleted record.
///
/// A store whose handles remembered which collections they had listed
/// already, and whose clear took the name off the list, never listed the
/// collection again: its records went unsynced, and a newest stamp read
/// through the list missed theirs.
pub async fn a_collection_written_again_after_a_clear_is_listed(ctx: &Context<'_>) -> CheckResult {
    let coll = ctx.collection("relisted");
    let writer = ctx.factory.open().await;
    let mut hlc = ctx.clock("relisted")?;
    put_ok(
        &*writer,
        &coll,
        &Write::create(record(&mut hlc, "r1", 1)?),
        "create",
    )
    .await?;
    ctx.store
        .clear_collection(&coll)
        .await
        .or_fail("clear_collection")?;
    let mut ahead = ahead_clock(ctx, "relisted-ahead")?;
    let late = record(&mut ahead, "r2", 1)?;
    let stamp = late.newest_stamp().clone();
    put_ok(
        &*writer,
        &coll,
        &Write::create(late),
        "create after a clear by another handle",
    )
    .await?;
    let tombstoned = ctx.collection("tombstoned");
    let base = record(&mut hlc, "t", 1)?;
    put_ok(
        &*writer,
        &tombstoned,
        &Write::create(soft_deleted(&mut hlc, &base)?),
        "create of a soft-deleted record",
    )
    .await?;
    let fresh = ctx.factory.open().await;
    for (who, handle) in [("the clearing", &ctx.store), ("a fresh", &fresh)] {
        let listed = handle
            .list_collections()
            .await
            .or_fail("list_collections")?;
        for name in [&coll, &tombstoned] {
            ensure!(listed.contains(name), "{who} handle lists {name:?}");
        }
    }
    let newest = fresh.newest_stamp().await.or_fail("newest_stamp")?;
    ensure!(
        newest.as_ref() >= Some(&stamp),
        "a fresh handle's newest stamp ({newest:?}) counts a record written after a clear ({stamp:?})"
    );
    close_all(&[writer, fresh]).await
}

/// A delete racing a replace of the same record (on two handles) leaves
/// the record deleted, whichever lands first: a replace checked before the
/// delete and written after it brought the record back, with no write
/// anyone could see as its cause. Each side is started first in half the
/// rounds: a store whose calls end at their first step (the memory store)
/// would otherwise only ever run the one started first before the other.
pub async fn a_delete_racing_a_replace_leaves_the_record_deleted(ctx: &Context<'_>) -> CheckResult {
    const ROUNDS: usize = 20;
    let coll = ctx.collection("delete-race");
    let mut hlc = ctx.clock("delete-race")?;
    let (deleter, replacer) = (ctx.factory.open().await, ctx.factory.open().await);
    for round in 0..ROUNDS {
        let id = format!("y{round:02}");
        let first = record(&mut hlc, &id, 1)?;
        let (token, _) =
            put_ok(&*ctx.store, &coll, &Write::create(first.clone()), "create").await?;
        let next = Write::replace(edited(&mut hlc, &first, 2)?, token);
        let record_id = rid(&id);
        let (deleted, replaced) = if round % 2 == 0 {
            tokio::join!(
                deleter.delete(&coll, &record_id),
                replacer.put(&coll, &next)
            )
        } else {
            let (replaced, deleted) = tokio::join!(
                replacer.put(&coll, &next),
                deleter.delete(&coll, &record_id)
            );
            (deleted, replaced)
        };
        ensure!(
            deleted.or_fail("delete")?,
            "a delete racing a replace finds {id} (round {round})"
        );
        replaced.or_fail("replace")?;
        ensure_absent(
            &*ctx.store,
            &coll,
            &id,
            &format!("a delete racing a replace leaves {id} deleted (round {round})"),
        )
        .await?;
    }
    close_all(&[deleter, replacer]).await
}

/// A batch larger than a store's own slices (a Redis script takes a
/// thousand writes), with refused writes across the slices' edge, answers
/// each written record's stored token and feed cursor, in rising order.
///
/// A store that numbered the writes of its second slice from where the
/// first would have ended had every write gone through answered cursors
/// the feed did not list them at.
pub async fn a_large_batch_answers_what_it_stores(ctx: &Context<'_>) -> CheckResult {
    const WRITES: usize = 1_100;
    const REFUSED: std::ops::RangeInclusive<usize> = 998..=1_002;
    let store = &*ctx.store;
    let coll = ctx.collection("large-batch");
    let mut hlc = ctx.clock("large-batch")?;
    let mut ids = Vec::with_capacity(WRITES);
    let mut writes = Vec::with_capacity(WRITES);
    for n in 0..WRITES {
        let id = if REFUSED.contains(&n) {
            let taken = format!("taken-{n}");
            put_ok(
                store,
                &coll,
                &Write::create(record(&mut hlc, &taken, 0)?),
                "create",
            )
            .await?;
            taken
        } else {
            format!("b{n:04}")
        };
        writes.push(Write::create(record(&mut hlc, &id, 1)?));
        ids.push(rid(&id));
    }
    let outcomes = store.put_batch(&coll, &writes).await.or_fail("put_batch")?;
    ensure_eq!(outcomes.len(), WRITES, "a batch answers each of its writes");
    let stored = store.get_many(&coll, &ids).await.or_fail("get_many")?;
    // Checked, or a `get_many` cut short would end the walk below early
    // and leave the writes past its cut unchecked.
    ensure_eq!(stored.len(), WRITES, "get_many answers each of its ids");
    let (feed, _) = read_feed(store, &coll, Cursor::START, 1_000).await?;
    let listed: BTreeMap<&RecordId, Cursor> = feed
        .iter()
        .map(|change| (change.record.id(), change.cursor))
        .collect();
    let mut previous = Cursor::START;
    for (n, (outcome, stored)) in outcomes.iter().zip(&stored).enumerate() {
        let id = &ids[n];
        match outcome {
            WriteOutcome::Conflict => ensure!(
                REFUSED.contains(&n),
                "write {n} of a batch of new records ({id:?}) was refused"
            ),
            WriteOutcome::Written { token, cursor } => {
                ensure!(
                    !REFUSED.contains(&n),
                    "write {n}, a create of a stored record, was written"
                );
                ensure!(
                    *cursor > previous,
                    "write {n}'s cursor ({cursor}) rises past {previous}"
                );
                previous = *cursor;
                ensure_eq!(
                    stored.as_ref().map(|stored| &stored.token),
                    Some(token),
                    "the stored token of {id:?}, written by write {n} of a large batch"
                );
                ensure_eq!(
                    listed.get(id),
                    Some(cursor),
                    "the feed cursor of {id:?}, written by write {n} of a large batch"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::num::NonZeroUsize;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;
    use syncforge_backend_memory::MemoryBackend;
    use syncforge_core::{ChangePage, Result, Stamp, Stored};

    use crate::StoreFactory;

    /// What a [`Flawed`] store gets wrong.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Flaw {
        /// `newest_stamp` answers the time instead of what is stored.
        NewestIsNow,
        /// A delete removes the id in lower case too (as a case-folding
        /// file system would).
        DeleteFoldsCase,
        /// `set_meta_if_absent` checks, then sets, then reads back what
        /// is stored.
        CheckThenSet,
        /// The feed answers nothing until writes have stopped for a while.
        FeedSettlesFirst,
        /// A clear clears every collection whose name starts with the name
        /// given (as a key pattern or an object prefix would).
        ClearsByPrefix,
        /// A collection once cleared is never listed again, whatever is
        /// written to it later.
        ListForgetsCleared,
        /// An insert answers the cursor before the one it wrote at.
        InsertAnswersEarlierCursor,
        /// A replace checks its token, then writes without a condition a
        /// moment later (as a read and a write over a network would).
        ReplaceChecksThenWrites,
    }

    /// A memory store with one flaw, on every handle it opens.
    struct Flawed {
        inner: MemoryBackend,
        flaw: Flaw,
        last_write: Arc<Mutex<Instant>>,
        cleared: Arc<Mutex<BTreeSet<CollectionName>>>,
    }

    impl Flawed {
        fn new(flaw: Flaw) -> Self {
            Flawed {
                inner: MemoryBackend::new(),
                flaw,
                last_write: Arc::new(Mutex::new(Instant::now())),
                cleared: Arc::default(),
            }
        }
    }

    #[async_trait::async_trait]
    impl StoreFactory for Flawed {
        async fn open(&self) -> Arc<dyn StorageBackend> {
            Arc::new(FlawedHandle {
                inner: self.inner.clone(),
                flaw: self.flaw,
                last_write: Arc::clone(&self.last_write),
                cleared: Arc::clone(&self.cleared),
            })
        }
    }

    #[derive(Debug)]
    struct FlawedHandle {
        inner: MemoryBackend,
        flaw: Flaw,
        last_write: Arc<Mutex<Instant>>,
        cleared: Arc<Mutex<BTreeSet<CollectionName>>>,
    }

    #[async_trait::async_trait]
    impl StorageBackend for FlawedHandle {
        fn name(&self) -> &'static str {
            "flawed"
        }
        async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
            self.inner.get(collection, id).await
        }
        async fn get_many(
            &self,
            collection: &CollectionName,
            ids: &[RecordId],
        ) -> Result<Vec<Option<Stored>>> {
            self.inner.get_many(collection, ids).await
        }
        async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
            self.inner.get_all(collection).await
        }
        async fn put_batch(
            &self,
            collection: &CollectionName,
            writes: &[Write],
        ) -> Result<Vec<WriteOutcome>> {
            if let (Flaw::ReplaceChecksThenWrites, [write]) = (self.flaw, writes) {
                if let Some(expected) = &write.expected {
                    let id = write.record.id();
                    let held = self.inner.get(collection, id).await?;
                    if held.is_some_and(|held| held.token == *expected) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        // Whatever is there now: the check was made before.
                        let unchecked = match self.inner.get(collection, id).await? {
                            Some(now) => Write::replace(write.record.clone(), now.token),
                            None => Write::create(write.record.clone()),
                        };
                        return self.inner.put_batch(collection, &[unchecked]).await;
                    }
                }
            }
            let outcomes = self.inner.put_batch(collection, writes).await;
            *self.last_write.lock() = Instant::now();
            outcomes
        }
        async fn insert_if_absent(
            &self,
            collection: &CollectionName,
            id: &RecordId,
            make: &mut (dyn FnMut() -> Result<Record> + Send),
        ) -> Option<Result<IfAbsent>> {
            let inserted = self.inner.insert_if_absent(collection, id, make).await;
            if self.flaw != Flaw::InsertAnswersEarlierCursor {
                return inserted;
            }
            Some(inserted?.map(|answer| match answer {
                IfAbsent::Inserted {
                    record,
                    token,
                    cursor,
                } => IfAbsent::Inserted {
                    record,
                    token,
                    cursor: Cursor::new(cursor.get().saturating_sub(1)),
                },
                present => present,
            }))
        }
        async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
            if self.flaw == Flaw::DeleteFoldsCase {
                if let Ok(folded) = RecordId::new(id.to_lowercase()) {
                    if folded != *id {
                        self.inner.delete(collection, &folded).await?;
                    }
                }
            }
            self.inner.delete(collection, id).await
        }
        async fn changes(
            &self,
            collection: &CollectionName,
            after: Cursor,
            limit: NonZeroUsize,
        ) -> Result<ChangePage> {
            let settled = self.last_write.lock().elapsed() > Duration::from_millis(100);
            if self.flaw == Flaw::FeedSettlesFirst && !settled {
                return Ok(ChangePage {
                    changes: Vec::new(),
                    next: after,
                    more: false,
                });
            }
            self.inner.changes(collection, after, limit).await
        }
        async fn changes_since_timestamp(
            &self,
            collection: &CollectionName,
            millis: u64,
        ) -> Result<Vec<Record>> {
            self.inner.changes_since_timestamp(collection, millis).await
        }
        async fn list_collections(&self) -> Result<Vec<CollectionName>> {
            let mut listed = self.inner.list_collections().await?;
            if self.flaw == Flaw::ListForgetsCleared {
                let cleared = self.cleared.lock();
                listed.retain(|name| !cleared.contains(name));
            }
            Ok(listed)
        }
        async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
            self.cleared.lock().insert(collection.clone());
            if self.flaw == Flaw::ClearsByPrefix {
                for name in self.inner.list_collections().await? {
                    if name.as_str().starts_with(collection.as_str()) {
                        self.inner.clear_collection(&name).await?;
                    }
                }
            }
            self.inner.clear_collection(collection).await
        }
        async fn newest_stamp(&self) -> Result<Option<Stamp>> {
            if self.flaw == Flaw::NewestIsNow {
                self.inner.newest_stamp().await?;
                // Counter high, so that it passes for at least any stamp
                // of the same millisecond.
                return Stamp::new(SystemClock.now_millis(), 1 << 20, "now").map(Some);
            }
            self.inner.newest_stamp().await
        }
        async fn get_meta(&self, key: &str) -> Result<Option<String>> {
            self.inner.get_meta(key).await
        }
        async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
            self.inner.set_meta(key, value).await
        }
        async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
            if self.flaw != Flaw::CheckThenSet {
                return self.inner.set_meta_if_absent(key, value).await;
            }
            if self.inner.get_meta(key).await?.is_none() {
                // Every racer has looked before the first one sets; the
                // sets spread over a few milliseconds, as a network's would.
                tokio::time::sleep(Duration::from_millis(2)).await;
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..5_000))).await;
                self.inner.set_meta(key, value).await?;
                // Every racer has set before any reads back, so all are
                // told the same value.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.inner
                .get_meta(key)
                .await?
                .ok_or_else(|| syncforge_core::Error::storage("flawed", "meta vanished"))
        }
        async fn close(&self) -> Result<()> {
            self.inner.close().await
        }
    }

    /// Fails the test unless a check on a store with `flaw` answered
    /// `result`, a failure whose message holds `saying`.
    fn failed(result: CheckResult, flaw: Flaw, saying: &str) {
        match result {
            Ok(()) => panic!("the check passed a store whose flaw is {flaw:?}"),
            Err(message) => assert!(
                message.contains(saying),
                "{flaw:?}: the check failed for another reason: {message}"
            ),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_answering_the_time_as_newest_stamp_fails() {
        let flaw = Flaw::NewestIsNow;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        let ahead = "ahead of the clock";
        failed(newest_stamp(&ctx).await, flaw, ahead);
        failed(close_keeps_data(&ctx).await, flaw, ahead);
        failed(insert_if_absent(&ctx).await, flaw, ahead);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_deleting_two_ids_as_one_fails() {
        let flaw = Flaw::DeleteFoldsCase;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(unusual_ids(&ctx).await, flaw, "only that record may change");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_checking_then_setting_meta_fails() {
        let flaw = Flaw::CheckThenSet;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            meta_if_absent(&ctx).await,
            flaw,
            "replaced a value another handle had read",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_read_only_after_the_writes_fails() {
        let flaw = Flaw::FeedSettlesFirst;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            a_feed_read_during_writes_misses_nothing(&ctx).await,
            flaw,
            "proved nothing",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_of_rewrites_read_only_after_them_fails() {
        let flaw = Flaw::FeedSettlesFirst;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            a_feed_read_during_rewrites_ends_at_every_latest_state(&ctx).await,
            flaw,
            "proved nothing",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_clearing_by_prefix_fails() {
        let flaw = Flaw::ClearsByPrefix;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            clear_takes_names_literally(&ctx).await,
            flaw,
            "after clearing",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_never_lists_a_cleared_collection_again_fails() {
        let flaw = Flaw::ListForgetsCleared;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            a_collection_written_again_after_a_clear_is_listed(&ctx).await,
            flaw,
            "handle lists",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_answering_an_insert_with_another_cursor_fails() {
        let flaw = Flaw::InsertAnswersEarlierCursor;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            answers_match_what_is_stored(&ctx).await,
            flaw,
            "past the writes before it",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_writing_a_replace_after_checking_it_fails() {
        let flaw = Flaw::ReplaceChecksThenWrites;
        let factory = Flawed::new(flaw);
        let ctx = Context::open(&factory).await;
        failed(
            a_delete_racing_a_replace_leaves_the_record_deleted(&ctx).await,
            flaw,
            "leaves",
        );
    }

    #[test]
    fn unusual_names_are_valid_and_distinct() {
        let names = unusual_names("run");
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        for name in &names {
            assert!(
                syncforge_core::validate_collection(name).is_ok(),
                "{name:?}"
            );
            assert!(syncforge_core::validate_id(name).is_ok(), "{name:?}");
        }
        assert!(names.iter().any(|n| n.len() == MAX_NAME_BYTES));
    }

    #[test]
    fn padded_names_have_the_asked_length() {
        assert_eq!(padded("abc", 10), "abcxxxxxxx");
        assert_eq!(padded("abc", MAX_NAME_BYTES + 1).len(), MAX_NAME_BYTES + 1);
    }
}
