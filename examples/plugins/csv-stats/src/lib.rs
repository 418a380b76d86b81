//! CSV statistics: count, sum, minimum, maximum and mean of one numeric column.
//!
//! Params: the column's 0-based index. Each line is split on `,` (no quoting). Lines whose
//! column, trimmed, is a finite number are counted; the others (a header, a blank line, a
//! missing column, text, `NaN`, `inf`) are counted as `skipped`. Output:
//! `{"count","sum","min","max","mean","skipped"}`, with `min`, `max` and `mean` null when no
//! line was counted.

use std::cmp::Ordering;

use kiln_plugin_api::partial::Merge;
use kiln_plugin_api::{Chunk, MapReduce};
use serde::{Deserialize, Serialize};

/// The plugin: which column to read.
pub struct CsvStats {
    column: usize,
}

/// The statistics of some consecutive lines.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Partial {
    count: u64,
    skipped: u64,
    sum: ExactSum,
    min: Option<f64>,
    max: Option<f64>,
}

/// The job's result.
#[derive(Debug, PartialEq, Serialize)]
pub struct Output {
    /// Lines whose column is a finite number.
    pub count: u64,
    /// The sum of those numbers, correctly rounded.
    pub sum: f64,
    /// The smallest of those numbers; `None` (null) if there are none.
    pub min: Option<f64>,
    /// The largest of those numbers; `None` (null) if there are none.
    pub max: Option<f64>,
    /// `sum / count`; `None` (null) if there are no numbers.
    pub mean: Option<f64>,
    /// Lines without a number in the column.
    pub skipped: u64,
}

impl MapReduce for CsvStats {
    type Partial = Partial;
    type Output = Output;

    fn new(params: &str) -> Result<Self, String> {
        let params = params.trim();
        if params.is_empty() {
            return Err("csv-stats needs the 0-based index of a column as its parameter".to_owned());
        }
        let column = params
            .parse()
            .map_err(|e| format!("invalid column index {params:?}: {e}; give a 0-based index such as 2"))?;
        Ok(CsvStats { column })
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Partial, String> {
        let mut partial = Partial::default();
        for line in chunk.lines() {
            let value = line.split(',').nth(self.column).and_then(|field| field.trim().parse::<f64>().ok());
            match value {
                Some(x) if x.is_finite() => partial.add(x),
                _ => partial.skipped += 1,
            }
        }
        Ok(partial)
    }

    // No `combine`: `Partial` implements `Merge`, and Kiln combines with that.

    fn aggregate(&self, partials: Vec<Partial>) -> Result<Output, String> {
        let total = Partial::merge_all(partials);
        let sum = total.sum.value();
        Ok(Output {
            count: total.count,
            sum,
            min: total.min,
            max: total.max,
            mean: (total.count > 0).then(|| sum / total.count as f64),
            skipped: total.skipped,
        })
    }
}

kiln_plugin_api::export_plugin!(CsvStats);

impl Partial {
    fn add(&mut self, x: f64) {
        self.count += 1;
        self.sum.add(x);
        self.min = Some(extreme(self.min, x, Ordering::Less));
        self.max = Some(extreme(self.max, x, Ordering::Greater));
    }
}

/// The statistics of some lines followed by others. (Not the API's `Min` and `Max`: IEEE's
/// `PartialOrd` calls -0.0 and 0.0 equal, so which one they keep would depend on the split.)
impl Merge for Partial {
    fn merge(&mut self, other: Partial) {
        self.count += other.count;
        self.skipped += other.skipped;
        self.sum.merge(&other.sum);
        if let Some(min) = other.min {
            self.min = Some(extreme(self.min, min, Ordering::Less));
        }
        if let Some(max) = other.max {
            self.max = Some(extreme(self.max, max, Ordering::Greater));
        }
    }
}

/// `x` if it is beyond `current` in direction `wanted`, else `current`. IEEE's total order
/// tells -0.0 from 0.0, so the result does not depend on the order of the values.
fn extreme(current: Option<f64>, x: f64, wanted: Ordering) -> f64 {
    match current {
        Some(current) if x.total_cmp(&current) != wanted => current,
        _ => x,
    }
}

/// An exact sum of floating-point numbers (Shewchuk's algorithm, as in Python's `math.fsum`).
///
/// The sum is kept as a few non-overlapping parts whose total is exact, and rounded once at the
/// end. A plain `f64` sum would depend on the order of the additions, so the result would
/// change with the split of the input into chunks and with the way Kiln combines partials;
/// this one does not.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ExactSum {
    /// Non-overlapping parts, by increasing magnitude; rarely more than two or three.
    parts: Vec<f64>,
}

