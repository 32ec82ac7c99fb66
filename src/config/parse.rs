//! Parsing the flag forms of a VM description (`--memory 2G`, `--disk path=...,readonly`,
//! `--net tap=...`, `--share DIR,rw`, `--vsock cid=...`) and sizes in JSON.

use serde::{Deserialize, Deserializer, Serializer};

use super::*;

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

pub(super) fn serialize_size<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    // Binary formats (snapshots) keep the plain byte count.
    if !s.is_human_readable() {
        s.serialize_u64(*v)
    } else if v.is_multiple_of(1 << 20) {
        s.serialize_str(&format!("{}M", v >> 20))
    } else {
        s.serialize_str(&format!("{}K", v >> 10))
    }
}

pub(super) fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
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
    check_options(what, spec, allowed, spec.split(','))
}

/// Splits each of `parts` at its `=`, refusing unknown and repeated keys (`spec` is what
/// the user wrote, for the message).
fn check_options<'a>(
    what: &'static str,
    spec: &str,
    allowed: &[&str],
    parts: impl Iterator<Item = &'a str>,
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    let bad = |reason: String| ConfigError::DeviceSpec {
        what,
        spec: spec.to_string(),
        reason,
    };
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in parts.filter(|p| !p.is_empty()) {
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

/// A `--disk` flag: the disk, and whether `hearth run ... -- CMD` boots from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// The disk.
    pub disk: DiskConfig,
    /// `root`: the command's root filesystem (only with a command).
    pub root: bool,
}

/// Parses `[path=]FILE[,readonly=on|off][,ro|rw][,root][,id=SERIAL][,bw=..][,ops=..]`
/// (`--disk`): a first part without `=` is the path, `ro`/`rw` stand for
/// `readonly=on`/`off` (as for `--share`), and `read_only=` is accepted for `readonly=`,
/// as in JSON.
pub fn parse_disk_arg(spec: &str) -> Result<DiskArg, ConfigError> {
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
        drive_id: None,
        rate_limiter: None,
    };
    let mut root = false;
    let mut limits = crate::rate_limit::SpecLimits::default();
    let keys = ["path", "readonly", "read_only", "id", "bw", "ops", "root"];
    // The bare words, spelled out as the key=value they stand for.
    let mut parts: Vec<String> = Vec::new();
    for (i, part) in spec.split(',').filter(|p| !p.is_empty()).enumerate() {
        parts.push(match part {
            _ if part.contains('=') => part.to_string(),
            _ if i == 0 => format!("path={part}"),
            "root" => "root=on".into(),
            "ro" => "readonly=on".into(),
            "rw" => "readonly=off".into(),
            _ => {
                return Err(bad(&format!(
                    "'{part}' is not key=value (bare words: the path first, then ro, rw, root)"
                )))
            }
        });
    }
    let options = check_options(WHAT, spec, &keys, parts.iter().map(String::as_str))?;
    if options
        .iter()
        .filter(|(k, _)| k.starts_with("read"))
        .count()
        > 1
    {
        return Err(bad(
            "the read-only setting is given twice (readonly, read_only, ro and rw are one option)",
        ));
    }
    for (k, v) in options {
        match k {
            "path" if v.is_empty() => return Err(bad("path is empty")),
            "path" => disk.path = PathBuf::from(v),
            "readonly" | "read_only" => disk.read_only = parse_on_off(WHAT, spec, k, v)?,
            "root" => root = parse_on_off(WHAT, spec, k, v)?,
            "bw" | "ops" => limits.set(k, v).map_err(|e| bad(&e))?,
            _ if v.len() > 20 => return Err(bad("id is longer than 20 bytes")),
            _ => disk.id = Some(v.to_string()),
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(bad("path=FILE is required"));
    }
    disk.rate_limiter = limits.get("");
    Ok(DiskArg { disk, root })
}

/// Parses a `--disk` spec ([`parse_disk_arg`]) that does not ask to be a root disk.
pub fn parse_disk(spec: &str) -> Result<DiskConfig, ConfigError> {
    let arg = parse_disk_arg(spec)?;
    if arg.root {
        return Err(ConfigError::RootDisk(
            "root applies only to a command: hearth run ... -- CMD",
        ));
    }
    Ok(arg.disk)
}

/// Checks a tap name (the kernel's rules for interface names), saying what is wrong.
pub(super) fn check_tap(name: &str) -> Result<(), String> {
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

pub(super) fn check_vsock_cid(cid: u64) -> Result<(), ConfigError> {
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
