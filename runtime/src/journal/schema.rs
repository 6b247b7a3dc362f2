//! The journal's schema, as numbered migrations. A journal records the number it is at
//! (SQLite: `PRAGMA user_version`; PostgreSQL: the `certconn_schema` table); opening it applies
//! the missing ones in order, each in one transaction, so a crash mid-upgrade leaves the
//! previous version whole. A journal newer than this binary is refused rather than guessed at.
//! Every change to the schema is one more migration here, and a line in `CHANGELOG.md`'s
//! upgrade notes.
//!
//! SQLite and PostgreSQL are numbered apart: the PostgreSQL journal began (at its version 1)
//! with everything SQLite had reached by its version 5, so it never replays SQLite's history.
//! A change to both is one migration in each list.

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    /// The statements, in the dialect of the list the migration is in.
    pub sql: &'static str,
}

/// The version a SQLite journal written by this binary is at.
pub const CURRENT: i64 = 11;

/// The version a PostgreSQL journal written by this binary is at.
pub const POSTGRES_CURRENT: i64 = 5;

/// What makes a job's outcome owed to its source on SQLite: the predicate of the partial index
/// `jobs_undelivered`, which a query must repeat as written to use that index.
///
/// The three states are compared one by one, not as `state IN (…)`: SQLite evaluates a partial
/// index's predicate on every insert into `jobs` and on both sides of every update of `state`,
/// and for an `IN` list of three it fills and drops a temporary table each time. That was 14.5
/// against 5.7 µs per update of a job (SQLite 3.40), on the journal's one writer thread.
macro_rules! sqlite_owed {
    () => {
        "delivered_at IS NULL AND (state = 'succeeded' OR state = 'failed' OR state = 'dead')"
    };
}
pub(crate) use sqlite_owed;

/// The index of revoked certificates, the same in both dialects.
macro_rules! revoked_certificates_index {
    () => {
        "CREATE INDEX certificates_revoked ON certificates (not_after, serial) \
         WHERE revoked_at IS NOT NULL;"
    };
}

/// The first version with the signature trail.
pub const SIGNATURE_TRAIL_SINCE: i64 = 4;

/// Every SQLite migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "jobs, outbox, certificate ledger, SCEP one-time challenges",
        // `IF NOT EXISTS`: journals written before versioning (user_version 0) already have
        // these tables and adopt version 1 as they are.
        sql: r#"
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    request         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_run_at     INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    poll_token      TEXT,
    backend         TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (source, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_run_at);
