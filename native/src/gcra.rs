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

    /// The delay variation tolerance: how far ahead of now the TAT may run.
    fn burst_offset_ns(&self) -> u64 {
        self.emission_ns.saturating_mul(self.burst)
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
    let tat = tat.map_or(now, |t| t.max(now));
    let increment = limit.emission_ns.saturating_mul(cost);
    let new_tat = tat.saturating_add(increment);
    let allow_at = new_tat.saturating_sub(limit.burst_offset_ns());
    if allow_at > now {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after_ns: Some(allow_at - now),
            reset_after_ns: tat - now,
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        remaining: (now - allow_at) / limit.emission_ns,
        retry_after_ns: None,
        reset_after_ns: new_tat - now,
    };
    (decision, (cost > 0).then_some(new_tat))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn ten_per_second() -> Limit {
        Limit::per_period(10.0, 1.0, 10).unwrap()
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

    #[test]
    fn redis_rate_conformance_sequence() {
        let limit = ten_per_second();
        let mut key = Key { tat: None };
        let now = 1_000 * S;

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

    #[test]
    fn cost_zero_only_reads() {
        let limit = ten_per_second();
        let mut key = Key { tat: None };
        let d = key.check(&limit, 5 * S, 0);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_after_ns), (10, 0));
        assert_eq!(key.tat, None);

        key.check(&limit, 5 * S, 1);
        let before = key.tat;
        let d = key.check(&limit, 5 * S, 0);
        assert_eq!((d.allowed, d.remaining), (true, 9));
        assert_eq!(key.tat, before);
    }

    #[test]
    fn burst_then_one_per_emission_interval() {
        let limit = ten_per_second();
        let mut key = Key { tat: None };
        let t0 = 7 * S;
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

    #[test]
    fn idle_key_recovers_full_burst() {
        let limit = ten_per_second();
        let mut key = Key { tat: None };
        for _ in 0..10 {
            key.check(&limit, S, 1);
        }
        let d = key.check(&limit, S + 10 * S, 0);
        assert_eq!(d.remaining, 10);
        assert_eq!(d.reset_after_ns, 0);
    }

    #[test]
    fn cost_above_burst_never_passes_and_changes_nothing() {
        let limit = Limit::per_period(5.0, 1.0, 3).unwrap();
        let mut key = Key { tat: None };
        let d = key.check(&limit, S, 4);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, Some(200 * MS));
        assert_eq!(key.tat, None);
        // The full burst is still there.
        assert!(key.check(&limit, S, 3).allowed);
    }

    #[test]
    fn a_tat_in_the_past_counts_as_now() {
        let limit = ten_per_second();
        let (d, tat) = decide(&limit, Some(3), 10 * S, 1);
        assert!(d.allowed);
        assert_eq!(tat, Some(10 * S + 100 * MS));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let limit = Limit::new(u64::MAX / 2, u64::MAX).unwrap();
        let (d, _) = decide(&limit, Some(u64::MAX - 1), u64::MAX - 10, u64::MAX);
        assert!(d.allowed || d.retry_after_ns.is_some());
        let limit = Limit::new(1, 1).unwrap();
        let (d, tat) = decide(&limit, None, u64::MAX, 1);
        assert!(d.allowed);
        assert_eq!(tat, Some(u64::MAX));
        let (d, _) = decide(&limit, Some(u64::MAX), 0, u64::MAX);
        assert!(!d.allowed);
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
