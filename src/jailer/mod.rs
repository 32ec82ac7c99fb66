//! The jailer: starts hearth (or any VMM binary) confined the way Firecracker's `jailer`
//! confines Firecracker, with the same flags and the same layout, so that orchestrators
//! built for one run the other.
//!
//! In order: every input is checked before anything is created; the exec file is copied
//! into `<chroot-base-dir>/<exec file name>/<id>/root`; the process joins the network
//! namespace, takes its rlimits and cgroups; a new mount namespace pivots into the
//! chroot, which gets `/dev/kvm`, `/dev/net/tun` and `/dev/urandom` made with mknod;
//! optionally the process daemonizes and forks into a new pid namespace; then it drops to
//! the given uid/gid and execs. A failure after something was created removes what the
//! jailer created (chroot folders, cgroups) before it reports.

mod cgroup;
mod fs;

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

pub use cgroup::{CgroupError, CgroupVersion};

/// Where chroots go unless `--chroot-base-dir` says otherwise (Firecracker's default).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// The open-files limit when `--resource-limit no-file=` is not given (Firecracker's).
const DEFAULT_NO_FILE: u64 = 2048;

/// What the jailer refuses or fails at. Each message is one line naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A required flag is absent.
    #[error("--{0} is required")]
    Missing(&'static str),
    /// `--uid` and `--gid` come together.
    #[error("--uid and --gid go together: give both")]
    UidWithoutGid,
    /// The id would escape its folder or is not a plain name.
    #[error("--id {0:?}: use 1 to 64 letters, digits and '-' (no '/', no '..')")]
    BadId(String),
    /// The exec file is unusable.
    #[error("--exec-file {path}: {reason}")]
    ExecFile {
        /// What was given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The chroot base folder is unusable.
    #[error("--chroot-base-dir {path}: {reason}")]
    ChrootBase {
        /// What was given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Another jail (or anything else) is in the chroot already.
    #[error("the chroot {0} already holds a jail (its exec file, dev or run): remove it or use another --id")]
    ChrootInUse(PathBuf),
    /// `--netns` does not name a network namespace file.
    #[error("--netns {path}: {source}")]
    Netns {
        /// What was given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `--resource-limit` is malformed.
    #[error("--resource-limit {0:?}: give fsize=BYTES or no-file=COUNT")]
    ResourceLimit(String),
    /// `--parent-cgroup` would escape the hierarchy.
    #[error("--parent-cgroup {0}: give a relative path without '.' or '..'")]
    ParentCgroup(PathBuf),
    /// A cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A system call on the way failed.
    #[error("{what}: {source}")]
    Os {
        /// What the jailer was doing.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn os_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Os { what, source }
}

/// The jailer's input, as Firecracker's `jailer` takes it.
#[derive(Clone, Debug, Default)]
pub struct JailConfig {
    /// The VM's id: names its chroot and cgroup.
    pub id: Option<String>,
    /// The VMM binary, copied into the chroot.
    pub exec_file: Option<PathBuf>,
    /// The user the VMM runs as.
    pub uid: Option<u32>,
    /// The group the VMM runs as.
    pub gid: Option<u32>,
    /// Where chroots go ([`DEFAULT_CHROOT_BASE`] when `None`).
    pub chroot_base_dir: Option<PathBuf>,
    /// A network namespace file to join (e.g. /var/run/netns/NAME).
    pub netns: Option<PathBuf>,
    /// The cgroup hierarchy to use.
    pub cgroup_version: CgroupVersion,
    /// `FILE=VALUE` cgroup settings, e.g. `cpu.shares=512`.
    pub cgroups: Vec<String>,
    /// The cgroup under which `<id>` is made (the exec file's name when `None`).
    pub parent_cgroup: Option<PathBuf>,
    /// `fsize=BYTES` or `no-file=COUNT`.
    pub resource_limits: Vec<String>,
    /// Run the VMM as pid 1 of a new pid namespace.
    pub new_pid_ns: bool,
    /// Detach from the terminal and session, stdio to /dev/null.
    pub daemonize: bool,
    /// The VMM's own arguments (after `--`).
    pub args: Vec<OsString>,
}

/// A checked [`JailConfig`]: every path and value known good before anything is made.
#[derive(Debug)]
struct Plan {
    id: String,
    exec_file: PathBuf,
    exec_name: OsString,
    uid: u32,
    gid: u32,
    chroot: PathBuf,
    netns: Option<std::fs::File>,
    cgroups: cgroup::Plan,
    fsize: Option<u64>,
    no_file: u64,
    new_pid_ns: bool,
    daemonize: bool,
    args: Vec<OsString>,
}

/// Whether `id` is a valid instance id (Firecracker's rule: 1 to 64 of `[A-Za-z0-9-]`).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Whether `p` stays below the folder it is joined to.
fn plain_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

impl JailConfig {
    fn plan(&self) -> Result<Plan, JailError> {
        let id = self.id.clone().ok_or(JailError::Missing("id"))?;
        if !valid_id(&id) {
            return Err(JailError::BadId(id));
        }
        let given = self
            .exec_file
            .clone()
            .ok_or(JailError::Missing("exec-file"))?;
        let exec_error = |reason: String| JailError::ExecFile {
            path: given.clone(),
            reason,
        };
        let exec_file = std::fs::canonicalize(&given).map_err(|e| exec_error(e.to_string()))?;
        if !exec_file.is_file() {
            return Err(exec_error("not a regular file".into()));
        }
        let exec_name = exec_file
            .file_name()
            .ok_or_else(|| exec_error("has no file name".into()))?
            .to_owned();
        let (uid, gid) = match (self.uid, self.gid) {
            (Some(u), Some(g)) => (u, g),
            (None, None) => return Err(JailError::Missing("uid")),
            _ => return Err(JailError::UidWithoutGid),
        };
        let base_given = self
            .chroot_base_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_CHROOT_BASE.into());
        let base_error = |reason: String| JailError::ChrootBase {
            path: base_given.clone(),
            reason,
        };
        let base = std::fs::canonicalize(&base_given).map_err(|e| base_error(e.to_string()))?;
        if !base.is_dir() {
            return Err(base_error("not a directory".into()));
        }
        let chroot = base.join(&exec_name).join(&id).join("root");
        // The caller may have linked the kernel and disks in already (as with
        // Firecracker); what a jail makes there means another one has it.
        let in_use = [Path::new(&exec_name), Path::new("dev"), Path::new("run")]
            .iter()
            .any(|p| chroot.join(p).symlink_metadata().is_ok());
        if in_use {
            return Err(JailError::ChrootInUse(chroot));
        }
        let netns = match &self.netns {
            Some(p) => Some(std::fs::File::open(p).map_err(|source| JailError::Netns {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let (mut fsize, mut no_file) = (None, DEFAULT_NO_FILE);
        for l in &self.resource_limits {
            let bad = || JailError::ResourceLimit(l.clone());
            let (name, value) = l.split_once('=').ok_or_else(bad)?;
            let value: u64 = value.parse().map_err(|_| bad())?;
            match name {
                "fsize" => fsize = Some(value),
                "no-file" => no_file = value,
                _ => return Err(bad()),
            }
        }
        let parent = match &self.parent_cgroup {
            Some(p) if !plain_relative(p) => return Err(JailError::ParentCgroup(p.clone())),
            Some(p) => p.clone(),
            None => PathBuf::from(&exec_name),
        };
        let cgroups = cgroup::Plan::new(self.cgroup_version, &self.cgroups, &parent, &id)?;
        Ok(Plan {
            id,
            exec_file,
            exec_name,
            uid,
            gid,
            chroot,
            netns,
            cgroups,
            fsize,
            no_file,
            new_pid_ns: self.new_pid_ns,
            daemonize: self.daemonize,
            args: self.args.clone(),
        })
    }
}

/// Jails and execs the VMM. Returns only on failure, having removed what it created.
pub fn run(config: &JailConfig) -> JailError {
    let start_us = fs::clock_us(libc::CLOCK_REALTIME);
    let start_cpu_us = fs::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    let plan = match config.plan() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut created = fs::Created::default();
    let err = match jail(&plan, &mut created, start_us, start_cpu_us) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    created.remove();
    err
}

fn jail(
    plan: &Plan,
    created: &mut fs::Created,
    start_us: u64,
    start_cpu_us: u64,
) -> Result<std::convert::Infallible, JailError> {
    created.dir_all(&plan.chroot)?;
    let exec_in_chroot = plan.chroot.join(&plan.exec_name);
    fs::copy_owned(&plan.exec_file, &exec_in_chroot, plan.uid, plan.gid)?;
    if let Some(ns) = &plan.netns {
        fs::setns(ns, libc::CLONE_NEWNET, "join --netns")?;
    }
    fs::set_rlimit(libc::RLIMIT_NOFILE, Some(plan.no_file), "no-file")?;
    if plan.fsize.is_some() {
        fs::set_rlimit(libc::RLIMIT_FSIZE, plan.fsize, "fsize")?;
    }
    plan.cgroups.apply(created)?;
    let dev_null = match plan.daemonize {
        true => Some(std::fs::File::open("/dev/null").map_err(os_error("open /dev/null"))?),
        false => None,
    };
    fs::pivot_into(&plan.chroot)?;
    // From here on the chroot is the root: nothing outside it is left to clean up but
    // cgroups, which the pivot did not change.
    created.forget_chroot();
    fs::populate_dev(plan.uid, plan.gid)?;
    if let Some(null) = dev_null {
        fs::daemonize(&null)?;
    }
    let exec_path = Path::new("/").join(&plan.exec_name);
    let mut pid_file = exec_path.clone().into_os_string();
    pid_file.push(".pid");
    let pid = if plan.new_pid_ns {
        // The VMM becomes pid 1 of a new namespace; the jailer writes its pid (as seen
        // from outside) and leaves, as Firecracker's does.
        match fs::fork_into_pid_ns()? {
            Some(child) => {
                let r = std::fs::write(&pid_file, child.to_string());
                // SAFETY: _exit ends this process at once; nothing needs unwinding.
                unsafe { libc::_exit(i32::from(r.is_err())) }
            }
            None => None,
        }
    } else {
        Some(std::process::id())
    };
    if let Some(pid) = pid {
        std::fs::write(&pid_file, pid.to_string()).map_err(os_error("write the pid file"))?;
    }
    let cpu_us = fs::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(start_cpu_us);
    Err(exec(plan, &exec_path, start_us, cpu_us))
}

/// Drops to the plan's uid/gid (std clears supplementary groups when root drops its
/// uid) and execs the VMM.
fn exec(plan: &Plan, exec_path: &Path, start_us: u64, parent_cpu_us: u64) -> JailError {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exec_path);
    // Firecracker's process flags, which a VMM started in Firecracker's manner expects
    // before its own; a hearth subcommand (`run ...`) takes none of them.
    let subcommand = plan
        .args
        .first()
        .is_some_and(|a| !a.to_string_lossy().starts_with('-'));
    if !subcommand {
        let cpu_now = fs::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
        cmd.args(["--id", &plan.id])
            .args(["--start-time-us", &start_us.to_string()])
            .args(["--start-time-cpu-us", &cpu_now.to_string()])
            .args(["--parent-cpu-time-us", &parent_cpu_us.to_string()]);
    }
    let e = cmd.args(&plan.args).uid(plan.uid).gid(plan.gid).exec();
    JailError::Os {
        what: format!("exec {}", exec_path.display()),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: &Path, exec: &Path) -> JailConfig {
        JailConfig {
            id: Some("vm-1".into()),
            exec_file: Some(exec.into()),
            uid: Some(1000),
            gid: Some(1000),
            chroot_base_dir: Some(base.into()),
            ..Default::default()
        }
    }

    fn refused(c: &JailConfig) -> String {
        c.plan().expect_err("refused").to_string()
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_made() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-jail-").unwrap();
        let base = dir.as_path();
        std::fs::create_dir(base.join("bin")).unwrap();
        let exec = base.join("bin/vmm");
        std::fs::write(&exec, b"#!/bin/true\n").unwrap();
        assert!(config(base, &exec).plan().is_ok());
        for id in ["../x", "a/b", "", "..", &"x".repeat(65)] {
            let mut c = config(base, &exec);
            c.id = Some(id.into());
            assert!(refused(&c).starts_with("--id"), "{id}");
        }
        let mut c = config(base, &exec);
        c.gid = None;
        assert_eq!(refused(&c), "--uid and --gid go together: give both");
        let mut c = config(base, &exec);
        c.exec_file = Some(base.join("missing"));
        assert!(refused(&c).starts_with("--exec-file"));
        let mut c = config(base, &exec);
        c.resource_limits = vec!["nproc=3".into()];
        assert!(refused(&c).starts_with("--resource-limit"));
        let mut c = config(base, &exec);
        c.parent_cgroup = Some("../up".into());
        assert!(refused(&c).starts_with("--parent-cgroup"));
        let mut c = config(base, &exec);
        c.cgroups = vec!["cpu.shares".into()];
        assert!(refused(&c).contains("cpu.shares"), "{}", refused(&c));
        // Nothing was made beside the exec file.
        let names: Vec<_> = std::fs::read_dir(base).unwrap().collect();
        assert_eq!(names.len(), 1);
        // A chroot in use.
        let root = base.join("vmm/vm-1/root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("x"), b"").unwrap();
        assert!(
            config(base, &exec).plan().is_ok(),
            "the caller's own files are fine"
        );
        std::fs::create_dir(root.join("dev")).unwrap();
        assert!(refused(&config(base, &exec)).contains("already holds a jail"));
    }
}
