//! Partial results that know how to merge: the building blocks that make the obvious plugin
//! fast.
//!
//! Each type here has a compact encoding (partials travel between processes and machines) and
//! implements [`Merge`]. A plugin whose [`MapReduce::Partial`](crate::MapReduce::Partial)
//! implements `Merge` and that does not write its own
//! [`combine`](crate::MapReduce::combine) gets one anyway: Kiln merges its partials with
//! [`Merge::merge_all`] near where they were produced, so `aggregate` decodes fewer of them.
//!
//! - [`Counter`]: how often each string occurs (word counts, hits per key).
//! - [`Sum`], [`Min`], [`Max`]: a number added up, the smallest and the largest value (with
//!   whatever it carries, e.g. `Max<(u64, String)>` for the longest line and its text).
//! - [`TopK`]: the `k` largest values.
//! - [`Ordered`]: values in input order (matching lines, say), concatenated by merging.
//! - [`SortedSet`] and [`SortedMap`]: distinct values, and a value per key merged by key.
//! - Tuples and `Option` of mergeable types merge element by element, so a partial of several
//!   figures can be `(Sum<u64>, Counter)`; a struct of them implements `Merge` in a few lines.
//!
//! ```
//! use kiln_plugin_api::partial::{Counter, Max, Merge, Sum};
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Partial {
//!     lines: Sum<u64>,
//!     longest: Max<u64>,
//!     words: Counter,
//! }
//!
//! impl Merge for Partial {
//!     fn merge(&mut self, other: Self) {
//!         self.lines.merge(other.lines);
//!         self.longest.merge(other.longest);
//!         self.words.merge(other.words);
//!     }
//! }
//! ```

mod counter;
mod top;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

pub use counter::Counter;
pub use top::TopK;

/// A partial result that can absorb the partial of the chunks that follow it.
///
/// `merge` must not depend on how the input was split: merging the partials of two halves must
/// give what one partial of the whole would have given. `self` always comes from the input
/// before `other`, so order-keeping types (like [`Ordered`]) can append.
pub trait Merge: Default {
    /// Absorbs `other`, the partial of the input that follows `self`'s.
    fn merge(&mut self, other: Self);

    /// Merges partials given in input order into one (the empty value for none).
    fn merge_all(parts: Vec<Self>) -> Self {
        let mut parts = parts.into_iter();
        let mut total = parts.next().unwrap_or_default();
        for part in parts {
            total.merge(part);
        }
        total
    }
}

/// A number added up. Encoded as the number alone (a varint for integers).
#[derive(Debug, Default, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sum<T>(pub T);

impl<T: AddAssign + Copy> Sum<T> {
    /// Adds `value`.
    #[inline]
    pub fn add(&mut self, value: T) {
        self.0 += value;
    }

    /// The sum so far.
    pub fn get(&self) -> T {
        self.0
    }
}

impl<T: AddAssign + Default> Merge for Sum<T> {
    fn merge(&mut self, other: Self) {
        self.0 += other.0;
    }
}

/// The smallest value seen, if any; of equal values, the first in input order is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Min<T>(pub Option<T>);

impl<T> Default for Min<T> {
    fn default() -> Self {
        Min(None)
    }
}

impl<T: PartialOrd> Min<T> {
    /// Considers `value`.
    #[inline]
    pub fn add(&mut self, value: T) {
        if self.0.as_ref().is_none_or(|min| value < *min) {
            self.0 = Some(value);
        }
    }

    /// The smallest value, `None` when there was none.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: PartialOrd> Merge for Min<T> {
    fn merge(&mut self, other: Self) {
        if let Some(value) = other.0 {
            self.add(value);
        }
    }
}

/// The largest value seen, if any; of equal values, the first in input order is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Max<T>(pub Option<T>);

impl<T> Default for Max<T> {
    fn default() -> Self {
        Max(None)
    }
}

impl<T: PartialOrd> Max<T> {
    /// Considers `value`.
    #[inline]
    pub fn add(&mut self, value: T) {
        if self.0.as_ref().is_none_or(|max| value > *max) {
            self.0 = Some(value);
        }
    }

    /// The largest value, `None` when there was none.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: PartialOrd> Merge for Max<T> {
    fn merge(&mut self, other: Self) {
        if let Some(value) = other.0 {
            self.add(value);
        }
    }
}

/// Values in input order; merging appends. Encoded as a postcard sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ordered<T>(pub Vec<T>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<T> Ordered<T> {
    /// Appends `value`.
    #[inline]
    pub fn push(&mut self, value: T) {
        self.0.push(value);
    }

    /// The values, in input order.
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T> Merge for Ordered<T> {
    fn merge(&mut self, mut other: Self) {
        self.0.append(&mut other.0);
    }

    /// Concatenates with one allocation.
    fn merge_all(parts: Vec<Self>) -> Self {
        let mut all = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
        for mut part in parts {
            all.append(&mut part.0);
        }
        Ordered(all)
    }
}

/// Distinct values, sorted; merging is the union.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SortedSet<T: Ord>(pub BTreeSet<T>);

impl<T: Ord> Default for SortedSet<T> {
    fn default() -> Self {
        SortedSet(BTreeSet::new())
    }
}

impl<T: Ord> SortedSet<T> {
    /// Adds `value` (once, however often it is added).
    pub fn insert(&mut self, value: T) {
        self.0.insert(value);
    }
}

impl<T: Ord> Merge for SortedSet<T> {
    fn merge(&mut self, mut other: Self) {
        if other.0.len() > self.0.len() {
            std::mem::swap(self, &mut other);
        }
        self.0.extend(other.0);
    }
}

/// A value per key, sorted by key; merging merges the values of equal keys (in input order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SortedMap<K: Ord, V>(pub BTreeMap<K, V>);

impl<K: Ord, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap(BTreeMap::new())
    }
}

