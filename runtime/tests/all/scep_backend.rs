//! The `scep` backend (the SDK's SCEP client in a plugin) enrols end to end: against certconn's
//! own SCEP server, and against micromdm's `scepserver` (Debian package `scep`) — which binds
//! every interface, so it runs with the daemon inside a private network namespace that has only
//! loopback (`unshare --net`).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

const CHALLENGE: &str = "static-Secret-42";

/// One daemon that is both ends: profile `scep-device` goes to the `scep` backend, which enrols
/// at this daemon's own SCEP server (reached through `port`, a [`Relay`] to it), which routes
/// to the local CA.
fn self_loop_config(data: &Path, port: u16, challenge_file: &Path, backend_extra: &str) -> String {
    let extra = format!(
        r#"{scep}
[backends.scep-ca]
plugin = "scep"
http = {{ allow = ["127.0.0.1:{port}"] }}
[backends.scep-ca.settings]
url = "http://127.0.0.1:{port}/scep"
challenge = "{CHALLENGE}"
{backend_extra}
[profiles.scep-device]
backend = "scep-ca"
key_algorithm = "rsa-2048"
"#,
        scep = scep_section(challenge_file),
    );
    config_text(data, &plugins(), &extra)
        .replace("algorithm = \"ec-p256\"", "algorithm = \"rsa-2048\"")
}

/// A daemon whose `scep` backend enrols at its own SCEP server, and the relay that lets it.
fn start_loop(dir: &Path, backend_extra: &str) -> (Daemon, Relay) {
    start_loop_with(dir, |data, port, challenge| {
        self_loop_config(data, port, challenge, backend_extra)
    })
}

fn start_loop_with(
    dir: &Path,
    config: impl FnOnce(&Path, u16, &Path) -> String,
) -> (Daemon, Relay) {
    let challenge = dir.join("challenge");
    write_private(&challenge, CHALLENGE);
    let relay = Relay::new();
    let daemon = start_in(dir, |data| config(data, relay.port, &challenge));
    relay.to(&daemon);
    (daemon, relay)
}

fn issue(daemon: &Daemon, dir: &Path, name: &str) -> std::process::Output {
    daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "scep-device",
        "--subject",
        &format!("CN={name},O=Example"),
        "--out",
        dir.join(format!("{name}.pfx")).to_str().unwrap(),
    ])
}

#[test]
fn scep_backend_enrols_at_certconns_own_scep_server() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _relay) = start_loop(dir.path(), "");
    let out = issue(&daemon, dir.path(), "scep-device-1");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "issue through SCEP failed:\n{stdout}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let password = shown_password(&stdout);
    let pfx = dir.path().join("scep-device-1.pfx");
    assert!(
        openssl_pkcs12_info(&pfx, &password).contains("Shrouded Keybag"),
        "the PFX holds the key"
    );
    let info = run_ok(Command::new("bash").arg("-c").arg(format!(
        "openssl pkcs12 -in {} -passin pass:{password} -nokeys -clcerts | openssl x509 -noout -subject -issuer",
        pfx.display()
    )));
    assert!(
        info.contains("CN = scep-device-1") || info.contains("CN=scep-device-1"),
        "{info}"
    );
    assert!(
        info.contains("certconn Test CA"),
        "issued by the local CA behind the SCEP server: {info}"
    );
    // Two jobs: the one submitted (scep backend) and the one the SCEP server made (local CA).
    let jobs = ok(daemon.cli(&["jobs", "list", "--json"]));
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    let sources: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["source"].as_str())
        .collect();
    assert!(sources.contains(&"scep"), "{sources:?}");
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains(CHALLENGE), "the challenge is not logged");
    // Asking for `current` (no renewal here) is how the backend finds out; not a denial.
    assert!(!log.contains("was not granted"), "{log}");
}

/// The serial `submit issue` printed ("issued serial HEX by backend …").
fn issued_serial(stdout: &str) -> String {
    stdout
        .split("issued serial ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no serial in {stdout}"))
        .to_owned()
}

/// The certificate in a PFX, as `openssl x509 -noout -subject -serial -pubkey` prints it.
fn pfx_certificate_text(pfx: &Path, password: &str) -> String {
    run_ok(Command::new("bash").arg("-c").arg(format!(
        "openssl pkcs12 -in {} -passin pass:{password} -nokeys -clcerts | openssl x509 -noout -subject -serial -pubkey",
        pfx.display()
    )))
}

