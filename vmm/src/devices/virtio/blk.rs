//! virtio-blk (later).
