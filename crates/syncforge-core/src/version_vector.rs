//! Version vectors: how many writes of each client a record has seen.

use std::cmp::Ordering;

use crate::hlc::ClientId;
use crate::sorted::merge_sorted;

/// The largest write count a version vector entry may hold: 2^53 - 1, the
/// largest integer every JSON reader keeps exact. Records carrying a bigger
/// count are refused where they enter, and writing never reaches it: a
/// local write to a record that counts [`MAX_RECEIVED_VERSION`] writes of
/// its writer already is refused.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// The largest write count a record received from another replica (a sync,
/// an import) may carry for one client: 2^48, far beyond what any client
/// writes to one record (a write every microsecond for nine years), and far
/// enough below [`MAX_VERSION`] that counting on from it never reaches it.
/// A count at `MAX_VERSION` stops counting: a replica could no longer tell
/// its own later writes from earlier ones, nor report the conflicts they
/// make, so a record that would pin a count there is refused on arrival.
/// A local write by a client counted at this bound already is refused too:
/// the record it made would be refused by every other replica.
pub const MAX_RECEIVED_VERSION: u64 = 1 << 48;

/// Per-client write counts of one record. Merged by pointwise maximum.
///
/// Kept as a vector sorted by client id: records are usually written by a
/// handful of clients, and a small sorted vector compares and merges faster
/// than a tree. Most records are written by one client, so a vector of at
/// most one entry is kept inline: that spares every such record an
/// allocation (its memory, and the cost of making and freeing it).
#[derive(Clone, Default)]
pub struct VersionVector(Entries);

/// The entries, sorted by client id. Always `Inline` when at most one, so
/// that equal vectors have one form.
#[derive(Clone)]
enum Entries {
    Inline(Option<(ClientId, u64)>),
    Heap(Vec<(ClientId, u64)>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Inline(None)
    }
}

