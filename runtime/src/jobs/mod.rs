//! Jobs: what a request asks for, how it is admitted, scheduled, routed and run.
//!
//! - `model`: the requests of each kind and the results, as journaled.
//! - `intake`: validation before anything is stored; the one door into the queue.
//! - `scheduler`: workers that lease, renew, run and record; the retry policy.
//! - `routing`: a profile's backends in order, fallbacks and the breaker's verdict.
//! - `steps`: issue, import, revoke — each over the small ports it needs.
//! - `outcome`: how one run ends, and the error class that decides what happens next.
//! - `ports`: what the steps need of custody.
//! - `events`: the stable event ids of a job's life, by flow.
//! - `settings`: the `[jobs]` and `[profiles.NAME]` config sections.
//!
//! A job is written to the journal before it is acknowledged; its result is written to the
//! outbox in the same transaction that ends it, and only the worker still holding its lease
//! can end it. A crash at any point leaves a job that is queued or leased, and an expired lease
//! is taken up again, so every job ends exactly once.

pub mod events;
pub mod intake;
pub mod model;
pub mod outcome;
pub mod ports;
pub mod routing;
pub mod scheduler;
pub mod settings;
pub mod steps;

pub use intake::{Intake, IntakeError, SubmitError};
pub use outcome::{Completed, ErrorClass, JobError, Outcome};
pub use scheduler::Scheduler;
pub use settings::{JobsConfig, ProfileConfig, Profiles};
pub use steps::{JobRunner, StepSettings, Steps};
