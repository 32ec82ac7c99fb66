//! Firecracker-style metrics: one JSON object per line, written on `FlushMetrics` and
//! every [`FLUSH_INTERVAL`]. Counters are deltas since the previous line, as in
//! Firecracker; latencies are the last value measured.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::router::Fault;

/// How often metrics are written without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The groups every line carries, as Firecracker names them.
const GROUPS: &[&str] = &[
    "api_server",
    "get_api_requests",
    "put_api_requests",
    "patch_api_requests",
    "block",
    "net",
    "vsock",
    "entropy",
    "uart",
    "vcpu",
    "vmm",
    "latencies_us",
];

/// Where metrics go and what they count.
#[derive(Debug, Default)]
pub struct Metrics {
    file: Option<File>,
    counters: BTreeMap<(&'static str, &'static str), u64>,
    values: BTreeMap<(&'static str, &'static str), u64>,
    /// Running totals kept elsewhere (the devices'): (latest, at the last flush).
    totals: BTreeMap<(&'static str, &'static str), (u64, u64)>,
}

impl Metrics {
    /// Opens the metrics file (appended to; a named pipe works too). Only once, as in
    /// Firecracker.
    pub fn open(&mut self, path: &Path) -> Result<(), Fault> {
        if self.file.is_some() {
            return Err(Fault("Reinitialization of metrics not allowed.".into()));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Fault(format!(
                    "Cannot open the metrics file {}: {e}",
                    path.display()
                ))
            })?;
        self.file = Some(file);
        Ok(())
    }

    /// Whether a metrics file is open.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Adds one to a counter.
    pub fn inc(&mut self, group: &'static str, name: &'static str) {
        *self.counters.entry((group, name)).or_default() += 1;
    }

    /// Records a value (a latency, a device total).
    pub fn set(&mut self, group: &'static str, name: &'static str, value: u64) {
        self.values.insert((group, name), value);
    }

    /// Records a running total kept elsewhere; lines show what it grew by since the
    /// previous line, as Firecracker's counters do.
    pub fn total(&mut self, group: &'static str, name: &'static str, total: u64) {
        self.totals.entry((group, name)).or_default().0 = total;
    }

    /// The line that the next flush writes.
    pub fn line(&self) -> Value {
        let mut root = Map::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        root.insert("utc_timestamp_ms".into(), now.into());
        for group in GROUPS {
            root.insert((*group).into(), Value::Object(Map::new()));
        }
        let totals = self
            .totals
            .iter()
            .map(|(k, (now, then))| (k, now.saturating_sub(*then)));
        let plain = self
            .counters
            .iter()
            .chain(&self.values)
            .map(|(k, v)| (k, *v));
        for ((group, name), v) in plain.chain(totals) {
            if let Some(Value::Object(g)) = root.get_mut(*group) {
                g.insert((*name).into(), v.into());
            }
        }
        Value::Object(root)
    }

    /// Writes a line and starts the counters again. Without a file, nothing happens.
    pub fn flush(&mut self) -> Result<(), Fault> {
        let line = self.line();
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let mut text = line.to_string();
        text.push('\n');
        file.write_all(text.as_bytes())
            .map_err(|e| Fault(format!("Cannot write metrics: {e}")))?;
        self.counters.clear();
        for (now, then) in self.totals.values_mut() {
            *then = *now;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_deltas_values_persist() {
        let dir = std::env::temp_dir().join(format!("hearth-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let mut m = Metrics::default();
        m.open(&dir).unwrap();
        assert!(m.open(&dir).is_err());
        m.inc("put_api_requests", "actions_count");
        m.inc("put_api_requests", "actions_count");
        m.set("latencies_us", "load_snapshot", 42);
        m.total("block", "read_count", 5);
        m.flush().unwrap();
        m.total("block", "read_count", 7);
        m.flush().unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["put_api_requests"]["actions_count"], 2);
        assert!(lines[1]["put_api_requests"]["actions_count"].is_null());
        assert_eq!(lines[1]["latencies_us"]["load_snapshot"], 42);
        assert_eq!(lines[0]["block"]["read_count"], 5);
        assert_eq!(lines[1]["block"]["read_count"], 2);
        assert!(lines[1]["block"].is_object());
        let _ = std::fs::remove_file(&dir);
    }
}
