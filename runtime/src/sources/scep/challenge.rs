//! Challenge passwords: who may enrol over SCEP. One trait, [`ChallengeValidator`], and its
//! implementations — a static challenge from the configuration, one-time challenges minted on
//! demand (`certconn scep challenge`, `POST /v1/scep/challenges`; only their SHA-256 is
//! journaled, the challenge is shown once to whoever minted it), and an administrator's webhook.
//! They are asked in order; the first to accept admits the request, one that refuses ends the
//! question. A device-management service's own validator (Intune's) is one more implementation.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use zeroize::Zeroizing;

use crate::crypto::provider::{self, Digest};
use crate::journal::{now_ms, ChallengeStore, JournalError};

/// What a validator is shown of a request.
pub struct ChallengeRequest<'a> {
    pub transaction_id: &'a str,
    /// The challenge password in the CSR.
    pub challenge: &'a str,
    pub csr_pem: &'a str,
    /// The CSR's subject, RFC 4514.
    pub subject: &'a str,
}

/// Without the challenge, and without the CSR, which carries it too.
impl std::fmt::Debug for ChallengeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeRequest")
            .field("transaction_id", &self.transaction_id)
            .field("challenge", &"<redacted>")
            .field("csr_pem", &"<redacted>")
            .field("subject", &self.subject)
            .finish()
    }
}

/// A validator's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The challenge admits the request.
    Accepted,
    /// Not a challenge this validator knows; the next one is asked.
    NotMine,
    /// Refused, with the reason for the log (the client is told only "badRequest").
    Refused(String),
}

/// One way of deciding whether a challenge admits a request.
#[async_trait::async_trait]
pub trait ChallengeValidator: Send + Sync {
    /// For logs: `static`, `one-time`, `webhook`.
    fn name(&self) -> &'static str;
    async fn validate(&self, request: &ChallengeRequest<'_>) -> Result<Verdict, JournalError>;
}

/// A device-management service that decides the challenges of its devices and must hear how
/// each request it admitted ended (Intune, `scep.challenge = "intune"`). It is asked after the
/// static and one-time challenges, and never answers "not mine": it fails closed.
#[async_trait::async_trait]
pub trait EnrolmentAuthority: Send + Sync {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Whether the request (its CSR as DER) may be issued.
    async fn validate(&self, request: &ChallengeRequest<'_>, csr_der: &[u8]) -> Verdict;
    /// Before the certificate is delivered: an error means the device does not get it.
    async fn issued(
        &self,
        transaction_id: &str,
        csr_der: &[u8],
        certificate_der: &[u8],
    ) -> Result<(), String>;
    /// A request it admitted was not issued (or not delivered), and why.
    async fn not_issued(&self, transaction_id: &str, csr_der: &[u8], reason: &str);
}

/// An [`EnrolmentAuthority`] among the validators.
pub struct Delegated(pub std::sync::Arc<dyn EnrolmentAuthority>);

#[async_trait::async_trait]
impl ChallengeValidator for Delegated {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn validate(&self, r: &ChallengeRequest<'_>) -> Result<Verdict, JournalError> {
        let der = crate::pki::pem::decode_all(r.csr_pem)
            .ok()
            .and_then(|blocks| blocks.into_iter().next())
            .map(|(_, der)| der)
            .unwrap_or_default();
        Ok(self.0.validate(r, &der).await)
    }
}

/// Why a challenge was not accepted; the SCEP reply says only "badRequest".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    #[error("the request carries no challenge password")]
    Missing,
    #[error("the challenge password is not valid (wrong, expired or already used)")]
    Invalid,
    #[error(
        "the challenge password is not valid (refused by the {validator} validator: {reason})"
    )]
    Refused {
        validator: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Asks `validators` in order whether the request's challenge admits it. Returns the name of
/// the validator that accepted.
pub async fn admit(
    validators: &[Box<dyn ChallengeValidator>],
    request: &ChallengeRequest<'_>,
) -> Result<&'static str, ChallengeError> {
    for v in validators {
        match v.validate(request).await? {
            Verdict::Accepted => return Ok(v.name()),
            Verdict::NotMine => {}
            Verdict::Refused(reason) => {
                return Err(ChallengeError::Refused {
                    validator: v.name(),
                    reason,
                })
            }
        }
    }
    Err(ChallengeError::Invalid)
}

/// The static challenge (`scep.challenge_env` or `challenge_file`), compared in constant time.
pub struct StaticChallenge(pub Zeroizing<String>);

#[async_trait::async_trait]
impl ChallengeValidator for StaticChallenge {
    fn name(&self) -> &'static str {
        "static"
    }
    async fn validate(&self, r: &ChallengeRequest<'_>) -> Result<Verdict, JournalError> {
        Ok(
            if provider::constant_time_eq(self.0.as_bytes(), r.challenge.as_bytes()) {
                Verdict::Accepted
            } else {
                Verdict::NotMine
            },
        )
    }
}

