//! Refusals the proxy recorded, for the run report.

use std::sync::Mutex;

use tracing::{info, warn};

/// Maximum number of denials recorded for [`crate::Proxy::denials`]. A command that loops on a
/// blocked destination would otherwise grow the list, and the log, without bound.
pub const MAX_RECORDED_DENIALS: usize = 10_000;

/// One request the proxy refused, because the rules deny it or because it was malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The host as the client requested it, without brackets around an IPv6 address and
    /// without the port. Empty when the request was refused before a host could be read.
    pub destination: String,
    /// The requested port, or 0 when none could be read.
    pub port: u16,
    /// The protocol of the request: `"connect"` (HTTP CONNECT), `"http"` (a plain HTTP request, or an
    /// HTTP request too malformed to tell), `"socks5"`, or `"tcp"` (see [`crate::Proxy::serve_resolved`]).
    pub protocol: &'static str,
    /// The deny entry that decided, as written in the policy, or `None` when no entry did (the
    /// destination is not on the allowlist, or the request was malformed).
    pub rule: Option<String>,
    /// One sentence saying why, and for a policy denial what to change to allow it.
    pub reason: String,
}

/// Called with each denial as the proxy records it, on the thread that serves the
/// connection; see [`crate::Proxy::with_denial_sink`].
pub type DenialSink = std::sync::Arc<dyn Fn(&Denial) + Send + Sync>;

/// The denials of one [`crate::Proxy`], shared by its connection tasks.
#[derive(Default)]
pub(crate) struct DenialLog {
    state: Mutex<LogState>,
    sink: Option<DenialSink>,
}

impl std::fmt::Debug for DenialLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DenialLog").field("state", &self.state).field("sink", &self.sink.is_some()).finish()
    }
}

#[derive(Debug, Default)]
struct LogState {
    recorded: Vec<Denial>,
    /// Denials past [`MAX_RECORDED_DENIALS`], counted but neither recorded nor logged.
    dropped: u64,
}

impl DenialLog {
    pub(crate) fn with_sink(sink: Option<DenialSink>) -> DenialLog {
        DenialLog { state: Mutex::default(), sink }
    }

    /// Logs `denial` at info level and records it, up to [`MAX_RECORDED_DENIALS`]. The sink
    /// gets it first, before the client hears of the refusal, so a watcher learns of it no
    /// later than the command does. The sink also gets the denials past the cap.
    pub(crate) fn record(&self, denial: Denial) {
        if let Some(sink) = &self.sink {
            sink(&denial);
        }
        let mut state = self.lock();
        if state.recorded.len() >= MAX_RECORDED_DENIALS {
            if state.dropped == 0 {
                warn!(
                    max = MAX_RECORDED_DENIALS,
                    "the proxy has refused {MAX_RECORDED_DENIALS} requests, so further denials are counted but not logged or recorded"
                );
            }
            state.dropped += 1;
            return;
        }
        // Debug formatting escapes control characters, which the destination and the reason
        // may carry from the client's request.
        info!(
            destination = ?denial.destination,
            port = denial.port,
            protocol = denial.protocol,
            rule = denial.rule.as_deref().unwrap_or("-"),
            reason = ?denial.reason,
            "proxy denied a request"
        );
        state.recorded.push(denial);
    }

    pub(crate) fn snapshot(&self) -> Vec<Denial> {
        self.lock().recorded.clone()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the list half-written: every update is a
        // single push or increment. So a poisoned lock is still safe to read.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(port: u16) -> Denial {
        Denial {
            destination: "blocked.test".into(),
            port,
            protocol: "connect",
            rule: None,
            reason: "blocked.test is not on the allowlist".into(),
        }
    }

    #[test]
    fn log_keeps_denials_in_order() {
        let log = DenialLog::default();
        log.record(denial(1));
        log.record(denial(2));
        let ports: Vec<u16> = log.snapshot().iter().map(|denial| denial.port).collect();
        assert_eq!(ports, [1, 2]);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn sink_sees_every_denial() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let copy = std::sync::Arc::clone(&seen);
        let log = DenialLog::with_sink(Some(std::sync::Arc::new(move |denial: &Denial| copy.lock().unwrap().push(denial.port))));
        for port in 0..3 {
            log.record(denial(port));
        }
        assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);
    }

    #[test]
    fn log_counts_denials_past_the_cap() {
        let log = DenialLog::default();
        for _ in 0..MAX_RECORDED_DENIALS + 3 {
            log.record(denial(443));
        }
        assert_eq!(log.snapshot().len(), MAX_RECORDED_DENIALS);
        assert_eq!(log.dropped(), 3);
    }
}
