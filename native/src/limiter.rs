//! A keyed, sharded, thread-safe store of GCRA states with bounded memory.
//!
//! A key whose TAT is not after `now` carries no information (it decides exactly like a key never
//! seen), so a shard drops such keys whenever it has doubled in size since its last sweep. Memory
//! is therefore bounded by the keys active within one reset window, whatever the key churn.

use crate::gcra::{decide, Decision, Limit};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

const SHARDS: usize = 64;
const MIN_SWEEP_LEN: usize = 1024;

#[derive(Default)]
struct Shard {
    tats: HashMap<Box<str>, u64>,
    sweep_at_len: usize,
}

impl Shard {
    /// Drops expired keys once the shard has doubled since the last sweep (amortized O(1)).
    fn maybe_sweep(&mut self, now: u64) {
        if self.tats.len() >= self.sweep_at_len.max(MIN_SWEEP_LEN) {
            self.tats.retain(|_, tat| *tat > now);
            self.sweep_at_len = self.tats.len() * 2;
        }
    }

    fn tat(&self, key: &str) -> Option<u64> {
        self.tats.get(key).copied()
    }

    fn store(&mut self, key: &str, tat: u64, now: u64) {
        // Look up by `&str` first so updating a known key never allocates.
        match self.tats.get_mut(key) {
            Some(slot) => *slot = tat,
            None => {
                self.maybe_sweep(now);
                self.tats.insert(key.into(), tat);
            }
        }
    }
}

/// Keyed GCRA limiter state for one process.
pub struct KeyedLimiter {
    shards: Vec<Mutex<Shard>>,
}

