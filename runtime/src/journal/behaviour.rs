//! What every journal must do, written once. An implementation runs all of it with
//! `crate::journal_behaviour_tests!(factory)` in its own test module, where `factory().await`
//! returns a [`Factory`] over a fresh, empty journal (for SQLite a file in a temporary directory; for a
//! shared database a fresh schema). `Factory::open` may be called several times to get several
//! instances of certconn on the same journal.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;

/// Opens instances of one fresh journal.
#[async_trait::async_trait]
pub(crate) trait Factory: Sync {
    /// The journal as instance `instance` sees it.
    async fn open(&self, instance: &str) -> Arc<dyn Journal>;
}

/// Generates one `#[tokio::test]` per behaviour for the factory expression `$factory`.
#[macro_export]
#[doc(hidden)]
macro_rules! journal_behaviour_tests {
    ($factory:expr) => {
        $crate::journal_behaviour_tests!(@each $factory;
            same_idempotency_key_is_one_job,
            enqueue_returns_the_job_as_the_journal_keeps_it,
            a_stale_lease_cannot_end_the_job_even_in_one_process,
            completing_a_job_can_take_the_next_in_the_same_write,
            a_renewed_lease_is_not_taken_over,
            a_lost_lease_cannot_be_renewed,
            the_password_is_handed_out_once,
            pending_waits_for_its_poll_time_without_using_attempts,
            the_job_due_earliest_is_leased_first_whatever_its_state,
            waiting_for_a_backend_uses_no_attempt,
            operator_retry_only_from_a_terminal_failure,
            release_held_leaves_other_instances_leases_alone,
            wait_settled_returns_when_the_job_ends,
            wait_settled_gives_up_after_its_time,
            ending_a_job_can_erase_its_request,
            the_ledger_records_issue_and_revocation,
            the_ledger_lists_what_a_crl_and_an_admin_need,
            crl_numbers_only_grow,
            the_signature_trail_chains_every_entry_and_never_reuses_a_serial,
            a_one_time_challenge_works_once_and_not_after_expiry,
            a_replayed_value_is_refused_within_the_window,
            enqueue_wakes_a_waiting_worker,
            counts_and_list_by_state,
            every_state_is_listed_newest_first,
            outcomes_are_owed_to_their_source_until_delivered,
            old_results_are_removed_except_those_still_owed,
            old_jobs_are_removed_once_nothing_is_left_to_hand_out,
            a_job_runs_only_where_a_backend_of_its_route_is_served,
            instances_claiming_at_once_never_share_a_job,
            instances_report_themselves_and_can_be_forgotten,
            a_shared_key_is_seen_by_every_instance_until_removed,
            decisions_are_seen_by_every_instance_in_order,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let factory = $factory().await;
                $crate::journal::behaviour::$name(&factory).await;
            }
        )*
    };
}

fn req(x: i64) -> serde_json::Value {
    json!({ "x": x })
}

pub(crate) async fn enqueue(j: &dyn Journal, key: &str) -> JobRecord {
    enqueue_from(j, "api", key).await
}

/// An issue job from `source`.
async fn enqueue_from(j: &dyn Journal, source: &str, key: &str) -> JobRecord {
    let r = req(1);
    j.enqueue(NewJob {
        source,
        idempotency_key: key,
        kind: JobKind::Issue,
        request: &r,
        route: None,
    })
    .await
    .unwrap()
    .0
}

const MINUTE: Duration = Duration::from_secs(60);

fn done(result: &str) -> Completion<'_> {
    Completion {
        backend: "b",
        result,
        ..Default::default()
    }
}

pub(crate) async fn same_idempotency_key_is_one_job(f: &dyn Factory) {
    let j = f.open("a").await;
    let (r1, r2) = (req(1), req(2));
    let new = |key, source, request| NewJob {
        source,
        idempotency_key: key,
        kind: JobKind::Issue,
        request,
        route: None,
    };
    let (a, new_a) = j.enqueue(new("k1", "api", &r1)).await.unwrap();
    let (b, new_b) = j.enqueue(new("k1", "api", &r2)).await.unwrap();
    assert!(new_a && !new_b);
    assert_eq!(a.id, b.id);
    assert_eq!(b.request, r1, "the first request is kept");
    let (c, new_c) = j.enqueue(new("k1", "scep", &r2)).await.unwrap();
    assert!(new_c);
    assert_ne!(c.id, a.id);
    assert_eq!(j.find("api", "k1").await.unwrap().unwrap().id, a.id);
    assert!(j.find("api", "nope").await.unwrap().is_none());
}

pub(crate) async fn enqueue_returns_the_job_as_the_journal_keeps_it(f: &dyn Factory) {
    let j = f.open("a").await;
    let request = json!({ "subject": "CN=d", "sans": ["a", "b"], "n": 1.5, "none": null });
    let route = ["ca-1".to_owned(), "ca-2".to_owned()];
    let new = NewJob {
        source: "scep",
        idempotency_key: "k1",
        kind: JobKind::Import,
        request: &request,
        route: Some(&route),
    };
    let as_json = |job: &JobRecord| serde_json::to_value(job).unwrap();
    let (made, created) = j.enqueue(new).await.unwrap();
    let kept = j.get(&made.id).await.unwrap();
    assert!(created);
    assert_eq!(
        as_json(&made),
        as_json(&kept),
        "a new job as enqueue returns it and as read"
    );
    assert_eq!(made.poll_token, kept.poll_token);
    assert_eq!((made.state, made.attempts), (JobState::Queued, 0));
    let (again, created) = j.enqueue(new).await.unwrap();
    assert!(!created);
    assert_eq!(
        as_json(&again),
        as_json(&kept),
        "the same job enqueued again"
    );
}

pub(crate) async fn a_stale_lease_cannot_end_the_job_even_in_one_process(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    // A lease that is already over: the worker holding it is "slow".
    let first = j.lease_next(Duration::ZERO).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Another worker of the same instance takes the job up.
    let second = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(first.job.id, job.id);
    assert_eq!(second.job.id, job.id);
    assert_ne!(first.lease, second.lease);
    assert!(!j.complete(&first.lease, done("{}")).await.unwrap());
    assert!(!j.renew(&first.lease, MINUTE).await.unwrap());
    assert!(!j
        .requeue(&first.lease, None, "e", now_ms(), true)
        .await
        .unwrap());
    assert!(!j
        .end(&first.lease, JobState::Failed, None, "e", None)
        .await
        .unwrap());
    assert!(!j.park(&first.lease, "b", "t", "m", now_ms()).await.unwrap());
    assert!(j.complete(&second.lease, done("{}")).await.unwrap());
    let ended = j.get(&job.id).await.unwrap();
    assert_eq!((ended.state, ended.attempts), (JobState::Succeeded, 2));
    assert!(j.take_result(&job.id).await.unwrap().is_some());
}

