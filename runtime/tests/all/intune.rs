//! certconn's SCEP server with Intune deciding the challenges (`scep.challenge = "intune"`),
//! against a mock of Entra ID, Microsoft Graph and Intune's SCEP validation service built from
//! the wire formats in `runtime/tests/data/intune/` (copied from the shared fixtures, with their README): the mock checks every header and body and
//! records what it saw. A real SCEP client (micromdm's `scepclient`) enrols; the device's
//! subject tells the mock how to answer.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use common::*;
use serde_json::{json, Value};

const TENANT: &str = "contoso.onmicrosoft.com";
const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "app-secret-<&>-value";
const INTUNE_APP: &str = "0000000a-0000-0000-c000-000000000000";

/// What the mock saw and how it answers.
#[derive(Default)]
struct Mock {
    port: u16,
    /// How long the tokens it hands out live, in seconds.
    token_seconds: u64,
    /// Every call: `token:<scope>`, `discovery`, `validateRequest`, ….
    calls: Vec<String>,
    /// The bodies of the SCEP actions, in order.
    bodies: Vec<(String, Value)>,
    /// What did not match the wire format: the test fails on any.
    violations: Vec<String>,
    /// Tokens handed out and when they expire.
    tokens: Vec<(String, String, Instant)>,
    next: u32,
    /// Revocation requests Intune holds, and the results uploaded for them.
    revocations: Vec<Value>,
    results: Vec<Value>,
    /// With a certificate credential: the app's certificate (DER), whose key must sign the
    /// client assertion; no secret may come.
    assertion_cert: Option<Vec<u8>>,
}

type Shared = Arc<Mutex<Mock>>;

fn fixture(path: &str) -> Value {
    let file = common::repo_root()
        .join("runtime/tests/data/intune")
        .join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_str(&text).unwrap()
}

/// The keys of `value`'s object at `pointer`.
fn keys(value: &Value, pointer: &str) -> BTreeSet<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn is_guid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Mock {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    /// The bearer token, if it is one the mock gave for `scope` and it has not expired.
    fn check_token(&mut self, headers: &HeaderMap, scope: &str, call: &str) -> bool {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        match self.tokens.iter().find(|(t, _, _)| *t == presented) {
            Some((_, s, _)) if s != scope => {
                self.violation(format!("{call}: a token for {s}, not {scope}"));
                false
            }
            Some((_, _, until)) if Instant::now() >= *until => false,
            Some(_) => true,
            None => {
                self.violation(format!("{call}: unknown token {presented:?}"));
                false
            }
        }
    }

    fn check_request_id(&mut self, headers: &HeaderMap, call: &str) {
        let id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_guid(id) {
            self.violation(format!("{call}: client-request-id {id:?} is not a GUID"));
        }
    }
}

async fn token(
    State(mock): State<Shared>,
    UrlPath(tenant): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut m = mock.lock().unwrap();
    if tenant != TENANT {
        m.violation(format!("token: tenant {tenant}"));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        m.violation(format!(
            "token: content-type {:?}",
            headers.get("content-type")
        ));
    }
    let form: std::collections::HashMap<String, String> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            (k.to_owned(), v)
        })
        .collect();
    let scope = form.get("scope").cloned().unwrap_or_default();
    let credential = match m.assertion_cert.clone() {
        Some(cert) => {
            let audience = format!("http://127.0.0.1:{}/{TENANT}/oauth2/v2.0/token", m.port);
            if let Err(why) = check_assertion(&form, &cert, &audience) {
                m.violation(format!("token: the client assertion: {why}"));
            }
            ("grant_type", "client_credentials")
        }
        None => ("client_secret", SECRET),
    };
    for (field, want) in [
        ("client_id", APP_ID),
        credential,
        ("grant_type", "client_credentials"),
    ] {
        if form.get(field).map(String::as_str) != Some(want) {
            m.violation(format!("token: {field} = {:?}", form.get(field)));
        }
    }
    let graph = "https://graph.microsoft.com/.default";
    let intune = "https://api.manage.microsoft.com//.default";
    if scope != graph && scope != intune {
        m.violation(format!("token: scope {scope:?}"));
    }
    m.calls.push(format!("token:{scope}"));
    m.next += 1;
    let token = format!("token-{}", m.next);
    let lifetime = m.token_seconds;
    m.tokens.push((
        token.clone(),
        scope,
        Instant::now() + Duration::from_secs(lifetime),
    ));
    let mut answer = fixture("01a-token-for-graph/response.json");
    answer["access_token"] = json!(token);
    answer["expires_in"] = json!(lifetime);
    Json(answer).into_response()
}

