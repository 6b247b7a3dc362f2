//! Watching the plugins directory. An event is only a hint: any change to a `*.wasm` file
//! triggers a [`Registry::rescan`], which reads the files and decides by their SHA-256 what is
//! new. A timer rescans as well, as a backstop for filesystems that do not deliver events
//! (network mounts) and to retry a version whose health check failed. Events are debounced
//! (notify-debouncer-full) so a burst of writes becomes one rescan.
//!
//! Publishing: write the new file under another name in the same directory, then rename it to
//! `NAME.wasm` — a rename is atomic, so the rescan never reads half a file. (A file copied in
//! place can be read half-written; it is then refused as not a component and loaded when the
//! complete file produces the next event.)

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use tokio::sync::{watch, Notify};

use super::Registry;

/// How long a burst of events is collected before it becomes one rescan.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Does this path name a plugin package (not a temporary file beside one)?
fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

/// Runs the watcher and the periodic rescan until `shutdown` turns true. With `watch_events`
/// off, only the timer rescans.
pub async fn run(
    registry: Arc<Registry>,
    watch_events: bool,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let changed = Arc::new(Notify::new());
    let _debouncer = if watch_events {
        let signal = changed.clone();
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                if events
                    .iter()
                    .any(|e| e.paths.iter().any(|p| is_plugin_file(p)))
                {
                    signal.notify_one();
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!("watching the plugins directory: {e}");
                }
            }
        };
        match new_debouncer(DEBOUNCE, None, handler) {
            Ok(mut d) => match d.watch(registry.plugins_dir(), RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %registry.plugins_dir().display(), "watching for new plugin versions");
                    Some(d)
                }
                Err(e) => {
                    tracing::warn!(dir = %registry.plugins_dir().display(), "cannot watch the plugins directory ({e}); rescanning every {}s instead", every.as_secs());
                    None
                }
            },
            Err(e) => {
                tracing::warn!(
                    "cannot start the plugins watcher ({e}); rescanning every {}s instead",
                    every.as_secs()
                );
                None
            }
        }
    } else {
        None
    };
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        for report in registry.rescan().await {
            tracing::debug!(?report, "plugin rescan");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_published_packages_trigger_a_rescan() {
        assert!(is_plugin_file(Path::new("/p/local-ca.wasm")));
        assert!(!is_plugin_file(Path::new("/p/local-ca.wasm.tmp")));
        assert!(!is_plugin_file(Path::new("/p/.local-ca.wasm")));
        assert!(!is_plugin_file(Path::new("/p/notes.txt")));
    }
}
