//! Imported PFX delivery end to end: an openssl-made PKI (root → intermediate → user
//! certificates), PFX files exported by openssl (AES and 3DES), `certconn pfx import` with its
//! summary, the `pfx-import` backend's policy (chain, purpose, user, validity), the password
//! sealed for the device and read back by `openssl cms -decrypt`, and the API's refusals.
//! A last test runs an import and an issue flow with trace logging and searches the log for
//! every password and key.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::*;
use hyper::Method;
use serde_json::json;

const PASSWORD: &str = "Imp0rted-PFX-passw0rd!";

fn openssl(dir: &Path, args: &[&str]) -> String {
    run_ok(Command::new("openssl").current_dir(dir).args(args))
}

/// Writes an openssl extension section and returns its file name.
fn ext(dir: &Path, name: &str, body: &str) -> String {
    let file = format!("{name}.ext");
    std::fs::write(dir.join(&file), format!("[ext]\n{body}\n")).unwrap();
    file
}

/// The test PKI, all in `dir`: root.pem, inter.pem, other-root.pem and user certificates.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca_ext = ext(
            dir,
            "ca",
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign",
        );
        for root in ["root", "other-root"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-nodes",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-days",
                    "30",
                    "-subj",
                    &format!("/CN={root} CA/O=certconn tests"),
                    "-keyout",
                    &format!("{root}.key"),
                    "-out",
                    &format!("{root}.pem"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-subj",
                "/CN=Issuing CA/O=certconn tests",
                "-keyout",
                "inter.key",
                "-out",
                "inter.csr",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "inter.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &ca_ext,
                "-extensions",
                "ext",
                "-out",
                "inter.pem",
            ],
        );
        // For certificates with a validity in the past: `openssl ca` takes explicit dates.
        std::fs::create_dir_all(dir.join("newcerts")).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=newcerts\nserial=serial\ndefault_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n",
        )
        .unwrap();
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A user certificate as `spec` says, exported as `NAME.pfx` with `PASSWORD`.
    fn user(&self, spec: User<'_>) -> PathBuf {
        let User {
            name,
            email,
            key_usage,
            issuer,
            with_chain,
            pfx_args,
            dates,
        } = spec;
        let d = &self.dir;
        let e = ext(
            d,
            name,
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,{key_usage}\nextendedKeyUsage=emailProtection\nsubjectAltName=email:{email}"
            ),
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        match dates {
            None => openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{issuer}.pem"),
                    "-CAkey",
                    &format!("{issuer}.key"),
                    "-CAcreateserial",
                    "-days",
                    "10",
                    "-extfile",
                    &e,
                    "-extensions",
                    "ext",
                    "-out",
                    &format!("{name}.pem"),
                ],
            ),
            Some((start, end)) => openssl(
                d,
                &[
                    "ca",
                    "-batch",
                    "-config",
                    "ca.cnf",
                    "-cert",
                    &format!("{issuer}.pem"),
                    "-keyfile",
                    &format!("{issuer}.key"),
                    "-in",
                    &format!("{name}.csr"),
                    "-startdate",
                    start,
                    "-enddate",
                    end,
                    "-extfile",
                    &e,
                    "-extensions",
                    "ext",
                    "-out",
                    &format!("{name}.pem"),
                    "-notext",
                ],
            ),
        };
        let mut args = vec![
            "pkcs12",
            "-export",
            "-inkey",
            &format!("{name}.key"),
            "-in",
            &format!("{name}.pem"),
            "-passout",
            &format!("pass:{PASSWORD}"),
            "-out",
            &format!("{name}.pfx"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if with_chain {
            args.extend(["-certfile".into(), "inter.pem".into()]);
        }
        args.extend(pfx_args.iter().map(|s| s.to_string()));
        run_ok(Command::new("openssl").current_dir(d).args(&args));
        self.path(&format!("{name}.pfx"))
    }
}

/// One user certificate of the test PKI.
struct User<'a> {
    name: &'a str,
    /// The e-mail SAN.
    email: &'a str,
    key_usage: &'a str,
    /// `inter` or `other-root`.
    issuer: &'a str,
    /// Put the intermediate in the PFX.
    with_chain: bool,
    /// Extra `openssl pkcs12 -export` arguments.
    pfx_args: &'a [&'a str],
    /// Validity dates for `openssl ca`, when not "now for 10 days".
    dates: Option<(&'a str, &'a str)>,
}