CREATE TABLE IF NOT EXISTS outbox (
    job_id      TEXT PRIMARY KEY REFERENCES jobs(id),
    result      TEXT NOT NULL,
    password    TEXT,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    backend     TEXT NOT NULL,
    serial      TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    issuer      BLOB NOT NULL,
    not_after   INTEGER NOT NULL,
    certificate BLOB NOT NULL,
    revoked_at  INTEGER,
    revocation_reason TEXT,
    PRIMARY KEY (backend, serial)
);
CREATE INDEX IF NOT EXISTS certificates_serial ON certificates (serial);
-- One-time SCEP challenges: only their SHA-256 is kept, never the challenge itself.
CREATE TABLE IF NOT EXISTS scep_challenges (
    digest      TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
"#,
    },
    Migration {
        version: 2,
        description:
            "per-lease fencing tokens; the replay window (SCEP senderNonces) as shared state",
        sql: r#"
ALTER TABLE jobs ADD COLUMN lease_token TEXT;
CREATE INDEX jobs_lease_owner ON jobs (lease_owner) WHERE state = 'running';
CREATE TABLE replay_window (
    scope       TEXT NOT NULL,
    value       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, value)
);
CREATE INDEX replay_window_expiry ON replay_window (expires_at);
"#,
    },
    Migration {
        version: 3,
        description: "published revocation: CRL numbers per CA, the audit of reason changes",
        sql: r#"
CREATE INDEX certificates_issuer_revoked ON certificates (issuer, revoked_at);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE TABLE crl_numbers (
    ca          TEXT PRIMARY KEY,
    number      INTEGER NOT NULL
);
CREATE TABLE revocation_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    backend     TEXT NOT NULL,
    serial      TEXT NOT NULL,
    old_reason  TEXT NOT NULL,
    new_reason  TEXT NOT NULL,
    changed_by  TEXT NOT NULL,
    changed_at  INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 4,
        description:
            "the signature trail: every CA signature, chained by hash; serials unique per issuer",
        sql: r#"
CREATE TABLE signature_trail (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    key         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    job_id      TEXT,
    backend     TEXT NOT NULL,
    signer      TEXT NOT NULL,
    signer_sha256 TEXT NOT NULL,
    tbs_sha256  TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    serial      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE UNIQUE INDEX signature_trail_serial ON signature_trail (issuer, serial)
    WHERE kind = 'certificate';
"#,
    },
    Migration {
        version: 5,
        description: "results delivered back to their source (the upstream service)",
        sql: r#"
ALTER TABLE jobs ADD COLUMN delivered_at INTEGER;
CREATE INDEX jobs_undelivered ON jobs (source, updated_at)
    WHERE delivered_at IS NULL AND state IN ('succeeded', 'failed', 'dead');
"#,
    },
    Migration {
        version: 6,
        description: "fleets: the backends a job may run on; the instances sharing the journal; \
                      device keys sealed for the fleet; operators' plugin decisions",
        sql: r#"
ALTER TABLE jobs ADD COLUMN route TEXT;
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    version     TEXT NOT NULL,
    plugins     TEXT NOT NULL,
    serves      TEXT NOT NULL,
    health      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);
CREATE TABLE shared_keys (
    name        TEXT PRIMARY KEY,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE fleet_decisions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    subject     TEXT NOT NULL,
    action      TEXT NOT NULL,
    made_by     TEXT NOT NULL,
    made_at     INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 7,
        description: "the ledger keeps the plugin version that issued each certificate",
        // Taken from the results still kept; a result that is not JSON is skipped, not fatal.
        sql: r#"
ALTER TABLE certificates ADD COLUMN backend_version TEXT;
UPDATE certificates SET backend_version = (
    SELECT json_extract(o.result, '$.backend_version') FROM outbox o
    WHERE o.job_id = certificates.job_id AND json_valid(o.result));
"#,
    },
    Migration {
        version: 8,
        description:
            "the index of outcomes owed to their source, without a temporary table per update",
        sql: concat!(
            "DROP INDEX jobs_undelivered;
CREATE INDEX jobs_undelivered ON jobs (source, updated_at) WHERE ",
            sqlite_owed!(),
            ";"
        ),
    },
    Migration {
        version: 9,
        description: "listings of jobs walk an index, newest first, instead of sorting every job",
        // `jobs_created` changes only when a job is inserted, at the right edge (created_at
        // grows). The failed and dead jobs, which the status page lists, have an index of
        // their own, touched only when a job fails; its predicate is written without an `IN`
        // list, like `jobs_undelivered`'s (schema 8).
        sql:
            "CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_ended_badly ON jobs (state, created_at) WHERE state = 'failed' OR state = 'dead';",
    },
    Migration {
        version: 10,
        description: "the ledger outlives the jobs that issued its certificates",
        // `certificates.job_id` stops being a foreign key, so that a finished job can be
        // removed after `journal.keep_jobs_days` while its certificate stays in the ledger (the
        // CA database) for ever. SQLite cannot drop a constraint: the table is made again.
        sql: r#"
CREATE TABLE certificates_v10 (
    backend     TEXT NOT NULL,
    serial      TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    issuer      BLOB NOT NULL,
    not_after   INTEGER NOT NULL,
    certificate BLOB NOT NULL,
    revoked_at  INTEGER,
    revocation_reason TEXT,
    backend_version TEXT,
    PRIMARY KEY (backend, serial)
);
INSERT INTO certificates_v10 (backend, serial, job_id, issuer, not_after, certificate,
                              revoked_at, revocation_reason, backend_version)
    SELECT backend, serial, job_id, issuer, not_after, certificate,
           revoked_at, revocation_reason, backend_version FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_v10 RENAME TO certificates;
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_issuer_revoked ON certificates (issuer, revoked_at);
CREATE INDEX certificates_not_after ON certificates (not_after);
"#,
    },
    Migration {
        version: 11,
        description: "the listing of revoked certificates walks an index of its own",
        // In expiry order, as the listing shows them; touched only when a certificate is
        // revoked. The ledger keeps every certificate for ever, so a listing that filtered
        // them in that order read all of them when few were revoked.
        sql: revoked_certificates_index!(),
    },
];

/// Every PostgreSQL migration, oldest first. Times are unix milliseconds of the database's
/// clock (`certconn_now_ms()`), never a host's: the instances of a fleet compare leases with
/// one clock.
pub const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description:
            "jobs with fenced leases and routes, outbox, ledger, CRL numbers, reason changes, \
                  signature trail, SCEP challenges, the replay window, the instances, \
                  sealed device keys, operators' plugin decisions",
        sql: r#"
