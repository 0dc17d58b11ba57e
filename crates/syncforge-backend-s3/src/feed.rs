//! Conditional writes through the change feed, reading the feed, and
//! compacting it. docs/backends.md ("S3: the change feed") gives the design
//! and the argument that no change is missed; the comments here point to
//! the step of the argument each piece of code carries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use syncforge_core::{
    remember_collection_hint, Change, ChangePage, CollectionName, Cursor, Error, RecordId, Result,
    Stamp, Token, Write, WriteOutcome,
};

use crate::format::{self, cursor, end_of, entry_of, Entry, Horizon, Item, RecordBody, Segment};
use crate::io::{same_etag, Condition, Put};
use crate::keys::CollectionKeys;
use crate::store::{expected, history, token, Races, State, Store};
use crate::BACKEND_NAME;

/// The ETag in the token of a write that landed and was replaced before
/// its writer looked: no object has it, so a write made with that token
/// fails its condition, as one with any stale token does.
const REPLACED_TAG: &str = "\"syncforge-replaced\"";

/// How many times a writer reads the horizon and its segment to learn
/// whether an entry it claimed was folded ([`Store::folded_own`]).
const FOLDED_READS: usize = 4;

/// The entry a writer claimed for its items.
#[derive(Clone, Copy)]
struct Claim<'a> {
    /// The entry's number (at or below the horizon when a compaction
    /// folded the entry before the writer read the horizon).
    number: u64,
    /// The numbers that may have held the same items before: claimed and
    /// abandoned as the horizon had reached them (the segment did not name
    /// this entry as folded there, or could not be read as the horizon kept
    /// moving), or refused to a create sent again whose first send may have
    /// landed (its answer lost) and been folded before another writer took
    /// the number.
    abandoned: &'a [u64],
    /// The entry's [`Entry::id`].
    id: &'a str,
}

/// How often a page is read again because compaction moved the feed under
/// it before giving up with [`Error::Unavailable`].
const MAX_PAGE_ATTEMPTS: usize = 8;

/// Entries a page fetches first, before it knows how many items an entry of
/// this feed holds: few, as one may hold a whole batch of writes.
const FIRST_FETCH: usize = 4;

/// Most bytes of entry bodies a handle keeps read (see [`RecentEntries`]).
const RECENT_ENTRY_BYTES: usize = 32 << 20;

/// What an entry counts against [`RECENT_ENTRY_BYTES`] at least: entries
/// of single puts are small, and 32 MiB of them were tens of thousands,
/// looked through on every fetch; counted so, at most 512 are kept.
const RECENT_ENTRY_LEAST: usize = 64 << 10;

/// The feed entries a handle read last, by key and ETag (an entry is never
/// rewritten: a key claimed again after compaction is another object, with
/// another tag), up to [`RECENT_ENTRY_BYTES`] of their bodies (parsed, they
/// take a few times that), the least recently used forgotten first. An entry
/// holds a whole batch of writes, up to thousands: a peer reading it a page
/// of 100 changes at a time read the whole entry again for every page.
#[derive(Debug, Default)]
pub(crate) struct RecentEntries {
    kept: VecDeque<(Path, String, usize, Arc<Entry>)>,
    bytes: usize,
}

impl RecentEntries {
    /// The entry at `path` if one is kept whose tag is `listed`, now the
    /// most recently used: a peer paging through one entry keeps it while
    /// other collections' entries come and go.
    fn get(&mut self, path: &Path, listed: &str) -> Option<Arc<Entry>> {
        let at = self
            .kept
            .iter()
            .position(|(kept, tag, ..)| kept == path && same_etag(tag, listed))?;
        let used = self.kept.remove(at)?;
        let entry = Arc::clone(&used.3);
        self.kept.push_back(used);
        Some(entry)
    }

    /// Keeps `entry`, read from `path` with tag `etag` in a body of `bytes`,
    /// forgetting the oldest beyond the bound (and any other of `path`). An
    /// entry larger than half the bound counts as half: a reader pages
    /// through it, and left out it was downloaded whole again for every
    /// page; at most two are kept.
    fn keep(&mut self, path: Path, etag: String, bytes: usize, entry: Arc<Entry>) {
        let bytes = bytes.clamp(RECENT_ENTRY_LEAST, RECENT_ENTRY_BYTES / 2);
        if let Some(at) = self.kept.iter().position(|(kept, ..)| *kept == path) {
            if let Some((_, _, replaced, _)) = self.kept.remove(at) {
                self.bytes -= replaced;
            }
        }
        self.kept.push_back((path, etag, bytes, entry));
        self.bytes += bytes;
        while self.bytes > RECENT_ENTRY_BYTES {
            let Some((_, _, dropped, _)) = self.kept.pop_front() else {
                break;
            };
            self.bytes -= dropped;
        }
    }
}

/// How one item of a writer's own entry ended.
enum Outcome {
    /// Written: the token of the state it made (see [`token`]).
    Written {
        token: String,
        cursor: Cursor,
    },
    Conflict,
    /// Expected absent, found a delete marker: write again over the marker.
    OnMarker(String),
}

/// A feed item being read: from an entry (with what it writes) or from a
/// segment (only the cursor of a write known to have happened).
struct Candidate<'a> {
    cursor: Cursor,
    id: RecordId,
    item: Option<&'a Item>,
}

