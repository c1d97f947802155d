//! Checksums.

pub use flannel_common::headers::{fold, sum16};
