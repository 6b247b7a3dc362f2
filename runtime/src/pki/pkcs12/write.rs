//! Writing PKCS#12 (PFX) files, in one of two profiles:
//!
//! - `modern`, the default: the key in a pkcs8ShroudedKeyBag and the certificates in an
//!   encryptedData, both under PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), and an HMAC-SHA256 MAC
//!   keyed by the PKCS#12 KDF over SHA-256 — what OpenSSL 3 writes by default, Windows 10+ reads.
//! - `compat`, for older devices (Windows 7/8, old Android, old macOS): both bags under
//!   pbeWithSHAAnd3-KeyTripleDES-CBC and an HMAC-SHA1 MAC. Refused in FIPS mode.

use cms::content_info::{CmsVersion, ContentInfo};
use cms::encrypted_data::EncryptedData;
use cms::enveloped_data::EncryptedContentInfo;
use const_oid::ObjectIdentifier;
use der::asn1::{Any, BmpString, OctetString, SetOfVec};
use der::{Decode, Encode};
use pkcs12::cert_type::CertBag;
use pkcs12::digest_info::DigestInfo;
use pkcs12::mac_data::MacData;
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pbes2Params, Pbkdf2Params, Pkcs12PbeParams};
use pkcs12::pfx::{Pfx, Version};
use pkcs12::safe_bag::SafeBag;
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use zeroize::Zeroizing;

use super::kdf;
use super::oid::{
    AES_256_CBC, CERT_BAG, DATA as ID_DATA, ENCRYPTED_DATA as ID_ENCRYPTED_DATA, FRIENDLY_NAME,
    HMAC_WITH_SHA256, LOCAL_KEY_ID, PBES2, PBE_SHA1_3DES, PBKDF2, SHA1, SHA256, SHROUDED_KEY_BAG,
    X509_CERTIFICATE,
};
use crate::crypto::policy::Cipher;
use crate::crypto::provider::{self, Digest};
use crate::crypto::AlgorithmPolicy;
use crate::pki::PkiError;

/// OpenSSL 3's default; the password is random and long, so this guards a weak one only.
pub const DEFAULT_ITERATIONS: u32 = 2048;

/// How a PFX is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PfxProfile {
    #[default]
    Modern,
    Compat,
}

impl PfxProfile {
    fn encrypt(
        self,
        password: &str,
        iterations: u32,
        plaintext: &[u8],
    ) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), PkiError> {
        match self {
            Self::Modern => pbes2_encrypt(password, iterations, plaintext),
            Self::Compat => pbe_3des_encrypt(password, iterations, plaintext),
        }
    }

    fn mac_digest(self) -> (Digest, ObjectIdentifier) {
        match self {
            Self::Modern => (Digest::Sha256, SHA256),
            Self::Compat => (Digest::Sha1, SHA1),
        }
    }
}

/// What goes into a PFX.
pub struct PfxContents<'a> {
    /// PKCS#8 PrivateKeyInfo DER.
    pub key_pkcs8: &'a [u8],
    /// The certificate for the key, DER.
    pub certificate: &'a [u8],
    /// Issuer certificates, DER, nearest first.
    pub chain: &'a [Vec<u8>],
    /// Shown by Windows and macOS when importing.
    pub friendly_name: Option<&'a str>,
}

