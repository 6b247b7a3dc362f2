//! The algorithm policy: which algorithms may be used, decided in one place.
//!
//! With `fips = true`, everything outside the FIPS 140-3 approved set is refused with an error that
//! names the algorithm (3DES, DES, SHA-1 signatures, RSA below 2048 bits). Single DES is refused
//! in any mode unless an administrator allows it explicitly, for legacy SCEP servers.

use certconn_x509::SignatureScheme;

use super::CryptoError;

/// Symmetric ciphers the host implements (CBC with PKCS#7 padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
    DesEde3Cbc,
    DesCbc,
    /// RC2-CBC: read-only, for legacy PKCS#12 files; not offered to plugins.
    Rc2Cbc,
}

impl Cipher {
    /// Name for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Cbc => "AES-128-CBC",
            Self::Aes192Cbc => "AES-192-CBC",
            Self::Aes256Cbc => "AES-256-CBC",
            Self::DesEde3Cbc => "3DES-CBC",
            Self::DesCbc => "DES-CBC",
            Self::Rc2Cbc => "RC2-CBC",
        }
    }
}

/// What the administrator allows: the `[crypto]` section of the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmPolicy {
    /// Only FIPS-approved algorithms (needs the `fips` build; start-up refuses otherwise).
    pub fips: bool,
    /// Permit single DES for legacy SCEP peers (never in FIPS mode).
    pub allow_single_des: bool,
}

impl AlgorithmPolicy {
    fn refuse(&self, algorithm: &str, reason: &str) -> CryptoError {
        CryptoError::Refused {
            algorithm: algorithm.into(),
            reason: reason.into(),
        }
    }

    /// May this scheme produce a new signature?
    pub fn check_signing(&self, scheme: SignatureScheme) -> Result<(), CryptoError> {
        if self.fips && scheme == SignatureScheme::RsaPkcs1Sha1 {
            return Err(self.refuse(scheme.name(), "SHA-1 signatures are not FIPS-approved"));
        }
        Ok(())
    }

    /// May a signature of this scheme be verified? (SHA-1 verification is legacy-allowed
    /// outside FIPS mode, for old SCEP peers.)
    pub fn check_verification(&self, scheme: SignatureScheme) -> Result<(), CryptoError> {
        self.check_signing(scheme)
    }

    /// May this cipher be used?
    pub fn check_cipher(&self, cipher: Cipher) -> Result<(), CryptoError> {
        match cipher {
            Cipher::DesCbc if self.fips => Err(self.refuse(cipher.name(), "not FIPS-approved")),
            Cipher::DesCbc if !self.allow_single_des => Err(self.refuse(
                cipher.name(),
                "single DES is broken; set crypto.allow_single_des = true only for a legacy peer",
            )),
            Cipher::DesEde3Cbc if self.fips => {
                Err(self.refuse(cipher.name(), "not FIPS-approved for encryption"))
            }
            Cipher::Rc2Cbc if self.fips => Err(self.refuse(cipher.name(), "not FIPS-approved")),
            _ => Ok(()),
        }
    }

    /// May NTLM (MD4 and HMAC-MD5 over the password) authenticate to a Windows service?
    pub fn check_ntlm(&self) -> Result<(), CryptoError> {
        if self.fips {
            return Err(self.refuse(
                "NTLM (MD4, HMAC-MD5)",
                "not FIPS-approved; use Basic authentication over https instead",
            ));
        }
        Ok(())
    }

    /// The fewest PBKDF2 iterations FIPS mode takes: NIST SP 800-132's figure, below which
    /// AWS-LC's FIPS module counts a derivation as a non-approved use.
    pub const FIPS_MIN_PBKDF2_ITERATIONS: u32 = 1000;

    /// May a password-based key be derived with this many PBKDF2 iterations?
    pub fn check_pbkdf2_iterations(&self, iterations: u32) -> Result<(), CryptoError> {
        if self.fips && iterations < Self::FIPS_MIN_PBKDF2_ITERATIONS {
            return Err(self.refuse(
                &format!("PBKDF2 with {iterations} iterations"),
                "FIPS mode needs at least 1000 (NIST SP 800-132)",
            ));
        }
        Ok(())
    }

    /// May an RSA key of this size be used?
    pub fn check_rsa_bits(&self, bits: usize) -> Result<(), CryptoError> {
        if self.fips && bits < 2048 {
            return Err(self.refuse(
                &format!("RSA-{bits}"),
                "RSA keys below 2048 bits are not FIPS-approved",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fips_refuses_legacy_and_names_it() {
        let p = AlgorithmPolicy {
            fips: true,
            allow_single_des: true,
        };
        let e = p.check_cipher(Cipher::DesEde3Cbc).unwrap_err().to_string();
        assert!(e.contains("3DES"), "{e}");
        assert!(p
            .check_signing(SignatureScheme::RsaPkcs1Sha1)
            .unwrap_err()
            .to_string()
            .contains("sha1"));
        assert!(p
            .check_rsa_bits(1024)
            .unwrap_err()
            .to_string()
            .contains("RSA-1024"));
        assert!(p.check_cipher(Cipher::Aes256Cbc).is_ok());
        let e = p.check_pbkdf2_iterations(999).unwrap_err().to_string();
        assert!(
            e.contains("PBKDF2 with 999 iterations") && e.contains("at least 1000"),
            "{e}"
        );
        assert!(p.check_pbkdf2_iterations(1000).is_ok());
        assert!(AlgorithmPolicy::default()
            .check_pbkdf2_iterations(1)
            .is_ok());
    }

    #[test]
    fn single_des_needs_explicit_permission() {
        assert!(AlgorithmPolicy::default()
            .check_cipher(Cipher::DesCbc)
            .is_err());
        let p = AlgorithmPolicy {
            fips: false,
            allow_single_des: true,
        };
        assert!(p.check_cipher(Cipher::DesCbc).is_ok());
        assert!(AlgorithmPolicy::default()
            .check_cipher(Cipher::DesEde3Cbc)
            .is_ok());
    }
}