impl Store {
    /// Conditional writes: each goes into a feed entry first, then onto its
    /// record object with a compare-and-swap.
    pub(crate) async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>> {
        let keys = self.keys.collection(collection);
        for write in writes {
            self.keys.check_id(&keys, write.record.id())?;
        }
        let mut outcomes = vec![WriteOutcome::Conflict; writes.len()];
        let mut pending: Vec<(usize, Item)> = Vec::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            let expect = match &write.expected {
                None => None,
                Some(Token::Tag(etag)) => Some(etag.clone()),
                // Not a token this backend hands out: it never matches.
                Some(_) => continue,
            };
            pending.push((
                index,
                Item {
                    record: write.record.clone(),
                    expect,
                },
            ));
        }
        if pending.is_empty() {
            return Ok(outcomes);
        }
        self.ensure_named(collection, &keys).await?;
        // A create that finds a delete marker is written again, over that
        // marker's ETag, in a second entry: once, as a marker is only ever
        // replaced by a record.
        for round in 0..2 {
            let mut over_markers = Vec::new();
            for chunk in pending.chunks(format::MAX_ITEMS) {
                let items: Vec<Item> = chunk.iter().map(|(_, item)| item.clone()).collect();
                let results = self.write_entry(collection, &keys, items).await?;
                for ((index, item), result) in chunk.iter().zip(results) {
                    match result {
                        Outcome::Written { token, cursor } => {
                            outcomes[*index] = WriteOutcome::Written {
                                token: Token::Tag(token),
                                cursor,
                            }
                        }
                        Outcome::OnMarker(etag) if round == 0 => over_markers.push((
                            *index,
                            Item {
                                record: item.record.clone(),
                                expect: Some(token(&etag, &[])),
                            },
                        )),
                        Outcome::OnMarker(_) | Outcome::Conflict => {}
                    }
                }
            }
            if over_markers.is_empty() {
                break;
            }
            pending = over_markers;
        }
        Ok(outcomes)
    }

    /// Raises the newest stamp, claims an entry holding `items`, then
    /// commits each item onto its record object.
    async fn write_entry(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        items: Vec<Item>,
    ) -> Result<Vec<Outcome>> {
        if let Some(newest) = items.iter().map(|item| item.record.newest_stamp()).max() {
            // Raised to the end of the stamp's second, so that a busy writer
            // raises it about once a second rather than once a batch; a clock
            // seeded from it starts at most a second ahead.
            let millis = (newest.millis() / 1000 + 1) * 1000;
            let bound =
                Stamp::new(millis, 0, newest.client().clone()).unwrap_or_else(|_| newest.clone());
            self.raise_newest(collection, keys, &bound).await?;
        }
        let entry = Entry::new(items);
        let body = format::to_bytes(&entry)?;
        let (number, abandoned) = self.claim(collection, keys, body, &entry.id).await?;
        let abandoned = &abandoned;

        // Items of one id are committed in their order (the first of two
        // creates wins); different ids concurrently.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<&RecordId, usize> = HashMap::new();
        for (index, item) in entry.items.iter().enumerate() {
            let group = *group_of.entry(item.id()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(index);
        }
        let claim = Claim {
            number,
            abandoned,
            id: &entry.id,
        };
        let commits = groups.into_iter().map(|group| {
            let entry = &entry;
            async move {
                let mut results = Vec::with_capacity(group.len());
                for index in group {
                    let item = &entry.items[index];
                    results.push((
                        index,
                        self.commit_own(collection, keys, claim, index, item)
                            .await?,
                    ));
                }
                Ok::<_, Error>(results)
            }
        });
        let committed: Vec<Vec<(usize, Outcome)>> = futures::stream::iter(commits)
            .buffer_unordered(self.in_flight())
            .try_collect()
            .await?;
        let mut outcomes: Vec<Option<Outcome>> = entry.items.iter().map(|_| None).collect();
        for (index, outcome) in committed.into_iter().flatten() {
            outcomes[index] = Some(outcome);
        }
        if number % self.options.compaction_interval.get() == 0 {
            // Best effort: a failed compaction leaves more entries for the next one.
            if let Err(e) = self.compact(collection, keys, number).await {
                tracing::warn!(collection = %collection, error = %e, "feed compaction failed");
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Outcome::Conflict))
            .collect())
    }

    /// Commits item `index` of the caller's own entry, claimed as `claim`.
    ///
    /// The claimed entry may lie at or below the horizon, folded by a
    /// compaction that settled its items: the put is then refused, and the
    /// state read tells, as for an item a reader completed. An abandoned
    /// entry may have been folded too, when the writer could not tell it
    /// for its own at the time: a record holding this item's state at the
    /// item's cursor in such an entry is its write, and so is one that
    /// replaced that state, if the entry folded was this writer's own.
    async fn commit_own(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        claim: Claim<'_>,
        index: usize,
        item: &Item,
    ) -> Result<Outcome> {
        let Claim {
            number, abandoned, ..
        } = claim;
        let at = cursor(number, index);
        let path = keys.record(item.id());
        // Blind, as the writer has not read the record: the states it
        // replaces are those its token names.
        let (condition, before) = match item.expect.as_deref().map(expected) {
            Some((etag, history)) => (Condition::Tag(etag), history),
            None => (Condition::Absent, Vec::new()),
        };
        let body = format::to_bytes(&RecordBody::record(at, item.record.clone(), &before))?;
        if let Put::Done(etag) = self.io.put(&path, body, condition).await? {
            return Ok(Outcome::Written {
                token: token(&etag, &history(at, &before)),
                cursor: at,
            });
        }
        // Refused: a reader or compactor completed it first (helping),
        // another writer moved the record, or the store refused a put that
        // raced another request on the key (S3's 409), the item still
        // pending. It is settled as a reader settles it: a pending item
        // reported `Conflict` would land later through a reader.
        let mut state = self.read(collection, keys, item.id()).await?;
        self.settle(collection, keys, at, item, &mut state).await?;
        let token_now = state.token();
        let outcome = match state {
            State::Record { seq, .. } if seq == at => Outcome::Written {
                token: token_now.unwrap_or_default(),
                cursor: at,
            },
            State::Record { seq, record, .. }
                if record == item.record
                    && abandoned.iter().any(|&entry| seq == cursor(entry, index)) =>
            {
                Outcome::Written {
                    token: token_now.unwrap_or_default(),
                    cursor: seq,
                }
            }
            // Completed by a reader, then replaced by other writes (which
            // name the states they replaced) before this check: written,
            // under a token no object holds any more. This entry's cursor
            // is this write's: the number was past the horizon when the
            // writer took it, or the segment names this writer's entry as
            // the one folded under it. A number it abandoned may have been
            // another entry's before, whose writes name it (below).
            State::Record { before, .. } if before.contains(&at) => Outcome::Written {
                token: token(REPLACED_TAG, &[at]),
                cursor: at,
            },
            State::Marker { etag } if item.expect.is_none() => Outcome::OnMarker(etag),
            // Replaced after a compaction committed it in an abandoned
            // entry: the number may have been another entry's before, so
            // the state replaced is this write only if the entry folded
            // under that number was this writer's.
            State::Record { before, .. } => {
                for &entry in abandoned {
                    let was = cursor(entry, index);
                    if before.contains(&was)
                        && self
                            .folded_own(collection, keys, entry, claim.id, None)
                            .await?
                    {
                        return Ok(Outcome::Written {
                            token: token(REPLACED_TAG, &[was]),
                            cursor: was,
                        });
                    }
                }
                Outcome::Conflict
            }
            _ => Outcome::Conflict,
        };
        Ok(outcome)
    }

    /// Whether a compaction folded entry `number` as the entry whose id is
    /// `entry` (committing its items), by the folded entries the segment
    /// of the horizon names now (`read`: the horizon and its tag, when the
    /// caller has just read them). `false` when it cannot tell: the horizon
    /// kept moving, or the segment no longer names that number.
    async fn folded_own(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        number: u64,
        entry: &str,
        mut read: Option<(Horizon, Option<String>)>,
    ) -> Result<bool> {
        // A segment is gone only once a later compaction moved the horizon;
        // each retry follows another compaction, and a few are enough.
        for _ in 0..FOLDED_READS {
            let (horizon, tag) = match read.take() {
                Some(read) => read,
                None => self.read_horizon(keys).await?,
            };
            if let Some(segment) = self
                .read_segment(collection, keys, &horizon, tag.as_deref())
                .await?
            {
                return Ok(names_folded(&segment, number, entry));
            }
        }
        Ok(false)
    }

    /// Claims the next entry number with create-if-absent, so every number
    /// is taken by one entry and entries come into existence in number
    /// order, and answers it with the numbers that may have held this
    /// writer's entry first ([`Claim::abandoned`]).
    ///
    /// A claimed number at or below the horizon was folded already. If the
    /// segment names this writer's entry (`id`) as folded there, a
    /// compaction folded it after this writer made it, settling its items:
    /// each is committed at its cursor or void for good, and the number is
    /// answered, for [`commit_own`] to tell which at once (a write
    /// committed and then replaced is known by the states that replaced
    /// it, which name 16 at most). Otherwise the claim is abandoned, and
    /// the next number claimed: usually compaction had freed the number
    /// before this writer took it, and no one reads the entry, but the
    /// segment may also have no longer named it (see [`Claim::abandoned`]).
    ///
    /// [`commit_own`]: Self::commit_own
    async fn claim(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        body: bytes::Bytes,
        id: &str,
    ) -> Result<(u64, Vec<u64>)> {
        let mut abandoned = Vec::new();
        let cached = self.heads.lock().get(collection).copied();
        let mut head = match cached {
            Some(head) => head,
            None => self.find_head(keys, 0).await?,
        };
        let mut races = Races::default();
        loop {
            let number = head + 1;
            if number > format::MAX_ENTRY {
                return Err(Error::storage(
                    BACKEND_NAME,
                    format!("the feed of {} has used every entry number", keys.dir()),
                ));
            }
            let taken = match self
                .io
                .put(&keys.entry(number), body.clone(), Condition::Absent)
                .await?
            {
                Put::Done(_) => true,
                // A refusal usually means another writer took the number,
                // but not always. The create may have landed with its
                // answer lost, and the client's resend been refused: the
                // entry holding this writer's very bytes holds its writes,
                // stamps and expected states and all (whoever wrote them:
                // committing that entry is committing them), and claiming
                // another number would commit the writes twice, the second
                // commit refused as a conflict wherever a reader completed
                // the first. Or S3 answered 409 to a create that raced
                // another request on the key, which may have failed too: a
                // number left free below taken ones would be claimed later,
                // under cursors readers already hold, so it is tried again.
                Put::Lost => match self.io.get(&keys.entry(number)).await? {
                    Some(found) if found.body == body => true,
                    Some(_) => {
                        // The first send may have landed, and compaction
                        // folded the entry before another writer took the
                        // number: its items may be committed there.
                        abandoned.push(number);
                        races.lost(&keys.entries()).await?;
                        // Taken the first time: usually by a writer just as
                        // fast, so try the next number. Taken again: the
                        // feed is further on (and later, after a wait,
                        // further still): list where it ends.
                        head = if races.count() == 1 {
                            number
                        } else {
                            self.find_head(keys, number).await?
                        };
                        false
                    }
                    None => {
                        races.lost(&keys.entries()).await?;
                        false
                    }
                },
            };
            if !taken {
                continue;
            }
            let (horizon, tag) = self.read_horizon(keys).await?;
            let reached = horizon.horizon;
            // A number past the horizon held no entry of this writer's that
            // was folded: such an entry is deleted only once the horizon has
            // passed it, and another writer took the number only after.
            abandoned.retain(|&earlier| earlier <= reached);
            if reached >= number {
                let read = Some((horizon, tag));
                if self.folded_own(collection, keys, number, id, read).await? {
                    remember_collection_hint(&mut self.heads.lock(), collection, reached);
                    return Ok((number, abandoned));
                }
                // Abandoned: compaction folded this number already. The
                // entry stays unread (readers and compactors skip entries
                // at or below the horizon) until compaction deletes it.
                races.lost(&keys.entries()).await?;
                head = reached;
                abandoned.push(number);
                continue;
            }
            remember_collection_hint(&mut self.heads.lock(), collection, number);
            return Ok((number, abandoned));
        }
    }

    /// The highest entry number in use, at least `at_least`.
    async fn find_head(&self, keys: &CollectionKeys, at_least: u64) -> Result<u64> {
        let mut head = at_least;
        let offset = (at_least > 0).then(|| keys.entry(at_least - 1));
        if at_least == 0 {
            head = self.read_horizon(keys).await?.0.horizon;
        }
        let listed = self.io.list(&keys.entries(), offset.as_ref(), None).await?;
        for meta in &listed {
            if let Some(number) = keys.entry_number(&meta.location) {
                head = head.max(number);
            }
        }
        Ok(head)
    }

    /// The horizon object and its ETag (`None`: none written yet).
    async fn read_horizon(&self, keys: &CollectionKeys) -> Result<(Horizon, Option<String>)> {
        let path = keys.horizon();
        let Some(fetched) = self.io.get(&path).await? else {
            return Ok((Horizon::default(), None));
        };
        let horizon: Horizon = format::parse(&fetched.body, keys.collection(), &path)?;
        // Entry numbers past MAX_ENTRY have no cursors: a horizon there was
        // not written by syncforge, and the arithmetic on it would overflow.
        if horizon.horizon > format::MAX_ENTRY {
            return Err(keys.corrupt(
                &path,
                format!(
                    "folds the feed up to entry {}, past the last entry number {}",
                    horizon.horizon,
                    format::MAX_ENTRY
                ),
            ));
        }
        // Compaction always names the segment it folds into: without one,
        // readers would skip every change folded before the horizon.
        if horizon.horizon > 0 && horizon.segment.is_none() {
            return Err(keys.corrupt(
                &path,
                format!(
                    "folds the feed up to entry {} into no segment",
                    horizon.horizon
                ),
            ));
        }
        Ok((horizon, Some(fetched.etag)))
    }

    /// The segment `horizon` names, read once per key (see
    /// [`Store::last_segment`]); `None` when it is gone because compaction
    /// moved the horizon since `horizon_tag` was read. A segment gone while
    /// the horizon still names it was removed by something else than
    /// syncforge, which only deletes a segment once the horizon names
    /// another: reading again would never find it, so it is corrupt.
    async fn read_segment(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        horizon: &Horizon,
        horizon_tag: Option<&str>,
    ) -> Result<Option<Arc<Segment>>> {
        let Some(name) = &horizon.segment else {
            return Ok(Some(Arc::new(Segment::default())));
        };
        let path = keys.segment_named(name)?;
        if let Some((cached, segment)) = &*self.last_segment.lock() {
            if *cached == path {
                return Ok(Some(Arc::clone(segment)));
            }
        }
        let Some(fetched) = self.io.get(&path).await? else {
            if self.read_horizon(keys).await?.1.as_deref() == horizon_tag {
                return Err(keys.corrupt(
                    &keys.horizon(),
                    format!("names the segment {name}, which is not there"),
                ));
            }
            return Ok(None);
        };
        let segment: Segment = format::parse(&fetched.body, collection, &path)?;
        // Readers find their place in it by a binary search, and take its
        // last cursor for their `next`: one past the horizon would move them
        // beyond every later write.
        if segment.horizon != horizon.horizon
            || !segment
                .writes
                .is_sorted_by(|before, after| before.0 < after.0)
            || segment
                .writes
                .last()
                .is_some_and(|(last, _)| *last > end_of(segment.horizon))
        {
            return Err(keys.corrupt(
                &path,
                format!(
                    "is not the segment of horizon {}: its horizon is {}, or its writes are \
                     not in the order of their cursors, or lie past its horizon",
                    horizon.horizon, segment.horizon
                ),
            ));
        }
        let segment = Arc::new(segment);
        *self.last_segment.lock() = Some((path, Arc::clone(&segment)));
        Ok(Some(segment))
    }

    /// Brings one item to its final fate against `state`, the record
    /// object's state read *after* the item's entry was seen to exist:
    /// committed (the object carries its cursor), pending (the object is
    /// still in the state it expects: complete it, as its writer would), or
    /// void for good (the object left that state, and never returns to it).
    async fn settle(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        at: Cursor,
        item: &Item,
        state: &mut State,
    ) -> Result<()> {
        let path = keys.record(item.id());
        let mut races = Races::default();
        loop {
            if !pending(item.expect.as_deref(), state, at) {
                return Ok(());
            }
            // Over the state read, which the item expects: the states it
            // replaces are that one and those it names.
            let before = state.history();
            let body = format::to_bytes(&RecordBody::record(at, item.record.clone(), &before))?;
            let condition = match item.expect.as_deref().map(expected) {
                Some((etag, _)) => Condition::Tag(etag),
                None => Condition::Absent,
            };
            let put = match self.io.put(&path, body, condition).await {
                // A key the store can never hold (a name too long for a
                // local directory behind a wrapper that hides it): the
                // write never lands, and is void.
                Err(error) if crate::io::names_a_key_too_long(&error) => return Ok(()),
                put => put?,
            };
            match put {
                Put::Done(etag) => {
                    *state = State::Record {
                        etag,
                        seq: at,
                        record: item.record.clone(),
                        before,
                    };
                    return Ok(());
                }
                Put::Lost => {
                    races.lost(&path).await?;
                    *state = self.read(collection, keys, item.id()).await?;
                }
            }
        }
    }

    /// Settles every candidate (grouped by id, each id's items in cursor
    /// order, one read per id unless `states` already holds a state read in
    /// this pass) and returns each id's state afterwards.
    async fn settle_all(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        candidates: Vec<Candidate<'_>>,
        states: &mut HashMap<RecordId, State>,
    ) -> Result<Vec<(RecordId, State)>> {
        let mut groups: BTreeMap<RecordId, Vec<Candidate<'_>>> = BTreeMap::new();
        // A write whose record a local directory cannot hold never lands:
        // void. Writes of such ids are refused before their entry, but an
        // entry written before that check holds them.
        let landable = candidates
            .into_iter()
            .filter(|candidate| self.keys.check_id(keys, &candidate.id).is_ok());
        for candidate in landable {
            groups
                .entry(candidate.id.clone())
                .or_default()
                .push(candidate);
        }
        let work: Vec<_> = groups
            .into_iter()
            .map(|(id, mut group)| {
                let known = states.remove(&id);
                async move {
                    group.sort_by_key(|candidate| candidate.cursor);
                    let mut state = match known {
                        Some(state) => state,
                        None => self.read(collection, keys, &id).await?,
                    };
                    for candidate in &group {
                        if let Some(item) = candidate.item {
                            self.settle(collection, keys, candidate.cursor, item, &mut state)
                                .await?;
                        }
                    }
                    Ok::<_, Error>((id, state))
                }
            })
            .collect();
        futures::stream::iter(work)
            .buffer_unordered(self.in_flight())
            .try_collect()
            .await
    }

    /// Brings every item of the feed's entries past its horizon, up to the
    /// last one claimed when the call begins, to its final fate, as a
    /// reader of those pages would: the items folded into the segment were
    /// committed, the others may still be pending. Entries claimed later
    /// are left to their writers, so that writers going on all the while
    /// cannot keep the call from ending.
    pub(crate) async fn settle_pending(&self, collection: &CollectionName) -> Result<()> {
        let page_size = NonZeroUsize::new(1_000).unwrap_or(NonZeroUsize::MIN);
        let keys = self.keys.collection(collection);
        let (horizon, _) = self.read_horizon(&keys).await?;
        // From the horizon's entry on: the horizon just read is not read
        // again (but for a feed never compacted, horizon 0).
        let last = end_of(self.find_head(&keys, horizon.horizon).await?);
        let mut after = end_of(horizon.horizon);
        while after < last {
            let page = self.changes(collection, after, page_size).await?;
            after = page.next;
            if !page.more {
                break;
            }
        }
        Ok(())
    }

    /// A page of the change feed; see [`Store::try_changes`].
    pub(crate) async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        let keys = self.keys.collection(collection);
        for _ in 0..MAX_PAGE_ATTEMPTS {
            if let Some(page) = self
                .try_changes(collection, &keys, after, limit.get())
                .await?
            {
                return Ok(page);
            }
        }
        Err(Error::unavailable(
            BACKEND_NAME,
            format!(
                "the feed of {} was compacted under each of {MAX_PAGE_ATTEMPTS} attempts to read it; try again",
                keys.dir()
            ),
        ))
    }

    /// Reads a page, or `None` when compaction moved the feed meanwhile.
    ///
    /// Order matters: the horizon, then the listing of entries, then the
    /// horizon again (unchanged, or start over), then the entries, each
    /// checked to be the very object listed (a number freed by compaction
    /// and claimed again is another object), and only then the records.
    /// Every record state is therefore read after every entry of the page
    /// existed, which is what makes "the object left the expected state"
    /// final (docs/backends.md, step 2).
    async fn try_changes(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        after: Cursor,
        limit: usize,
    ) -> Result<Option<ChangePage>> {
        let (horizon, horizon_tag) = self.read_horizon(keys).await?;
        let mut segment = Arc::new(Segment::default());
        if horizon.horizon > 0 && after < end_of(horizon.horizon) {
            let Some(read) = self
                .read_segment(collection, keys, &horizon, horizon_tag.as_deref())
                .await?
            else {
                return Ok(None);
            };
            segment = read;
        }
        // The writes after `after`: found by a binary search, and taken a
        // page at a time, so that a page costs what it holds, not what the
        // segment holds.
        let start = segment.writes.partition_point(|(at, _)| *at <= after);
        let mut folded = segment.writes.iter().skip(start).peekable();
        let first = entry_of(after).max(horizon.horizon + 1);
        let listed = self.list_entries(keys, first).await?;
        if self.read_horizon(keys).await?.1 != horizon_tag {
            return Ok(None);
        }
        let Some(listed) = self
            .fill_gaps(collection, keys, first, listed, horizon_tag.as_deref())
            .await?
        else {
            return Ok(None);
        };

        let mut page = PageBuilder::new(after, limit);
        let mut states: HashMap<RecordId, State> = HashMap::new();

        // The folded part: cursors of writes known to have happened.
        while !page.full() && folded.peek().is_some() {
            let chunk: Vec<(Cursor, RecordId)> =
                folded.by_ref().take(page.room()).cloned().collect();
            let upto = chunk.last().map_or(after, |(at, _)| *at);
            let candidates = chunk
                .into_iter()
                .map(|(at, id)| Candidate {
                    cursor: at,
                    id,
                    item: None,
                })
                .collect();
            let settled = self
                .settle_all(collection, keys, candidates, &mut states)
                .await?;
            page.take(settled, upto, &mut states);
        }
        if folded.peek().is_none() && horizon.horizon > 0 && after < end_of(horizon.horizon) {
            // Everything up to the horizon was settled by the compaction that folded it.
            page.read_to = page.read_to.max(end_of(horizon.horizon));
        }

        // The entries after the horizon. An entry holds one batch of writes,
        // from one item to thousands, and each item offered costs a read of
        // its record: items are offered in cursor order, no more a pass than
        // the page has room for, and entries are fetched as many at a time
        // as the items per entry seen so far say the room needs.
        let mut listed = listed.into_iter().peekable();
        let mut fetched: VecDeque<(u64, Arc<Entry>)> = VecDeque::new();
        // Items of the first fetched entry offered in earlier passes.
        let mut offered = 0;
        let (mut entries_seen, mut items_seen) = (0usize, 0usize);
        while !page.full()
            && folded.peek().is_none()
            && (!fetched.is_empty() || listed.peek().is_some())
        {
            if fetched.is_empty() {
                let wanted = match items_seen.checked_div(entries_seen) {
                    Some(per_entry) => page.room().div_ceil(per_entry.max(1)),
                    None => page.room().min(FIRST_FETCH),
                };
                let batch: Vec<_> = listed.by_ref().take(wanted.min(self.in_flight())).collect();
                let Some(batch) = self
                    .fetch_entries(collection, keys, batch, horizon_tag.as_deref())
                    .await?
                else {
                    // Compaction moved on since the listing.
                    return Ok(None);
                };
                for (number, entry) in batch {
                    entries_seen += 1;
                    items_seen += entry.items.len();
                    fetched.push_back((number, entry));
                }
            }
            let room = page.room();
            let mut upto = page.read_to;
            let mut candidates = Vec::new();
            // Entries offered whole in this pass, then items of the next.
            let (mut whole, mut partly) = (0, offered);
            'offer: for (number, entry) in &fetched {
                for (index, item) in entry.items.iter().enumerate().skip(partly) {
                    if candidates.len() == room {
                        break 'offer;
                    }
                    let at = cursor(*number, index);
                    upto = upto.max(at);
                    partly = index + 1;
                    if at > after {
                        candidates.push(Candidate {
                            cursor: at,
                            id: item.id().clone(),
                            item: Some(item),
                        });
                    }
                }
                whole += 1;
                partly = 0;
            }
            let settled = self
                .settle_all(collection, keys, candidates, &mut states)
                .await?;
            page.take(settled, upto, &mut states);
            fetched.drain(..whole);
            offered = partly;
        }
        let unread = folded.peek().is_some() || listed.peek().is_some() || !fetched.is_empty();
        Ok(Some(page.finish(unread)))
    }

    /// The entries `(number, path, listed ETag)` a listing shows from
    /// `first` on, in their order.
    async fn list_entries(
        &self,
        keys: &CollectionKeys,
        first: u64,
    ) -> Result<Vec<(u64, Path, Option<String>)>> {
        let offset = keys.entry(first - 1);
        Ok(self
            .io
            .list(&keys.entries(), Some(&offset), None)
            .await?
            .into_iter()
            .filter_map(|meta| {
                let number = keys.entry_number(&meta.location)?;
                (number >= first).then_some((number, meta.location, meta.e_tag))
            })
            .collect())
    }

    /// The listed entries `(number, path, listed ETag)` from `first` on,
    /// with those the listing left out; `None` if the horizon moved.
    ///
    /// Entries after the horizon are numbered without gaps: a number is
    /// claimed only once the one below it is taken. A listing is no
    /// snapshot, though: a directory read in several calls, or a bucket
    /// listed a page at a time, while writers create entries can leave one
    /// out and show a later one, and reading past the gap would move the
    /// reader beyond writes it never saw. Every entry below one the listing
    /// showed was there before that listing ended, so a listing begun
    /// after it shows them all: a listing with gaps is listed again, once,
    /// up to its last entry. A number still missing then, under the same
    /// horizon (compaction deletes what it folded only after moving it), is
    /// an entry lost for good (removed from outside, or to a power cut on a
    /// local directory without fsync), read past with a warning, as nothing
    /// can bring it back. One more listing costs every page that meets lost
    /// entries less than a read of each missing number would.
    async fn fill_gaps(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        first: u64,
        listed: Vec<(u64, Path, Option<String>)>,
        horizon_tag: Option<&str>,
    ) -> Result<Option<Vec<(u64, Path, Option<String>)>>> {
        let gapless = (first..).zip(&listed).all(|(n, (number, ..))| n == *number);
        let Some(last) = listed
            .last()
            .map(|(number, ..)| *number)
            .filter(|_| !gapless)
        else {
            return Ok(Some(listed));
        };
        // Entries past `last` may have been left out of this listing in turn.
        let mut again = self.list_entries(keys, first).await?;
        again.retain(|(number, ..)| *number <= last);
        if self.read_horizon(keys).await?.1.as_deref() != horizon_tag {
            return Ok(None);
        }
        let mut expected = first;
        for (number, ..) in &again {
            if *number > expected {
                tracing::warn!(
                    collection = %collection,
                    from = expected,
                    to = number - 1,
                    "the feed's entries are missing; reading past them"
                );
            }
            expected = number + 1;
        }
        Ok(Some(again))
    }

    /// Reads the listed entries `(number, path, listed ETag)` in their
    /// order, concurrently; `None` when one was deleted or replaced since it
    /// was listed, which means compaction moved on since the horizon read
    /// as `horizon_tag`. An entry this handle read lately under the listed
    /// tag is not read again.
    ///
    /// An entry with no listed tag (from a store whose listings give none)
    /// cannot be told from one compaction freed after the
    /// listing and a writer with a stale view claimed again: such a claim
    /// is abandoned, and its items, if completed here, would get cursors
    /// below the horizon that no reader looks at. So after reading any, the
    /// horizon is read again, and `None` answered if it moved.
    async fn fetch_entries(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        listed: Vec<(u64, Path, Option<String>)>,
        horizon_tag: Option<&str>,
    ) -> Result<Option<Vec<(u64, Arc<Entry>)>>> {
        let untagged = listed.iter().any(|(_, _, tag)| tag.is_none());
        let fetched: Vec<Option<(u64, Arc<Entry>)>> =
            futures::stream::iter(listed.into_iter().map(
                |(number, path, listed_tag)| async move {
                    let kept = listed_tag
                        .as_deref()
                        .and_then(|listed| self.recent_entries.lock().get(&path, listed));
                    if let Some(entry) = kept {
                        return Ok::<_, Error>(Some((number, entry)));
                    }
                    let Some(fetched) = self.io.get(&path).await? else {
                        return Ok(None);
                    };
                    if listed_tag.is_some_and(|listed| !same_etag(&listed, &fetched.etag)) {
                        return Ok(None);
                    }
                    let entry = Arc::new(format::parse_entry(&fetched.body, collection, &path)?);
                    self.recent_entries.lock().keep(
                        path,
                        fetched.etag,
                        fetched.body.len(),
                        Arc::clone(&entry),
                    );
                    Ok(Some((number, entry)))
                },
            ))
            .buffered(self.in_flight())
            .try_collect()
            .await?;
        let Some(fetched) = fetched.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        if untagged && self.read_horizon(keys).await?.1.as_deref() != horizon_tag {
            return Ok(None);
        }
        Ok(Some(fetched))
    }

    /// Folds the entries more than one interval behind `claimed` into a new
    /// segment: settles every item in them (helping), records for each id
    /// the cursor of its latest write at or before the new horizon, moves
    /// the horizon with a compare-and-swap, and only then deletes the
    /// folded entries and the old segment.
    pub(crate) async fn compact(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        claimed: u64,
    ) -> Result<()> {
        let target = claimed.saturating_sub(self.options.compaction_interval.get());
        let (horizon, horizon_tag) = self.read_horizon(keys).await?;
        if target <= horizon.horizon {
            return Ok(());
        }
        let listed = self.io.list(&keys.entries(), None, None).await?;
        if self.read_horizon(keys).await?.1 != horizon_tag {
            return Ok(());
        }
        let mut obsolete: Vec<Path> = Vec::new();
        let mut to_fold = Vec::new();
        for meta in listed {
            let Some(number) = keys.entry_number(&meta.location) else {
                continue;
            };
            if number <= target {
                if number > horizon.horizon {
                    to_fold.push((number, meta.location.clone(), meta.e_tag));
                }
                // Entries at or below the old horizon are abandoned claims
                // or leftovers of an interrupted compaction.
                obsolete.push(meta.location);
            }
        }
        let Some(entries) = self
            .fetch_entries(collection, keys, to_fold, horizon_tag.as_deref())
            .await?
        else {
            // Another compaction got there first.
            return Ok(());
        };

        let mut latest: HashMap<RecordId, Cursor> = HashMap::new();
        let Some(old_segment) = self
            .read_segment(collection, keys, &horizon, horizon_tag.as_deref())
            .await?
        else {
            // Another compaction moved the horizon.
            return Ok(());
        };
        latest.extend(old_segment.writes.iter().map(|(at, id)| (id.clone(), *at)));
        let candidates = entries
            .iter()
            .flat_map(|(number, entry)| {
                entry
                    .items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| Candidate {
                        cursor: cursor(*number, index),
                        id: item.id().clone(),
                        item: Some(item),
                    })
            })
            .collect();
        let settled = self
            .settle_all(collection, keys, candidates, &mut HashMap::new())
            .await?;
        let end = end_of(target);
        for (id, state) in settled {
            match state.seq() {
                Some(seq) if seq <= end => {
                    latest.insert(id, seq);
                }
                // Written again after the horizon (the tail lists it), or
                // deleted: nothing to keep.
                _ => {
                    latest.remove(&id);
                }
            }
        }
        let mut writes: Vec<(Cursor, RecordId)> =
            latest.into_iter().map(|(id, at)| (at, id)).collect();
        writes.sort();
        let unique = ulid::Ulid::new().to_string();
        let segment_path = keys.segment(target, &unique);
        let segment = Segment {
            horizon: target,
            writes,
            folded: folded_after(&old_segment.folded, &entries),
        };
        self.io
            .put(&segment_path, format::to_bytes(&segment)?, Condition::None)
            .await?;
        let moved = Horizon {
            horizon: target,
            segment: segment_path.filename().map(str::to_owned),
        };
        let condition = match &horizon_tag {
            Some(etag) => Condition::Tag(etag),
            None => Condition::Absent,
        };
        let lost = matches!(
            self.io
                .put(&keys.horizon(), format::to_bytes(&moved)?, condition)
                .await?,
            Put::Lost
        );
        // A refusal may answer a second send of this very put, made by the
        // client after the first one landed and its answer was lost: then
        // the horizon names this segment, which readers need.
        if lost && self.read_horizon(keys).await?.0 != moved {
            // Someone else moved the horizon: this segment is nobody's.
            self.io.delete(vec![segment_path]).await?;
            return Ok(());
        }
        // The next compaction starts from it.
        *self.last_segment.lock() = Some((segment_path, Arc::new(segment)));
        // Every segment of an older horizon is obsolete: the one this
        // compaction replaced, and any an interrupted or failed compaction
        // left behind (its horizon put failed or its deletes did). A
        // compaction still under way with a horizon at or below this one
        // loses its compare-and-swap and gives up its segment anyway.
        let segments = self.io.list(&keys.segments(), None, None).await?;
        obsolete.extend(segments.into_iter().filter_map(|meta| {
            keys.segment_horizon(&meta.location)
                .is_some_and(|older| older < target)
                .then_some(meta.location)
        }));
        self.io.delete(obsolete).await?;
        Ok(())
    }
}