/// Writes a PFX protected by `password` in `profile`, which `policy` must allow.
pub fn write(
    contents: &PfxContents<'_>,
    password: &str,
    iterations: u32,
    profile: PfxProfile,
    policy: &AlgorithmPolicy,
) -> Result<Vec<u8>, PkiError> {
    if profile == PfxProfile::Compat {
        policy.check_cipher(Cipher::DesEde3Cbc)?;
    }
    policy.check_pbkdf2_iterations(iterations)?;
    let local_key_id = provider::digest(Digest::Sha256, contents.certificate);
    let bag_attrs = |with_name: bool| -> Result<SetOfVec<Attribute>, PkiError> {
        let mut attrs = SetOfVec::new();
        let id = Any::encode_from(
            &OctetString::new(local_key_id.clone()).map_err(PkiError::der("localKeyId"))?,
        )
        .map_err(PkiError::der("localKeyId"))?;
        attrs
            .insert(Attribute {
                oid: LOCAL_KEY_ID,
                values: SetOfVec::try_from(vec![id]).map_err(PkiError::der("localKeyId"))?,
            })
            .map_err(PkiError::der("attributes"))?;
        if let (true, Some(name)) = (with_name, contents.friendly_name) {
            let bmp = Any::encode_from(
                &BmpString::from_utf8(name).map_err(PkiError::der("friendlyName"))?,
            )
            .map_err(PkiError::der("friendlyName"))?;
            attrs
                .insert(Attribute {
                    oid: FRIENDLY_NAME,
                    values: SetOfVec::try_from(vec![bmp]).map_err(PkiError::der("friendlyName"))?,
                })
                .map_err(PkiError::der("attributes"))?;
        }
        Ok(attrs)
    };

    // Certificates: a SafeContents of certBags, encrypted as one encryptedData.
    let mut cert_bags = Vec::with_capacity(1 + contents.chain.len());
    for (i, cert) in std::iter::once(contents.certificate)
        .chain(contents.chain.iter().map(Vec::as_slice))
        .enumerate()
    {
        let bag = CertBag {
            cert_id: X509_CERTIFICATE,
            cert_value: OctetString::new(cert).map_err(PkiError::der("certBag"))?,
        };
        cert_bags.push(SafeBag {
            bag_id: CERT_BAG,
            bag_value: bag.to_der().map_err(PkiError::der("certBag"))?,
            bag_attributes: if i == 0 { Some(bag_attrs(true)?) } else { None },
        });
    }
    let cert_safe = cert_bags
        .to_der()
        .map_err(PkiError::der("certificate SafeContents"))?;
    let (cert_alg, cert_ct) = profile.encrypt(password, iterations, &cert_safe)?;
    let encrypted_certs = EncryptedData {
        version: CmsVersion::V0,
        enc_content_info: EncryptedContentInfo {
            content_type: ID_DATA,
            content_enc_alg: cert_alg,
            encrypted_content: Some(
                OctetString::new(cert_ct).map_err(PkiError::der("encryptedData"))?,
            ),
        },
        unprotected_attrs: None,
    };

    // The key: a pkcs8ShroudedKeyBag in a plain data SafeContents.
    let (key_alg, key_ct) = profile.encrypt(password, iterations, contents.key_pkcs8)?;
    let shrouded = EncryptedPrivateKeyInfo {
        encryption_algorithm: key_alg,
        encrypted_data: OctetString::new(key_ct).map_err(PkiError::der("shrouded key"))?,
    };
    let key_safe = vec![SafeBag {
        bag_id: SHROUDED_KEY_BAG,
        bag_value: shrouded.to_der().map_err(PkiError::der("shrouded key"))?,
        bag_attributes: Some(bag_attrs(true)?),
    }]
    .to_der()
    .map_err(PkiError::der("key SafeContents"))?;

    let auth_safe: Vec<ContentInfo> = vec![
        ContentInfo {
            content_type: ID_ENCRYPTED_DATA,
            content: Any::encode_from(&encrypted_certs).map_err(PkiError::der("encryptedData"))?,
        },
        ContentInfo {
            content_type: ID_DATA,
            content: Any::encode_from(
                &OctetString::new(key_safe).map_err(PkiError::der("key data"))?,
            )
            .map_err(PkiError::der("key data"))?,
        },
    ];
    let auth_safe_der = auth_safe
        .to_der()
        .map_err(PkiError::der("AuthenticatedSafe"))?;

    let (mac_digest, mac_oid) = profile.mac_digest();
    let mac_len = provider::digest(mac_digest, b"").len();
    let mac_salt = provider::random_vec(16)?;
    let mac_key = kdf::derive(
        mac_digest,
        &kdf::bmp_password(password),
        &mac_salt,
        kdf::Purpose::Mac,
        iterations,
        mac_len,
    );
    let mac = provider::hmac(mac_digest, &mac_key[..], &auth_safe_der);
    let pfx = Pfx {
        version: Version::V3,
        auth_safe: ContentInfo {
            content_type: ID_DATA,
            content: Any::encode_from(
                &OctetString::new(auth_safe_der).map_err(PkiError::der("authSafe"))?,
            )
            .map_err(PkiError::der("authSafe"))?,
        },
        mac_data: Some(MacData {
            mac: DigestInfo {
                algorithm: AlgorithmIdentifierOwned {
                    oid: mac_oid,
                    parameters: Some(Any::null()),
                },
                digest: OctetString::new(mac).map_err(PkiError::der("MAC"))?,
            },
            mac_salt: OctetString::new(mac_salt).map_err(PkiError::der("MAC salt"))?,
            iterations: i32::try_from(iterations)
                .map_err(|_| PkiError::Invalid("iteration count too large".into()))?,
        }),
    };
    pfx.to_der().map_err(PkiError::der("PFX"))
}

