//! Intune's SCEP challenge validation (`ScepRequestValidationFEService`): `validateRequest`
//! before anything is issued, `successNotification` before the certificate is delivered (a
//! refusal there means the device does not get it), `failureNotification` for a request Intune
//! admitted that was not issued.

use std::sync::Arc;

use base64::Engine;
use serde_json::json;

use super::Intune;
use crate::sources::scep::challenge::{ChallengeRequest, EnrolmentAuthority, Verdict};

const SERVICE: &str = "ScepRequestValidationFEService";
const API_VERSION: &str = "2018-02-20";

/// HRESULT `E_FAIL`, sent with a failure Intune is told of (Microsoft's samples send
/// `0x8000FFFF`, E_UNEXPECTED, for the same purpose).
const E_FAIL: i64 = 0x8000_4005;

/// The longest errorDescription Intune takes.
const MAX_DESCRIPTION: usize = 255;

/// certconn's SCEP server asking Intune.
pub struct IntuneScep(pub Arc<Intune>);

impl IntuneScep {
    /// Calls `action` and requires `{"code": "Success"}`; anything else is the reason.
    async fn action(&self, action: &str, body: serde_json::Value) -> Result<(), String> {
        let answer = self
            .0
            .post(
                SERVICE,
                &format!("ScepActions/{action}"),
                API_VERSION,
                &body,
            )
            .await
            .map_err(|e| crate::report::chain(&e))?;
        match answer["code"].as_str() {
            Some("Success") => Ok(()),
            Some(code) => Err(format!(
                "Intune answered {code}{}",
                answer["errorDescription"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )),
            None => Err(format!("Intune's answer has no code: {answer}")),
        }
    }
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[async_trait::async_trait]
impl EnrolmentAuthority for IntuneScep {
    fn name(&self) -> &'static str {
        "intune"
    }

    async fn validate(&self, r: &ChallengeRequest<'_>, csr_der: &[u8]) -> Verdict {
        let body = json!({
            "request": {
                "transactionId": r.transaction_id,
                "certificateRequest": b64(csr_der),
                "callerInfo": self.0.caller_info(),
            }
        });
        match self.action("validateRequest", body).await {
            Ok(()) => {
                tracing::info!(
                    event_id = 4602,
                    transaction = r.transaction_id,
                    "Intune validated the SCEP request"
                );
                Verdict::Accepted
            }
            Err(why) => {
                tracing::warn!(event_id = 4603, transaction = r.transaction_id, reason = %why, "Intune did not validate the SCEP request: nothing is issued");
                Verdict::Refused(why)
            }
        }
    }

    async fn issued(
        &self,
        transaction_id: &str,
        csr_der: &[u8],
        certificate_der: &[u8],
    ) -> Result<(), String> {
        let cert = <x509_cert::Certificate as der::Decode>::from_der(certificate_der)
            .map_err(|e| format!("the issued certificate: {e}"))?;
        let (_, not_after) =
            certconn_x509::validity_of(certificate_der).map_err(|e| e.to_string())?;
        let thumbprint = hex::encode_upper(crate::crypto::provider::digest(
            crate::crypto::provider::Digest::Sha1,
            certificate_der,
        ));
        let serial = hex::encode_upper(cert.tbs_certificate.serial_number.as_bytes());
        let issuer = crate::pki::dn::format(&cert.tbs_certificate.issuer);
        let expiry = crate::report::rfc3339_ms(
            i64::try_from(not_after)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        );
        let body = json!({
            "notification": {
                "transactionId": transaction_id,
                "certificateRequest": b64(csr_der),
                "certificateThumbprint": thumbprint,
                "certificateSerialNumber": serial,
                "certificateExpirationDateUtc": expiry,
                "issuingCertificateAuthority": issuer,
                "callerInfo": self.0.caller_info(),
                "caConfiguration": "",
                "certificateAuthority": issuer,
            }
        });
        self.action("successNotification", body).await?;
        tracing::info!(event_id = 4604, transaction = transaction_id, serial = %serial, "Intune took the success notification; the certificate is delivered");
        Ok(())
    }

    async fn not_issued(&self, transaction_id: &str, csr_der: &[u8], reason: &str) {
        let description: String = reason.chars().take(MAX_DESCRIPTION).collect();
        let body = json!({
            "notification": {
                "transactionId": transaction_id,
                "certificateRequest": b64(csr_der),
                "hResult": E_FAIL,
                "errorDescription": description,
                "callerInfo": self.0.caller_info(),
            }
        });
        match self.action("failureNotification", body).await {
            Ok(()) => tracing::info!(
                event_id = 4605,
                transaction = transaction_id,
                "told Intune the SCEP request was not issued"
            ),
            Err(why) => {
                tracing::warn!(event_id = 4606, transaction = transaction_id, reason = %why, "could not tell Intune the SCEP request was not issued")
            }
        }
    }
}
