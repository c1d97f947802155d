//! What operators see and run: health and metrics endpoints, `status`, `--cleanup`.

pub mod cleanup;
pub mod health;
pub mod metrics;
pub mod status;
