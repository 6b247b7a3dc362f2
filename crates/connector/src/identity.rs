//! The connector's identity: a key certconn holds in custody and a certificate the service
//! issues for it. Registration trades a one-time enrolment token and a CSR for the first
//! certificate; every later call is mutual TLS with it, and certconn renews it over that mutual
//! TLS before it runs out. A service that no longer accepts an identity (revoked, unknown)
//! answers 401 with [`IDENTITY_REFUSED`] as the error's `code`, so that the connector stops and
//! says "re-register" instead of retrying.

use serde::{Deserialize, Serialize};

/// `POST /register` (bearer: the one-time enrolment token) and `POST /identity/renew` (mutual
/// TLS with the current identity): a CSR for a key the connector holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityRequest {
    /// PKCS#10, PEM. Its signature proves the connector holds the key.
    pub csr: String,
    /// The connector's instance name, for the service's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The answer to a registration or a renewal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityAnswer {
    /// The service's id of this connector (the same across renewals).
    pub connector_id: String,
    /// The identity certificate, PEM, for the CSR's key; client authentication.
    pub certificate: String,
    /// The CA certificates, PEM, that the service's own TLS certificate chains to: the connector
    /// trusts them (and nothing else) for its later calls, unless its config names anchors.
    pub service_ca: String,
}

/// The error `code` of a 401 that means the identity is no longer accepted (revoked, unknown
/// to the service): the connector stops calling and reports that it must re-register.
pub const IDENTITY_REFUSED: &str = "identity_refused";

/// The error `code` of a registration whose enrolment token is unknown, used or expired.
pub const TOKEN_REFUSED: &str = "enrolment_token_refused";
