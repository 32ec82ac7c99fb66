//! Rate limits from the command line, and which device a runtime change is for.
//!
//! `--disk ...,bw=1M/1000,ops=100/1000`, `--net ...,rx_bw=...,tx_ops=...` and
//! `--rng-rate-limiter bw=64K/1000`: each value is a token bucket, `SIZE/REFILL_MS[/BURST]`
//! (see [`TokenBucketConfig`]).

use hearth_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

use crate::config::ConfigError;

/// The buckets given in one device spec, by key (`bw`, `ops`, `rx_bw`, ...).
#[derive(Debug, Default)]
pub(crate) struct SpecLimits(Vec<(String, TokenBucketConfig)>);

impl SpecLimits {
    /// Records `key=value`; the error says what is wrong with the value.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let bucket = value.parse().map_err(|e: String| format!("{key}: {e}"))?;
        self.0.push((key.to_string(), bucket));
        Ok(())
    }

    /// The limiter of the keys starting with `prefix` (`bw`, `ops` after it), if any.
    pub(crate) fn get(&self, prefix: &str) -> Option<RateLimiterConfig> {
        let find = |name: &str| {
            self.0
                .iter()
                .find(|(k, _)| k.strip_prefix(prefix) == Some(name))
                .map(|(_, b)| *b)
        };
        let config = RateLimiterConfig {
            bandwidth: find("bw"),
            ops: find("ops"),
        };
        (!config.is_unlimited()).then_some(config)
    }
}

/// Parses `bw=SIZE/MS[/BURST],ops=N/MS[/BURST]` (`--rng-rate-limiter`).
pub fn parse_rate_limiter(spec: &str) -> Result<RateLimiterConfig, ConfigError> {
    let bad = |reason: String| ConfigError::DeviceSpec {
        what: "--rng-rate-limiter",
        spec: spec.to_string(),
        reason,
    };
    let mut limits = SpecLimits::default();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k @ ("bw" | "ops"), v)) => limits.set(k, v).map_err(bad)?,
            _ => return Err(bad(format!("'{part}' is not bw=SIZE/MS or ops=N/MS"))),
        }
    }
    limits
        .get("")
        .ok_or_else(|| bad("give bw=SIZE/MS, ops=N/MS or both".into()))
}

/// Which device's limiter a runtime change is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitTarget {
    /// The n-th disk (0 is the first `--disk`).
    Disk(usize),
    /// The n-th network device's receive side.
    NetRx(usize),
    /// The n-th network device's transmit side.
    NetTx(usize),
    /// The entropy device.
    Rng,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_disk, parse_net};

    #[test]
    fn device_specs_take_buckets() {
        let d = parse_disk("path=/d,bw=1M/1000,ops=100/1000/50").unwrap();
        let l = d.rate_limiter.unwrap();
        assert_eq!(l.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(l.ops.unwrap().one_time_burst, Some(50));
        assert!(parse_disk("path=/d").unwrap().rate_limiter.is_none());
        let e = parse_disk("path=/d,bw=fast").unwrap_err().to_string();
        assert!(e.contains("SIZE/REFILL_MS"), "{e}");
        let n = parse_net("tap=t0,rx_bw=1M/100,tx_ops=10/100").unwrap();
        assert_eq!(
            n.rx_rate_limiter.unwrap().bandwidth.unwrap().refill_time,
            100
        );
        assert!(n.rx_rate_limiter.unwrap().ops.is_none());
        assert_eq!(n.tx_rate_limiter.unwrap().ops.unwrap().size, 10);
        let r = parse_rate_limiter("bw=64K/1000").unwrap();
        assert_eq!(r.bandwidth.unwrap().size, 64 << 10);
        assert!(parse_rate_limiter("").is_err());
        assert!(parse_rate_limiter("bw=1/1,speed=3").is_err());
    }

    #[test]
    fn json_uses_firecracker_names() {
        let c = crate::config::VmConfig::from_json(
            r#"{"kernel": "/k", "disks": [{"path": "/d", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}],
                "net": [{"tap": "t0", "rx_rate_limiter": {"ops": {"size": 10, "one_time_burst": 5, "refill_time": 100}}}],
                "rng": true, "rng_rate_limiter": {"bandwidth": {"size": 100, "refill_time": 10}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.disks[0].rate_limiter.unwrap().bandwidth.unwrap().size,
            1 << 20
        );
        assert_eq!(
            c.net[0]
                .rx_rate_limiter
                .unwrap()
                .ops
                .unwrap()
                .one_time_burst,
            Some(5)
        );
        assert!(c.rng_rate_limiter.is_some());
    }
}
