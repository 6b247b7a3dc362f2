//! The OpenAPI document of what certconn serves over HTTP, generated from the code: each
//! handler carries its `#[utoipa::path]`, each route is registered from it (`utoipa_axum`'s
//! `routes!`), and the request and answer types derive their schemas. A daemon serves the
//! document of the routes it runs at `GET /v1/openapi.json`; `docs/api/openapi.json` is the
//! document of a daemon with every part configured, checked against the code by the suite.
//!
//! This leaf holds what the document needs beyond the handlers: its front matter (title,
//! version, the two bearer tokens, the tags) and [`Binary`], the schema of DER and PKCS#12
//! bodies.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

/// The document's front matter; the routers add the paths and schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "certconn",
        description = "The HTTP API of certconn, a certificate connector: submit issue, import and \
                       revoke jobs and read their results, administer backends and plugins, read \
                       the ledger of certificates issued, and watch the daemon. The SCEP endpoint \
                       and the published CRLs, OCSP and CA certificates are served without a token \
                       when configured.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerTokens),
    tags(
        (name = "jobs", description = "Work submitted, and its results"),
        (name = "certificates", description = "The ledger: what certconn issued and revoked"),
        (name = "keys", description = "Custody keys' public halves"),
        (name = "plugins", description = "Backend instances and plugin files"),
        (name = "scep", description = "The SCEP server (RFC 8894), when configured"),
        (name = "pki", description = "Published CRLs, OCSP and CA certificates, when configured"),
        (name = "operations", description = "Health, status, metrics, configuration reload"),
        (name = "status page", description = "The status page and its assets"),
    )
)]
struct FrontMatter;

/// The two bearer tokens: `token` (`api.token_file`) may do everything; `read_token`
/// (`api.read_token_file`) reads `/metrics` and `/v1/status` only. A client certificate
/// verified against `api.tls.client_ca` stands for the API token.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "token",
            bearer(
                "The API token (api.token_file, created 0600 at first start), or a client \
                 certificate verified against api.tls.client_ca",
            ),
        );
        components.add_security_scheme(
            "read_token",
            bearer("The read-only token (api.read_token_file): /metrics and /v1/status only"),
        );
    }
}

/// The document with no paths yet: the routers of `sources::api`, `sources::scep` and
/// `revocation` are merged into it.
pub fn front_matter() -> utoipa::openapi::OpenApi {
    FrontMatter::openapi()
}

/// Bytes that are not JSON (DER, a PKCS#12 file): `type: string, format: binary`.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}
