//! The NDES `mscep_admin` page: where a Microsoft NDES server hands out one-time challenge
//! passwords. NDES serves it as UTF-16LE, usually without a BOM or a charset, and says what went
//! wrong in prose; this reads all of it.

/// What the page said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminPage {
    /// A fresh one-time challenge (valid for 60 minutes on the server's clock).
    Challenge(String),
    /// "The password cache is full": too many unused challenges; it clears as they expire.
    CacheFull,
    /// "You do not have sufficient permission to enroll with SCEP": the account lacks the
    /// enrolment permission on the NDES templates.
    InsufficientPermission,
    /// None of the above; holds the page's text, shortened.
    Unrecognized(String),
}

/// Decodes the page body: UTF-16LE when it has a UTF-16LE BOM or looks like it (NUL in every
/// second byte), UTF-8 otherwise.
pub fn decode(body: &[u8]) -> String {
    let utf16 = body.starts_with(&[0xff, 0xfe])
        || (body.len() >= 4 && body.len().is_multiple_of(2) && {
            let sample = &body[..body.len().min(200)];
            let odd_nuls = sample
                .iter()
                .skip(1)
                .step_by(2)
                .filter(|b| **b == 0)
                .count();
            odd_nuls * 10 >= (sample.len() / 2) * 9
        });
    if utf16 {
        let start = if body.starts_with(&[0xff, 0xfe]) {
            2
        } else {
            0
        };
        let units: Vec<u16> = body[start..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(body.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(body)).into_owned()
    }
}

/// Reads what the page says.
pub fn parse(body: &[u8]) -> AdminPage {
    let html = decode(body);
    let text = strip_tags(&html);
    let lower = text.to_ascii_lowercase();
    if lower.contains("password cache is full") {
        return AdminPage::CacheFull;
    }
    if lower.contains("do not have sufficient permission") {
        return AdminPage::InsufficientPermission;
    }
    if let Some(at) = lower.find("challenge password is:") {
        let rest = &text[at + "challenge password is:".len()..];
        if let Some(word) = rest.split_whitespace().next() {
            if word.len() >= 8 && word.chars().all(|c| c.is_ascii_alphanumeric()) {
                return AdminPage::Challenge(word.to_string());
            }
        }
    }
    let mut short: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if short.len() > 200 {
        let mut cut = 200;
        while !short.is_char_boundary(cut) {
            cut -= 1;
        }
        short.truncate(cut);
    }
    AdminPage::Unrecognized(short)
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../runtime/tests/data/ndes/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn reads_every_fixture_in_both_encodings() {
        for suffix in ["html", "utf16le.html"] {
            assert_eq!(
                parse(&fixture(&format!("mscep_admin_password.{suffix}"))),
                AdminPage::Challenge("8CE317021F690069".into()),
                "{suffix}"
            );
            assert_eq!(
                parse(&fixture(&format!("mscep_admin_cache_full.{suffix}"))),
                AdminPage::CacheFull,
                "{suffix}"
            );
            assert_eq!(
                parse(&fixture(&format!(
                    "mscep_admin_insufficient_permissions.{suffix}"
                ))),
                AdminPage::InsufficientPermission,
                "{suffix}"
            );
        }
        let mut bom = vec![0xff, 0xfe];
        bom.extend(fixture("mscep_admin_password.utf16le.html"));
        assert_eq!(parse(&bom), AdminPage::Challenge("8CE317021F690069".into()));
        assert!(
            matches!(parse(b"<html>Service Unavailable</html>"), AdminPage::Unrecognized(t) if t.contains("Service Unavailable"))
        );
    }
}
