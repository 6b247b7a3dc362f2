//! GetCACaps (RFC 8894 §3.5.2): what a CA says it can do, and what a client chooses from it.

use crate::{Cipher, Digest, Error, Result};

/// The capabilities a CA advertised, one keyword per line, compared without case and kept as
/// written: a server's answer spells them as RFC 8894 does (`POSTPKIOperation`), which some
/// clients compare exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    keywords: Vec<String>,
}

/// Which legacy ciphers a client may fall back to when a CA offers nothing better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CipherPolicy {
    /// 3DES when the CA offers no AES (NDES). Off in FIPS mode.
    pub allow_des3: bool,
    /// Single DES when the CA offers neither AES nor 3DES. Only by explicit choice.
    pub allow_single_des: bool,
}

impl Capabilities {
    /// Parses a GetCACaps body. Unknown keywords are kept (and ignored); the body may be empty,
    /// which RFC 8894 says means "nothing beyond the SCEP minimum".
    pub fn parse(body: &str) -> Self {
        Self {
            keywords: body
                .split(['\n', '\r'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// The server side: what certconn's SCEP server advertises.
    pub fn of(keywords: &[&str]) -> Self {
        Self::parse(&keywords.join("\n"))
    }

    pub fn has(&self, keyword: &str) -> bool {
        self.keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(keyword))
    }

    /// RFC 8894 "SCEPStandard" implies AES, POSTPKIOperation, SHA-256.
    fn standard(&self) -> bool {
        self.has("SCEPStandard")
    }

    pub fn post(&self) -> bool {
        self.has("POSTPKIOperation") || self.standard()
    }

    pub fn renewal(&self) -> bool {
        self.has("Renewal") || self.standard()
    }

    /// The strongest digest offered; SHA-1 when nothing is said (the pre-RFC default).
    pub fn digest(&self) -> Digest {
        if self.has("SHA-512") {
            Digest::Sha512
        } else if self.has("SHA-256") || self.standard() {
            Digest::Sha256
        } else {
            Digest::Sha1
        }
    }

    /// The content-encryption cipher for a request: AES first ("AES" is AES-128-CBC in
    /// RFC 8894), 3DES only when nothing better is offered and the policy allows it, single DES
    /// only when explicitly allowed.
    pub fn cipher(&self, policy: CipherPolicy) -> Result<Cipher> {
        if self.has("AES") || self.standard() {
            return Ok(Cipher::Aes128Cbc);
        }
        if self.has("DES3") {
            return if policy.allow_des3 {
                Ok(Cipher::DesEde3Cbc)
            } else {
                Err(Error::Unsupported(
                    "the CA offers only 3DES and 3DES is not allowed here (FIPS mode or allow_des3 = false)".into(),
                ))
            };
        }
        if policy.allow_single_des {
            Ok(Cipher::DesCbc)
        } else {
            Err(Error::Unsupported(
                "the CA offers neither AES nor 3DES; single DES needs allow_single_des = true"
                    .into(),
            ))
        }
    }

    /// The keywords as a GetCACaps body.
    pub fn to_body(&self) -> String {
        let mut s = String::new();
        for k in &self.keywords {
            s.push_str(k);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_follow_the_capabilities() {
        let ndes = Capabilities::parse(
            "POSTPKIOperation\r\nRenewal\r\nSHA-512\r\nSHA-256\r\nSHA-1\r\nDES3\r\n",
        );
        assert!(ndes.post());
        assert_eq!(ndes.digest(), Digest::Sha512);
        assert_eq!(
            ndes.cipher(CipherPolicy {
                allow_des3: true,
                allow_single_des: false
            })
            .unwrap(),
            Cipher::DesEde3Cbc
        );
        assert!(ndes.cipher(CipherPolicy::default()).is_err());

        let modern = Capabilities::parse("SCEPStandard\n");
        assert!(modern.post() && modern.renewal());
        assert_eq!(modern.digest(), Digest::Sha256);
        assert_eq!(
            modern.cipher(CipherPolicy::default()).unwrap(),
            Cipher::Aes128Cbc
        );

        let lower = Capabilities::parse("postpkioperation\nsha-256\n");
        assert!(
            lower.post(),
            "clients and servers that write lower case are understood"
        );
        assert_eq!(lower.digest(), Digest::Sha256);
        assert_eq!(
            Capabilities::of(&["POSTPKIOperation", "SHA-256"]).to_body(),
            "POSTPKIOperation\nSHA-256\n",
            "a server's keywords go out as written"
        );

        let bare = Capabilities::parse("");
        assert!(!bare.post());
        assert_eq!(bare.digest(), Digest::Sha1);
        let e = bare
            .cipher(CipherPolicy {
                allow_des3: true,
                allow_single_des: false,
            })
            .unwrap_err();
        assert!(e.to_string().contains("allow_single_des"), "{e}");
        assert_eq!(
            bare.cipher(CipherPolicy {
                allow_des3: false,
                allow_single_des: true
            })
            .unwrap(),
            Cipher::DesCbc
        );
    }
}
