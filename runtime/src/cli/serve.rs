//! `certconn serve`: start the daemon and stop it on SIGTERM or Ctrl-C, draining first.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use certconn::app::App;

pub async fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = super::certconn_config(config_path)?;
    let app = App::open(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let signals = async {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                // Until configuration reload exists, a HUP (what logrotate and admins send out of
                // habit) must not kill the daemon.
                _ = hangup.recv() => tracing::warn!("SIGHUP received: certconn does not reload its configuration yet; restart it to apply changes (ignored)"),
            }
        }
        tracing::info!("stopping: finishing jobs in flight");
        let _ = stop_tx.send(true);
    };
    let served = app.serve(stop_rx);
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => r?,
        () = signals => served.await?,
    }
    tracing::info!("stopped");
    Ok(())
}
