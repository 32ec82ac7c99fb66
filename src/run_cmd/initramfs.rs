//! The initramfs hearth hands a kernel for `hearth run -- CMD`: an uncompressed cpio
//! ("newc") archive with hearth-init as /init and the command's description, written in
//! memory (the kernel unpacks it; compressing would only cost emulated guest time).

/// A newc cpio archive being written.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.next_ino += 1;
        // Names and files here are hearth's own: small, fixed, far below 4 GiB.
        let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        let filesize = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0,
            0,
            nlink,
            0,
            filesize,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
    }

    /// A directory (mode 0755).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | (perm & 0o7777), data, (0, 0));
    }

    /// A character device node (mode 0600).
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_and_extracts_what_was_written() {
        let mut c = Cpio::new();
        c.dir("dev");
        c.char_dev("dev/console", 5, 1);
        c.file("init", 0o755, b"#!/bin/sh\necho hi\n");
        c.file("odd", 0o644, b"12345");
        let archive = c.finish();
        assert_eq!(archive.len() % 4, 0);
        let dir = std::env::temp_dir().join(format!("hearth-cpio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "--quiet", "--no-absolute-filenames"])
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio (apt-get install cpio)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let _ = child.wait().unwrap();
        assert_eq!(
            std::fs::read(dir.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(dir.join("odd")).unwrap(), b"12345");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(dir.join("dev").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
