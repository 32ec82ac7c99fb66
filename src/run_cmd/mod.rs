//! `hearth run --kernel K -- CMD ARGS...`: boot a kernel, run one command in it, and
//! return the command's exit status, as `vng -- cmd` or `vmtest` do for kernel CI.
//!
//! hearth brings the guest's userspace itself: an initramfs written in memory at start-up
//! ([`initramfs`]) holding hearth-init (resources/init/hearth-init.c, built statically by
//! build.rs) and the command's description. The guest sees the host's root read-only
//! (virtio-fs tag `hearth-root`) under a tmpfs overlay, or a root disk's filesystem
//! (`--disk FILE,root`), each `--share` at its host path, and runs the command in the
//! host's working directory (when the root has it) with the host's environment.
//!
//! hearth-init talks to hearth over vsock, guest to host (CID 2), one stream each:
//! [`PORT_CONTROL`] (its connection says init started; it carries the exit status at the
//! end), [`PORT_STDOUT`], [`PORT_STDERR`] and [`PORT_STDIN`]. Each stream is ordered and
//! flow-controlled end to end, so no output is lost however much there is. hearth-init
//! sends the status only once hearth has written all of stdout and stderr and closed
//! them, then reboots. (The exit port 0x501 is not used: guest user space cannot reach
//! I/O ports on a kernel without /dev/port, and this one has none.)

pub mod initramfs;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{ShareConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE};
use crate::{Vm, VmError};

/// vsock port of the control stream.
pub const PORT_CONTROL: u32 = 10000;
/// vsock port of the command's stdout.
pub const PORT_STDOUT: u32 = 10001;
/// vsock port of the command's stderr.
pub const PORT_STDERR: u32 = 10002;
/// vsock port of the command's stdin.
pub const PORT_STDIN: u32 = 10003;
/// The tag of the host's root share.
pub const ROOT_TAG: &str = "hearth-root";
/// Exit status when `--timeout` expired.
pub const STATUS_TIMEOUT: u8 = 124;
/// Exit status when the guest or hearth failed before the command finished.
pub const STATUS_FAILED: u8 = 125;
/// How many console lines a failure reports.
pub const CONSOLE_TAIL_LINES: usize = 30;

/// hearth-init, built by build.rs.
static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hearth-init"));

/// Why a command could not be run (before the guest could report anything).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The temporary directory for the console log and sockets.
    #[error("cannot create a private directory in {dir}: {source}")]
    TempDir {
        /// Where.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the initramfs, sockets or threads failed.
    #[error("cannot set up {what}: {source}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An argument or environment variable hearth cannot pass on.
    #[error("cannot pass {0} to the guest: it contains a NUL byte")]
    Nul(String),
    /// A root disk that is not one of the VM's disks (from the library).
    #[error("root disk {index} does not exist: the VM has {disks} disk(s)")]
    NoSuchRootDisk {
        /// The index asked for.
        index: usize,
        /// How many disks there are.
        disks: usize,
    },
    /// `--initrd` given with a command.
    #[error("--initrd cannot be combined with a command: hearth brings its own initramfs")]
    Initrd,
    /// The VM could not be built or run.
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl RunError {
    /// A VM description that does not hold.
    pub fn from_config(e: crate::config::ConfigError) -> RunError {
        RunError::Vm(VmError::Config(e))
    }
}

/// A command to run in a fresh VM.
#[derive(Debug)]
pub struct RunCommand {
    /// The VM: kernel, CPUs, memory, shares (the root share is added).
    pub config: VmConfig,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// End the VM with [`STATUS_TIMEOUT`] after this long.
    pub timeout: Option<Duration>,
    /// Fail with [`STATUS_FAILED`] when hearth-init has not connected by then.
    pub boot_timeout: Duration,
    /// The index in `config.disks` of the disk whose filesystem is the guest's root
    /// (`--disk FILE,root`), instead of the host's root over virtio-fs.
    pub root_disk: Option<usize>,
}

/// The guest's root filesystem in hearth-init's description.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RootDisk {
    /// Its device node in the guest.
    device: String,
    /// Mounted read-only.
    read_only: bool,
}

/// The name Linux's virtio_blk gives the disk probed `index`-th: vda..vdz, vdaa, ...
/// (virtblk_name_format). hearth adds disks first and in order, so disk N is probed Nth.
fn virtio_blk_name(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index;
    loop {
        letters.push(b"abcdefghijklmnopqrstuvwxyz"[n % 26]);
        match (n / 26).checked_sub(1) {
            Some(rest) => n = rest,
            None => break,
        }
    }
    letters.reverse();
    format!("vd{}", String::from_utf8_lossy(&letters))
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this status (128+N when killed by signal N).
    Exited(u8),
    /// `--timeout` expired.
    TimedOut,
    /// The guest ended, or never started the command, before the command finished.
    Failed {
        /// What happened.
        reason: String,
        /// The last lines of the kernel console.
        console: Vec<String>,
    },
}

