//! The VM description: what the CLI flags, the JSON config file and library users fill
//! in, parsed and checked apart from the VM itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::boot::BootProtocol;

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

/// Parses a size: a number with an optional K/M/G/T suffix (binary units, an optional
/// trailing "B" or "iB"); a plain number is MiB, as QEMU's `-m`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix('B'))
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "M" => 20,
        "K" => 10,
        "G" => 30,
        "T" => 40,
        _ => return Err(err()),
    };
    if n > (u64::MAX >> shift) {
        return Err(err());
    }
    Ok(n << shift)
}

fn serialize_size<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    // Binary formats (snapshots) keep the plain byte count.
    if !s.is_human_readable() {
        s.serialize_u64(*v)
    } else if v.is_multiple_of(1 << 20) {
        s.serialize_str(&format!("{}M", v >> 20))
    } else {
        s.serialize_str(&format!("{}K", v >> 10))
    }
}

fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Mib(u64),
        Text(String),
    }
    if !d.is_human_readable() {
        return u64::deserialize(d);
    }
    match Size::deserialize(d)? {
        Size::Mib(n) => n
            .checked_mul(1 << 20)
            .ok_or_else(|| serde::de::Error::custom(format!("memory of {n} MiB is too large"))),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// Splits `key=value,key=value` (the Cloud Hypervisor device syntax).
fn parse_options<'a>(
    what: &'static str,
    spec: &'a str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    let bad = |reason: String| ConfigError::DeviceSpec {
        what,
        spec: spec.to_string(),
        reason,
    };
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("'{part}' is not key=value")))?;
        if !allowed.contains(&k) {
            return Err(bad(format!(
                "unknown option '{k}' (known: {})",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(bad(format!("'{k}' given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn parse_on_off(what: &'static str, spec: &str, key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(ConfigError::DeviceSpec {
            what,
            spec: spec.to_string(),
            reason: format!("{key} must be on or off, not '{v}'"),
        }),
    }
}

/// Parses `path=FILE[,readonly=on|off][,id=SERIAL]` (`--disk`); `read_only=` is accepted
/// for `readonly=`, as in JSON.
pub fn parse_disk(spec: &str) -> Result<DiskConfig, ConfigError> {
    const WHAT: &str = "--disk";
    let bad = |reason: &str| ConfigError::DeviceSpec {
        what: WHAT,
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        read_only: false,
        id: None,
        rate_limiter: None,
    };
    let mut limits = crate::rate_limit::SpecLimits::default();
    let keys = ["path", "readonly", "read_only", "id", "bw", "ops"];
    let options = parse_options(WHAT, spec, &keys)?;
    if options
        .iter()
        .filter(|(k, _)| k.starts_with("read"))
        .count()
        > 1
    {
        return Err(bad("'readonly' given twice (read_only is the same option)"));
    }
    for (k, v) in options {
        match k {
            "path" if v.is_empty() => return Err(bad("path is empty")),
            "path" => disk.path = PathBuf::from(v),
            "readonly" | "read_only" => disk.read_only = parse_on_off(WHAT, spec, k, v)?,
            "bw" | "ops" => limits.set(k, v).map_err(|e| bad(&e))?,
            _ if v.len() > 20 => return Err(bad("id is longer than 20 bytes")),
            _ => disk.id = Some(v.to_string()),
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(bad("path=FILE is required"));
    }
    disk.rate_limiter = limits.get("");
    Ok(disk)
}

/// Checks a tap name (the kernel's rules for interface names), saying what is wrong.
fn check_tap(name: &str) -> Result<(), String> {
    hearth_devices::virtio::net::check_tap_name(name).map_err(|e| e.to_string())
}

/// Parses `tap=NAME[,mac=MAC]` (`--net`).
pub fn parse_net(spec: &str) -> Result<NetConfig, ConfigError> {
    const WHAT: &str = "--net";
    let bad = |reason: String| ConfigError::DeviceSpec {
        what: WHAT,
        spec: spec.to_string(),
        reason,
    };
    let mut net = NetConfig {
        tap: String::new(),
        mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        id: None,
    };
    let mut limits = crate::rate_limit::SpecLimits::default();
    let keys = ["tap", "mac", "rx_bw", "rx_ops", "tx_bw", "tx_ops"];
    for (k, v) in parse_options(WHAT, spec, &keys)? {
        match k {
            "rx_bw" | "rx_ops" | "tx_bw" | "tx_ops" => limits.set(k, v).map_err(&bad)?,
            "tap" if v.is_empty() => {
                return Err(bad(
                    "tap is empty; give the name of a host tap interface".into()
                ))
            }
            "tap" => {
                check_tap(v).map_err(&bad)?;
                net.tap = v.to_string();
            }
            _ => net.mac = Some(v.parse::<MacAddr>().map_err(|e| bad(e.to_string()))?),
        }
    }
    if net.tap.is_empty() {
        return Err(bad("tap=NAME is required".into()));
    }
    net.rx_rate_limiter = limits.get("rx_");
    net.tx_rate_limiter = limits.get("tx_");
    Ok(net)
}

fn check_vsock_cid(cid: u64) -> Result<(), ConfigError> {
    use hearth_devices::virtio::vsock::{MAX_GUEST_CID, MIN_GUEST_CID};
    if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        Ok(())
    } else {
        Err(ConfigError::VsockCid(cid))
    }
}

/// Parses `DIR[,tag=T][,rw]` (`--share`): a read-only share unless `rw` is given. The
/// tag defaults to `shareN` (N its position among the shares, see [`share_tag`]).
pub fn parse_share(spec: &str) -> Result<ShareConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::DeviceSpec {
        what: "--share",
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let mut parts = spec.split(',');
    let dir = parts
        .next()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("give a directory first"))?;
    let path = std::path::absolute(dir).map_err(|_| bad("the directory path is not valid"))?;
    let mut share = ShareConfig {
        path,
        tag: String::new(),
        read_only: true,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "rw" => share.read_only = false,
            None if opt == "ro" => share.read_only = true,
            Some(("tag", t)) if !t.is_empty() && t.len() <= 36 => share.tag = t.to_string(),
            Some(("tag", _)) => return Err(bad("tag must be 1 to 36 bytes")),
            _ => {
                return Err(bad(&format!(
                    "unknown option '{opt}' (known: tag=T, rw, ro)"
                )))
            }
        }
    }
    Ok(share)
}

/// The tag the guest mounts share number `index` by: its own, or `share<index>`.
pub fn share_tag(index: usize, share: &ShareConfig) -> String {
    if share.tag.is_empty() {
        format!("share{index}")
    } else {
        share.tag.clone()
    }
}

/// Parses `cid=N,socket=PATH` (`--vsock`).
pub fn parse_vsock(spec: &str) -> Result<VsockConfig, ConfigError> {
    const WHAT: &str = "--vsock";
    let bad = |reason: String| ConfigError::DeviceSpec {
        what: WHAT,
        spec: spec.to_string(),
        reason,
    };
    let (mut cid, mut socket) = (None, None);
    for (k, v) in parse_options(WHAT, spec, &["cid", "socket"])? {
        match k {
            "cid" => {
                let n: u64 = v.parse().map_err(|_| {
                    bad(format!(
                        "cid must be a decimal number of 3 or more, not '{v}'"
                    ))
                })?;
                check_vsock_cid(n).map_err(|e| bad(e.to_string()))?;
                cid = Some(n);
            }
            _ if v.is_empty() => return Err(bad("socket is empty".into())),
            _ => socket = Some(PathBuf::from(v)),
        }
    }
    match (cid, socket) {
        (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
        (None, _) => Err(bad(
            "cid=N is required (the guest's context ID, 3 or more)".into()
        )),
        (_, None) => Err(bad(
            "socket=PATH is required (the Unix socket hearth listens on)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("256").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        for bad in [
            "",
            "M",
            "12X",
            "-1",
            "1.5G",
            "99999999999999999999T",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_config_with_defaults_and_sizes() {
        let c = VmConfig::from_json(r#"{"kernel": "/k", "memory": "1G", "cpus": 2}"#).unwrap();
        assert_eq!(c.memory, 1 << 30);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert!(c.cmdline_workarounds);
        let c = VmConfig::from_json(r#"{"kernel": "/k", "memory": 64}"#).unwrap();
        assert_eq!(c.memory, 64 << 20);
        assert!(VmConfig::from_json(r#"{"kernel": "/k", "cpu": 2}"#).is_err());
        assert!(VmConfig::from_json(r#"{"kernel": "/k", "memory": "lots"}"#).is_err());
        let round = serde_json::to_string(&c).unwrap();
        assert_eq!(VmConfig::from_json(&round).unwrap(), c);
    }

    #[test]
    fn disk_specs() {
        let d: DiskConfig = parse_disk("path=/a.img,readonly=on,id=data0").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/a.img".into(),
                read_only: true,
                id: Some("data0".into()),
                rate_limiter: None,
            }
        );
        let d = parse_disk("path=/b").unwrap();
        assert!(!d.read_only);
        assert!(parse_disk("path=/b,read_only=on").unwrap().read_only);
        let e = parse_disk("path=/b,read_only=on,readonly=off").unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        // One spelling in JSON too: readonly, with read_only accepted.
        let c = VmConfig::from_json(r#"{"kernel": "/k", "disks": [{"path": "/a", "readonly": true}, {"path": "/b", "read_only": true}]}"#).unwrap();
        assert!(c.disks.iter().all(|d| d.read_only));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""readonly":true"#), "{json}");
        for bad in [
            "",
            "/a.img",
            "readonly=on",
            "path=/a,readonly=maybe",
            "path=/a,size=3",
            "path=/a,path=/b",
            "path=/a,id=123456789012345678901",
        ] {
            let e = parse_disk(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --disk"), "{bad}: {e}");
        }
    }

    #[test]
    fn net_specs() {
        let n = parse_net("tap=tap0,mac=06:00:AC:10:00:02").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.unwrap().to_string(), "06:00:ac:10:00:02");
        assert_eq!(parse_net("tap=t").unwrap().mac, None);
        for (bad, why) in [
            ("", "required"),
            ("tap=", "empty"),
            ("tap0", "key=value"),
            ("mac=06:00:ac:10:00:02", "required"),
            ("tap=0123456789abcdef", "at most 15"),
            ("tap=a/b", "not a valid interface name"),
            ("tap=t,mac=06:00:ac:10:00", "six hex bytes"),
            ("tap=t,mac=01:00:5e:00:00:01", "unicast"),
            ("tap=t,tap=u", "twice"),
            ("tap=t,queues=2", "unknown option"),
        ] {
            let e = parse_net(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --net"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn json_net_and_rng() {
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "net": [{"tap": "tap0", "mac": "06:00:ac:10:00:02"}, {"tap": "tap1"}], "rng": true}"#,
        )
        .unwrap();
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0].mac.unwrap().0, [6, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(c.net[1].mac, None);
        assert!(c.rng);
        let round = serde_json::to_string(&c).unwrap();
        assert_eq!(VmConfig::from_json(&round).unwrap(), c);
        let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert!(c.net.is_empty() && !c.rng);
        for bad in [
            r#"{"kernel": "/k", "net": [{"tap": "t", "mac": "nope"}]}"#,
            r#"{"kernel": "/k", "net": [{"tap": "t", "queues": 2}]}"#,
            r#"{"kernel": "/k", "net": [{"mac": "06:00:ac:10:00:02"}]}"#,
            r#"{"kernel": "/k", "rng": "yes"}"#,
        ] {
            assert!(VmConfig::from_json(bad).is_err(), "{bad}");
        }
        let mut c = VmConfig::new("/k");
        c.net.push(NetConfig {
            tap: "much-too-long-tap-name".into(),
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            id: None,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at most 15"), "{e}");
    }

    #[test]
    fn validation() {
        let mut c = VmConfig::new("/k");
        assert!(c.validate().is_ok());
        c.cpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::NoCpus)));
        c.cpus = 1000;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("more than hearth supports: at most 254"), "{e}");
        c.cpus = 254;
        assert!(c.validate().is_ok());
        c.cpus = 1;
        c.cmdline = "x".repeat(4096);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("4096 bytes; the limit is 4095 bytes"), "{e}");
        c.cmdline = "x".repeat(4095);
        assert!(c.validate().is_ok());
        c.cmdline = DEFAULT_CMDLINE.into();
        c.memory = 1 << 20;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooSmall(_))));
        c.memory = DEFAULT_MEMORY;
        c.kernel = PathBuf::new();
        assert!(matches!(c.validate(), Err(ConfigError::NoKernel)));
    }

    #[test]
    fn config_file_paths_are_relative_to_the_file() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-cfg-").unwrap();
        let file = tmp.as_path().join("vm.json");
        std::fs::write(
            &file,
            r#"{"kernel": "k", "initrd": "sub/i", "serial_out": "/abs/out",
                "disks": [{"path": "d.img"}], "api_sock": "api",
                "vsock": {"cid": 3, "socket": "v.sock"}}"#,
        )
        .unwrap();
        let c = VmConfig::from_file(&file).unwrap();
        let d = tmp.as_path();
        assert_eq!(c.kernel, d.join("k"));
        assert_eq!(c.initrd, Some(d.join("sub/i")));
        assert_eq!(c.serial_out, Some(PathBuf::from("/abs/out")));
        assert_eq!(c.disks[0].path, d.join("d.img"));
        assert_eq!(c.api_sock, Some(d.join("api")));
        assert_eq!(c.vsock.unwrap().socket, d.join("v.sock"));
        // No kernel in the file: accepted here, supplied by --kernel later.
        std::fs::write(&file, r#"{"cpus": 2}"#).unwrap();
        let c = VmConfig::from_file(&file).unwrap();
        assert_eq!(c.kernel, PathBuf::new());
        assert_eq!(c.cpus, 2);
    }

    #[test]
    fn share_specs_and_json() {
        let s = parse_share("/srv/data").unwrap();
        assert_eq!(
            (s.path.to_str(), s.tag.as_str(), s.read_only),
            (Some("/srv/data"), "", true)
        );
        assert_eq!(share_tag(2, &s), "share2");
        let s = parse_share("/srv/data,tag=data,rw").unwrap();
        assert_eq!((s.tag.as_str(), s.read_only), ("data", false));
        assert_eq!(share_tag(0, &s), "data");
        let rel = parse_share("rel").unwrap();
        assert!(rel.path.is_absolute() && rel.path.ends_with("rel"));
        for bad in [
            "",
            ",rw",
            "/x,tag=",
            "/x,bogus",
            &format!("/x,tag={}", "t".repeat(37)),
        ] {
            let e = parse_share(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --share"), "{bad}: {e}");
        }
        let c = VmConfig::from_json(
            r#"{"kernel": "k", "shares": [{"path": "/srv", "read_only": true}, {"path": "/w", "tag": "w"}]}"#,
        )
        .unwrap();
        assert_eq!(c.shares.len(), 2);
        assert!(c.shares[0].read_only && !c.shares[1].read_only);
        assert_eq!(share_tag(0, &c.shares[0]), "share0");
    }

    #[test]
    fn vsock_specs() {
        assert_eq!(
            parse_vsock("cid=3,socket=/tmp/vm.sock").unwrap(),
            VsockConfig {
                cid: 3,
                socket: "/tmp/vm.sock".into()
            }
        );
        assert_eq!(
            parse_vsock("socket=/s,cid=4294967294").unwrap().cid,
            4294967294
        );
        for (bad, why) in [
            ("", "cid=N is required"),
            ("socket=/s", "cid=N is required"),
            ("cid=3", "socket=PATH is required"),
            ("cid=3,socket=", "socket is empty"),
            ("cid=2,socket=/s", "cid 2 is reserved"),
            ("cid=0,socket=/s", "reserved"),
            ("cid=4294967295,socket=/s", "reserved"),
            ("cid=-1,socket=/s", "decimal number"),
            ("cid=0x10,socket=/s", "decimal number"),
            ("cid=3,socket=/s,port=5", "unknown option 'port'"),
            ("cid=3,cid=4,socket=/s", "given twice"),
        ] {
            let e = parse_vsock(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --vsock"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "vsock": {"cid": 3, "socket": "/tmp/vm.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.vsock.as_ref().unwrap().socket, Path::new("/tmp/vm.sock"));
        assert!(VmConfig::from_json(r#"{"kernel": "/k", "vsock": {"cid": 3}}"#).is_err());
        assert!(VmConfig::from_json(
            r#"{"kernel": "/k", "vsock": {"cid": 3, "socket": "/s", "uds": 1}}"#
        )
        .is_err());
        let mut c = VmConfig::new("/k");
        c.vsock = Some(VsockConfig {
            cid: 1,
            socket: "/s".into(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::VsockCid(1))));
    }
}
