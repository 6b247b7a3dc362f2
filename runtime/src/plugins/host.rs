//! The host side of the `custody`, `crypto` and `log` imports.
//!
//! Custody goes through the instance's [`Grants`](crate::custody::Grants); every primitive goes
//! through the algorithm policy and then the provider. Nothing here returns key material.

use std::sync::Arc;

use certconn_x509::SignatureScheme;

use super::bindings::v0_2::certconn::plugin::{crypto, custody, log, types};
use super::state::PluginState;
use crate::crypto::policy::Cipher;
use crate::crypto::provider::{self, Digest, Padding};
use crate::crypto::CryptoError;
use crate::custody::grant::{CURRENT_HANDLE, REQUEST_HANDLE};
use crate::custody::{CustodyError, KeyRole};
use crate::journal::{JournalError, NewSignature, SignatureRecord, SignatureTrail, SignedKind};

/// Longest log message kept from a plugin; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 4096;
/// Most random bytes per call.
const MAX_RANDOM: u32 = 1024;

pub(crate) fn scheme(a: types::SignatureAlgorithm) -> SignatureScheme {
    use types::SignatureAlgorithm as A;
    match a {
        A::EcdsaP256Sha256 => SignatureScheme::EcdsaP256Sha256,
        A::EcdsaP384Sha384 => SignatureScheme::EcdsaP384Sha384,
        A::RsaPkcs1Sha256 => SignatureScheme::RsaPkcs1Sha256,
        A::RsaPkcs1Sha384 => SignatureScheme::RsaPkcs1Sha384,
        A::RsaPkcs1Sha512 => SignatureScheme::RsaPkcs1Sha512,
        A::RsaPkcs1Sha1 => SignatureScheme::RsaPkcs1Sha1,
        A::RsaPssSha256 => SignatureScheme::RsaPssSha256,
    }
}

fn digest(d: types::DigestAlgorithm) -> Digest {
    use types::DigestAlgorithm as D;
    match d {
        D::Sha1 => Digest::Sha1,
        D::Sha256 => Digest::Sha256,
        D::Sha384 => Digest::Sha384,
        D::Sha512 => Digest::Sha512,
    }
}

fn padding(p: types::EncryptionPadding) -> Padding {
    use types::EncryptionPadding as P;
    match p {
        P::RsaOaepSha1 => Padding::OaepSha1,
        P::RsaOaepSha256 => Padding::OaepSha256,
        P::RsaOaepSha384 => Padding::OaepSha384,
        P::RsaOaepSha512 => Padding::OaepSha512,
        P::RsaPkcs1 => Padding::Pkcs1,
    }
}

fn cipher(c: types::SymmetricCipher) -> Cipher {
    use types::SymmetricCipher as C;
    match c {
        C::Aes128Cbc => Cipher::Aes128Cbc,
        C::Aes192Cbc => Cipher::Aes192Cbc,
        C::Aes256Cbc => Cipher::Aes256Cbc,
        C::DesEde3Cbc => Cipher::DesEde3Cbc,
        C::DesCbc => Cipher::DesCbc,
    }
}

fn custody_error(e: CustodyError) -> custody::CustodyError {
    match e {
        CustodyError::NotGranted(h) | CustodyError::NoSuchKey(h) => {
            custody::CustodyError::NotGranted(h)
        }
        CustodyError::Crypto(CryptoError::InvalidInput(m)) => custody::CustodyError::Unsupported(m),
        other => custody::CustodyError::Failed(other.to_string()),
    }
}

fn crypto_error(e: CryptoError) -> crypto::CryptoError {
    match e {
        CryptoError::Refused { .. } => crypto::CryptoError::Refused(e.to_string()),
        CryptoError::InvalidInput(m) => crypto::CryptoError::InvalidInput(m),
        CryptoError::Failed(m) => crypto::CryptoError::Failed(m),
    }
}

