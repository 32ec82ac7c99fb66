//! The VM description: what the CLI flags, the JSON config file and library users fill
//! in, parsed and checked apart from the VM itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::BootProtocol;

mod parse;

use parse::{check_tap, check_vsock_cid, deserialize_size, serialize_size};
pub use parse::{
    parse_disk, parse_disk_arg, parse_net, parse_share, parse_size, parse_vsock, share_tag, DiskArg,
};

/// The command line a guest gets when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Guest memory when none is given.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// The least memory hearth boots with: low memory for boot structures plus room for a
/// small kernel at 1 MiB.
pub const MIN_MEMORY: u64 = 2 << 20;

/// The longest kernel command line, in bytes (the buffer less its terminating NUL).
pub const CMDLINE_LIMIT: usize = crate::arch::layout::CMDLINE_MAX_SIZE - 1;

/// Errors in the VM description.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A size that does not parse.
    #[error("cannot parse size '{0}': expected a number with an optional K, M, G or T suffix, like 256M (a plain number is MiB)")]
    Size(String),
    /// Zero vCPUs.
    #[error("--cpus must be at least 1")]
    NoCpus,
    /// A checkpoint interval that does not parse or is too short.
    #[error("--checkpoint-every '{0}': give a duration such as 500ms, 2s or 1m, of at least 10ms")]
    CheckpointEvery(String),
    /// Keeping no checkpoint.
    #[error("--checkpoint-keep must be at least 1")]
    CheckpointKeep,
    /// Half of the checkpoint settings.
    #[error("--checkpoint-every and --checkpoint-dir go together: give both")]
    CheckpointIncomplete,
    /// Too little memory.
    #[error("guest memory of {0} bytes is too small; give at least 2M")]
    MemoryTooSmall(u64),
    /// No kernel.
    #[error("no kernel given: pass --kernel or set \"kernel\" in the config file")]
    NoKernel,
    /// More vCPUs than hearth supports.
    #[error("--cpus {0} is more than hearth supports: at most {max} vCPUs (the limit of hearth's MP table)", max = crate::arch::mptable::MAX_CPUS)]
    TooManyCpus(u32),
    /// A command line the boot protocol cannot carry.
    #[error("the kernel command line is {len} bytes; the limit is {max} bytes, including what hearth appends (virtio devices, emulator workarounds)", max = CMDLINE_LIMIT)]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("config file {path} is not valid: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A reserved vsock CID.
    #[error(
        "vsock cid {0} is reserved: give a guest CID from 3 to 4294967294 \
         (0-2 are the hypervisor, local and host CIDs)"
    )]
    VsockCid(u64),
    /// A device option list that does not parse.
    #[error("invalid {what} '{spec}': {reason}")]
    DeviceSpec {
        /// "--disk" etc.
        what: &'static str,
        /// What the user wrote.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A `root` disk where there can be none.
    #[error("invalid --disk: {0}")]
    RootDisk(&'static str),
}

/// Whether to apply the workarounds for KVM's instruction emulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ExecutionChoice {
    /// Measure it at startup with a tiny calibration guest.
    #[default]
    Auto,
    /// Hardware virtualization: no workarounds.
    Native,
    /// KVM's instruction emulator: workarounds on.
    Emulated,
}

/// A virtio block device as the user gives it (`--disk`, or `disks` in JSON); the device
/// model takes a [`BlockConfig`](hearth_devices::virtio::block::BlockConfig) made from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The raw disk image (or host block device).
    pub path: PathBuf,
    /// Attach it read-only: the file is opened read-only and the guest sees VIRTIO_BLK_F_RO.
    /// Spelled `readonly` as on the command line; `read_only` is accepted too.
    #[serde(default, rename = "readonly", alias = "read_only")]
    pub read_only: bool,
    /// The serial number the guest reads with GET_ID (at most 20 bytes); derived from the
    /// file's device and inode numbers when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The drive's name in the Firecracker API (`drive_id`); kept in snapshots so that a
    /// loaded VM answers to the same name.
    #[serde(default)]
    pub drive_id: Option<String>,
    /// Limits on the disk's requests (Firecracker's `rate_limiter`).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl From<&DiskConfig> for hearth_devices::virtio::block::BlockConfig {
    fn from(disk: &DiskConfig) -> Self {
        Self {
            path: disk.path.clone(),
            read_only: disk.read_only,
            id: disk.id.clone(),
        }
    }
}
/// A virtio network device over a tap, as the device model takes it.
pub type NetConfig = hearth_devices::virtio::net::NetConfig;
/// A MAC address (`06:00:ac:10:00:02`).
pub type MacAddr = hearth_devices::virtio::net::MacAddr;

