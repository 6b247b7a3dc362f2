//! A circuit breaker per backend instance. After `threshold` faults in a row (plugin faults and
//! transient errors: the plugin or its CA is not working) the instance is quarantined: routing
//! skips it, so profiles with fallbacks move to them at once instead of every job waiting out a
//! retry. After `cooldown` one real job is let through as a probe; its success closes the
//! breaker, its failure quarantines the instance again. A final answer from the CA (issued,
//! rejected, pending) counts as success: the backend works, whatever it decided.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// When to quarantine and for how long.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    pub threshold: u32,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, reason: String },
    Probing { reason: String },
}

/// What the breaker says about sending a job now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Yes,
    /// The cooldown is over and this job is the probe.
    Probe,
    /// Quarantined (or a probe is already out).
    No(String),
}

/// The breaker as status reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BreakerStatus {
    /// `closed`, `quarantined` or `probing`.
    pub state: &'static str,
    /// Faults in a row so far (closed).
    pub failures: u32,
    /// Seconds until the next probe (quarantined).
    pub probe_in_seconds: Option<u64>,
    /// The fault that tripped it.
    pub reason: Option<String>,
}

/// One instance's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (each update is
        // one assignment), so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a job be sent to this instance now?
    pub fn admit(&self) -> Admission {
        let mut state = self.state();
        match &*state {
            State::Closed { .. } => Admission::Yes,
            State::Open { until, reason } if Instant::now() >= *until => {
                let reason = reason.clone();
                *state = State::Probing { reason };
                Admission::Probe
            }
            State::Open { until, reason } => Admission::No(format!(
                "quarantined for {}s more after repeated faults ({reason})",
                until.saturating_duration_since(Instant::now()).as_secs() + 1
            )),
            State::Probing { .. } => Admission::No("quarantined; a probe job is running".into()),
        }
    }

    /// The probe this breaker admitted did not run after all (the instance was busy): the next
    /// job may probe, with no new cooldown.
    pub fn release_probe(&self) {
        let mut state = self.state();
        if let State::Probing { reason } = &*state {
            *state = State::Open {
                until: Instant::now(),
                reason: reason.clone(),
            };
        }
    }

    /// The backend answered.
    pub fn success(&self, backend: &str) {
        let mut state = self.state();
        if matches!(*state, State::Probing { .. } | State::Open { .. }) {
            tracing::info!(backend, "probe succeeded: the backend is back in service");
        }
        *state = State::Closed { failures: 0 };
    }

    /// The plugin faulted or its CA was unreachable.
    pub fn failure(&self, backend: &str, reason: &str) {
        let mut state = self.state();
        let quarantine = match &*state {
            State::Closed { failures } if failures + 1 >= self.config.threshold => true,
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing { .. } | State::Open { .. } => true,
        };
        if quarantine {
            tracing::warn!(
                backend,
                cooldown_seconds = self.config.cooldown.as_secs(),
                "backend quarantined after repeated faults; routing skips it until a probe succeeds: {reason}"
            );
            *state = State::Open {
                until: Instant::now() + self.config.cooldown,
                reason: reason.chars().take(300).collect(),
            };
        }
    }

    pub fn status(&self) -> BreakerStatus {
        match &*self.state() {
            State::Closed { failures } => BreakerStatus {
                state: "closed",
                failures: *failures,
                probe_in_seconds: None,
                reason: None,
            },
            State::Open { until, reason } => BreakerStatus {
                state: "quarantined",
                failures: self.config.threshold,
                probe_in_seconds: Some(until.saturating_duration_since(Instant::now()).as_secs()),
                reason: Some(reason.clone()),
            },
            State::Probing { reason } => BreakerStatus {
                state: "probing",
                failures: self.config.threshold,
                probe_in_seconds: None,
                reason: Some(reason.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantines_after_the_threshold_and_probes_after_the_cooldown() {
        let b = Breaker::new(BreakerConfig {
            threshold: 3,
            cooldown: Duration::from_millis(50),
        });
        b.failure("x", "boom");
        b.failure("x", "boom");
        assert_eq!(b.admit(), Admission::Yes);
        b.success("x");
        b.failure("x", "boom");
        b.failure("x", "boom");
        assert_eq!(b.admit(), Admission::Yes, "success reset the count");
        b.failure("x", "boom");
        assert!(matches!(b.admit(), Admission::No(r) if r.contains("boom")));
        assert_eq!(b.status().state, "quarantined");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        assert!(matches!(b.admit(), Admission::No(_)), "one probe at a time");
        b.failure("x", "still down");
        assert!(matches!(b.admit(), Admission::No(r) if r.contains("still down")));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        b.release_probe();
        assert_eq!(
            b.admit(),
            Admission::Probe,
            "a probe given back is taken by the next job"
        );
        b.success("x");
        assert_eq!(b.admit(), Admission::Yes);
        assert_eq!(b.status().state, "closed");
    }
}