/// A client assertion as Entra ID checks it: RS256 over the header and claims, by the key of
/// `cert`, which `x5t` names; for this app, at this token endpoint, not expired; and no secret.
fn check_assertion(
    form: &std::collections::HashMap<String, String>,
    cert: &[u8],
    audience: &str,
) -> Result<(), String> {
    use der::Decode;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if form.contains_key("client_secret") {
        return Err("a client secret came too".into());
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err(format!(
            "client_assertion_type {:?}",
            form.get("client_assertion_type")
        ));
    }
    let jwt = form.get("client_assertion").ok_or("no client_assertion")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(format!("{} parts", parts.len()));
    };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = b64.decode(part).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let (h, c) = (decode(header)?, decode(claims)?);
    let thumbprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert);
    if h["alg"] != "RS256" || h["x5t"] != json!(b64.encode(thumbprint.as_ref())) {
        return Err(format!("header {h}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if c["aud"] != audience
        || c["iss"] != APP_ID
        || c["sub"] != APP_ID
        || c["exp"].as_u64().is_none_or(|exp| exp <= now)
        || c["jti"].as_str().is_none_or(|j| !is_guid(j))
    {
        return Err(format!("claims {c}"));
    }
    let parsed = x509_cert::Certificate::from_der(cert).map_err(|e| e.to_string())?;
    let spki = parsed
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let signature = b64.decode(signature).map_err(|e| e.to_string())?;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        spki,
    )
    .verify(format!("{header}.{claims}").as_bytes(), &signature)
    .map_err(|_| "the signature does not verify with the app's certificate".to_owned())
}

async fn discovery(State(mock): State<Shared>, headers: HeaderMap) -> Response {
    let mut m = mock.lock().unwrap();
    m.calls.push("discovery".into());
    m.check_request_id(&headers, "discovery");
    if !m.check_token(
        &headers,
        "https://graph.microsoft.com/.default",
        "discovery",
    ) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut answer = fixture("02-graph-service-discovery/response.json");
    let port = m.port;
    for endpoint in answer["value"].as_array_mut().unwrap() {
        let name = endpoint["providerName"].as_str().unwrap().to_owned();
        endpoint["uri"] = json!(format!("http://127.0.0.1:{port}/{name}/Gateway"));
    }
    Json(answer).into_response()
}

/// The device's CN in a request's `certificateRequest` (base64 DER PKCS#10).
fn device_of(body: &Value, pointer: &str) -> String {
    use der::Decode;
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            body.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
        .unwrap_or_default();
    x509_cert::request::CertReq::from_der(&der)
        .map(|c| c.info.subject.to_string())
        .unwrap_or_else(|e| format!("<not a CSR: {e}>"))
}

async fn scep_action(
    State(mock): State<Shared>,
    UrlPath(action): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut m = mock.lock().unwrap();
    m.calls.push(action.clone());
    m.check_request_id(&headers, &action);
    for (header, want) in [
        ("api-version", "2018-02-20"),
        ("content-type", "application/json; charset=utf-8"),
    ] {
        if headers.get(header).and_then(|v| v.to_str().ok()) != Some(want) {
            m.violation(format!("{action}: {header} {:?}", headers.get(header)));
        }
    }
    if !m.check_token(
        &headers,
        "https://api.manage.microsoft.com//.default",
        &action,
    ) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (fixture_dir, outer) = match action.as_str() {
        "validateRequest" => ("03-scep-validateRequest", "/request"),
        "successNotification" => ("04-scep-successNotification", "/notification"),
        "failureNotification" => ("05-scep-failureNotification", "/notification"),
        other => {
            m.violation(format!("an unknown action {other}"));
            return StatusCode::NOT_FOUND.into_response();
        }
    };
    let want = fixture(&format!("{fixture_dir}/request.json"));
    if keys(&body, outer) != keys(&want, outer) || keys(&body, "") != keys(&want, "") {
        m.violation(format!(
            "{action}: body {body} has other fields than {want}"
        ));
    }
    if body.pointer(&format!("{outer}/callerInfo")) != Some(&json!("certconn-test/1.0")) {
        m.violation(format!("{action}: callerInfo in {body}"));
    }
    let device = device_of(&body, &format!("{outer}/certificateRequest"));
    m.bodies.push((action.clone(), body));
    drop(m);
    let fail = |code: StatusCode| (code, "an error the test asked for").into_response();
    match action.as_str() {
        "validateRequest" if device.contains("v429") => {
            let mut answer = fail(StatusCode::TOO_MANY_REQUESTS);
            answer
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            answer
        }
        "validateRequest" if device.contains("code-") => {
            let code = device.split("code-").nth(1).unwrap_or_default().to_owned();
            Json(json!({ "code": code, "errorDescription": "refused by the test" })).into_response()
        }
        "validateRequest" if device.contains("v500") => fail(StatusCode::INTERNAL_SERVER_ERROR),
        "validateRequest" if device.contains("refuse") => {
            Json(fixture("03-scep-validateRequest/response.error.json")).into_response()
        }
        "successNotification" if device.contains("n500") => fail(StatusCode::INTERNAL_SERVER_ERROR),
        _ => Json(fixture("03-scep-validateRequest/response.json")).into_response(),
    }
}

async fn pki_action(
    State(mock): State<Shared>,
    UrlPath(action): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut m = mock.lock().unwrap();
    m.calls.push(action.clone());
    m.check_request_id(&headers, &action);
    if headers.get("api-version").and_then(|v| v.to_str().ok()) != Some("5019-05-05") {
        m.violation(format!(
            "{action}: api-version {:?}",
            headers.get("api-version")
        ));
    }
    if !m.check_token(
        &headers,
        "https://api.manage.microsoft.com//.default",
        &action,
    ) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match action.as_str() {
        "downloadRevocationRequests" => {
            let want = fixture("06-pki-downloadRevocationRequests/request.json");
            if keys(&body, "/downloadParameters") != keys(&want, "/downloadParameters") {
                m.violation(format!("{action}: body {body}"));
            }
            let max = body["downloadParameters"]["maxRequests"]
                .as_u64()
                .unwrap_or(0);
            if !(1..=500).contains(&max) {
                m.violation(format!("{action}: maxRequests {max}"));
            }
            let answered: BTreeSet<String> = m
                .results
                .iter()
                .filter_map(|r| r["requestContext"].as_str().map(str::to_owned))
                .collect();
            let value: Vec<Value> = m
                .revocations
                .iter()
                .filter(|r| !answered.contains(r["requestContext"].as_str().unwrap_or("")))
                .take(max as usize)
                .cloned()
                .collect();
            Json(json!({ "value": value })).into_response()
        }
        "uploadRevocationResults" => {
            let want = fixture("07-pki-uploadRevocationResults/request.json");
            let results = body["results"].as_array().cloned().unwrap_or_default();
            if results.is_empty() || keys(&body, "") != keys(&want, "") {
                m.violation(format!("{action}: body {body}"));
            }
            for r in &results {
                if keys(r, "") != keys(&want, "/results/0") {
                    m.violation(format!("{action}: result {r}"));
                }
                let ok = r["succeeded"] == true;
                if ok != (r["errorCode"] == "0") {
                    m.violation(format!("{action}: succeeded and errorCode disagree in {r}"));
                }
            }
            m.results.extend(results);
            Json(fixture("07-pki-uploadRevocationResults/response.json")).into_response()
        }
        other => {
            m.violation(format!("an unknown action {other}"));
            StatusCode::NOT_FOUND.into_response()
        }
    }
}

/// The mock on a port bound before the daemon starts; it runs until the test ends.
fn start_mock(token_seconds: u64) -> Shared {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mock = Arc::new(Mutex::new(Mock {
        port: listener.local_addr().unwrap().port(),
        token_seconds,
        ..Default::default()
    }));
    let state = mock.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = Router::new()
                .route("/{tenant}/oauth2/v2.0/token", post(token))
                .route(
                    &format!("/v1.0/servicePrincipals/appId={INTUNE_APP}/endpoints"),
                    get(discovery),
                )
                .route(
                    "/ScepRequestValidationFEService/Gateway/ScepActions/{action}",
                    post(scep_action),
                )
                .route(
                    "/PkiConnectorFEService/Gateway/CertificateAuthorityRequests/{action}",
                    post(pki_action),
                )
                .with_state(state);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    mock
}

/// A daemon whose SCEP server asks the mock Intune at `port`.
fn start_daemon(dir: &Path, mock: &Shared) -> Daemon {
    start_daemon_with(dir, mock, "")
}

/// [`start_daemon`] with more `[intune]` settings.
fn start_daemon_with(dir: &Path, mock: &Shared, intune: &str) -> Daemon {
    let secret = dir.join("intune-secret");
    write_private(&secret, SECRET);
    let credential = format!("client_secret_file = \"{}\"\n{intune}", secret.display());
    let config = write_config(dir, mock, &credential);
    Daemon::start(&config, &dir.join("daemon.log"))
}

/// `dir/certconn.toml`: the test CA (RSA), the SCEP server with Intune deciding challenges,
/// and `[intune]` at the mock with `credential` (and any more settings).
fn write_config(dir: &Path, mock: &Shared, credential: &str) -> PathBuf {
    let port = mock.lock().unwrap().port;
    let challenge = dir.join("challenge");
    write_private(&challenge, "static-Secret-42\n");
    let extra = format!(
        "{scep}challenge = \"intune\"\n\n[intune]\ntenant = \"{TENANT}\"\napp_id = \"{APP_ID}\"\n\
         provider_name_and_version = \"certconn-test/1.0\"\n\
         authority = \"http://127.0.0.1:{port}/\"\ngraph_url = \"http://127.0.0.1:{port}/\"\n{credential}\n\
         [crypto]\nallow_single_des = true\n",
        scep = scep_section(&challenge),
    );
    let config = dir.join("certconn.toml");
    let text = config_text(&dir.join("data"), &plugins(), &extra)
        .replace("algorithm = \"ec-p256\"", "algorithm = \"rsa-2048\"");
    std::fs::write(&config, text).unwrap();
    config
}

/// A device enrolling with an Intune challenge (opaque to certconn: Intune decides).
fn scepclient(daemon: &Daemon, dir: &Path, name: &str) -> (Output, PathBuf) {
    common::scepclient(daemon, dir, name, "an-intune-challenge-blob")
}

/// The enrolment succeeded; else its output and the daemon's log.
fn enrolled(out: &Output, daemon: &Daemon) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
}

