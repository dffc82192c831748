//! virtio-rng (later).
