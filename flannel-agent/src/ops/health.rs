//! `--healthz-port`: `/healthz` is 200 while the agent runs; `/readyz` is 503 until the lease
//! is held and subnet.env written, then 200.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use axum::{http::StatusCode, routing::get, Router};
use tracing::info;

use crate::ops::metrics;

/// How /metrics asks the agent for the current text.
pub type MetricsRequests = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<String>>;

pub async fn serve(
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    metrics: MetricsRequests,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--healthz-port: listening on {addr}"))?;
    let ready_for_metrics = ready.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || async move {
                // Until the loop runs, nothing but readiness is known.
                if !ready_for_metrics.load(Ordering::Relaxed) {
                    return (StatusCode::OK, metrics::starting());
                }
                let (reply, answer) = tokio::sync::oneshot::channel();
                let asked = metrics.send(reply).await.is_ok();
                match tokio::time::timeout(std::time::Duration::from_secs(2), answer).await {
                    Ok(Ok(text)) if asked => (StatusCode::OK, text),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the agent's loop did not answer within 2 s\n".to_owned(),
                    ),
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for a subnet lease\n",
                    )
                }
            }),
        );
    info!(%addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}