pub(crate) async fn completing_a_job_can_take_the_next_in_the_same_write(f: &dyn Factory) {
    let j = f.open("a").await;
    let first = enqueue(&*j, "k1").await;
    let second = enqueue(&*j, "k2").await;
    let third = enqueue(&*j, "k3").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(held.job.id, first.id);

    let (kept, next) = j
        .complete_and_lease_next(&held.lease, done("{\"n\":1}"), MINUTE)
        .await
        .unwrap();
    assert!(kept);
    let next = next.expect("the next due job is taken with the outcome");
    assert_eq!(next.job.id, second.id);
    assert_eq!(j.get(&first.id).await.unwrap().state, JobState::Succeeded);
    assert!(j.take_result(&first.id).await.unwrap().is_some());
    let running = j.get(&second.id).await.unwrap();
    assert_eq!((running.state, running.attempts), (JobState::Running, 1));
    assert!(j.renew(&next.lease, MINUTE).await.unwrap(), "a real lease");

    // A lease lost meanwhile ends nothing, and the worker still gets the next job.
    let stale = Lease {
        job_id: next.lease.job_id.clone(),
        token: "0".repeat(32),
    };
    let (kept, after) = j
        .complete_and_lease_next(&stale, done("{}"), MINUTE)
        .await
        .unwrap();
    assert!(!kept);
    assert_eq!(after.unwrap().job.id, third.id);
    assert_eq!(j.get(&second.id).await.unwrap().state, JobState::Running);

    // With nothing left the job still ends, and nothing is taken.
    let (kept, none) = j
        .complete_and_lease_next(&next.lease, done("{}"), MINUTE)
        .await
        .unwrap();
    assert!(kept && none.is_none());
    assert_eq!(j.get(&second.id).await.unwrap().state, JobState::Succeeded);
}

