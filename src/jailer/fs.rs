//! The jailer's system plumbing: the chroot's folders and device nodes, the pivot into
//! it, namespaces, rlimits, daemonizing, and the list of what to remove on failure.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{os_error, JailError};

fn cstring(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Os {
        what: format!("{}", p.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Returns `Err(last OS error)` when a libc call returned -1.
fn check(rc: libc::c_int, what: &str) -> Result<(), JailError> {
    match rc {
        -1 => Err(os_error(what)(std::io::Error::last_os_error())),
        _ => Ok(()),
    }
}

/// Microseconds on `clock`.
pub(super) fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1000
}

/// What the jailer made, removed again when it fails.
#[derive(Debug, Default)]
pub(super) struct Created {
    /// The topmost folder made for the chroot, removed with everything under it.
    chroot_top: Option<PathBuf>,
    /// cgroup folders, removed innermost first.
    pub(super) cgroups: Vec<PathBuf>,
}

impl Created {
    /// Makes `path` and its missing parents, remembering the topmost one made.
    pub(super) fn dir_all(&mut self, path: &Path) -> Result<(), JailError> {
        let mut top = None;
        for a in path.ancestors() {
            if a.exists() {
                break;
            }
            top = Some(a.to_path_buf());
        }
        std::fs::create_dir_all(path).map_err(os_error(format!("create {}", path.display())))?;
        if self.chroot_top.is_none() {
            self.chroot_top = top;
        }
        Ok(())
    }

    /// After the pivot, the chroot's folders are out of reach: only cgroups are left to
    /// remove.
    pub(super) fn forget_chroot(&mut self) {
        self.chroot_top = None;
    }

    /// Removes everything recorded (best effort: the error being reported matters more).
    pub(super) fn remove(&mut self) {
        if let Some(top) = self.chroot_top.take() {
            let _ = std::fs::remove_dir_all(top);
        }
        for cg in self.cgroups.drain(..).rev() {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

/// Copies the exec file to `dst` (a new file, never through a link), owned by uid/gid,
/// with the source's mode.
pub(super) fn copy_owned(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let what = || format!("copy {} to {}", src.display(), dst.display());
    let mut from = std::fs::File::open(src).map_err(os_error(what()))?;
    let mode = from
        .metadata()
        .map_err(os_error(what()))?
        .permissions()
        .mode();
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(dst)
        .map_err(os_error(what()))?;
    std::io::copy(&mut from, &mut to).map_err(os_error(what()))?;
    std::os::unix::fs::fchown(&to, Some(uid), Some(gid)).map_err(os_error(what()))
}

/// Joins the namespace open at `ns`.
pub(super) fn setns(ns: &std::fs::File, kind: libc::c_int, what: &str) -> Result<(), JailError> {
    // SAFETY: a valid namespace fd and a namespace type; no memory is involved.
    check(unsafe { libc::setns(ns.as_raw_fd(), kind) }, what)
}

/// The type of setrlimit's resource argument, which differs between C libraries.
#[cfg(target_env = "gnu")]
pub(super) type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(super) type RlimitResource = libc::c_int;

/// Sets both soft and hard limits of `resource` (`None`: unlimited).
pub(super) fn set_rlimit(
    resource: RlimitResource,
    value: Option<u64>,
    name: &str,
) -> Result<(), JailError> {
    let v = value.unwrap_or(libc::RLIM_INFINITY);
    let limit = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: `limit` is a valid rlimit for the call to read.
    let rc = unsafe { libc::setrlimit(resource, &limit) };
    check(rc, &format!("set the {name} resource limit"))
}

/// A new mount namespace whose root is `chroot` (pivot_root, the old root detached).
pub(super) fn pivot_into(chroot: &Path) -> Result<(), JailError> {
    let root = cstring(chroot)?;
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(rc, "new mount namespace")?;
    // SAFETY: null source/type/data are allowed for a propagation change of "/".
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    };
    // Mounts made in the jail must not propagate back to the host.
    check(rc, "make mounts private to the jail")?;
    // SAFETY: `root` is a valid C string; a bind mount of a folder onto itself.
    let rc = unsafe {
        libc::mount(
            root.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    // pivot_root needs the new root to be a mount point.
    check(rc, "bind-mount the chroot")?;
    std::env::set_current_dir(chroot).map_err(os_error("enter the chroot"))?;
    std::fs::create_dir("old_root").map_err(os_error("create old_root"))?;
    // SAFETY: two valid C strings; pivot_root has no libc wrapper.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old_root".as_ptr()) };
    check(if rc == 0 { 0 } else { -1 }, "pivot_root into the chroot")?;
    std::env::set_current_dir("/").map_err(os_error("enter the new root"))?;
    // SAFETY: a valid C string; a lazy unmount of the old root.
    let rc = unsafe { libc::umount2(c"/old_root".as_ptr(), libc::MNT_DETACH) };
    check(rc, "detach the old root")?;
    std::fs::remove_dir("/old_root").map_err(os_error("remove old_root"))
}

/// The folders and device nodes the VMM needs, owned by it: /dev/kvm, /dev/net/tun and
/// /dev/urandom (each made with mknod, so no other host device is reachable).
pub(super) fn populate_dev(uid: u32, gid: u32) -> Result<(), JailError> {
    for dir in ["/", "/dev", "/dev/net", "/run"] {
        let p = Path::new(dir);
        std::fs::create_dir_all(p).map_err(os_error(format!("create {dir}")))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(os_error(format!("chmod {dir}")))?;
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(os_error(format!("chown {dir}")))?;
    }
    for (path, major, minor) in [
        (c"/dev/kvm", 10, 232),
        (c"/dev/net/tun", 10, 200),
        (c"/dev/urandom", 1, 9),
    ] {
        let what = format!("make {}", path.to_string_lossy());
        // SAFETY: a valid C string, a character device mode and number.
        let rc = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | libc::S_IRUSR | libc::S_IWUSR,
                libc::makedev(major, minor),
            )
        };
        check(rc, &what)?;
        // SAFETY: a valid C string naming the node just made.
        check(unsafe { libc::chown(path.as_ptr(), uid, gid) }, &what)?;
    }
    Ok(())
}

/// Detaches from the caller: two forks around setsid (the parents exit 0), stdio on
/// /dev/null.
pub(super) fn daemonize(null: &std::fs::File) -> Result<(), JailError> {
    for round in 0..2 {
        // SAFETY: the jailer is single-threaded here, so the child may go on running Rust.
        let pid = unsafe { libc::fork() };
        check(pid.min(0), "fork to daemonize")?;
        if pid > 0 {
            // SAFETY: the parent ends at once; nothing needs unwinding.
            unsafe { libc::_exit(0) };
        }
        if round == 0 {
            // SAFETY: setsid takes no arguments.
            check(unsafe { libc::setsid() }.min(0), "setsid")?;
        }
    }
    for fd in 0..3 {
        // SAFETY: both descriptors are valid; dup2 replaces the stdio one.
        let rc = unsafe { libc::dup2(null.as_raw_fd(), fd) };
        check(rc, "redirect stdio")?;
    }
    Ok(())
}

/// Forks into a new pid namespace: `Some(child pid)` in the parent, `None` in the child
/// (pid 1 there).
pub(super) fn fork_into_pid_ns() -> Result<Option<u32>, JailError> {
    // SAFETY: unshare takes flags only; it applies to children forked from now on.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(rc, "new pid namespace")?;
    // SAFETY: the jailer is single-threaded here, so the child may go on running Rust.
    let pid = unsafe { libc::fork() };
    check(pid.min(0), "fork into the new pid namespace")?;
    Ok(u32::try_from(pid).ok().filter(|p| *p > 0))
}
