//! Landlock: restricts the hearth process to the files its VM uses, so that a guest that
//! got code running inside hearth cannot read or write anything else on the host, even
//! through the system calls its thread's seccomp filter allows (the `vmm` thread may
//! open and create files for snapshots).
//!
//! Landlock restricts the calling thread and the threads it starts afterwards, never
//! threads already running: [`Landlock::restrict_self`] goes first thing, on the main
//! thread, before any hearth thread starts (and so before the guest runs its first
//! instruction, and before the seccomp filters that do not allow its system calls).
//! Everything the VM will open later must be in the rules: [`Landlock::for_config`]
//! lists it from the VM description, and [`Landlock::allow`] adds more (a directory a
//! snapshot will be taken into over the API).

use std::path::{Path, PathBuf};

use landlock::{
    Access as _, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::config::VmConfig;

/// The newest Landlock ABI hearth's rules were written and tested for: its rights are
/// handled (denied unless a rule allows them); a kernel with an older ABI enforces what
/// it knows (at least filesystem access).
const TESTED_ABI: ABI = ABI::V7;

/// Why Landlock could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel cannot enforce Landlock.
    #[error("--landlock: this kernel cannot enforce Landlock ({0}); run without --landlock, or on a kernel with Landlock enabled (CONFIG_SECURITY_LANDLOCK, \"landlock\" in the lsm= boot parameter)")]
    Unsupported(&'static str),
    /// A path in the rules cannot be opened.
    #[error("--landlock: cannot open {path} to allow it: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An output file or directory could not be created before restricting.
    #[error("--landlock: cannot create {path} before restricting hearth to it: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the ruleset.
    #[error("--landlock: the kernel refused the ruleset: {0}")]
    Ruleset(#[source] landlock::RulesetError),
    /// A `--landlock-rule` that does not parse.
    #[error("--landlock-rule '{0}': expected PATH, PATH,ro or PATH,rw")]
    Rule(String),
}

/// What hearth may do with a path (and, for a directory, everything beneath it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Everything: read, write, create, remove, truncate, device ioctls.
    ReadWrite,
    /// A directory where hearth creates (binds) and removes Unix sockets, nothing else.
    Sockets,
    /// A file hearth writes (created empty first if missing, so that its directory
    /// needs no right to create files).
    OutputFile,
    /// A directory hearth writes into (created first if missing, last level only).
    OutputDir,
}

/// One path and what hearth may do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The file or directory.
    pub path: PathBuf,
    /// What hearth may do there.
    pub access: Access,
}

impl std::str::FromStr for Rule {
    type Err = LandlockError;

    /// `PATH`, `PATH,ro` or `PATH,rw` (read-only unless `rw`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, access) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, Access::ReadOnly),
            Some((p, "rw")) => (p, Access::ReadWrite),
            _ => (s, Access::ReadOnly),
        };
        if path.is_empty() {
            return Err(LandlockError::Rule(s.to_string()));
        }
        Ok(Self {
            path: path.into(),
            access,
        })
    }
}

/// The paths a hearth process may use once restricted.
#[derive(Clone, Debug, Default)]
pub struct Landlock {
    rules: Vec<Rule>,
}

impl Landlock {
    /// No paths at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything a VM described by `config` opens while it runs: /dev/kvm, the kernel
    /// and initrd, its disks (read-only ones read-only), /dev/net/tun for network
    /// devices, the directories of its vsock and API sockets, its serial output file,
    /// checkpoint directory and shared directories (and /proc/self/fd and mountinfo for those).
    pub fn for_config(config: &VmConfig) -> Self {
        let mut l = Self::new();
        l.allow("/dev/kvm", Access::ReadWrite);
        l.allow(&config.kernel, Access::ReadOnly);
        if let Some(initrd) = &config.initrd {
            l.allow(initrd, Access::ReadOnly);
        }
        for disk in &config.disks {
            let access = match disk.read_only {
                true => Access::ReadOnly,
                false => Access::ReadWrite,
            };
            l.allow(&disk.path, access);
        }
        if !config.net.is_empty() {
            l.allow("/dev/net/tun", Access::ReadWrite);
        }
        if let Some(v) = &config.vsock {
            l.allow(parent(&v.socket), Access::Sockets);
        }
        if let Some(api) = &config.api_sock {
            l.allow(parent(api), Access::Sockets);
        }
        if let Some(out) = &config.serial_out {
            l.allow(out, Access::OutputFile);
        }
        if let Some(c) = &config.checkpoint {
            l.allow(&c.dir, Access::OutputDir);
        }
        if !config.shares.is_empty() {
            // virtio-fs reopens the files it serves through /proc/self/fd (Landlock then
            // checks the file itself against the share's rule) and reads mount ids.
            l.allow("/proc/self/fd", Access::ReadOnly);
            l.allow("/proc/self/mountinfo", Access::ReadOnly);
        }
        for share in &config.shares {
            let access = match share.read_only {
                true => Access::ReadOnly,
                false => Access::ReadWrite,
            };
            l.allow(&share.path, access);
        }
        l
    }

