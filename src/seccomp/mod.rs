//! seccomp filters, one per kind of hearth thread, each allowing only the system calls
//! (and for some, the arguments) that kind of thread makes.
//!
//! The default filters are `resources/seccomp/<kind>.json` in Firecracker's JSON format,
//! compiled by build.rs with seccompiler and embedded in the binary. A process turns them
//! on once with [`configure`]; each hearth thread then installs its own with [`apply`]
//! when it starts, before the guest runs its first instruction. A thread that makes a
//! call its filter does not allow gets SIGSYS (`SECCOMP_RET_TRAP`); the handler writes
//! one line naming the thread and the call to stderr and ends the process with
//! [`EXIT_STATUS`], as Firecracker does.

pub mod compiled;
mod syscalls;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::BpfProgram;

/// The exit status of a process stopped by a seccomp violation (Firecracker's).
pub const EXIT_STATUS: u8 = 148;

/// The largest JSON filter file read (a compiled one: [`compiled::MAX_FILE`]).
const MAX_JSON: u64 = 1 << 20;

/// The kinds of thread hearth starts. A new kind of thread gets its own variant, its
/// own `resources/seccomp/<name>.json`, and calls [`apply`] first thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once the VM runs: the control socket, pause, snapshot, stop.
    Vmm,
    /// The device event loop: virtio queues, tap, vsock sockets, serial input.
    EventLoop,
    /// A vCPU: KVM_RUN and the device exits it handles (MMIO, port I/O).
    Vcpu,
    /// A thread serving an HTTP API socket.
    Api,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [Self::Vmm, Self::EventLoop, Self::Vcpu, Self::Api];

    /// The kind's name: its key in a filter file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::EventLoop => "event-loop",
            Self::Vcpu => "vcpu",
            Self::Api => "api",
        }
    }
}

/// Why filters could not be read or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter file could not be read.
    #[error("cannot read seccomp filter {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A compiled filter could not be written.
    #[error("cannot write the compiled seccomp filter {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JSON filter does not compile.
    #[error("seccomp filter {path}: {source}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// seccompiler's reason.
        #[source]
        source: seccompiler::Error,
    },
    /// Neither JSON nor a well-formed compiled filter.
    #[error(
        "seccomp filter {path} is neither Firecracker's JSON nor its compiled format: {source}"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// Why it does not decode as a compiled filter.
        #[source]
        source: compiled::FormatError,
    },
    /// The compiled form of a JSON filter is too large.
    #[error("seccomp filter {path} does not fit Firecracker's compiled format: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: compiled::FormatError,
    },
    /// A kind that every filter file must have is missing.
    #[error("seccomp filter {path} has no \"{kind}\" filter (it needs \"vmm\" and \"vcpu\"; \"event-loop\" and \"api\" default to \"vmm\")")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The kind.
        kind: &'static str,
    },
    /// A key that names no thread kind (a typo would leave a thread unfiltered).
    #[error(
        "seccomp filter {path}: \"{key}\" is no hearth thread kind (vmm, event-loop, vcpu, api)"
    )]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// [`configure`] was called twice.
    #[error("seccomp filters are already configured for this process")]
    AlreadyConfigured,
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    /// The kernel refused a filter.
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        /// The kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
}

/// A BPF program per thread kind; none at all means no filtering.
#[derive(Debug, Default)]
pub struct Filters {
    programs: HashMap<ThreadKind, BpfProgram>,
}

impl Filters {
    /// No filtering (`--no-seccomp`).
    pub fn none() -> Self {
        Self::default()
    }

    /// What the command-line flags ask for: none with `--no-seccomp`, `--seccomp-filter`'s
    /// file, else the file in `HEARTH_SECCOMP_FILTER` (how scripts/seccomp-audit.sh runs a
    /// whole test suite on audit-only filters), else the built-in filters.
    pub fn from_flags(no_seccomp: bool, file: Option<&Path>) -> Result<Self, SeccompError> {
        let from_env = std::env::var_os("HEARTH_SECCOMP_FILTER").map(PathBuf::from);
        match (no_seccomp, file.or(from_env.as_deref())) {
            (true, _) => Ok(Self::none()),
            (false, Some(path)) => Self::from_file(path),
            (false, None) => Self::builtin(),
        }
    }

