//! `[revocation]`: publishing CRLs and answering OCSP for CAs whose key certconn holds. Off
//! when the section is absent.

use std::collections::BTreeMap;

use toml::Spanned;

use crate::config::{Checker, ConfigError, ConfigPath};

/// How revocations reach relying parties.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// How long a CRL (and an OCSP response) is valid: nextUpdate − thisUpdate, in hours.
    #[serde(
        default = "default_validity_hours",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 8784>"
    )]
    pub crl_validity_hours: u32,
    /// A new CRL is made at least this often, in hours, revocations or not. Below
    /// `crl_validity_hours`, so a relying party never holds an expired list.
    #[serde(default = "default_refresh_hours")]
    pub crl_refresh_hours: Spanned<u32>,
    /// Seconds to wait after a revocation before the new CRL, to gather a burst into one list.
    #[serde(
        default,
        deserialize_with = "crate::config::in_range::<_, u32, 0, 3600>"
    )]
    pub after_revoke_seconds: u32,
    /// Also write each CA's CRL to `<crl_dir>/<name>.crl` (DER) and its certificate to
    /// `<name>.crt`, for publishing with another web server.
    pub crl_dir: Option<ConfigPath>,
    /// The CAs to publish, by the name in their URLs (`/pki/<name>/crl`).
    #[serde(default)]
    pub cas: BTreeMap<String, PublishedCa>,
}

/// One CA whose revocations certconn publishes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedCa {
    /// Custody key of the CA; custody holds its certificate (first in the key's chain).
    pub key: Spanned<String>,
    /// Who signs OCSP responses: a `delegated` responder certificate issued by the CA
    /// (default; the CA key signs only that certificate and the CRLs), the `ca` key itself, or
    /// `off` for no OCSP.
    #[serde(default)]
    pub ocsp: OcspSigner,
    /// Validity of the delegated responder's certificate, in days; renewed when a third is left.
    #[serde(
        default = "default_responder_days",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 366>"
    )]
    pub responder_validity_days: u32,
}

/// Who signs a CA's OCSP responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OcspSigner {
    #[default]
    Delegated,
    Ca,
    Off,
}

fn default_validity_hours() -> u32 {
    168
}

fn default_refresh_hours() -> Spanned<u32> {
    Spanned::new(0..0, 24)
}

fn default_responder_days() -> u32 {
    30
}

impl PublishedCa {
    /// The custody key of this CA's delegated OCSP responder.
    pub fn responder_key(name: &str) -> String {
        format!("ocsp-{name}")
    }
}

impl RevocationConfig {
    /// Checks what can be checked of the section on its own.
    pub fn check(&self, cx: &Checker<'_>) -> Result<(), ConfigError> {
        let refresh = *self.crl_refresh_hours.get_ref();
        if refresh == 0 || refresh >= self.crl_validity_hours {
            return Err(cx.at(
                self.crl_refresh_hours.span(),
                "revocation.crl_refresh_hours",
                format!(
                    "must be at least 1 and below crl_validity_hours ({}), or relying parties \
                     hold an expired CRL before the next one",
                    self.crl_validity_hours
                ),
            ));
        }
        for (name, ca) in &self.cas {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid {
                return Err(cx.at(
                    ca.key.span(),
                    format!("revocation.cas.{name}"),
                    "a CA's name goes into its URLs: use 1 to 64 lowercase letters, digits, '-' or '_'",
                ));
            }
        }
        Ok(())
    }
}
