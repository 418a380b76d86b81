//! Word count as a newcomer writes it (see the README).

mod count;

use std::collections::{BTreeMap, HashMap};

use kiln_plugin_api::{Chunk, MapReduce};

pub struct NaiveWordCount;

impl MapReduce for NaiveWordCount {
    type Partial = HashMap<String, u64>;
    type Output = BTreeMap<String, u64>;

    fn new(_params: &str) -> Result<Self, String> {
        Ok(NaiveWordCount)
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Self::Partial, String> {
        Ok(count::count(chunk.lines()))
    }

    fn aggregate(&self, partials: Vec<Self::Partial>) -> Result<Self::Output, String> {
        Ok(count::add_up(partials))
    }
}

kiln_plugin_api::export_plugin!(NaiveWordCount);