impl<'a> User<'a> {
    /// An S/MIME encryption certificate for alice@example.com from the intermediate, chain included.
    fn alice(name: &'a str) -> Self {
        Self {
            name,
            email: "alice@example.com",
            key_usage: "keyEncipherment",
            issuer: "inter",
            with_chain: true,
            pfx_args: &[],
            dates: None,
        }
    }
}

/// Daemon config: the default test config plus a custody key for PFX passwords and a
/// `pfx-import` instance trusting `root.pem`, routed from the `import` profile.
fn import_config(data: &Path, pki: &Pki) -> String {
    config_text(
        data,
        &plugins(),
        &format!(
            r#"
[keys.pfx-password]
algorithm = "rsa-2048"
[backends.imports]
plugin = "pfx-import"
[backends.imports.settings_files]
trust_anchors_pem = "{}"
[profiles.import]
backend = "imports"
"#,
            pki.path("root.pem").display()
        ),
    )
}

fn pfx_import(daemon: &Daemon, password: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .env("CERTCONN_CONFIG", &daemon.config)
        .env("CERTCONN_PFX_PASSWORD", password)
        .args(["pfx", "import"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn line_for<'a>(output: &'a str, file: &Path) -> &'a str {
    let name = file.display().to_string();
    output
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("no line for {name} in\n{output}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_pfx_files_are_checked_by_policy_and_delivered_sealed_for_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let alice = pki.user(User::alice("alice"));
    let alice_3des = pki.user(User {
        email: "Alice@Example.com",
        pfx_args: &[
            "-keypbe",
            "PBE-SHA1-3DES",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
        ..User::alice("alice-3des")
    });
    let untrusted = pki.user(User {
        issuer: "other-root",
        with_chain: false,
        ..User::alice("untrusted")
    });
    let expired = pki.user(User {
        dates: Some(("20200101000000Z", "20210101000000Z")),
        ..User::alice("expired")
    });
    let signing = pki.user(User {
        key_usage: "digitalSignature",
        ..User::alice("signing")
    });
    let no_chain = pki.user(User {
        with_chain: false,
        ..User::alice("no-chain")
    });
    let (device_key, device_cert) = openssl_device(dir.path());
    let daemon = start_in(dir.path(), |data| import_config(data, &pki));
    let out_dir = dir.path().join("sealed");

    let files = [
        &alice,
        &alice_3des,
        &untrusted,
        &expired,
        &signing,
        &no_chain,
    ];
    let mut args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    args.extend([
        "--user",
        "alice@example.com",
        "--purpose",
        "smimeEncryption",
        "--recipient",
        device_cert.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    // An --out-dir that cannot be made (under a regular file) is refused before any job.
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let mut refused_args = args.clone();
    let under_file = blocked.join("sealed");
    *refused_args.last_mut().unwrap() = under_file.to_str().unwrap();
    let (succeeded, output) = pfx_import(&daemon, PASSWORD, &refused_args);
    assert!(
        !succeeded
            && output.contains(&format!(
                "--out-dir {}: this process cannot write there; nothing was submitted",
                under_file.display()
            )),
        "{output}"
    );
    let listed = ok(daemon.cli(&["jobs", "list"]));
    assert_eq!(listed.lines().count(), 1, "a job was made:\n{listed}");
    let (ok, output) = pfx_import(&daemon, PASSWORD, &args);
    assert!(!ok, "refusals must fail the command:\n{output}");
    assert!(
        output.contains("4 of 6 PFX file(s) were refused"),
        "{output}"
    );
    assert!(line_for(&output, &alice).contains("delivered"), "{output}");
    assert!(
        line_for(&output, &alice_3des).contains("delivered"),
        "{output}"
    );
    let untrusted_line = line_for(&output, &untrusted);
    assert!(
        untrusted_line.contains("does not chain to a configured trust anchor")
            && untrusted_line.contains("other-root CA"),
        "{untrusted_line}"
    );
    assert!(
        line_for(&output, &expired).contains("expired on 2021-01-01"),
        "{output}"
    );
    let signing_line = line_for(&output, &signing);
    assert!(
        signing_line.contains("not for S/MIME encryption")
            && signing_line.contains("KeyEncipherment"),
        "{signing_line}"
    );
    assert!(
        line_for(&output, &no_chain).contains("no trusted issuer found for CN=no-chain"),
        "{output}"
    );

    // The sealed passwords open with the device key and are the PFX password.
    for pfx in [&alice, &alice_3des] {
        let sealed = out_dir.join(format!(
            "{}.password.cms",
            pfx.file_name().unwrap().to_string_lossy()
        ));
        assert_eq!(openssl_unseal(&sealed, &device_cert, &device_key), PASSWORD);
    }
    // The delivered PFX is the file itself, unchanged.
    let api = daemon.client();
    let job = line_for(&output, &alice)
        .split("job ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    let answer = api
        .call(Method::GET, &format!("/v1/jobs/{job}/result"), None)
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        b64.decode(answer["result"]["pfx_base64"].as_str().unwrap())
            .unwrap(),
        std::fs::read(&alice).unwrap()
    );
    // Listings show the PFX's size and digest, not the file.
    let shown = api
        .call(Method::GET, &format!("/v1/jobs/{job}"), None)
        .await
        .unwrap();
    assert!(shown["request"]["pfx_base64"].is_null(), "{shown}");
    assert_eq!(
        shown["request"]["pfx"]["bytes"].as_u64().unwrap() as usize,
        std::fs::read(&alice).unwrap().len()
    );

    // Another user, the signing purpose, a wrong password.
    let recipient = device_cert.to_str().unwrap();
    let (ok, output) = pfx_import(
        &daemon,
        PASSWORD,
        &[
            alice.to_str().unwrap(),
            "--user",
            "bob@example.com",
            "--purpose",
            "smimeEncryption",
            "--recipient",
            recipient,
        ],
    );
    assert!(
        !ok && output.contains("is for alice@example.com, not for user bob@example.com"),
        "{output}"
    );
    let (ok, output) = pfx_import(
        &daemon,
        PASSWORD,
        &[
            signing.to_str().unwrap(),
            "--user",
            "alice@example.com",
            "--purpose",
            "smime-signing",
            "--recipient",
            recipient,
        ],
    );
    assert!(ok && output.contains("delivered"), "{output}");
    let (ok, output) = pfx_import(
        &daemon,
        "not the password",
        &[
            alice.to_str().unwrap(),
            "--user",
            "alice@example.com",
            "--purpose",
            "unassigned",
            "--recipient",
            recipient,
        ],
    );
    assert!(!ok && output.contains("wrong password"), "{output}");
    // The same file, user, purpose and device with the right password is a new attempt, not the
    // failed job again; rerunning it then is the same job (idempotent).
    let rerun = [
        alice.to_str().unwrap(),
        "--user",
        "alice@example.com",
        "--purpose",
        "unassigned",
        "--recipient",
        recipient,
    ];
    let (ok, corrected) = pfx_import(&daemon, PASSWORD, &rerun);
    assert!(ok && corrected.contains("delivered"), "{corrected}");
    let (ok, again) = pfx_import(&daemon, PASSWORD, &rerun);
    let job_of = |text: &str| {
        line_for(text, &alice)
            .split("job ")
            .nth(1)
            .map(str::to_owned)
    };
    assert!(
        ok && job_of(&again) == job_of(&corrected),
        "{corrected}\n{again}"
    );
    // An explicit --idempotency-key is a new attempt too.
    let mut named = rerun.to_vec();
    named.extend(["--idempotency-key", "second-try"]);
    let (ok, fresh) = pfx_import(&daemon, PASSWORD, &named);
    assert!(ok && job_of(&fresh) != job_of(&corrected), "{fresh}");

    // The admin's side of the format, then the API with the other accepted paddings.
    let alice_b64 = b64.encode(std::fs::read(&alice).unwrap());
    let recipient_pem = std::fs::read_to_string(&device_cert).unwrap();
    for (encrypt_with, declared, expect_ok) in [
        ("oaepSha256", "oaepSha256", true),
        ("OAEP_SHA384", "oaepSha384", true),
        ("oaepSha256", "oaepSha512", false),
    ] {
        let out = Command::new(binary())
            .env("CERTCONN_CONFIG", &daemon.config)
            .env("CERTCONN_PFX_PASSWORD", PASSWORD)
            .args([
                "pfx",
                "encrypt-password",
                "--key-name",
                "pfx-password",
                "--padding",
                encrypt_with,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let encrypted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let body = json!({
            "pfx": alice_b64,
            "encrypted_password": encrypted["encrypted_password"],
            "key_name": "pfx-password",
            "padding_scheme": declared,
            "user_principal_name": "alice@example.com",
            "intended_purpose": "smimeEncryption",
            "recipient": recipient_pem,
        });
        let accepted = api
            .call(Method::POST, "/v1/jobs/import", Some(&body))
            .await
            .unwrap();
        let id = accepted["job"]["id"].as_str().unwrap();
        let job = wait_job(&api, id, std::time::Duration::from_secs(30)).await;
        if expect_ok {
            assert_eq!(job["state"], "succeeded", "{encrypt_with}: {job}");
        } else {
            assert_eq!(job["state"], "failed", "{job}");
            let e = job["last_error"].as_str().unwrap();
            assert!(
                e.contains("does not decrypt with custody key \"pfx-password\" and oaepSha512"),
                "{e}"
            );
            // Said once, without the job id repeated in front.
            assert!(!e.contains("job "), "{e}");
        }
    }

    // The admin's side done with OpenSSL, as docs/operations.md shows it: OAEP with SHA-512
    // and MGF1-SHA-512.
    let public = dir.path().join("pfx-password.pem");
    let key = api
        .call(Method::GET, "/v1/keys/pfx-password", None)
        .await
        .unwrap();
    std::fs::write(&public, key["public_key_pem"].as_str().unwrap()).unwrap();
    let password_file = dir.path().join("pw.txt");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let encrypted = run_ok(Command::new("sh").arg("-c").arg(format!(
        "openssl pkeyutl -encrypt -pubin -inkey {} -pkeyopt rsa_padding_mode:oaep \
         -pkeyopt rsa_oaep_md:sha512 -pkeyopt rsa_mgf1_md:sha512 -in {} | base64 -w0",
        public.display(),
        password_file.display()
    )));
    let body = json!({
        "pfx": alice_b64,
        "encrypted_password": encrypted.trim(),
        "key_name": "pfx-password",
        "user_principal_name": "alice@example.com",
        "intended_purpose": "smimeEncryption",
        "recipient": recipient_pem,
        "idempotency_key": "openssl-side",
    });
    let accepted = api
        .call(Method::POST, "/v1/jobs/import", Some(&body))
        .await
        .unwrap();
    let job = wait_job(
        &api,
        accepted["job"]["id"].as_str().unwrap(),
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");

    // Once an import has ended, succeeded or failed, the journal keeps neither its PFX nor its
    // encrypted password: only their size and digest. And it cannot be retried: a new attempt
    // is a new submission with what the administrator gives now.
    let db = rusqlite::Connection::open(dir.path().join("data/journal.sqlite")).unwrap();
    let requests: Vec<(String, String, String)> = db
        .prepare("SELECT id, state, request FROM jobs WHERE kind = 'import'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(requests.len() >= 3, "{requests:?}");
    let mut failed = None;
    for (id, state, request) in &requests {
        assert!(state == "succeeded" || state == "failed", "{id} is {state}");
        assert!(
            !request.contains("pfx_base64") && !request.contains("encrypted_password_base64"),
            "job {id} ({state}) kept its secrets: {request}"
        );
        assert!(request.contains("\"sha256\""), "{request}");
        if state == "failed" {
            failed = Some(id.clone());
        }
    }
    let failed = failed.expect("a failed import");
    let e = api
        .call(Method::POST, &format!("/v1/jobs/{failed}/retry"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("submit it again"), "{e}");

    // Intake refuses what it can see without the key, naming the field.
    let base = json!({
        "pfx": alice_b64,
        "encrypted_password": b64.encode([7u8; 256]),
        "key_name": "pfx-password",
        "user_principal_name": "alice@example.com",
        "intended_purpose": "smimeEncryption",
        "recipient": recipient_pem,
    });
    for (field, value, expect) in [
        ("padding_scheme", json!("pkcs1"), "retired"),
        ("intended_purpose", json!("vpn"), "unknown purpose"),
        (
            "key_name",
            json!("no-such-key"),
            "key_name: no custody key named",
        ),
        (
            "key_name",
            json!("local-ca"),
            "EC P-256; PFX passwords are encrypted to an RSA key",
        ),
        ("pfx", json!("%%%"), "pfx: not base64"),
        (
            "pfx",
            json!(b64.encode(b"MZ this is not a PFX at all")),
            "pfx: not a PKCS#12 file",
        ),
        (
            "encrypted_password",
            json!(b64.encode([1u8; 100])),
            "was it encrypted to another key?",
        ),
        (
            "user_principal_name",
            json!("alice smith"),
            "user_principal_name: must be",
        ),
        ("recipient", json!("not a certificate"), "recipient"),
        ("profile", json!("nope"), "no profile named \"nope\""),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let e = api
            .call(Method::POST, "/v1/jobs/import", Some(&body))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{field}: {e}");
    }
}

/// Every base64 and hex rendering of a window of `secret` that could appear in a log line.
fn renderings(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    // 24-byte windows every 24 bytes, and for base64 also shifted by 1 and 2 bytes: a leak of
    // 72 bytes or more, hex or base64 at any alignment, contains one of these.
    for start in (0..secret.len().saturating_sub(26)).step_by(24) {
        out.push(hex::encode(&secret[start..start + 24]));
        for shift in 0..3 {
            out.push(b64.encode(&secret[start + shift..start + shift + 24]));
        }
    }
    out
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_or_key_reaches_the_log_during_import_and_issue() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let alice = pki.user(User::alice("alice"));
    let (_device_key, device_cert) = openssl_device(dir.path());
    let config = dir.path().join("certconn.toml");
    std::fs::write(&config, import_config(&dir.path().join("data"), &pki)).unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon::start_with_env(
        &config,
        &log,
        // Everything at trace, except the compiler's own chatter about plugin code.
        vec![(
            "CERTCONN_LOG".into(),
            "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,wasmtime_cranelift=info".into(),
        )],
    );

    let (ok, import_output) = pfx_import(
        &daemon,
        PASSWORD,
        &[
            alice.to_str().unwrap(),
            "--user",
            "alice@example.com",
            "--purpose",
            "smimeEncryption",
            "--recipient",
            device_cert.to_str().unwrap(),
        ],
    );
    assert!(ok, "{import_output}");
    let (ok, failed_output) = pfx_import(
        &daemon,
        "Wr0ng-but-secret-passw0rd",
        &[
            alice.to_str().unwrap(),
            "--user",
            "alice@example.com",
            "--purpose",
            "smimeSigning",
            "--recipient",
            device_cert.to_str().unwrap(),
        ],
    );
    assert!(!ok, "{failed_output}");
    let issued = dir.path().join("issued.pfx");
    let issued_password = issue_pfx(&daemon, "smime", "CN=log check", &issued);
    daemon.stop();

    let issued_key = dir.path().join("issued.key");
    run_ok(
        Command::new("openssl")
            .args(["pkcs12", "-nocerts", "-nodes", "-passin"])
            .arg(format!("pass:{issued_password}"))
            .arg("-in")
            .arg(&issued)
            .arg("-out")
            .arg(&issued_key),
    );
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    let keys: Vec<(&str, Vec<u8>)> = vec![
        (
            "the imported PFX's private key",
            pem_der(&pki.path("alice.key")),
        ),
        ("the issued device key", pem_der(&issued_key)),
        (
            "the PFX-password custody key",
            std::fs::read(dir.path().join("data/keys/pfx-password.key")).unwrap(),
        ),
        (
            "the local CA key",
            std::fs::read(dir.path().join("data/keys/local-ca.key")).unwrap(),
        ),
    ];
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("\"level\":\"TRACE\""),
        "the daemon did not log at trace level; the search would prove nothing:\n{}",
        &text[..text.len().min(2000)]
    );
    for (haystack_name, haystack) in [
        ("daemon log", &text),
        ("pfx import output", &import_output),
        ("failed pfx import output", &failed_output),
    ] {
        for (what, secret) in [
            ("the imported PFX's password", PASSWORD),
            ("a wrong PFX password", "Wr0ng-but-secret-passw0rd"),
            ("the issued PFX's password", issued_password.as_str()),
            ("the API token", token.trim()),
        ] {
            assert!(
                !haystack.contains(secret),
                "{what} is in the {haystack_name}"
            );
        }
        for (what, der) in &keys {
            assert!(der.len() > 100, "{what} was not read");
            for r in renderings(der) {
                assert!(
                    !haystack.contains(&r),
                    "{what} is in the {haystack_name} ({r})"
                );
            }
        }
    }
}
