//! Opening PKCS#12 files as real products make them: Windows (AES and 3DES), macOS (RC2-40 +
//! 3DES, one MAC iteration), Firefox (BER, 600 000 iterations), OpenSSL legacy and modern, pyca.
//!
//! Untrusted input: the size, the nesting, the number of bags and every iteration count are
//! bounded before any work is done, so one crafted file cannot stall the connector. Every legacy
//! algorithm passes the [`AlgorithmPolicy`] first, so FIPS mode refuses it by name.

use cms::content_info::ContentInfo;
use cms::encrypted_data::EncryptedData;
use der::asn1::{BmpString, OctetString};
use der::{Decode, Encode, Sequence};
use pkcs12::cert_type::CertBag;
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pbes2Params, Pkcs12PbeParams};
use pkcs12::pfx::Pfx;
use pkcs12::safe_bag::SafeBag;
use spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

use super::kdf::{self, Purpose};
use super::oid;
use crate::crypto::policy::Cipher;
use crate::crypto::provider::{self, Digest, Prf};
use crate::crypto::{AlgorithmPolicy, CryptoError};
use crate::custody::PrivateKey;
use certconn_x509::ber;

/// Largest PFX accepted.
pub const MAX_SIZE: usize = 1 << 20;
/// Highest iteration count accepted in any KDF (Firefox writes 600 000).
pub const MAX_ITERATIONS: u32 = 2_000_000;
/// Most bags accepted in one file.
pub const MAX_BAGS: usize = 64;

/// Why a PFX could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PfxError {
    #[error("the PFX is {0} bytes; the limit is {MAX_SIZE}")]
    TooLarge(usize),
    #[error("the PFX is malformed: {0}")]
    Malformed(String),
    #[error("wrong password, or the PFX is corrupt (its MAC does not verify)")]
    WrongPassword,
    #[error("the PFX asks for {iterations} iterations ({what}); the limit is {limit}")]
    TooManyIterations {
        what: &'static str,
        iterations: u64,
        limit: u32,
    },
    #[error("the PFX uses {0}, which certconn does not support")]
    Unsupported(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn malformed(what: &str) -> impl FnOnce(der::Error) -> PfxError + '_ {
    move |e| PfxError::Malformed(format!("{what}: {e}"))
}

/// A private key found in a PFX.
pub struct PfxKey {
    /// PKCS#8 PrivateKeyInfo; zeroized on drop.
    pub pkcs8: Zeroizing<Vec<u8>>,
    pub local_key_id: Option<Vec<u8>>,
}

impl std::fmt::Debug for PfxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PfxKey")
            .field("local_key_id", &self.local_key_id.as_ref().map(hex::encode))
            .finish_non_exhaustive()
    }
}

/// A certificate found in a PFX.
#[derive(Debug, Clone)]
pub struct PfxCertificate {
    pub der: Vec<u8>,
    pub local_key_id: Option<Vec<u8>>,
    pub friendly_name: Option<String>,
}

/// What a PFX held, and how it was protected.
#[derive(Debug, Default)]
pub struct OpenedPfx {
    pub keys: Vec<PfxKey>,
    pub certificates: Vec<PfxCertificate>,
    /// The protections met, e.g. "MAC HMAC-SHA1 (1 iteration)", "pbeWithSHAAnd40BitRC2-CBC".
    pub protections: Vec<String>,
}

impl OpenedPfx {
    /// The first key together with the certificate whose public key is that key's.
    pub fn key_and_certificate(&self) -> Result<(PrivateKey, &PfxCertificate), PfxError> {
        let key = self
            .keys
            .first()
            .ok_or_else(|| PfxError::Malformed("it holds no private key".into()))?;
        let private = PrivateKey::from_pkcs8(key.pkcs8.clone())?;
        let cert = self
            .certificates
            .iter()
            .find(|c| {
                x509_cert::Certificate::from_der(&c.der)
                    .ok()
                    .and_then(|cert| cert.tbs_certificate.subject_public_key_info.to_der().ok())
                    .is_some_and(|spki| spki == private.public_key_der())
            })
            .ok_or_else(|| {
                PfxError::Malformed("no certificate in it matches its private key".into())
            })?;
        Ok((private, cert))
    }
}

/// PBKDF2 parameters with the RFC 8018 DEFAULT for the PRF (hmacWithSHA1), which the `pkcs12`
/// crate's type does not allow to be absent.
#[derive(Sequence)]
struct Pbkdf2Params {
    salt: OctetString,
    iteration_count: u32,
    key_length: Option<u16>,
    prf: Option<AlgorithmIdentifierOwned>,
}

fn check_iterations(what: &'static str, iterations: u64, limit: u32) -> Result<u32, PfxError> {
    match u32::try_from(iterations) {
        Ok(n) if (1..=limit).contains(&n) => Ok(n),
        _ => Err(PfxError::TooManyIterations {
            what,
            iterations,
            limit,
        }),
    }
}