fn calls(mock: &Shared) -> Vec<String> {
    mock.lock().unwrap().calls.clone()
}

fn bodies(mock: &Shared, action: &str) -> Vec<Value> {
    mock.lock()
        .unwrap()
        .bodies
        .iter()
        .filter(|(a, _)| a == action)
        .map(|(_, b)| b.clone())
        .collect()
}

fn no_violations(mock: &Shared) {
    let violations = mock.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn intune_validates_each_request_and_hears_of_each_certificate_before_the_device_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(3600);
    let daemon = start_daemon(dir.path(), &mock);

    let (out, cert) = scepclient(&daemon, dir.path(), "ok-device-1");
    enrolled(&out, &daemon);
    assert_eq!(
        calls(&mock),
        [
            "token:https://graph.microsoft.com/.default",
            "discovery",
            "token:https://api.manage.microsoft.com//.default",
            "validateRequest",
            "successNotification",
        ]
    );
    let validate = &bodies(&mock, "validateRequest")[0]["request"];
    let success = &bodies(&mock, "successNotification")[0]["notification"];
    assert_eq!(validate["transactionId"], success["transactionId"]);
    assert_eq!(
        validate["certificateRequest"],
        success["certificateRequest"]
    );
    // What Intune is told is the certificate the device got: thumbprint (SHA-1, upper-case
    // hex), serial, expiry, issuer — read back by openssl.
    let fingerprint = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(&cert),
    );
    let thumbprint = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "");
    assert_eq!(success["certificateThumbprint"], json!(thumbprint));
    let serial = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&cert),
    );
    let serial = serial
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0');
    assert_eq!(
        success["certificateSerialNumber"]
            .as_str()
            .unwrap()
            .trim_start_matches('0'),
        serial
    );
    assert!(
        success["certificateExpirationDateUtc"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z') && d.contains('T')),
        "{success}"
    );
    assert!(
        success["issuingCertificateAuthority"]
            .as_str()
            .is_some_and(|i| i.contains("certconn Test CA")),
        "{success}"
    );

    // A second device: the tokens and the discovery are reused.
    let (out, _) = scepclient(&daemon, dir.path(), "ok-device-2");
    enrolled(&out, &daemon);
    assert_eq!(calls(&mock).len(), 7, "{:?}", calls(&mock));
    no_violations(&mock);
}