/// A profile that keeps its device keys renews a certificate by RenewalReq: signed with the
/// old certificate and its kept key, the reply encrypted to it, and certconn's SCEP server
/// authorises it by that certificate, not by the challenge. The renewal names no subject: it
/// asks for the renewed certificate's. The key is used once.
#[test]
fn a_kept_key_renews_by_renewal_req_at_certconns_own_scep_server() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _relay) = start_loop_with(dir.path(), |data, port, challenge| {
        self_loop_config(data, port, challenge, "").replace(
            "key_algorithm = \"rsa-2048\"\n",
            "key_algorithm = \"rsa-2048\"\nkeep_keys_for_renewal = true\n",
        )
    });
    let first = ok(issue(&daemon, dir.path(), "renewing-device"));
    let serial = issued_serial(&first);
    let before = pfx_certificate_text(
        &dir.path().join("renewing-device.pfx"),
        &shown_password(&first),
    );
    let kept = |serial: &str| {
        dir.path()
            .join("data/keys")
            .join(format!("renewal-{serial}.key"))
            .exists()
    };
    assert!(kept(&serial), "the device key is kept in custody");

    let renew = |out: &str| {
        daemon.cli(&[
            "submit",
            "issue",
            "--profile",
            "scep-device",
            "--renews",
            &serial,
            "--out",
            dir.path().join(out).to_str().unwrap(),
        ])
    };
    let second = ok(renew("renewed.pfx"));
    let after = pfx_certificate_text(&dir.path().join("renewed.pfx"), &shown_password(&second));
    let line = |text: &str, prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .to_owned()
    };
    let public_key = |text: &str| -> String {
        text.split_once("-----BEGIN PUBLIC KEY")
            .unwrap_or_else(|| panic!("no public key in {text}"))
            .1
            .to_owned()
    };
    assert_eq!(line(&before, "subject="), line(&after, "subject="));
    assert_ne!(line(&before, "serial="), line(&after, "serial="));
    assert_ne!(public_key(&before), public_key(&after), "a renewal re-keys");
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("SCEP RenewalReq for job"),
        "the backend sent a RenewalReq: {log}"
    );
    assert!(
        log.contains("SCEP renewal authorised by the certificate certconn issued"),
        "the server took it as a renewal: {log}"
    );
    assert!(!kept(&serial), "used once");
    assert!(kept(&issued_serial(&second)), "the new key is kept in turn");

    // Nothing is left to prove the old certificate with.
    let again = renew("again.pfx");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!again.status.success(), "{text}");
    assert!(
        text.contains(&format!("no key is kept for certificate {serial}")),
        "{text}"
    );
}

/// The pin may be any certificate GetCACert returns — here the RA's, not the CA's — as an
/// operator pins the certificate they were given, wherever it sits in the chain.
#[test]
fn a_pin_matches_any_certificate_of_the_returned_chain() {
    let dir = tempfile::tempdir().unwrap();
    // The daemon's first start makes the RA certificate; its fingerprint is the pin.
    let (mut first, relay) = start_loop(dir.path(), "");
    first.stop();
    drop(relay);
    let chain = std::fs::read_to_string(dir.path().join("data/keys/scep-ra.chain.pem")).unwrap();
    let ra_der = certconn::pki::pem::decode_certificates(&chain).unwrap()[0].clone();
    let pin = hex_sha256(&ra_der);
    let (daemon, _relay) = start_loop_with(dir.path(), |data, port, challenge| {
        self_loop_config(
            data,
            port,
            challenge,
            &format!("ca_fingerprint_sha256 = \"{pin}\""),
        )
    });
    let out = issue(&daemon, dir.path(), "ra-pinned");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("the pinned certificate is") && log.contains("CN=certconn SCEP RA"),
        "the log says which certificate matched: {log}"
    );
}

fn hex_sha256(der: &[u8]) -> String {
    hex::encode(certconn::crypto::provider::digest(
        certconn::crypto::provider::Digest::Sha256,
        der,
    ))
}

