//! The one rule for socket paths hearth listens on (API and vsock): a stale socket file,
//! left by a process that died without removing it, is replaced; a live one, or any
//! other file, is not.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Removes `path` if it is a Unix socket that nobody listens on; returns whether it did.
pub fn remove_stale_socket(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    // ECONNREFUSED: a socket file without a listener.
    is_socket
        && matches!(UnixStream::connect(path), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        && std::fs::remove_file(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_sockets_are_removed() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("s.sock");
        assert!(!remove_stale_socket(&path), "nothing there");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!remove_stale_socket(&path), "live");
        assert!(path.exists());
        drop(live); // the file stays: a stale socket
        assert!(path.exists());
        assert!(remove_stale_socket(&path), "stale");
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        assert!(!remove_stale_socket(&path), "a regular file");
        assert!(path.exists());
    }
}