/// Whether `segment` names entry `number` as folded with the id `id`.
fn names_folded(segment: &Segment, number: u64, id: &str) -> bool {
    let folded = &segment.folded;
    let at = folded.partition_point(|(folded, _)| *folded < number);
    folded
        .get(at)
        .is_some_and(|(folded, named)| *folded == number && named == id)
}

/// The entries a segment names as folded ([`Segment::folded`]): those the
/// segment before named and `entries`, folded now, each by its number and
/// id (entries written before entries had ids are left out), in number
/// order: every one folded now, and before them the last of the others,
/// up to [`KEPT_FOLDED`](format::KEPT_FOLDED) in all.
fn folded_after(before: &[(u64, String)], entries: &[(u64, Arc<Entry>)]) -> Vec<(u64, String)> {
    let mut folded: Vec<(u64, String)> = before
        .iter()
        .cloned()
        .chain(
            entries
                .iter()
                .filter(|(_, entry)| !entry.id.is_empty())
                .map(|(number, entry)| (*number, entry.id.clone())),
        )
        .collect();
    // Entries fold above the old horizon, so these come after the ones
    // before; sorting keeps the order sure for the binary search.
    folded.sort_unstable();
    // A fold larger than the bound (a long interval, or a compaction
    // catching up) is kept whole: its writers look for their entries now.
    let excess = folded
        .len()
        .saturating_sub(format::KEPT_FOLDED.max(entries.len()));
    folded.drain(..excess);
    folded
}

