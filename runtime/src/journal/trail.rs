//! The signature trail: every signature a CA key makes — for a plugin's job or for the host
//! itself — recorded before the signature leaves custody, each entry chained to the one before
//! by SHA-256. An entry removed from the middle or edited anywhere breaks the chain, and
//! [`verify`] names the first entry where it breaks. Removing entries from the *end* leaves a
//! shorter chain that still verifies; that is why every append is also logged with its hash
//! (the log is the anchor), and why `certconn audit verify` prints the head to keep elsewhere.
//!
//! The same table makes "a serial is never used twice" hold: an issuer's serial is unique in
//! it, and the append is what reserves it, so a second certificate with a used serial is
//! refused before it is signed — across restarts and across instances of one journal.

use serde::Serialize;

use crate::crypto::provider::{self, Digest};

/// What kind of thing a CA key signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignedKind {
    /// A TBSCertificate.
    Certificate,
    /// A TBSCertList.
    Crl,
}

impl SignedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Crl => "crl",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Certificate, Self::Crl]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One signature about to be made, as the signer describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewSignature {
    /// The custody key that signs.
    pub key: String,
    pub kind: SignedKind,
    /// The job it was made for; none for the host's own (a CRL).
    pub job: Option<String>,
    /// The backend instance that asked, or `host`.
    pub backend: String,
    /// The plugin version that asked (`name version`), or `host`.
    pub signer: String,
    /// SHA-256 of the plugin file, hex; empty for the host.
    pub signer_sha256: String,
    /// SHA-256 of the signed message (TBSCertificate or TBSCertList), hex.
    pub tbs_sha256: String,
    /// The issuer, RFC 4514.
    pub issuer: String,
    /// The certificate's serial (lowercase hex, no sign padding) or the CRL's number.
    pub serial: String,
    /// The certificate's subject (RFC 4514); empty for a CRL.
    pub subject: String,
}

/// A recorded signature: its place in the chain, when, and the hashes that chain it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignatureRecord {
    pub seq: u64,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(flatten)]
    pub signature: NewSignature,
    /// The hash of the entry before (hex; [`GENESIS`] for the first).
    pub prev_hash: String,
    /// The hash of this entry (hex).
    pub hash: String,
}

/// The previous hash of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an entry: SHA-256 over its fields, each length-prefixed so no two different
/// entries encode the same, and the previous entry's hash.
pub fn entry_hash(seq: u64, at: i64, s: &NewSignature, prev_hash: &str) -> String {
    let mut buf = Vec::with_capacity(512);
    let mut field = |bytes: &[u8]| {
        buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        buf.extend_from_slice(bytes);
    };
    field(b"certconn-signature-trail-v1");
    field(&seq.to_be_bytes());
    field(&at.to_be_bytes());
    field(s.key.as_bytes());
    field(s.kind.as_str().as_bytes());
    field(s.job.as_deref().unwrap_or("").as_bytes());
    field(s.backend.as_bytes());
    field(s.signer.as_bytes());
    field(s.signer_sha256.as_bytes());
    field(s.tbs_sha256.as_bytes());
    field(s.issuer.as_bytes());
    field(s.serial.as_bytes());
    field(s.subject.as_bytes());
    field(prev_hash.as_bytes());
    hex::encode(provider::digest(Digest::Sha256, &buf))
}

/// Where and why a chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreak {
    #[error("entry {seq} was altered: its hash does not match its contents")]
    Altered { seq: u64 },
    #[error("entry {seq} does not follow entry {before}: an entry between them was removed, or one of them was altered")]
    Unlinked { seq: u64, before: u64 },
    #[error("the trail starts at entry {seq}, not 1: the entries before it were removed")]
    HeadMissing { seq: u64 },
}

/// What a verified chain holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub entries: u64,
    /// The last entry's sequence number and hash (keep it elsewhere to detect a cut tail).
    pub last_seq: u64,
    pub last_hash: String,
}

/// Checks a trail entry by entry, oldest first, so a long trail is read in pages.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    prev: Option<(u64, String)>,
    entries: u64,
}

impl ChainVerifier {
    /// Checks the next entry against its contents and the entry before it.
    pub fn check(&mut self, r: &SignatureRecord) -> Result<(), ChainBreak> {
        if entry_hash(r.seq, r.at, &r.signature, &r.prev_hash) != r.hash {
            return Err(ChainBreak::Altered { seq: r.seq });
        }
        match &self.prev {
            None if r.seq != 1 || r.prev_hash != GENESIS => {
                return Err(ChainBreak::HeadMissing { seq: r.seq })
            }
            Some((seq, hash)) if r.seq != seq + 1 || r.prev_hash != *hash => {
                return Err(ChainBreak::Unlinked {
                    seq: r.seq,
                    before: *seq,
                })
            }
            _ => {}
        }
        self.entries += 1;
        self.prev = Some((r.seq, r.hash.clone()));
        Ok(())
    }

    /// What the entries checked so far hold.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            entries: self.entries,
            last_seq: self.prev.as_ref().map_or(0, |p| p.0),
            last_hash: self
                .prev
                .as_ref()
                .map_or_else(|| GENESIS.to_owned(), |p| p.1.clone()),
        }
    }
}

/// Checks a whole trail, oldest first.
pub fn verify<'a>(
    records: impl IntoIterator<Item = &'a SignatureRecord>,
) -> Result<ChainHead, ChainBreak> {
    let mut verifier = ChainVerifier::default();
    for r in records {
        verifier.check(r)?;
    }
    Ok(verifier.head())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<SignatureRecord> {
        let mut out: Vec<SignatureRecord> = Vec::new();
        for seq in 1..=n {
            let signature = NewSignature {
                key: "ca".into(),
                kind: SignedKind::Certificate,
                job: Some(format!("job-{seq}")),
                backend: "local".into(),
                signer: "local-ca 1.0.0".into(),
                signer_sha256: "ab".repeat(32),
                tbs_sha256: "cd".repeat(32),
                issuer: "CN=CA".into(),
                serial: format!("{seq:02x}"),
                subject: "CN=device".into(),
            };
            let prev_hash = out.last().map_or(GENESIS.to_owned(), |r| r.hash.clone());
            let at = 1_700_000_000_000 + seq as i64;
            out.push(SignatureRecord {
                seq,
                at,
                hash: entry_hash(seq, at, &signature, &prev_hash),
                signature,
                prev_hash,
            });
        }
        out
    }

    #[test]
    fn an_intact_chain_verifies_and_names_its_head() {
        let c = chain(5);
        let head = verify(&c).unwrap();
        assert_eq!((head.entries, head.last_seq), (5, 5));
        assert_eq!(head.last_hash, c[4].hash);
        assert_eq!(verify(&[]).unwrap().entries, 0);
    }

    #[test]
    fn a_removed_or_edited_entry_is_found() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(verify(&c), Err(ChainBreak::Unlinked { seq: 4, before: 2 }));

        let mut c = chain(5);
        c[1].signature.serial = "ff".into();
        assert_eq!(verify(&c), Err(ChainBreak::Altered { seq: 2 }));

        // Rehashing the edited entry does not help: the next one no longer links to it.
        let mut c = chain(5);
        c[1].signature.subject = "CN=someone else".into();
        c[1].hash = entry_hash(2, c[1].at, &c[1].signature, &c[1].prev_hash);
        assert_eq!(verify(&c), Err(ChainBreak::Unlinked { seq: 3, before: 2 }));

        let c = chain(5);
        assert_eq!(verify(&c[1..]), Err(ChainBreak::HeadMissing { seq: 2 }));
    }
}