/// Opens `bytes` with `password` under `policy`.
pub fn open(bytes: &[u8], password: &str, policy: &AlgorithmPolicy) -> Result<OpenedPfx, PfxError> {
    open_limited(bytes, password, policy, MAX_ITERATIONS)
}

/// [`open`] with a lower ceiling than [`MAX_ITERATIONS`] on every key derivation: what the
/// fuzz target uses, so that one input costs microseconds, not a second of PBKDF2.
pub fn open_limited(
    bytes: &[u8],
    password: &str,
    policy: &AlgorithmPolicy,
    max_iterations: u32,
) -> Result<OpenedPfx, PfxError> {
    if bytes.len() > MAX_SIZE {
        return Err(PfxError::TooLarge(bytes.len()));
    }
    let der_bytes = ber::to_der(bytes).map_err(|e| PfxError::Malformed(e.to_string()))?;
    let pfx = Pfx::from_der(&der_bytes).map_err(malformed("PFX"))?;
    if pfx.auth_safe.content_type != oid::DATA {
        return Err(PfxError::Unsupported(format!(
            "public-key integrity mode ({})",
            pfx.auth_safe.content_type
        )));
    }
    let auth_safe = pfx
        .auth_safe
        .content
        .decode_as::<OctetString>()
        .map_err(malformed("authSafe"))?;
    let auth_safe = auth_safe.as_bytes();
    let mut opened = OpenedPfx::default();

    // The password as each KDF takes it. An empty password is tried both as an empty BMPString
    // (two NUL bytes) and as no bytes at all, as OpenSSL does.
    let bmp = kdf::bmp_password(password);
    let mut kdf_password: Zeroizing<Vec<u8>> = bmp.clone();
    if let Some(mac) = &pfx.mac_data {
        let digest = match mac.mac.algorithm.oid {
            oid::SHA1 => Digest::Sha1,
            oid::SHA256 => Digest::Sha256,
            oid::SHA384 => Digest::Sha384,
            oid::SHA512 => Digest::Sha512,
            other => return Err(PfxError::Unsupported(format!("MAC digest {other}"))),
        };
        let iterations = check_iterations(
            "MAC",
            u64::try_from(mac.iterations).unwrap_or(u64::MAX),
            max_iterations,
        )?;
        let len = provider::digest(digest, b"").len();
        let candidates: Vec<Zeroizing<Vec<u8>>> = if password.is_empty() {
            vec![bmp.clone(), Zeroizing::new(Vec::new())]
        } else {
            vec![bmp.clone()]
        };
        let matched = candidates.into_iter().find(|pw| {
            let key = kdf::derive(
                digest,
                pw,
                mac.mac_salt.as_bytes(),
                Purpose::Mac,
                iterations,
                len,
            );
            provider::constant_time_eq(
                &provider::hmac(digest, &key, auth_safe),
                mac.mac.digest.as_bytes(),
            )
        });
        kdf_password = matched.ok_or(PfxError::WrongPassword)?;
        opened.protections.push(format!(
            "MAC HMAC-{} ({iterations} iterations)",
            digest.name()
        ));
    } else {
        opened.protections.push("no MAC".into());
    }

    let secrets = Secrets {
        utf8: password.as_bytes(),
        bmp: &kdf_password,
        policy,
        max_iterations,
    };
    // The MAC covers the content octets as sent; parsing needs them as DER (Firefox sends BER).
    let auth_safe_der = ber::to_der(auth_safe)
        .map_err(|e| PfxError::Malformed(format!("AuthenticatedSafe: {e}")))?;
    let contents: Vec<ContentInfo> =
        Vec::<ContentInfo>::from_der(&auth_safe_der).map_err(malformed("AuthenticatedSafe"))?;
    let mut bags = 0usize;
    for ci in contents {
        let safe = match ci.content_type {
            oid::DATA => Zeroizing::new(
                ci.content
                    .decode_as::<OctetString>()
                    .map_err(malformed("data"))?
                    .as_bytes()
                    .to_vec(),
            ),
            oid::ENCRYPTED_DATA => {
                let ed = ci
                    .content
                    .decode_as::<EncryptedData>()
                    .map_err(malformed("encryptedData"))?;
                let ct = ed
                    .enc_content_info
                    .encrypted_content
                    .as_ref()
                    .ok_or_else(|| PfxError::Malformed("encryptedData without content".into()))?;
                secrets.decrypt(
                    &ed.enc_content_info.content_enc_alg,
                    ct.as_bytes(),
                    &mut opened.protections,
                )?
            }
            other => {
                return Err(PfxError::Unsupported(format!(
                    "content type {other} (envelopedData PFX)"
                )))
            }
        };
        read_safe_contents(&safe, &secrets, &mut opened, &mut bags, 0)?;
    }
    Ok(opened)
}

