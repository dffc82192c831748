//! Polling virtio-mmio driver (filled in with the virtio devices).
