//! The protocol as an OpenAPI 3.1 document and as one JSON Schema of every message, generated
//! from the types in this crate so that the specification cannot drift from the code. Checked
//! in at `docs/api/connector-protocol.openapi.json` and `docs/api/connector-protocol.schema.json`
//! (a test fails when they differ; `CERTCONN_UPDATE_SPEC=1` rewrites them).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    Delivered, Deprecation, ErrorBody, Heartbeat, HeartbeatAnswer, IdentityAnswer, IdentityRequest,
    ImportWork, IssueWork, ItemResult, Outcome, PluginReport, RevokeWork, VersionPolicy, Work,
    WorkBatch, WorkItem,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "certconn connector protocol",
        version = "1",
        description = "What a device-management service implements so that certconn can do its certificate work: certconn long-polls for work items, journals each before acknowledging it, and uploads every result until the service takes it. docs/connector-protocol.md is the prose.",
        license(name = "Apache-2.0")
    ),
    paths(poll_work, acknowledge, upload_result, heartbeat, register, renew_identity),
    components(schemas(
        WorkBatch, WorkItem, Work, IssueWork, ImportWork, RevokeWork, ItemResult, Outcome,
        Delivered, Heartbeat, PluginReport, HeartbeatAnswer, VersionPolicy, Deprecation,
        IdentityRequest, IdentityAnswer, ErrorBody
    )),
    modifiers(&Credentials),
    security(("connector_identity" = []), ("connector_token" = []))
)]
struct Spec;

/// How a connector proves who it is: its identity certificate (mutual TLS), or a bearer token
/// the service gave it (for trying things out); and, once, the enrolment token.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "connector_identity",
            SecurityScheme::MutualTls {
                description: Some(
                    "The identity certificate the service issued at registration".into(),
                ),
                extensions: None,
            },
        );
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "connector_token",
            bearer("A token the service gave this connector, instead of an identity"),
        );
        components.add_security_scheme(
            "enrolment_token",
            bearer("A one-time enrolment token, for registration only"),
        );
    }
}

