//! Part of the `hearth` binary (not the library): hearth run as `firecracker`, with
//! Firecracker's process flags, so that tools which start Firecracker start hearth.

use std::path::{Path, PathBuf};

use clap::Parser;
use hearth::api::models::{FullVmConfig, LogLevel, Logger};
use hearth::api::server::DEFAULT_MAX_PAYLOAD;
use hearth::api::{Action, ApiError, ApiServer, Controller};
use hearth::ExitReason;

/// Firecracker's flags (v1.16), as Firecracker spells them.
#[derive(Debug, Parser)]
#[command(
    name = "firecracker",
    about = "hearth, answering as Firecracker: its API socket, config file and flags",
    disable_version_flag = true
)]
pub struct FirecrackerArgs {
    /// Path to the API socket.
    #[arg(long, value_name = "PATH", default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    /// MicroVM unique identifier.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    id: String,
    /// Seccomp filters instead of the built-in ones: Firecracker's compiled format (its
    /// seccompiler-bin's output, or `hearth seccomp-compile`'s) or its JSON format.
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters.
    #[arg(long)]
    no_seccomp: bool,
    /// Process start time in us, from the jailer (accepted).
    #[arg(long, value_name = "US")]
    start_time_us: Option<u64>,
    /// Process start CPU time in us, from the jailer (accepted).
    #[arg(long, value_name = "US")]
    start_time_cpu_us: Option<u64>,
    /// Parent process CPU time in us, from the jailer (accepted).
    #[arg(long, value_name = "US")]
    parent_cpu_time_us: Option<u64>,
    /// A JSON file in Firecracker's schema; the microVM boots from it at once.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve no API socket (needs --config-file).
    #[arg(long)]
    no_api: bool,
    /// MMDS data store limit (refused: hearth has no MMDS).
    #[arg(long, value_name = "BYTES")]
    mmds_size_limit: Option<usize>,
    /// The largest request body the API takes, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD)]
    http_api_max_payload_size: usize,
    /// MMDS contents (refused: hearth has no MMDS).
    #[arg(long, value_name = "FILE")]
    metadata: Option<PathBuf>,
    /// Where log lines go (a file or named pipe).
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    level: Option<LogLevel>,
    /// Only log lines from this module.
    #[arg(long, value_name = "MODULE")]
    module: Option<String>,
    /// Write the level on each log line.
    #[arg(long)]
    show_level: bool,
    /// Write the source file and line on each log line.
    #[arg(long)]
    show_log_origin: bool,
    /// Where metric lines go (a file or named pipe).
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// Log the guest's boot time (hearth always does when the guest writes the marker).
    #[arg(long)]
    boot_timer: bool,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Print the snapshot format version and exit.
    #[arg(long)]
    snapshot_version: bool,
    /// Print the format version of a snapshot state file and exit.
    #[arg(long, value_name = "FILE")]
    describe_snapshot: Option<PathBuf>,
    /// PCI transport for devices (refused: hearth's devices are virtio-mmio).
    #[arg(long)]
    enable_pci: bool,
}

fn parse_level(s: &str) -> Result<LogLevel, String> {
    s.parse()
}

/// Whether this invocation is Firecracker's: the program is called `firecracker...`, or
/// its first argument is a flag other than hearth's own `--help`/`--version`.
pub fn is_firecracker_invocation(args: &[std::ffi::OsString]) -> bool {
    let name = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or(a.as_os_str())
                .to_string_lossy()
        })
        .unwrap_or_default();
    if name.starts_with("firecracker") {
        return true;
    }
    match args.get(1).map(|a| a.to_string_lossy()) {
        Some(first) => {
            first.starts_with("--") && !["--help", "--version"].contains(&first.as_ref())
        }
        None => false,
    }
}