pub(crate) async fn a_renewed_lease_is_not_taken_over(f: &dyn Factory) {
    let j = f.open("a").await;
    enqueue(&*j, "k").await;
    let held = j
        .lease_next(Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert!(j.renew(&held.lease, MINUTE).await.unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        j.lease_next(MINUTE).await.unwrap().is_none(),
        "a renewed lease was taken over"
    );
    assert!(j.complete(&held.lease, done("{}")).await.unwrap());
}

pub(crate) async fn a_lost_lease_cannot_be_renewed(f: &dyn Factory) {
    let j = f.open("a").await;
    enqueue(&*j, "k").await;
    let first = j.lease_next(Duration::ZERO).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let _second = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(!j.renew(&first.lease, MINUTE).await.unwrap());
}

pub(crate) async fn the_password_is_handed_out_once(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    let kept = j
        .complete(
            &held.lease,
            Completion {
                password: Some(&"s3cret".to_owned().into()),
                ..done(r#"{"pfx":"AA=="}"#)
            },
        )
        .await
        .unwrap();
    assert!(kept);
    let first = j.take_result(&job.id).await.unwrap().unwrap();
    assert_eq!(first.result, r#"{"pfx":"AA=="}"#);
    assert_eq!(first.password.as_deref(), Some("s3cret"));
    let again = j.take_result(&job.id).await.unwrap().unwrap();
    assert!(again.password.is_none());
    assert_eq!(again.result, first.result);
    // Peeking hands nothing out.
    assert_eq!(
        j.peek_result(&job.id).await.unwrap().as_deref(),
        Some(first.result.as_str())
    );
    assert!(j.peek_result("no-such-job").await.unwrap().is_none());
}

pub(crate) async fn pending_waits_for_its_poll_time_without_using_attempts(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(j
        .park(
            &held.lease,
            "b",
            "token-1",
            "awaiting approval",
            now_ms() + 150
        )
        .await
        .unwrap());
    let parked = j.get(&job.id).await.unwrap();
    assert_eq!((parked.state, parked.attempts), (JobState::Pending, 0));
    assert!(j.lease_next(MINUTE).await.unwrap().is_none(), "not due yet");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let polled = j.lease_next(MINUTE).await.unwrap().expect("due now");
    assert_eq!(polled.job.poll_token.as_deref(), Some("token-1"));
    assert_eq!(polled.job.backend.as_deref(), Some("b"));
    assert_eq!(polled.job.attempts, 1);
}

pub(crate) async fn the_job_due_earliest_is_leased_first_whatever_its_state(f: &dyn Factory) {
    let j = f.open("a").await;
    // Each sleep only makes the clock's milliseconds move on, so that due times differ.
    let tick = || tokio::time::sleep(Duration::from_millis(3));
    let pending = enqueue(&*j, "pending").await;
    let queued = enqueue(&*j, "queued").await;
    let (p, q) = (
        j.lease_next(MINUTE).await.unwrap().unwrap(),
        j.lease_next(MINUTE).await.unwrap().unwrap(),
    );
    let (p, q) = if p.job.id == pending.id {
        (p, q)
    } else {
        (q, p)
    };
    assert_eq!(
        (p.job.id.as_str(), q.job.id.as_str()),
        (pending.id.as_str(), queued.id.as_str())
    );
    tick().await;
    let abandoned = enqueue(&*j, "abandoned").await;
    let a = j.lease_next(Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(a.job.id, abandoned.id);
    tick().await;
    // Due: the pending job two seconds ago, the abandoned one (its lease ran out) when it was
    // enqueued, the queued one now.
    assert!(j
        .park(&p.lease, "b", "t", "waiting", now_ms() - 2000)
        .await
        .unwrap());
    assert!(j
        .requeue(&q.lease, None, "again", now_ms(), false)
        .await
        .unwrap());
    tick().await;
    let mut order = Vec::new();
    while let Some(next) = j.lease_next(MINUTE).await.unwrap() {
        order.push(next.job.id);
    }
    assert_eq!(order, [pending.id, abandoned.id, queued.id]);
}

pub(crate) async fn waiting_for_a_backend_uses_no_attempt(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(j
        .requeue(&held.lease, None, "waiting", now_ms(), false)
        .await
        .unwrap());
    assert_eq!(j.get(&job.id).await.unwrap().attempts, 0);
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(j
        .requeue(&held.lease, Some("b"), "transient", now_ms(), true)
        .await
        .unwrap());
    let requeued = j.get(&job.id).await.unwrap();
    assert_eq!(requeued.state, JobState::Queued);
    assert_eq!(requeued.attempts, 1);
    assert_eq!(requeued.backend.as_deref(), Some("b"));
    assert_eq!(requeued.last_error.as_deref(), Some("transient"));
}

pub(crate) async fn operator_retry_only_from_a_terminal_failure(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    assert!(matches!(
        j.retry(&job.id).await,
        Err(JournalError::NotRetryable { .. })
    ));
    assert!(matches!(
        j.retry("no-such-job").await,
        Err(JournalError::NotFound(_))
    ));
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(j
        .end(&held.lease, JobState::Dead, Some("b"), "boom", None)
        .await
        .unwrap());
    let again = j.retry(&job.id).await.unwrap();
    assert_eq!((again.state, again.attempts), (JobState::Queued, 0));
}

pub(crate) async fn release_held_leaves_other_instances_leases_alone(f: &dyn Factory) {
    let a = f.open("instance-a").await;
    let b = f.open("instance-b").await;
    let ja = enqueue(&*a, "ka").await;
    let held_a = a.lease_next(MINUTE).await.unwrap().unwrap();
    let jb = enqueue(&*b, "kb").await;
    let held_b = b.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(
        (held_a.job.id.as_str(), held_b.job.id.as_str()),
        (ja.id.as_str(), jb.id.as_str())
    );
    // Instance a restarts: what it held is due again; b's live lease is untouched.
    assert_eq!(a.release_held().await.unwrap(), 1);
    assert_eq!(a.get(&ja.id).await.unwrap().state, JobState::Queued);
    assert_eq!(a.get(&jb.id).await.unwrap().state, JobState::Running);
    assert!(b.complete(&held_b.lease, done("{}")).await.unwrap());
    // a's old lease is gone with the release.
    assert!(!a.complete(&held_a.lease, done("{}")).await.unwrap());
}

pub(crate) async fn wait_settled_returns_when_the_job_ends(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    let worker = {
        let j = j.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            j.complete(&held.lease, done("{}")).await.unwrap()
        })
    };
    let started = std::time::Instant::now();
    let settled = j.wait_settled(&job.id, MINUTE).await.unwrap();
    assert_eq!(settled.state, JobState::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(worker.await.unwrap());
}

pub(crate) async fn wait_settled_gives_up_after_its_time(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "k").await;
    let waited = j
        .wait_settled(&job.id, Duration::from_millis(30))
        .await
        .unwrap();
    assert_eq!(waited.state, JobState::Queued);
}

pub(crate) async fn ending_a_job_can_erase_its_request(f: &dyn Factory) {
    let j = f.open("a").await;
    let secret = json!({ "pfx_base64": "c2VjcmV0", "profile": "import" });
    let erased = json!({ "pfx": { "bytes": 6 }, "profile": "import" });
    for (key, fail) in [("k1", false), ("k2", true)] {
        let (job, _) = j
            .enqueue(NewJob {
                source: "api",
                idempotency_key: key,
                kind: JobKind::Import,
                request: &secret,
                route: None,
            })
            .await
            .unwrap();
        let held = j.lease_next(MINUTE).await.unwrap().unwrap();
        let ended = if fail {
            j.end(&held.lease, JobState::Failed, None, "no", Some(&erased))
                .await
        } else {
            j.complete(
                &held.lease,
                Completion {
                    request: Some(&erased),
                    ..done("{}")
                },
            )
            .await
        };
        assert!(ended.unwrap());
        assert_eq!(j.get(&job.id).await.unwrap().request, erased);
    }
}

pub(crate) async fn the_ledger_records_issue_and_revocation(f: &dyn Factory) {
    let j = f.open("a").await;
    let job = enqueue(&*j, "issue").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    let issued = IssuedRecord {
        backend: "b".into(),
        serial: "0a1b".into(),
        issuer_der: vec![0x30, 0x00],
        not_after: 1_900_000_000,
        certificate_der: vec![0x30, 0x03, 1, 2, 3],
        backend_version: Some("local-ca 1.2.0 (0123abcd)".into()),
    };
    assert!(j
        .complete(
            &held.lease,
            Completion {
                issued: Some(&issued),
                ..done("{}")
            }
        )
        .await
        .unwrap());
    let entry = j.certificate("0a1b").await.unwrap().unwrap();
    assert_eq!(
        (entry.backend.as_str(), entry.job_id.as_str()),
        ("b", job.id.as_str())
    );
    assert_eq!(entry.certificate_der, issued.certificate_der);
    assert_eq!(entry.revoked, None);
    assert_eq!(
        entry.backend_version, issued.backend_version,
        "the ledger keeps the version"
    );
    assert!(j.certificate("ffff").await.unwrap().is_none());

    enqueue(&*j, "revoke").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    let revocation = Revocation {
        backend: "b".into(),
        serial: "0a1b".into(),
        reason: "key-compromise".into(),
    };
    assert!(j
        .complete(
            &held.lease,
            Completion {
                revoked: Some(&revocation),
                ..done("{}")
            }
        )
        .await
        .unwrap());
    let (_, reason) = j
        .certificate("0a1b")
        .await
        .unwrap()
        .unwrap()
        .revoked
        .unwrap();
    assert_eq!(reason, "key-compromise");
}

/// Three jobs enqueued in turn on `j`, keys `unreadable-1`, `unreadable-2` and `readable`; the
/// test then spoils the records of the first two (the first's request becomes `not JSON`, the
/// second's kind `renew-v9`) and makes them due first.
pub(crate) async fn three_jobs(j: &dyn Journal) -> [String; 3] {
    let mut ids = Vec::new();
    for key in ["unreadable-1", "unreadable-2", "readable"] {
        let request = json!({ "key": key });
        let (job, _) = j
            .enqueue(NewJob {
                source: "api",
                idempotency_key: key,
                kind: JobKind::Issue,
                request: &request,
                route: None,
            })
            .await
            .unwrap();
        ids.push(job.id);
    }
    ids.try_into().unwrap()
}

/// What a lease must do, on either journal, when the first due jobs' records cannot be read
/// ([`three_jobs`], spoiled): fail them with the reason and take the one behind them. Before,
/// the lease failed on the first, which stayed first, and no job behind it ever ran.
pub(crate) async fn unreadable_jobs_are_failed_and_the_queue_goes_on(
    j: &dyn Journal,
    [first, second, readable]: &[String; 3],
) {
    // What a reload checks leaves them out (they will not run as they are) and is read.
    let unfinished = j.unfinished().await.expect("the unfinished jobs are read");
    let unfinished: Vec<_> = unfinished.iter().map(|job| &job.id).collect();
    assert_eq!(unfinished, [readable]);
    let listing = j.list(None, 10).await.expect("a listing is read");
    let listed: Vec<_> = listing.jobs.iter().map(|job| &job.id).collect();
    assert_eq!(listed, [readable]);
    let mut unreadable: Vec<_> = listing
        .unreadable
        .iter()
        .map(|job| (&job.id, job.state.as_str(), job.source.as_str()))
        .collect();
    unreadable.sort();
    let mut expected = [(first, "queued", "api"), (second, "queued", "api")];
    expected.sort();
    assert_eq!(unreadable, expected);
    let why = |id: &String| {
        let job = listing.unreadable.iter().find(|u| &u.id == id).unwrap();
        job.reason.clone()
    };
    assert!(
        why(first).starts_with("expected ident at line 1"),
        "{}",
        why(first)
    );
    assert_eq!(why(second), "unknown job kind \"renew-v9\"");
    let leased = j
        .lease_next(Duration::from_secs(30))
        .await
        .expect("a lease past the unreadable jobs")
        .expect("the readable job is taken");
    assert_eq!(&leased.job.id, readable);
    let failed = j
        .counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(state, _)| *state == JobState::Failed)
        .map_or(0, |(_, n)| n);
    assert_eq!(failed, 2, "the unreadable jobs are failed");
    // An operator sees them, failed, with the reason, and the listing does not fail on them.
    let listing = j.list(Some(JobState::Failed), 10).await.unwrap();
    assert!(listing.jobs.is_empty(), "{:?}", listing.jobs);
    assert_eq!(listing.unreadable.len(), 2);
    for job in &listing.unreadable {
        assert_eq!(job.state, "failed");
        let why = job.last_error.as_deref().unwrap_or_default();
        assert!(why.contains(&job.reason), "{why} / {}", job.reason);
        assert!(why.contains("cannot be read"), "{why}");
    }
    let shown = j.get(first).await.expect_err("one job cannot be read");
    assert!(matches!(shown, JournalError::Corrupt { .. }), "{shown:?}");
    assert!(j
        .lease_next(Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());
    // Failed, they are owed to their source like any failure, with the reason: what is owed
    // reads neither the request nor the kind.
    let owed = j.undelivered("api", 10).await.expect("the owed outcomes");
    let mut failures: Vec<_> = owed
        .iter()
        .map(|o| (&o.id, o.state, o.idempotency_key.as_str()))
        .collect();
    failures.sort();
    let mut expected = [
        (first, JobState::Failed, "unreadable-1"),
        (second, JobState::Failed, "unreadable-2"),
    ];
    expected.sort();
    assert_eq!(failures, expected);
    assert!(owed.iter().all(|o| o
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("cannot be read"))));
    for o in &owed {
        j.mark_delivered(&o.id).await.unwrap();
    }
    j.complete(
        &leased.lease,
        Completion {
            backend: "local",
            result: "{}",
            password: None,
            issued: None,
            revoked: None,
            request: None,
        },
    )
    .await
    .unwrap();
    let owed = j.undelivered("api", 10).await.expect("the owed outcomes");
    assert_eq!(owed.len(), 1);
    assert_eq!(&owed[0].id, readable);
}

/// Job `id`, alone in `j`, whose state was edited to `paused` (no state of this version): it is
/// an error to read it as a job, never a guess; the listing shows it apart with that state, and
/// the counts (which health, metrics and a version on trial read) leave it out and still work.
pub(crate) async fn an_edited_state_is_shown_not_guessed(j: &dyn Journal, id: &str) {
    let err = crate::report::chain(&j.get(id).await.unwrap_err());
    assert!(err.contains("unknown job state \"paused\""), "{err}");
    let listing = j.list(None, 10).await.expect("the listing is read");
    assert!(listing.jobs.is_empty());
    assert_eq!(listing.unreadable.len(), 1);
    assert_eq!(
        (
            listing.unreadable[0].state.as_str(),
            listing.unreadable[0].reason.as_str()
        ),
        ("paused", "unknown job state \"paused\"")
    );
    assert_eq!(j.counts().await.expect("the counts are read"), []);
}

/// What the ledger migration that added `backend_version` must leave, on either journal, for
/// certificates `0a` (its result names a version), `0b` (its result is not JSON) and `0c` (no
/// result kept).
pub(crate) async fn versions_learned_from_results(j: &dyn Ledger) {
    let version = |serial: &'static str| async move {
        j.certificate(serial)
            .await
            .unwrap()
            .unwrap()
            .backend_version
    };
    assert_eq!(
        version("0a").await.as_deref(),
        Some("local-ca 1.0.0 (0123abcd)")
    );
    assert_eq!(version("0b").await, None, "a result that is not JSON");
    assert_eq!(version("0c").await, None, "no result kept");
}