    /// hearth's own filters, compiled at build time from resources/seccomp.
    pub fn builtin() -> Result<Self, SeccompError> {
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp.bpf"));
        let path = Path::new("(built in)");
        let map = compiled::decode(bytes).map_err(|source| SeccompError::Format {
            path: path.into(),
            source,
        })?;
        Self::from_map(path, map)
    }

    /// A custom filter file: Firecracker's JSON format (every thread kind in one file),
    /// or Firecracker's compiled format (its seccompiler-bin's, or [`Filters::compile`]'s).
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        use std::io::Read;
        let read = |source| SeccompError::Read {
            path: path.into(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        // A compiled file starts with its entry count as a u64, never with `{`.
        let map = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            compile_json(path, &bytes)?
        } else {
            compiled::decode(&bytes).map_err(|source| SeccompError::Format {
                path: path.into(),
                source,
            })?
        };
        Self::from_map(path, map)
    }

    /// Compiles a JSON filter file into Firecracker's compiled format (what
    /// `hearth seccomp-compile` writes), keeping its keys as they are: for Firecracker
    /// they must be exactly `vmm`, `api` and `vcpu`.
    pub fn compile(path: &Path) -> Result<Vec<u8>, SeccompError> {
        let bytes = std::fs::read(path).map_err(|source| SeccompError::Read {
            path: path.into(),
            source,
        })?;
        let map = compile_json(path, &bytes)?;
        compiled::encode(&map).map_err(|source| SeccompError::Encode {
            path: path.into(),
            source,
        })
    }

    fn from_map(path: &Path, mut map: BTreeMap<String, BpfProgram>) -> Result<Self, SeccompError> {
        if let Some(key) = map
            .keys()
            .find(|k| !ThreadKind::ALL.iter().any(|t| t.name() == k.as_str()))
        {
            return Err(SeccompError::UnknownKind {
                path: path.into(),
                key: key.clone(),
            });
        }
        let vmm = map.get("vmm").cloned().ok_or(SeccompError::Missing {
            path: path.into(),
            kind: "vmm",
        })?;
        let mut programs = HashMap::new();
        for kind in ThreadKind::ALL {
            let program = match (kind, map.remove(kind.name())) {
                (_, Some(p)) => p,
                (ThreadKind::Vcpu, None) => {
                    return Err(SeccompError::Missing {
                        path: path.into(),
                        kind: "vcpu",
                    })
                }
                // Firecracker runs its event loop and API on filters of their own or
                // the VMM's: a Firecracker filter file works unchanged.
                (_, None) => vmm.clone(),
            };
            programs.insert(kind, program);
        }
        Ok(Self { programs })
    }

    /// The program for `kind`, if filtering is on.
    pub fn program(&self, kind: ThreadKind) -> Option<&BpfProgram> {
        self.programs.get(&kind)
    }
}

fn compile_json(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, BpfProgram>, SeccompError> {
    seccompiler::compile_from_json(bytes, seccompiler::TargetArch::x86_64)
        .map(|m| m.into_iter().collect())
        .map_err(|source| SeccompError::Compile {
            path: path.into(),
            source,
        })
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// Turns filtering on (or, with [`Filters::none`], explicitly off) for this process's
/// hearth threads, and installs the SIGSYS handler that reports violations. Without a
/// call, [`apply`] does nothing: a program embedding hearth decides for its own threads.
pub fn configure(filters: Filters) -> Result<(), SeccompError> {
    if !filters.programs.is_empty() {
        install_sigsys_handler()?;
    }
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyConfigured)
}

/// Whether filters are on for this process.
pub fn enabled() -> bool {
    FILTERS.get().is_some_and(|f| !f.programs.is_empty())
}

/// Installs `kind`'s filter on the calling thread (for good: filters cannot be removed).
/// Does nothing unless [`configure`] turned filtering on.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    // An empty program leaves the thread unfiltered, as in Firecracker (whose
    // `--no-seccomp` is a file of empty programs).
    let Some(program) = FILTERS
        .get()
        .and_then(|f| f.program(kind))
        .filter(|p| !p.is_empty())
    else {
        return Ok(());
    };
    let name = match std::thread::current().name() {
        Some(n) if n != kind.name() => format!("{n} ({})", kind.name()),
        _ => kind.name().to_string(),
    };
    let mut tag = [0u8; TAG_LEN];
    let n = name.len().min(TAG_LEN);
    tag[..n].copy_from_slice(&name.as_bytes()[..n]);
    TAG.with(|t| t.set(tag));
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })
}

const TAG_LEN: usize = 32;

