//! The config sections custody owns: `[custody]` (how the software store is sealed at rest, and
//! the PKCS#11 token) and `[keys.NAME]` (the keys to create at first start).

use toml::Spanned;

use super::{KekSource, KeyAlgorithm, KeyLocation, Pkcs11Config};
use crate::config::{Checker, ConfigError};

/// `[custody]`: how the software store is sealed at rest (`protection` and its settings, see
/// [`KekSource`]) and, optionally, the PKCS#11 token for `store = "pkcs11"` keys
/// (`[custody.pkcs11]`, see [`Pkcs11Config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustodyConfig {
    pub protection: KekSource,
    pub pkcs11: Option<Pkcs11Config>,
    /// `allow_core_dumps`: let a crash of `certconn serve` write a core file (or reach
    /// `kernel.core_pattern`'s program), with the keys, passwords and credentials in memory
    /// at the time. Off by default: see [`super::core_dumps`].
    pub allow_core_dumps: bool,
}

impl From<KekSource> for CustodyConfig {
    fn from(protection: KekSource) -> Self {
        Self {
            protection,
            pkcs11: None,
            allow_core_dumps: false,
        }
    }
}

impl<'de> serde::Deserialize<'de> for CustodyConfig {
    // `KekSource` is an internally tagged enum with `deny_unknown_fields`, which serde cannot
    // flatten; so the `pkcs11` table is taken out first and the rest is the protection.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let pkcs11 = table
            .remove("pkcs11")
            .map(|v| {
                Pkcs11Config::deserialize(v).map_err(|e| D::Error::custom(format!("pkcs11: {e}")))
            })
            .transpose()?;
        let allow_core_dumps = match table.remove("allow_core_dumps") {
            None => false,
            Some(toml::Value::Boolean(allow)) => allow,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "allow_core_dumps: expected true or false, found {}",
                    other.type_str()
                )))
            }
        };
        if !table.contains_key("protection") {
            // `protection` defaults to `none`; a table that gives the setting of one kind of
            // protection means that kind (`key_file = "…"` alone is `protection = "key-file"`).
            let kinds: Vec<&str> = [
                ("passphrase_env", "passphrase"),
                ("key_file", "key-file"),
                ("credential", "credential"),
            ]
            .into_iter()
            .filter(|(field, _)| table.contains_key(*field))
            .map(|(_, kind)| kind)
            .collect();
            match kinds.as_slice() {
                [] => {}
                [kind] => {
                    table.insert("protection".into(), toml::Value::String((*kind).into()));
                }
                several => {
                    return Err(D::Error::custom(format!(
                    "settings of several kinds of protection ({}); set protection to one of them",
                    several.join(", ")
                )))
                }
            }
        }
        let protection = if table.is_empty() {
            KekSource::None
        } else {
            KekSource::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?
        };
        Ok(Self {
            protection,
            pkcs11,
            allow_core_dumps,
        })
    }
}

/// `[keys.NAME]`: a custody key to create at first start.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub algorithm: KeyAlgorithm,
    /// `software` (default) or `pkcs11` (the `custody.pkcs11` token).
    #[serde(default = "software")]
    pub store: Spanned<KeyLocation>,
    /// Give the key a self-signed CA certificate when it is created (for `local-ca`).
    pub self_signed: Option<SelfSigned>,
    /// What the key is for, which fixes what it may do ([`KeyRole`]). Default: `ca` for a key
    /// with `self_signed`, else `general`.
    pub role: Option<Spanned<KeyRole>>,
}

/// What a custody key is for. The role fixes what a plugin granted the key may have it do;
/// the roles the host keeps for itself cannot be granted at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyRole {
    /// Signs certificates: for a plugin, only the job's own certificate (the issuance policy),
    /// even before it has a CA certificate; never decrypts.
    Ca,
    /// The SCEP server's RA key: the host's only, never granted to a plugin.
    ScepRa,
    /// Decrypts imported PFX passwords: decrypts only, never signs.
    PfxPassword,
    /// A plugin's own signing key (a client-auth key, a request-signing key): signs, never
    /// decrypts; a certificate that makes it a CA still brings the issuance policy.
    Signing,
    /// certconn's identity towards its upstream service: the host's only.
    UpstreamIdentity,
    /// No role stated: signs and decrypts, and the issuance policy applies when its
    /// certificate is a CA's (how keys behaved before roles).
    General,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ca => "ca",
            Self::ScepRa => "scep-ra",
            Self::PfxPassword => "pfx-password",
            Self::Signing => "signing",
            Self::UpstreamIdentity => "upstream-identity",
            Self::General => "general",
        }
    }

    /// Only the host uses keys of this role; a backend may not be granted one.
    pub fn host_only(self) -> bool {
        matches!(self, Self::ScepRa | Self::UpstreamIdentity)
    }

    /// Why a plugin may not have a key of this role sign, if it may not.
    pub fn refuses_signing(self) -> Option<&'static str> {
        match self {
            Self::PfxPassword => Some("a pfx-password key only decrypts"),
            _ if self.host_only() => Some("this key is the host's own"),
            _ => None,
        }
    }

    /// Why a plugin may not have a key of this role decrypt, if it may not.
    pub fn refuses_decryption(self) -> Option<&'static str> {
        match self {
            Self::Ca => Some("a CA key never decrypts for a plugin"),
            Self::Signing => Some("a signing key only signs"),
            _ if self.host_only() => Some("this key is the host's own"),
            _ => None,
        }
    }
}

/// A self-signed CA certificate for a key created at first start.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfSigned {
    /// RFC 4514, most significant RDN last as written (`CN=Example CA,O=Example`).
    pub subject: Spanned<String>,
    #[serde(
        default = "default_ca_days",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 36500>"
    )]
    pub validity_days: u32,
}

fn software() -> Spanned<KeyLocation> {
    Spanned::new(0..0, KeyLocation::Software)
}

fn default_ca_days() -> u32 {
    3650
}

impl KeyConfig {
    /// The key's role: as stated, else `ca` for a key made with a self-signed CA certificate,
    /// else `general`.
    pub fn role(&self) -> KeyRole {
        match (&self.role, &self.self_signed) {
            (Some(r), _) => *r.get_ref(),
            (None, Some(_)) => KeyRole::Ca,
            (None, None) => KeyRole::General,
        }
    }

    /// Checks what can be checked of key `name` on its own, and against the custody section.
    pub fn check(
        &self,
        name: &str,
        custody: &CustodyConfig,
        cx: &Checker<'_>,
    ) -> Result<(), ConfigError> {
        if *self.store.get_ref() == KeyLocation::Pkcs11 && custody.pkcs11.is_none() {
            return Err(cx.at(
                self.store.span(),
                format!("keys.{name}.store"),
                "store = \"pkcs11\" needs a [custody.pkcs11] section (module, token_label)",
            ));
        }
        if let (Some(role), Some(_)) = (&self.role, &self.self_signed) {
            if *role.get_ref() != KeyRole::Ca {
                return Err(cx.at(
                    role.span(),
                    format!("keys.{name}.role"),
                    format!(
                        "self_signed makes a CA certificate, so the role is ca, not {}",
                        role.get_ref().as_str()
                    ),
                ));
            }
        }
        if let Some(ss) = &self.self_signed {
            if let Err(e) = certconn_x509::dn::parse(ss.subject.get_ref()) {
                return Err(cx.at(
                    ss.subject.span(),
                    format!("keys.{name}.self_signed.subject"),
                    e.to_string(),
                ));
            }
        }
        Ok(())
    }
}