/// Records an issued certificate in the ledger through a job, and revokes it through another
/// when `reason` is given.
pub(crate) async fn issue_and_revoke(
    j: &dyn Journal,
    serial: &str,
    issuer: &[u8],
    not_after: i64,
    reason: Option<&str>,
) {
    enqueue(j, &format!("issue-{serial}")).await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    let issued = IssuedRecord {
        backend: "b".into(),
        serial: serial.into(),
        issuer_der: issuer.to_vec(),
        not_after,
        certificate_der: vec![0x30, 0x00],
        backend_version: None,
    };
    let completion = Completion {
        issued: Some(&issued),
        ..done("{}")
    };
    assert!(j.complete(&held.lease, completion).await.unwrap());
    if let Some(reason) = reason {
        enqueue(j, &format!("revoke-{serial}")).await;
        let held = j.lease_next(MINUTE).await.unwrap().unwrap();
        let revocation = Revocation {
            backend: "b".into(),
            serial: serial.into(),
            reason: reason.into(),
        };
        let completion = Completion {
            revoked: Some(&revocation),
            ..done("{}")
        };
        assert!(j.complete(&held.lease, completion).await.unwrap());
    }
}

pub(crate) async fn the_ledger_lists_what_a_crl_and_an_admin_need(f: &dyn Factory) {
    let j = f.open("a").await;
    let (ca1, ca2) = ([0x30, 0x01, 1], [0x30, 0x01, 2]);
    let empty = j.revocation_mark(&ca1).await.unwrap();
    issue_and_revoke(&*j, "01", &ca1, 2_000, Some("key-compromise")).await;
    issue_and_revoke(&*j, "02", &ca1, 1_000, None).await;
    issue_and_revoke(&*j, "03", &ca2, 3_000, Some("superseded")).await;
    issue_and_revoke(&*j, "04", &ca1, 4_000, None).await;

    let all = j
        .certificates(&LedgerQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let serials: Vec<&str> = all.iter().map(|e| e.serial.as_str()).collect();
    assert_eq!(serials, ["02", "01", "03", "04"], "soonest expiry first");
    let revoked = j
        .certificates(&LedgerQuery {
            revoked: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        revoked
            .iter()
            .map(|e| e.serial.as_str())
            .collect::<Vec<_>>(),
        ["01", "03"],
        "the revoked ones, soonest expiry first"
    );
    let revoked_and_expiring = j
        .certificates(&LedgerQuery {
            revoked: true,
            expiring_before: Some(5_000),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        revoked_and_expiring.is_empty(),
        "a certificate expiring soon is one not revoked"
    );
    let expiring = j
        .certificates(&LedgerQuery {
            expiring_before: Some(2_500),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        expiring
            .iter()
            .map(|e| e.serial.as_str())
            .collect::<Vec<_>>(),
        ["02"],
        "revoked certificates are not 'expiring'"
    );
    let of_ca1 = j
        .certificates(&LedgerQuery {
            issuer_der: Some(ca1.to_vec()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_ca1.len(), 1, "the limit holds");

    let crl = j.revocations(&ca1, 0).await.unwrap();
    assert_eq!(crl.len(), 1);
    assert_eq!(
        (crl[0].serial.as_str(), crl[0].reason.as_str()),
        ("01", "key-compromise")
    );
    // A certificate that expired before the cutoff is revoked still, but on no CRL.
    issue_and_revoke(&*j, "05", &ca1, 1_500, Some("superseded")).await;
    let serials = |crl: Vec<RevokedSerial>| crl.into_iter().map(|r| r.serial).collect::<Vec<_>>();
    assert_eq!(serials(j.revocations(&ca1, 0).await.unwrap()), ["01", "05"]);
    assert_eq!(
        serials(j.revocations(&ca1, 1_500).await.unwrap()),
        ["01", "05"]
    );
    assert_eq!(serials(j.revocations(&ca1, 1_501).await.unwrap()), ["01"]);
    assert_eq!(
        serials(j.revocations(&ca1, 2_001).await.unwrap()),
        Vec::<String>::new()
    );
    let mark = j.revocation_mark(&ca1).await.unwrap();
    assert_ne!(mark, empty, "a revocation changes the mark");

    let change = ReasonChange {
        backend: "b".into(),
        serial: "01".into(),
        old_reason: "key-compromise".into(),
        new_reason: "superseded".into(),
        changed_by: "test".into(),
        changed_at: 5,
    };
    j.change_reason(&change).await.unwrap();
    assert_eq!(
        j.revocations(&ca1, 0).await.unwrap()[0].reason,
        "superseded"
    );
    assert_ne!(
        j.revocation_mark(&ca1).await.unwrap(),
        mark,
        "a reason change changes the mark"
    );
    assert_eq!(
        j.reason_changes(10).await.unwrap(),
        std::slice::from_ref(&change)
    );
    // The old reason no longer matches: a stale change is refused, as is a serial not revoked.
    assert!(matches!(
        j.change_reason(&change).await,
        Err(JournalError::NotRevoked { .. })
    ));
    let not_revoked = ReasonChange {
        serial: "02".into(),
        old_reason: String::new(),
        ..change
    };
    assert!(matches!(
        j.change_reason(&not_revoked).await,
        Err(JournalError::NotRevoked { .. })
    ));
    assert_eq!(j.reason_changes(10).await.unwrap().len(), 1);
}

pub(crate) async fn crl_numbers_only_grow(f: &dyn Factory) {
    let a = f.open("a").await;
    let b = f.open("b").await;
    assert_eq!(a.next_crl_number("ca").await.unwrap(), 1);
    assert_eq!(b.next_crl_number("ca").await.unwrap(), 2);
    assert_eq!(a.next_crl_number("other").await.unwrap(), 1);
    assert_eq!(a.next_crl_number("ca").await.unwrap(), 3);
}

pub(crate) async fn the_signature_trail_chains_every_entry_and_never_reuses_a_serial(
    f: &dyn Factory,
) {
    let a = f.open("a").await;
    let b = f.open("b").await;
    let signature = |serial: &str, kind| NewSignature {
        key: "ca".into(),
        kind,
        job: Some(format!("job-{serial}")),
        backend: "local".into(),
        signer: "local-ca 1.0.0".into(),
        signer_sha256: "ab".repeat(32),
        tbs_sha256: "cd".repeat(32),
        issuer: "CN=Test CA".into(),
        serial: serial.into(),
        subject: "CN=device".into(),
    };
    let first = a
        .append_signature(&signature("01", SignedKind::Certificate))
        .await
        .unwrap();
    assert_eq!((first.seq, first.prev_hash.as_str()), (1, trail::GENESIS));
    // Another instance continues the same chain.
    let second = b
        .append_signature(&signature("02", SignedKind::Certificate))
        .await
        .unwrap();
    assert_eq!((second.seq, &second.prev_hash), (2, &first.hash));
    // A CRL number may equal a certificate serial; only certificate serials are unique.
    a.append_signature(&signature("01", SignedKind::Crl))
        .await
        .unwrap();
    // The serial is reserved across instances, and a refused append records nothing.
    let mut reuse = signature("01", SignedKind::Certificate);
    reuse.tbs_sha256 = "ef".repeat(32);
    match b.append_signature(&reuse).await {
        Err(JournalError::SerialReused { seq, serial, .. }) => {
            assert_eq!((seq, serial.as_str()), (1, "01"))
        }
        other => panic!("a reused serial was not refused: {other:?}"),
    }
    // The very same certificate again (a retry) is the entry already there, not a new one.
    assert_eq!(
        b.append_signature(&signature("02", SignedKind::Certificate))
            .await
            .unwrap(),
        second
    );
    let mut other_issuer = signature("01", SignedKind::Certificate);
    other_issuer.issuer = "CN=Another CA".into();
    a.append_signature(&other_issuer).await.unwrap();

    let all = a.signatures(0, 100).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[1], second);
    let head = trail::verify(&all).unwrap();
    assert_eq!((head.entries, head.last_seq), (4, 4));
    assert_eq!(a.signatures(2, 1).await.unwrap()[0].seq, 3);
}

pub(crate) async fn a_one_time_challenge_works_once_and_not_after_expiry(f: &dyn Factory) {
    let a = f.open("a").await;
    let b = f.open("b").await;
    a.add_challenge("d1", now_ms() + 60_000).await.unwrap();
    a.add_challenge("d2", now_ms() - 1).await.unwrap();
    // Minted on one instance, good on another, once.
    assert!(b.consume_challenge("d1").await.unwrap());
    assert!(!a.consume_challenge("d1").await.unwrap());
    assert!(!a.consume_challenge("d2").await.unwrap(), "expired");
    assert!(!a.consume_challenge("unknown").await.unwrap());
}

pub(crate) async fn a_replayed_value_is_refused_within_the_window(f: &dyn Factory) {
    let a = f.open("a").await;
    let b = f.open("b").await;
    let short = Duration::from_millis(40);
    assert!(a.first_use("nonce", b"n1", short).await.unwrap());
    assert!(!b.first_use("nonce", b"n1", short).await.unwrap());
    assert!(
        a.first_use("other-scope", b"n1", short).await.unwrap(),
        "scopes are separate"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(
        b.first_use("nonce", b"n1", short).await.unwrap(),
        "forgotten after the window"
    );
}

pub(crate) async fn enqueue_wakes_a_waiting_worker(f: &dyn Factory) {
    let j = f.open("a").await;
    let waiter = {
        let j = j.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            j.wait_for_work(MINUTE).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    enqueue(&*j, "k").await;
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(30), "not woken: {waited:?}");
}

pub(crate) async fn counts_and_list_by_state(f: &dyn Factory) {
    let j = f.open("a").await;
    for k in ["k1", "k2", "k3"] {
        enqueue(&*j, k).await;
    }
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(j
        .end(&held.lease, JobState::Failed, None, "no", None)
        .await
        .unwrap());
    let counts: std::collections::BTreeMap<_, _> = j.counts().await.unwrap().into_iter().collect();
    assert_eq!(
        counts,
        std::collections::BTreeMap::from([(JobState::Queued, 2), (JobState::Failed, 1)])
    );
    let failed = j.list(Some(JobState::Failed), 10).await.unwrap();
    assert_eq!(failed.jobs.len(), 1);
    assert_eq!(failed.jobs[0].id, held.job.id);
    assert!(failed.unreadable.is_empty());
    assert_eq!(j.list(None, 2).await.unwrap().jobs.len(), 2);
    // One more leased: the unfinished are the running one and the queued one, not the failed.
    let running = j.lease_next(MINUTE).await.unwrap().unwrap();
    let mut unfinished: Vec<_> = j
        .unfinished()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.state, r.id == running.job.id))
        .collect();
    unfinished.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(
        unfinished,
        [(JobState::Queued, false), (JobState::Running, true)]
    );
}

/// Each state's listing (its own query on SQLite, walking its own index) holds that state's
/// jobs and no other, newest first, and stops at its limit; so does the listing of every job.
pub(crate) async fn every_state_is_listed_newest_first(f: &dyn Factory) {
    let j = f.open("a").await;
    let mut created = Vec::new();
    for i in 0..13 {
        created.push(enqueue(&*j, &format!("k{i}")).await.id);
        // Each job in a millisecond of its own: created_at orders them, not the tie-break.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Leased in the order they were created (each due when made): two of each ended state,
    // two pending at the CA, two running, and the last three still queued.
    let mut expected: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (i, state) in [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Pending,
        JobState::Pending,
        JobState::Running,
        JobState::Running,
    ]
    .into_iter()
    .enumerate()
    {
        let held = j.lease_next(MINUTE).await.unwrap().expect("a job due");
        assert_eq!(held.job.id, created[i], "leased in created order");
        let changed = match state {
            JobState::Succeeded => j.complete(&held.lease, done("{}")).await.unwrap(),
            JobState::Failed | JobState::Dead => j
                .end(&held.lease, state, Some("b"), "no", None)
                .await
                .unwrap(),
            JobState::Pending => j
                .park(&held.lease, "b", "t", "waiting", now_ms() + 3_600_000)
                .await
                .unwrap(),
            _ => true,
        };
        assert!(changed);
        expected
            .entry(state.as_str())
            .or_default()
            .insert(0, created[i].clone());
    }
    expected.insert("queued", created[10..].iter().rev().cloned().collect());
    for state in JobState::ALL {
        let listing = j.list(Some(state), 10).await.unwrap();
        let ids: Vec<String> = listing.jobs.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, expected[state.as_str()], "{}", state.as_str());
        assert!(listing.jobs.iter().all(|r| r.state == state));
        let newest = j.list(Some(state), 1).await.unwrap();
        assert_eq!(newest.jobs.len(), 1, "{}", state.as_str());
        assert_eq!(newest.jobs[0].id, expected[state.as_str()][0]);
    }
    let every: Vec<String> = j
        .list(None, 100)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(every, created.iter().rev().cloned().collect::<Vec<_>>());
    let newest: Vec<String> = j
        .list(None, 3)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(newest, every[..3]);
    // The backlog of their source counts every state where it belongs: three queued, two
    // pending and two running unfinished; the six ended ones owed (none was delivered).
    let backlog = crate::journal::Backlog {
        unfinished: 7,
        owed: 6,
    };
    assert_eq!(j.backlog("api").await.unwrap(), backlog);
    assert_eq!(
        j.backlog("upstream").await.unwrap(),
        crate::journal::Backlog {
            unfinished: 0,
            owed: 0
        }
    );
}

pub(crate) async fn outcomes_are_owed_to_their_source_until_delivered(f: &dyn Factory) {
    let j = f.open("a").await;
    let r = req(1);
    let upstream = |key| NewJob {
        source: "upstream",
        idempotency_key: key,
        kind: JobKind::Issue,
        request: &r,
        route: None,
    };
    let ok = j.enqueue(upstream("item-1")).await.unwrap().0;
    let bad = j.enqueue(upstream("item-2")).await.unwrap().0;
    let other = enqueue(&*j, "from-the-api").await;
    // Nothing has ended: nothing is owed.
    assert!(j.undelivered("upstream", 10).await.unwrap().is_empty());
    let backlog = |unfinished, owed| crate::journal::Backlog { unfinished, owed };
    assert_eq!(j.backlog("upstream").await.unwrap(), backlog(2, 0));
    for _ in 0..3 {
        let held = j.lease_next(MINUTE).await.unwrap().unwrap();
        if held.job.id == bad.id {
            assert!(j
                .end(&held.lease, JobState::Failed, Some("b"), "refused", None)
                .await
                .unwrap());
        } else {
            assert!(j.complete(&held.lease, done("{}")).await.unwrap());
        }
    }
    // Both upstream jobs are owed, oldest first; the API's job is not the upstream's.
    let owed: Vec<String> = j
        .undelivered("upstream", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(owed.len(), 2, "{owed:?}");
    assert_eq!(j.backlog("upstream").await.unwrap(), backlog(0, 2));
    assert!(owed.contains(&ok.id) && owed.contains(&bad.id) && !owed.contains(&other.id));
    assert_eq!(j.undelivered("upstream", 1).await.unwrap().len(), 1);
    j.mark_delivered(&ok.id).await.unwrap();
    j.mark_delivered(&bad.id).await.unwrap();
    // Twice is harmless.
    j.mark_delivered(&bad.id).await.unwrap();
    assert!(j.undelivered("upstream", 10).await.unwrap().is_empty());
    assert_eq!(j.backlog("upstream").await.unwrap(), backlog(0, 0));
    // An operator's retry of the failed one: its next outcome is owed again, and its end
    // ticks the changes a reporter waits on.
    j.retry(&bad.id).await.unwrap();
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(held.job.id, bad.id);
    let mut changes = j.changes();
    changes.borrow_and_update();
    assert!(j.complete(&held.lease, done("{}")).await.unwrap());
    assert!(changes.has_changed().unwrap(), "the end did not tick");
    let owed = j.undelivered("upstream", 10).await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(
        (owed[0].id.as_str(), owed[0].state),
        (bad.id.as_str(), JobState::Succeeded)
    );
}

/// A finished job goes once nothing is left to hand out (its result removed, its outcome
/// delivered); its certificate stays in the ledger, naming it; its idempotency key is free
/// again. A job not ended, one whose result is still stored, one still owed, and one that ended
/// after the cutoff all stay.
pub(crate) async fn old_jobs_are_removed_once_nothing_is_left_to_hand_out(f: &dyn Factory) {
    let j = f.open("a").await;
    let issued = IssuedRecord {
        backend: "b".into(),
        serial: "0c0ffee0".into(),
        issuer_der: vec![0x30, 0x00],
        not_after: 1_900_000_000,
        certificate_der: vec![0x30, 0x03, 1, 2, 3],
        backend_version: None,
    };
    let mut jobs = std::collections::BTreeMap::new();
    for (source, key) in [
        ("api", "issued"),
        ("api", "failed"),
        ("upstream", "owed"),
        ("api", "result-kept"),
    ] {
        let job = enqueue_from(&*j, source, key).await;
        let held = j.lease_next(MINUTE).await.unwrap().unwrap();
        assert_eq!(held.job.id, job.id);
        let changed = match key {
            "issued" => j
                .complete(
                    &held.lease,
                    Completion {
                        issued: Some(&issued),
                        ..done("{}")
                    },
                )
                .await
                .unwrap(),
            "result-kept" => j.complete(&held.lease, done("{}")).await.unwrap(),
            _ => j
                .end(&held.lease, JobState::Failed, Some("b"), "refused", None)
                .await
                .unwrap(),
        };
        assert!(changed);
        jobs.insert(key, job.id);
    }
    // Old, and not ended.
    jobs.insert("queued", enqueue(&*j, "queued").await.id);
    // The issued job's result goes first (`journal.keep_results_days`).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = enqueue_from(&*j, "api", "late").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(held.job.id, jobs["queued"], "the oldest due job first");
    assert!(j
        .end(&held.lease, JobState::Dead, Some("b"), "no", None)
        .await
        .unwrap());
    // The queued one ended now, after the cutoff: it stays too.
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(held.job.id, late.id);
    assert!(j.complete(&held.lease, done("{}")).await.unwrap());
    // The oldest result goes (`journal.keep_results_days`, a batch of one): the issued job's.
    // `result-kept` keeps its own for now.
    assert_eq!(j.remove_results(cutoff, &["upstream"], 1).await.unwrap(), 1);
    assert!(j.peek_result(&jobs["issued"]).await.unwrap().is_none());
    assert!(j.peek_result(&jobs["result-kept"]).await.unwrap().is_some());

    // In batches, the oldest first.
    assert_eq!(j.remove_jobs(cutoff, &["upstream"], 1).await.unwrap(), 1);
    assert_eq!(j.remove_jobs(cutoff, &["upstream"], 10).await.unwrap(), 1);
    assert_eq!(j.remove_jobs(cutoff, &["upstream"], 10).await.unwrap(), 0);
    let gone = |id: &String| {
        let (j, id) = (j.clone(), id.clone());
        async move { matches!(j.get(&id).await, Err(JournalError::NotFound(_))) }
    };
    for (key, removed) in [
        ("issued", true),
        ("failed", true),
        ("result-kept", false),
        ("owed", false),
        ("queued", false),
    ] {
        assert_eq!(gone(&jobs[key]).await, removed, "job {key}");
    }
    assert!(
        !gone(&late.id).await,
        "a job that ended after the cutoff was removed"
    );
    // The ledger keeps the certificate, naming the job that is gone.
    let entry = j
        .certificate("0c0ffee0")
        .await
        .unwrap()
        .expect("in the ledger");
    assert_eq!(entry.job_id, jobs["issued"]);
    // The idempotency key is free again: the same key makes a new job.
    let again = enqueue_from(&*j, "api", "failed").await;
    assert_ne!(again.id, jobs["failed"]);
    // Once its result is removed, `result-kept` goes.
    assert_eq!(
        j.remove_results(cutoff, &["upstream"], 10).await.unwrap(),
        1
    );
    assert_eq!(j.remove_jobs(cutoff, &["upstream"], 10).await.unwrap(), 1);
    assert!(gone(&jobs["result-kept"]).await);
    // Once its outcome is delivered, the owed one goes too.
    j.mark_delivered(&jobs["owed"]).await.unwrap();
    assert_eq!(j.remove_jobs(cutoff, &["upstream"], 10).await.unwrap(), 1);
    assert!(gone(&jobs["owed"]).await);
}

pub(crate) async fn old_results_are_removed_except_those_still_owed(f: &dyn Factory) {
    let j = f.open("a").await;
    // Five jobs that end in turn: three from the API, two from the upstream service (one of
    // them delivered), then one more that ends after the cutoff.
    let mut ended = Vec::new();
    for (source, key) in [
        ("api", "a1"),
        ("upstream", "owed"),
        ("api", "a2"),
        ("upstream", "delivered"),
        ("api", "a3"),
    ] {
        let job = enqueue_from(&*j, source, key).await;
        let held = j.lease_next(MINUTE).await.unwrap().unwrap();
        assert_eq!(held.job.id, job.id);
        let completion = Completion {
            password: Some(&"pfx password".to_owned().into()),
            ..done("{\"pfx_base64\":\"MII...\"}")
        };
        assert!(j.complete(&held.lease, completion).await.unwrap());
        ended.push(job);
    }
    j.mark_delivered(&ended[3].id).await.unwrap();
    // The journal's clock (PostgreSQL's, for a shared one) is past every end; a job that ends
    // after it stays whatever happens.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = enqueue_from(&*j, "api", "late").await;
    let held = j.lease_next(MINUTE).await.unwrap().unwrap();
    assert!(j.complete(&held.lease, done("{}")).await.unwrap());

    let stored = |id: String| {
        let j = j.clone();
        async move { j.peek_result(&id).await.unwrap().is_some() }
    };
    // In batches of two: the oldest first, the owed one passed over.
    assert_eq!(j.remove_results(cutoff, &["upstream"], 2).await.unwrap(), 2);
    assert!(!stored(ended[0].id.clone()).await);
    assert!(
        stored(ended[1].id.clone()).await,
        "an owed result was removed"
    );
    assert!(!stored(ended[2].id.clone()).await);
    assert!(stored(ended[3].id.clone()).await);
    assert_eq!(j.remove_results(cutoff, &["upstream"], 2).await.unwrap(), 2);
    assert_eq!(j.remove_results(cutoff, &["upstream"], 2).await.unwrap(), 0);
    for (job, kept) in ended.iter().zip([false, true, false, false, false]) {
        assert_eq!(
            stored(job.id.clone()).await,
            kept,
            "job {}",
            job.idempotency_key
        );
        // The job itself stays, succeeded.
        assert_eq!(j.get(&job.id).await.unwrap().state, JobState::Succeeded);
    }
    assert!(
        stored(late.id.clone()).await,
        "a result younger than the cutoff was removed"
    );
    assert!(j.take_result(&ended[0].id).await.unwrap().is_none());

    // Once delivered, the owed one goes too.
    j.mark_delivered(&ended[1].id).await.unwrap();
    assert_eq!(
        j.remove_results(cutoff, &["upstream"], 10).await.unwrap(),
        1
    );
    assert!(!stored(ended[1].id.clone()).await);
    assert!(stored(late.id.clone()).await);
}

async fn enqueue_routed(j: &dyn Journal, key: &str, route: Option<&[String]>) -> JobRecord {
    let r = req(1);
    j.enqueue(NewJob {
        source: "api",
        idempotency_key: key,
        kind: JobKind::Issue,
        request: &r,
        route,
    })
    .await
    .unwrap()
    .0
}

pub(crate) async fn a_job_runs_only_where_a_backend_of_its_route_is_served(f: &dyn Factory) {
    let (a, b, c) = (f.open("a").await, f.open("b").await, f.open("c").await);
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    a.serve_only(Some(&names(&["x"])));
    b.serve_only(Some(&names(&["y"])));
    let for_x = enqueue_routed(&*b, "for-x", Some(&names(&["x"]))).await;
    let for_y_or_z = enqueue_routed(&*a, "for-y", Some(&names(&["z", "y"]))).await;
    // b cannot run the job for x, however long it asks.
    let at_b = b.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(at_b.job.id, for_y_or_z.id);
    assert!(b.lease_next(MINUTE).await.unwrap().is_none());
    let at_a = a.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(at_a.job.id, for_x.id);
    // Pending at x's CA: only an instance serving x polls it.
    assert!(a
        .park(&at_a.lease, "x", "poll-1", "pending", 0)
        .await
        .unwrap());
    assert!(b.lease_next(MINUTE).await.unwrap().is_none());
    let polled = a.lease_next(MINUTE).await.unwrap().unwrap();
    assert_eq!(polled.job.id, for_x.id);
    // A job with no route, and an instance serving everything, go anywhere.
    let anywhere = enqueue_routed(&*c, "anywhere", None).await;
    assert_eq!(
        b.lease_next(MINUTE).await.unwrap().unwrap().job.id,
        anywhere.id
    );
    b.serve_only(None);
    assert!(b.complete(&at_b.lease, done("{}")).await.unwrap());
    let late = enqueue_routed(&*c, "late-x", Some(&names(&["x"]))).await;
    assert_eq!(b.lease_next(MINUTE).await.unwrap().unwrap().job.id, late.id);
}

pub(crate) async fn instances_claiming_at_once_never_share_a_job(f: &dyn Factory) {
    const JOBS: usize = 40;
    let instances = [f.open("a").await, f.open("b").await, f.open("c").await];
    for n in 0..JOBS {
        enqueue(&*instances[n % 3], &format!("k{n}")).await;
    }
    let mut claimers = tokio::task::JoinSet::new();
    for j in instances {
        claimers.spawn(async move {
            let mut mine = Vec::new();
            while let Some(held) = j.lease_next(MINUTE).await.unwrap() {
                mine.push(held.job.id.clone());
                assert!(j.complete(&held.lease, done("{}")).await.unwrap());
            }
            mine
        });
    }
    let mut all = Vec::new();
    while let Some(mine) = claimers.join_next().await {
        all.extend(mine.unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (JOBS, JOBS));
}

pub(crate) async fn instances_report_themselves_and_can_be_forgotten(f: &dyn Factory) {
    let (a, b) = (f.open("a").await, f.open("b").await);
    let me = |id: &str, version: &str| InstanceRecord {
        id: id.into(),
        host: format!("{id}.example"),
        version: version.into(),
        plugins: json!([{ "backend": "x", "plugin": "local-ca", "version": "1.0.0" }]),
        serves: (id == "b").then(|| vec!["x".to_owned()]),
        health: "ok".into(),
        started_at: 1,
        last_seen: 0,
    };
    a.report_instance(&me("a", "0.1.0")).await.unwrap();
    b.report_instance(&me("b", "0.2.0")).await.unwrap();
    a.report_instance(&me("a", "0.1.1")).await.unwrap();
    let (seen, now) = b.instances().await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].id.as_str(), seen[0].version.as_str()),
        ("a", "0.1.1")
    );
    assert_eq!(seen[1].serves, Some(vec!["x".to_owned()]));
    assert_eq!(seen[0].serves, None);
    assert_eq!(seen[1].plugins, me("b", "").plugins);
    for s in &seen {
        assert!(s.last_seen > 0 && s.last_seen <= now, "{s:?} at {now}");
    }
    assert!(a.forget_instance("b").await.unwrap());
    assert!(!a.forget_instance("b").await.unwrap());
    assert_eq!(a.instances().await.unwrap().0.len(), 1);
}

pub(crate) async fn a_shared_key_is_seen_by_every_instance_until_removed(f: &dyn Factory) {
    let (a, b) = (f.open("a").await, f.open("b").await);
    assert_eq!(b.shared_key("pending-j1").await.unwrap(), None);
    a.put_shared_key("pending-j1", b"sealed-1").await.unwrap();
    a.put_shared_key("pending-j1", b"sealed-2").await.unwrap();
    assert_eq!(
        b.shared_key("pending-j1").await.unwrap().as_deref(),
        Some(&b"sealed-2"[..])
    );
    b.remove_shared_key("pending-j1").await.unwrap();
    b.remove_shared_key("pending-j1").await.unwrap();
    assert_eq!(a.shared_key("pending-j1").await.unwrap(), None);
}

pub(crate) async fn decisions_are_seen_by_every_instance_in_order(f: &dyn Factory) {
    let (a, b) = (f.open("a").await, f.open("b").await);
    let first = a.record_decision("vendor", "unload", "a").await.unwrap();
    let second = b.record_decision("ca-x", "drain", "b").await.unwrap();
    assert!(second > first);
    let all = b.decisions_after(0).await.unwrap();
    let seen: Vec<_> = all
        .iter()
        .map(|d| (d.subject.as_str(), d.action.as_str(), d.made_by.as_str()))
        .collect();
    assert_eq!(seen, [("vendor", "unload", "a"), ("ca-x", "drain", "b")]);
    assert!(all.iter().all(|d| d.made_at > 0));
    let later = a.decisions_after(first).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].seq, second);
}