/// Collects a page: the changes found so far (each id once, at its latest
/// write) and how far the feed was read.
struct PageBuilder {
    after: Cursor,
    limit: usize,
    changes: BTreeMap<Cursor, Change>,
    at: HashMap<RecordId, Cursor>,
    /// Every item up to here is settled.
    read_to: Cursor,
}

impl PageBuilder {
    fn new(after: Cursor, limit: usize) -> Self {
        PageBuilder {
            after,
            limit,
            changes: BTreeMap::new(),
            at: HashMap::new(),
            read_to: after,
        }
    }

    fn full(&self) -> bool {
        self.changes.len() >= self.limit
    }

    fn room(&self) -> usize {
        self.limit.saturating_sub(self.changes.len()).max(1)
    }

    /// Takes the states of a settled pass that covered the feed up to `upto`:
    /// a record whose write lies in `(after, upto]` is a change (replacing an
    /// earlier one of the same id); the states are kept for later passes.
    fn take(
        &mut self,
        settled: Vec<(RecordId, State)>,
        upto: Cursor,
        states: &mut HashMap<RecordId, State>,
    ) {
        for (id, state) in settled {
            if let State::Record { seq, record, .. } = &state {
                if *seq > self.after && *seq <= upto {
                    if let Some(previous) = self.at.insert(id.clone(), *seq) {
                        if previous != *seq {
                            self.changes.remove(&previous);
                        }
                    }
                    self.changes.insert(
                        *seq,
                        Change {
                            cursor: *seq,
                            record: record.clone(),
                        },
                    );
                }
            }
            states.insert(id, state);
        }
        self.read_to = self.read_to.max(upto);
    }