/// What happened.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// A flag hearth refuses.
    #[error("{0}")]
    Unsupported(String),
    /// The API or config.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The VM.
    #[error(transparent)]
    Vm(#[from] hearth::VmError),
    /// A request refused.
    #[error("{0}")]
    Fault(#[from] hearth::api::Fault),
}

fn read_config(path: &Path) -> Result<FullVmConfig, ApiError> {
    let bad = |reason: String| ApiError::ConfigFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}

fn describe_snapshot(path: &Path) -> Result<u32, FirecrackerError> {
    Ok(hearth::snapshot::file_version(path).map_err(hearth::VmError::from)?)
}

/// CPU time this process has used, in microseconds.
fn cpu_time_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1000
}

/// Runs as Firecracker; returns the process exit status.
pub fn run(args: FirecrackerArgs) -> Result<i32, FirecrackerError> {
    let started = std::time::Instant::now();
    if args.version {
        println!(
            "Firecracker v{} (hearth {})",
            hearth::api::controller::FIRECRACKER_API_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        return Ok(0);
    }
    if args.snapshot_version {
        println!("v{}.0.0", hearth::snapshot::VERSION);
        return Ok(0);
    }
    if let Some(path) = &args.describe_snapshot {
        println!("v{}.0.0", describe_snapshot(path)?);
        return Ok(0);
    }
    if args.metadata.is_some() || args.mmds_size_limit.is_some() {
        return Err(FirecrackerError::Unsupported(
            "--metadata/--mmds-size-limit: hearth has no MMDS (microVM metadata service); \
             pass the data to the guest another way (kernel command line, a drive, vsock)"
                .into(),
        ));
    }
    if args.enable_pci {
        return Err(FirecrackerError::Unsupported(
            "--enable-pci: hearth's devices are virtio-mmio only".into(),
        ));
    }
    if args.no_api && args.config_file.is_none() {
        return Err(FirecrackerError::Unsupported(
            "--no-api needs --config-file: without the API nothing could describe the VM".into(),
        ));
    }
    hearth::api::logger::install(&args.id, args.level);
    hearth::api::logger::configure(&Logger {
        log_path: args.log_path.as_ref().map(|p| p.display().to_string()),
        level: args.level,
        show_level: Some(args.show_level),
        show_log_origin: Some(args.show_log_origin),
        module: args.module.clone(),
    })?;
    log::info!(
        "Running Firecracker v{} (hearth {})",
        hearth::api::controller::FIRECRACKER_API_VERSION,
        env!("CARGO_PKG_VERSION")
    );

    let mut controller = Controller::new(args.id.clone());
    if let Some(path) = &args.metrics_path {
        controller.metrics.open(path)?;
    }
    // The socket comes first: clients may connect while a config file boots (they are
    // answered once it has).
    let mut server = match args.no_api {
        true => None,
        false => Some(ApiServer::bind(
            &args.api_sock,
            args.http_api_max_payload_size,
        )?),
    };
    // Each thread installs its own filter when it starts (this one once the VM runs), so
    // the filters can be decoded after the socket is up; a bad filter file still ends
    // the process before any request is answered (and the socket goes with it).
    let filters =
        hearth::seccomp::Filters::from_flags(args.no_seccomp, args.seccomp_filter.as_deref())
            .map_err(hearth::VmError::from)?;
    hearth::seccomp::configure(filters).map_err(hearth::VmError::from)?;
    let startup_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    controller
        .metrics
        .set("api_server", "process_startup_time_us", startup_us);
    controller
        .metrics
        .set("api_server", "process_startup_time_cpu_us", cpu_time_us());
    if let Some(path) = &args.config_file {
        let full = read_config(path)?;
        if let Some(l) = &full.logger {
            hearth::api::logger::configure(l)?;
        }
        controller.configure(full)?;
        controller.handle(Action::InstanceStart)?;
    }
    // The guest's console is this process's stdin and stdout, as with Firecracker.
    let _terminal = crate::terminal::RawTerminal::enter();
    let reason = hearth::api::server::run(server.as_mut(), &mut controller);
    if let ExitReason::Error(_) = reason {
        log::error!("{reason}");
        eprintln!("hearth: error: {reason}");
    } else {
        log::info!("{reason}");
    }
    Ok(reason.exit_code())
}