impl PartialEq for VersionVector {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for VersionVector {}

impl std::hash::Hash for VersionVector {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.entries().hash(state);
    }
}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Both saw exactly the same writes.
    Equal,
    /// The left side saw every write of the right side and more.
    Dominates,
    /// The right side saw every write of the left side and more.
    DominatedBy,
    /// Each side saw a write the other did not: concurrent edits.
    Concurrent,
}

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        VersionVector(Entries::Inline(None))
    }

    /// A vector of sorted, distinct entries.
    fn from_sorted(entries: Vec<(ClientId, u64)>) -> Self {
        if entries.len() <= 1 {
            VersionVector(Entries::Inline(entries.into_iter().next()))
        } else {
            VersionVector(Entries::Heap(entries))
        }
    }

    fn entries(&self) -> &[(ClientId, u64)] {
        match &self.0 {
            Entries::Inline(entry) => entry.as_slice(),
            Entries::Heap(entries) => entries,
        }
    }

    /// Applies `change` to the entries as a vector, then returns to the
    /// inline form if at most one entry is left.
    fn edit(&mut self, change: impl FnOnce(&mut Vec<(ClientId, u64)>)) {
        let mut entries = match std::mem::take(&mut self.0) {
            Entries::Inline(entry) => entry.into_iter().collect(),
            Entries::Heap(entries) => entries,
        };
        change(&mut entries);
        *self = VersionVector::from_sorted(entries);
    }

    /// The count for `client` (0 when absent).
    pub fn get(&self, client: &ClientId) -> u64 {
        let entries = self.entries();
        entries
            .binary_search_by(|(c, _)| c.cmp(client))
            .map_or(0, |i| entries[i].1)
    }

    /// Sets the count for `client`, at most [`MAX_VERSION`]; a count of 0
    /// removes the entry.
    pub fn set(&mut self, client: ClientId, count: u64) {
        let count = count.min(MAX_VERSION);
        self.edit(
            |entries| match entries.binary_search_by(|(c, _)| c.cmp(&client)) {
                Ok(i) if count == 0 => {
                    entries.remove(i);
                }
                Ok(i) => entries[i].1 = count,
                Err(_) if count == 0 => {}
                Err(i) => entries.insert(i, (client, count)),
            },
        );
    }

    /// Counts one more write by `client`.
    pub fn increment(&mut self, client: &ClientId) {
        match &mut self.0 {
            // The common cases, without building a vector.
            Entries::Inline(None) => self.0 = Entries::Inline(Some((client.clone(), 1))),
            Entries::Inline(Some((c, n))) if c == client => *n = (*n + 1).min(MAX_VERSION),
            _ => self.edit(
                |entries| match entries.binary_search_by(|(c, _)| c.cmp(client)) {
                    Ok(i) => entries[i].1 = (entries[i].1 + 1).min(MAX_VERSION),
                    Err(i) => entries.insert(i, (client.clone(), 1)),
                },
            ),
        }
    }

    /// Total number of writes seen: the record's `_version`. It stops at
    /// [`MAX_VERSION`], as each count does, so that a record's `_version`
    /// always reads back (two counts near the bound would sum past it).
    pub fn total(&self) -> u64 {
        self.entries()
            .iter()
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
            .min(MAX_VERSION)
    }

    /// The largest count of any client (0 for an empty vector).
    #[inline]
    pub fn largest_count(&self) -> u64 {
        match &self.0 {
            // Most records: checked on every record a sync receives.
            Entries::Inline(entry) => entry.as_ref().map_or(0, |(_, n)| *n),
            Entries::Heap(entries) => entries.iter().map(|(_, n)| *n).max().unwrap_or(0),
        }
    }

    /// Entries, sorted by client id.
    pub fn iter(&self) -> impl Iterator<Item = (&ClientId, u64)> + '_ {
        self.entries().iter().map(|(c, n)| (c, *n))
    }

    /// How many clients the vector counts writes of.
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no write was counted.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Pointwise maximum of both vectors.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut entries = merge_sorted(self.entries(), other.entries(), |a, b| *a.max(b));
        // A record keeps its vector: no room for clients both sides named.
        entries.shrink_to_fit();
        VersionVector::from_sorted(entries)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let (a, b) = (self.entries(), other.entries());
        let (mut left_ahead, mut right_ahead) = (false, false);
        let (mut i, mut j) = (0, 0);
        // One walk over both sorted lists while both have entries left; it
        // stops as soon as each side is ahead somewhere, since the answer
        // is then known (concurrent writes compare this way on every merge).
        while let (Some((x, m)), Some((y, n))) = (a.get(i), b.get(j)) {
            match x.cmp(y) {
                Ordering::Less => {
                    left_ahead = true;
                    i += 1;
                }
                Ordering::Greater => {
                    right_ahead = true;
                    j += 1;
                }
                Ordering::Equal => {
                    left_ahead |= m > n;
                    right_ahead |= m < n;
                    i += 1;
                    j += 1;
                }
            }
            if left_ahead && right_ahead {
                return Causality::Concurrent;
            }
        }
        // A client only one side has seen puts that side ahead.
        left_ahead |= i < a.len();
        right_ahead |= j < b.len();
        match (left_ahead, right_ahead) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::DominatedBy,
            (true, true) => Causality::Concurrent,
        }
    }
}

