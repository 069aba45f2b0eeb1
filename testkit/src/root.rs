//! Root-only tests (namespaces, XDP, AF_XDP): skipped visibly when not root, and refused as failures
//! where a skip is not allowed.
//!
//! A test calls `if !needs_root("name") { return; }` first. Not root, it either
//! - skips, writing `SKIPPED name: needs root` straight to the process's stderr, which the test
//!   harness does not capture (it captures `eprintln!` only), so a developer's `cargo test` shows it
//!   once per test whatever `--nocapture` says; or
//! - fails, when `MESHPATH_REQUIRE_ROOT_TESTS` is set: `scripts/test` sets it (it runs as root), so
//!   CI fails on any root test that did not run.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Mutex;

/// Set (to anything) where every root test must run: a skip is then a failure.
pub const REQUIRE_ROOT: &str = "MESHPATH_REQUIRE_ROOT_TESTS";

/// Whether the calling test may go on: true as root. Otherwise reports `test` as skipped (once per
/// process, for property tests that ask on every case) or panics where skipping is refused.
pub fn needs_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return true;
    }
    if std::env::var_os(REQUIRE_ROOT).is_some() {
        panic!("{test} needs root but runs as uid {uid}, and {REQUIRE_ROOT} forbids skipping it");
    }
    report_skip(test);
    false
}

fn report_skip(test: &str) {
    static REPORTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = REPORTED
        .lock()
        .map(|mut seen| seen.insert(test.to_owned()))
        .unwrap_or(true);
    if first {
        // Straight to fd 2: `eprintln!` would be captured by the harness and shown only on failure.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs root");
    }
}
