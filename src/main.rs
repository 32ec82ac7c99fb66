//! The `hearth` command line: a thin layer over the library.

mod jail_cli;
mod seccomp_cli;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hearth::boot::BootProtocol;
use hearth::config::{parse_size, ConfigError, DiskConfig, ExecutionChoice, NetConfig, VmConfig};
use hearth::{exit_status, Console, Vm, VmError};

/// Why a hearth command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// Building, running or controlling the VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A snapshot directory that cannot be used.
    #[error(transparent)]
    Snapshot(#[from] hearth::snapshot::SnapshotError),
    /// A memory layer that does not check out, so the chain is not merged.
    #[error("not merged: memory layer {layer} failed its check: {reason}")]
    LayerCheck {
        /// The layer's file.
        layer: String,
        /// What failed.
        reason: String,
    },
    /// `inspect` found a layer that does not check out.
    #[error("{}: a memory layer failed its check (see above)", .0.display())]
    InspectFailed(PathBuf),
    /// An override that is not OLD=NEW.
    #[error("{flag} '{value}': expected OLD=NEW")]
    Override {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A restore that nothing could ever resume.
    #[error("restore without --resume waits, paused, for `hearth ctl resume`, which needs --api-sock: pass --resume or --api-sock PATH")]
    RestoreNeverRuns,
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Vm(e.into())
    }
}

mod firecracker;

