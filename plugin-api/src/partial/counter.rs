//! [`Counter`]: how often each string occurs, counted without an allocation per occurrence.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Merge;

/// A counting map from strings to counts: word counts, hits per key, histograms of labels.
///
/// Counting a string that is already there costs one hash (a fast one, FxHash) and one
/// comparison, made inside the hash table for keys of up to 8 bytes (the table keeps each key's
/// first 8 bytes beside its count); a new string is copied once into one growing buffer that
/// holds all the keys, so a `Counter` makes a handful of allocations however many keys it has.
/// It is also a compact partial: encoded as the keys one after another and a (length, count)
/// pair of varints per key, decoded into two buffers without hashing (the table is built only
/// if the decoded counter is counted into again). It merges by adding counts, so a plugin whose
/// partial is a `Counter` (or contains one, see [`Merge`]) gets `combine` for free.
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
    /// A slot per key, hashed by key: where counting happens. Empty after decoding until the
    /// counter is counted into.
    table: HashTable<Slot>,
    /// A slot per key in `keys`' order, as decoding makes them; moved into `table` on the first
    /// count. At most one of `table` and `listed` holds slots.
    listed: Vec<Slot>,
}

/// A key's place in `keys` and its count, with the key's first bytes inline: a lookup compares
/// a key of 8 bytes or fewer (most words) without reading `keys`, so it costs one cache miss
/// (the table's) instead of three (table, entry, key).
#[derive(Clone, Copy)]
struct Slot {
    /// The key's first 8 bytes, little-endian, zero-padded (keys of different lengths are told
    /// apart by `len`).
    prefix: u64,
    start: usize,
    len: usize,
    count: u64,
}

impl Slot {
    #[inline]
    fn key<'k>(&self, keys: &'k str) -> &'k str {
        &keys[self.start..self.start + self.len]
    }

    #[inline]
    fn is(&self, key: &[u8], prefix: u64, keys: &str) -> bool {
        self.prefix == prefix
            && self.len == key.len()
            && (key.len() <= 8 || same_after_prefix(&keys.as_bytes()[self.start..self.start + self.len], key))
    }
}

/// Whether two keys of the same length over 8 bytes, whose first 8 bytes are equal, are
/// equal: for up to 16 bytes one comparison of their last 8 (which overlap the first 8 when
/// shorter), not a call to `memcmp` for a few bytes.
#[inline]
fn same_after_prefix(a: &[u8], b: &[u8]) -> bool {
    let len = b.len();
    if len <= 16 {
        let last = |key: &[u8]| u64::from_le_bytes(key[len - 8..].try_into().expect("8 bytes"));
        last(a) == last(b)
    } else {
        a[8..] == b[8..]
    }
}

/// The first 8 bytes of `key`, little-endian, zero-padded; built from loads whose length does
/// not depend on the key's (a `copy_from_slice` of a variable length is a call to `memcpy`).
#[inline]
fn prefix(key: &[u8]) -> u64 {
    let len = key.len();
    if len >= 8 {
        u64::from_le_bytes(key[..8].try_into().expect("8 bytes"))
    } else if len >= 4 {
        // Two loads of 4 bytes that overlap when `len` < 8: the overlap holds the same bytes.
        let low = u32::from_le_bytes(key[..4].try_into().expect("4 bytes"));
        let high = u32::from_le_bytes(key[len - 4..].try_into().expect("4 bytes"));
        u64::from(low) | (u64::from(high) << (8 * (len - 4)))
    } else if len > 0 {
        // Bytes 0, len / 2 and len - 1 cover every byte of a key of 1 to 3 bytes.
        let byte = |i: usize| u64::from(key[i]) << (8 * i);
        byte(0) | byte(len / 2) | byte(len - 1)
    } else {
        0
    }
}

/// The key's hash: from its prefix and length when those are the whole key (8 bytes or fewer),
/// which costs two multiplications; FxHash of its bytes otherwise.
#[inline]
fn hash(key: &[u8], prefix: u64) -> u64 {
    if key.len() <= 8 {
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write_u64(prefix);
        hasher.write_usize(key.len());
        hasher.finish()
    } else {
        FxBuildHasher.hash_one(key)
    }
}

