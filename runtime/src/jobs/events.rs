//! Stable event ids of a job's life, by flow: 15xx an issue (PKCS#12 or CSR), 25xx an
//! imported-PFX delivery, 35xx a revocation. An admin filters the log by flow the way the
//! connectors certconn replaces taught them (1xxx PKCS, 2xxx imported PFX, 3xxx revoke); the
//! whole table is `docs/events.md`.

use crate::journal::JobKind;

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// Journaled: it will be done.
    Accepted = 1,
    Succeeded = 2,
    /// The CA has not decided; certconn polls it.
    Pending = 3,
    /// A transient failure: tried again after backoff.
    Retrying = 4,
    /// No backend of its route can take it now; it waits without using an attempt.
    Waiting = 5,
    /// Refused for good.
    Failed = 6,
    /// Given up after its attempts.
    Dead = 7,
}

impl JobEvent {
    /// The event id of this event for a job of `kind`.
    pub fn id(self, kind: JobKind) -> u32 {
        let flow = match kind {
            JobKind::Issue => 1500,
            JobKind::Import => 2500,
            JobKind::Revoke => 3500,
        };
        flow + self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flow_has_its_thousand() {
        assert_eq!(JobEvent::Accepted.id(JobKind::Issue), 1501);
        assert_eq!(JobEvent::Succeeded.id(JobKind::Import), 2502);
        assert_eq!(JobEvent::Dead.id(JobKind::Revoke), 3507);
    }
}