struct Secrets<'a> {
    utf8: &'a [u8],
    bmp: &'a [u8],
    policy: &'a AlgorithmPolicy,
    max_iterations: u32,
}

impl Secrets<'_> {
    /// Decrypts with a PKCS#12 PBE or PBES2 algorithm; records its name.
    fn decrypt(
        &self,
        alg: &AlgorithmIdentifierOwned,
        ct: &[u8],
        seen: &mut Vec<String>,
    ) -> Result<Zeroizing<Vec<u8>>, PfxError> {
        let params = alg
            .parameters
            .as_ref()
            .ok_or_else(|| PfxError::Malformed(format!("{} without parameters", alg.oid)))?;
        let legacy =
            |name: &str, cipher: Cipher, key_len: usize| -> Result<Zeroizing<Vec<u8>>, PfxError> {
                self.policy.check_cipher(cipher)?;
                let p = params
                    .decode_as::<Pkcs12PbeParams>()
                    .map_err(malformed(name))?;
                let it = check_iterations(
                    "PBE",
                    u64::try_from(p.iterations).unwrap_or(u64::MAX),
                    self.max_iterations,
                )?;
                let key = kdf::derive(
                    Digest::Sha1,
                    self.bmp,
                    p.salt.as_bytes(),
                    Purpose::Key,
                    it,
                    key_len,
                );
                let iv = kdf::derive(
                    Digest::Sha1,
                    self.bmp,
                    p.salt.as_bytes(),
                    Purpose::Iv,
                    it,
                    8,
                );
                let plain = match cipher {
                    Cipher::Rc2Cbc => provider::rc2_cbc_decrypt(&key, key_len * 8, &iv, ct),
                    other => provider::cbc_decrypt(other, &key, &iv, ct),
                }
                .map_err(|_| PfxError::WrongPassword)?;
                Ok(Zeroizing::new(plain))
            };
        let (name, plain) = match alg.oid {
            oid::PBE_SHA1_3DES => (
                "pbeWithSHAAnd3-KeyTripleDES-CBC",
                legacy("3DES PBE", Cipher::DesEde3Cbc, 24)?,
            ),
            oid::PBE_SHA1_RC2_128 => (
                "pbeWithSHAAnd128BitRC2-CBC",
                legacy("RC2 PBE", Cipher::Rc2Cbc, 16)?,
            ),
            oid::PBE_SHA1_RC2_40 => (
                "pbeWithSHAAnd40BitRC2-CBC",
                legacy("RC2 PBE", Cipher::Rc2Cbc, 5)?,
            ),
            oid::PBE_SHA1_2DES => {
                return Err(PfxError::Unsupported(
                    "pbeWithSHAAnd2-KeyTripleDES-CBC".into(),
                ))
            }
            oid::PBE_SHA1_RC4_128 | oid::PBE_SHA1_RC4_40 => {
                return Err(PfxError::Unsupported("RC4 encryption".into()))
            }
            oid::PBES2 => ("PBES2", self.pbes2(params, ct, seen)?),
            other => {
                return Err(PfxError::Unsupported(format!(
                    "encryption algorithm {other}"
                )))
            }
        };
        if name != "PBES2" {
            seen.push(name.into());
        }
        Ok(plain)
    }

    fn pbes2(
        &self,
        params: &der::Any,
        ct: &[u8],
        seen: &mut Vec<String>,
    ) -> Result<Zeroizing<Vec<u8>>, PfxError> {
        let p = Pbes2Params::from_der(&params.to_der().map_err(malformed("PBES2"))?)
            .map_err(malformed("PBES2"))?;
        if p.kdf.oid != oid::PBKDF2 {
            return Err(PfxError::Unsupported(format!(
                "PBES2 key derivation {}",
                p.kdf.oid
            )));
        }
        let kdf_params = p
            .kdf
            .parameters
            .as_ref()
            .ok_or_else(|| PfxError::Malformed("PBKDF2 without parameters".into()))?
            .decode_as::<Pbkdf2Params>()
            .map_err(malformed("PBKDF2"))?;
        let iterations = check_iterations(
            "PBKDF2",
            u64::from(kdf_params.iteration_count),
            self.max_iterations,
        )?;
        // FIPS mode reads no file it would not write: OpenSSL's FIPS provider refuses the same
        // derivation (its PBKDF2 lower-bound check), and AWS-LC's module counts it as a
        // non-approved use.
        self.policy.check_pbkdf2_iterations(iterations)?;
        let (prf, prf_name) = match kdf_params.prf.as_ref().map(|a| a.oid) {
            None | Some(oid::HMAC_WITH_SHA1) => (Prf::HmacSha1, "hmacWithSHA1"),
            Some(oid::HMAC_WITH_SHA256) => (Prf::HmacSha256, "hmacWithSHA256"),
            Some(oid::HMAC_WITH_SHA384) => (Prf::HmacSha384, "hmacWithSHA384"),
            Some(oid::HMAC_WITH_SHA512) => (Prf::HmacSha512, "hmacWithSHA512"),
            Some(other) => return Err(PfxError::Unsupported(format!("PBKDF2 PRF {other}"))),
        };
        let (cipher, key_len) = match p.encryption.oid {
            oid::AES_128_CBC => (Cipher::Aes128Cbc, 16),
            oid::AES_192_CBC => (Cipher::Aes192Cbc, 24),
            oid::AES_256_CBC => (Cipher::Aes256Cbc, 32),
            oid::DES_EDE3_CBC => (Cipher::DesEde3Cbc, 24),
            other => return Err(PfxError::Unsupported(format!("PBES2 cipher {other}"))),
        };
        self.policy.check_cipher(cipher)?;
        let iv = p
            .encryption
            .parameters
            .as_ref()
            .ok_or_else(|| PfxError::Malformed("PBES2 cipher without an IV".into()))?
            .decode_as::<OctetString>()
            .map_err(malformed("PBES2 IV"))?;
        let mut key = Zeroizing::new(vec![0u8; key_len]);
        provider::pbkdf2(
            prf,
            self.utf8,
            kdf_params.salt.as_bytes(),
            iterations,
            &mut key,
        )?;
        let plain = provider::cbc_decrypt(cipher, &key, iv.as_bytes(), ct)
            .map_err(|_| PfxError::WrongPassword)?;
        seen.push(format!(
            "PBES2 PBKDF2-{prf_name} {} ({iterations} iterations)",
            cipher.name()
        ));
        Ok(Zeroizing::new(plain))
    }
}

