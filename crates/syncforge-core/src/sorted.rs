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
    let mut out = Vec::with_capacity(a.len().max(b.len()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