/// One-time challenges: minted here, kept as digests in the journal (so one minted on one
/// instance is good on another, once).
pub struct OneTimeChallenges {
    pub store: Arc<dyn ChallengeStore>,
    pub valid_for: Duration,
}

fn digest_hex(challenge: &str) -> String {
    hex::encode(provider::digest(Digest::Sha256, challenge.as_bytes()))
}

impl OneTimeChallenges {
    /// Mints a challenge. Returns it and its expiry (unix ms).
    pub async fn mint(&self) -> Result<(Zeroizing<String>, i64), JournalError> {
        let bytes = Zeroizing::new(
            provider::random_vec(18).map_err(|e| JournalError::Backend(Box::new(e)))?,
        );
        let challenge = challenge_text(&bytes);
        let expires_at = now_ms().saturating_add(crate::journal::millis(self.valid_for));
        self.store
            .add_challenge(&digest_hex(&challenge), expires_at)
            .await?;
        Ok((challenge, expires_at))
    }
}

/// A challenge's text for its random bytes: URL-safe base64 without padding, `_` written as `.`,
/// so that every character is valid in a PrintableString (18 bytes make 24 characters). Written
/// in place into one buffer zeroized when dropped.
fn challenge_text(bytes: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    // `_` and `.` are one byte each: the swap happens in place, nothing is reallocated.
    while let Some(i) = text.find('_') {
        text.replace_range(i..=i, ".");
    }
    text
}

#[async_trait::async_trait]
impl ChallengeValidator for OneTimeChallenges {
    fn name(&self) -> &'static str {
        "one-time"
    }
    async fn validate(&self, r: &ChallengeRequest<'_>) -> Result<Verdict, JournalError> {
        Ok(
            if self
                .store
                .consume_challenge(&digest_hex(r.challenge))
                .await?
            {
                Verdict::Accepted
            } else {
                Verdict::NotMine
            },
        )
    }
}

/// The administrator's webhook (`scep.challenge_webhook`): certconn POSTs
/// `{transaction_id, challenge, csr_pem, subject}` and accepts on a 2xx answer within five
/// seconds. Anything else — another status, an error, a timeout — refuses: it fails closed.
pub struct Webhook {
    url: String,
    /// The URL as the log shows it ([`Webhook::shown`]).
    shown: String,
}

impl Webhook {
    /// The webhook at `url`, which `scep.challenge_webhook`'s check ([`Webhook::check_url`])
    /// has let through.
    pub fn new(url: String) -> Self {
        let shown = Self::shown(&url);
        Self { url, shown }
    }

    /// `url` without its query and fragment, where a webhook's token often rides: what the log
    /// and a config error show of it.
    pub fn shown(url: &str) -> String {
        url.split(['?', '#']).next().unwrap_or_default().to_owned()
    }

    /// Why `url` cannot be the webhook, if it cannot: it must be `http://host[:port]/…`. Read
    /// loosely, a port out of range (`:99999`) sent the challenge to port 80, and credentials
    /// in the URL were silently not sent.
    pub fn check_url(url: &str) -> Result<(), String> {
        if !url.starts_with("http://") {
            return Err("it must start with http:// (certconn asks it in plain HTTP)".into());
        }
        let uri = url
            .parse::<http::Uri>()
            .map_err(|e| format!("it does not parse: {e}"))?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not sent; let the webhook trust the address it \
                 listens on, or put a token in the path or query"
                    .into(),
            );
        }
        let host = uri.host().unwrap_or_default();
        if host.is_empty() || host == "[]" {
            return Err("it names no host".into());
        }
        crate::sources::outbound::explicit_port(&uri).map(drop)
    }
}

