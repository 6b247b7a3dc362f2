//! Challenge passwords: a static one from the configuration, and one-time ones minted on demand
//! (`certconn scep challenge`, `POST /v1/scep/challenges`). Only a one-time challenge's SHA-256 is
//! journaled; the challenge itself is shown once to whoever minted it.

use base64::Engine;
use zeroize::Zeroizing;

use crate::crypto::provider::{self, Digest};
use crate::jobs::journal::{now_ms, Journal};
use crate::jobs::JournalError;

/// Why a challenge was not accepted; the SCEP reply says only "badRequest".
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    #[error("the request carries no challenge password")]
    Missing,
    #[error("the challenge password is not valid (wrong, expired or already used)")]
    Invalid,
    #[error(transparent)]
    Journal(#[from] JournalError),
}

fn digest_hex(challenge: &str) -> String {
    hex::encode(provider::digest(Digest::Sha256, challenge.as_bytes()))
}

/// Mints a one-time challenge valid for `minutes`. Returns it and its expiry (ms since epoch).
pub fn mint(journal: &Journal, minutes: u32) -> Result<(Zeroizing<String>, i64), JournalError> {
    let bytes = provider::random_vec(18).map_err(|e| JournalError::Corrupt {
        id: "scep challenge".into(),
        reason: e.to_string(),
    })?;
    // URL-safe base64 without padding: 24 characters, all valid in a PrintableString.
    let challenge = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(bytes)
            .replace('_', "."),
    );
    let expires_at = now_ms() + i64::from(minutes) * 60_000;
    journal.add_challenge(&digest_hex(&challenge), expires_at)?;
    Ok((challenge, expires_at))
}

/// Asks the administrator's webhook whether `given` admits this request: a 2xx answer within
/// five seconds accepts; anything else — another status, an error, a timeout — refuses.
pub async fn ask_webhook(
    url: &str,
    transaction_id: &str,
    given: &str,
    csr_pem: &str,
    subject: &str,
) -> bool {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let body = serde_json::json!({
        "transaction_id": transaction_id,
        "challenge": given,
        "csr_pem": csr_pem,
        "subject": subject,
    })
    .to_string();
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = match hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(url, "SCEP challenge webhook: {e}");
            return false;
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            if !status.is_success() {
                tracing::info!(url, %status, transaction = transaction_id, "SCEP challenge webhook refused the request");
            }
            status.is_success()
        }
        Ok(Err(e)) => {
            tracing::error!(
                url,
                "SCEP challenge webhook unreachable (refusing the request): {e}"
            );
            false
        }
        Err(_) => {
            tracing::error!(
                url,
                "SCEP challenge webhook did not answer within 5 s (refusing the request)"
            );
            false
        }
    }
}

/// Checks `given` against the static challenge (constant time) and then the one-time ones.
pub fn check(
    journal: &Journal,
    static_challenge: Option<&str>,
    one_time: bool,
    given: Option<&str>,
) -> Result<(), ChallengeError> {
    let given = given.ok_or(ChallengeError::Missing)?;
    if let Some(s) = static_challenge {
        if provider::constant_time_eq(s.as_bytes(), given.as_bytes()) {
            return Ok(());
        }
    }
    if one_time && journal.consume_challenge(&digest_hex(given))? {
        return Ok(());
    }
    Err(ChallengeError::Invalid)
}