/// pbeWithSHAAnd3-KeyTripleDES-CBC (RFC 7292 appendix C): key and IV from the PKCS#12 KDF.
fn pbe_3des_encrypt(
    password: &str,
    iterations: u32,
    plaintext: &[u8],
) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), PkiError> {
    let salt = provider::random_vec(8)?;
    let bmp = kdf::bmp_password(password);
    let key = kdf::derive(Digest::Sha1, &bmp, &salt, kdf::Purpose::Key, iterations, 24);
    let iv = kdf::derive(Digest::Sha1, &bmp, &salt, kdf::Purpose::Iv, iterations, 8);
    let ciphertext = provider::cbc_encrypt(Cipher::DesEde3Cbc, &key, &iv, plaintext)?;
    let params = Pkcs12PbeParams {
        salt: OctetString::new(salt).map_err(PkiError::der("PBE salt"))?,
        iterations: i32::try_from(iterations)
            .map_err(|_| PkiError::Invalid("iteration count too large".into()))?,
    };
    let alg = AlgorithmIdentifierOwned {
        oid: PBE_SHA1_3DES,
        parameters: Some(Any::encode_from(&params).map_err(PkiError::der("PBE parameters"))?),
    };
    Ok((alg, ciphertext))
}

/// PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC; returns the AlgorithmIdentifier and ciphertext.
fn pbes2_encrypt(
    password: &str,
    iterations: u32,
    plaintext: &[u8],
) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), PkiError> {
    let salt = provider::random_vec(16)?;
    let iv = provider::random_vec(16)?;
    let mut key = Zeroizing::new([0u8; 32]);
    provider::pbkdf2(
        provider::Prf::HmacSha256,
        password.as_bytes(),
        &salt,
        iterations,
        &mut key[..],
    )?;
    let ciphertext = provider::cbc_encrypt(Cipher::Aes256Cbc, &key[..], &iv, plaintext)?;
    let kdf = Pbkdf2Params {
        salt: OctetString::new(salt).map_err(PkiError::der("PBKDF2 salt"))?,
        iteration_count: iterations,
        key_length: None,
        prf: AlgorithmIdentifierOwned {
            oid: HMAC_WITH_SHA256,
            parameters: Some(Any::null()),
        },
    };
    let params = Pbes2Params {
        kdf: AlgorithmIdentifierOwned {
            oid: PBKDF2,
            parameters: Some(Any::encode_from(&kdf).map_err(PkiError::der("PBKDF2 parameters"))?),
        },
        encryption: AlgorithmIdentifierOwned {
            oid: AES_256_CBC,
            parameters: Some(
                Any::encode_from(&OctetString::new(iv).map_err(PkiError::der("IV"))?)
                    .map_err(PkiError::der("IV"))?,
            ),
        },
    };
    let alg = AlgorithmIdentifierOwned {
        oid: PBES2,
        parameters: Some(
            Any::from_der(&params.to_der().map_err(PkiError::der("PBES2 parameters"))?)
                .map_err(PkiError::der("PBES2 parameters"))?,
        ),
    };
    Ok((alg, ciphertext))
}

/// A random PFX password: 24 characters of URL-safe base64 (144 bits).
pub fn random_password() -> Result<Zeroizing<String>, PkiError> {
    use base64::Engine;
    let bytes = Zeroizing::new(provider::random_vec(18)?);
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fips_mode_writes_no_file_with_fewer_than_1000_iterations() {
        let contents = PfxContents {
            key_pkcs8: &[],
            certificate: &[],
            chain: &[],
            friendly_name: None,
        };
        let fips = AlgorithmPolicy {
            fips: true,
            ..AlgorithmPolicy::default()
        };
        let e = write(&contents, "pw", 999, PfxProfile::Modern, &fips)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PBKDF2 with 999 iterations"), "{e}");
    }

    #[test]
    fn random_passwords_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(*a, *b);
    }
}
