//! `[intune]`: the tenant, the Entra ID application certconn acts as, and where Intune is.

use toml::Spanned;

use crate::config::{Checker, ConfigError, ConfigPath};

/// One Intune tenant.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntuneConfig {
    /// The tenant: its id or its domain (`contoso.onmicrosoft.com`).
    pub tenant: Spanned<String>,
    /// The application (client) id of the Entra ID app registration, granted Intune's
    /// `scep_challenge_provider` and Graph's `Application.Read.All` permissions.
    pub app_id: Spanned<String>,
    /// The app's client secret, read from this environment variable.
    pub client_secret_env: Option<Spanned<String>>,
    /// The app's client secret, read from this file (0600).
    pub client_secret_file: Option<ConfigPath>,
    /// Instead of a secret: a custody key (RSA, declared in `[keys]`, with the certificate
    /// registered on the app) that signs a client assertion. The key never leaves custody.
    pub certificate_key: Option<Spanned<String>>,
    /// What certconn calls itself in Intune's records (`callerInfo`), e.g. `certconn-0.1`.
    #[serde(default = "default_provider")]
    pub provider_name_and_version: Spanned<String>,
    /// Entra ID's authority (sovereign clouds and tests override it).
    #[serde(default = "default_authority")]
    pub authority: Spanned<String>,
    /// Microsoft Graph, for service discovery.
    #[serde(default = "default_graph")]
    pub graph_url: Spanned<String>,
    /// The Graph resource the discovery token is for (its `/.default` scope). Default:
    /// `https://graph.microsoft.com/`; a sovereign cloud sets it with `graph_url`.
    #[serde(default = "default_graph")]
    pub graph_resource: Spanned<String>,
    #[serde(default = "default_graph_version")]
    pub graph_api_version: String,
    /// Intune's resource URL, whose `/.default` scope the Intune token is for.
    #[serde(default = "default_intune_resource")]
    pub intune_resource_url: Spanned<String>,
    /// PEM file of the CAs the endpoints' TLS certificates chain to. Default: the system store.
    pub trust_anchors: Option<ConfigPath>,
    /// Download Intune's revocation requests and revoke what certconn issued.
    #[serde(default)]
    pub revocation: bool,
    /// How often to ask for revocation requests.
    #[serde(
        default = "default_revocation_interval",
        deserialize_with = "crate::config::in_range::<_, u64, 1, 86_400>"
    )]
    pub revocation_interval_seconds: u64,
    /// Requests asked for per download (Intune's limit is 500).
    #[serde(
        default = "default_revocation_batch",
        deserialize_with = "crate::config::in_range::<_, u32, 1, 500>"
    )]
    pub revocation_batch: u32,
    /// Only the requests for certificates of this issuer (its name as Intune has it).
    pub revocation_issuer: Option<String>,
}

fn default_revocation_interval() -> u64 {
    300
}

fn default_revocation_batch() -> u32 {
    100
}

fn default_provider() -> Spanned<String> {
    Spanned::new(0..0, concat!("certconn/", env!("CARGO_PKG_VERSION")).into())
}

fn default_authority() -> Spanned<String> {
    Spanned::new(0..0, "https://login.microsoftonline.com/".into())
}

fn default_graph() -> Spanned<String> {
    Spanned::new(0..0, "https://graph.microsoft.com/".into())
}

fn default_graph_version() -> String {
    "v1.0".into()
}

fn default_intune_resource() -> Spanned<String> {
    Spanned::new(0..0, "https://api.manage.microsoft.com/".into())
}

impl IntuneConfig {
    /// The Graph token's scope.
    pub fn graph_scope(&self) -> String {
        format!(
            "{}/.default",
            self.graph_resource.get_ref().trim_end_matches('/')
        )
    }

    /// The Intune token's scope: the resource URL and `/.default`. Microsoft's clients append
    /// `/.default` to the URL with its trailing slash, so the scope Intune expects has two
    /// slashes (`https://api.manage.microsoft.com//.default`).
    pub fn intune_scope(&self) -> String {
        format!("{}/.default", self.intune_resource_url.get_ref())
    }

    /// Entra ID's token endpoint for the tenant.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority.get_ref().trim_end_matches('/'),
            self.tenant.get_ref()
        )
    }

    /// One credential, and every URL https (or http to loopback).
    pub fn check(&self, cx: &Checker<'_>) -> Result<(), ConfigError> {
        let sources = [
            self.client_secret_env.is_some(),
            self.client_secret_file.is_some(),
            self.certificate_key.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(cx.section(
                "intune",
                "intune",
                "give exactly one credential: client_secret_env, client_secret_file or certificate_key",
            ));
        }
        for (setting, url) in [
            ("intune.authority", &self.authority),
            ("intune.graph_url", &self.graph_url),
        ] {
            crate::sources::outbound::check_scheme(url.get_ref())
                .map_err(|why| cx.at(url.span(), setting, why))?;
        }
        for (setting, value) in [
            ("intune.tenant", &self.tenant),
            ("intune.app_id", &self.app_id),
        ] {
            let v = value.get_ref();
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            {
                return Err(cx.at(
                    value.span(),
                    setting,
                    "letters, digits, '-', '.' and '_' only".to_owned(),
                ));
            }
        }
        Ok(())
    }
}
