//! Jobs: the model, the durable journal, the scheduler that leases and retries, and the
//! pipeline steps that do the work.
//!
//! A job is written to the journal before it is acknowledged; its result is written to the
//! outbox in the same transaction that ends it, and only the worker still holding its lease
//! can end it. A crash at any point leaves a job that is queued or leased, and an expired lease
//! is taken up again, so every job ends exactly once.

pub mod import;
pub mod intake;
pub mod journal;
pub mod model;
pub mod pipeline;
pub mod scheduler;

pub use journal::{Journal, JournalError};
pub use model::{JobKind, JobRecord, JobState};
