//! meshpath-perf: the benchmark harness. Each scenario is a subcommand that prints a table, or with
//! `--json` one JSON object of its figures.

fn main() {}
