//! Rate limiters for device queues: Firecracker's `bandwidth` (bytes) and `ops`
//! (requests) token buckets, with a timerfd that tells the event loop when a throttled
//! queue may go on. A throttled device stops taking requests from its queue and leaves
//! them there (delayed, never dropped); when the timer fires, the event loop calls
//! [`RateLimiter::on_timer`] and the device drains its queue again. Nothing polls.

mod bucket;

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

pub use bucket::{BucketReduction, TokenBucket};

/// The longest a throttled queue waits before it is tried again (Firecracker's period);
/// shorter when the bucket will have the tokens sooner.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// The shortest wait, so a nearly full bucket does not wake the loop over and over.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Errors of a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// The timerfd could not be made, armed or read.
    #[error("rate limiter timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// One bucket's settings, with Firecracker's field names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens (bytes or requests) the bucket holds.
    pub size: u64,
    /// Extra tokens available once, at the start.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

/// A rate limiter's settings (`rate_limiter` in Firecracker's API): either bucket may be
/// absent (no limit on that kind of token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default)]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests.
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
}

/// A count with an optional binary suffix: `4096`, `64K`, `1M`, `2G`.
fn parse_count(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl std::str::FromStr for TokenBucketConfig {
    type Err = String;

    /// `SIZE/REFILL_MS[/ONE_TIME_BURST]`, e.g. `1M/1000` (1 MiB per second) or
    /// `100/1000/500`; sizes take K, M and G suffixes.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not SIZE/REFILL_MS[/BURST] (e.g. 1M/1000)");
        let mut parts = s.split('/');
        let size = parts.next().and_then(parse_count).ok_or_else(bad)?;
        let refill_time = parts
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(bad)?;
        let one_time_burst = match parts.next() {
            Some(b) => Some(parse_count(b).ok_or_else(bad)?),
            None => None,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        if size == 0 || refill_time == 0 {
            return Err(format!("'{s}': size and refill time must be above 0"));
        }
        Ok(Self {
            size,
            one_time_burst,
            refill_time,
        })
    }
}

impl RateLimiterConfig {
    /// Whether neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        let off =
            |b: Option<TokenBucketConfig>| b.is_none_or(|b| b.size == 0 || b.refill_time == 0);
        off(self.bandwidth) && off(self.ops)
    }
}

fn make(c: Option<TokenBucketConfig>) -> Option<TokenBucket> {
    c.and_then(|c| TokenBucket::new(c.size, c.one_time_burst.unwrap_or(0), c.refill_time))
}

/// Which of a device's limiters a setting is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimiterSlot {
    /// A device with one limiter (block, entropy).
    Device,
    /// A network device's receive side.
    Rx,
    /// A network device's transmit side.
    Tx,
}

/// A device whose queues can be rate limited, now or while the VM runs.
pub trait RateLimited {
    /// Sets the limits of `slot` (a default config removes them). Returns false when the
    /// device has no such limiter.
    fn set_rate_limiter(&mut self, _slot: LimiterSlot, _config: &RateLimiterConfig) -> bool {
        false
    }
}

/// Watches a limiter's timer on the event loop under `data`.
pub fn watch_timer(
    limiter: &RateLimiter,
    data: u32,
    ops: &mut event_manager::EventOps,
    what: &str,
) {
    let events = event_manager::Events::with_data(limiter, data, vmm_sys_util::epoll::EventSet::IN);
    if let Err(e) = ops.add(events) {
        log::error!(
            "{what}: cannot watch the rate limiter's timer: {e}; a throttled queue would stall"
        );
    }
}

/// What a request consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Bytes moved.
    Bytes,
    /// Requests made.
    Ops,
}

