//! `certconn serve`: start the daemon and stop it on SIGTERM or Ctrl-C, draining first; tell
//! systemd (when it runs us with `Type=notify`) when it is ready, how it is, and that it lives.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use certconn::app::App;
use certconn::journal::Journal;

use super::systemd::{self, Notifier};

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(30);

pub async fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = super::certconn_config(config_path)?;
    if config.custody.allow_core_dumps {
        tracing::warn!(
            "custody.allow_core_dumps = true: a crash writes the keys, passwords and credentials \
             certconn holds in memory to a core file"
        );
    }
    let app = App::open(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let notifier = Notifier::from_env().map(Arc::new);
    let reloader = app.reloader.clone();
    let mut restart = false;
    let signals = async {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = certconn::update::restart_for_update().notified() => {
                    restart = true;
                    break;
                }
                _ = term.recv() => break,
                // The reload logs what it changed, or why it changed nothing.
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = certconn::sources::api::server::ConfigReload::reload(&*reloader).await;
                }
            }
        }
        tracing::info!("stopping: finishing jobs in flight");
        if let Some(n) = &notifier {
            n.send("STOPPING=1\nSTATUS=stopping: finishing jobs in flight");
        }
        let _ = stop_tx.send(true);
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let (systemd_tx, systemd_rx) = oneshot::channel();
    let journal = app.journal.clone();
    // Ready: the API is bound. A version on trial proves itself here (its journal answers).
    tokio::spawn(async move {
        let Ok(addr) = ready_rx.await else { return };
        if tokio::time::timeout(Duration::from_secs(10), journal.counts())
            .await
            .is_ok_and(|c| c.is_ok())
        {
            certconn::update::commit_trial();
        }
        let _ = systemd_tx.send(addr);
    });
    if let Some(n) = notifier.clone() {
        tokio::spawn(tell_systemd(
            n,
            systemd_rx,
            app.journal.clone(),
            stop_rx.clone(),
        ));
    }
    let served = app.serve(stop_rx, ready_tx);
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => r?,
        () = signals => served.await?,
    }
    tracing::info!("stopped");
    if restart {
        // The launcher starts `current` again: the version just switched to.
        std::process::exit(certconn::update::daemon::RESTART_EXIT);
    }
    Ok(())
}

/// READY once the API listens; then, until the drain, the watchdog pings and a STATUS line.
async fn tell_systemd(
    notifier: Arc<Notifier>,
    ready: oneshot::Receiver<std::net::SocketAddr>,
    journal: Arc<dyn Journal>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(addr) = ready.await else {
        return;
    };
    let serving = format!("serving on {addr}");
    notifier.send(&format!("READY=1\nSTATUS={serving}"));
    let watchdog = systemd::watchdog_interval();
    let every = watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // The ping first: a slow journal must not look like a dead process.
        if watchdog.is_some() {
            notifier.send("WATCHDOG=1");
        }
        let counts = tokio::time::timeout(Duration::from_secs(1), journal.counts()).await;
        if let Ok(Ok(counts)) = counts {
            let jobs: Vec<String> = counts
                .iter()
                .filter(|(s, _)| !matches!(s.as_str(), "succeeded" | "failed"))
                .map(|(s, n)| format!("{n} {}", s.as_str()))
                .collect();
            let jobs = if jobs.is_empty() {
                "no jobs waiting".to_owned()
            } else {
                format!("jobs: {}", jobs.join(", "))
            };
            notifier.send(&format!("STATUS={serving}; {jobs}"));
        }
    }
}