fn read_safe_contents(
    der_bytes: &[u8],
    secrets: &Secrets<'_>,
    opened: &mut OpenedPfx,
    bags: &mut usize,
    depth: usize,
) -> Result<(), PfxError> {
    if depth > 2 {
        return Err(PfxError::Malformed(
            "safe contents nested too deeply".into(),
        ));
    }
    let normalized = ber::to_der(der_bytes).map_err(|e| PfxError::Malformed(e.to_string()))?;
    let safe: Vec<SafeBag> =
        Vec::<SafeBag>::from_der(&normalized).map_err(malformed("SafeContents"))?;
    for bag in safe {
        *bags += 1;
        if *bags > MAX_BAGS {
            return Err(PfxError::Malformed(format!("more than {MAX_BAGS} bags")));
        }
        let mut local_key_id = None;
        let mut friendly_name = None;
        for attr in bag.bag_attributes.iter().flat_map(|a| a.iter()) {
            let Some(value) = attr.values.iter().next() else {
                continue;
            };
            match attr.oid {
                oid::LOCAL_KEY_ID => {
                    local_key_id = value
                        .decode_as::<OctetString>()
                        .ok()
                        .map(|o| o.as_bytes().to_vec())
                }
                oid::FRIENDLY_NAME => {
                    friendly_name = value.decode_as::<BmpString>().ok().map(|b| b.to_string())
                }
                _ => {}
            }
        }
        // `bag_value` holds the whole `[0] EXPLICIT` wrapper; the bag is its one inner TLV.
        let wrapper = der::Any::from_der(&bag.bag_value).map_err(malformed("bag value"))?;
        let inner = wrapper.value();
        match bag.bag_id {
            oid::KEY_BAG => opened.keys.push(PfxKey {
                pkcs8: Zeroizing::new(inner.to_vec()),
                local_key_id,
            }),
            oid::SHROUDED_KEY_BAG => {
                let epki =
                    EncryptedPrivateKeyInfo::from_der(inner).map_err(malformed("shrouded key"))?;
                let pkcs8 = secrets.decrypt(
                    &epki.encryption_algorithm,
                    epki.encrypted_data.as_bytes(),
                    &mut opened.protections,
                )?;
                opened.keys.push(PfxKey {
                    pkcs8,
                    local_key_id,
                });
            }
            oid::CERT_BAG => {
                let cert = CertBag::from_der(inner).map_err(malformed("certBag"))?;
                if cert.cert_id == oid::X509_CERTIFICATE {
                    opened.certificates.push(PfxCertificate {
                        der: cert.cert_value.as_bytes().to_vec(),
                        local_key_id,
                        friendly_name,
                    });
                }
            }
            oid::SAFE_CONTENTS_BAG => read_safe_contents(inner, secrets, opened, bags, depth + 1)?,
            // CRL and secret bags carry nothing certconn delivers.
            _ => {}
        }
    }
    Ok(())
}
