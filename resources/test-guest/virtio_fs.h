/* Polling virtio-fs driver over virtio-mmio (version 2): raw FUSE requests. */
#ifndef VIRTIO_FS_H
#define VIRTIO_FS_H

#include <stddef.h>

/* FUSE_INIT (once), LOOKUP, GETATTR, OPEN, READ (to the end), RELEASE of the file
 * `name` in the share's root; prints "fs read <name> size=<n> bytes=<n> fnv=<hex>". */
void fs_read(const char *name, size_t len);
/* OPENDIR, READDIR, RELEASEDIR of the root and LOOKUP "..": prints
 * "fs ls <names...>" and "fs dotdot node=<n>". */
void fs_ls(void);
/* LOOKUP then OPEN of `name`: prints "fs open <name> error=<-errno or 0>". */
void fs_open(const char *name, size_t len);

#endif
