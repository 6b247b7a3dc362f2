//! `docs/events.md` names every event id the code logs, and nothing else: an admin who
//! filters by an id from the table finds it, and an event added to the code is documented.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// Every `event_id = NNNN` literal under `dir`.
fn literal_ids(dir: &Path, ids: &mut BTreeSet<u32>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            literal_ids(&path, ids);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("event_id = ") {
                let digits: String = text[at + "event_id = ".len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(id) = digits.parse() {
                    ids.insert(id);
                }
            }
        }
    }
}

#[test]
fn the_event_table_names_every_event_the_code_logs() {
    let mut code = BTreeSet::new();
    literal_ids(&repo_root().join("runtime/src"), &mut code);
    assert!(code.len() > 30, "the scan found too few ids: {code:?}");
    // A job's life: seven events per flow (`jobs::events::JobEvent`).
    use certconn::jobs::events::JobEvent;
    use certconn::journal::JobKind;
    for kind in [JobKind::Issue, JobKind::Import, JobKind::Revoke] {
        for event in [
            JobEvent::Accepted,
            JobEvent::Succeeded,
            JobEvent::Pending,
            JobEvent::Retrying,
            JobEvent::Waiting,
            JobEvent::Failed,
            JobEvent::Dead,
        ] {
            code.insert(event.id(kind));
        }
    }
    let table = std::fs::read_to_string(repo_root().join("docs/events.md")).unwrap();
    let mut documented = BTreeSet::new();
    for line in table.lines().filter(|l| l.starts_with("| ")) {
        for cell in line.split('|').map(str::trim) {
            if cell.len() == 4 {
                if let Ok(id) = cell.parse::<u32>() {
                    documented.insert(id);
                }
            }
        }
    }
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "logged but not in docs/events.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/events.md but never logged: {stale:?}"
    );
    // Each flow in its thousand.
    for id in &code {
        assert!(
            (1000..6000).contains(id),
            "event id {id} is outside the flows"
        );
    }
}