impl PluginState {
    fn denied(&self, what: &str, handle: &str) {
        // The call-bound handles are simply unbound when a job has no such key (a first
        // enrolment has no `current`): a backend asking is how it finds out, not a denial.
        if handle == REQUEST_HANDLE || handle == CURRENT_HANDLE {
            return;
        }
        tracing::warn!(backend = %self.backend, job = self.job.as_deref(), handle, "plugin asked custody to {what} with a key it was not granted");
    }
}

impl PluginState {
    /// A signature the issuance policy refused: logged with the plugin version, and the
    /// plugin's error (which fails its job) says why.
    fn refuse(&self, handle: &str, why: &str) -> custody::CustodyError {
        tracing::error!(backend = %self.backend, plugin = %self.plugin.name_version, plugin_sha256 = %self.plugin.sha256, job = self.job.as_deref(), handle, "issuance policy: refused to sign with CA key {handle}: {why}");
        custody::CustodyError::Failed(format!(
            "certconn's issuance policy refused to sign with CA key {handle}: {why}"
        ))
    }

    /// A use the key's role does not allow: logged with the plugin version, and the plugin's
    /// error (which fails its job) says why.
    fn refuse_by_role(&self, handle: &str, operation: &str, why: &str) -> custody::CustodyError {
        tracing::error!(backend = %self.backend, plugin = %self.plugin.name_version, plugin_sha256 = %self.plugin.sha256, job = self.job.as_deref(), handle, "key role: refused to {operation} with key {handle}: {why}");
        custody::CustodyError::Failed(format!(
            "certconn refused to {operation} with key {handle}: {why}"
        ))
    }

    /// What the signature trail records of a permitted certificate, before it is signed, and
    /// where. Without a trail (tools that run a plugin without a journal) nothing is recorded.
    fn trail_entry(
        &self,
        handle: &str,
        message: &[u8],
        permitted: super::issuance::Permitted,
    ) -> Option<(Arc<dyn SignatureTrail>, NewSignature)> {
        let trail = self.grants.signature_trail()?;
        let entry = NewSignature {
            key: handle.to_owned(),
            kind: SignedKind::Certificate,
            job: self.job.as_deref().map(str::to_owned),
            backend: self.backend.to_string(),
            signer: self.plugin.name_version.clone(),
            signer_sha256: self.plugin.sha256.clone(),
            tbs_sha256: hex::encode(provider::digest(Digest::Sha256, message)),
            issuer: permitted.issuer,
            serial: permitted.serial,
            subject: permitted.subject,
        };
        Some((trail, entry))
    }

    /// The trail's answer: recorded, or a refusal (a serial its issuer already used), or a
    /// failure to record — and then nothing is signed, and the call's answer is the journal's
    /// failure whatever the plugin makes of it (`journal_failure`).
    fn recorded(
        &mut self,
        handle: &str,
        recorded: Result<SignatureRecord, JournalError>,
    ) -> Result<(), custody::CustodyError> {
        match recorded {
            Ok(r) => {
                tracing::info!(backend = %self.backend, job = self.job.as_deref(), seq = r.seq, hash = %r.hash, serial = %r.signature.serial, "signature trail: CA key {handle} signs a certificate");
                self.journal_failure = None;
                Ok(())
            }
            Err(e @ JournalError::SerialReused { .. }) => Err(self.refuse(handle, &e.to_string())),
            Err(e) => {
                let why = format!(
                    "the signature could not be recorded in the signature trail, so nothing was \
                     signed: {}",
                    crate::report::chain(&e)
                );
                self.journal_failure = Some(why.clone());
                Err(custody::CustodyError::Failed(why))
            }
        }
    }
}

impl types::Host for PluginState {}

