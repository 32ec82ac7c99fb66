//! A host tap device, opened through /dev/net/tun in the network namespace hearth runs
//! in: one Ethernet frame per read or write, each behind a 12-byte virtio-net header
//! (IFF_VNET_HDR), so that frames move between the tap and guest buffers unchanged.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::frame::FrameSink;
use super::NET_HDR_LEN;

/// The tun/tap control device.
const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit in `struct ifreq`.
    #[error("tap name '{name}' is {len} bytes long; Linux interface names have at most 15")]
    NameTooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name is not a valid interface name.
    #[error("tap name '{0}' is not a valid interface name: it must not be empty, '.' or '..', nor contain '/', ':' or whitespace")]
    BadName(String),
    /// No interface has that name in hearth's network namespace.
    #[error("tap {0}: no such interface; create it first with `ip tuntap add dev {0} mode tap` (in the network namespace hearth runs in)")]
    NotFound(String),
    /// /dev/net/tun cannot be opened.
    #[error("tap {name}: cannot open /dev/net/tun: {source}; load the tun module (modprobe tun) and check its permissions")]
    OpenTun {
        /// The tap.
        name: String,
        /// What open(2) said.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF refused for lack of permission.
    #[error("tap {0}: permission denied; create it for this user (`ip tuntap add dev {0} mode tap user <user>`) or give hearth CAP_NET_ADMIN")]
    Permission(String),
    /// Another process holds the tap.
    #[error("tap {0} is busy: another process has it open, and a single-queue tap serves one")]
    Busy(String),
    /// The interface exists but is not a tap.
    #[error("{0} is not a tap device (a tun device, or another kind of interface); give the name of a tap, created with `ip tuntap add dev NAME mode tap`")]
    NotTap(String),
    /// Another ioctl failed.
    #[error("tap {name}: {what} failed: {source}")]
    Ioctl {
        /// The tap.
        name: String,
        /// Which ioctl.
        what: &'static str,
        /// What it said.
        #[source]
        source: io::Error,
    },
}

/// Checks `name` the way the kernel's `dev_valid_name` does.
pub fn check_tap_name(name: &str) -> Result<(), TapError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(TapError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if bad {
        return Err(TapError::BadName(name.to_string()));
    }
    Ok(())
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap `name` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a
    /// 12-byte virtio-net header and no offloads, non-blocking.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_tap_name(name)?;
        // TUNSETIFF would create a missing tap when hearth has CAP_NET_ADMIN, but such a
        // tap is down and unconfigured, and vanishes with hearth: never what was meant.
        let cname = CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError::NotFound(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;

        // SAFETY: ifreq is plain data; all zeros is a valid (empty) request.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        #[allow(clippy::cast_possible_truncation)] // the flags are in the low 16 bits
        {
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        }
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is, on a
        // /dev/net/tun fd we own.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.to_string()),
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                Some(libc::EINVAL) => TapError::NotTap(name.to_string()),
                _ => TapError::Ioctl {
                    name: name.to_string(),
                    what: "TUNSETIFF",
                    source: e,
                },
            });
        }

        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // 12
        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(TapError::Ioctl {
                name: name.to_string(),
                what: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        // No offloads: the host then hands over only whole, checksummed frames, which is
        // all a driver without VIRTIO_NET_F_GUEST_* may receive.
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if ret < 0 {
            return Err(TapError::Ioctl {
                name: name.to_string(),
                what: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// A tap over an already open file that reads and writes one frame per call, e.g. one
    /// end of a datagram socket pair in tests. It should be non-blocking.
    pub fn from_file(name: &str, file: File) -> Tap {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (virtio-net header first) into `buf`; `WouldBlock` when none is
    /// waiting. A frame longer than `buf` is cut short, and the returned length says so.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }
}

impl FrameSink for Tap {
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // A tap takes a frame in a single write or not at all.
        let n = (&self.file).write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the tap took {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        for good in ["tap0", "a", "x".repeat(15).as_str(), "tap-net.1_2"] {
            assert!(check_tap_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(16);
        assert!(matches!(
            check_tap_name(&long),
            Err(TapError::NameTooLong { len: 16, .. })
        ));
        for bad in ["", ".", "..", "a/b", "a:1", "a b", "a\tb", "a\0b"] {
            let err = check_tap_name(bad).unwrap_err();
            assert!(matches!(err, TapError::BadName(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn open_errors_name_the_tap_and_the_fix() {
        let err = Tap::open("hearth-nx0").unwrap_err();
        assert!(matches!(err, TapError::NotFound(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("hearth-nx0"), "{text}");
        assert!(text.contains("ip tuntap add"), "{text}");
        assert!(!text.contains('\n'));
        // The loopback interface exists but is no tap. (Opening /dev/net/tun may itself
        // fail where the tun module is absent; that names the tap too.)
        match Tap::open("lo").unwrap_err() {
            TapError::NotTap(n) | TapError::Permission(n) => assert_eq!(n, "lo"),
            TapError::OpenTun { name, .. } => assert_eq!(name, "lo"),
            other => panic!("unexpected: {other}"),
        }
        assert!(matches!(
            Tap::open(&"y".repeat(20)),
            Err(TapError::NameTooLong { .. })
        ));
    }
}