impl std::fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The highest count given for each client (at most [`MAX_VERSION`]), in
/// any order: sorted once, where setting each entry in its place moved
/// every later one, quadratic for entries that come in descending order.
impl FromIterator<(ClientId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ClientId, u64)>>(iter: I) -> Self {
        let mut entries: Vec<(ClientId, u64)> = iter
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(client, count)| (client, count.min(MAX_VERSION)))
            .collect();
        // Each client's highest count first, which `dedup_by` keeps.
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by(|later, kept| later.0 == kept.0);
        VersionVector::from_sorted(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    /// Built from entries in any order, with repeats, zeros and counts past
    /// the cap, a vector is the one setting the highest count of each client.
    #[test]
    fn collected_entries_in_any_order_give_one_vector() {
        let client = |name: &str| ClientId::new(name).unwrap();
        let mut entries: Vec<(ClientId, u64)> = (0..300u64)
            .map(|n| (client(&format!("c{n:03}")), n + 1))
            .collect();
        let ascending: VersionVector = entries.iter().cloned().collect();
        entries.reverse();
        entries.push((client("c005"), 2));
        entries.push((client("c005"), 0));
        entries.push((client("zero"), 0));
        entries.push((client("capped"), u64::MAX));
        let collected: VersionVector = entries.into_iter().collect();
        let mut expected = ascending;
        expected.set(client("capped"), MAX_VERSION);
        assert_eq!(collected, expected);
        assert_eq!(collected.get(&client("c005")), 6);
        assert_eq!(collected.get(&client("zero")), 0);
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries
            .iter()
            .map(|(c, n)| (ClientId::new(c).unwrap(), *n))
            .collect()
    }

    #[test]
    fn compare_detects_dominance_and_concurrency() {
        assert_eq!(vv(&[("a", 1)]).compare(&vv(&[("a", 1)])), Causality::Equal);
        assert_eq!(
            vv(&[("a", 2)]).compare(&vv(&[("a", 1)])),
            Causality::Dominates
        );
        assert_eq!(
            vv(&[("a", 1)]).compare(&vv(&[("a", 1), ("b", 1)])),
            Causality::DominatedBy
        );
        assert_eq!(
            vv(&[("a", 2)]).compare(&vv(&[("a", 1), ("b", 1)])),
            Causality::Concurrent
        );
        assert_eq!(vv(&[]).compare(&vv(&[])), Causality::Equal);
    }

    #[test]
    fn merge_is_pointwise_max_and_total_sums() {
        let m = vv(&[("a", 2), ("c", 1)]).merge(&vv(&[("a", 1), ("b", 4)]));
        assert_eq!(m, vv(&[("a", 2), ("b", 4), ("c", 1)]));
        assert_eq!(m.total(), 7);
    }

    #[test]
    fn the_total_stops_at_the_largest_count() {
        assert_eq!(vv(&[("a", MAX_VERSION), ("b", 1)]).total(), MAX_VERSION);
        assert_eq!(vv(&[("a", MAX_VERSION - 1), ("b", 1)]).total(), MAX_VERSION);
    }

    #[test]
    fn zero_counts_are_not_stored() {
        let mut v = vv(&[("a", 0)]);
        assert!(v.is_empty());
        v.set(ClientId::new("a").unwrap(), 3);
        v.set(ClientId::new("a").unwrap(), 0);
        assert_eq!(v, VersionVector::new());
    }

    /// A version vector over the clients `a` to `e`, each absent or counted
    /// 1 to 3: small enough that equal counts, and each way of being ahead,
    /// come up often.
    fn small_vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec(0..4u64, 5).prop_map(|counts| {
            ["a", "b", "c", "d", "e"]
                .iter()
                .zip(counts)
                .map(|(client, count)| (ClientId::new(client).unwrap(), count))
                .collect()
        })
    }

    proptest::proptest! {
        /// `compare` (one walk, stopping once both sides are ahead) says
        /// what the definition says, client by client.
        #[test]
        fn prop_compare_follows_the_definition(a in small_vector(), b in small_vector()) {
            let clients: Vec<&ClientId> = a.iter().chain(b.iter()).map(|(c, _)| c).collect();
            let left = clients.iter().any(|c| a.get(c) > b.get(c));
            let right = clients.iter().any(|c| a.get(c) < b.get(c));
            let expected = match (left, right) {
                (false, false) => Causality::Equal,
                (true, false) => Causality::Dominates,
                (false, true) => Causality::DominatedBy,
                (true, true) => Causality::Concurrent,
            };
            proptest::prop_assert_eq!(a.compare(&b), expected);
        }
    }
}
