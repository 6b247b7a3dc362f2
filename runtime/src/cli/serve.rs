//! `certconn serve`.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::{server, token};
use crate::connector::Connector;

pub async fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = super::certconn_config(config_path)?;
    let listen = config.api.listen;
    let token_path = config.token_file();
    let connector = Arc::new(Connector::open(config).await?);
    let token = token::load_or_create(&token_path).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the API to {listen}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(api = %bound, token_file = %token_path.display(), backends = connector.services.registry.instances().count(), "certconn is serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = {
        let connector = connector.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move { connector.run_scheduler(stop_rx).await })
    };
    let watcher = {
        let connector = connector.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move { connector.run_plugin_watcher(stop_rx).await })
    };
    let app = server::router(connector.clone(), token);
    let mut api_stop = stop_rx.clone();
    let api = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = api_stop.wait_for(|s| *s).await;
    });

    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: finishing jobs in flight");
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        r = api => r.context("the API server stopped")?,
        r = signals => r.context("waiting for signals")?,
    }
    let _ = stop_tx.send(true);
    scheduler
        .await
        .context("the scheduler stopped abnormally")?;
    let _ = watcher.await;
    tracing::info!("stopped");
    Ok(())
}
