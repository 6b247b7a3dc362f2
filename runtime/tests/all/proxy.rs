//! Outbound connections through the site's proxy: Debian's `tinyproxy`, started by the test,
//! tunnels (CONNECT) the upstream service's calls and a plugin's granted HTTP, with Basic
//! credentials from a file; a proxy that wants credentials certconn lacks, and one that refuses
//! CONNECT, are clear errors naming the proxy; `no_proxy` reaches a destination directly.
//!
//! tinyproxy cannot take a free port (`Port 0`), so everything runs in a private network
//! namespace with only loopback (`unshare --net`), where fixed ports are free by construction.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

const PROXY_SECRET: &str = "proxy-Secret-7";

/// `[backends.vendor]`: the vendor template against the mock CA on port 8971.
const VENDOR: &str = r#"
[backends.vendor]
plugin = "vendor-template"
http = { allow = ["127.0.0.1:8971"] }
[backends.vendor.settings]
url = "http://127.0.0.1:8971"
api_key = "demo-key"
[profiles.vendor]
backend = "vendor"
"#;

fn daemon_config(dir: &Path, plugins: &Path, proxy: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let upstream = format!(
        "[upstream]\nservice = \"http://127.0.0.1:8970\"\ntoken_file = \"{}\"\npoll_wait_seconds = 2\n",
        dir.parent().unwrap().join("token").display()
    );
    std::fs::write(
        dir.join("certconn.toml"),
        config_text(
            &dir.join("data"),
            plugins,
            &format!("{VENDOR}{upstream}[proxy]\n{proxy}\n"),
        ),
    )
    .unwrap();
}