thread_local! {
    /// The thread's name for the SIGSYS report, set before its filter is installed
    /// (constant-initialized, so the handler reads it without allocating).
    static TAG: Cell<[u8; TAG_LEN]> = const { Cell::new([0; TAG_LEN]) };
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = sigsys_handler as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        _ => Err(SeccompError::Handler(std::io::Error::last_os_error())),
    }
}

/// A small buffer for the report, written without allocating (async-signal-safe).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = *b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The SIGSYS report: the library's one direct write to stderr, since nothing else is
/// safe in a signal handler (the log facade takes locks and allocates).
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo_t for SIGSYS: si_signo, si_errno, si_code, padding, then _sigsys:
    // { void *call_addr; int syscall; unsigned arch; }, the call number at byte 24.
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let nr = unsafe {
        info.cast::<u8>()
            .add(24)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let nr = u64::try_from(nr).unwrap_or(u64::MAX);
    let tag = TAG.with(Cell::get);
    let tag_len = tag.iter().position(|b| *b == 0).unwrap_or(TAG_LEN);
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"hearth: seccomp: the ");
    line.push(&tag[..tag_len]);
    line.push(b" thread made system call ");
    line.push_number(nr);
    let name = usize::try_from(nr)
        .ok()
        .and_then(|i| syscalls::NAMES.get(i))
        .copied()
        .unwrap_or("");
    if !name.is_empty() {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    line.push(b", which its filter does not allow; stopping with status 148\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for `len`.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(i32::from(EXIT_STATUS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_filters_cover_every_kind() {
        let f = Filters::builtin().expect("the built-in filters decode");
        for kind in ThreadKind::ALL {
            assert!(!f.program(kind).unwrap().is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn the_kick_signal_is_the_one_the_vmm_filter_allows() {
        // resources/seccomp/vmm.json allows tgkill (glibc) and tkill (musl) with signal 35.
        assert_eq!(crate::vcpu::kick_signal(), 35);
        assert!((libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&35));
        let vmm = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/resources/seccomp/vmm.json"
        ))
        .unwrap();
        assert!(vmm.contains(r#""val": 35, "comment": "the vCPU kick""#));
    }

    #[test]
    fn custom_files_are_checked() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-seccomp-").unwrap();
        let path = dir.as_path().join("f.json");
        let rule =
            r#"{"default_action":"trap","filter_action":"allow","filter":[{"syscall":"read"}]}"#;
        std::fs::write(&path, format!(r#"{{"vmm":{rule},"vcpu":{rule}}}"#)).unwrap();
        let f = Filters::from_file(&path).unwrap();
        assert_eq!(f.program(ThreadKind::Api), f.program(ThreadKind::Vmm));
        let compiled = dir.as_path().join("f.bpf");
        std::fs::write(&compiled, Filters::compile(&path).unwrap()).unwrap();
        let g = Filters::from_file(&compiled).unwrap();
        assert_eq!(f.program(ThreadKind::Vcpu), g.program(ThreadKind::Vcpu));
        std::fs::write(&path, format!(r#"{{"vmm":{rule}}}"#)).unwrap();
        assert!(Filters::from_file(&path)
            .unwrap_err()
            .to_string()
            .contains("\"vcpu\""));
        std::fs::write(
            &path,
            format!(r#"{{"vmm":{rule},"vcpu":{rule},"vpcu":{rule}}}"#),
        )
        .unwrap();
        assert!(Filters::from_file(&path)
            .unwrap_err()
            .to_string()
            .contains("vpcu"));
        // Every truncation of a compiled file is refused.
        let whole = std::fs::read(&compiled).unwrap();
        for n in 0..whole.len() {
            std::fs::write(&compiled, &whole[..n]).unwrap();
            let e = Filters::from_file(&compiled).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        std::fs::write(&path, b"\x01\x02gar").unwrap();
        let e = Filters::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("neither Firecracker's JSON nor"), "{e}");
        assert!(e.contains("ends inside the filter count"), "{e}");
        // A file from Firecracker v1.16's seccompiler loads (its allow-all filters).
        let fc = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/firecracker-v1.16.1-default-allow.bpf");
        let f = Filters::from_file(&fc).unwrap();
        assert_eq!(f.program(ThreadKind::Vcpu).unwrap().len(), 7);
        assert_eq!(f.program(ThreadKind::EventLoop), f.program(ThreadKind::Vmm));
    }
}
