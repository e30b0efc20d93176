//! [`Shutdown`]: asks a running launcher to stop, from a signal or from code.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// A handle that stops a [`Launcher`](crate::Launcher). Cheap to clone.
///
/// The first [`request`](Shutdown::request) starts a graceful shutdown: the launcher stops fetching and
/// running tasks get up to `worker_kill_time` to finish. The second (or [`kill`](Shutdown::kill)) ends
/// the wait at once: running tasks are cancelled and settled by the `on_shutdown` rule. With
/// `handle_signals`, SIGINT and SIGTERM call `request`.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: AtomicU32,
    requested: CancellationToken,
    killed: CancellationToken,
}

impl Shutdown {
    /// A handle no one has triggered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a graceful shutdown; asking again shortens it to now.
    pub fn request(&self) {
        if self.inner.requests.fetch_add(1, Ordering::SeqCst) == 0 {
            self.inner.requested.cancel();
        } else {
            self.kill();
        }
    }

    /// Stops now: running tasks are cancelled without waiting for `worker_kill_time`.
    pub fn kill(&self) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.requested.cancel();
        self.inner.killed.cancel();
    }

    /// True once a shutdown was asked for.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.is_cancelled()
    }

    /// Completes once a shutdown was asked for.
    pub async fn requested(&self) {
        self.inner.requested.cancelled().await;
    }

    /// Completes once the wait for running tasks was cut short.
    pub async fn killed(&self) {
        self.inner.killed.cancelled().await;
    }

    /// Calls [`request`](Shutdown::request) on every SIGINT and SIGTERM (Ctrl-C off Unix) until
    /// `stop` is cancelled.
    pub(crate) fn listen_for_signals(&self, stop: CancellationToken) {
        let this = self.clone();
        let Some(mut signals) = Signals::new() else {
            tracing::error!("cannot listen for SIGINT/SIGTERM; stop the worker with SIGKILL");
            return;
        };
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    () = stop.cancelled() => return,
                    name = signals.next() => name,
                };
                let second = this.is_requested();
                if second {
                    tracing::warn!(signal = name, "second signal: cancelling running tasks now");
                } else {
                    tracing::warn!(
                        signal = name,
                        "shutting down: no new tasks; waiting for running ones (a second signal stops them)"
                    );
                }
                this.request();
            }
        });
    }
}

/// The shutdown signals, registered once so none is missed between two waits.
#[cfg(unix)]
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> Option<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> Option<Self> {
        Some(Signals)
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
