//! Merging lists kept sorted by key: version vectors and field states are both
//! small sorted vectors, merged in one linear pass.

use std::cmp::Ordering;

/// The union of two lists sorted by (unique) key, still sorted; for a key on
/// both sides, `both` combines the two values.
pub(crate) fn merge_sorted<K: Ord + Clone, V: Clone>(
    a: &[(K, V)],
    b: &[(K, V)],
    both: impl Fn(&V, &V) -> V,
) -> Vec<(K, V)> {
    // Room for the union however the keys fall: growing the vector in the
    // middle of the merge cost more than the rest of merging two small
    // version vectors.
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            Ordering::Equal => {
                out.push((a[i].0.clone(), both(&a[i].1, &b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Sorts `entries` by key and keeps, of a key given more than once, the
/// last one given, as inserting them into a map one by one would.
pub(crate) fn sort_keeping_last<K: Ord, V>(entries: &mut Vec<(K, V)>) {
    // A stable sort keeps repeats in the order they were given.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    keep_last_of_repeats(entries);
}

/// Of each run of entries with one key (in `entries` sorted stably by key),
/// keeps the last.
pub(crate) fn keep_last_of_repeats<K: PartialEq, V>(entries: &mut Vec<(K, V)>) {
    entries.dedup_by(|later, earlier| {
        let repeat = later.0 == earlier.0;
        if repeat {
            // `dedup_by` keeps the earlier one: it takes the later's place.
            std::mem::swap(later, earlier);
        }
        repeat
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_keeps_the_last_of_each_key() {
        let mut entries = vec![(2, 'a'), (1, 'b'), (2, 'c'), (1, 'd'), (3, 'e'), (2, 'f')];
        sort_keeping_last(&mut entries);
        assert_eq!(entries, vec![(1, 'd'), (2, 'f'), (3, 'e')]);
    }

    #[test]
    fn merges_keys_of_both_sides_in_order() {
        let a = [(1, 10), (3, 30), (5, 50)];
        let b = [(2, 20), (3, 33), (6, 60)];
        assert_eq!(
            merge_sorted(&a, &b, |x, y| x.max(y).to_owned()),
            vec![(1, 10), (2, 20), (3, 33), (5, 50), (6, 60)]
        );
        assert_eq!(merge_sorted::<u8, u8>(&[], &[], |x, _| *x), vec![]);
    }
}
