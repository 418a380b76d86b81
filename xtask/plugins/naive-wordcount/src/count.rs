//! The counting code, shared word for word by the plugin and by xtask's plain program.

use std::collections::{BTreeMap, HashMap};

/// Counts the words of some lines: a `String` per word, the standard `HashMap`.
pub fn count<'a>(lines: impl Iterator<Item = &'a str>) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for line in lines {
        for word in line.split_whitespace() {
            *counts.entry(word.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Adds counts up into a sorted map.
pub fn add_up(parts: Vec<HashMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut total = HashMap::new();
    for part in parts {
        for (word, n) in part {
            *total.entry(word).or_insert(0) += n;
        }
    }
    total.into_iter().collect()
}
