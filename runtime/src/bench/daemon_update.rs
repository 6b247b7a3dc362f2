//! `certconn bench --daemon-update`: the daemon updates itself under load.
//!
//! This binary is installed as the current version in an install directory and started under
//! `certconn launch`; a copy stamped one patch version higher is published to a signed feed
//! (`file://`), which the daemon reads every second (`[update] daemon = "auto"`). Meanwhile an
//! issue job is submitted every 50 ms. Printed: publish → the new version serving, the gap in
//! service (the last answer of the old version to the first of the new), submissions refused
//! in the gap (they are sent again), and jobs failed (the target is zero).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::json;

use certconn::update::daemon::Install;
use certconn::update::publish::Workspace;
use certconn::update::release::{Kind, Release, DEFAULT_SUPPORT_DAYS};

/// Kills the launcher's process group when the run ends, however it ends.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling the process group this benchmark started.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}

pub async fn run(plugins: &Path, dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let old = certconn::version::version().to_owned();
    let mut next = semver::Version::parse(&old)?;
    next.patch += 1;
    next.pre = semver::Prerelease::EMPTY;
    let new = next.to_string();

    // This build without its debug information, as a release ships it (`strip` when present).
    let build = dir.join("certconn-build");
    let stripped = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&build)
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&exe, &build)?;
    }
    let install_dir = dir.join("install");
    let v_old = install_dir.join("versions").join(&old);
    std::fs::create_dir_all(&v_old)?;
    std::fs::copy(&build, v_old.join("certconn"))?;
    std::os::unix::fs::symlink(
        Path::new("versions").join(&old),
        install_dir.join("current"),
    )?;
    let stamped = dir.join("certconn-new");
    std::fs::write(
        &stamped,
        certconn::version::stamp(&std::fs::read(&build)?, &new)?,
    )?;

    let feed = Workspace::new(dir.join("feed"), dir.join("feed-keys"));
    let root = feed.init(Default::default()).await?;
    let release = |version: &str| Release {
        kind: Kind::Daemon,
        name: "certconn".into(),
        version: version.into(),
        channel: "stable".into(),
        released: certconn::lifecycle::date_of_day(certconn::lifecycle::today()),
        support_days: DEFAULT_SUPPORT_DAYS,
    };
    feed.add(&release(&old), &std::fs::read(&build)?)?;
    feed.publish().await?;
    let extra = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[update]\nurl = \"{}\"\nroot = \"{}\"\ndaemon = \"auto\"\ncheck_seconds = 1\n",
        certconn::update::feed::directory_url(&feed.repository())?,
        root.display()
    );
    let config = super::bench_config_with(dir, plugins, 4, &extra)?;
    let config_path = dir.join("bench.toml");
    let log = dir.join("daemon.log");
    let launcher = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&exe)
            .arg("launch")
            .arg(&install_dir)
            .args(["--", "--log-format", "json", "serve", "--config"])
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .process_group(0)
            .spawn()?
    };
    let _group = Group(launcher);
    println!("certconn bench --daemon-update: {old} → {new}, an issue job every 50 ms");

    // The version that answers now, if any.
    let answering = || async {
        let token = certconn::sources::api::token::read(&config.token_file()).ok()?;
        let api = config.api_client(token).ok()?;
        let health = tokio::time::timeout(
            Duration::from_secs(2),
            api.call(Method::GET, "/v1/health", None),
        )
        .await
        .ok()?
        .ok()?;
        health["version"].as_str().map(str::to_owned)
    };
    let started = Instant::now();
    while answering().await.as_deref() != Some(old.as_str()) {
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the daemon did not serve within 120 s; its log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut submitted: Vec<String> = Vec::new();
    let mut refused = 0usize;
    let mut n = 0usize;
    let submit = |n: usize| {
        let config = &config;
        async move {
            let token = certconn::sources::api::token::read(&config.token_file()).ok()?;
            let api = config.api_client(token).ok()?;
            let body = json!({ "profile": "device", "subject": format!("CN=bench {n}"), "idempotency_key": format!("update-{n}") });
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                api.call(Method::POST, "/v1/jobs/issue", Some(&body)),
            )
            .await
            .ok()?
            .ok()?;
            answer["job"]["id"].as_str().map(str::to_owned)
        }
    };
    // A second of load on the old version, then the publish.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        match submit(n).await {
            Some(id) => submitted.push(id),
            None => refused += 1,
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    feed.add(&release(&new), &std::fs::read(&stamped)?)?;
    let published = Instant::now();
    feed.publish().await?;
    let mut last_old = published;
    let first_new = loop {
        let v = answering().await;
        if v.as_deref() == Some(old.as_str()) {
            last_old = Instant::now();
        }
        if v.as_deref() == Some(new.as_str()) {
            break Instant::now();
        }
        // The load goes on; a submission the daemon cannot take (between versions) is sent
        // again with the same idempotency key until one takes it.
        match submit(n).await {
            Some(id) => {
                submitted.push(id);
                n += 1;
            }
            None => refused += 1,
        }
        if published.elapsed() > Duration::from_secs(300) {
            bail!(
                "certconn {new} did not serve within 300 s of the publish; the log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Committed: the launcher's trial is over.
    let install = Install::new(&install_dir);
    let committed = loop {
        let state = install.load()?;
        if state.trial.is_none() {
            break state;
        }
        if published.elapsed() > Duration::from_secs(300) {
            bail!("the trial of {new} did not end");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if committed.current.as_deref() != Some(new.as_str()) {
        bail!(
            "the install directory's current version is {:?}, not {new}: {committed:?}",
            committed.current
        );
    }
    let mut failed = 0usize;
    for id in &submitted {
        let job = loop {
            let token = certconn::sources::api::token::read(&config.token_file())?;
            let api = config.api_client(token).context("API client")?;
            let job = api
                .call(Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?;
            if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "dead")) {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if job["state"] != "succeeded" {
            failed += 1;
            eprintln!("job {id}: {job}");
        }
    }
    println!(
        "daemon update: publish → {new} serving        {:>8.1} s",
        (first_new - published).as_secs_f64()
    );
    println!(
        "daemon update: gap in service (last answer of {old} → first of {new}) {:>6.2} s",
        (first_new - last_old).as_secs_f64()
    );
    println!(
        "jobs: {} submitted, {failed} failed; {refused} submissions refused in the gap and sent again",
        submitted.len()
    );
    if failed > 0 {
        bail!("{failed} jobs failed during the daemon update");
    }
    Ok(())
}
