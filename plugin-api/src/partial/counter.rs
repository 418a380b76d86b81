//! [`Counter`]: how often each string occurs, counted without an allocation per occurrence.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Merge;

/// A counting map from strings to counts: word counts, hits per key, histograms of labels.
///
/// Counting a string that is already there costs one hash (a fast one, FxHash) and one
/// comparison; a new string is copied once into one growing buffer that holds all the keys, so
/// a `Counter` makes a handful of allocations however many keys it has. It is also a compact
/// partial: encoded as the keys one after another and a (length, count) pair of varints per
/// key, decoded into three buffers without hashing (the table is built only if the decoded
/// counter is counted into again). It merges by adding counts, so a plugin whose partial is a
/// `Counter` (or contains one, see [`Merge`]) gets `combine` for free.
///
/// ```
/// use kiln_plugin_api::partial::{Counter, Merge};
///
/// let mut a = Counter::new();
/// for word in "the cat the".split_whitespace() {
///     a.add(word);
/// }
/// let mut b = Counter::new();
/// b.add_n("cat", 2);
/// let total = Counter::merge_all(vec![a, b]);
/// assert_eq!(total.get("cat"), 3);
/// assert_eq!(total.top(1), vec![("cat".to_owned(), 3)]);
/// ```
#[derive(Default, Clone)]
pub struct Counter {
    /// Every key, one after another, in the order they were first counted.
    keys: String,
    /// One entry per key, in the same order.
    entries: Vec<Entry>,
    /// Indexes into `entries`, hashed by key; empty after decoding until first needed.
    table: HashTable<u32>,
}

#[derive(Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
    count: u64,
}

fn hash(key: &str) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl Counter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty counter with room for `keys` distinct keys.
    pub fn with_capacity(keys: usize) -> Self {
        Counter { keys: String::new(), entries: Vec::with_capacity(keys), table: HashTable::with_capacity(keys) }
    }

    /// Counts one occurrence of `key`.
    #[inline]
    pub fn add(&mut self, key: &str) {
        self.add_n(key, 1);
    }

    /// Counts `n` occurrences of `key`.
    #[inline]
    pub fn add_n(&mut self, key: &str, n: u64) {
        if self.table.len() != self.entries.len() {
            self.build_table();
        }
        let key_hash = hash(key);
        let (keys, entries) = (&self.keys, &mut self.entries);
        let found = self.table.find(key_hash, |&i| {
            let e = entries[i as usize];
            &keys[e.start..e.start + e.len] == key
        });
        if let Some(&i) = found {
            let entry = &mut entries[i as usize];
            entry.count = entry.count.saturating_add(n);
            return;
        }
        let index = u32::try_from(entries.len()).expect("a Counter holds at most 2^32 distinct keys");
        entries.push(Entry { start: self.keys.len(), len: key.len(), count: n });
        self.keys.push_str(key);
        let (keys, entries) = (&self.keys, &self.entries);
        self.table.insert_unique(key_hash, index, |&i| {
            let e = entries[i as usize];
            hash(&keys[e.start..e.start + e.len])
        });
    }

    /// How often `key` was counted (0 if never).
    pub fn get(&self, key: &str) -> u64 {
        if self.table.len() == self.entries.len() {
            let found = self.table.find(hash(key), |&i| self.key(i as usize) == key);
            found.map_or(0, |&i| self.entries[i as usize].count)
        } else {
            self.iter().find(|&(k, _)| k == key).map_or(0, |(_, n)| n)
        }
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.count))
    }

    /// The keys and their counts, in the order the keys were first counted.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|e| (&self.keys[e.start..e.start + e.len], e.count))
    }

    /// The keys and their counts sorted by key: the usual output of a counting job (the same
    /// input always gives the same JSON).
    pub fn into_sorted(self) -> BTreeMap<String, u64> {
        self.iter().map(|(k, n)| (k.to_owned(), n)).collect()
    }

    /// The `k` most frequent keys, most frequent first, ties broken by key.
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(&str, u64)> = self.iter().collect();
        let order = |a: &(&str, u64), b: &(&str, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
        if k < all.len() {
            all.select_nth_unstable_by(k, order);
            all.truncate(k);
        }
        all.sort_unstable_by(order);
        all.into_iter().map(|(key, n)| (key.to_owned(), n)).collect()
    }

    fn key(&self, i: usize) -> &str {
        let e = self.entries[i];
        &self.keys[e.start..e.start + e.len]
    }

    fn build_table(&mut self) {
        let (keys, entries) = (&self.keys, &self.entries);
        let key_hash = |i: &u32| {
            let e = entries[*i as usize];
            hash(&keys[e.start..e.start + e.len])
        };
        self.table.clear();
        self.table.reserve(entries.len(), key_hash);
        for (i, e) in entries.iter().enumerate() {
            // Decoded keys are distinct: they were counted into one table before encoding.
            self.table.insert_unique(hash(&keys[e.start..e.start + e.len]), i as u32, key_hash);
        }
    }
}