#[test]
fn a_wrong_pin_or_an_ungranted_host_fails_the_job_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _relay) = start_loop(
        dir.path(),
        &format!("ca_fingerprint_sha256 = \"{}\"", "ab".repeat(32)),
    );
    let out = issue(&daemon, dir.path(), "pinned");
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("no certificate GetCACert returned has the pinned SHA-256")
            && err.contains("certconn Test CA"),
        "{err}"
    );

    // Without the HTTP grant the plugin cannot reach the server at all.
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _relay) = start_loop_with(dir.path(), |data, port, challenge| {
        self_loop_config(data, port, challenge, "").replace(
            &format!("http = {{ allow = [\"127.0.0.1:{port}\"] }}\n"),
            "",
        )
    });
    let out = issue(&daemon, dir.path(), "ungranted");
    assert!(!out.status.success());
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("host not granted to this backend"),
        "the denial is logged: {log}"
    );
}

/// micromdm's scepserver and a certconn daemon in one private network namespace; the `scep`
/// backend enrols there. The script prints the issued certificate's subject and issuer.
/// micromdm's `scepserver` enrols a device, then renews it by a RenewalReq signed with the kept
/// key (`-allowrenew 0`: micromdm otherwise refuses a second certificate for a CN until 14 days
/// before the first expires; it checks the challenge on renewals too, and gets it).
#[test]
fn scep_backend_enrols_at_micromdm_scepserver() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scep_port = 18080;
    // The challenge in a file as `echo` writes it, newline and all, as docs/scep.md shows.
    let challenge = d.join("micromdm.challenge");
    write_private(&challenge, &format!("{CHALLENGE}\n"));
    let extra = format!(
        r#"
[crypto]
allow_single_des = true
[backends.micromdm]
plugin = "scep"
http = {{ allow = ["127.0.0.1:{scep_port}"] }}
settings_files = {{ challenge = "{challenge}" }}
[backends.micromdm.settings]
url = "http://127.0.0.1:{scep_port}/scep"
allow_single_des = true
[profiles.scep-device]
backend = "micromdm"
key_algorithm = "rsa-2048"
keep_keys_for_renewal = true
"#,
        challenge = challenge.display(),
    );
    std::fs::write(
        d.join("certconn.toml"),
        config_text(&d.join("data"), &plugins(), &extra),
    )
    .unwrap();
    let script = format!(
        r#"set -e
ip link set lo up
cd {d}
scepserver ca -init -depot depot >/dev/null 2>&1
scepserver -depot depot -port {scep_port} -challenge {CHALLENGE} -allowrenew 0 >scepserver.log 2>&1 &
scep_pid=$!
{bin} --log-format json serve --config certconn.toml >daemon.log 2>&1 &
daemon_pid=$!
echo "$scep_pid $daemon_pid" >pids
# Nothing may outlive this shell: the namespace it made is unreachable once it is gone.
trap 'kill $scep_pid $daemon_pid 2>/dev/null; wait $scep_pid $daemon_pid 2>/dev/null || true' EXIT
# Both listening, however long a loaded machine takes to compile the plugins; the daemon
# writes api.addr once it serves.
ready=
for i in $(seq 1200); do [ -s data/api.addr ] && (echo > /dev/tcp/127.0.0.1/{scep_port}) 2>/dev/null && {{ ready=1; break; }}; sleep 0.1; done
[ -n "$ready" ] || {{ echo 'certconn or scepserver did not start within 120 s'; cat daemon.log scepserver.log; exit 1; }}
CERTCONN_CONFIG=certconn.toml {bin} submit issue --profile scep-device --subject "CN=micromdm-device,O=Example" --out device.pfx >submit.out 2>&1 || {{ cat submit.out; cat daemon.log; exit 1; }}
pw=$(sed -n 's/^PFX password (shown once, not kept): //p' submit.out)
openssl pkcs12 -in device.pfx -passin "pass:$pw" -nokeys -clcerts 2>/dev/null | openssl x509 -noout -subject -issuer
serial=$(sed -n 's/^job .*: issued serial \([0-9a-f]*\) .*/\1/p' submit.out)
CERTCONN_CONFIG=certconn.toml {bin} submit issue --profile scep-device --subject "CN=micromdm-device,O=Example" --renews "$serial" --out renewed.pfx >renew.out 2>&1 || {{ cat renew.out; cat daemon.log; exit 1; }}
pw=$(sed -n 's/^PFX password (shown once, not kept): //p' renew.out)
echo "renewed: $(openssl pkcs12 -in renewed.pfx -passin "pass:$pw" -nokeys -clcerts 2>/dev/null | openssl x509 -noout -subject -serial)"
grep -c 'SCEP RenewalReq for job' daemon.log | sed 's/^/renewal requests: /'
"#,
        d = d.display(),
        bin = binary().display(),
    );
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "enrolment at micromdm scepserver failed:\n{stdout}\n{}\nscepserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(d.join("scepserver.log")).unwrap_or_default()
    );
    assert!(stdout.contains("micromdm-device"), "{stdout}");
    let pids = std::fs::read_to_string(d.join("pids")).unwrap();
    for pid in pids.split_whitespace() {
        assert!(
            !Path::new("/proc").join(pid).exists(),
            "process {pid} outlived its network namespace"
        );
    }
    assert!(
        stdout.contains("issuer=") && !stdout.contains("certconn Test CA"),
        "issued by micromdm's CA: {stdout}"
    );
    // The kept key renewed the certificate by RenewalReq, which micromdm answered.
    let renewed = stdout
        .lines()
        .find(|l| l.starts_with("renewed: subject="))
        .unwrap_or_else(|| panic!("no renewed certificate: {stdout}"));
    assert!(renewed.contains("CN = micromdm-device"), "{stdout}");
    assert!(stdout.contains("renewal requests: 1"), "{stdout}");
}