/// A rate limiter: two optional buckets and the timer that ends a throttled spell.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with `config`'s buckets (none: it lets everything through, and can be
    /// given limits later with [`RateLimiter::update`]).
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        Ok(Self {
            bandwidth: make(config.bandwidth),
            ops: make(config.ops),
            timer: TimerFd::new().map_err(|e| RateLimiterError::Timer(e.into()))?,
            blocked: false,
        })
    }

    /// Whether the limiter has no bucket.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Takes `tokens` of `kind`. `false` means: throttled, keep the request for later;
    /// the timer is armed and [`RateLimiter::on_timer`] ends the spell.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        let bucket = match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        };
        let Some(bucket) = bucket else {
            return true;
        };
        match bucket.reduce(tokens) {
            BucketReduction::Success => true,
            BucketReduction::Failure => {
                let wait = bucket.time_until(tokens).clamp(MIN_WAIT, MAX_WAIT);
                self.block_for(wait);
                false
            }
            BucketReduction::OverConsumption(ratio) => {
                // Let this one through, then pay its debt before the next.
                #[allow(clippy::cast_precision_loss)] // a wait time: ms precision is plenty
                let ms = ratio * bucket.refill_time_ms() as f64;
                self.block_for(Duration::from_secs_f64(ms / 1000.0).max(MIN_WAIT));
                true
            }
        }
    }

    fn block_for(&mut self, wait: Duration) {
        // If the timer cannot be armed, waiting for it would stall the queue for good:
        // stay unblocked (the bucket is still empty, so the next try fails and re-arms).
        if self.timer.reset(wait, None).is_ok() {
            self.blocked = true;
        }
    }

    /// Gives back tokens taken for a request that was not carried out.
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        let bucket = match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        };
        if let Some(b) = bucket {
            b.force_replenish(tokens);
        }
    }

    /// Whether the limiter is waiting for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timer fired: the queue may be tried again. Call when the timerfd is readable.
    pub fn on_timer(&mut self) -> Result<(), RateLimiterError> {
        self.timer
            .wait()
            .map_err(|e| RateLimiterError::Timer(e.into()))?;
        self.blocked = false;
        Ok(())
    }

    /// New limits on a running device (PATCH). Buckets start full; a throttled spell
    /// ends when its timer fires, at most [`MAX_WAIT`] later.
    pub fn update(&mut self, config: &RateLimiterConfig) {
        self.bandwidth = make(config.bandwidth);
        self.ops = make(config.ops);
    }

    /// The limits in force.
    pub fn config(&self) -> RateLimiterConfig {
        let c = |b: &TokenBucket| TokenBucketConfig {
            size: b.capacity(),
            one_time_burst: Some(b.one_time_burst()).filter(|n| *n > 0),
            refill_time: b.refill_time_ms(),
        };
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(c),
            ops: self.ops.as_ref().map(c),
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn limiter(bw: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> RateLimiter {
        let b = |(size, refill_time)| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        };
        RateLimiter::new(&RateLimiterConfig {
            bandwidth: bw.map(b),
            ops: ops.map(b),
        })
        .unwrap()
    }

    /// Waits (bounded) for the timerfd to be readable, as the event loop would.
    fn wait_timer(l: &RateLimiter) {
        let mut fd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fd, 1, 5000) };
        assert_eq!(n, 1, "the timer never fired");
    }

    #[test]
    fn no_bucket_means_no_limit() {
        let mut l = limiter(None, None);
        assert!(l.is_unlimited());
        for _ in 0..1000 {
            assert!(l.consume(u64::MAX, TokenType::Bytes));
            assert!(l.consume(1, TokenType::Ops));
        }
        assert!(RateLimiterConfig::default().is_unlimited());
    }

    #[test]
    fn throttled_until_the_timer_fires_then_resumes() {
        // 1000 bytes per 100 ms.
        let mut l = limiter(Some((1000, 100)), None);
        assert!(l.consume(1000, TokenType::Bytes));
        let start = Instant::now();
        assert!(!l.consume(500, TokenType::Bytes));
        assert!(l.is_blocked());
        // While blocked, even an ops request (no ops bucket) waits: the queue is stopped.
        assert!(!l.consume(1, TokenType::Ops));
        wait_timer(&l);
        l.on_timer().unwrap();
        assert!(!l.is_blocked());
        assert!(l.consume(500, TokenType::Bytes));
        // 500 tokens at 10 per ms: the timer cannot have fired before ~50 ms.
        assert!(start.elapsed() >= Duration::from_millis(45));
    }

    #[test]
    fn rate_over_time_is_bounded_below() {
        // 10 ops per 100 ms: 30 ops past the first 10 take at least ~300 ms.
        let mut l = limiter(None, Some((10, 100)));
        let start = Instant::now();
        let mut done = 0;
        while done < 40 {
            if l.consume(1, TokenType::Ops) {
                done += 1;
            } else {
                wait_timer(&l);
                l.on_timer().unwrap();
            }
        }
        assert!(start.elapsed() >= Duration::from_millis(290));
    }

    #[test]
    fn update_changes_limits_and_config_reports_them() {
        let mut l = limiter(Some((1000, 100)), None);
        assert!(l.consume(1000, TokenType::Bytes));
        assert!(!l.consume(1000, TokenType::Bytes));
        let raised = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: None,
                refill_time: 100,
            }),
            ops: None,
        };
        l.update(&raised);
        assert_eq!(l.config(), raised);
        wait_timer(&l);
        l.on_timer().unwrap();
        assert!(l.consume(1 << 19, TokenType::Bytes));
        l.update(&RateLimiterConfig::default());
        assert!(l.is_unlimited());
    }

    #[test]
    fn config_uses_firecracker_field_names() {
        let c: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 1000},
                "ops": {"size": 100, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert_eq!(c.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(c.ops.unwrap().one_time_burst, None);
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bandwith": {}}"#).is_err());
    }

    #[test]
    fn bucket_specs_parse_or_say_why_not() {
        let b: TokenBucketConfig = "1M/1000".parse().unwrap();
        assert_eq!(
            (b.size, b.refill_time, b.one_time_burst),
            (1 << 20, 1000, None)
        );
        let b: TokenBucketConfig = "100/500/64K".parse().unwrap();
        assert_eq!(b.one_time_burst, Some(64 << 10));
        for bad in [
            "", "1M", "1M/", "x/1000", "1M/1s", "1/2/3/4", "0/1000", "1M/0",
        ] {
            assert!(bad.parse::<TokenBucketConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn giving_tokens_back_lets_a_retry_through() {
        let mut l = limiter(None, Some((1, 1000)));
        assert!(l.consume(1, TokenType::Ops));
        l.manual_replenish(1, TokenType::Ops);
        assert!(l.consume(1, TokenType::Ops));
    }
}
