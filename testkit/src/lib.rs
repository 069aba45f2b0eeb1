//! Helpers for meshpath's tests, one owner for each, imported by every crate's tests (a dev-dependency
//! only; nothing here reaches a shipped binary).
//!
//! - [`wait`]: wait until a condition holds, with a deadline, and say what was awaited when it does not
//!   — instead of a fixed sleep followed by an exact count, which flakes on a loaded machine.
//! - [`root`]: root-only tests skip visibly when not root, and fail instead of skipping where skipping is
//!   not allowed (`scripts/test`, hence CI).

pub mod root;
pub mod wait;

pub use root::needs_root;
pub use wait::{until, until_async, Timeout};