#[async_trait::async_trait]
impl ChallengeValidator for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }
    async fn validate(&self, r: &ChallengeRequest<'_>) -> Result<Verdict, JournalError> {
        use http_body_util::{BodyExt, Full};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let url = self.url.as_str();
        let body = serde_json::json!({
            "transaction_id": r.transaction_id,
            "challenge": r.challenge,
            "csr_pem": r.csr_pem,
            "subject": r.subject,
        })
        .to_string();
        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = match hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(url = %self.shown, "SCEP challenge webhook: {e}");
                return Ok(Verdict::Refused(format!("the webhook request: {e}")));
            }
        };
        Ok(
            match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    if status.is_success() {
                        Verdict::Accepted
                    } else {
                        tracing::info!(url = %self.shown, %status, transaction = r.transaction_id, "SCEP challenge webhook refused the request");
                        Verdict::Refused(format!("it answered {status}"))
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(
                        url = %self.shown,
                        "SCEP challenge webhook unreachable (refusing the request): {e}"
                    );
                    Verdict::Refused("it is unreachable".into())
                }
                Err(_) => {
                    tracing::error!(
                        url = %self.shown,
                        "SCEP challenge webhook did not answer within 5 s (refusing the request)"
                    );
                    Verdict::Refused("it did not answer within 5 s".into())
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::SqliteJournal;

    async fn admit_given(
        validators: &[Box<dyn ChallengeValidator>],
        challenge: &str,
    ) -> Result<&'static str, ChallengeError> {
        let request = ChallengeRequest {
            transaction_id: "t",
            challenge,
            csr_pem: "",
            subject: "CN=x",
        };
        admit(validators, &request).await
    }

    #[test]
    fn a_webhook_url_is_http_host_and_a_real_port_and_its_query_is_not_shown() {
        for fine in [
            "http://127.0.0.1:9000/scep-challenge",
            "http://mdm.example/check?token=s3cret",
            "http://[::1]:9000/x",
            "http://mdm.example",
        ] {
            assert_eq!(Webhook::check_url(fine), Ok(()), "{fine}");
        }
        for (url, why) in [
            ("ftp://mdm.example/x", "must start with http://"),
            ("https://mdm.example/x", "must start with http://"),
            ("http://127.0.0.1:99999/x", "\"99999\" is not a port"),
            ("http://127.0.0.1:0/x", "\"0\" is not a port"),
            ("http://[::1]:70000/x", "\"70000\" is not a port"),
            (
                "http://user:pw@mdm.example/x",
                "credentials in the URL are not sent",
            ),
            ("http:///x", "does not parse"),
            ("http://mdm example/x", "does not parse"),
        ] {
            let e = Webhook::check_url(url).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("pw@"), "{url}: {e}");
        }
        assert_eq!(
            Webhook::shown("http://mdm.example/check?token=s3cret#x"),
            "http://mdm.example/check"
        );
    }

    #[test]
    fn a_challenge_is_printable_base64_written_in_place() {
        // 0xff bytes encode as `_` in URL-safe base64; 0xfb 0xff 0xbf as `-_-_`.
        let text = challenge_text(&[0xff; 18]);
        assert_eq!(&*text, "........................");
        assert_eq!(
            text.capacity(),
            24,
            "the encoder's one allocation, not a copy"
        );
        let text = challenge_text(&[0xfb, 0xff, 0xbf, 0x00, 0x01, 0x02]);
        assert_eq!(&*text, "-.-.AAEC");
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    }

    #[test]
    fn a_request_in_debug_output_shows_neither_its_challenge_nor_its_csr() {
        let request = ChallengeRequest {
            transaction_id: "t-1",
            challenge: "one-time-7f3a",
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nb25lLXRpbWUtN2YzYQ==",
            subject: "CN=device",
        };
        let shown = format!("{request:?}");
        assert!(
            shown.contains("t-1") && shown.contains("CN=device"),
            "{shown}"
        );
        assert!(!shown.contains("one-time-7f3a"), "{shown}");
        assert!(!shown.contains("b25lLXRpbWUtN2YzYQ"), "{shown}");
    }

    /// Refuses everything, counting the questions.
    struct Refuser(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl ChallengeValidator for Refuser {
        fn name(&self) -> &'static str {
            "refuser"
        }
        async fn validate(&self, _: &ChallengeRequest<'_>) -> Result<Verdict, JournalError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Verdict::Refused("no".into()))
        }
    }

    #[tokio::test]
    async fn validators_are_asked_in_order_until_one_decides() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteJournal::open(&dir.path().join("j.sqlite"), "t").unwrap());
        let one_time = OneTimeChallenges {
            store,
            valid_for: Duration::from_secs(60),
        };
        let (minted, _) = one_time.mint().await.unwrap();
        let validators: Vec<Box<dyn ChallengeValidator>> = vec![
            Box::new(StaticChallenge(Zeroizing::new("static-secret".into()))),
            Box::new(one_time),
        ];
        assert_eq!(
            admit_given(&validators, "static-secret").await.unwrap(),
            "static"
        );
        assert_eq!(admit_given(&validators, &minted).await.unwrap(), "one-time");
        assert!(
            matches!(
                admit_given(&validators, &minted).await,
                Err(ChallengeError::Invalid)
            ),
            "a one-time challenge works once"
        );
        let refuser = Refuser(Default::default());
        let mut validators = validators;
        validators.push(Box::new(refuser));
        let e = admit_given(&validators, "wrong").await.unwrap_err();
        assert!(
            matches!(
                e,
                ChallengeError::Refused {
                    validator: "refuser",
                    ..
                }
            ),
            "{e}"
        );
        // The static challenge still short-circuits before the refusing validator.
        assert!(admit_given(&validators, "static-secret").await.is_ok());
    }
}