/// The hash of a key already in the table.
#[inline]
fn slot_hash(slot: &Slot, keys: &str) -> u64 {
    hash(slot.key(keys).as_bytes(), slot.prefix)
}

/// The slots of a [`Counter`], from the table or from the decoded list.
enum Slots<'a> {
    Table(hashbrown::hash_table::Iter<'a, Slot>),
    Listed(std::slice::Iter<'a, Slot>),
}

impl<'a> Iterator for Slots<'a> {
    type Item = &'a Slot;

    #[inline]
    fn next(&mut self) -> Option<&'a Slot> {
        match self {
            Slots::Table(slots) => slots.next(),
            Slots::Listed(slots) => slots.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Slots::Table(slots) => slots.size_hint(),
            Slots::Listed(slots) => slots.size_hint(),
        }
    }
}

impl ExactSizeIterator for Slots<'_> {}

impl Counter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty counter with room for `keys` distinct keys.
    pub fn with_capacity(keys: usize) -> Self {
        Counter { keys: String::new(), table: HashTable::with_capacity(keys), listed: Vec::new() }
    }

    /// Counts one occurrence of `key`.
    #[inline]
    pub fn add(&mut self, key: &str) {
        self.add_n(key, 1);
    }

    /// Counts `n` occurrences of `key`.
    #[inline]
    pub fn add_n(&mut self, key: &str, n: u64) {
        if !self.listed.is_empty() {
            self.build_table();
        }
        let bytes = key.as_bytes();
        let key_prefix = prefix(bytes);
        let key_hash = hash(bytes, key_prefix);
        let keys = &self.keys;
        if let Some(slot) = self.table.find_mut(key_hash, |s| s.is(bytes, key_prefix, keys)) {
            slot.count = slot.count.saturating_add(n);
            return;
        }
        let slot = Slot { prefix: key_prefix, start: self.keys.len(), len: key.len(), count: n };
        self.keys.push_str(key);
        let keys = &self.keys;
        self.table.insert_unique(key_hash, slot, |s| slot_hash(s, keys));
    }

    /// How often `key` was counted (0 if never).
    pub fn get(&self, key: &str) -> u64 {
        let bytes = key.as_bytes();
        let key_prefix = prefix(bytes);
        let found = if self.listed.is_empty() {
            self.table.find(hash(bytes, key_prefix), |s| s.is(bytes, key_prefix, &self.keys))
        } else {
            self.listed.iter().find(|s| s.is(bytes, key_prefix, &self.keys))
        };
        found.map_or(0, |s| s.count)
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.table.len() + self.listed.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.slots().fold(0u64, |sum, s| sum.saturating_add(s.count))
    }

    /// The keys and their counts, in no particular order (the same for the same sequence of
    /// counts).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, u64)> + '_ {
        self.slots().map(|s| (s.key(&self.keys), s.count))
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

    fn slots(&self) -> Slots<'_> {
        if self.listed.is_empty() { Slots::Table(self.table.iter()) } else { Slots::Listed(self.listed.iter()) }
    }

    /// Moves the decoded slots into the table.
    fn build_table(&mut self) {
        let keys = &self.keys;
        let key_hash = |s: &Slot| slot_hash(s, keys);
        self.table.reserve(self.listed.len(), key_hash);
        for slot in self.listed.drain(..) {
            // Decoded keys are distinct: they were counted into one table before encoding.
            self.table.insert_unique(key_hash(&slot), slot, key_hash);
        }
        self.listed = Vec::new();
    }
}