impl Merge for Counter {
    fn merge(&mut self, other: Self) {
        for (key, n) in other.iter() {
            self.add_n(key, n);
        }
    }

    /// Adds into the largest counter, so that its keys are not hashed again one by one.
    fn merge_all(mut parts: Vec<Self>) -> Self {
        let Some(largest) = (0..parts.len()).max_by_key(|&i| parts[i].len()) else { return Counter::new() };
        let mut total = parts.swap_remove(largest);
        for part in parts {
            total.merge(part);
        }
        total
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Counter {
    /// Equal when they hold the same keys with the same counts, in any order.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, n)| other.get(k) == n)
    }
}

impl Eq for Counter {}

impl<'a> FromIterator<&'a str> for Counter {
    fn from_iter<I: IntoIterator<Item = &'a str>>(keys: I) -> Self {
        let mut counter = Counter::new();
        for key in keys {
            counter.add(key);
        }
        counter
    }
}

/// `(keys, pairs)`: the keys one after another, then one (length, count) pair per key.
impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Pairs<'a>(&'a [Entry]);
        impl Serialize for Pairs<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|e| (e.len as u64, e.count)))
            }
        }
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.keys)?;
        tuple.serialize_element(&Pairs(&self.entries))?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Counter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CounterVisitor;
        impl<'de> Visitor<'de> for CounterVisitor {
            type Value = Counter;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a counter: its keys, then a (length, count) pair per key")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Counter, A::Error> {
                let keys: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let pairs: Vec<(u64, u64)> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let mut entries = Vec::with_capacity(pairs.len());
                let mut start = 0usize;
                for (len, count) in pairs {
                    let len = usize::try_from(len).map_err(|_| de::Error::custom("a key length overflows"))?;
                    let end = start.checked_add(len).filter(|&end| keys.is_char_boundary(end));
                    let end = end.ok_or_else(|| de::Error::custom("key lengths do not fit the keys"))?;
                    entries.push(Entry { start, len, count });
                    start = end;
                }
                if start != keys.len() {
                    return Err(de::Error::custom("key lengths do not add up to the keys"));
                }
                Ok(Counter { keys, entries, table: HashTable::new() })
            }
        }
        deserializer.deserialize_tuple(2, CounterVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(counter: &Counter) -> Counter {
        postcard::from_bytes(&postcard::to_allocvec(counter).unwrap()).unwrap()
    }

    #[test]
    fn counts_like_a_map_and_survives_encoding() {
        let text = "é a b a\u{2003}c a b ééé";
        let counter: Counter = text.split_whitespace().collect();
        let mut want = BTreeMap::new();
        for word in text.split_whitespace() {
            *want.entry(word.to_owned()).or_insert(0u64) += 1;
        }
        assert_eq!(counter.clone().into_sorted(), want);
        let mut decoded = round_trip(&counter);
        assert_eq!(decoded, counter);
        assert_eq!(decoded.get("a"), 3);
        decoded.add("a");
        decoded.add("new");
        assert_eq!((decoded.get("a"), decoded.get("new"), decoded.len()), (4, 1, 6));
        assert_eq!(counter.total(), text.split_whitespace().count() as u64);
    }

    #[test]
    fn merging_adds_counts() {
        let parts =
            [["x", "y"].into_iter().collect::<Counter>(), Counter::new(), ["y", "y", "z"].into_iter().collect()];
        let total = Counter::merge_all(parts.iter().map(round_trip).collect());
        assert_eq!(total.into_sorted(), BTreeMap::from([("x".into(), 1), ("y".into(), 3), ("z".into(), 1)]));
        assert!(Counter::merge_all(Vec::new()).is_empty());
    }

    #[test]
    fn top_orders_by_count_then_key() {
        let counter: Counter = "b a c b a d b".split(' ').collect();
        assert_eq!(counter.top(2), vec![("b".into(), 3), ("a".into(), 2)]);
        assert_eq!(counter.top(10).len(), 4);
    }

    #[test]
    fn corrupt_encodings_are_errors() {
        for (keys, pairs) in [("ab", vec![(1u64, 1u64)]), ("ab", vec![(3, 1)]), ("é", vec![(1, 1), (1, 1)])] {
            let bytes = postcard::to_allocvec(&(keys, pairs)).unwrap();
            assert!(postcard::from_bytes::<Counter>(&bytes).is_err(), "{keys:?}");
        }
    }
}
