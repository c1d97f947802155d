//! What operators see and run: health and metrics endpoints, `status`, `monitor`, `--cleanup`.

pub mod cleanup;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod status;