impl ExactSum {
    fn add(&mut self, mut x: f64) {
        let mut kept = 0;
        for j in 0..self.parts.len() {
            let mut y = self.parts[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            // `hi + lo == x + y` exactly (Fast2Sum, valid as |x| >= |y|).
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.parts[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.parts.truncate(kept);
        self.parts.push(x);
    }

    fn merge(&mut self, other: &ExactSum) {
        for &x in &other.parts {
            self.add(x);
        }
    }

    /// The exact sum rounded to the nearest `f64` (ties to even). It is NaN if the sum
    /// overflowed, which JSON shows as null.
    fn value(&self) -> f64 {
        let parts = &self.parts;
        let Some(mut n) = parts.len().checked_sub(1) else {
            return 0.0;
        };
        let mut hi = parts[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = parts[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // When the rest is exactly half an ulp, the parts below decide which way to round.
        if n > 0 && ((lo < 0.0 && parts[n - 1] < 0.0) || (lo > 0.0 && parts[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(params: &str, chunks: &[&str]) -> Output {
        kiln_plugin_api::run_in_process::<CsvStats>(params, chunks).unwrap()
    }

    #[test]
    fn summarises_a_column() {
        let output = stats("1", &["name,price\n", "a, 2.5 ,x\nb,-1\n", "c,4\n"]);
        let expected =
            Output { count: 3, sum: 5.5, min: Some(-1.0), max: Some(4.0), mean: Some(5.5 / 3.0), skipped: 1 };
        assert_eq!(output, expected);
    }

    #[test]
    fn skips_missing_columns_and_non_numbers() {
        let output = stats("2", &["1,2,3\n", "1,2\n", "\n", "1,2,x\n", "1,2,NaN\n", "1,2,inf\n", "1,2,1e3\r\n"]);
        assert_eq!((output.count, output.sum, output.skipped), (2, 1003.0, 5));
    }

    #[test]
    fn no_numbers_give_nulls() {
        let json = serde_json::to_string(&stats("0", &["a\n", "b\n"])).unwrap();
        assert_eq!(json, r#"{"count":0,"sum":0.0,"min":null,"max":null,"mean":null,"skipped":2}"#);
        let json = serde_json::to_string(&stats("0", &[])).unwrap();
        assert_eq!(json, r#"{"count":0,"sum":0.0,"min":null,"max":null,"mean":null,"skipped":0}"#);
    }

    #[test]
    fn the_split_does_not_change_the_sum() {
        // Added left to right in f64 these give 1.6000000000000003, and other groupings other
        // sums; the exact sum, rounded once, is 2.6.
        let lines = ["1e16\n", "1\n", "-1e16\n", "1\n", "0.1\n", "0.2\n", "0.3\n"];
        let whole = stats("0", &[&lines.concat()]);
        let split = stats("0", &lines);
        let reversed: Vec<&str> = lines.iter().rev().copied().collect();
        assert_eq!(whole.sum, 2.6);
        assert_eq!(split, whole);
        assert_eq!(stats("0", &reversed), whole);
    }

    #[test]
    fn exact_sum_rounds_correctly() {
        let cases: [(&[f64], f64); 4] = [
            (&[0.1; 10], 1.0),
            (&[1e100, 1.0, -1e100, 1e-100], 1.0),
            (&[1.0, 1e-16, 1e-16], 1.0000000000000002),
            (&[], 0.0),
        ];
        for (values, expected) in cases {
            let mut sum = ExactSum::default();
            values.iter().for_each(|&x| sum.add(x));
            assert_eq!(sum.value(), expected, "{values:?}");
        }
        let mut overflowed = ExactSum::default();
        overflowed.add(f64::MAX);
        overflowed.add(f64::MAX);
        assert!(overflowed.value().is_nan());
    }

    #[test]
    fn min_and_max_do_not_depend_on_order() {
        let a = stats("0", &["0\n", "-0\n"]);
        let b = stats("0", &["-0\n", "0\n"]);
        assert_eq!(a.min.map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!(a.min.map(f64::to_bits), b.min.map(f64::to_bits));
        assert_eq!(a.max.map(f64::to_bits), b.max.map(f64::to_bits));
    }

    #[test]
    fn combine_merges_partials() {
        let plugin = CsvStats::new("0").unwrap();
        let first = plugin.run(&Chunk::new("3\nx\n", 1)).unwrap();
        let second = plugin.run(&Chunk::new("5\n", 3)).unwrap();
        let merged = Partial::merge_all(vec![first, second]);
        let output = plugin.aggregate(vec![merged, Partial::default()]).unwrap();
        let expected = Output { count: 2, sum: 8.0, min: Some(3.0), max: Some(5.0), mean: Some(4.0), skipped: 1 };
        assert_eq!(output, expected);
    }

    #[test]
    fn rejects_a_bad_column_index() {
        let error = CsvStats::new("-1").err().unwrap();
        assert!(error.starts_with("invalid column index \"-1\": "), "{error}");
        let error = CsvStats::new(" ").err().unwrap();
        assert_eq!(error, "csv-stats needs the 0-based index of a column as its parameter");
    }
}