#[test]
fn the_upstream_and_plugins_go_through_the_proxy_and_its_refusals_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plugins = plugin_dir_with(
        d,
        &[
            (plugins().join("local-ca.wasm"), "local-ca"),
            (
                test_plugins().join("vendor-template.wasm"),
                "vendor-template",
            ),
        ],
    );
    write_private(&d.join("token"), "connector-secret-0123456789\n");
    write_private(
        &d.join("proxy-credentials"),
        &format!("certconn:{PROXY_SECRET}\n"),
    );
    std::fs::write(
        d.join("tinyproxy.conf"),
        format!("Port 3128\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\nMaxClients 50\nBasicAuth certconn {PROXY_SECRET}\n"),
    )
    .unwrap();
    // CONNECT only to port 443: the service's port 8970 is refused.
    std::fs::write(
        d.join("refusing.conf"),
        "Port 3129\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\nMaxClients 50\nConnectPort 443\n",
    )
    .unwrap();
    // a: through the proxy with its credentials. b: the same proxy, no credentials. c: a proxy
    // that refuses CONNECT to the service, and the mock CA reached directly (no_proxy).
    daemon_config(
        &d.join("a"),
        &plugins,
        &format!(
            "url = \"http://127.0.0.1:3128\"\ncredentials_file = \"{}\"",
            d.join("proxy-credentials").display()
        ),
    );
    daemon_config(&d.join("b"), &plugins, "url = \"http://127.0.0.1:3128\"");
    daemon_config(
        &d.join("c"),
        &plugins,
        "url = \"http://127.0.0.1:3129\"\nno_proxy = [\"127.0.0.1:8971\"]",
    );
    // e: the same as c, from the environment (HTTPS_PROXY with credentials, NO_PROXY).
    daemon_config(&d.join("e"), &plugins, "from_env = true");
    let script = format!(
        r#"set -e
ip link set lo up
cd {d}
tinyproxy -d -c tinyproxy.conf >tinyproxy.log 2>&1 & p1=$!
tinyproxy -d -c refusing.conf >refusing.log 2>&1 & p2=$!
{service} --listen 127.0.0.1:8970 --addr-file service.addr --connector-token-file token >service.log 2>&1 & s=$!
python3 {mock} --port 8971 >mock.out 2>&1 & m=$!
for x in a b c; do (cd $x && exec {bin} --log-format json serve --config certconn.toml >daemon.log 2>&1) & eval "d_$x=\$!"; done
(cd e && HTTPS_PROXY='http://certconn:{PROXY_SECRET}@127.0.0.1:3129' NO_PROXY='localhost,127.0.0.1:8971' \
  exec {bin} --log-format json serve --config certconn.toml >daemon.log 2>&1) & d_e=$!
echo "$p1 $p2 $s $m $d_a $d_b $d_c $d_e" >pids
trap 'kill $p1 $p2 $s $m $d_a $d_b $d_c $d_e 2>/dev/null; wait 2>/dev/null || true' EXIT
up() {{ (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null; }}
# Everything listening, however long four daemons take to compile their plugins on a loaded
# machine.
ready=
for i in $(seq 1200); do
  [ -s a/data/api.addr ] && [ -s b/data/api.addr ] && [ -s c/data/api.addr ] && [ -s e/data/api.addr ] && [ -s service.addr ] \
    && up 3128 && up 3129 && up 8971 && {{ ready=1; break; }}
  sleep 0.1
done
[ -n "$ready" ] || {{ echo 'the daemons, proxies or service did not start within 120 s'; cat a/daemon.log b/daemon.log c/daemon.log e/daemon.log service.log 2>/dev/null; exit 1; }}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key -out device.pem -subj /CN=device -days 2 2>/dev/null
python3 -c 'import json; print(json.dumps({{"id": "via-proxy", "kind": "issue", "profile": "smime", "subject": "CN=through the proxy", "device_certificate": open("device.pem").read()}}))' >item.json
curl -sf -X POST http://127.0.0.1:8970/admin/v1/work -H 'content-type: application/json' --data @item.json >/dev/null
for i in $(seq 600); do curl -sf http://127.0.0.1:8970/admin/v1/results/via-proxy >result.json && break; sleep 0.1; done
echo "result: $(python3 -c 'import json; print(json.load(open("result.json"))["status"])')"
# A plugin's HTTP: through the proxy (a), and directly by no_proxy past a refusing proxy (c).
for x in a c e; do
  CERTCONN_CONFIG=$x/certconn.toml {bin} submit issue --profile vendor --subject "CN=vendor via $x" --out $x/vendor.pfx >$x/submit.out 2>&1 \
    && echo "vendor $x: issued" || {{ echo "vendor $x: failed"; cat $x/submit.out; }}
done
# b and c cannot reach the service: their status names the proxy and why.
for x in b c e; do
  for i in $(seq 300); do
    CERTCONN_CONFIG=$x/certconn.toml {bin} status >$x/status.out 2>&1 || true
    grep -q 'upstream: last error' $x/status.out && break
    sleep 0.1
  done
  echo "status $x: $(grep 'upstream: last error' $x/status.out)"
done
"#,
        d = d.display(),
        bin = binary().display(),
        service = binary()
            .with_file_name("certconn-reference-service")
            .display(),
        mock = repo_root()
            .join("examples/vendor-template/mock-ca.py")
            .display(),
    );
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs = || {
        [
            "tinyproxy.log",
            "refusing.log",
            "a/daemon.log",
            "c/daemon.log",
        ]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(d.join(f)).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    };
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    for pid in std::fs::read_to_string(d.join("pids"))
        .unwrap()
        .split_whitespace()
    {
        assert!(
            !Path::new("/proc").join(pid).exists(),
            "process {pid} outlived its network namespace"
        );
    }

    // The work went to the service and back through the proxy, authenticated.
    assert!(stdout.contains("result: succeeded"), "{stdout}\n{}", logs());
    let proxied = std::fs::read_to_string(d.join("tinyproxy.log")).unwrap();
    assert!(
        proxied.contains("CONNECT 127.0.0.1:8970"),
        "the upstream's calls went through the proxy: {proxied}"
    );
    // The plugin's HTTP too.
    assert!(stdout.contains("vendor a: issued"), "{stdout}\n{}", logs());
    assert!(
        proxied.contains("CONNECT 127.0.0.1:8971"),
        "the plugin's calls went through the proxy: {proxied}"
    );
    // Without credentials: the proxy asks for them, and the status says which setting.
    assert!(
        stdout.contains("status b: upstream: last error: the proxy http://127.0.0.1:3128 asks for credentials to reach 127.0.0.1:8970")
            && stdout.contains("set proxy.credentials_file"),
        "{stdout}"
    );
    // Refused CONNECT: named, with the proxy's answer.
    assert!(
        stdout.contains("status c: upstream: last error: the proxy http://127.0.0.1:3129 refused CONNECT to 127.0.0.1:8970: HTTP/1.1 403"),
        "{stdout}"
    );
    // no_proxy: the mock CA was reached directly, past the refusing proxy.
    assert!(stdout.contains("vendor c: issued"), "{stdout}\n{}", logs());
    // From the environment: the proxy of HTTPS_PROXY (named without its credentials), and
    // NO_PROXY's exception.
    assert!(
        stdout.contains("status e: upstream: last error: the proxy http://127.0.0.1:3129 refused CONNECT to 127.0.0.1:8970"),
        "{stdout}"
    );
    assert!(stdout.contains("vendor e: issued"), "{stdout}\n{}", logs());
    assert!(
        !stdout.contains(PROXY_SECRET),
        "the password is shown: {stdout}"
    );
    let refusing = std::fs::read_to_string(d.join("refusing.log")).unwrap();
    assert!(refusing.contains("CONNECT 127.0.0.1:8970"), "{refusing}");
    assert!(
        !refusing.contains("127.0.0.1:8971"),
        "no_proxy was ignored: {refusing}"
    );
    // The proxy's password is in no log of certconn's.
    for x in ["a", "b", "c", "e"] {
        let log = std::fs::read_to_string(d.join(x).join("daemon.log")).unwrap();
        assert!(
            !log.contains(PROXY_SECRET),
            "{x}/daemon.log holds the proxy password"
        );
    }
}

#[test]
fn a_proxy_url_with_credentials_or_without_a_port_is_refused_with_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certconn.toml");
    for (url, says) in [
        (
            "http://alice:hunter2@proxy.example.com:3128",
            "put `user:password` in proxy.credentials_file",
        ),
        ("http://proxy.example.com", "needs host and port"),
        ("https://proxy.example.com:3128", "must be http://host:port"),
    ] {
        std::fs::write(
            &config,
            config_text(
                &dir.path().join("data"),
                &plugins(),
                &format!("[proxy]\nurl = \"{url}\"\n"),
            ),
        )
        .unwrap();
        let (ok, said) = run_certconn(&["check-config", "--syntax-only"], &config);
        assert!(!ok, "{url}: {said}");
        assert!(
            said.contains("proxy.url") && said.contains(says),
            "{url}: {said}"
        );
        assert!(
            !said.contains("hunter2"),
            "the password is repeated: {said}"
        );
    }
}
