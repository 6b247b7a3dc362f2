//! The import step: deliver a PFX a user already has (S/MIME) to one of their devices.
//!
//! custody decrypts the PFX password (RSA-OAEP, key `key_name`) → the PFX is opened and its MAC
//! checked → its key must match a certificate in it → the routed backend's `check-import`
//! decides (purpose, user, validity, chain) → the password is sealed for the device as CMS
//! EnvelopedData. The PFX itself is delivered unchanged, under its own password.
//!
//! The password and the PFX's private key exist only in zeroizing buffers inside this step; the
//! backend sees certificates only.

use base64::Engine as _;
use der::Decode;
use zeroize::Zeroizing;

use super::issue::seal_for;
use super::Steps;
use crate::crypto::AlgorithmPolicy;
use crate::custody::StoredKey;
use crate::jobs::model::{ImportJob, ImportPurpose, JobResult};
use crate::jobs::outcome::{Completed, JobError, Outcome};
use crate::jobs::routing::{backend_refusal, call_through, Route};
use crate::journal::JobRecord;
use crate::pki::{self, pem};
use crate::plugins::bindings::types as wit;

/// Why the PFX or its password could not be opened (permanent: the same bytes fail the same
/// way; a new submission with the right password is a new job).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("the PFX is not base64")]
    PfxBase64(#[source] base64::DecodeError),
    #[error("the encrypted password is not base64")]
    PasswordBase64(#[source] base64::DecodeError),
    #[error(
        "the encrypted password does not decrypt with custody key {key:?} and {padding} \
         (encrypted to another key, or with another padding)"
    )]
    Decrypt { key: String, padding: &'static str },
    #[error("the decrypted password is neither UTF-8 nor UTF-16LE text")]
    NotText,
    #[error("opening the PFX")]
    Pfx(#[source] pki::pkcs12::PfxError),
}

/// The decrypted password as text: UTF-8, or UTF-16LE as .NET's `Encoding.Unicode` writes it.
fn password_text(bytes: &[u8]) -> Result<Zeroizing<String>, OpenError> {
    let looks_utf16 = bytes.len() >= 2
        && bytes.len().is_multiple_of(2)
        && bytes.iter().skip(1).step_by(2).all(|b| *b == 0);
    if looks_utf16 {
        let units = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        // Sized for the longest UTF-8 a unit makes (3 bytes), not grown while decoding:
        // `String::from_utf16` sizes for one byte a unit and grows on an accented letter,
        // freeing a copy of the password unzeroized.
        let mut text = Zeroizing::new(String::with_capacity(3 * (bytes.len() / 2)));
        for c in char::decode_utf16(units) {
            text.push(c.map_err(|_| OpenError::NotText)?);
        }
        return Ok(text);
    }
    std::str::from_utf8(bytes)
        .map(|s| Zeroizing::new(s.to_owned()))
        .map_err(|_| OpenError::NotText)
}

fn purpose_to_wit(p: ImportPurpose) -> wit::ImportPurpose {
    match p {
        ImportPurpose::SmimeEncryption => wit::ImportPurpose::SmimeEncryption,
        ImportPurpose::SmimeSigning => wit::ImportPurpose::SmimeSigning,
        ImportPurpose::Unassigned => wit::ImportPurpose::Unassigned,
    }
}

/// What custody and the PFX parser produced, off the async runtime (PBKDF2 is slow on purpose).
struct Opened {
    password: Zeroizing<String>,
    certificate: Vec<u8>,
    others: Vec<Vec<u8>>,
    pfx: Vec<u8>,
}

fn open(key: &StoredKey, req: &ImportJob, policy: &AlgorithmPolicy) -> Result<Opened, OpenError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pfx = b64
        .decode(req.pfx_base64.trim())
        .map_err(OpenError::PfxBase64)?;
    let encrypted = b64
        .decode(req.encrypted_password_base64.trim())
        .map_err(OpenError::PasswordBase64)?;
    let plain = key
        .key
        .decrypt(req.padding_scheme.padding(), &encrypted)
        .map_err(|_| OpenError::Decrypt {
            key: req.key_name.clone(),
            padding: req.padding_scheme.as_str(),
        })?;
    let password = password_text(&plain)?;
    let opened = pki::pkcs12::open(&pfx, &password, policy).map_err(OpenError::Pfx)?;
    let (_key, cert) = opened.key_and_certificate().map_err(OpenError::Pfx)?;
    let certificate = cert.der.clone();
    let others = opened
        .certificates
        .iter()
        .filter(|c| c.der != certificate)
        .map(|c| c.der.clone())
        .collect();
    Ok(Opened {
        password,
        certificate,
        others,
        pfx,
    })
}

