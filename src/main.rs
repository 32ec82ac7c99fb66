//! The `hearth` command line: a thin layer over the library.

/// On musl the binary allocates with dlmalloc: musl's own allocator hands every group of
/// small blocks back to the kernel as soon as it empties, and start-up (clap building
/// its command) made 47 mmap/munmap calls before the API socket was up, at ~6.6 µs a
/// mapping here (README "Performance").
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

mod jail_cli;
mod landlock_cli;
mod seccomp_cli;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hearth::config::ConfigError;
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
    /// Landlock could not be turned on.
    #[error(transparent)]
    Landlock(#[from] hearth::landlock::LandlockError),
    /// `--landlock` with a command.
    #[error("--landlock does not go with a command (`hearth run -- CMD` shows the guest the host's whole root): leave out one or the other")]
    LandlockCommand,
    /// A restore that nothing could ever resume.
    #[error("restore without --resume waits, paused, for `hearth ctl resume`, which needs --api-sock: pass --resume or --api-sock PATH")]
    RestoreNeverRuns,
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Vm(e.into())
    }
}

mod cli_args;
mod firecracker;

use cli_args::*;

fn run(mut args: RunArgs) -> Result<i32, CliError> {
    init_logging(args.verbose);
    // Before any thread starts: the signal and console threads filter themselves too.
    args.seccomp.configure().map_err(VmError::from)?;
    if !args.command.is_empty() {
        if args.landlock.enabled() {
            return Err(CliError::LandlockCommand);
        }
        return Ok(run_command(args));
    }
    // Refuses a root disk without a command.
    args.root_disk()?;
    let landlock = std::mem::take(&mut args.landlock);
    let mut config = args.into_config()?;
    // Before any thread starts: Landlock restricts only this thread and those it starts.
    landlock.restrict(hearth::landlock::Landlock::for_config(&config))?;
    // Before any thread starts, so that every thread inherits the blocked signals.
    terminal::handle_stop_signals();
    let api_sock = config.api_sock.take();
    let console = Console::new().input(terminal::console_input());
    let vm = Vm::with_console(&config, console)?;
    finish(vm, api_sock)
}

/// `hearth run ... -- CMD`: the command's status, or 124/125 (README, "Running a command").
fn run_command(mut args: RunArgs) -> i32 {
    let timeout = args.timeout.map(std::time::Duration::from_secs);
    let boot_timeout = std::time::Duration::from_secs(args.boot_timeout);
    let outcome = args
        .root_disk()
        .and_then(|root_disk| {
            let command = std::mem::take(&mut args.command);
            Ok((root_disk, command, args.into_config()?))
        })
        .map_err(hearth::run_cmd::RunError::from_config)
        .and_then(|(root_disk, command, config)| {
            hearth::run_cmd::run(hearth::run_cmd::RunCommand {
                config,
                command,
                timeout,
                boot_timeout,
                root_disk,
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
        checkpoint: args.checkpoint.into_config(None)?,
        ..Default::default()
    };
    if args.landlock.enabled() {
        let mut rules =
            hearth::landlock::Landlock::for_config(&options.restored_config(&args.dir)?);
        rules.allow(&args.dir, hearth::landlock::Access::ReadOnly);
        args.landlock.restrict(rules)?;
    }
    // After Landlock, which covers only threads started after it.
    terminal::handle_stop_signals();
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
            // With --resume hearth pauses the VM for the copy only (its `resume_vm`): it
            // runs on while the files are synced.
            let body = serde_json::json!({
                "snapshot_type": if diff { "Diff" } else { "Full" },
                "snapshot_path": dir.join(hearth::snapshot::STATE_FILE),
                "mem_file_path": dir.join(hearth::snapshot::MEMORY_FILE),
                "resume_vm": resume,
            });
            if !resume {
                call("PATCH", "/vm", Some(&vm_state("Paused")))?;
            }
            let made = call("PUT", "/snapshot/create", Some(&body.to_string()));
            if made.is_err() {
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
