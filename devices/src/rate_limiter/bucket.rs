//! Firecracker's token bucket: `size` tokens refilled evenly over `refill_time` ms, plus
//! an initial `one_time_burst` spent first and never refilled.

use std::time::{Duration, Instant};

const NANOS_PER_MS: u64 = 1_000_000;

fn gcd(mut x: u64, mut y: u64) -> u64 {
    while y != 0 {
        (x, y) = (y, x % y);
    }
    x
}

/// What [`TokenBucket::reduce`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum BucketReduction {
    /// Not enough tokens: nothing was taken.
    Failure,
    /// The tokens were taken.
    Success,
    /// More than the whole bucket was asked for: it was emptied, and the caller should
    /// wait this many refill periods before the next request.
    OverConsumption(f64),
}

/// A token bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    initial_one_time_burst: u64,
    refill_time_ms: u64,
    one_time_burst: u64,
    budget: u64,
    last_update: Instant,
    // size / refill time in ns, reduced by their gcd: tokens per ns as a fraction whose
    // products stay small enough for u128 arithmetic.
    processed_capacity: u64,
    processed_refill_time: u64,
}

impl TokenBucket {
    /// A full bucket; `None` when `size` or `refill_time_ms` is 0 (no limit).
    pub fn new(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<Self> {
        if size == 0 || refill_time_ms == 0 {
            return None;
        }
        let refill_ns = refill_time_ms.checked_mul(NANOS_PER_MS)?;
        let common = gcd(size, refill_ns);
        Some(Self {
            size,
            initial_one_time_burst: one_time_burst,
            refill_time_ms,
            one_time_burst,
            budget: size,
            last_update: Instant::now(),
            processed_capacity: size / common,
            processed_refill_time: refill_ns / common,
        })
    }

    /// Adds the tokens earned since the last update, keeping the remainder of a partial
    /// token for the next time.
    fn replenish(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        if elapsed >= u128::from(self.refill_time_ms) * u128::from(NANOS_PER_MS) {
            self.budget = self.size;
            self.last_update = now;
            return;
        }
        let cap = u128::from(self.processed_capacity);
        let refill = u128::from(self.processed_refill_time);
        let tokens = elapsed * cap / refill;
        // The time those whole tokens took, rounded up so no partial token is lost.
        let used = (tokens * refill).div_ceil(cap);
        // Both are below size and the refill time (checked above), so they fit a u64.
        let used = u64::try_from(used).unwrap_or(u64::MAX);
        let tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
        self.last_update += Duration::from_nanos(used);
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    /// Takes `tokens`, from the one-time burst first.
    pub fn reduce(&mut self, mut tokens: u64) -> BucketReduction {
        if self.one_time_burst > 0 {
            if self.one_time_burst >= tokens {
                self.one_time_burst -= tokens;
                self.last_update = Instant::now();
                return BucketReduction::Success;
            }
            tokens -= self.one_time_burst;
            self.one_time_burst = 0;
        }
        if self.budget == self.size {
            // A full bucket earns nothing: its refill clock starts now, or an idle spell
            // would count twice (the full bucket, then the refill of the whole spell).
            self.last_update = Instant::now();
        }
        if tokens > self.budget {
            self.replenish();
            if tokens > self.size {
                // A request larger than the bucket can never fit: let it through, empty
                // the bucket and make the caller wait for what it overdrew.
                let over = tokens - self.budget;
                self.budget = 0;
                #[allow(clippy::cast_precision_loss)] // a ratio: precision is not needed
                return BucketReduction::OverConsumption(over as f64 / self.size as f64);
            }
            if tokens > self.budget {
                return BucketReduction::Failure;
            }
        }
        self.budget -= tokens;
        BucketReduction::Success
    }

    /// Gives back `tokens` (a request taken but not carried out).
    pub fn force_replenish(&mut self, tokens: u64) {
        if self.one_time_burst > 0 {
            self.one_time_burst = self
                .one_time_burst
                .saturating_add(tokens)
                .min(self.initial_one_time_burst);
            return;
        }
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    /// The bucket's size.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// The refill time in ms.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    /// Tokens available now (without the refill since the last update).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// How long until `tokens` (at most the size) are available, from the current budget.
    pub fn time_until(&self, tokens: u64) -> Duration {
        let missing = u128::from(tokens.min(self.size).saturating_sub(self.budget));
        let ns = (missing * u128::from(self.processed_refill_time))
            .div_ceil(u128::from(self.processed_capacity));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::sleep;

    #[test]
    fn zero_size_or_refill_time_means_no_bucket() {
        assert!(TokenBucket::new(0, 0, 1000).is_none());
        assert!(TokenBucket::new(1000, 0, 0).is_none());
        assert!(TokenBucket::new(u64::MAX, 0, u64::MAX).is_none());
    }

    #[test]
    fn burst_then_budget_then_refill() {
        // A refill time long enough that nothing refills during the test.
        let mut b = TokenBucket::new(1000, 500, 60_000).unwrap();
        assert_eq!(b.reduce(400), BucketReduction::Success);
        assert_eq!(b.one_time_burst(), 100);
        // 100 from the burst, 200 from the budget.
        assert_eq!(b.reduce(300), BucketReduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 800));
        assert_eq!(b.reduce(800), BucketReduction::Success);
        assert_eq!(b.reduce(100), BucketReduction::Failure, "empty");
        // After a whole refill period the bucket is full again, never fuller.
        let mut b = TokenBucket::new(1000, 0, 100).unwrap();
        assert_eq!(b.reduce(1000), BucketReduction::Success);
        sleep(Duration::from_millis(110));
        assert_eq!(b.reduce(1000), BucketReduction::Success);
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn partial_refill_is_proportional_and_keeps_remainders() {
        // One token per ms.
        let mut b = TokenBucket::new(60_000, 0, 60_000).unwrap();
        assert_eq!(b.reduce(60_000), BucketReduction::Success);
        sleep(Duration::from_millis(250));
        assert_eq!(b.reduce(240), BucketReduction::Success);
        assert_eq!(b.reduce(30_000), BucketReduction::Failure);
        assert!(b.time_until(100) <= Duration::from_millis(100));
    }

    #[test]
    fn an_idle_full_bucket_does_not_bank_a_second_bucket() {
        let mut b = TokenBucket::new(1000, 0, 100).unwrap();
        sleep(Duration::from_millis(150));
        assert_eq!(b.reduce(1000), BucketReduction::Success);
        assert_eq!(b.reduce(500), BucketReduction::Failure);
    }

    #[test]
    fn overconsumption_empties_the_bucket_and_reports_the_debt() {
        let mut b = TokenBucket::new(100, 0, 1000).unwrap();
        match b.reduce(350) {
            BucketReduction::OverConsumption(r) => assert!((r - 2.5).abs() < 1e-9, "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn force_replenish_gives_back_up_to_the_limits() {
        let mut b = TokenBucket::new(100, 50, 1000).unwrap();
        assert_eq!(b.reduce(30), BucketReduction::Success);
        b.force_replenish(100);
        assert_eq!(b.one_time_burst(), 50, "never above the initial burst");
        assert_eq!(b.reduce(150), BucketReduction::Success);
        b.force_replenish(1000);
        assert_eq!(b.budget(), 100, "never above the size");
    }
}
