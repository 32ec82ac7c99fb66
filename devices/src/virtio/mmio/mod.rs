//! virtio-mmio transport (version 2). TODO: being written.
