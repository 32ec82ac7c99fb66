//! Periodic checkpoints: every interval, a diff snapshot (a full one at first and every
//! [`FULL_EVERY`] checkpoints, so that chains stay short) into its own directory
//! `DIR/ckpt-NNNNNN`, the VM paused only while its state and dirty pages are copied. Once
//! a checkpoint is complete, `DIR/latest` points at it (a symbolic link replaced by a
//! rename) and all but the newest `keep` are removed: `hearth restore --dir DIR/latest`
//! always finds a whole checkpoint, whenever hearth died.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, info};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::running::Control;
use super::{SnapshotOptions, VmError};
use crate::config::ConfigError;

/// Every this many checkpoints one is full, so that a chain never grows past it.
pub const FULL_EVERY: usize = 16;
/// The name of the link to the newest complete checkpoint.
pub const LATEST: &str = "latest";
const PREFIX: &str = "ckpt-";
/// The shortest interval: below it the VM would spend its time paused.
const MIN_EVERY: Duration = Duration::from_millis(10);

/// Periodic checkpointing (`--checkpoint-every`, `--checkpoint-dir`,
/// `--checkpoint-keep`; `"checkpoint": {"every": "1s", "dir": "...", "keep": 3}` in JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// How often.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub every: Duration,
    /// Where the checkpoint directories go (created, last level only).
    pub dir: PathBuf,
    /// How many complete checkpoints to keep.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

/// Checkpoints kept when not said.
pub const DEFAULT_KEEP: u32 = 3;

fn default_keep() -> u32 {
    DEFAULT_KEEP
}

/// Parses `500ms`, `2s`, `1m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::CheckpointEvery(s.to_string());
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d < MIN_EVERY {
        return Err(bad());
    }
    Ok(d)
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

impl CheckpointConfig {
    /// Checks the values (the directory is checked when the VM starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.every < MIN_EVERY {
            return Err(ConfigError::CheckpointEvery(format!(
                "{}ms",
                self.every.as_millis()
            )));
        }
        if self.keep == 0 {
            return Err(ConfigError::CheckpointKeep);
        }
        Ok(())
    }
}

/// Counters of the checkpoints a VM took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Complete checkpoints.
    pub taken: u64,
    /// Checkpoints that failed (logged).
    pub failed: u64,
    /// Total time the VM stood paused for them.
    pub total_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
    /// The latest pause.
    pub last_pause: Duration,
}

/// Takes the checkpoints of one running VM.
#[derive(Debug)]
pub(super) struct Checkpointer {
    config: CheckpointConfig,
    next: Instant,
    seq: u64,
    since_full: usize,
    pub(super) stats: CheckpointStats,
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// The checkpoint directories in `dir`, oldest first.
fn existing(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Some((seq_of(e.file_name().to_str()?)?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Checkpointer {
    /// Creates the checkpoint directory (the last level) and carries on the numbering of
    /// the checkpoints already in it.
    pub(super) fn new(config: CheckpointConfig) -> Result<Self, VmError> {
        config.validate()?;
        crate::snapshot::check_dir(&config.dir)?;
        if !config.dir.is_dir() {
            std::fs::create_dir(&config.dir).map_err(|source| {
                crate::snapshot::SnapshotError::Io {
                    path: config.dir.clone(),
                    source,
                }
            })?;
        }
        let seq = existing(&config.dir).last().map_or(0, |(s, _)| *s);
        Ok(Self {
            next: Instant::now() + config.every,
            config,
            seq,
            since_full: FULL_EVERY,
            stats: CheckpointStats::default(),
        })
    }

    /// When the next checkpoint is due.
    pub(super) fn due(&self) -> Instant {
        self.next
    }

    /// Takes a checkpoint if one is due (not while the VM is paused by its user).
    pub(super) fn tick(&mut self, control: &mut Control) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.config.every;
        if control.paused || control.check_running().is_err() {
            return;
        }
        if let Err(e) = self.take(control) {
            self.stats.failed += 1;
            // The next one starts afresh with a full checkpoint.
            self.since_full = FULL_EVERY;
            info!("checkpoint {} failed: {e}", self.seq);
        }
    }

    fn take(&mut self, control: &mut Control) -> Result<(), VmError> {
        self.seq += 1;
        let name = format!("{PREFIX}{:06}", self.seq);
        let dir = self.config.dir.join(&name);
        let diff = self.since_full < FULL_EVERY && control.core.lineage.is_some();
        let info = control.snapshot_with(&dir, &SnapshotOptions { diff, resume: true })?;
        self.since_full = if diff { self.since_full + 1 } else { 1 };
        self.stats.taken += 1;
        self.stats.total_pause += info.paused;
        self.stats.max_pause = self.stats.max_pause.max(info.paused);
        self.stats.last_pause = info.paused;
        debug!(
            "checkpoint {} ({}, {} pages) in {}: VM paused {:?}",
            self.seq,
            if info.diff { "diff" } else { "full" },
            info.pages,
            dir.display(),
            info.paused
        );
        self.point_latest(&name)?;
        self.prune();
        Ok(())
    }

    /// Points `latest` at `name`, atomically.
    fn point_latest(&self, name: &str) -> Result<(), VmError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| crate::snapshot::SnapshotError::Io { path, source }
        };
        let tmp = self.config.dir.join(format!("{LATEST}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp).map_err(io(&tmp))?;
        let latest = self.config.dir.join(LATEST);
        std::fs::rename(&tmp, &latest).map_err(io(&latest))?;
        crate::snapshot::files::sync_dir(&self.config.dir)?;
        Ok(())
    }

    /// Removes all but the newest `keep` checkpoints (their shared layers stay in the
    /// newer ones, which hold links to them).
    fn prune(&self) {
        let all = existing(&self.config.dir);
        let keep = usize::try_from(self.config.keep).unwrap_or(usize::MAX);
        for (_, path) in all.iter().take(all.len().saturating_sub(keep)) {
            if let Err(e) = std::fs::remove_dir_all(path) {
                info!("cannot remove old checkpoint {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        for bad in [
            "",
            "ms",
            "5ms",
            "1h",
            "-1s",
            "1.5s",
            "99999999999999999999m",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("500ms, 2s or 1m"), "{bad}: {e}");
        }
        let c: CheckpointConfig =
            serde_json::from_str(r#"{"every": "250ms", "dir": "/c"}"#).unwrap();
        assert_eq!(c.every, Duration::from_millis(250));
        assert_eq!(c.keep, DEFAULT_KEEP);
        let back: CheckpointConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
