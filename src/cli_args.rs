//! The command line: clap's description of every subcommand and flag, and turning
//! `run`'s flags into a [`VmConfig`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hearth::boot::BootProtocol;
use hearth::config::{parse_size, ConfigError, DiskArg, ExecutionChoice, NetConfig, VmConfig};

use crate::{jail_cli, landlock_cli, seccomp_cli};

/// hearth: a minimal KVM virtual machine monitor.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, lives on main's stack
pub(crate) enum Command {
    /// Boot a VM and show its serial console; exits when the guest does.
    Run(RunArgs),
    /// Show what this host's KVM offers and whether it runs guests natively or emulates them.
    Info,
    /// Control a running hearth through its API socket.
    Ctl(CtlArgs),
    /// Restore a VM from a snapshot directory in this new process.
    Restore(RestoreArgs),
    /// Start a VMM jailed as Firecracker's jailer does (the same flags; also what the
    /// binary does when called `jailer`): hearth jail --id ID --exec-file hearth --uid U
    /// --gid G ... -- run --kernel vmlinux ...
    Jail(jail_cli::JailArgs),
    /// Compile a seccomp filter in Firecracker's JSON format into its compiled format, for
    /// --seccomp-filter here or in Firecracker (keys vmm, api and vcpu for Firecracker).
    SeccompCompile {
        /// The JSON filter.
        #[arg(value_name = "JSON")]
        input: PathBuf,
        /// Where to write the compiled filter (Firecracker v1.15+'s bitcode format).
        #[arg(value_name = "OUT")]
        output: PathBuf,
    },
    /// Work on snapshot directories.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Fold a snapshot's chain (its full memory and diffs) into one full snapshot.
    Merge {
        /// The snapshot directory.
        dir: PathBuf,
        /// Write the merged snapshot here instead of replacing DIR's (crash-safely).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Show what a snapshot holds (format, writer, configuration, memory chain) and
    /// verify every checksum; exits non-zero when one fails.
    Inspect {
        /// The snapshot directory.
        dir: PathBuf,
    },
}

#[derive(Args)]
pub(crate) struct CtlArgs {
    /// The socket the VM was started with (--api-sock).
    #[arg(long, value_name = "PATH")]
    pub(crate) api_sock: PathBuf,
    #[command(subcommand)]
    pub(crate) action: CtlAction,
}

#[derive(Subcommand)]
pub(crate) enum CtlAction {
    /// Stop every vCPU and the devices at a consistent point.
    Pause,
    /// Let a paused VM run on.
    Resume,
    /// Write a snapshot (state + memory) to a directory; the VM stays paused unless
    /// --resume is given.
    Snapshot {
        /// The snapshot directory (its last level is created if needed).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Resume the VM once the snapshot is written.
        #[arg(long)]
        resume: bool,
        /// Write only the pages changed since the VM's previous snapshot (or its
        /// restore); the new snapshot names that one as its parent.
        #[arg(long)]
        diff: bool,
    },
    /// Send any Firecracker API request and print the answer's body.
    Request {
        /// GET, PUT or PATCH.
        method: String,
        /// The path, e.g. /machine-config.
        path: String,
        /// A JSON body.
        body: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Run at once (otherwise the VM waits, paused, for `hearth ctl resume`).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Serve the control socket here.
    #[arg(long, value_name = "PATH")]
    pub(crate) api_sock: Option<PathBuf>,
    /// Write guest serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) serial_out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) seccomp: seccomp_cli::SeccompArgs,
    #[command(flatten)]
    pub(crate) landlock: landlock_cli::LandlockArgs,
    /// Use tap NEW for the network device that used tap OLD; repeat for more.
    #[arg(long, value_name = "OLD=NEW")]
    pub(crate) net_tap: Vec<String>,
    /// Use disk file NEW (of the same size) for the disk that was OLD; repeat for more.
    #[arg(long, value_name = "OLD=NEW")]
    pub(crate) disk_path: Vec<String>,
    /// Listen for vsock host connections on PATH instead of the snapshot's socket.
    #[arg(long, value_name = "PATH")]
    pub(crate) vsock_socket: Option<PathBuf>,
    /// How the guest's clock carries on: from where it stood (keep), or forward by the
    /// real time since the snapshot (realtime, so that its wall clock is right).
    #[arg(long, value_enum, default_value_t = hearth::snapshot::overrides::ClockChoice::Keep)]
    pub(crate) clock: hearth::snapshot::overrides::ClockChoice,
    #[command(flatten)]
    pub(crate) checkpoint: CheckpointArgs,
    /// Log what hearth does to stderr.
    #[arg(long, short)]
    pub(crate) verbose: bool,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// A JSON VM description; flags given as well override its fields.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The kernel: an ELF vmlinux (64-bit or PVH entry) or a bzImage.
    #[arg(long, value_name = "FILE")]
    pub(crate) kernel: Option<PathBuf>,
    /// An initrd or initramfs.
    #[arg(long, value_name = "FILE")]
    pub(crate) initrd: Option<PathBuf>,
    /// The kernel command line [default: "console=ttyS0 reboot=k panic=-1"].
    #[arg(long, value_name = "TEXT")]
    pub(crate) cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub(crate) cpus: Option<u32>,
    /// Guest memory, e.g. 256M or 2G (a plain number is MiB) [default: 128M].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub(crate) memory: Option<u64>,
    /// Write guest serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) serial_out: Option<PathBuf>,
    /// Which kernel entry point to use [default: auto: PVH when the kernel has one].
    #[arg(long, value_enum)]
    pub(crate) boot_protocol: Option<BootProtocol>,
    /// Whether KVM emulates guest kernel mode [default: auto: measure it].
    #[arg(long, value_enum)]
    pub(crate) execution: Option<ExecutionChoice>,
    /// On an emulating KVM, do not append "noxsave clearcpuid=popcnt,smap" to the
    /// command line.
    #[arg(long)]
    pub(crate) no_cmdline_workarounds: bool,
    /// A virtio block device:
    /// [path=]FILE[,readonly=on|ro|rw][,id=SERIAL][,bw=SIZE/MS][,ops=N/MS][,root];
    /// repeat for more. bw and ops are rate limits (token buckets: SIZE
    /// bytes or N requests per MS milliseconds, an optional /BURST after). With a command,
    /// root makes the disk's filesystem the guest's root instead of the host's.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub(crate) disk: Vec<DiskArg>,
    /// A virtio network device over an existing host tap: tap=NAME[,mac=MAC] plus rate
    /// limits rx_bw=, rx_ops=, tx_bw=, tx_ops= (as for --disk); repeat for more. Without
    /// mac, a random locally administered address is used.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    pub(crate) net: Vec<NetConfig>,
    /// A virtio entropy device fed by the host's getrandom.
    #[arg(long)]
    pub(crate) rng: bool,
    /// Rate limits for the entropy device (implies --rng): bw=SIZE/MS[/BURST] and/or
    /// ops=N/MS[/BURST], e.g. bw=64K/1000.
    #[arg(long, value_name = "SPEC")]
    pub(crate) rng_rate_limiter: Option<String>,
    /// Serve a control socket (pause, resume, snapshot) at PATH.
    #[arg(long, value_name = "PATH")]
    pub(crate) api_sock: Option<PathBuf>,
    /// A virtio-vsock device: cid=N,socket=PATH. hearth listens on PATH for host
    /// connections (`CONNECT <port>`); guest connections to host port P go to PATH_P.
    #[arg(long, value_name = "SPEC")]
    pub(crate) vsock: Option<String>,
    #[command(flatten)]
    pub(crate) seccomp: seccomp_cli::SeccompArgs,
    #[command(flatten)]
    pub(crate) landlock: landlock_cli::LandlockArgs,
    #[command(flatten)]
    pub(crate) checkpoint: CheckpointArgs,
    /// Log what hearth does (KVM mode, timings, exits) to stderr.
    #[arg(long, short)]
    pub(crate) verbose: bool,
    /// Share a host directory over virtio-fs: DIR[,tag=T][,rw] (read-only unless rw; the
    /// tag defaults to shareN). With a command, it is mounted at its host path.
    #[arg(long, value_name = "SPEC", value_parser = parse_share)]
    pub(crate) share: Vec<hearth::config::ShareConfig>,
    /// With a command: end the VM after SECS seconds and exit with 124.
    #[arg(long, value_name = "SECS", requires = "command")]
    pub(crate) timeout: Option<u64>,
    /// With a command: exit with 125 when the guest has not started hearth's init after
    /// SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "command")]
    pub(crate) boot_timeout: u64,
    /// A command to run in the guest (after `--`): hearth boots the kernel with its own
    /// init, runs it in the host's working directory over a read-only view of the host's
    /// root (or a --disk given root), and exits with its status (124 timeout, 125 guest or
    /// hearth failure).
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

pub(crate) fn parse_share(s: &str) -> Result<hearth::config::ShareConfig, String> {
    hearth::config::parse_share(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_disk(s: &str) -> Result<DiskArg, String> {
    hearth::config::parse_disk_arg(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_net(s: &str) -> Result<NetConfig, String> {
    hearth::config::parse_net(s).map_err(|e| e.to_string())
}

impl RunArgs {
    /// Which `--disk` is the command's root filesystem (its `root` option), if any.
    pub(crate) fn root_disk(&self) -> Result<Option<usize>, ConfigError> {
        let roots: Vec<usize> = (0..self.disk.len())
            .filter(|&i| self.disk[i].root)
            .collect();
        match roots[..] {
            [] => Ok(None),
            [_] if self.command.is_empty() => Err(ConfigError::RootDisk(
                "root applies only to a command: hearth run ... -- CMD",
            )),
            [i] => Ok(Some(i)),
            _ => Err(ConfigError::RootDisk(
                "only one disk may be root: give root on one --disk",
            )),
        }
    }

    pub(crate) fn into_config(self) -> Result<VmConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::new(self.kernel.clone().ok_or(ConfigError::NoKernel)?),
        };
        if let Some(k) = self.kernel {
            config.kernel = k;
        }
        if let Some(i) = self.initrd {
            config.initrd = Some(i);
        }
        if let Some(c) = self.cmdline {
            config.cmdline = c;
        }
        if let Some(c) = self.cpus {
            config.cpus = c;
        }
        if let Some(m) = self.memory {
            config.memory = m;
        }
        if let Some(s) = self.serial_out {
            config.serial_out = Some(s);
        }
        if let Some(b) = self.boot_protocol {
            config.boot_protocol = b;
        }
        if let Some(e) = self.execution {
            config.execution = e;
        }
        if self.no_cmdline_workarounds {
            config.cmdline_workarounds = false;
        }
        if !self.disk.is_empty() {
            config.disks = self.disk.into_iter().map(|d| d.disk).collect();
        }
        if !self.net.is_empty() {
            config.net = self.net;
        }
        if self.rng {
            config.rng = true;
        }
        if let Some(spec) = self.rng_rate_limiter {
            config.rng = true;
            config.rng_rate_limiter = Some(hearth::rate_limit::parse_rate_limiter(&spec)?);
        }
        if let Some(a) = self.api_sock {
            config.api_sock = Some(a);
        }
        // Parsed here rather than by clap, so that a bad spec is a one-line error.
        if let Some(v) = self.vsock {
            config.vsock = Some(hearth::config::parse_vsock(&v)?);
        }
        config.checkpoint = self.checkpoint.into_config(config.checkpoint.take())?;
        if !self.share.is_empty() {
            config.shares = self.share;
        }
        Ok(config)
    }
}

/// The periodic-checkpoint flags, the same for `run` and `restore`.
#[derive(Args)]
pub(crate) struct CheckpointArgs {
    /// Take a checkpoint (a diff snapshot; full at first and every 16th) this often:
    /// 500ms, 2s, 1m. Needs --checkpoint-dir.
    #[arg(long, value_name = "DURATION")]
    pub(crate) checkpoint_every: Option<String>,
    /// Where checkpoints go: DIR/ckpt-NNNNNN, and DIR/latest names the newest complete one.
    #[arg(long, value_name = "DIR")]
    pub(crate) checkpoint_dir: Option<PathBuf>,
    /// How many checkpoints to keep [default: 3].
    #[arg(long, value_name = "N")]
    pub(crate) checkpoint_keep: Option<u32>,
}

impl CheckpointArgs {
    /// The checkpoint settings from a config file's (`base`) and the flags.
    pub(crate) fn into_config(
        self,
        base: Option<hearth::config::CheckpointConfig>,
    ) -> Result<Option<hearth::config::CheckpointConfig>, ConfigError> {
        let (every, dir, keep) = (
            self.checkpoint_every.as_deref(),
            self.checkpoint_dir,
            self.checkpoint_keep,
        );
        let every = every
            .map(hearth::vm::checkpoint::parse_duration)
            .transpose()?;
        let mut config = match (base, every, dir) {
            (Some(mut c), every, dir) => {
                c.every = every.unwrap_or(c.every);
                c.dir = dir.unwrap_or(c.dir);
                Some(c)
            }
            (None, Some(every), Some(dir)) => Some(hearth::config::CheckpointConfig {
                every,
                dir,
                keep: hearth::vm::checkpoint::DEFAULT_KEEP,
            }),
            (None, None, None) => None,
            (None, _, _) => return Err(ConfigError::CheckpointIncomplete),
        };
        if let Some(k) = keep {
            match &mut config {
                Some(c) => c.keep = k,
                None => return Err(ConfigError::CheckpointIncomplete),
            }
        }
        if let Some(c) = &config {
            c.validate()?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks (unique argument names, valid defaults) run only when
    /// a subcommand is parsed: run them on every subcommand here.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
