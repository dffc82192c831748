//! virtio-net (later).