CREATE FUNCTION certconn_now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    request         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_run_at     BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_token     TEXT,
    lease_until     BIGINT,
    poll_token      TEXT,
    backend         TEXT,
    last_error      TEXT,
    route           TEXT[],
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (source, idempotency_key)
);
CREATE INDEX jobs_due ON jobs (next_run_at) WHERE state IN ('queued', 'pending');
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_lease_owner ON jobs (lease_owner) WHERE state = 'running';
CREATE INDEX jobs_state_created ON jobs (state, created_at);
CREATE INDEX jobs_undelivered ON jobs (source, updated_at)
    WHERE delivered_at IS NULL AND state IN ('succeeded', 'failed', 'dead');
CREATE TABLE outbox (
    job_id      TEXT PRIMARY KEY REFERENCES jobs(id),
    result      TEXT NOT NULL,
    password    TEXT,
    created_at  BIGINT NOT NULL
);
CREATE TABLE certificates (
    backend     TEXT NOT NULL,
    serial      TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    issuer      BYTEA NOT NULL,
    not_after   BIGINT NOT NULL,
    certificate BYTEA NOT NULL,
    revoked_at  BIGINT,
    revocation_reason TEXT,
    PRIMARY KEY (backend, serial)
);
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_issuer_revoked ON certificates (issuer, revoked_at);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE TABLE scep_challenges (
    digest      TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE TABLE replay_window (
    scope       TEXT NOT NULL,
    value       TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, value)
);
CREATE INDEX replay_window_expiry ON replay_window (expires_at);
CREATE TABLE crl_numbers (
    ca          TEXT PRIMARY KEY,
    number      BIGINT NOT NULL
);
CREATE TABLE revocation_changes (
    id          BIGSERIAL PRIMARY KEY,
    backend     TEXT NOT NULL,
    serial      TEXT NOT NULL,
    old_reason  TEXT NOT NULL,
    new_reason  TEXT NOT NULL,
    changed_by  TEXT NOT NULL,
    changed_at  BIGINT NOT NULL
);
CREATE TABLE signature_trail (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    key         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    job_id      TEXT,
    backend     TEXT NOT NULL,
    signer      TEXT NOT NULL,
    signer_sha256 TEXT NOT NULL,
    tbs_sha256  TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    serial      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE UNIQUE INDEX signature_trail_serial ON signature_trail (issuer, serial)
    WHERE kind = 'certificate';
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    version     TEXT NOT NULL,
    plugins     TEXT NOT NULL,
    serves      TEXT NOT NULL,
    health      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);
-- Device keys of jobs pending at a CA, sealed under the custody KEK the fleet shares.
CREATE TABLE shared_keys (
    name        TEXT PRIMARY KEY,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
-- An operator's unload, load, rollback, drain or undrain on one instance, for all of them.
CREATE TABLE fleet_decisions (
    seq         BIGSERIAL PRIMARY KEY,
    subject     TEXT NOT NULL,
    action      TEXT NOT NULL,
    made_by     TEXT NOT NULL,
    made_at     BIGINT NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        description: "the ledger keeps the plugin version that issued each certificate",
        // Taken from the results still kept; a result that is not JSON is skipped, not fatal.
        sql: r#"
ALTER TABLE certificates ADD COLUMN backend_version TEXT;
CREATE FUNCTION certconn_json_field(doc TEXT, field TEXT) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN doc::jsonb ->> field;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
UPDATE certificates c SET backend_version = certconn_json_field(o.result, 'backend_version')
    FROM outbox o WHERE o.job_id = c.job_id;
DROP FUNCTION certconn_json_field(TEXT, TEXT);
"#,
    },
    Migration {
        version: 3,
        description: "the listing of every job walks an index, newest first",
        // A listing of one state already walks `jobs_state_created`.
        sql: "CREATE INDEX jobs_created ON jobs (created_at);",
    },
    Migration {
        version: 4,
        description: "the ledger outlives the jobs that issued its certificates",
        // See SQLite's version 10. The name is the one PostgreSQL gave the constraint of
        // version 1; a journal without it (a hand edit) has nothing to drop.
        sql: "ALTER TABLE certificates DROP CONSTRAINT IF EXISTS certificates_job_id_fkey;",
    },
    Migration {
        version: 5,
        description: "the listing of revoked certificates walks an index of its own",
        // See SQLite's version 11.
        sql: revoked_certificates_index!(),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_end_at_current() {
        for (list, current) in [
            (MIGRATIONS, CURRENT),
            (POSTGRES_MIGRATIONS, POSTGRES_CURRENT),
        ] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version, i as i64 + 1, "{}", m.description);
            }
            assert_eq!(list.last().map(|m| m.version), Some(current));
        }
    }
}
