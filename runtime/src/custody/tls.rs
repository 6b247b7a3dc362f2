//! Custody keys in TLS handshakes: the API's issued certificate (server side) and the
//! upstream identity (client side) sign through custody, so a key's private half is never
//! copied into rustls — and a PKCS#11 key works as well as a software one.

use std::sync::Arc;

use certconn_x509::{PublicKeyKind, SignatureScheme};
use rustls::sign::{Signer, SigningKey};

use super::StoredKey;

/// A custody key signing TLS handshakes: rustls gets the signatures, never the key.
pub struct CustodySigningKey(pub Arc<StoredKey>);

impl std::fmt::Debug for CustodySigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustodySigningKey({})", self.0.name)
    }
}

impl SigningKey for CustodySigningKey {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn Signer>> {
        let (ours, theirs) = match self.0.key.kind() {
            PublicKeyKind::EcP256 => (
                SignatureScheme::EcdsaP256Sha256,
                rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
            ),
            PublicKeyKind::EcP384 => (
                SignatureScheme::EcdsaP384Sha384,
                rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
            ),
            PublicKeyKind::Rsa { .. } => return None,
        };
        offered.contains(&theirs).then(|| {
            Box::new(CustodySigner {
                key: self.0.clone(),
                ours,
                theirs,
            }) as Box<dyn Signer>
        })
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.0.key.kind() {
            PublicKeyKind::Rsa { .. } => rustls::SignatureAlgorithm::RSA,
            _ => rustls::SignatureAlgorithm::ECDSA,
        }
    }
}

struct CustodySigner {
    key: Arc<StoredKey>,
    ours: SignatureScheme,
    theirs: rustls::SignatureScheme,
}

impl std::fmt::Debug for CustodySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustodySigner({}, {:?})", self.key.name, self.theirs)
    }
}

impl Signer for CustodySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .key
            .sign(self.ours, message)
            .map_err(|e| rustls::Error::General(format!("custody key {}: {e}", self.key.name)))
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        self.theirs
    }
}