impl Outcome {
    /// The status hearth exits with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Exited(s) => *s,
            Outcome::TimedOut => STATUS_TIMEOUT,
            Outcome::Failed { .. } => STATUS_FAILED,
        }
    }
}

/// A private directory, removed with what it holds.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, RunError> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("hearth-run-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| RunError::TempDir { dir: base, source })?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Setup { what, source }
}

/// Appends a NUL-terminated field to hearth-init's description.
fn field(out: &mut Vec<u8>, what: &str, bytes: &[u8]) -> Result<(), RunError> {
    if bytes.contains(&0) {
        return Err(RunError::Nul(what.to_string()));
    }
    out.extend_from_slice(bytes);
    out.push(0);
    Ok(())
}

/// hearth-init's description of the run: working directory, command, environment,
/// shares, root disk (see resources/init/hearth-init.c).
fn describe(
    command: &[OsString],
    cwd: &Path,
    env: impl Iterator<Item = (OsString, OsString)>,
    shares: &[ShareConfig],
    root: Option<&RootDisk>,
) -> Result<Vec<u8>, RunError> {
    let mut out = Vec::new();
    field(&mut out, "cwd", b"cwd")?;
    field(
        &mut out,
        "the working directory",
        cwd.as_os_str().as_bytes(),
    )?;
    for arg in command {
        field(&mut out, "arg", b"arg")?;
        field(&mut out, "an argument", arg.as_bytes())?;
    }
    for (k, v) in env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        field(&mut out, "env", b"env")?;
        field(&mut out, "an environment variable", &kv)?;
    }
    for (index, share) in shares.iter().enumerate() {
        field(&mut out, "share", b"share")?;
        field(
            &mut out,
            "a share tag",
            crate::config::share_tag(index, share).as_bytes(),
        )?;
        field(&mut out, "a share path", share.path.as_os_str().as_bytes())?;
        field(
            &mut out,
            "share",
            if share.read_only { b"ro" } else { b"rw" },
        )?;
    }
    if let Some(root) = root {
        field(&mut out, "root", b"root")?;
        field(&mut out, "the root device", root.device.as_bytes())?;
        field(&mut out, "root", if root.read_only { b"ro" } else { b"rw" })?;
    }
    Ok(out)
}

