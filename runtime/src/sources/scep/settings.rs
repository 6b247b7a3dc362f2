//! `[scep]`: certconn's SCEP server. Off when the section is absent.

use toml::Spanned;

use crate::config::{Checker, ConfigError, ConfigPath};

/// certconn's SCEP server (RFC 8894): devices and device-management services enrol here, and the
/// CSR goes to the backend the profile routes to.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScepConfig {
    /// The profile every SCEP request is routed by.
    pub profile: Spanned<String>,
    /// Custody key of the RA: it decrypts requests and signs replies. Created (RSA-2048) at first
    /// start with an RA certificate issued by `ca_key`.
    #[serde(default = "default_ra_key")]
    pub ra_key: String,
    /// Custody key whose certificate chain is the CA published by GetCACert and that issues
    /// the RA certificate (for example the local CA's key).
    pub ca_key: Spanned<String>,
    /// The RA certificate's subject.
    #[serde(default = "default_ra_subject")]
    pub ra_subject: Spanned<String>,
    /// `single`: one RA certificate signs replies and receives requests. `ndes`: a signing RA
    /// (digitalSignature) and an encryption RA (keyEncipherment, key `<ra_key>-enc`), as NDES
    /// publishes them, for clients that pick the encryption certificate by its key usage.
    #[serde(default)]
    pub ra_layout: RaLayout,
    /// Open requests sealed for the CA certificate with the CA key (when it is RSA), for clients
    /// that cannot tell the RA certificates apart. Off by default: it makes this endpoint an
    /// RSA decryption oracle for the CA key. Prefer `ra_layout = "ndes"`.
    #[serde(default)]
    pub decrypt_with_ca_key: bool,
    /// How long each RA certificate is valid, in days. The next one is made and announced by
    /// GetNextCACert at two thirds of that, and takes over at five sixths.
    #[serde(
        default = "default_ra_validity_days",
        deserialize_with = "crate::config::in_range::<_, u32, 2, 3650>"
    )]
    pub ra_validity_days: u32,
    /// A static challenge password, read from this environment variable.
    pub challenge_env: Option<Spanned<String>>,
    /// A static challenge password, read from this file (0600; trailing newline ignored).
    pub challenge_file: Option<ConfigPath>,
    /// Accept one-time challenges minted by `certconn scep challenge` (or the API).
    #[serde(default = "default_true")]
    pub one_time_challenges: bool,
    /// Ask this URL (plain http) about challenges neither static nor one-time: certconn POSTs
    /// `{transaction_id, challenge, csr_pem, subject}` and accepts on a 2xx answer. Fails closed.
    pub challenge_webhook: Option<Spanned<String>>,
    /// `intune`: challenges are Intune's, decided by Intune's SCEP validation API (`[intune]`):
    /// every request is validated before it is issued, Intune hears of each certificate before
    /// the device gets it and of each request not issued. Static and one-time challenges are
    /// still asked first.
    pub challenge: Option<Spanned<ChallengeAuthority>>,
    /// How long a one-time challenge stays valid, in minutes.
    #[serde(
        default = "default_challenge_minutes",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 525_600>"
    )]
    pub challenge_minutes: u32,
    /// How long a PKIOperation waits for the backend before answering PENDING, in seconds. At
    /// most 60: longer requests time out in SCEP clients; PENDING covers the rest.
    #[serde(
        default = "default_scep_wait",
        deserialize_with = "crate::config::in_range::<_, u32, 0, 60>"
    )]
    pub wait_seconds: u32,
}

/// Who decides challenges besides certconn (`scep.challenge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChallengeAuthority {
    Intune,
}

/// How the RA's certificates are laid out (`scep.ra_layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaLayout {
    /// One RA certificate that signs and decrypts.
    #[default]
    Single,
    /// A signing RA and an encryption RA, as NDES publishes them.
    Ndes,
}

fn default_ra_validity_days() -> u32 {
    730
}

fn default_ra_key() -> String {
    "scep-ra".into()
}

fn default_ra_subject() -> Spanned<String> {
    Spanned::new(0..0, "CN=certconn SCEP RA".into())
}

fn default_true() -> bool {
    true
}

fn default_challenge_minutes() -> u32 {
    60
}

fn default_scep_wait() -> u32 {
    10
}

impl ScepConfig {
    /// What `serve` and `check-config` say when the CA key GetCACert publishes is not RSA
    /// (`algorithm` names what it is). Not refused: clients that seal their request for the
    /// RA certificate alone enrol; those that seal it for every certificate GetCACert returns
    /// cannot encrypt to an EC key and fail on the client side, where the server never hears
    /// of it.
    pub fn ca_key_not_rsa(&self, algorithm: &str) -> String {
        format!(
            "scep.ca_key {:?} is an {algorithm} key: GetCACert returns its certificate beside the \
             RA's, and SCEP clients that encrypt their request to every certificate there cannot \
             encrypt to it and fail (micromdm's scepclient stops with a panic); clients that \
             seal for the RA certificate alone enrol. An RSA CA key serves every client \
             (docs/scep.md)",
            self.ca_key.get_ref()
        )
    }

    /// Checks what can be checked of the section on its own.
    pub fn check(&self, cx: &Checker<'_>) -> Result<(), ConfigError> {
        if let Err(e) = crate::pki::dn::parse(self.ra_subject.get_ref()) {
            return Err(cx.at(self.ra_subject.span(), "scep.ra_subject", e.to_string()));
        }
        if let (Some(env), Some(_)) = (&self.challenge_env, &self.challenge_file) {
            return Err(cx.at(
                env.span(),
                "scep.challenge_env",
                "give the static challenge in one place: challenge_env or challenge_file",
            ));
        }
        if let Some(url) = &self.challenge_webhook {
            if let Err(why) = super::challenge::Webhook::check_url(url.get_ref()) {
                return Err(cx.at(
                    url.span(),
                    "scep.challenge_webhook",
                    format!(
                        "{:?} is not an http:// URL to ask: {why}",
                        super::challenge::Webhook::shown(url.get_ref())
                    ),
                ));
            }
        }
        Ok(())
    }
}