impl<K: Ord, V: Merge> SortedMap<K, V> {
    /// The value of `key`, inserted empty when missing, to add to.
    pub fn entry(&mut self, key: K) -> &mut V {
        self.0.entry(key).or_default()
    }
}

impl<K: Ord, V: Merge> Merge for SortedMap<K, V> {
    fn merge(&mut self, other: Self) {
        for (key, value) in other.0 {
            match self.0.entry(key) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(value),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(value);
                }
            }
        }
    }
}

impl<T: Merge> Merge for Option<T> {
    fn merge(&mut self, other: Self) {
        match (self.as_mut(), other) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => *self = Some(theirs),
            (_, None) => {}
        }
    }
}

macro_rules! merge_tuple {
    ($($name:ident $index:tt),+) => {
        impl<$($name: Merge),+> Merge for ($($name,)+) {
            fn merge(&mut self, other: Self) {
                $(self.$index.merge(other.$index);)+
            }
        }
    };
}

merge_tuple!(A 0);
merge_tuple!(A 0, B 1);
merge_tuple!(A 0, B 1, C 2);
merge_tuple!(A 0, B 1, C 2, D 3);
merge_tuple!(A 0, B 1, C 2, D 3, E 4);
merge_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging the partials of any split gives the partial of the whole.
    fn check_split<P: Merge + PartialEq + std::fmt::Debug>(values: &[i64], part: impl Fn(&[i64]) -> P) {
        let whole = part(values);
        for cut in 0..=values.len() {
            let (a, b) = values.split_at(cut);
            assert_eq!(P::merge_all(vec![part(a), part(b)]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn numbers_merge_as_over_the_whole() {
        let values = [5, -3, 8, 8, 0, 12, -3];
        check_split(&values, |v| {
            let mut p = (Sum(0), Min(None), Max(None));
            v.iter().for_each(|&x| (p.0.add(x), p.1.add(x), p.2.add(x)).2);
            p
        });
        let (mut min, mut max) = (Min::default(), Max::default());
        for (line, &x) in values.iter().enumerate() {
            min.add(x);
            max.add((x, usize::MAX - line));
        }
        // The largest value carries the number of its line, found by merging like any other.
        assert_eq!((min.get(), max.get()), (Some(&-3), Some(&(12, usize::MAX - 5))));
    }

    #[test]
    fn collections_merge_as_over_the_whole() {
        let values = [3, 1, 4, 1, 5, 9, 2, 6];
        check_split(&values, |v| Ordered(v.to_vec()));
        check_split(&values, |v| SortedSet(v.iter().copied().collect()));
        check_split(&values, |v| {
            let mut map: SortedMap<i64, Sum<i64>> = SortedMap::default();
            v.iter().for_each(|&x| map.entry(x % 3).add(x));
            map
        });
        check_split(&values, |v| Some(Sum(v.iter().sum::<i64>())).filter(|_| !v.is_empty()));
    }

    #[test]
    fn partials_encode_compactly() {
        let p = (Sum(300u64), Min(Some(1u8)), Ordered(vec![1u8, 2]));
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert_eq!(bytes, [0xAC, 0x02, 1, 1, 2, 1, 2]);
    }
}
