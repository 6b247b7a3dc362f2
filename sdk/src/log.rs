//! Logging into the host's log, tagged there with the backend instance and job.
//! Never log secrets: challenge passwords, tokens, key material.

use crate::bindings::certconn::plugin::log::{log, Level};

pub fn trace(message: &str) {
    log(Level::Trace, message)
}
pub fn debug(message: &str) {
    log(Level::Debug, message)
}
pub fn info(message: &str) {
    log(Level::Info, message)
}
pub fn warn(message: &str) {
    log(Level::Warn, message)
}
pub fn error(message: &str) {
    log(Level::Error, message)
}
