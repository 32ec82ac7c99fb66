//! The request and response bodies of Firecracker's API (v1.16 swagger), field for field.
//!
//! Unknown fields are refused where Firecracker refuses them, so a client that relies on
//! a field hearth does not know hears about it instead of being silently ignored.

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel: an ELF vmlinux or a bzImage.
    pub kernel_image_path: String,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// An initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Firecracker's CPU templates; hearth has none, so only `None` is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Intel C3.
    C3,
    /// Intel T2.
    T2,
    /// Intel T2S.
    T2S,
    /// Intel T2CL.
    T2CL,
    /// AMD T2A.
    T2A,
    /// Arm V1N1.
    V1N1,
    /// No template.
    None,
}

/// Huge pages for guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Normal 4 KiB pages.
    #[default]
    None,
    /// 2 MiB huge pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config`, and what `GET /machine-config` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: bool,
    /// A CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking, for diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        // Firecracker's defaults.
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// vCPUs.
    pub vcpu_count: Option<u8>,
    /// Guest memory in MiB.
    pub mem_size_mib: Option<usize>,
    /// Simultaneous multithreading.
    pub smt: Option<bool>,
    /// A CPU template.
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<HugePages>,
}

/// A token bucket of a rate limiter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size.
    pub size: u64,
    /// Initial burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Refill time in ms.
    pub refill_time: u64,
}

/// A rate limiter (Firecracker's `RateLimiter`): a bucket of size or refill time 0
/// limits nothing; in a PATCH, a bucket left out is kept and such a bucket removes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations (requests, frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// The block cache strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests are acknowledged without syncing.
    #[default]
    Unsafe,
    /// Flush requests sync the file.
    Writeback,
}

/// The block I/O engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes.
    #[default]
    Sync,
    /// io_uring.
    Async,
}

/// `PUT /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's name in the API.
    pub drive_id: String,
    /// The root partition's UUID, for `root=PARTUUID=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether the guest boots from it.
    pub is_root_device: bool,
    /// Cache strategy.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// The backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// A vhost-user-block backend socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PATCH /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's name.
    pub drive_id: String,
    /// A new backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// A new rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's name in the API.
    pub iface_id: String,
    /// The host tap.
    pub host_dev_name: String,
    /// The guest's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's name.
    pub iface_id: String,
    /// Receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's CID (3 or more).
    pub guest_cid: u32,
    /// The host socket.
    pub uds_path: String,
}

/// `PUT /entropy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// Log levels, as Firecracker spells them (read in any case, `Warn` too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational.
    #[default]
    Info,
    /// Debugging.
    Debug,
    /// Everything.
    Trace,
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "'{s}' is not a log level: give Error, Warning, Info, Debug, Trace or Off"
                ))
            }
        })
    }
}

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Where log lines go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// The least severe level written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Write the level on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Write the source file and line on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only this module's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where metric lines go.
    pub metrics_path: String,
}

/// The actions of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Write the metrics now.
    FlushMetrics,
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's keyboard.
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    /// What to do.
    pub action_type: ActionType,
}

/// The states of `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum VmState {
    /// Stop every vCPU.
    Paused,
    /// Let it run.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The state wanted.
    pub state: VmState,
}

/// Snapshot kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only memory dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// The memory file to write.
    pub mem_file_path: String,
    /// The state file to write.
    pub snapshot_path: String,
    /// Full or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// Memory backends for a snapshot load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    /// A memory file.
    File,
    /// A userfaultfd handler process.
    Uffd,
}

/// Where a loaded snapshot's memory comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The file, or the handler's socket.
    pub backend_path: String,
}

/// A tap to use instead of the snapshot's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new tap.
    pub host_dev_name: String,
}

/// A vsock socket to use instead of the snapshot's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// Deprecated alias of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Dirty page tracking.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// The memory file (deprecated form of `mem_backend`).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// The state file.
    pub snapshot_path: String,
    /// Run the VM once loaded.
    #[serde(default)]
    pub resume_vm: bool,
    /// Taps to use instead of the snapshot's.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// A vsock socket to use instead of the snapshot's.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall time since the snapshot.
    #[serde(default)]
    pub clock_realtime: Option<bool>,
}

/// `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// "Firecracker", which clients check.
    pub app_name: String,
    /// The `--id` given.
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: String,
    /// The version.
    pub vmm_version: String,
}

/// `PUT /checkpoints` and `"checkpoints"` in the config file (hearth extensions; see
/// `--checkpoint-every`): a checkpoint of the running VM every `interval_ms` into its
/// own directory under `dir`, the newest `keep` kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoints {
    /// Milliseconds between checkpoints (at least 10).
    pub interval_ms: u64,
    /// Where the checkpoint directories go (created, last level only).
    pub dir: String,
    /// Complete checkpoints kept (at least 1).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_keep() -> u32 {
    crate::vm::checkpoint::DEFAULT_KEEP
}

/// `GET /vm/config`, and the `--config-file` schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfig {
    /// Balloon (not supported: only null is taken).
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    /// Drives.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Kernel, initrd, command line.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// CPU configuration (not supported: only null is taken).
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    /// Logger.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// Metrics.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Memory hotplug (not supported: only null is taken).
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Option<serde_json::Value>,
    /// MMDS (not supported: only null is taken).
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// pmem devices (not supported: only an empty list is taken).
    #[serde(default)]
    pub pmem: Vec<serde_json::Value>,
    /// vsock.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// Entropy device.
    #[serde(default)]
    pub entropy: Option<Entropy>,
    /// Periodic checkpoints (a hearth extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Checkpoints>,
}