    fn finish(mut self, unread: bool) -> ChangePage {
        let mut more = unread;
        let mut next = self.read_to;
        if self.changes.len() > self.limit {
            // Keep the oldest `limit`; the rest are read again next time.
            let keep: Vec<Cursor> = self.changes.keys().copied().take(self.limit).collect();
            if let Some(last) = keep.last() {
                next = *last;
                self.changes.split_off(&Cursor::new(last.get() + 1));
            }
            more = true;
        }
        ChangePage {
            changes: self.changes.into_values().collect(),
            next,
            more,
        }
    }
}

/// Whether an item written at `at`, expecting the record object to be in
/// the state of ETag `expect` (`None`: absent), is still pending against
/// the object's `state`: neither committed (the object carries `at`) nor
/// void (the object left the state it expects). The tag is compared as
/// the store answers it now, which may be quoted unlike when the item's
/// writer read it (object_store quotes local tags from 0.14.1 on): compared
/// as they came, the item was taken for void, and readers skipped a write
/// that still landed.
fn pending(expect: Option<&str>, state: &State, at: Cursor) -> bool {
    match (expect, state) {
        (_, State::Record { seq, .. }) if *seq == at => false,
        (None, State::Absent) => true,
        (Some(named), current) => {
            let (etag, _) = expected(named);
            current.etag().is_some_and(|tag| same_etag(tag, etag))
        }
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry a reader pages through stays kept while other entries come
    /// and go, and small entries count at their least, so that few enough
    /// are kept to look through on every fetch. One larger than the bound
    /// (it was not kept at all, and a reader paging through it downloaded
    /// it whole for every page) counts as half of it: at most two are kept.
    #[test]
    fn recent_entries_keep_the_one_in_use_and_few_small_ones() {
        let entry = || Arc::new(Entry::new(Vec::new()));
        for big in [16 << 20, 100 << 20] {
            let mut recent = RecentEntries::default();
            recent.keep(Path::from("big"), "t".to_owned(), big, entry());
            for n in 0..1_000 {
                let path = Path::from(format!("small{n}"));
                recent.keep(path, "t".to_owned(), 100, entry());
                assert!(
                    recent.get(&Path::from("big"), "\"t\"").is_some(),
                    "{big} bytes forgotten after {n} others"
                );
            }
            assert!(recent.kept.len() <= RECENT_ENTRY_BYTES / RECENT_ENTRY_LEAST);
            assert!(recent.get(&Path::from("big"), "other").is_none());
            for huge in ["huge2", "huge3"] {
                recent.keep(Path::from(huge), "t".to_owned(), 100 << 20, entry());
            }
            assert!(recent.get(&Path::from("big"), "t").is_none());
            assert!(recent.bytes <= RECENT_ENTRY_BYTES);
            assert_eq!(recent.kept.len(), 2);
        }
    }

    /// A segment names the entries folded before it and those it folds,
    /// the last `KEPT_FOLDED` of them, and none written without an id.
    #[test]
    fn a_segment_names_the_last_entries_folded_by_number_and_id() {
        let kept = format::KEPT_FOLDED as u64;
        let before: Vec<(u64, String)> = (1..=kept).map(|n| (n, format!("e{n}"))).collect();
        let mut unnamed = Entry::new(Vec::new());
        unnamed.id.clear();
        let newest = Arc::new(Entry::new(Vec::new()));
        let entries = vec![
            (kept + 1, Arc::clone(&newest)),
            (kept + 2, Arc::new(unnamed)),
        ];
        let folded = folded_after(&before, &entries);
        assert_eq!(folded.len(), format::KEPT_FOLDED);
        assert_eq!(folded.first(), Some(&(2, "e2".to_owned())));
        assert_eq!(folded.last(), Some(&(kept + 1, newest.id.clone())));
        let segment = Segment {
            horizon: kept + 2,
            writes: Vec::new(),
            folded,
        };
        assert!(names_folded(&segment, kept + 1, &newest.id));
        assert!(names_folded(&segment, 2, "e2"));
        assert!(!names_folded(&segment, kept + 1, "another"));
        assert!(!names_folded(&segment, 1, "e1"), "no longer kept");
        assert!(!names_folded(&segment, kept + 2, ""), "no id");

        let large: Vec<(u64, Arc<Entry>)> = (kept + 3..kept + 3 + 2 * kept)
            .map(|n| (n, Arc::new(Entry::new(Vec::new()))))
            .collect();
        let folded = folded_after(&segment.folded, &large);
        assert_eq!(folded.len(), large.len(), "a larger fold is kept whole");
        assert_eq!(folded.first().map(|(n, _)| *n), Some(kept + 3));
    }

    #[test]
    fn an_item_is_pending_against_its_expected_tag_quoted_or_not() {
        let marker = |etag: &str| State::Marker {
            etag: etag.to_owned(),
        };
        let at = Cursor::new(7);
        assert!(pending(Some("abc"), &marker("\"abc\""), at));
        assert!(pending(Some("\"abc\""), &marker("abc"), at));
        assert!(pending(Some("\"abc\""), &marker("\"abc\""), at));
        assert!(!pending(Some("abc"), &marker("\"abd\""), at));
        assert!(!pending(Some("abc"), &State::Absent, at));
        assert!(pending(None, &State::Absent, at));
        assert!(!pending(None, &marker("abc"), at));
    }
}