#[test]
fn a_refusal_or_an_unreachable_validation_or_notification_gives_the_device_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(3600);
    let daemon = start_daemon(dir.path(), &mock);

    // Intune refuses (ChallengeDecryptionError): nothing issued, nothing journaled.
    let (out, cert) = scepclient(&daemon, dir.path(), "refuse-device");
    assert!(!out.status.success() && !cert.exists());
    assert_eq!(jobs_total(&daemon), 0);
    // validateRequest answers 500: fail closed, and the next call discovers again.
    let discoveries = |m: &Shared| calls(m).iter().filter(|c| *c == "discovery").count();
    assert_eq!(discoveries(&mock), 1);
    let (out, cert) = scepclient(&daemon, dir.path(), "v500-device");
    assert!(!out.status.success() && !cert.exists());
    assert_eq!(jobs_total(&daemon), 0);
    let (out, _) = scepclient(&daemon, dir.path(), "ok-after-500");
    enrolled(&out, &daemon);
    assert_eq!(
        discoveries(&mock),
        2,
        "the discovery cache is cleared after a failure"
    );

    // successNotification answers 500: issued, but the device does not get it, and Intune
    // hears that it was not delivered.
    let (out, cert) = scepclient(&daemon, dir.path(), "n500-device");
    assert!(!out.status.success() && !cert.exists());
    let failures = bodies(&mock, "failureNotification");
    assert_eq!(failures.len(), 1, "{failures:?}");
    let notified = &failures[0]["notification"];
    assert!(
        notified["errorDescription"]
            .as_str()
            .is_some_and(|d| d.contains("withheld")),
        "{notified}"
    );
    assert!(notified["hResult"].as_i64().is_some(), "{notified}");
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(!refused.is_empty());
    no_violations(&mock);
}

