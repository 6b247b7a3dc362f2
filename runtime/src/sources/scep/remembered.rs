//! What the SCEP server remembers of the jobs it told an enrolment authority about, for as
//! long as a client may still poll for them, and no longer.
//!
//! A client polls (CertPoll, or its PKCSReq again) until it has its answer, then stops; the
//! authority hears of each job once however often it is polled. Kept for the life of the
//! process, that memory grew by an entry with every enrolment an authority admitted (about
//! 100 bytes each, for ever). Entries now go after [`REMEMBER_FOR`]; a client polling again
//! after that for a job it was answered on makes the authority hear of it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a job is remembered: far longer than any client polls for an answer it has had.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 3600);

/// Jobs by id, each with a value, forgotten [`REMEMBER_FOR`] after they were first noted.
pub struct Remembered<V> {
    entries: Mutex<Entries<V>>,
    keep: Duration,
}

struct Entries<V> {
    by_job: HashMap<String, (Instant, V)>,
    /// The size at which the next insertion looks for old entries: twice what was left after
    /// the last look, so each entry is looked at a bounded number of times on average.
    next_sweep: usize,
}

/// The fewest entries at which old ones are looked for.
const FIRST_SWEEP: usize = 1024;

impl<V: Clone> Remembered<V> {
    pub fn new() -> Self {
        Self::keeping(REMEMBER_FOR)
    }

    fn keeping(keep: Duration) -> Self {
        Self {
            entries: Mutex::new(Entries {
                by_job: HashMap::new(),
                next_sweep: FIRST_SWEEP,
            }),
            keep,
        }
    }

    /// The value noted for `job`, if it is still remembered.
    pub fn get(&self, job: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .by_job
            .get(job)
            .filter(|(at, _)| at.elapsed() < self.keep)
            .map(|(_, v)| v.clone())
    }

    /// Notes `job` with `value` unless it is remembered already: true when it was not (the
    /// first time, or after it was forgotten).
    pub fn note(&self, job: &str, value: V) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((at, _)) = entries.by_job.get(job) {
            if now.duration_since(*at) < self.keep {
                return false;
            }
        }
        if entries.by_job.len() >= entries.next_sweep {
            let keep = self.keep;
            entries
                .by_job
                .retain(|_, (at, _)| now.duration_since(*at) < keep);
            entries.next_sweep = (entries.by_job.len() * 2).max(FIRST_SWEEP);
        }
        entries.by_job.insert(job.to_owned(), (now, value));
        true
    }

    /// How many entries are held now (the forgotten among them until the next sweep).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_job
            .len()
    }
}

impl<V: Clone> Default for Remembered<V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_noted_once_while_it_is_remembered() {
        let seen = Remembered::new();
        assert!(seen.note("j1", ()));
        assert!(!seen.note("j1", ()));
        assert!(seen.note("j2", ()));
        assert_eq!(seen.get("j1"), Some(()));
        assert_eq!(seen.get("j3"), None);
    }

    #[test]
    fn a_job_past_its_time_is_forgotten_and_noted_again() {
        let seen = Remembered::keeping(Duration::ZERO);
        assert!(seen.note("j1", "why"));
        assert_eq!(seen.get("j1"), None);
        assert!(seen.note("j1", "why"), "forgotten, so noted anew");
    }

    #[test]
    fn the_entries_held_stay_bounded_by_what_is_remembered() {
        // Nothing outlives its note: however many jobs pass, the map is swept back at each
        // FIRST_SWEEP entries instead of holding every job ever noted.
        let forgetful = Remembered::keeping(Duration::ZERO);
        for i in 0..10 * FIRST_SWEEP {
            assert!(forgetful.note(&format!("job-{i}"), ()));
            assert!(forgetful.held() <= FIRST_SWEEP, "{} held", forgetful.held());
        }
        // Everything remembered: every entry stays, and the sweeps do not lose one.
        let mindful = Remembered::new();
        for i in 0..3 * FIRST_SWEEP {
            assert!(mindful.note(&format!("job-{i}"), i));
        }
        assert_eq!(mindful.held(), 3 * FIRST_SWEEP);
        assert!((0..3 * FIRST_SWEEP).all(|i| mindful.get(&format!("job-{i}")) == Some(i)));
    }
}
