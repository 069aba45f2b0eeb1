//! How a scenario shows its figures: a readable table by default, one JSON object with `--json`;
//! both open with the measurement's [`Provenance`].

use serde::Serialize;

use crate::provenance::Provenance;

/// One scenario's results.
pub trait Report: Serialize {
    /// Human-readable lines: the table a person reads.
    fn lines(&self) -> Vec<String>;
}

/// A scenario's figures with what they were measured on: `{"provenance": {..}, <figures>}`.
#[derive(Serialize)]
struct Stamped<'a, R> {
    provenance: &'a Provenance,
    #[serde(flatten)]
    figures: &'a R,
}

/// Prints `report` as a table, or as one JSON object on stdout when `json` is set, each with
/// `provenance` (taken when the measurement began).
pub fn print<R: Report>(provenance: &Provenance, report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        let stamped = Stamped {
            provenance,
            figures: report,
        };
        println!("{}", serde_json::to_string(&stamped)?);
    } else {
        println!("{}", provenance.line());
        for line in report.lines() {
            println!("{line}");
        }
    }
    Ok(())
}

/// "3.2× over target" / "within target (41 %)": how far a figure is from a target that caps it.
pub fn against_ceiling(value: f64, target: f64) -> String {
    if value <= target {
        format!("within target ({:.0} % of it)", 100.0 * value / target)
    } else {
        format!("{:.1}× over target", value / target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_how_far_from_a_ceiling() {
        assert_eq!(against_ceiling(25.0, 50.0), "within target (50 % of it)");
        assert_eq!(against_ceiling(150.0, 50.0), "3.0× over target");
    }
}
