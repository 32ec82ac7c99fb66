//! Part of the `hearth` binary: the jailer's flags, Firecracker's `jailer` flags exactly,
//! taken both by `hearth jail` and by the binary called under the name `jailer`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser};
use hearth::jailer::{CgroupVersion, JailConfig};

/// Firecracker's jailer flags.
#[derive(Args, Debug)]
pub struct JailArgs {
    /// The microVM's id: 1 to 64 letters, digits and '-'; names its chroot and cgroup.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// The VMM binary to jail (copied into the chroot).
    #[arg(long, value_name = "FILE")]
    exec_file: Option<PathBuf>,
    /// The user id the VMM runs as.
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// The group id the VMM runs as.
    #[arg(long, value_name = "GID")]
    gid: Option<u32>,
    /// The chroot is <DIR>/<exec file name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = hearth::jailer::DEFAULT_CHROOT_BASE)]
    chroot_base_dir: PathBuf,
    /// A network namespace to join (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Detach: new session, stdio to /dev/null.
    #[arg(long)]
    daemonize: bool,
    /// Run the VMM as pid 1 of a new pid namespace (the jailer exits after writing
    /// <chroot>/<exec file name>.pid).
    #[arg(long)]
    new_pid_ns: bool,
    /// A cgroup setting FILE=VALUE, e.g. cpu.shares=512 or memory.limit_in_bytes=512M;
    /// repeat for more.
    #[arg(long, value_name = "FILE=VALUE")]
    cgroup: Vec<String>,
    /// The cgroup hierarchy: 1 or 2.
    #[arg(long, value_name = "1|2", default_value = "1")]
    cgroup_version: CgroupVersion,
    /// The cgroup under which <id> is made [default: the exec file's name].
    #[arg(long, value_name = "PATH")]
    parent_cgroup: Option<PathBuf>,
    /// fsize=BYTES or no-file=COUNT (default no-file=2048); repeat for more.
    #[arg(long, value_name = "NAME=VALUE")]
    resource_limit: Vec<String>,
    /// Arguments for the VMM.
    #[arg(last = true, value_name = "VMM ARGS")]
    args: Vec<OsString>,
}

/// The binary called `jailer`.
#[derive(Parser, Debug)]
#[command(
    name = "jailer",
    version,
    about = "Starts a VMM in a chroot, namespaces and cgroups, as an unprivileged user (Firecracker's jailer flags)"
)]
pub struct JailerCli {
    #[command(flatten)]
    args: JailArgs,
}

impl JailerCli {
    /// The jail's arguments.
    pub fn into_args(self) -> JailArgs {
        self.args
    }
}

/// Whether the program was called under the name `jailer`.
pub fn called_as_jailer() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "jailer"))
        .unwrap_or(false)
}

/// Jails and execs; returns only with the reason it could not.
pub fn jail(args: JailArgs) -> hearth::jailer::JailError {
    let config = JailConfig {
        id: args.id,
        exec_file: args.exec_file,
        uid: args.uid,
        gid: args.gid,
        chroot_base_dir: Some(args.chroot_base_dir),
        netns: args.netns,
        cgroup_version: args.cgroup_version,
        cgroups: args.cgroup,
        parent_cgroup: args.parent_cgroup,
        resource_limits: args.resource_limit,
        new_pid_ns: args.new_pid_ns,
        daemonize: args.daemonize,
        args: args.args,
    };
    hearth::jailer::run(&config)
}
