//! How one run of a job ends: [`Completed`], or a [`JobError`] whose [`ErrorClass`] tells the
//! scheduler what to do next — the one place that decision is read from (see
//! `scheduler::record`).

use std::borrow::Cow;
use std::time::Duration;

use super::model::JobResult;
use crate::journal::{IssuedRecord, Revocation};

/// What the scheduler does with a job that did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Retrying cannot help (a bad request, a CA's refusal): the job fails.
    Permanent,
    /// It may work later (the CA is unreachable, a plugin fault): retried with backoff, then
    /// dead-lettered after `jobs.max_attempts`.
    Transient,
    /// No backend of the route can take it now (unloaded, not loaded, quarantined): it waits
    /// without using up an attempt.
    Unavailable,
    /// The CA has not decided: polled again with `token` after `retry_after`.
    Pending {
        token: String,
        retry_after: Duration,
    },
}

/// Why a job did not complete this time: the class decides what happens next, the backend and
/// the message say where and why, the source (when there is one) why deeper down.
#[derive(Debug)]
pub struct JobError {
    pub class: ErrorClass,
    pub backend: Option<String>,
    message: Cow<'static, str>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl JobError {
    fn new(class: ErrorClass, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            class,
            backend: None,
            message: message.into(),
            source: None,
        }
    }

    pub fn permanent(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    pub fn transient(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorClass::Unavailable, message)
    }

    pub fn pending(
        message: impl Into<Cow<'static, str>>,
        token: String,
        retry_after: Duration,
    ) -> Self {
        Self::new(ErrorClass::Pending { token, retry_after }, message)
    }

    /// At backend `name`.
    pub fn at(mut self, name: impl Into<String>) -> Self {
        self.backend = Some(name.into());
        self
    }

    /// At backend `name`, if one is known.
    pub fn at_opt(mut self, name: Option<&str>) -> Self {
        self.backend = name.map(str::to_owned);
        self
    }

    /// Because of `source`.
    pub fn because(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The whole chain on one line, as the journal keeps it in `last_error`.
    pub fn report(&self) -> String {
        crate::report::chain(self)
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What a completed job produced, to be written to the outbox and the ledger in one transaction.
#[derive(Debug)]
pub struct Completed {
    pub backend: String,
    pub result: JobResult,
    /// The PFX password when no recipient was given: handed out once.
    pub password: Option<crate::secret::SecretString>,
    pub issued: Option<IssuedRecord>,
    pub revoked: Option<Revocation>,
}

/// One run of a job.
pub type Outcome = Result<Completed, JobError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_each_cause_once() {
        let e = JobError::permanent("opening the PFX")
            .at("import")
            .because(std::io::Error::other("MAC does not verify"));
        assert_eq!(e.to_string(), "opening the PFX");
        assert_eq!(e.report(), "opening the PFX: MAC does not verify");
        assert_eq!(e.backend.as_deref(), Some("import"));
    }

    #[test]
    fn a_completed_job_in_debug_output_does_not_show_its_pfx_password() {
        let password: crate::secret::SecretString = "Kq2-pfx-secret".to_owned().into();
        let done = Completed {
            backend: "local-ca".into(),
            result: JobResult {
                serial: Some("01".into()),
                password: Some(password.clone()),
                ..JobResult::default()
            },
            password: Some(password),
            issued: None,
            revoked: None,
        };
        let shown = format!("{done:?}");
        assert!(
            shown.contains("local-ca") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("Kq2-pfx-secret"), "{shown}");
        let answer = serde_json::to_value(&done.result).unwrap();
        assert_eq!(
            answer["password"], "Kq2-pfx-secret",
            "the API still hands it out"
        );
    }
}