    /// Allows `path` (and, for a directory, everything beneath it).
    pub fn allow(&mut self, path: impl Into<PathBuf>, access: Access) -> &mut Self {
        self.rules.push(Rule {
            path: path.into(),
            access,
        });
        self
    }

    /// The rules so far.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Restricts the calling thread, and every thread it starts from now on, to the
    /// rules (for good). Also denies TCP bind and connect, connecting to abstract Unix
    /// sockets made outside hearth and signalling other processes, where the kernel
    /// can. Fails, rather than run unrestricted, where the kernel has no Landlock.
    pub fn restrict_self(&self) -> Result<(), LandlockError> {
        let all = AccessFs::from_all(TESTED_ABI);
        let mut ruleset = Ruleset::default()
            .handle_access(all)
            .and_then(|r| r.handle_access(AccessNet::from_all(TESTED_ABI)))
            .and_then(|r| r.scope(Scope::from_all(TESTED_ABI)))
            .and_then(|r| r.create())
            .map_err(LandlockError::Ruleset)?;
        for rule in &self.rules {
            prepare(rule)?;
            let fd = PathFd::new(&rule.path).map_err(|e| LandlockError::Path {
                path: rule.path.clone(),
                source: std::io::Error::other(e),
            })?;
            let is_dir = std::fs::metadata(&rule.path)
                .map_err(|source| LandlockError::Path {
                    path: rule.path.clone(),
                    source,
                })?
                .is_dir();
            let mut access = rights(rule.access);
            if !is_dir {
                access &= AccessFs::from_file(TESTED_ABI);
            }
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access & all))
                .map_err(LandlockError::Ruleset)?;
        }
        let status = ruleset.restrict_self().map_err(LandlockError::Ruleset)?;
        match (status.landlock, status.ruleset) {
            (LandlockStatus::NotImplemented, _) => {
                Err(LandlockError::Unsupported("not built into the kernel"))
            }
            (LandlockStatus::NotEnabled, _) => Err(LandlockError::Unsupported("disabled at boot")),
            (_, RulesetStatus::NotEnforced) => {
                Err(LandlockError::Unsupported("the ruleset was not enforced"))
            }
            (_, RulesetStatus::PartiallyEnforced) => {
                log::info!(
                    "Landlock: partly enforced (this kernel's ABI is older than {TESTED_ABI:?})"
                );
                Ok(())
            }
            (_, _) => {
                log::debug!("Landlock: enforced, {} rules", self.rules.len());
                Ok(())
            }
        }
    }
}

/// Where a socket file is bound: its directory (`.` for a bare name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates an output file or directory that does not exist yet.
fn prepare(rule: &Rule) -> Result<(), LandlockError> {
    let create = |source| LandlockError::Create {
        path: rule.path.clone(),
        source,
    };
    match rule.access {
        Access::OutputFile => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rule.path)
            .map(drop)
            .map_err(create),
        Access::OutputDir => match std::fs::create_dir(&rule.path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(create(e)),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The filesystem rights of an [`Access`].
fn rights(access: Access) -> BitFlags<AccessFs> {
    let read = AccessFs::from_read(TESTED_ABI);
    match access {
        // Device ioctls too: the size of a read-only host block device.
        Access::ReadOnly => read | AccessFs::IoctlDev,
        Access::ReadWrite | Access::OutputFile | Access::OutputDir => {
            AccessFs::from_all(TESTED_ABI)
        }
        Access::Sockets => AccessFs::MakeSock | AccessFs::RemoveFile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r: Rule = "/srv/snaps,rw".parse().unwrap();
        assert_eq!(r.path, Path::new("/srv/snaps"));
        assert_eq!(r.access, Access::ReadWrite);
        assert_eq!("/a,ro".parse::<Rule>().unwrap().access, Access::ReadOnly);
        assert_eq!("/a".parse::<Rule>().unwrap().access, Access::ReadOnly);
        // A comma that names no access is part of the path.
        assert_eq!("/a,b".parse::<Rule>().unwrap().path, Path::new("/a,b"));
        assert!(",rw".parse::<Rule>().is_err());
    }

    #[test]
    fn a_config_lists_its_files() {
        let mut c = VmConfig::new("/k");
        c.initrd = Some("/i".into());
        c.disks
            .push(crate::config::parse_disk("path=/d1,readonly=on").unwrap());
        c.disks.push(crate::config::parse_disk("path=/d2").unwrap());
        c.api_sock = Some("/run/h/api.sock".into());
        let l = Landlock::for_config(&c);
        let has = |p: &str, a| {
            l.rules()
                .iter()
                .any(|r| r.path == Path::new(p) && r.access == a)
        };
        assert!(has("/dev/kvm", Access::ReadWrite));
        assert!(has("/k", Access::ReadOnly));
        assert!(has("/i", Access::ReadOnly));
        assert!(has("/d1", Access::ReadOnly));
        assert!(has("/d2", Access::ReadWrite));
        assert!(has("/run/h", Access::Sockets));
        assert!(!l
            .rules()
            .iter()
            .any(|r| r.path == Path::new("/dev/net/tun")));
    }
}