/// hearth: a minimal KVM virtual machine monitor.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, lives on main's stack
enum Command {
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
    /// Compile a seccomp filter in Firecracker's JSON format for --seccomp-filter.
    SeccompCompile {
        /// The JSON filter.
        #[arg(value_name = "JSON")]
        input: PathBuf,
        /// Where to write the compiled filter.
        #[arg(value_name = "OUT")]
        output: PathBuf,
    },
    /// Work on snapshot directories.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
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
struct CtlArgs {
    /// The socket the VM was started with (--api-sock).
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Subcommand)]
enum CtlAction {
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
struct RestoreArgs {
    /// The snapshot directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Run at once (otherwise the VM waits, paused, for `hearth ctl resume`).
    #[arg(long)]
    resume: bool,
    /// Serve the control socket here.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Write guest serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    serial_out: Option<PathBuf>,
    #[command(flatten)]
    seccomp: seccomp_cli::SeccompArgs,
    /// Use tap NEW for the network device that used tap OLD; repeat for more.
    #[arg(long, value_name = "OLD=NEW")]
    net_tap: Vec<String>,
    /// Use disk file NEW (of the same size) for the disk that was OLD; repeat for more.
    #[arg(long, value_name = "OLD=NEW")]
    disk_path: Vec<String>,
    /// Listen for vsock host connections on PATH instead of the snapshot's socket.
    #[arg(long, value_name = "PATH")]
    vsock_socket: Option<PathBuf>,
    /// How the guest's clock carries on: from where it stood (keep), or forward by the
    /// real time since the snapshot (realtime, so that its wall clock is right).
    #[arg(long, value_enum, default_value_t = hearth::snapshot::overrides::ClockChoice::Keep)]
    clock: hearth::snapshot::overrides::ClockChoice,
    /// Take checkpoints of the restored VM this often (as `run --checkpoint-every`).
    #[arg(long, value_name = "DURATION")]
    checkpoint_every: Option<String>,
    /// Where the restored VM's checkpoints go.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// How many checkpoints to keep [default: 3].
    #[arg(long, value_name = "N")]
    checkpoint_keep: Option<u32>,
    /// Log what hearth does to stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct RunArgs {
    /// A JSON VM description; flags given as well override its fields.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The kernel: an ELF vmlinux (64-bit or PVH entry) or a bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// An initrd or initramfs.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// The kernel command line [default: "console=ttyS0 reboot=k panic=-1"].
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Guest memory, e.g. 256M or 2G (a plain number is MiB) [default: 128M].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// Write guest serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    serial_out: Option<PathBuf>,
    /// Which kernel entry point to use [default: auto: PVH when the kernel has one].
    #[arg(long, value_enum)]
    boot_protocol: Option<BootProtocol>,
    /// Whether KVM emulates guest kernel mode [default: auto: measure it].
    #[arg(long, value_enum)]
    execution: Option<ExecutionChoice>,
    /// On an emulating KVM, do not append "noxsave clearcpuid=popcnt,smap nofsgsbase" to the
    /// command line.
    #[arg(long)]
    no_cmdline_workarounds: bool,
    /// A virtio block device: path=FILE[,readonly=on][,id=SERIAL][,bw=SIZE/MS][,ops=N/MS];
    /// repeat for more. bw and ops are rate limits (token buckets: SIZE bytes or N
    /// requests per MS milliseconds, an optional /BURST after).
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,
    /// A virtio network device over an existing host tap: tap=NAME[,mac=MAC] plus rate
    /// limits rx_bw=, rx_ops=, tx_bw=, tx_ops= (as for --disk); repeat for more. Without
    /// mac, a random locally administered address is used.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// A virtio entropy device fed by the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// Rate limits for the entropy device (implies --rng): bw=SIZE/MS[/BURST] and/or
    /// ops=N/MS[/BURST], e.g. bw=64K/1000.
    #[arg(long, value_name = "SPEC")]
    rng_rate_limiter: Option<String>,
    /// Serve a control socket (pause, resume, snapshot) at PATH.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// A virtio-vsock device: cid=N,socket=PATH. hearth listens on PATH for host
    /// connections (`CONNECT <port>`); guest connections to host port P go to PATH_P.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,
    #[command(flatten)]
    seccomp: seccomp_cli::SeccompArgs,
    /// Take a checkpoint (a diff snapshot; full at first and every 16th) this often:
    /// 500ms, 2s, 1m. Needs --checkpoint-dir.
    #[arg(long, value_name = "DURATION")]
    checkpoint_every: Option<String>,
    /// Where checkpoints go: DIR/ckpt-NNNNNN, and DIR/latest names the newest complete one.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// How many checkpoints to keep [default: 3].
    #[arg(long, value_name = "N")]
    checkpoint_keep: Option<u32>,
    /// Log what hearth does (KVM mode, timings, exits) to stderr.
    #[arg(long, short)]
    verbose: bool,
    /// Share a host directory over virtio-fs: DIR[,tag=T][,rw] (read-only unless rw; the
    /// tag defaults to shareN). With a command, it is mounted at its host path.
    #[arg(long, value_name = "SPEC", value_parser = parse_share)]
    share: Vec<hearth::config::ShareConfig>,
    /// With a command: end the VM after SECS seconds and exit with 124.
    #[arg(long, value_name = "SECS", requires = "command")]
    timeout: Option<u64>,
    /// With a command: exit with 125 when the guest has not started hearth's init after
    /// SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "command")]
    boot_timeout: u64,
    /// A command to run in the guest (after `--`): hearth boots the kernel with its own
    /// init, runs it in the host's working directory over a read-only view of the host's
    /// root, and exits with its status (124 timeout, 125 guest or hearth failure).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

fn parse_share(s: &str) -> Result<hearth::config::ShareConfig, String> {
    hearth::config::parse_share(s).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    hearth::config::parse_disk(s).map_err(|e| e.to_string())
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    hearth::config::parse_net(s).map_err(|e| e.to_string())
}

impl RunArgs {
    fn into_config(self) -> Result<VmConfig, ConfigError> {
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
            config.disks = self.disk;
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
        config.checkpoint = checkpoint_config(
            config.checkpoint.take(),
            self.checkpoint_every.as_deref(),
            self.checkpoint_dir,
            self.checkpoint_keep,
        )?;
        if !self.share.is_empty() {
            config.shares = self.share;
        }
        Ok(config)
    }
}

/// The checkpoint settings from a config file's (`base`) and the flags.
fn checkpoint_config(
    base: Option<hearth::config::CheckpointConfig>,
    every: Option<&str>,
    dir: Option<PathBuf>,
    keep: Option<u32>,
) -> Result<Option<hearth::config::CheckpointConfig>, ConfigError> {
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

fn run(args: RunArgs) -> Result<i32, CliError> {
    init_logging(args.verbose);
    // Before any thread starts: the signal and console threads filter themselves too.
    args.seccomp.configure().map_err(VmError::from)?;
    if !args.command.is_empty() {
        return Ok(run_command(args));
    }
    // Before any thread starts, so that every thread inherits the blocked signals.
    terminal::handle_stop_signals();
    let mut config = args.into_config()?;
    let api_sock = config.api_sock.take();
    let console = Console::new().input(terminal::console_input());
    let vm = Vm::with_console(&config, console)?;
    finish(vm, api_sock)
}

/// `hearth run ... -- CMD`: the command's status, or 124/125 (README, "Running a command").
fn run_command(mut args: RunArgs) -> i32 {
    let command = std::mem::take(&mut args.command);
    let timeout = args.timeout.map(std::time::Duration::from_secs);
    let boot_timeout = std::time::Duration::from_secs(args.boot_timeout);
    let outcome = args
        .into_config()
        .map_err(hearth::run_cmd::RunError::from_config)
        .and_then(|config| {
            hearth::run_cmd::run(hearth::run_cmd::RunCommand {
                config,
                command,
                timeout,
                boot_timeout,
            })
        });
    match outcome {
        Ok(hearth::run_cmd::Outcome::Failed { reason, console }) => {
            eprintln!("hearth: {reason}");
            if !console.is_empty() {
                eprintln!("hearth: last lines of the guest console:");
                for line in console {
                    eprintln!("  {line}");
                }
            }
            i32::from(hearth::run_cmd::STATUS_FAILED)
        }
        Ok(hearth::run_cmd::Outcome::TimedOut) => {
            eprintln!("hearth: --timeout expired; the VM was stopped");
            i32::from(hearth::run_cmd::STATUS_TIMEOUT)
        }
        Ok(outcome) => i32::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("hearth: error: {e}");
            i32::from(hearth::run_cmd::STATUS_FAILED)
        }
    }
}

fn finish(vm: Vm, api_sock: Option<PathBuf>) -> Result<i32, CliError> {
    // The API socket is up before the vCPUs start, so no early request is refused.
    let api = match &api_sock {
        Some(path) => Some(
            hearth::api::ApiServer::bind(path, hearth::api::server::DEFAULT_MAX_PAYLOAD)
                .map_err(VmError::from)?,
        ),
        None => None,
    };
    let running = vm.start()?;
    terminal::watch(running.handle());
    let terminal = terminal::RawTerminal::enter();
    let reason = match api {
        Some(mut server) => {
            let mut controller = hearth::api::Controller::with_vm("hearth", running);
            Ok(server.serve(&mut controller))
        }
        None => running.wait(),
    };
    drop(terminal);
    let reason = reason?;
    if let (hearth::ExitReason::Stopped, Some((line, code))) = (&reason, terminal::stop_cause()) {
        eprintln!("hearth: {line}");
        return Ok(code);
    }
    // Every non-zero exit, and every end the guest did not choose, is explained, with or
    // without -v.
    if reason.is_guest_choice() && reason.exit_code() == 0 {
        log::debug!("{reason}");
    } else {
        eprintln!("hearth: {reason}");
    }
    Ok(reason.exit_code())
}

fn restore(args: RestoreArgs) -> Result<i32, CliError> {
    init_logging(args.verbose);
    if !args.resume && args.api_sock.is_none() {
        return Err(CliError::RestoreNeverRuns);
    }
    args.seccomp.configure().map_err(VmError::from)?;
    terminal::handle_stop_signals();
    let pair = |flag: &'static str, s: &String| {
        hearth::snapshot::overrides::parse_pair(s).ok_or_else(|| CliError::Override {
            flag,
            value: s.clone(),
        })
    };
    let mut options = hearth::RestoreOptions {
        resume: args.resume,
        serial_out: args.serial_out,
        api_sock: args.api_sock,
        overrides: hearth::snapshot::overrides::RestoreOverrides {
            taps: args
                .net_tap
                .iter()
                .map(|s| pair("--net-tap", s))
                .collect::<Result<_, _>>()?,
            disks: args
                .disk_path
                .iter()
                .map(|s| pair("--disk-path", s).map(|(a, b)| (a.into(), b.into())))
                .collect::<Result<_, _>>()?,
            vsock_socket: args.vsock_socket,
            clock: args.clock,
        },
        checkpoint: checkpoint_config(
            None,
            args.checkpoint_every.as_deref(),
            args.checkpoint_dir,
            args.checkpoint_keep,
        )?,
        ..Default::default()
    };
    let api_sock = options.api_sock.take();
    let console = Console::new().input(terminal::console_input());
    finish(
        Vm::restore_with_console(&args.dir, &options, console)?,
        api_sock,
    )
}

fn ctl(args: CtlArgs) -> Result<i32, CliError> {
    use hearth::api::client::call;
    let sock = &args.api_sock;
    let vm_state = |state: &str| format!("{{\"state\": \"{state}\"}}");
    let call = |method: &str, path: &str, body: Option<&str>| {
        call(sock, method, path, body).map_err(VmError::from)
    };
    match args.action {
        CtlAction::Pause => call("PATCH", "/vm", Some(&vm_state("Paused")))?,
        CtlAction::Resume => call("PATCH", "/vm", Some(&vm_state("Resumed")))?,
        CtlAction::Snapshot { dir, resume, diff } => {
            // The same rules as the VM's, checked before the VM is paused; the VM resolves
            // relative paths from its own directory.
            // The API takes two file paths; their directory is made here (its last level
            // only, as `check_dir` allows).
            hearth::snapshot::create_dir(&dir)?;
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let body = serde_json::json!({
                "snapshot_type": if diff { "Diff" } else { "Full" },
                "snapshot_path": dir.join(hearth::snapshot::STATE_FILE),
                "mem_file_path": dir.join(hearth::snapshot::MEMORY_FILE),
            });
            call("PATCH", "/vm", Some(&vm_state("Paused")))?;
            let made = call("PUT", "/snapshot/create", Some(&body.to_string()));
            if resume || made.is_err() {
                call("PATCH", "/vm", Some(&vm_state("Resumed")))?;
            }
            made?
        }
        CtlAction::Request { method, path, body } => {
            let answer = hearth::api::client::send(sock, &method, &path, body.as_deref())
                .map_err(VmError::from)?;
            if !answer.body.is_empty() {
                println!("{}", answer.body);
            }
            return Ok(if (200..300).contains(&answer.status) {
                0
            } else {
                1
            });
        }
    };
    Ok(0)
}

fn snapshot(cmd: SnapshotCommand) -> Result<i32, CliError> {
    match cmd {
        SnapshotCommand::Merge { dir, out } => {
            if let Some(o) = &out {
                hearth::snapshot::check_dir(o)?;
            }
            // Refuse a chain that does not check out before folding it.
            let report = hearth::snapshot::inspect::inspect(&dir)?;
            if let Some((l, Err(e))) = report.layers.iter().find(|(_, r)| r.is_err()) {
                return Err(CliError::LayerCheck {
                    layer: l.file_name(),
                    reason: e.clone(),
                });
            }
            let n = hearth::snapshot::merge(&dir, out.as_deref())?
                .0
                .layers
                .len();
            println!(
                "merged {n} memory layer(s) of {} into {}",
                dir.display(),
                out.as_deref().unwrap_or(&dir).display()
            );
        }
        SnapshotCommand::Inspect { dir } => {
            let report = hearth::snapshot::inspect::inspect(&dir)?;
            print!("{report}");
            if !report.ok() {
                return Err(CliError::InspectFailed(dir));
            }
        }
    }
    Ok(0)
}

fn info() -> Result<i32, CliError> {
    use std::io::Write;
    let kvm = hearth::kvm::open().map_err(VmError::from)?;
    let kvm_max = kvm.get_max_vcpus();
    let hearth_max = usize::from(hearth::arch::mptable::MAX_CPUS);
    let execution = match hearth::kvm::calibrate(&kvm) {
        Ok(c) => format!(
            "{} ({} iterations of dec/jnz in {:?})",
            c.execution, c.iterations, c.elapsed
        ),
        Err(e) => format!("unknown ({e})"),
    };
    // A reader that goes away (`hearth info | head -1`) is not an error.
    let _ = write!(
        std::io::stdout().lock(),
        "hearth {}\nKVM API version: {}\n\
         max vCPUs: {} (hearth's own limit is {hearth_max}, its MP table; this KVM allows {kvm_max})\n\
         guest kernel execution: {execution}\n",
        env!("CARGO_PKG_VERSION"),
        kvm.get_api_version(),
        kvm_max.min(hearth_max),
    );
    Ok(0)
}

/// When the process started: the reference for every logged time.
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// hearth's log lines on stderr: `hearth: [   12.345 ms] message`, times since the
/// process started; debug lines only with `--verbose`.
fn init_logging(verbose: bool) {
    use std::io::Write;
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        // fuse-backend-rs reports every FUSE INIT at info level: not news to a user.
        .filter_module("fuse_backend_rs", log::LevelFilter::Warn)
        .format(|buf, record| {
            let ms = START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_secs_f64()
                * 1000.0;
            writeln!(buf, "hearth: [{ms:9.3} ms] {}", record.args())
        })
        .try_init();
}

fn main() -> ExitCode {
    START.get_or_init(std::time::Instant::now);
    if jail_cli::called_as_jailer() {
        let args = jail_cli::JailerCli::parse().into_args();
        eprintln!("jailer: error: {}", jail_cli::jail(args));
        return ExitCode::from(1);
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if firecracker::is_firecracker_invocation(&argv) {
        let args = <firecracker::FirecrackerArgs as Parser>::parse_from(argv);
        return match firecracker::run(args) {
            Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
            Err(e) => {
                eprintln!("hearth: error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Info => info(),
        Command::Ctl(args) => ctl(args),
        Command::Restore(args) => restore(args),
        Command::SeccompCompile { input, output } => hearth::seccomp::Filters::compile(&input)
            .map_err(VmError::from)
            .and_then(|bytes| {
                std::fs::write(&output, bytes).map_err(|source| {
                    VmError::from(hearth::seccomp::SeccompError::Write {
                        path: output,
                        source,
                    })
                })
            })
            .map(|()| 0)
            .map_err(CliError::from),
        Command::Jail(args) => {
            eprintln!("hearth: error: {}", jail_cli::jail(args));
            return ExitCode::from(1);
        }
        Command::Snapshot(cmd) => snapshot(cmd),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hearth: error: {e}");
            exit_status::HEARTH_ERROR
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
