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

pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--healthz-port: listening on {addr}"))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
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
    info!(%addr, "serving /healthz and /readyz");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}
