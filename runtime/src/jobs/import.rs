//! The import step: deliver a PFX a user already has (S/MIME) to one of their devices.
//!
//! custody decrypts the PFX password (RSA-OAEP, key `key_name`) → the PFX is opened and its MAC
//! checked → its key must match a certificate in it → the routed backend's `check-import`
//! decides (purpose, user, validity, chain) → the password is sealed for the device as CMS
//! EnvelopedData. The PFX itself is delivered unchanged, under its own password.
//!
//! The password and the PFX's private key exist only in zeroizing buffers inside this step; the
//! backend sees certificates only.

use std::sync::Arc;

use base64::Engine as _;
use der::Decode;
use zeroize::Zeroizing;

use super::model::{ImportJob, ImportPurpose, JobRecord, JobResult};
use super::pipeline::{call_through, fail, from_backend_error, routed, Outcome, Routed};
use crate::connector::Services;
use crate::pki::{self, pem};
use crate::plugins::bindings::types as wit;

/// The decrypted password as text: UTF-8, or UTF-16LE as .NET's `Encoding.Unicode` writes it.
fn password_text(bytes: &[u8]) -> Result<Zeroizing<String>, String> {
    let looks_utf16 = bytes.len() >= 2
        && bytes.len().is_multiple_of(2)
        && bytes.iter().skip(1).step_by(2).all(|b| *b == 0);
    if looks_utf16 {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let text = String::from_utf16(&units)
            .map_err(|_| "the decrypted password is not UTF-16LE text".to_owned());
        let mut units = units;
        zeroize::Zeroize::zeroize(&mut units);
        return text.map(Zeroizing::new);
    }
    std::str::from_utf8(bytes)
        .map(|s| Zeroizing::new(s.to_owned()))
        .map_err(|_| "the decrypted password is neither UTF-8 nor UTF-16LE text".to_owned())
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

fn open(services: &Services, job_id: &str, req: &ImportJob) -> Result<Opened, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pfx = b64
        .decode(req.pfx_base64.trim())
        .map_err(|e| format!("the PFX is not base64: {e}"))?;
    let encrypted = b64
        .decode(req.encrypted_password_base64.trim())
        .map_err(|e| format!("the encrypted password is not base64: {e}"))?;
    let key = services
        .keys
        .get(&req.key_name)
        .map_err(|e| format!("custody: {e}"))?;
    let plain = key
        .key
        .decrypt(req.padding_scheme.padding(), &encrypted)
        .map_err(|_| {
            format!(
                "the encrypted password does not decrypt with custody key {:?} and {} (encrypted to another key, or with another padding)",
                req.key_name,
                req.padding_scheme.as_str()
            )
        })?;
    let password = password_text(&plain)?;
    let opened = pki::pkcs12::open(&pfx, &password, &services.config.policy())
        .map_err(|e| format!("job {job_id}: opening the PFX: {e}"))?;
    let (_key, cert) = opened
        .key_and_certificate()
        .map_err(|e| format!("opening the PFX: {e}"))?;
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

/// Runs one import job.
pub async fn run(services: &Arc<Services>, job: &JobRecord, req: &ImportJob) -> Outcome {
    let (profile, mut route) = match routed(services, &req.profile) {
        Ok(r) => r,
        Err(e) => return fail(None, e),
    };
    let bname = profile.backend.get_ref().clone();
    let opened = {
        let (services, job_id, req) = (services.clone(), job.id.clone(), req.clone());
        match tokio::task::spawn_blocking(move || open(&services, &job_id, &req)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return fail(Some(&bname), e),
            Err(e) => {
                return Outcome::Retry {
                    backend: Some(bname),
                    error: format!("opening the PFX: {e}"),
                }
            }
        }
    };
    let check = wit::ImportCheck {
        job_id: job.id.clone(),
        certificate: opened.certificate.clone(),
        others: opened.others.clone(),
        user_principal_name: req.user_principal_name.clone(),
        purpose: purpose_to_wit(req.intended_purpose),
    };
    let check_ref = &check;
    let (bname, version) =
        match call_through(
            &mut route,
            |b| async move { b.check_import(check_ref).await },
        )
        .await
        {
            Routed::Answer { lease, answer } => {
                let name = lease.backend.name.to_string();
                if let Err(e) = answer {
                    return from_backend_error(&name, e);
                }
                (name, lease.backend.version_id())
            }
            Routed::Final(o) | Routed::Exhausted(o) => return o,
        };
    let sealed = pem::certificate_from_pem_or_der(req.recipient_pem.as_bytes())
        .map_err(|e| format!("recipient certificate: {e}"))
        .and_then(|der| {
            pki::cms::seal_for(
                &der,
                opened.password.as_bytes(),
                profile.recipient_key_transport,
            )
            .map_err(|e| format!("sealing the password: {e}"))
        });
    let sealed = match sealed {
        Ok(s) => s,
        Err(e) => return fail(Some(&bname), e),
    };
    let cert = match x509_cert::Certificate::from_der(&opened.certificate) {
        Ok(c) => c,
        Err(e) => return fail(Some(&bname), format!("the PFX certificate: {e}")),
    };
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
        serial: Some(super::model::serial_hex(
            cert.tbs_certificate.serial_number.as_bytes(),
        )),
        pfx_base64: Some(b64.encode(&opened.pfx)),
        sealed_password_base64: Some(b64.encode(sealed)),
        backend_version: Some(version),
        ..Default::default()
    };
    Outcome::Done {
        backend: bname,
        result: Box::new(result),
        password: None,
        issued: None,
        revoked: None,
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
        assert_eq!(&*password_text(&utf16).unwrap(), "s3cr\u{e9}t");
        assert_eq!(&*password_text("pässword".as_bytes()).unwrap(), "pässword");
        assert!(password_text(&[0xff, 0xfe, 0xfd]).is_err());
    }
}
