//! GCRA (generic cell rate algorithm) in integer nanoseconds.
//!
//! The state of one key is its theoretical arrival time (TAT). Time is always passed in, never
//! read here, so the same function serves the in-process limiter, the exact local deny cache in
//! front of Redis, and tests with a fake clock. The semantics are those of redis_rate (and
//! redis-cell): `burst` requests may pass at once, then one every `period / rate`.

use std::fmt;

/// Why a limit could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// `rate` was not a positive, finite number.
    Rate,
    /// `period` was not a positive, finite duration.
    Period,
    /// `burst` was below 1.
    Burst,
    /// `period / rate` is below one nanosecond, or too large to represent.
    Interval,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitError::Rate => "rate must be a positive, finite number",
            LimitError::Period => "period must be a positive, finite number of seconds",
            LimitError::Burst => "burst must be at least 1",
            LimitError::Interval => {
                "period / rate must be between 1 nanosecond and about 292 years"
            }
        })
    }
}

impl std::error::Error for LimitError {}

/// One limit: `rate` requests per `period`, `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Nanoseconds between two requests at the sustained rate (`period / rate`).
    pub emission_ns: u64,
    /// How many requests may pass at once.
    pub burst: u64,
}

impl Limit {
    /// A limit from an emission interval in nanoseconds and a burst size.
    pub fn new(emission_ns: u64, burst: u64) -> Result<Self, LimitError> {
        if emission_ns == 0 {
            return Err(LimitError::Interval);
        }
        if burst == 0 {
            return Err(LimitError::Burst);
        }
        Ok(Limit { emission_ns, burst })
    }

    /// A limit of `rate` per `period_s` seconds, rounding the emission interval to the nearest
    /// nanosecond.
    pub fn per_period(rate: f64, period_s: f64, burst: i64) -> Result<Self, LimitError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LimitError::Rate);
        }
        if !(period_s.is_finite() && period_s > 0.0) {
            return Err(LimitError::Period);
        }
        if burst < 1 {
            return Err(LimitError::Burst);
        }
        let emission = (period_s * 1e9 / rate).round();
        if !(emission >= 1.0 && emission < u64::MAX as f64) {
            return Err(LimitError::Interval);
        }
        // The range check above makes the cast exact up to float rounding, never wrapping.
        Limit::new(emission as u64, burst as u64)
    }

    /// The delay variation tolerance: how far ahead of now the TAT may run. Exact (`u128`), so a
    /// limit whose window exceeds the `u64` range still decides correctly.
    fn burst_offset_ns(&self) -> u128 {
        u128::from(self.emission_ns) * u128::from(self.burst)
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request passes.
    pub allowed: bool,
    /// How many more requests of cost 1 would pass right now.
    pub remaining: u64,
    /// When denied: nanoseconds until the same request would pass. `None` when allowed.
    pub retry_after_ns: Option<u64>,
    /// Nanoseconds until the key is back to a full burst (its state can be forgotten then).
    pub reset_after_ns: u64,
}

/// Decide a request of `cost` against `limit` for a key whose stored TAT is `tat` (`None` for a
/// key never seen or forgotten), at time `now`. Returns the decision and the TAT to store, which
/// is `None` when nothing changes (a denial, or a cost of 0).
///
/// A cost of 0 only reads. A cost above the burst can never pass and is denied without changing
/// anything; its retry-after is what redis_rate reports for it.
pub fn decide(limit: &Limit, tat: Option<u64>, now: u64, cost: u64) -> (Decision, Option<u64>) {
    // Everything is measured relative to `now` (how far the TAT runs ahead of it), never as an
    // absolute instant minus a window: `now - burst_offset` would clamp at 0 whenever the clock
    // reads less than the window (a monotonic clock reads seconds after boot) and change the
    // answer. Relative values of `u64` inputs fit in `u128` without any rounding or saturation
    // ((2^64 - 1)^2 + 2^64 - 1 < 2^128), so no answer depends on the clock's origin.
    let ahead = u128::from(tat.map_or(0, |t| t.saturating_sub(now)));
    let burst_offset = limit.burst_offset_ns();
    let emission = u128::from(limit.emission_ns);
    let new_ahead = ahead + emission * u128::from(cost);
    if new_ahead > burst_offset {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after_ns: Some(saturate(new_ahead - burst_offset)),
            reset_after_ns: saturate(ahead),
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        remaining: saturate((burst_offset - new_ahead) / emission),
        retry_after_ns: None,
        reset_after_ns: saturate(new_ahead),
    };
    // A TAT beyond the `u64` clock's range (a window of centuries from a clock near its end)
    // is stored as the clock's last instant: nothing could come after it anyway.
    let new_tat = saturate(u128::from(now) + new_ahead);
    (decision, (cost > 0).then_some(new_tat))
}

