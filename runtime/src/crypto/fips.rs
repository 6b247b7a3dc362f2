//! Whether the FIPS module is what certconn runs on, and whether it passed its self-test.
//!
//! `crypto.fips = true` is a promise to an auditor; a binary built without the `fips` feature
//! cannot keep it, so start-up refuses rather than run with the policy alone.

use serde::Serialize;

/// The cryptographic module this binary was built against, as figures name it: a benchmark of
/// the FIPS build measures a different module (slower at PBKDF2 and HMAC), and its numbers
/// must not pass for the default build's.
pub fn module_name() -> &'static str {
    if cfg!(feature = "fips") {
        "AWS-LC FIPS module"
    } else {
        "AWS-LC"
    }
}

/// FIPS status as `certconn status` and `/v1/health` report it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FipsStatus {
    /// `crypto.fips` in the config: only FIPS-approved algorithms are allowed.
    pub policy: bool,
    /// The binary was built against the AWS-LC FIPS module (cargo feature `fips`).
    pub module_built: bool,
    /// The module reports FIPS mode active.
    pub module_active: bool,
    /// The module's power-on self-test passed (None when not a FIPS build).
    pub self_test_passed: Option<bool>,
}

impl FipsStatus {
    /// Asks the provider.
    pub fn probe(policy: bool) -> Self {
        let module_built = cfg!(feature = "fips");
        let module_active = aws_lc_rs::try_fips_mode().is_ok();
        let self_test_passed = module_built.then(|| aws_lc_rs::try_fips_self_test().is_ok());
        Self {
            policy,
            module_built,
            module_active,
            self_test_passed,
        }
    }

    /// The reason certconn must not start, if any.
    pub fn refusal(&self) -> Option<String> {
        if !self.policy {
            return None;
        }
        if !self.module_built {
            return Some("crypto.fips = true needs a binary built with the cargo feature `fips` (the AWS-LC FIPS module); this one is not".into());
        }
        if !self.module_active {
            return Some(
                "crypto.fips = true, but the AWS-LC FIPS module is not in FIPS mode".into(),
            );
        }
        if self.self_test_passed != Some(true) {
            return Some(
                "crypto.fips = true, but the AWS-LC FIPS module failed its self-test".into(),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_without_the_module_is_refused_and_named() {
        let status = FipsStatus::probe(true);
        if cfg!(feature = "fips") {
            assert_eq!(status.refusal(), None, "{status:?}");
            assert!(status.module_active && status.self_test_passed == Some(true));
        } else {
            assert!(status.refusal().unwrap().contains("cargo feature `fips`"));
            assert!(!status.module_active);
        }
        assert_eq!(FipsStatus::probe(false).refusal(), None);
    }
}
