//! self-test