/// The initramfs: hearth-init as /init, the mount points it uses, the console node the
/// kernel opens for it, and the run's description.
fn build_initramfs(description: &[u8]) -> Vec<u8> {
    let mut cpio = initramfs::Cpio::new();
    for d in [
        "dev", "proc", "sys", "tmp", "lower", "upper", "newroot", "hearth",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", 0o755, INIT);
    cpio.file("hearth/run", 0o644, description);
    cpio.finish()
}

/// Puts `bytes` in an anonymous in-memory file; returns it and a path that opens it.
fn memfd(bytes: &[u8]) -> Result<(std::fs::File, PathBuf), RunError> {
    // SAFETY: the name is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(c"hearth-initramfs".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(setup("an in-memory initramfs")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)
        .map_err(setup("an in-memory initramfs"))?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok((file, path))
}

/// Accepts one connection, giving up once `done` is set.
fn accept(listener: &UnixListener, done: &AtomicBool) -> Option<UnixStream> {
    while !done.load(Ordering::SeqCst) {
        let mut fds = [libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
        if n > 0 {
            if let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                return Some(stream);
            }
        }
    }
    None
}

fn listen(socket: &Path, port: u32) -> Result<UnixListener, RunError> {
    let path = PathBuf::from(format!("{}_{port}", socket.display()));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(setup(format!("the socket {}", path.display())))?;
    l.set_nonblocking(true)
        .map_err(setup(format!("the socket {}", path.display())))?;
    Ok(l)
}

/// Copies one output stream of the command to `out` until the guest closes it.
fn pump_out(
    listener: UnixListener,
    done: Arc<AtomicBool>,
    mut out: impl Write + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("run-output".into())
        .spawn(move || {
            let Some(mut stream) = accept(&listener, &done) else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A closed stdout (hearth | head) ends the copy; the guest then
                        // sees its writes fail, as with a pipe.
                        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // Closing tells hearth-init that everything it sent is out.
        })
}

/// Feeds hearth's stdin to the command; end of file reaches it as end of file. Detached:
/// a read from a terminal may never return.
fn pump_in(listener: UnixListener, done: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("run-stdin".into())
        .spawn(move || {
            let Some(mut stream) = accept(&listener, &done) else {
                return;
            };
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
        })?;
    Ok(())
}

/// The last `n` lines of the console log.
fn console_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Runs `run.command` in a fresh VM: stdout and stderr of the command go to hearth's,
/// hearth's stdin goes to it.
pub fn run(run: RunCommand) -> Result<Outcome, RunError> {
    let RunCommand {
        mut config,
        command,
        timeout,
        boot_timeout,
        root_disk,
    } = run;
    if config.initrd.is_some() {
        return Err(RunError::Initrd);
    }
    let root = match root_disk {
        Some(index) => Some(RootDisk {
            device: format!("/dev/{}", virtio_blk_name(index)),
            read_only: config
                .disks
                .get(index)
                .ok_or(RunError::NoSuchRootDisk {
                    index,
                    disks: config.disks.len(),
                })?
                .read_only,
        }),
        None => None,
    };
    let tmp = TempDir::new()?;
    let cwd = std::env::current_dir().map_err(setup("the working directory"))?;
    let description = describe(
        &command,
        &cwd,
        std::env::vars_os(),
        &config.shares,
        root.as_ref(),
    )?;
    let (initrd_file, initrd_path) = memfd(&build_initramfs(&description))?;
    config.initrd = Some(initrd_path);
    if root.is_none() {
        config.shares.push(ShareConfig {
            path: PathBuf::from("/"),
            tag: ROOT_TAG.into(),
            read_only: true,
        });
    }
    if config.cmdline == DEFAULT_CMDLINE {
        // Nothing scrolls the console by: it goes to a file (or --serial-out).
        config.cmdline = format!("{DEFAULT_CMDLINE} rdinit=/init");
    }
    let console = match &config.serial_out {
        Some(p) => p.clone(),
        None => {
            let p = tmp.0.join("console.log");
            config.serial_out = Some(p.clone());
            p
        }
    };
    let socket = match &config.vsock {
        Some(v) => v.socket.clone(),
        None => {
            let socket = tmp.0.join("vsock");
            config.vsock = Some(VsockConfig {
                cid: 3,
                socket: socket.clone(),
            });
            socket
        }
    };
    let control = listen(&socket, PORT_CONTROL)?;
    let out = listen(&socket, PORT_STDOUT)?;
    let err = listen(&socket, PORT_STDERR)?;
    let input = listen(&socket, PORT_STDIN)?;

    // The command takes hearth's stdin, not the serial console.
    let vm = Vm::with_console(&config, crate::console::Console::new().no_input())?;
    drop(initrd_file);
    let started = Instant::now();
    let running = vm.start()?;
    let handle = running.handle();

    let done = Arc::new(AtomicBool::new(false));
    let init_started = Arc::new(AtomicBool::new(false));
    let status: Arc<Mutex<Option<u8>>> = Arc::new(Mutex::new(None));
    let thread_err = setup("a thread");
    let mut threads = Vec::new();
    {
        let (done, init_started, status) = (done.clone(), init_started.clone(), status.clone());
        threads.push(
            std::thread::Builder::new()
                .name("run-control".into())
                .spawn(move || {
                    let Some(mut stream) = accept(&control, &done) else {
                        return;
                    };
                    init_started.store(true, Ordering::SeqCst);
                    log::debug!("hearth-init connected");
                    let mut byte = [0u8; 1];
                    loop {
                        match stream.read(&mut byte) {
                            Ok(1) => {
                                *hearth_devices::bus::lock(&status) = Some(byte[0]);
                                break;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            _ => break,
                        }
                    }
                    // Closing acknowledges the status: hearth-init then reboots.
                })
                .map_err(setup("a thread"))?,
        );
    }
    threads.push(pump_out(out, done.clone(), std::io::stdout()).map_err(setup("a thread"))?);
    threads.push(pump_out(err, done.clone(), std::io::stderr()).map_err(setup("a thread"))?);
    pump_in(input, done.clone()).map_err(thread_err)?;

    let timed_out = Arc::new(AtomicBool::new(false));
    let no_init = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, init_started, timed_out, no_init) = (
            done.clone(),
            init_started.clone(),
            timed_out.clone(),
            no_init.clone(),
        );
        std::thread::Builder::new()
            .name("run-watchdog".into())
            .spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let elapsed = started.elapsed();
                    if timeout.is_some_and(|t| elapsed >= t) {
                        timed_out.store(true, Ordering::SeqCst);
                        handle.stop();
                        return;
                    }
                    if !init_started.load(Ordering::SeqCst) && elapsed >= boot_timeout {
                        no_init.store(true, Ordering::SeqCst);
                        handle.stop();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .map_err(setup("the watchdog thread"))?
    };

    let reason = running.wait();
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    // The VM and its vsock device are gone: every guest stream reads end of file now.
    for t in threads {
        let _ = t.join();
    }
    let reason = reason?;
    log::debug!("VM ended after {:?}: {reason}", started.elapsed());
    if timed_out.load(Ordering::SeqCst) {
        return Ok(Outcome::TimedOut);
    }
    if let Some(s) = *hearth_devices::bus::lock(&status) {
        return Ok(Outcome::Exited(s));
    }
    let reason = if no_init.load(Ordering::SeqCst) {
        format!(
            "the guest did not start hearth-init within {} s (see the console lines below; --boot-timeout raises the bound)",
            boot_timeout.as_secs()
        )
    } else {
        format!("the guest ended before the command finished ({reason})")
    };
    Ok(Outcome::Failed {
        reason,
        console: console_tail(&console, CONSOLE_TAIL_LINES),
    })
}

#[cfg(test)]
mod tests;
