//! What operators see and run: health and metrics endpoints, `status`, `monitor`, `--cleanup`,
//! and what systemd is told.

pub mod cleanup;
pub mod health;
pub mod manual;
pub mod metrics;
pub mod monitor;
pub mod status;
pub mod systemd;
