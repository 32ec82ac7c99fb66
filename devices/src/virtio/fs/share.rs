//! The filesystem a virtio-fs device serves: fuse-backend-rs's passthrough filesystem
//! over one host directory, behind a guard that makes read-only shares read-only and
//! refuses to open symbolic links.
//!
//! What keeps the guest inside the directory is the passthrough layer's design (the
//! "hardened" virtiofsd model): every inode is an `O_PATH` fd opened one component at a
//! time with `O_NOFOLLOW` relative to its parent's fd, names with a `/` are refused, `..`
//! at the root resolves to the root, and FUSE node ids are looked up in a table, never
//! decoded into host file handles (`inode_file_handles` stays off). Symbolic links are
//! returned to the guest with READLINK and resolved by the guest kernel in its own
//! namespace; opening one on the host is refused here with ELOOP.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

type Inode = u64;
type Handle = u64;

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// One exported host directory.
pub struct Share {
    fs: PassthroughFs,
    read_only: bool,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// Opens `root` (an absolute path to a directory) for serving.
    pub fn new(root: &str, read_only: bool) -> io::Result<Share> {
        let cfg = Config {
            root_dir: root.to_string(),
            // The guest's page cache keeps file data; the host may change files behind the
            // guest's back, so attributes are only trusted for a second.
            cache_policy: CachePolicy::Auto,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            xattr: false,
            writeback: false,
            do_import: true,
            inode_file_handles: false,
            ..Config::default()
        };
        let fs = PassthroughFs::new(cfg)?;
        fs.import()?;
        Ok(Share { fs, read_only })
    }

    /// The guest resolves symbolic links itself; opening one on the host would follow it
    /// there (reopening through /proc/self/fd), possibly out of the share.
    fn refuse_symlink(&self, ctx: &Context, inode: Inode) -> io::Result<()> {
        let (st, _) = self.fs.getattr(ctx, inode, None)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        Ok(())
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }
}

/// Passes FUSE operations straight on to the passthrough filesystem.
macro_rules! forward {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret {
            self.fs.$name($($arg),*)
        })*
    };
}

/// Passes on the FUSE operations that change the share: the one place the read-only
/// guard stands, so no such operation can reach the host without it.
macro_rules! changes {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret {
            self.check_writable()?;
            self.fs.$name($($arg),*)
        })*
    };
}

impl FileSystem for Share {
    type Inode = Inode;
    type Handle = Handle;

    forward! {
        fn init(&self, capable: FsOptions) -> io::Result<FsOptions>;
        fn destroy(&self) -> ();
        fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry>;
        fn forget(&self, ctx: &Context, inode: Inode, count: u64) -> ();
        fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) -> ();
        fn getattr(&self, ctx: &Context, inode: Inode, handle: Option<Handle>)
            -> io::Result<(stat64, Duration)>;
        fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>>;
        fn read(&self, ctx: &Context, inode: Inode, handle: Handle, w: &mut dyn ZeroCopyWriter,
            size: u32, offset: u64, lock_owner: Option<u64>, flags: u32) -> io::Result<usize>;
        fn flush(&self, ctx: &Context, inode: Inode, handle: Handle, lock_owner: u64)
            -> io::Result<()>;
        fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle)
            -> io::Result<()>;
        fn release(&self, ctx: &Context, inode: Inode, flags: u32, handle: Handle, flush: bool,
            flock_release: bool, lock_owner: Option<u64>) -> io::Result<()>;
        fn getxattr(&self, ctx: &Context, inode: Inode, name: &CStr, size: u32)
            -> io::Result<GetxattrReply>;
        fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply>;
        fn readdir(&self, ctx: &Context, inode: Inode, handle: Handle, size: u32, offset: u64,
            add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>) -> io::Result<()>;
        fn readdirplus(&self, ctx: &Context, inode: Inode, handle: Handle, size: u32,
            offset: u64, add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>)
            -> io::Result<()>;
        fn fsyncdir(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle)
            -> io::Result<()>;
        fn releasedir(&self, ctx: &Context, inode: Inode, flags: u32, handle: Handle)
            -> io::Result<()>;
        fn lseek(&self, ctx: &Context, inode: Inode, handle: Handle, offset: u64, whence: u32)
            -> io::Result<u64>;
    }

    changes! {
        fn setattr(&self, ctx: &Context, inode: Inode, attr: stat64, handle: Option<Handle>,
            valid: SetattrValid) -> io::Result<(stat64, Duration)>;
        fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Inode, name: &CStr)
            -> io::Result<Entry>;
        fn mknod(&self, ctx: &Context, inode: Inode, name: &CStr, mode: u32, rdev: u32,
            umask: u32) -> io::Result<Entry>;
        fn mkdir(&self, ctx: &Context, parent: Inode, name: &CStr, mode: u32, umask: u32)
            -> io::Result<Entry>;
        fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()>;
        fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()>;
        fn rename(&self, ctx: &Context, olddir: Inode, oldname: &CStr, newdir: Inode,
            newname: &CStr, flags: u32) -> io::Result<()>;
        fn link(&self, ctx: &Context, inode: Inode, newparent: Inode, newname: &CStr)
            -> io::Result<Entry>;
        fn create(&self, ctx: &Context, parent: Inode, name: &CStr, args: CreateIn)
            -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)>;
        fn write(&self, ctx: &Context, inode: Inode, handle: Handle, r: &mut dyn ZeroCopyReader,
            size: u32, offset: u64, lock_owner: Option<u64>, delayed_write: bool, flags: u32,
            fuse_flags: u32) -> io::Result<usize>;
        fn fallocate(&self, ctx: &Context, inode: Inode, handle: Handle, mode: u32,
            offset: u64, length: u64) -> io::Result<()>;
    }

    // Opening for writing and asking for write access are changes too; statfs says so.
    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        #[allow(clippy::cast_sign_loss)] // small positive flag constants
        let (accmode, trunc) = (libc::O_ACCMODE as u32, libc::O_TRUNC as u32);
        #[allow(clippy::cast_sign_loss)]
        if flags & accmode != libc::O_RDONLY as u32 || flags & trunc != 0 {
            self.check_writable()?;
        }
        self.refuse_symlink(ctx, inode)?;
        self.fs.open(ctx, inode, flags, fuse_flags)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        #[allow(clippy::cast_sign_loss)] // W_OK is 2
        if mask & libc::W_OK as u32 != 0 {
            self.check_writable()?;
        }
        self.fs.access(ctx, inode, mask)
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        let mut st = self.fs.statfs(ctx, inode)?;
        if self.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.refuse_symlink(ctx, inode)?;
        self.fs.opendir(ctx, inode, flags)
    }
}