/// Long-poll for work: up to `max` items not yet acknowledged, oldest first, waiting up to
/// `wait` seconds for one. An item handed out and not acknowledged within the service's
/// visibility timeout is offered again.
#[utoipa::path(
    get,
    path = "/connector/v1/work",
    params(
        ("wait" = Option<u64>, Query, description = "Seconds to wait for an item (0 to 60; default 30)", minimum = 0, maximum = 60),
        ("max" = Option<u32>, Query, description = "Items at most (1 to 100; default 10)", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "A batch; empty when nothing came within `wait`", body = WorkBatch),
        (status = 401, description = "Missing or wrong credentials; `code` `identity_refused` when the identity is revoked or unknown (register again)", body = ErrorBody),
        (status = 429, description = "Too many calls; `Retry-After` says when to come back", body = ErrorBody),
        (status = 503, description = "Unavailable; `Retry-After` when known", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn poll_work() {}

/// certconn has journaled the item: the service stops offering it.
#[utoipa::path(
    post,
    path = "/connector/v1/work/{id}/ack",
    params(("id" = String, Path, description = "The item's id")),
    responses(
        (status = 204, description = "Acknowledged (again is harmless)"),
        (status = 401, description = "Missing or wrong credentials; `code` `identity_refused` when the identity is revoked or unknown (register again)", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn acknowledge() {}

/// What became of an item. The same result again changes nothing; a later one replaces it (an
/// operator retried a failed item). A result also acknowledges its item.
#[utoipa::path(
    post,
    path = "/connector/v1/results",
    request_body = ItemResult,
    responses(
        (status = 204, description = "Stored"),
        (status = 401, description = "Missing or wrong credentials; `code` `identity_refused` when the identity is revoked or unknown (register again)", body = ErrorBody),
        (status = 404, description = "No such item: certconn drops the result", body = ErrorBody),
        (status = 429, description = "Too many calls; `Retry-After` says when to come back", body = ErrorBody),
        (status = 503, description = "Unavailable; certconn sends it again", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn upload_result() {}

/// Who the connector is and how it is; the answer carries the service's version policy.
#[utoipa::path(
    post,
    path = "/connector/v1/heartbeat",
    request_body = Heartbeat,
    responses(
        (status = 200, description = "The version policy", body = HeartbeatAnswer),
        (status = 401, description = "Missing or wrong credentials; `code` `identity_refused` when the identity is revoked or unknown (register again)", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn heartbeat() {}

/// Registration: a one-time enrolment token and a CSR for a key the connector made buy the
/// connector's identity certificate, and the CAs the service's TLS certificate chains to.
#[utoipa::path(
    post,
    path = "/connector/v1/register",
    request_body = IdentityRequest,
    security(("enrolment_token" = [])),
    responses(
        (status = 201, description = "Registered", body = IdentityAnswer),
        (status = 400, description = "Not a CSR, or its signature does not verify", body = ErrorBody),
        (status = 401, description = "The enrolment token is unknown, used or expired (`code` `enrolment_token_refused`)", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn register() {}

/// Renewal, over mutual TLS with the current identity: a new certificate for the CSR's (new)
/// key, with the same connector id. certconn renews at two thirds of the lifetime.
#[utoipa::path(
    post,
    path = "/connector/v1/identity/renew",
    request_body = IdentityRequest,
    security(("connector_identity" = [])),
    responses(
        (status = 200, description = "Renewed", body = IdentityAnswer),
        (status = 400, description = "Not a CSR, or its signature does not verify", body = ErrorBody),
        (status = 401, description = "No identity presented, or it is revoked or unknown (`code` `identity_refused`)", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn renew_identity() {}

/// The kinds of work: closed (unknown fields refused), but a work item is one of them merged
/// with its `id` and `kind` (`allOf`), and `additionalProperties: false` inside an `allOf`
/// would refuse those. So the kinds are left open and the work item closes itself with
/// `unevaluatedProperties: false` (JSON Schema 2020-12, which OpenAPI 3.1 uses): every field
/// a kind does not name is refused at the item.
const KINDS: [&str; 3] = ["IssueWork", "ImportWork", "RevokeWork"];

/// The document as JSON, with the work item closed as [`KINDS`] says.
fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(Spec::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        for kind in KINDS {
            if let Some(schema) = schemas.get_mut(kind).and_then(|s| s.as_object_mut()) {
                schema.remove("additionalProperties");
            }
        }
        if let Some(item) = schemas.get_mut("WorkItem").and_then(|s| s.as_object_mut()) {
            item.insert("unevaluatedProperties".into(), false.into());
        }
    }
    doc
}

/// The OpenAPI 3.1 document of the connector's calls, pretty-printed.
pub fn openapi_json() -> String {
    serde_json::to_string_pretty(&document()).unwrap_or_default()
}

/// One JSON Schema (2020-12) with every message under `$defs`, for services that validate
/// what they send and receive without an OpenAPI toolchain.
pub fn json_schema() -> String {
    let openapi = document();
    let defs = openapi
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_default();
    let text = serde_json::to_string(&defs)
        .unwrap_or_default()
        .replace("#/components/schemas/", "#/$defs/");
    let defs: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://certconn.dev/connector-protocol/v1/schema.json",
        "title": "certconn connector protocol, version 1: every message",
        "$defs": defs,
    });
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CERTCONN_UPDATE_SPEC=1` rewrites the checked-in documents.
    fn matches_the_docs(name: &str, generated: String) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/api")
            .join(name);
        if std::env::var_os("CERTCONN_UPDATE_SPEC").is_some() {
            std::fs::write(&path, format!("{generated}\n")).unwrap();
        }
        let held = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            held.trim_end() == generated,
            "{} differs from what the code generates: run CERTCONN_UPDATE_SPEC=1 cargo test -p certconn-connector",
            path.display()
        );
    }

    #[test]
    fn the_openapi_document_in_the_docs_is_the_one_the_code_makes() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        for path in [
            "/connector/v1/work",
            "/connector/v1/work/{id}/ack",
            "/connector/v1/results",
            "/connector/v1/heartbeat",
            "/connector/v1/register",
            "/connector/v1/identity/renew",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
        matches_the_docs("connector-protocol.openapi.json", openapi_json());
    }

    #[test]
    fn the_schema_names_every_message_and_every_reference_resolves() {
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
        let defs = schema["$defs"].as_object().unwrap();
        for message in [
            "WorkBatch",
            "WorkItem",
            "ItemResult",
            "Heartbeat",
            "HeartbeatAnswer",
            "VersionPolicy",
            "IdentityRequest",
            "IdentityAnswer",
            "ErrorBody",
        ] {
            assert!(defs.contains_key(message), "{message} missing");
        }
        let text = json_schema();
        for (at, _) in text.match_indices("\"$ref\": \"#/$defs/") {
            let name: String = text[at + "\"$ref\": \"#/$defs/".len()..]
                .chars()
                .take_while(|c| *c != '"')
                .collect();
            assert!(defs.contains_key(&name), "$ref to {name} does not resolve");
        }
        assert!(
            !text.contains("#/components/"),
            "a reference was not rewritten"
        );
        matches_the_docs("connector-protocol.schema.json", json_schema());
    }
}
