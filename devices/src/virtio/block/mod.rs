//! virtio-blk. TODO: being written.