#[test]
fn an_expired_token_is_replaced_before_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    // Tokens live 2 s: certconn fetches a new one before it uses an expired one (the mock
    // answers 401 to an expired token, and the enrolment would fail).
    let mock = start_mock(2);
    let daemon = start_daemon(dir.path(), &mock);
    let (out, _) = scepclient(&daemon, dir.path(), "ok-early");
    enrolled(&out, &daemon);
    let first: Instant = Instant::now();
    while first.elapsed() < Duration::from_millis(2_500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, _) = scepclient(&daemon, dir.path(), "ok-late");
    enrolled(&out, &daemon);
    let intune_tokens = calls(&mock)
        .iter()
        .filter(|c| c.as_str() == "token:https://api.manage.microsoft.com//.default")
        .count();
    assert_eq!(intune_tokens, 2, "{:?}", calls(&mock));
    no_violations(&mock);
}

#[test]
fn intunes_revocation_requests_are_revoked_and_each_gets_its_result_code() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(3600);
    let daemon = start_daemon_with(
        dir.path(),
        &mock,
        "revocation = true\nrevocation_interval_seconds = 1\n",
    );
    // A certificate certconn issued (through Intune-validated SCEP) to be revoked.
    let (out, cert) = scepclient(&daemon, dir.path(), "ok-to-revoke");
    enrolled(&out, &daemon);
    let serial = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&cert),
    );
    let serial = serial.trim().trim_start_matches("serial=").to_owned();
    let request = |context: &str, serial: &str| {
        let mut r = fixture("06-pki-downloadRevocationRequests/response.json")["value"][0].clone();
        r["requestContext"] = json!(context);
        r["serialNumber"] = json!(serial);
        r
    };
    mock.lock().unwrap().revocations.extend([
        request("ctx-issued", &serial),
        request("ctx-unknown", "0badc0de"),
        request("ctx-malformed", "not-hex!"),
    ]);
    let wait_results = |n: usize| {
        let start = Instant::now();
        loop {
            let results = mock.lock().unwrap().results.clone();
            if results.len() >= n {
                return results;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{n} results never came: {results:?}\n{}",
                std::fs::read_to_string(&daemon.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let results = wait_results(3);
    let code_of = |results: &[Value], context: &str| {
        let r = results
            .iter()
            .find(|r| r["requestContext"] == context)
            .unwrap_or_else(|| panic!("no result for {context}: {results:?}"));
        (
            r["succeeded"].as_bool().unwrap(),
            r["errorCode"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(code_of(&results, "ctx-issued"), (true, "0".to_owned()));
    assert_eq!(code_of(&results, "ctx-unknown"), (false, "4004".to_owned()));
    assert_eq!(
        code_of(&results, "ctx-malformed"),
        (false, "4002".to_owned())
    );
    // Revoked at the CA: certconn's ledger says so.
    let shown = ok(daemon.cli(&["certs", "show", &serial.to_ascii_lowercase()]));
    assert!(shown.to_ascii_lowercase().contains("revoked"), "{shown}");

    // The same certificate asked again (another request): already revoked.
    mock.lock()
        .unwrap()
        .revocations
        .push(request("ctx-again", &serial));
    let results = wait_results(4);
    assert_eq!(code_of(&results, "ctx-again"), (false, "4005".to_owned()));
    // Each request answered once.
    assert_eq!(results.len(), 4, "{results:?}");
    // The source in the status: connected, what it did, nothing owed. The mock holds the last
    // result before certconn has counted it: wait for that.
    let start = Instant::now();
    let intune = loop {
        let (code, health) = http_get(daemon.port, "/v1/health", None);
        assert_eq!(code, 200);
        let health: Value = serde_json::from_str(&health).unwrap();
        let intune = health["intune_revocation"].clone();
        if intune["delivered"] == 4 && intune["backlog"]["owed"] == 0 {
            break intune;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{intune}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(intune["connected"], true, "{intune}");
    assert_eq!(intune["received"], 1, "one request became a job: {intune}");
    let out = ok(daemon.cli(&["status"]));
    assert!(
        out.contains("intune revocation requests: connected")
            && out.contains("1 received, 4 results sent"),
        "{out}"
    );
    no_violations(&mock);
}

/// Intune's validation codes other than Success (IntuneScepServiceException.cs).
const FAILURE_CODES: [&str; 24] = [
    "Unknown",
    "CertificateRequestDecodingFailed",
    "ChallengePasswordMissing",
    "ChallengeDeserializationError",
    "ChallengeDecryptionError",
    "ChallengeDecodingError",
    "ChallengeInvalidTimestamp",
    "ChallengeExpired",
    "SubjectNameMissing",
    "SubjectNameMismatch",
    "SubjectAltNameMissing",
    "SubjectAltNameMismatch",
    "KeyUsageMismatch",
    "KeyLengthMismatch",
    "EnhancedKeyUsageMissing",
    "EnhancedKeyUsageMismatch",
    "AadKeyIdentifierListMissing",
    "RegisteredKeyMismatch",
    "SigningCertThumbprintMismatch",
    "ScepProfileNoLongerTargetedToTheClient",
    "SignatureValidationFailed",
    "BadCertificateRequestIdInChallenge",
    "BadDeviceIdInChallenge",
    "BadUserIdInChallenge",
];

#[test]
fn every_failure_code_and_a_429_refuse_the_request_and_issue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(3600);
    let daemon = start_daemon(dir.path(), &mock);
    for code in FAILURE_CODES {
        let (out, cert) = scepclient(&daemon, dir.path(), &format!("code-{code}"));
        assert!(!out.status.success() && !cert.exists(), "{code}");
        let log = std::fs::read_to_string(&daemon.log).unwrap();
        assert!(
            log.lines().any(|l| l.contains("\"event_id\":4603")
                && l.contains(&format!("Intune answered {code}"))),
            "{code}: the refusal names the code"
        );
    }
    // Too many requests: refused too (fail closed), and the next device gets through.
    let (out, cert) = scepclient(&daemon, dir.path(), "v429-device");
    assert!(!out.status.success() && !cert.exists());
    assert_eq!(
        jobs_total(&daemon),
        0,
        "nothing was journaled for a refused request"
    );
    let (out, _) = scepclient(&daemon, dir.path(), "ok-after-429");
    enrolled(&out, &daemon);
    no_violations(&mock);
}

#[test]
fn a_certificate_credential_signs_a_client_assertion_in_custody_and_no_secret_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(3600);
    // The app's certificate, registered on the app; its key imported into custody.
    let (key, cert) = openssl_self_signed(dir.path(), "intune-app", &["-newkey", "rsa:2048"]);
    let pfx = dir.path().join("intune-app.p12");
    run_ok(
        Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:app-pfx", "-inkey"])
            .arg(&key)
            .arg("-in")
            .arg(&cert)
            .arg("-out")
            .arg(&pfx),
    );
    let der =
        certconn_x509::pem::certificate_from_pem_or_der(&std::fs::read(&cert).unwrap()).unwrap();
    mock.lock().unwrap().assertion_cert = Some(der);
    let config = write_config(
        dir.path(),
        &mock,
        "certificate_key = \"intune-app\"\n\n[keys.intune-app]\nalgorithm = \"rsa-2048\"\nrole = \"signing\"\n",
    );
    ok(Command::new(binary())
        .env("CERTCONN_PFX_PASSWORD", "app-pfx")
        .args(["keys", "import", "intune-app", "--pfx"])
        .arg(&pfx)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap());
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let (out, cert) = scepclient(&daemon, dir.path(), "ok-assertion");
    enrolled(&out, &daemon);
    assert!(cert.exists());
    let tokens = calls(&mock)
        .iter()
        .filter(|c| c.starts_with("token:"))
        .count();
    assert_eq!(tokens, 2, "{:?}", calls(&mock));
    no_violations(&mock);
}
