//! Periodic checkpoints: every interval, a diff snapshot (a full one at first) into its
//! own directory `DIR/ckpt-NNNNNN`, the VM paused only while its state and dirty pages
//! are copied. Chains stay short without pausing the VM for a full copy: once one is
//! [`FOLD_AT`] layers long, a background thread folds that checkpoint's chain into one
//! full layer (reading the files, not the VM), and the next diffs build on it. Once
//! a checkpoint is complete, `DIR/latest` points at it (a symbolic link replaced by a
//! rename) and all but the newest `keep` are removed: `hearth restore --dir DIR/latest`
//! always finds a whole checkpoint, whenever hearth died.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, info};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use std::thread::JoinHandle;

use super::running::Control;
use super::{SnapshotOptions, VmError};
use crate::config::ConfigError;
use crate::snapshot::{Layer, MemoryChain, SnapshotError};

/// A chain this long is folded into a full layer in the background.
pub const FOLD_AT: usize = 8;
/// The name of the link to the newest complete checkpoint.
pub const LATEST: &str = "latest";
const PREFIX: &str = "ckpt-";
/// Where a chain is folded (removed once done, or when checkpointing starts again).
const FOLD_PREFIX: &str = "fold-";
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
    /// A chain being folded: the directory the full layer goes to, and the thread.
    folding: Option<(PathBuf, FoldThread)>,
    pub(super) stats: CheckpointStats,
}

type FoldThread = JoinHandle<Result<(MemoryChain, Layer), SnapshotError>>;

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
        // Folds a hearth that died left half done.
        if let Ok(rd) = std::fs::read_dir(&config.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(FOLD_PREFIX) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Self {
            next: Instant::now() + config.every,
            config,
            seq,
            folding: None,
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
        self.finish_fold(control);
        // A failed one leaves no parent: the next is full.
        if let Err(e) = self.take(control) {
            self.stats.failed += 1;
            info!("checkpoint {} failed: {e}", self.seq);
        }
    }

    /// Folds the chain of checkpoint `dir` into a full layer on another thread, in a
    /// directory of its own: a copy of `dir` made of links (so that pruning `dir`
    /// meanwhile takes nothing from it, and `dir`, which the next diff links from, is
    /// left alone).
    fn start_fold(&mut self, dir: &Path, chain: &MemoryChain) {
        let out = self
            .config
            .dir
            .join(format!("{FOLD_PREFIX}{:06}", self.seq));
        let copy = || -> Result<(), SnapshotError> {
            let io = |p: &Path| {
                let path = p.to_owned();
                move |source| SnapshotError::Io { path, source }
            };
            std::fs::create_dir(&out).map_err(io(&out))?;
            for name in chain.file_names() {
                crate::snapshot::files::link_into(&dir.join(&name), &out, &name)?;
            }
            let state = dir.join(crate::snapshot::STATE_FILE);
            std::fs::copy(&state, out.join(crate::snapshot::STATE_FILE)).map_err(io(&state))?;
            Ok(())
        };
        if let Err(e) = copy() {
            info!("cannot fold checkpoint {}: {e}", dir.display());
            let _ = std::fs::remove_dir_all(&out);
            return;
        }
        let o = out.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint-fold".into())
            .spawn(move || crate::snapshot::merge(&o, None));
        match thread {
            Ok(t) => self.folding = Some((out, t)),
            Err(e) => {
                info!("cannot start folding checkpoint {}: {e}", dir.display());
                let _ = std::fs::remove_dir_all(&out);
            }
        }
    }

    /// When a fold has finished, the VM's chain starts from its full layer from then on:
    /// the folded layers are replaced by it (linked into the newest checkpoint, where
    /// the next diff looks for its parent's layers).
    fn finish_fold(&mut self, control: &mut Control) {
        if !self.folding.as_ref().is_some_and(|(_, t)| t.is_finished()) {
            return;
        }
        let Some((dir, thread)) = self.folding.take() else {
            return;
        };
        let result = thread.join();
        self.use_fold(control, &dir, result);
        // The full layer lives on in the checkpoints that link it.
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn use_fold(
        &mut self,
        control: &mut Control,
        dir: &Path,
        result: std::thread::Result<Result<(MemoryChain, Layer), SnapshotError>>,
    ) {
        let (folded, full) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                info!("folding checkpoint {} failed: {e}", dir.display());
                return;
            }
            Err(_) => {
                info!("folding checkpoint {} panicked", dir.display());
                return;
            }
        };
        let Some(lineage) = &mut control.core.lineage else {
            return;
        };
        let n = folded.layers.len();
        if lineage.memory.layers.len() < n || lineage.memory.layers[..n] != folded.layers[..] {
            return;
        }
        let name = full.file_name();
        if let Err(e) = crate::snapshot::files::link_into(&dir.join(&name), &lineage.dir, &name) {
            info!("cannot use the folded checkpoint {}: {e}", dir.display());
            return;
        }
        let rest = lineage.memory.layers.split_off(n);
        lineage.memory.layers = std::iter::once(full).chain(rest).collect();
        debug!(
            "checkpoint chain folded ({n} layers of {} into one); now {} layers",
            dir.display(),
            lineage.memory.layers.len()
        );
    }

    fn take(&mut self, control: &mut Control) -> Result<(), VmError> {
        self.seq += 1;
        let name = format!("{PREFIX}{:06}", self.seq);
        let dir = self.config.dir.join(&name);
        let diff = control.core.lineage.is_some();
        let info = control.snapshot_with(&dir, &SnapshotOptions { diff, resume: true })?;
        let chain = control
            .core
            .lineage
            .as_ref()
            .map_or(0, |l| l.memory.layers.len());
        if chain >= FOLD_AT && self.folding.is_none() {
            if let Some(l) = control.core.lineage.clone() {
                self.start_fold(&dir, &l.memory);
            }
        }
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