impl custody::Host for PluginState {
    async fn sign(
        &mut self,
        handle: String,
        algorithm: types::SignatureAlgorithm,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, custody::CustodyError> {
        let scheme = scheme(algorithm);
        self.policy
            .check_signing(scheme)
            .map_err(|e| custody::CustodyError::Failed(e.to_string()))?;
        let key = self
            .grants
            .key(&handle)
            .inspect_err(|_| self.denied("sign", &handle))
            .map_err(custody_error)?;
        let role = self.grants.role(&handle);
        if let Some(why) = role.refuses_signing() {
            return Err(self.refuse_by_role(&handle, "sign", why));
        }
        let ca = key.ca_certificate();
        if ca.is_none() && role == KeyRole::Ca {
            return Err(self.refuse(
                &handle,
                "its role is ca, but custody holds no CA certificate for it to check a certificate against",
            ));
        }
        if let Some(ca) = ca {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let permitted = super::issuance::check(self.grants.scope(), ca, &message, now)
                .map_err(|why| self.refuse(&handle, &why))?;
            if let Some((trail, entry)) = self.trail_entry(&handle, &message, permitted) {
                // Only owned values cross the await (the store's state is not Sync).
                let recorded = trail.append_signature(&entry).await;
                self.recorded(&handle, recorded)?;
            }
        }
        key.key
            .sign(scheme, &message)
            .map_err(|e| custody_error(e.into()))
    }

    fn decrypt(
        &mut self,
        handle: String,
        pad: types::EncryptionPadding,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, custody::CustodyError> {
        let key = self
            .grants
            .key(&handle)
            .inspect_err(|_| self.denied("decrypt", &handle))
            .map_err(custody_error)?;
        if let Some(why) = self.grants.role(&handle).refuses_decryption() {
            return Err(self.refuse_by_role(&handle, "decrypt", why));
        }
        key.key
            .decrypt(padding(pad), &ciphertext)
            .map(|plain| plain.to_vec())
            .map_err(|e| custody_error(e.into()))
    }

    fn public_key(&mut self, handle: String) -> Result<Vec<u8>, custody::CustodyError> {
        let key = self
            .grants
            .key(&handle)
            .inspect_err(|_| self.denied("read the public key", &handle))
            .map_err(custody_error)?;
        Ok(key.key.public_key_der().to_vec())
    }

    fn certificate_chain(&mut self, handle: String) -> Result<Vec<Vec<u8>>, custody::CustodyError> {
        let key = self
            .grants
            .key(&handle)
            .inspect_err(|_| self.denied("read the chain", &handle))
            .map_err(custody_error)?;
        Ok(key.chain.clone())
    }
}

impl crypto::Host for PluginState {
    fn digest(
        &mut self,
        algorithm: types::DigestAlgorithm,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        Ok(provider::digest(digest(algorithm), &data))
    }

    fn verify(
        &mut self,
        public_key: Vec<u8>,
        algorithm: types::SignatureAlgorithm,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, crypto::CryptoError> {
        let scheme = scheme(algorithm);
        self.policy
            .check_verification(scheme)
            .map_err(crypto_error)?;
        if self
            .grants
            .is_host_signed_csr(&public_key, scheme, &message, &signature)
        {
            return Ok(true);
        }
        provider::verify(&public_key, scheme, &message, &signature).map_err(crypto_error)
    }

    fn public_key_encrypt(
        &mut self,
        public_key: Vec<u8>,
        pad: types::EncryptionPadding,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        provider::rsa_encrypt(&public_key, padding(pad), &plaintext).map_err(crypto_error)
    }

    fn symmetric_encrypt(
        &mut self,
        c: types::SymmetricCipher,
        key: Vec<u8>,
        iv: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        let c = cipher(c);
        self.policy.check_cipher(c).map_err(crypto_error)?;
        provider::cbc_encrypt(c, &key, &iv, &plaintext).map_err(crypto_error)
    }

    fn symmetric_decrypt(
        &mut self,
        c: types::SymmetricCipher,
        key: Vec<u8>,
        iv: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        let c = cipher(c);
        self.policy.check_cipher(c).map_err(crypto_error)?;
        provider::cbc_decrypt(c, &key, &iv, &ciphertext).map_err(crypto_error)
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        // A failing DRBG is a host fault; an empty answer makes the plugin fail its job visibly.
        provider::random_vec(len.min(MAX_RANDOM) as usize).unwrap_or_default()
    }

    fn hmac(
        &mut self,
        algorithm: types::DigestAlgorithm,
        key: Vec<u8>,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        Ok(provider::hmac(digest(algorithm), &key, &data))
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        if self.log_lines_left == 0 {
            return;
        }
        self.log_lines_left -= 1;
        // Control characters would let a plugin forge log lines in the human format.
        let mut message: String = message
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect();
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let backend = &*self.backend;
        let job = self.job.as_deref();
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "certconn::plugin", backend, job, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "certconn::plugin", backend, job, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "certconn::plugin", backend, job, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "certconn::plugin", backend, job, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "certconn::plugin", backend, job, "{message}")
            }
        }
        if self.log_lines_left == 0 {
            tracing::warn!(
                backend,
                job,
                "plugin log limit reached; further lines from this call are dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use certconn_x509::{SignatureScheme, SignedParts};
    use x509_cert::name::Name;

    use crate::custody::grant::{CallKeys, Grants, REQUEST_HANDLE};
    use crate::custody::{KeyAlgorithm, PrivateKey, StoredKey};

    fn request_key() -> Arc<StoredKey> {
        Arc::new(StoredKey::new(
            REQUEST_HANDLE.into(),
            PrivateKey::generate(KeyAlgorithm::EcP256).unwrap(),
            Vec::new(),
        ))
    }

    fn grants_for(key: &Arc<StoredKey>, csr: Option<&[u8]>) -> Grants {
        Grants::none().with_call_keys(CallKeys {
            host_signed_csr: csr.map(Arc::from),
            ..CallKeys::request(Some(key.clone()))
        })
    }

    /// The crypto host skips verifying only the signature certconn made on this call's CSR,
    /// byte for byte; a changed byte anywhere, another key or scheme, or a CSR the device
    /// made is verified as before.
    #[test]
    fn only_the_csr_certconn_signed_in_this_call_is_vouched_for() {
        let key = request_key();
        let subject = Name::from_str("CN=device").unwrap();
        let csr = crate::pki::csr::build(&key.key, &subject, &[]).unwrap();
        let parts = SignedParts::split(&csr).unwrap();
        let spki = key.key.public_key_der().to_vec();
        let scheme = SignatureScheme::EcdsaP256Sha256;
        let grants = grants_for(&key, Some(&csr));
        assert!(grants.is_host_signed_csr(&spki, scheme, parts.tbs, parts.signature));

        let mut signature = parts.signature.to_vec();
        *signature.last_mut().unwrap() ^= 1;
        assert!(!grants.is_host_signed_csr(&spki, scheme, parts.tbs, &signature));
        let mut tbs = parts.tbs.to_vec();
        *tbs.last_mut().unwrap() ^= 1;
        assert!(!grants.is_host_signed_csr(&spki, scheme, &tbs, parts.signature));
        let other = request_key();
        let other_spki = other.key.public_key_der().to_vec();
        assert!(!grants.is_host_signed_csr(&other_spki, scheme, parts.tbs, parts.signature));
        let sha384 = SignatureScheme::EcdsaP384Sha384;
        assert!(!grants.is_host_signed_csr(&spki, sha384, parts.tbs, parts.signature));
        // The device's own CSR (no host-signed one), or the CSR under another request key.
        assert!(!grants_for(&key, None).is_host_signed_csr(
            &spki,
            scheme,
            parts.tbs,
            parts.signature
        ));
        assert!(!grants_for(&other, Some(&csr)).is_host_signed_csr(
            &spki,
            scheme,
            parts.tbs,
            parts.signature
        ));
    }
}
