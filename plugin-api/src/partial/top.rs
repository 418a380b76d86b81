//! [`TopK`]: the `k` largest values.

use serde::{Deserialize, Serialize};

use super::Merge;

/// The `k` largest values seen (by `Ord`), largest first; of equal values, any may be kept.
///
/// Pushing is amortised O(1): values are collected and cut back to the best `k` whenever twice
/// as many have gathered. Encoded as `k` and the kept values.
///
/// ```
/// use kiln_plugin_api::partial::{Merge, TopK};
///
/// let mut longest = TopK::new(2);
/// for line in ["a", "abc", "ab", "abcd"] {
///     longest.push((line.len(), line.to_owned()));
/// }
/// assert_eq!(longest.into_sorted(), vec![(4, "abcd".to_owned()), (3, "abc".to_owned())]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopK<T: Ord> {
    k: u32,
    values: Vec<T>,
}

impl<T: Ord> Default for TopK<T> {
    /// An empty `TopK` whose `k` is taken from the first partial merged into it.
    fn default() -> Self {
        TopK { k: 0, values: Vec::new() }
    }
}

impl<T: Ord> TopK<T> {
    /// Keeps the `k` largest values.
    pub fn new(k: u32) -> Self {
        TopK { k, values: Vec::new() }
    }

    /// How many values are kept.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// Considers `value`.
    #[inline]
    pub fn push(&mut self, value: T) {
        self.values.push(value);
        if self.values.len() >= 2 * (self.k as usize).max(16) {
            self.cut();
        }
    }

    /// The kept values, largest first.
    pub fn into_sorted(mut self) -> Vec<T> {
        self.cut();
        self.values.sort_unstable_by(|a, b| b.cmp(a));
        self.values
    }

    fn cut(&mut self) {
        let k = self.k as usize;
        if self.values.len() > k {
            if k > 0 {
                self.values.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
            }
            self.values.truncate(k);
        }
    }
}

impl<T: Ord> Merge for TopK<T> {
    fn merge(&mut self, other: Self) {
        self.k = self.k.max(other.k);
        self.values.extend(other.values);
        self.cut();
    }
}

impl<T: Ord> PartialEq for TopK<T> {
    /// Equal when they keep the same `k` and the same values, in any order.
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.values.iter().collect::<Vec<_>>(), other.values.iter().collect::<Vec<_>>());
        a.sort_unstable();
        b.sort_unstable();
        self.k == other.k && a.len() == b.len() && a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_across_merges() {
        let values: Vec<u32> = (0..1000).map(|i| (i * 7919) % 1009).collect();
        let mut want = values.clone();
        want.sort_unstable_by(|a, b| b.cmp(a));
        want.truncate(5);
        for cut in [0, 1, 500, 999, 1000] {
            let part = |v: &[u32]| {
                let mut top = TopK::new(5);
                v.iter().for_each(|&x| top.push(x));
                postcard::from_bytes::<TopK<u32>>(&postcard::to_allocvec(&top).unwrap()).unwrap()
            };
            let merged = TopK::merge_all(vec![part(&values[..cut]), part(&values[cut..])]);
            assert_eq!(merged.into_sorted(), want, "cut at {cut}");
        }
        assert!(TopK::<u8>::merge_all(Vec::new()).into_sorted().is_empty());
    }
}