impl Steps {
    pub(super) async fn import(&self, job: &JobRecord, req: &ImportJob) -> Outcome {
        let profile = self.profile(&req.profile)?;
        let profile = &*profile;
        let mut route = Route::for_profile(profile, &*self.backends);
        let bname = profile.backend.get_ref().clone();
        let key = self.custody.key(&req.key_name).map_err(|e| {
            JobError::permanent(format!("custody key {:?}", req.key_name))
                .because(e)
                .at(&bname)
        })?;
        let opened = {
            let (req, policy) = (req.clone(), self.settings.policy);
            tokio::task::spawn_blocking(move || open(&key, &req, &policy))
                .await
                .map_err(|e| {
                    JobError::transient("the PFX opening task")
                        .because(e)
                        .at(&bname)
                })?
                .map_err(|e| {
                    JobError::permanent("the imported PFX")
                        .because(e)
                        .at(&bname)
                })?
        };
        let check = wit::ImportCheck {
            job_id: job.id.clone(),
            certificate: opened.certificate.clone(),
            others: opened.others.clone(),
            user_principal_name: req.user_principal_name.clone(),
            purpose: purpose_to_wit(req.intended_purpose),
        };
        let check_ref = &check;
        let answer = call_through(
            &mut route,
            |b| async move { b.check_import(check_ref).await },
        )
        .await?;
        let name = answer.backend_name;
        answer.answer.map_err(|e| backend_refusal(&name, e))?;
        let sealed =
            seal_for(&req.recipient_pem, &opened.password, profile).map_err(|e| e.at(&name))?;
        let serial = x509_cert::Certificate::from_der(&opened.certificate)
            .map(|c| pki::issued::serial_hex(c.tbs_certificate.serial_number.as_bytes()))
            .map_err(|e| {
                JobError::permanent("the PFX certificate")
                    .because(e)
                    .at(&name)
            })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let result = JobResult {
            certificate_pem: Some(pem::encode("CERTIFICATE", &opened.certificate)),
            chain_pem: Some(
                opened
                    .others
                    .iter()
                    .map(|c| pem::encode("CERTIFICATE", c))
                    .collect(),
            ),
            serial: Some(serial),
            pfx_base64: Some(b64.encode(&opened.pfx)),
            sealed_password_base64: Some(b64.encode(sealed)),
            backend_version: Some(answer.backend.version_id()),
            ..Default::default()
        };
        Ok(Completed {
            backend: name,
            result,
            password: None,
            issued: None,
            revoked: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_decode_from_utf8_and_utf16le() {
        assert_eq!(&*password_text(b"s3cret").unwrap(), "s3cret");
        let utf16: Vec<u8> = "s3cr\u{e9}t"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let decoded = password_text(&utf16).unwrap();
        assert_eq!(&*decoded, "s3cr\u{e9}t");
        assert_eq!(decoded.capacity(), 3 * 6, "sized once, never grown");
        assert_eq!(&*password_text("pässword".as_bytes()).unwrap(), "pässword");
        assert!(password_text(&[0xff, 0xfe, 0xfd]).is_err());
    }
}
