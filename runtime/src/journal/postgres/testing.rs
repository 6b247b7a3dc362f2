//! A throwaway PostgreSQL for the tests: one cluster per test process, started by
//! `scripts/pg-cluster` on a Unix socket in a temporary directory and stopped (and removed)
//! when the process ends, and a fresh database per test. `CERTCONN_TEST_POSTGRES`, a URL whose
//! user may create databases, names a server to use instead.

use std::sync::{Arc, OnceLock};

use crate::journal::behaviour::Factory;
use crate::journal::config::JournalConfig;
use crate::journal::Journal;

use super::PostgresJournal;

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// The server's URL (of its `postgres` database), the cluster started at the first call.
pub fn server() -> String {
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("CERTCONN_TEST_POSTGRES") {
                return Ok(url);
            }
            let dir = tempfile::Builder::new()
                .prefix("certconn-pg-")
                .tempdir()
                .map_err(|e| e.to_string())?
                .keep();
            let script = SCRIPT;
            let out = std::process::Command::new(script)
                .arg("start")
                .arg(&dir)
                .args(["--watch", &std::process::id().to_string()])
                .output()
                .map_err(|e| format!("{script}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{script} start failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .clone()
        .unwrap_or_else(|e| panic!("no PostgreSQL for the tests: {e}"))
}

/// A cluster of a test's own, stopped and removed when dropped (and when the process ends).
pub struct OwnCluster {
    pub dir: std::path::PathBuf,
    pub port: u16,
}

impl OwnCluster {
    /// On a loopback port, TLS only: `scripts/pg-cluster start DIR --tcp --tls` (its CA, server
    /// and client certificates in `dir/tls`).
    pub fn tls() -> OwnCluster {
        let dir = tempfile::Builder::new()
            .prefix("certconn-pg-tls-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let out = std::process::Command::new(SCRIPT)
            .arg("start")
            .arg(&dir)
            .args(["--tcp", "--tls", "--watch", &std::process::id().to_string()])
            .output()
            .expect("scripts/pg-cluster");
        assert!(
            out.status.success(),
            "pg-cluster: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::fs::read_to_string(dir.join("port"))
            .expect("port")
            .trim()
            .parse()
            .expect("a port");
        OwnCluster { dir, port }
    }

    /// `sql` as the superuser, over the cluster's Unix socket.
    pub fn psql(&self, sql: &str) -> Vec<String> {
        let host: String = url_escape(&self.dir.display().to_string());
        psql(
            &format!("postgres://postgres@{host}:{}/postgres", self.port),
            sql,
        )
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster");

/// One test's database.
pub struct Database {
    url: String,
}

impl Database {
    /// `[journal]` for this database.
    pub fn config(&self) -> JournalConfig {
        JournalConfig {
            url: Some(self.url.clone()),
            ..JournalConfig::default()
        }
    }

    /// Runs `sql` with `psql`, as a test's view from outside; the rows, one line each.
    pub fn psql(&self, sql: &str) -> Vec<String> {
        psql(&self.url, sql)
    }
}

fn psql(url: &str, sql: &str) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A new, empty database on the test server.
pub async fn fresh_database() -> Database {
    let server = tokio::task::spawn_blocking(server).await.expect("server");
    let name = format!(
        "t_{}",
        hex::encode(crate::crypto::provider::random_vec(6).expect("random"))
    );
    let admin = server.clone();
    let create = format!("CREATE DATABASE {name}");
    tokio::task::spawn_blocking(move || psql(&admin, &create))
        .await
        .expect("create database");
    let base = server
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(&server);
    Database {
        url: format!("{base}/{name}"),
    }
}

/// A new database with the current schema (a journal opened on it once, then closed).
pub async fn migrated_database() -> Database {
    let db = fresh_database().await;
    drop(
        PostgresJournal::open(&db.config(), "setup", false)
            .await
            .expect("the schema"),
    );
    db
}

/// The behaviour tests' factory: instances of one fresh database.
pub struct Postgres(Database);

#[async_trait::async_trait]
impl Factory for Postgres {
    async fn open(&self, instance: &str) -> Arc<dyn Journal> {
        Arc::new(
            PostgresJournal::open(&self.0.config(), instance, false)
                .await
                .unwrap_or_else(|e| panic!("{}", crate::report::chain(&e))),
        )
    }
}

pub async fn factory() -> Postgres {
    Postgres(fresh_database().await)
}