/// The SCEP server answers PENDING at once (wait_seconds = 0, and its profile goes to a CA that
/// takes 3 s, so the job cannot have finished when it answers); the host keeps the device key,
/// polls, the backend sends CertPoll, and the certificate arrives on a later poll.
#[test]
fn pending_then_cert_poll_delivers_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let slow_ca = MockCa::start(3000);
    let plugin_dir = plugin_dir_with(
        dir.path(),
        &[
            (plugins().join("local-ca.wasm"), "local-ca"),
            (plugins().join("scep.wasm"), "scep"),
            (
                test_plugins().join("vendor-template.wasm"),
                "vendor-template",
            ),
        ],
    );
    let (daemon, _relay) = start_loop_with(dir.path(), |data, port, challenge| {
        let text = self_loop_config(data, port, challenge, "poll_seconds = 1")
            .replace("wait_seconds = 5", "wait_seconds = 0")
            .replace("[scep]\nprofile = \"smime\"", "[scep]\nprofile = \"slow\"")
            .replace(
                &format!("dir = \"{}\"", plugins().display()),
                &format!("dir = \"{}\"", plugin_dir.display()),
            );
        format!("{text}{}", slow_ca.backend("slow", ""))
    });
    let out = issue(&daemon, dir.path(), "pending-device");
    assert!(
        out.status.success(),
        "{}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("answered PENDING"),
        "the backend saw PENDING: {log}"
    );
    assert!(dir.path().join("pending-device.pfx").exists());
}

/// Intune's strong mapping (KB5014754): a URI SAN `tag:microsoft.com,2022-09-14:sid:<SID>`
/// that Active Directory maps to the user. It goes from the request into the CSR the host
/// makes, through the `scep` backend and certconn's SCEP server, to the local CA, and comes
/// out in the certificate as Intune sent it (commas and all).
#[test]
fn the_intune_strong_mapping_san_reaches_the_certificate_through_scep() {
    const SID_SAN: &str =
        "tag:microsoft.com,2022-09-14:sid:S-1-5-21-1004336348-1177238915-682003330-512";
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _relay) = start_loop(dir.path(), "");
    let pfx = dir.path().join("mapped.pfx");
    let out = daemon.cli(&[
        "submit",
        "issue",
        "--profile",
        "scep-device",
        "--subject",
        "CN=mapped-user,O=Example",
        "--san",
        &format!("uri:{SID_SAN}"),
        "--san",
        "upn:mapped.user@corp.example",
        "--out",
        pfx.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let password = shown_password(&stdout);
    let sans = run_ok(Command::new("bash").arg("-c").arg(format!(
        "openssl pkcs12 -in {} -passin pass:{password} -nokeys -clcerts | openssl x509 -noout -ext subjectAltName",
        pfx.display()
    )));
    assert!(sans.contains(&format!("URI:{SID_SAN}")), "{sans}");
    assert!(sans.contains("mapped.user@corp.example"), "{sans}");
}