impl Default for KeyedLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyedLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        KeyedLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard_index(key: &str) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() as usize) % SHARDS
    }

    fn lock(&self, index: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a half-written TAT behind (stores are single
        // writes), so a poisoned lock is safe to keep using.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides one request of `cost` for `key` at `now` and stores the new state.
    pub fn check(&self, key: &str, limit: &Limit, cost: u64, now: u64) -> Decision {
        let mut shard = self.lock(Self::shard_index(key));
        let (decision, new_tat) = decide(limit, shard.tat(key), now, cost);
        if let Some(tat) = new_tat {
            shard.store(key, tat, now);
        }
        decision
    }

    /// Decides one request against several limits at once: it passes only if every limit allows
    /// it, and a denied request consumes from none of them. Returns one decision per limit, in
    /// order. The same key may not appear twice.
    pub fn check_all(&self, items: &[(&str, Limit)], cost: u64, now: u64) -> Vec<Decision> {
        // Lock the shards involved in index order so concurrent callers cannot deadlock.
        let shard_of_item: Vec<usize> = items.iter().map(|(k, _)| Self::shard_index(k)).collect();
        let mut locked = shard_of_item.clone();
        locked.sort_unstable();
        locked.dedup();
        let mut guards: Vec<_> = locked.iter().map(|&i| self.lock(i)).collect();
        // Position of each item's shard among the guards.
        let slot: Vec<usize> = shard_of_item
            .iter()
            .map(|i| locked.binary_search(i).unwrap_or(0))
            .collect();

        let outcomes: Vec<(Decision, Option<u64>)> = items
            .iter()
            .zip(&slot)
            .map(|((key, limit), &g)| decide(limit, guards[g].tat(key), now, cost))
            .collect();
        if outcomes.iter().all(|(d, _)| d.allowed) {
            for (((key, _), &g), (_, new_tat)) in items.iter().zip(&slot).zip(&outcomes) {
                if let Some(tat) = new_tat {
                    guards[g].store(key, *tat, now);
                }
            }
            return outcomes.into_iter().map(|(d, _)| d).collect();
        }
        // Someone denied: nothing is consumed, and an allowing limit reports what it still has.
        items
            .iter()
            .zip(&slot)
            .zip(outcomes)
            .map(|(((key, limit), &g), (d, _))| {
                if d.allowed {
                    decide(limit, guards[g].tat(key), now, 0).0
                } else {
                    d
                }
            })
            .collect()
    }

    /// What `check_all` would answer for a request of `cost` at `now`, changing nothing.
    ///
    /// With states learned from an authoritative store (`raise_tat`), a denial here is a denial
    /// there: the store's TAT is at least the one held here and never moves backwards.
    pub fn peek_all(&self, items: &[(&str, Limit)], cost: u64, now: u64) -> Vec<Decision> {
        items
            .iter()
            .map(|(key, limit)| {
                let tat = self.lock(Self::shard_index(key)).tat(key);
                decide(limit, tat, now, cost).0
            })
            .collect()
    }

    /// Records that `key`'s TAT is at least `tat` (keeping the later of the two). A TAT not
    /// after `now` carries no information and is not stored.
    pub fn raise_tat(&self, key: &str, tat: u64, now: u64) {
        if tat <= now {
            return;
        }
        let mut shard = self.lock(Self::shard_index(key));
        if shard.tat(key).is_none_or(|held| held < tat) {
            shard.store(key, tat, now);
        }
    }

    /// How many keys are held (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).tats.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every key whose state has expired at `now`.
    pub fn sweep(&self, now: u64) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.tats.retain(|_, tat| *tat > now);
            shard.sweep_at_len = shard.tats.len() * 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const S: u64 = 1_000_000_000;

    fn limit(rate: f64, burst: i64) -> Limit {
        Limit::per_period(rate, 1.0, burst).unwrap()
    }

    #[test]
    fn keys_are_independent() {
        let l = KeyedLimiter::new();
        let lim = limit(1.0, 1);
        assert!(l.check("a", &lim, 1, S).allowed);
        assert!(!l.check("a", &lim, 1, S).allowed);
        assert!(l.check("b", &lim, 1, S).allowed);
    }

    #[test]
    fn expired_keys_are_dropped_and_memory_stays_bounded() {
        let l = KeyedLimiter::new();
        let lim = limit(10.0, 1);
        // 200k distinct keys, each idle again 100 ms after its only request.
        for i in 0..200_000u64 {
            let now = i * 1_000_000; // 1 ms apart
            l.check(&format!("user:{i}"), &lim, 1, now);
        }
        // Only keys from the last ~100 ms can still be live, plus at most one unswept doubling.
        assert!(
            l.len() < 2 * (SHARDS * MIN_SWEEP_LEN) + 200,
            "len {}",
            l.len()
        );
        l.sweep(200_000 * 1_000_000 + S);
        assert!(l.is_empty());
    }

    #[test]
    fn check_all_consumes_nothing_when_one_denies() {
        let l = KeyedLimiter::new();
        let wide = limit(100.0, 100);
        let narrow = limit(1.0, 1);
        let d = l.check_all(&[("wide", wide), ("narrow", narrow)], 1, S);
        assert!(d.iter().all(|d| d.allowed));
        assert_eq!(d[0].remaining, 99);

        let d = l.check_all(&[("wide", wide), ("narrow", narrow)], 1, S);
        assert!(d[0].allowed && !d[1].allowed);
        assert_eq!(d[0].remaining, 99, "the wide limit must not be charged");
        assert!(d[1].retry_after_ns.is_some());
        assert_eq!(l.check("wide", &wide, 0, S).remaining, 99);
    }

    #[test]
    fn peek_changes_nothing_and_raised_tats_only_move_forward() {
        let l = KeyedLimiter::new();
        let lim = limit(10.0, 2); // 100 ms apart, 2 at once
        let peeked = l.peek_all(&[("k", lim)], 1, S);
        assert!(peeked[0].allowed);
        assert!(l.is_empty(), "a peek must not store anything");

        // An authoritative store says the TAT is 300 ms ahead: one more request is 100 ms away.
        l.raise_tat("k", S + 300 * 1_000_000, S);
        let d = l.peek_all(&[("k", lim)], 1, S)[0];
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, Some(200 * 1_000_000));
        assert!(l.peek_all(&[("k", lim)], 1, S + 200 * 1_000_000)[0].allowed);

        // An older observation never lowers what is known; one in the past is not stored.
        l.raise_tat("k", S + 100 * 1_000_000, S);
        assert!(!l.peek_all(&[("k", lim)], 1, S)[0].allowed);
        l.raise_tat("gone", S - 1, S);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn check_all_peek_and_raise_answer_the_same_at_every_clock_origin() {
        // Hour-long limits from one second and a few minutes after boot (a monotonic clock on a
        // fresh machine) to an epoch-like clock: the answers may not depend on the origin.
        let hour = 3_600 * S;
        let user = Limit::per_period(2.0, 3_600.0, 2).unwrap();
        let model = Limit::per_period(3.0, 3_600.0, 3).unwrap();
        let run = |origin: u64| {
            let l = KeyedLimiter::new();
            let mut answers = Vec::new();
            for (user_key, at) in [
                ("alice", 0),
                ("alice", 0),
                ("alice", 0),
                ("bob", 0),
                ("bob", 1),
            ] {
                answers.extend(l.check_all(&[(user_key, user), ("model", model)], 1, origin + at));
            }
            answers.extend(l.peek_all(&[("model", model)], 1, origin + 700 * S));
            l.raise_tat("carol", origin + hour, origin);
            answers.extend(l.peek_all(&[("carol", user)], 1, origin));
            l.sweep(origin + 2 * hour);
            (answers, l.len())
        };
        let (reference, held) = run(1_700_000_000 * S);
        assert_eq!(held, 0, "every key has expired two hours later");
        // Alice's third request is refused by her own limit; the model has one left for Bob.
        assert!(!reference[4].allowed && reference[5].allowed);
        assert_eq!(reference[5].remaining, 1);
        assert_eq!(
            reference[7].remaining, 0,
            "Bob took the model's last request"
        );
        assert!(!reference[9].allowed, "the model limit is spent");
        assert_eq!(reference[8].remaining, 1, "the denial charged Bob nothing");
        assert_eq!(reference[11].retry_after_ns, Some(hour / 2));
        for origin in [S, 700 * S, 1_000_000 * S, u64::MAX - 10 * hour] {
            assert_eq!(run(origin), (reference.clone(), 0), "origin {origin}");
        }
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_burst() {
        let l = Arc::new(KeyedLimiter::new());
        let lim = limit(1.0, 1000);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| l.check("hot", &lim, 1, S).allowed)
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 1000);
    }
}