/// A `u128` duration or instant as `u64`, capped at `u64::MAX` (about 584 years of nanoseconds).
fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    const HOUR: u64 = 3_600 * S;

    /// Clock origins every sequence runs at: one second and a few minutes after boot (a
    /// monotonic clock on a fresh machine, smaller than an hour-long window), a host up for
    /// eleven days, an epoch-like clock, and the last hours of the `u64` range. The sequences
    /// below span less than ten hours, so every instant they use is representable at each.
    const ORIGINS: [u64; 5] = [
        S,
        700 * S,
        1_000_000 * S,
        1_700_000_000 * S,
        u64::MAX - 10 * HOUR,
    ];

    fn ten_per_second() -> Limit {
        Limit::per_period(10.0, 1.0, 10).unwrap()
    }

    /// Hour-long limits (windows longer than the smallest origins), and the limits of the
    /// gateway's default policies (`gateway/config.py`: per-tier admission and upstream limits,
    /// the per-model limits and the model default).
    fn limits_under_test() -> Vec<Limit> {
        let mut limits = vec![
            ten_per_second(),
            Limit::per_period(10.0, 3_600.0, 10).unwrap(),
            Limit::per_period(2.0, 3_600.0, 2).unwrap(),
            Limit::per_period(3.0, 3_600.0, 3).unwrap(),
            Limit::per_period(1.0, 3_600.0, 1).unwrap(),
        ];
        let per_minute = [
            (30, 10),
            (10, 8),
            (60, 20),
            (30, 16),
            (120, 40),
            (60, 32),
            (300, 60),
            (120, 64),
            (2_000, 200),
            (600, 60),
            (1_000, 100),
        ];
        for (rate, burst) in per_minute {
            limits.push(Limit::per_period(f64::from(rate), 60.0, burst).unwrap());
        }
        limits
    }

    /// Drives one key the way a store would.
    struct Key {
        tat: Option<u64>,
    }

    impl Key {
        fn check(&mut self, limit: &Limit, now: u64, cost: u64) -> Decision {
            let (decision, new_tat) = decide(limit, self.tat, now, cost);
            if let Some(t) = new_tat {
                self.tat = Some(t);
            }
            decision
        }
    }

    /// One step of a sequence: at `at` nanoseconds after the origin, a request of `cost`.
    type Step = (u64, u64);

    /// Every answer of `steps` on one fresh key, with stored TATs relative to `origin`.
    fn transcript(limit: &Limit, origin: u64, steps: &[Step]) -> Vec<(Decision, Option<u64>)> {
        let mut key = Key { tat: None };
        steps
            .iter()
            .map(|&(at, cost)| {
                let decision = key.check(limit, origin + at, cost);
                (decision, key.tat.map(|t| t - origin))
            })
            .collect()
    }

    /// A sequence that exercises every branch for `limit`: a read of a fresh key, the whole
    /// burst, a denial, a cost above the burst, one nanosecond early, on time, a cost of 2 once
    /// two intervals have passed, and full recovery after a long idle time.
    fn sequence(limit: &Limit) -> Vec<Step> {
        let e = limit.emission_ns;
        let window = e * limit.burst;
        let mut steps = vec![(0, 0)];
        steps.extend((0..limit.burst).map(|_| (0, 1)));
        steps.extend([
            (0, 1),
            (0, 0),
            (0, limit.burst + 1),
            (e - 1, 1),
            (e, 1),
            (e, 0),
            (3 * e, 2),
            (3 * e + window + 1, 0),
            (3 * e + window + 1, limit.burst),
        ]);
        steps
    }

    #[test]
    fn every_answer_is_the_same_at_every_clock_origin() {
        for limit in limits_under_test() {
            let steps = sequence(&limit);
            let reference = transcript(&limit, ORIGINS[2], &steps);
            for origin in ORIGINS {
                assert_eq!(
                    transcript(&limit, origin, &steps),
                    reference,
                    "{limit:?} at origin {origin}"
                );
            }
        }
    }

    #[test]
    fn the_sequence_gives_redis_rate_answers_for_every_limit() {
        for limit in limits_under_test() {
            let (e, burst) = (limit.emission_ns, limit.burst);
            let window = e * burst;
            for origin in ORIGINS {
                let answers = transcript(&limit, origin, &sequence(&limit));
                let context = format!("{limit:?} at origin {origin}");
                let mut answers = answers.iter().map(|(d, _)| *d);
                let mut next = || answers.next().unwrap();

                let d = next();
                assert_eq!(
                    (d.allowed, d.remaining, d.reset_after_ns),
                    (true, burst, 0),
                    "{context}"
                );
                for i in 0..burst {
                    let d = next();
                    assert!(d.allowed, "{context}: request {i} of the burst");
                    assert_eq!(d.remaining, burst - 1 - i, "{context}");
                    assert_eq!(d.reset_after_ns, (i + 1) * e, "{context}");
                }
                let d = next();
                assert_eq!((d.allowed, d.retry_after_ns), (false, Some(e)), "{context}");
                assert_eq!(d.reset_after_ns, window, "{context}");
                let d = next();
                assert_eq!((d.allowed, d.remaining), (true, 0), "{context}");
                let d = next();
                assert_eq!(d.retry_after_ns, Some((burst + 1) * e), "{context}");
                let d = next();
                assert_eq!((d.allowed, d.retry_after_ns), (false, Some(1)), "{context}");
                let d = next();
                assert_eq!(
                    (d.allowed, d.remaining, d.reset_after_ns),
                    (true, 0, window),
                    "{context}"
                );
                let d = next();
                assert_eq!((d.allowed, d.remaining), (true, 0), "{context}");
                let d = next();
                let expect = burst >= 2;
                assert_eq!(d.allowed, expect, "{context}: cost 2 after two intervals");
                let d = next();
                assert_eq!((d.remaining, d.reset_after_ns), (burst, 0), "{context}");
                assert!(next().allowed, "{context}: the full burst after idling");
            }
        }
    }

    #[test]
    fn redis_rate_conformance_sequence() {
        let limit = ten_per_second();
        for now in ORIGINS {
            let mut key = Key { tat: None };

            let d = key.check(&limit, now, 1);
            assert!(d.allowed);
            assert_eq!(
                (d.remaining, d.retry_after_ns, d.reset_after_ns),
                (9, None, 100 * MS)
            );

            let d = key.check(&limit, now, 2);
            assert!(d.allowed);
            assert_eq!((d.remaining, d.reset_after_ns), (7, 300 * MS));

            let d = key.check(&limit, now, 7);
            assert!(d.allowed);
            assert_eq!((d.remaining, d.reset_after_ns), (0, 1000 * MS));

            let d = key.check(&limit, now, 1000);
            assert!(!d.allowed);
            assert_eq!(d.remaining, 0);
            assert_eq!(d.retry_after_ns, Some(100 * S));
            assert_eq!(d.reset_after_ns, 1000 * MS);
            assert_eq!(key.tat, Some(now + S), "a denial must not move the TAT");
        }
    }

    #[test]
    fn hour_long_limits_count_remaining_from_the_first_second_after_boot() {
        // 10 per hour with a burst of 10 at one second after boot: the TAT (6 min ahead) is
        // smaller than the hour-long window, which is where clamping `tat - window` at 0 broke.
        let limit = Limit::per_period(10.0, 3_600.0, 10).unwrap();
        for now in ORIGINS {
            let mut key = Key { tat: None };
            let d = key.check(&limit, now, 1);
            assert_eq!((d.allowed, d.remaining), (true, 9), "origin {now}");
            let d = key.check(&limit, now + 700 * S, 3);
            assert_eq!((d.allowed, d.remaining), (true, 7), "origin {now}");
        }
    }

    #[test]
    fn cost_zero_only_reads() {
        let limit = ten_per_second();
        for origin in ORIGINS {
            let mut key = Key { tat: None };
            let d = key.check(&limit, origin, 0);
            assert!(d.allowed);
            assert_eq!((d.remaining, d.reset_after_ns), (10, 0));
            assert_eq!(key.tat, None);

            key.check(&limit, origin, 1);
            let before = key.tat;
            let d = key.check(&limit, origin, 0);
            assert_eq!((d.allowed, d.remaining), (true, 9));
            assert_eq!(key.tat, before);
        }
    }

    #[test]
    fn burst_then_one_per_emission_interval() {
        let limit = ten_per_second();
        for t0 in ORIGINS {
            let mut key = Key { tat: None };
            for i in 0..10 {
                let d = key.check(&limit, t0, 1);
                assert!(d.allowed, "request {i} of the burst");
                assert_eq!(d.remaining, 9 - i);
            }
            let d = key.check(&limit, t0, 1);
            assert!(!d.allowed);
            assert_eq!(d.retry_after_ns, Some(100 * MS));

            // One nanosecond early is still too early; on time passes.
            assert!(!key.check(&limit, t0 + 100 * MS - 1, 1).allowed);
            let d = key.check(&limit, t0 + 100 * MS, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, 0);
            // Exactly one more per interval after that.
            assert!(!key.check(&limit, t0 + 150 * MS, 1).allowed);
            assert!(key.check(&limit, t0 + 200 * MS, 1).allowed);
        }
    }

    #[test]
    fn idle_key_recovers_full_burst() {
        let limit = ten_per_second();
        for origin in ORIGINS {
            let mut key = Key { tat: None };
            for _ in 0..10 {
                key.check(&limit, origin, 1);
            }
            let d = key.check(&limit, origin + 10 * S, 0);
            assert_eq!(d.remaining, 10);
            assert_eq!(d.reset_after_ns, 0);
        }
    }

    #[test]
    fn cost_above_burst_never_passes_and_changes_nothing() {
        let limit = Limit::per_period(5.0, 1.0, 3).unwrap();
        for origin in ORIGINS {
            let mut key = Key { tat: None };
            let d = key.check(&limit, origin, 4);
            assert!(!d.allowed);
            assert_eq!(d.retry_after_ns, Some(200 * MS));
            assert_eq!(key.tat, None);
            // The full burst is still there.
            assert!(key.check(&limit, origin, 3).allowed);
        }
    }

    #[test]
    fn a_tat_in_the_past_counts_as_now() {
        let limit = ten_per_second();
        let (d, tat) = decide(&limit, Some(3), 10 * S, 1);
        assert!(d.allowed);
        assert_eq!(tat, Some(10 * S + 100 * MS));
    }

    #[test]
    fn windows_beyond_the_u64_range_decide_exactly() {
        // A window of 4 * (u64::MAX / 2) nanoseconds: `emission * burst` overflows `u64`.
        let limit = Limit::new(u64::MAX / 2, 4).unwrap();
        let (d, tat) = decide(&limit, None, S, 1);
        assert_eq!((d.allowed, d.remaining), (true, 3));
        assert_eq!(tat, Some(S + u64::MAX / 2));
        let (d, _) = decide(&limit, tat, S, 3);
        assert_eq!(
            (d.allowed, d.remaining),
            (true, 0),
            "three more fit the burst"
        );
        let (d, _) = decide(&limit, tat, S, 4);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, Some(u64::MAX / 2));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let limit = Limit::new(u64::MAX / 2, u64::MAX).unwrap();
        // The TAT runs 9 ns ahead and the cost takes the whole (exact, 128-bit) window.
        let (d, _) = decide(&limit, Some(u64::MAX - 1), u64::MAX - 10, u64::MAX);
        assert_eq!(
            (d.allowed, d.retry_after_ns, d.reset_after_ns),
            (false, Some(9), 9)
        );
        let limit = Limit::new(1, 1).unwrap();
        let (d, tat) = decide(&limit, None, u64::MAX, 1);
        assert!(d.allowed);
        assert_eq!(tat, Some(u64::MAX));
        let (d, _) = decide(&limit, Some(u64::MAX), 0, u64::MAX);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, Some(u64::MAX), "capped, not wrapped");
    }

    #[test]
    fn invalid_parameters() {
        assert_eq!(Limit::per_period(0.0, 1.0, 1), Err(LimitError::Rate));
        assert_eq!(Limit::per_period(-1.0, 1.0, 1), Err(LimitError::Rate));
        assert_eq!(Limit::per_period(f64::NAN, 1.0, 1), Err(LimitError::Rate));
        assert_eq!(Limit::per_period(1.0, 0.0, 1), Err(LimitError::Period));
        assert_eq!(
            Limit::per_period(1.0, f64::INFINITY, 1),
            Err(LimitError::Period)
        );
        assert_eq!(Limit::per_period(1.0, 1.0, 0), Err(LimitError::Burst));
        assert_eq!(Limit::per_period(1e12, 1.0, 1), Err(LimitError::Interval));
        assert_eq!(Limit::per_period(1e-30, 1.0, 1), Err(LimitError::Interval));
        assert_eq!(
            Limit::per_period(3.0, 1.0, 1).unwrap().emission_ns,
            333_333_333
        );
    }
}
