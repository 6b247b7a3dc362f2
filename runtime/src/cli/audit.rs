//! `certconn audit`: the signature trail — every signature a CA key made, chained by hash —
//! read straight from the journal file, so it works while the daemon runs, after it stopped,
//! and on a copy of the journal taken elsewhere.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

use certconn::app::Config;
use certconn::journal::sqlite::read_signature_trail;
use certconn::journal::trail::ChainVerifier;
use certconn::journal::SignatureRecord;

/// Entries read per page.
const PAGE: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Check the whole chain: each entry's hash over its contents, each entry linked to the
    /// one before. Prints the head (keep it elsewhere: a cut tail is only found against it);
    /// fails naming the first entry that was removed or altered.
    Verify {
        /// A journal file to check instead of the config's (a copy, for example).
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Also fail unless the chain reaches this head (`SEQ:HASH`, as an earlier verify
        /// printed it): detects entries cut from the end.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
    /// Show the signatures, newest last: time, what was signed (certificate or CRL), the CA
    /// key, serial, subject, backend, plugin version and job.
    List {
        /// A journal file to read instead of the config's.
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Only the last this many.
        #[arg(long, default_value_t = 50)]
        last: usize,
        /// One JSON object per line, with every field and both hashes.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config_path: &Path, what: Audit) -> anyhow::Result<()> {
    let journal = |given: Option<PathBuf>| -> anyhow::Result<PathBuf> {
        match given {
            Some(p) => Ok(p),
            None => Ok(Config::load(config_path)?.journal_path()),
        }
    };
    match what {
        Audit::Verify {
            journal: j,
            expect_head,
        } => verify(&journal(j)?, expect_head.as_deref()),
        Audit::List {
            journal: j,
            last,
            json,
        } => list(&journal(j)?, last, json),
    }
}

/// Every entry, page by page, to `each`.
fn read_all(
    path: &Path,
    mut each: impl FnMut(&SignatureRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !path.exists() {
        bail!("no journal at {}", path.display());
    }
    let mut after = 0;
    loop {
        let page = read_signature_trail(path, after, PAGE)
            .with_context(|| format!("reading the signature trail of {}", path.display()))?
            .with_context(|| {
                format!(
                    "the journal {} has no signature trail yet: it was last opened by a certconn \
                     before the trail existed; the trail starts when this version first opens it",
                    path.display()
                )
            })?;
        for r in &page {
            each(r)?;
            after = r.seq;
        }
        if page.len() < PAGE {
            return Ok(());
        }
    }
}

fn verify(path: &Path, expect_head: Option<&str>) -> anyhow::Result<()> {
    let mut verifier = ChainVerifier::default();
    read_all(path, |r| {
        verifier.check(r).map_err(|e| {
            anyhow::anyhow!("the signature trail of {} is broken: {e}", path.display())
        })
    })?;
    let head = verifier.head();
    if let Some(expected) = expect_head {
        let (seq, hash) = expected
            .split_once(':')
            .with_context(|| format!("--expect-head {expected:?}: expected SEQ:HASH"))?;
        let seq: u64 = seq
            .parse()
            .with_context(|| format!("--expect-head {expected:?}: {seq:?} is not a number"))?;
        // The expected head must still be in the chain: read the entry at that position.
        let found = read_signature_trail(path, seq.saturating_sub(1), 1)?
            .unwrap_or_default()
            .into_iter()
            .next()
            .filter(|r| r.seq == seq);
        match found {
            Some(r) if r.hash == hash => {}
            Some(_) => bail!(
                "the signature trail of {} does not contain the expected head {expected}: entry {seq} has another hash",
                path.display()
            ),
            None => bail!(
                "the signature trail of {} ends at entry {} and no longer reaches the expected head {expected}: entries were cut from its end",
                path.display(),
                head.last_seq
            ),
        }
    }
    println!(
        "signature trail of {}: {} entries, chain intact",
        path.display(),
        head.entries
    );
    println!("head: {}:{}", head.last_seq, head.last_hash);
    Ok(())
}

fn list(path: &Path, last: usize, json: bool) -> anyhow::Result<()> {
    let mut window = std::collections::VecDeque::with_capacity(last.min(PAGE));
    read_all(path, |r| {
        if window.len() == last {
            window.pop_front();
        }
        if last > 0 {
            window.push_back(r.clone());
        }
        Ok(())
    })?;
    if json {
        for r in &window {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if window.is_empty() {
        println!("no signatures recorded");
        return Ok(());
    }
    println!(
        "{:>6}  {:<20}  {:<11}  {:<12}  {:<34}  {:<28}  {:<12}  {:<24}  job",
        "seq", "time (UTC)", "kind", "key", "serial", "subject", "backend", "signer"
    );
    for r in &window {
        let s = &r.signature;
        println!(
            "{:>6}  {:<20}  {:<11}  {:<12}  {:<34}  {:<28}  {:<12}  {:<24}  {}",
            r.seq,
            certconn::report::rfc3339_ms(r.at),
            s.kind.as_str(),
            s.key,
            s.serial,
            if s.subject.is_empty() {
                "-"
            } else {
                &s.subject
            },
            s.backend,
            s.signer,
            s.job.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
