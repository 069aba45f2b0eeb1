//! Waiting on a condition with a deadline.
//!
//! A probe returns `Ok(value)` once the condition holds, or `Err(state)`: what it saw instead, which
//! the timeout reports. Probes are retried with a short backoff (10 ms growing to 100 ms), so a fast
//! condition is seen at once and a slow one costs little CPU on a shared machine.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// A condition that did not hold in time: what was awaited, for how long, and what was last seen.
#[derive(Debug)]
pub struct Timeout {
    pub what: String,
    pub after: Duration,
    pub last: String,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}; last seen: {}",
            self.after, self.what, self.last
        )
    }
}

impl std::error::Error for Timeout {}

/// Calls `probe` until it returns `Ok`, at most for `timeout`; the error names `what` and carries the
/// last `Err` the probe gave.
pub fn until<T, E: fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> Result<T, Timeout> {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match probe() {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if start.elapsed() >= timeout {
            return Err(timeout_of(what, start, &last));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`until`] for async probes, sleeping on tokio's timer between tries.
pub async fn until_async<T, E: fmt::Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<T, Timeout> {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if start.elapsed() >= timeout {
            return Err(timeout_of(what, start, &last));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

fn timeout_of(what: &str, start: Instant, last: &impl fmt::Debug) -> Timeout {
    Timeout {
        what: what.to_owned(),
        after: start.elapsed(),
        last: format!("{last:?}"),
    }
}

/// A probe's `Err` for a boolean condition: `check(cond, state)` is `Ok(())` when `cond` holds, else
/// `Err(state)`.
pub fn check<E>(cond: bool, state: E) -> Result<(), E> {
    if cond {
        Ok(())
    } else {
        Err(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut tries = 0;
        let got = until("the third try", Duration::from_secs(10), || {
            tries += 1;
            if tries == 3 {
                Ok(tries)
            } else {
                Err(tries)
            }
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn a_timeout_says_what_was_awaited_and_what_was_last_seen() {
        let err = until("a count of 5", Duration::from_millis(30), || {
            Err::<(), _>("count 4")
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("waiting for a count of 5"), "{text}");
        assert!(text.contains("last seen: \"count 4\""), "{text}");
        assert!(err.after >= Duration::from_millis(30));
    }

    #[test]
    fn the_async_form_waits_on_the_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut tries = 0;
        let got = rt.block_on(until_async(
            "the second try",
            Duration::from_secs(10),
            || {
                tries += 1;
                let n = tries;
                async move { check(n >= 2, n).map(|()| n) }
            },
        ));
        assert_eq!(got.unwrap(), 2);
    }
}
