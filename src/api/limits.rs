//! Firecracker's `rate_limiter` objects and hearth's [`RateLimiterConfig`]: checked on
//! the way in, merged for PATCH (a bucket given replaces that bucket, one left out is
//! kept, one of size or refill time 0 is removed), and shown back in `GET /vm/config`.

use hearth_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

use super::models::{RateLimiter, TokenBucket};
use super::router::Fault;

/// The longest refill time a bucket takes: hearth counts it in nanoseconds in a u64.
const MAX_REFILL_MS: u64 = u64::MAX / 1_000_000;

/// A bucket as hearth takes it: `None` for "no limit" (size or refill time 0).
fn bucket(b: &TokenBucket, what: &str, kind: &str) -> Result<Option<TokenBucketConfig>, Fault> {
    if b.size == 0 || b.refill_time == 0 {
        return Ok(None);
    }
    if b.refill_time > MAX_REFILL_MS {
        return Err(Fault(format!(
            "Invalid {what}: the {kind} bucket's refill_time of {} ms is too long; give at \
             most {MAX_REFILL_MS} ms.",
            b.refill_time
        )));
    }
    Ok(Some(TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.filter(|n| *n > 0),
        refill_time: b.refill_time,
    }))
}

/// The limits `limiter` sets (`what` names it in errors: "rate_limiter", ...); `None`
/// when it limits nothing.
pub fn to_config(
    limiter: &Option<RateLimiter>,
    what: &str,
) -> Result<Option<RateLimiterConfig>, Fault> {
    let Some(l) = limiter else {
        return Ok(None);
    };
    let opt = |b: &Option<TokenBucket>, kind| match b {
        Some(b) => bucket(b, what, kind),
        None => Ok(None),
    };
    let config = RateLimiterConfig {
        bandwidth: opt(&l.bandwidth, "bandwidth")?,
        ops: opt(&l.ops, "ops")?,
    };
    Ok((!config.is_unlimited()).then_some(config))
}

/// Firecracker's shape of hearth's limits (`None` when there are none).
pub fn from_config(config: Option<RateLimiterConfig>) -> Option<RateLimiter> {
    let config = config.filter(|c| !c.is_unlimited())?;
    let api = |b: Option<TokenBucketConfig>| {
        b.map(|b| TokenBucket {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time,
        })
    };
    Some(RateLimiter {
        bandwidth: api(config.bandwidth),
        ops: api(config.ops),
    })
}

/// Checks a limiter as given in a PUT, and keeps it in the shape `GET /vm/config` shows.
pub fn normalize(limiter: &Option<RateLimiter>, what: &str) -> Result<Option<RateLimiter>, Fault> {
    to_config(limiter, what).map(from_config)
}

/// The limits after a PATCH of `current` with `patch`.
pub fn patch(
    current: &Option<RateLimiter>,
    patch: &RateLimiter,
    what: &str,
) -> Result<RateLimiterConfig, Fault> {
    let mut merged = to_config(current, what)?.unwrap_or_default();
    if let Some(b) = &patch.bandwidth {
        merged.bandwidth = bucket(b, what, "bandwidth")?;
    }
    if let Some(b) = &patch.ops {
        merged.ops = bucket(b, what, "ops")?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb(size: u64, refill_time: u64) -> Option<TokenBucket> {
        Some(TokenBucket {
            size,
            one_time_burst: None,
            refill_time,
        })
    }

    #[test]
    fn zero_buckets_limit_nothing_and_huge_refill_times_are_refused() {
        let l = Some(RateLimiter {
            bandwidth: tb(0, 1000),
            ops: tb(100, 0),
        });
        assert_eq!(normalize(&l, "rate_limiter").unwrap(), None);
        let l = Some(RateLimiter {
            bandwidth: tb(1, u64::MAX),
            ops: None,
        });
        let e = normalize(&l, "rate_limiter").unwrap_err().0;
        assert!(e.contains("refill_time"), "{e}");
    }

    #[test]
    fn a_patch_replaces_given_buckets_and_keeps_the_others() {
        let current = Some(RateLimiter {
            bandwidth: tb(1000, 100),
            ops: tb(10, 100),
        });
        let p = RateLimiter {
            bandwidth: tb(5000, 100),
            ops: None,
        };
        let m = patch(&current, &p, "rate_limiter").unwrap();
        assert_eq!(m.bandwidth.unwrap().size, 5000);
        assert_eq!(m.ops.unwrap().size, 10);
        let p = RateLimiter {
            bandwidth: None,
            ops: tb(0, 0),
        };
        let m = patch(&current, &p, "rate_limiter").unwrap();
        assert!(m.ops.is_none() && m.bandwidth.is_some());
    }
}
