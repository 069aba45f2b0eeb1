//! How much of the table the expiry sweep covers per call: paced by the clock, not by traffic. The
//! whole table is swept once per [`SWEEP_PERIOD_MS`], a call sweeping the share of it that time has
//! made due. Paced by batches instead, a worker at a million packets a second would sweep a large table
//! several times a second and a worker receiving bursts of one frame would pay the sweep per packet;
//! paced by the clock, the cost per second is the table's size over the period whatever the load.
//! Expired flows are invisible to lookups and give way to new ones before the sweep reaches them, so
//! the sweep only keeps probe neighbourhoods short.

/// One pass over the whole table takes this long.
pub const SWEEP_PERIOD_MS: u64 = 10_000;
/// The most slots one call sweeps, however far behind the clock says the pass is: a worker that was
/// idle for a while catches up over several batches instead of stalling one.
pub const MOST_PER_CALL: usize = 256;

/// Where the current pass stands: when it began and how many slots it has swept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepPace {
    pass: Option<Pass>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pass {
    began_ms: u64,
    swept: usize,
}

impl SweepPace {
    /// Slots to sweep now, in a table of `slots`, and counts them as swept.
    pub fn due(&mut self, now_ms: u64, slots: usize) -> usize {
        let pass = self.pass.get_or_insert(Pass {
            began_ms: now_ms,
            swept: 0,
        });
        let mut due = 0;
        loop {
            let elapsed = now_ms.saturating_sub(pass.began_ms);
            let share = (slots as u128 * u128::from(elapsed.min(SWEEP_PERIOD_MS))
                / u128::from(SWEEP_PERIOD_MS)) as usize;
            let take = share.saturating_sub(pass.swept).min(MOST_PER_CALL - due);
            pass.swept += take;
            due += take;
            if pass.swept < slots || elapsed < SWEEP_PERIOD_MS {
                return due;
            }
            // The next pass begins where this one was due to end, or now if the worker lagged a
            // whole period: a debt older than that is not paid.
            pass.began_ms = if elapsed >= 2 * SWEEP_PERIOD_MS {
                now_ms
            } else {
                pass.began_ms + SWEEP_PERIOD_MS
            };
            pass.swept = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_call_starts_a_pass_and_sweeps_nothing() {
        let mut pace = SweepPace::default();
        assert_eq!(pace.due(5_000, 1 << 18), 0);
    }

    #[test]
    fn a_large_table_is_swept_in_shares_of_the_period() {
        let slots = 1 << 18;
        let mut pace = SweepPace::default();
        pace.due(0, slots);
        // 1 ms is 1/10,000 of the period: 26 of 262,144 slots.
        assert_eq!(pace.due(1, slots), 26);
        assert_eq!(
            pace.due(1, slots),
            0,
            "nothing more is due within the same millisecond"
        );
        assert_eq!(pace.due(2, slots), 52 - 26);
    }

    #[test]
    fn a_call_after_a_long_idle_sweeps_at_most_its_cap() {
        let slots = 1 << 18;
        let mut pace = SweepPace::default();
        pace.due(0, slots);
        assert_eq!(pace.due(4_000, slots), MOST_PER_CALL);
        assert_eq!(
            pace.due(4_000, slots),
            MOST_PER_CALL,
            "the debt is paid over later calls"
        );
    }

    #[test]
    fn a_small_table_is_swept_whole_once_a_period() {
        let mut pace = SweepPace::default();
        pace.due(0, 64);
        let swept: usize = (1..=10_000).map(|ms| pace.due(ms, 64)).sum();
        assert_eq!(swept, 64);
        let next: usize = (10_001..=20_000).map(|ms| pace.due(ms, 64)).sum();
        assert_eq!(next, 64);
    }

    #[test]
    fn a_worker_idle_for_periods_does_not_owe_them() {
        let mut pace = SweepPace::default();
        pace.due(0, 64);
        let first: usize = (1..=10_000).map(|ms| pace.due(ms, 64)).sum();
        assert_eq!(first, 64);
        // An hour without a batch: the pass that was under way is finished, and the next starts
        // now; it does not sweep 360 passes' worth.
        assert_eq!(pace.due(3_600_000, 64), 64);
        assert_eq!(pace.due(3_600_000, 64), 0);
        assert_eq!(pace.due(3_600_000 + SWEEP_PERIOD_MS / 2, 64), 32);
    }

    proptest! {
        /// Called at least every 6 ms, the sweep keeps the clock's pace exactly: by any time, it has
        /// swept the table once per whole period gone and the due share of the current one, and no
        /// call sweeps more than the cap.
        #[test]
        fn a_worker_called_often_sweeps_exactly_the_clocks_share(
            bits in 3u32..=18,
            steps in prop::collection::vec(0u64..=6, 1..10_000),
        ) {
            let slots = 1usize << bits;
            let mut pace = SweepPace::default();
            let mut now = 0u64;
            let mut swept = 0usize;
            pace.due(now, slots);
            for step in steps {
                now += step;
                let due = pace.due(now, slots);
                prop_assert!(due <= MOST_PER_CALL);
                swept += due;
                let periods = (now / SWEEP_PERIOD_MS) as usize;
                let share = slots * (now % SWEEP_PERIOD_MS) as usize / SWEEP_PERIOD_MS as usize;
                prop_assert_eq!(swept, periods * slots + share, "at {} ms", now);
            }
        }
    }
}