impl Merge for Counter {
    fn merge(&mut self, other: Self) {
        if !self.listed.is_empty() {
            self.build_table();
        }
        self.table.reserve(other.len(), |s| slot_hash(s, &self.keys));
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

/// `(keys, pairs)`: the keys one after another, then one (length, count) pair per key, in the
/// same order.
impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Pairs<'a>(&'a Counter);
        impl Serialize for Pairs<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.slots().map(|s| (s.len as u64, s.count)))
            }
        }
        let mut tuple = serializer.serialize_tuple(2)?;
        if self.listed.is_empty() && !self.table.is_empty() {
            // The table's order is not `keys`' order: write the keys in the table's.
            let mut keys = String::with_capacity(self.keys.len());
            for slot in self.table.iter() {
                keys.push_str(slot.key(&self.keys));
            }
            tuple.serialize_element(&keys)?;
        } else {
            tuple.serialize_element(&self.keys)?;
        }
        tuple.serialize_element(&Pairs(self))?;
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
                let mut listed = Vec::with_capacity(pairs.len());
                let mut start = 0usize;
                for (len, count) in pairs {
                    let len = usize::try_from(len).map_err(|_| de::Error::custom("a key length overflows"))?;
                    let end = start.checked_add(len).filter(|&end| keys.is_char_boundary(end));
                    let end = end.ok_or_else(|| de::Error::custom("key lengths do not fit the keys"))?;
                    listed.push(Slot { prefix: prefix(&keys.as_bytes()[start..end]), start, len, count });
                    start = end;
                }
                if start != keys.len() {
                    return Err(de::Error::custom("key lengths do not add up to the keys"));
                }
                Ok(Counter { keys, table: HashTable::new(), listed })
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
    fn keys_that_share_their_first_bytes_or_differ_only_in_length_stay_apart() {
        // Slots compare the first 8 bytes inline, zero-padded: these keys collide there.
        let words = ["abc", "abc\0", "abc\0\0", "abcdefgh", "abcdefghi", "abcdefghj", "abcdefghij", "", "é", "ab"];
        let mut want = BTreeMap::new();
        let mut counter = Counter::new();
        // A fixed pseudo-random sequence (xorshift), so that growth and re-hashing happen
        // between counts of the same keys, and a round trip in the middle.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let suffix = if x.is_multiple_of(3) { (i % 97).to_string() } else { String::new() };
            let word = format!("{}{suffix}", words[(x % words.len() as u64) as usize]);
            counter.add(&word);
            *want.entry(word).or_insert(0u64) += 1;
            if i == 2_500 {
                counter = round_trip(&counter);
            }
        }
        assert_eq!(round_trip(&counter).into_sorted(), want);
        assert_eq!(counter.len(), want.len());
        for (word, n) in &want {
            assert_eq!(counter.get(word), *n, "{word:?}");
        }
        assert_eq!(counter.get("abc\0\0\0"), 0);
    }

    #[test]
    fn a_slot_matches_only_its_own_key() {
        // Hash collisions are rare, so the counting test above seldom reaches this comparison
        // with a key that shares a slot's inline prefix: check it directly.
        let keys = "abcabcdefghijabcdefghijklmnopqrst";
        let slot = |start: usize, len: usize| Slot {
            prefix: prefix(&keys.as_bytes()[start..start + len]),
            start,
            len,
            count: 1,
        };
        let (short, long, longer) = (slot(0, 3), slot(3, 10), slot(13, 20));
        for (key, is_short, is_long) in [
            (&b"abc"[..], true, false),
            (b"abc\0", false, false),
            (b"ab", false, false),
            (b"abcdefghij", false, true),
            (b"abcdefghik", false, false),
            (b"abcdefgh", false, false),
            (b"abcdefghijk", false, false),
        ] {
            assert_eq!(short.is(key, prefix(key), keys), is_short, "{key:?}");
            assert_eq!(long.is(key, prefix(key), keys), is_long, "{key:?}");
        }
        for (key, is_longer) in
            [(&b"abcdefghijklmnopqrst"[..], true), (b"abcdefghijklmnopqrsu", false), (b"abcdefghijXlmnopqrst", false)]
        {
            assert_eq!(longer.is(key, prefix(key), keys), is_longer, "{key:?}");
        }
    }

    #[test]
    fn a_prefix_is_the_first_eight_bytes_zero_padded() {
        let text = b"0123456789abcdef";
        for len in 0..=text.len() {
            let mut want = [0u8; 8];
            let n = len.min(8);
            want[..n].copy_from_slice(&text[..n]);
            assert_eq!(prefix(&text[..len]), u64::from_le_bytes(want), "{len}");
        }
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
