//! The command line's side of the host: the terminal (raw mode for the guest's console,
//! restored on every way out), the console escape `Ctrl-a x`, and SIGINT/SIGTERM/SIGHUP,
//! which stop the VM cleanly. Only the CLI does any of this: the library never touches
//! the terminal or signal dispositions (but its kick signal, real-time signal 35).

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

use hearth::{exit_status, ConsoleInput, VmHandle};

/// The escape key: Ctrl-a, as in QEMU and screen.
const ESCAPE: u8 = 0x01;

/// Why the host stopped the VM: 0 not at all, [`ESCAPED`] the console escape, otherwise
/// the signal number.
static STOP_CAUSE: AtomicI32 = AtomicI32::new(0);
const ESCAPED: i32 = -1;

/// The VM to stop, once it runs.
static TARGET: Mutex<Option<VmHandle>> = Mutex::new(None);

/// The terminal settings to put back.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the host stopped the VM, if it did: a line for stderr and the exit status.
pub fn stop_cause() -> Option<(String, i32)> {
    match STOP_CAUSE.load(Ordering::SeqCst) {
        0 => None,
        ESCAPED => Some((
            "stopped from the console (Ctrl-a x)".into(),
            exit_status::STOPPED,
        )),
        sig => Some((
            format!("stopped by {}", signal_name(sig)),
            exit_status::SIGNAL_BASE + sig,
        )),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Stops the VM for `cause`; before it runs, ends the process at once.
fn stop(cause: i32) {
    let _ = STOP_CAUSE.compare_exchange(0, cause, Ordering::SeqCst, Ordering::SeqCst);
    match lock(&TARGET).as_ref() {
        Some(vm) => vm.stop(),
        None => {
            restore();
            let (line, code) = stop_cause().unwrap_or_default();
            eprintln!("hearth: {line} before the VM started");
            std::process::exit(code);
        }
    }
}

/// From now on, stops go to `vm`.
pub fn watch(vm: VmHandle) {
    *lock(&TARGET) = Some(vm);
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread, and so in every thread started after
/// (call it first), and takes them on a thread of their own, which stops the VM.
pub fn handle_stop_signals() {
    // SAFETY: an empty sigset_t filled by sigemptyset/sigaddset, then handed to
    // pthread_sigmask, which only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // A helper of the main thread: its seccomp filter (configured before this).
            if let Err(e) = hearth::seccomp::apply(hearth::seccomp::ThreadKind::Vmm) {
                log::warn!("signal thread: {e}");
            }
            loop {
                let mut sig = 0;
                // SAFETY: `set` is a valid sigset_t and `sig` a valid place for the result.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    stop(sig);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch for SIGINT/SIGTERM: {e}; they will not stop the VM cleanly");
    }
}

/// The guest's input: on a terminal, stdin through a filter that takes out the escape
/// (`Ctrl-a x` stops the VM, `Ctrl-a Ctrl-a` sends one Ctrl-a); otherwise stdin as is.
pub fn console_input() -> ConsoleInput {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return ConsoleInput::Stdin;
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log::warn!(
            "cannot create the console pipe: {}; Ctrl-a x will not work",
            std::io::Error::last_os_error()
        );
        return ConsoleInput::Stdin;
    }
    // SAFETY: pipe2 just created both descriptors, and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut to_guest = std::fs::File::from(write);
    // Its own descriptor: reading through std's Stdin would hold its lock, which raw
    // mode needs too.
    let mut stdin = match std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            log::warn!("cannot duplicate stdin: {e}; Ctrl-a x will not work");
            return ConsoleInput::Stdin;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            if let Err(e) = hearth::seccomp::apply(hearth::seccomp::ThreadKind::Vmm) {
                log::warn!("console thread: {e}");
            }
            use std::io::Write;
            let mut buf = [0u8; 256];
            let mut after_escape = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    match (after_escape, b) {
                        (false, ESCAPE) => after_escape = true,
                        (false, b) => out.push(b),
                        (true, b'x' | b'X') => {
                            stop(ESCAPED);
                            return;
                        }
                        (true, ESCAPE) => {
                            out.push(ESCAPE);
                            after_escape = false;
                        }
                        (true, b) => {
                            out.extend_from_slice(&[ESCAPE, b]);
                            after_escape = false;
                        }
                    }
                }
                if to_guest.write_all(&out).is_err() {
                    return;
                }
            }
        });
    match spawned {
        Ok(_) => ConsoleInput::File(std::fs::File::from(read)),
        Err(e) => {
            log::warn!("cannot start the console thread: {e}; Ctrl-a x will not work");
            ConsoleInput::Stdin
        }
    }
}

/// A terminal stdin in raw mode for the guest's console while this lives; put back as
/// it was on drop, on a panic, and on a stop before the VM ran.
pub struct RawTerminal;

impl RawTerminal {
    /// Raw mode when stdin is a terminal (nothing otherwise).
    pub fn enter() -> Self {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() {
            // SAFETY: tcgetattr fills the zeroed termios it is given (fd 0 is open);
            // tcsetattr only reads the changed copy.
            unsafe {
                let mut saved: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(0, &mut saved) == 0 {
                    *lock(&SAVED) = Some(saved);
                    restore_on_panic();
                    // Keys go to the guest as typed, unechoed, Ctrl-C included; output
                    // processing stays as it was.
                    let mut raw = saved;
                    raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
                    libc::tcsetattr(0, libc::TCSANOW, &raw);
                }
            }
        }
        Self
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was before raw mode (once).
pub fn restore() {
    if let Some(saved) = lock(&SAVED).take() {
        // SAFETY: `saved` is a termios tcgetattr filled for this same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
}

/// A panic (which aborts in release builds, running no destructors) restores the
/// terminal first.
fn restore_on_panic() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
