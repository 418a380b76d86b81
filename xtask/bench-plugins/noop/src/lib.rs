//! A plugin that does nothing: `run` returns an empty partial and `aggregate` counts them.
//!
//! `cargo xtask bench` runs it over many tiny chunks to measure how fast the controller
//! dispatches chunks, with no plugin work to hide Kiln's own cost per chunk. It does not
//! implement `combine`, so every chunk's partial reaches `aggregate` and the output, the number
//! of chunks, shows that none was lost or counted twice.

use kiln_plugin_api::{Chunk, MapReduce};

/// The plugin; it takes no parameters.
pub struct Noop;

impl MapReduce for Noop {
    type Partial = ();
    type Output = u64;

    fn new(params: &str) -> Result<Self, String> {
        if params.trim().is_empty() { Ok(Noop) } else { Err(format!("noop takes no parameters, got {params:?}")) }
    }

    fn run(&self, _chunk: &Chunk<'_>) -> Result<(), String> {
        Ok(())
    }

    fn aggregate(&self, partials: Vec<()>) -> Result<u64, String> {
        Ok(partials.len() as u64)
    }
}

kiln_plugin_api::export_plugin!(Noop);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chunks() {
        let chunks = ["a\n", "b\n", "", "c\n"];
        assert_eq!(kiln_plugin_api::run_in_process::<Noop>("", &chunks).unwrap(), 4);
        assert!(Noop::new("x").is_err());
    }
}