/// A rate limiter's buckets, as the device models take them.
pub type RateLimiterConfig = hearth_devices::rate_limiter::RateLimiterConfig;
/// Periodic checkpoints.
pub use crate::vm::CheckpointConfig;

/// A virtio-vsock device, as the device model takes it.
pub type VsockConfig = hearth_devices::virtio::vsock::VsockConfig;
/// A host directory shared with the guest over virtio-fs, as the device model takes it.
pub type ShareConfig = hearth_devices::virtio::fs::FsConfig;

/// Everything that describes a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vmlinux (ELF) or bzImage. May be left out of a config file when `--kernel` is
    /// given; [`VmConfig::validate`] refuses an empty one.
    #[serde(default)]
    pub kernel: PathBuf,
    /// An initrd/initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Guest memory in bytes (in JSON: a size string such as "256M", or a number of MiB).
    #[serde(
        default = "default_memory",
        serialize_with = "serialize_size",
        deserialize_with = "deserialize_size"
    )]
    pub memory: u64,
    /// Where guest serial output goes (stdout when absent).
    #[serde(default)]
    pub serial_out: Option<PathBuf>,
    /// Which kernel entry point to use.
    #[serde(default)]
    pub boot_protocol: BootProtocol,
    /// Native or emulated KVM, or measure it.
    #[serde(default)]
    pub execution: ExecutionChoice,
    /// On the emulating KVM, append what a Linux guest needs to its command line.
    #[serde(default = "default_true")]
    pub cmdline_workarounds: bool,
    /// virtio block devices, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Serve the control socket (pause, resume, snapshot) at this path.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// virtio network devices over host taps, in the order the guest sees them.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// A virtio entropy device fed by the host's getrandom.
    #[serde(default)]
    pub rng: bool,
    /// Limits on the entropy device (Firecracker's `entropy.rate_limiter`).
    #[serde(default)]
    pub rng_rate_limiter: Option<RateLimiterConfig>,
    /// A virtio-vsock device bridged to host Unix sockets.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Periodic checkpoints (a restored VM takes none unless told again).
    #[serde(default)]
    pub checkpoint: Option<CheckpointConfig>,
    /// Host directories shared over virtio-fs (VMs with shares cannot be snapshotted).
    #[serde(default)]
    pub shares: Vec<ShareConfig>,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_cpus() -> u32 {
    1
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY
}
fn default_true() -> bool {
    true
}

impl VmConfig {
    /// A VM with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            cpus: default_cpus(),
            memory: DEFAULT_MEMORY,
            serial_out: None,
            boot_protocol: BootProtocol::default(),
            execution: ExecutionChoice::default(),
            cmdline_workarounds: true,
            disks: Vec::new(),
            api_sock: None,
            net: Vec::new(),
            rng: false,
            rng_rate_limiter: None,
            vsock: None,
            checkpoint: None,
            shares: Vec::new(),
        }
    }

    /// Reads a JSON config file. Relative paths in it are relative to the file's folder,
    /// wherever hearth is started from.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_json(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Makes every relative path in the description relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.kernel);
        self.initrd.iter_mut().for_each(fix);
        self.serial_out.iter_mut().for_each(fix);
        self.api_sock.iter_mut().for_each(fix);
        self.disks.iter_mut().for_each(|d| fix(&mut d.path));
        self.vsock.iter_mut().for_each(|v| fix(&mut v.socket));
        self.checkpoint.iter_mut().for_each(|c| fix(&mut c.dir));
    }

    /// Parses a JSON description.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks what can be checked without KVM or the files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.cpus > u32::from(crate::arch::mptable::MAX_CPUS) {
            return Err(ConfigError::TooManyCpus(self.cpus));
        }
        if self.cmdline.len() > CMDLINE_LIMIT {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
            });
        }
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(self.memory));
        }
        for net in &self.net {
            check_tap(&net.tap).map_err(|reason| ConfigError::DeviceSpec {
                what: "network device",
                spec: format!("tap={}", net.tap),
                reason,
            })?;
        }
        if let Some(v) = &self.vsock {
            check_vsock_cid(v.cid)?;
        }
        if let Some(c) = &self.checkpoint {
            c.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
