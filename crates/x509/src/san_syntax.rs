//! The syntax RFC 5280 (§4.2.1.6) requires of the subject alternative names certconn is asked
//! to put in a certificate, checked where a request names them (the API, the CLI, an upstream
//! service's work item), so that a typo is refused with its reason instead of being signed into
//! a certificate that relying parties reject or, worse, match by accident.
//!
//! - A DNS name is in the "preferred name syntax": labels of letters, digits and hyphens, 1–63
//!   characters each, none beginning or ending with a hyphen, 253 characters at most, no
//!   trailing dot. An internationalised name is written as its A-labels (`xn--…`). The leftmost
//!   label may be `*`, a wildcard, as CAs issue them.
//! - An email address is a mailbox `local@domain` (RFC 5321's dot-atom local part; the domain a
//!   DNS name). A quoted local part and non-ASCII addresses (which RFC 8398 puts in a different
//!   name form) are refused.
//! - A URI is absolute: a scheme, `:`, and the rest, in the characters RFC 3986 allows, with
//!   well-formed `%` escapes.
//! - A user principal name is `user@suffix`, both parts present, without spaces or control
//!   characters (Windows compares it as text; the suffix need not be a DNS domain).
//!
//! Certificates certconn reads (a renewal's, a CSR's) are not held to this: what a CA signed
//! before is renewed as it is.

/// Why `name` is not a DNS name in the preferred syntax; `wildcard` allows `*` as the leftmost
/// label.
pub(crate) fn dns_name(name: &str, wildcard: bool) -> Result<(), String> {
    const WHAT: &str = "a DNS name is labels of letters, digits and hyphens separated by dots";
    if !name.is_ascii() {
        return Err(format!(
            "{WHAT}; write an internationalised name as its A-labels (xn--…)"
        ));
    }
    if name.ends_with('.') {
        return Err("a DNS name in a certificate has no trailing dot".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "{} characters, more than the 253 a DNS name may have",
            name.len()
        ));
    }
    for (i, label) in name.split('.').enumerate() {
        if label == "*" && i == 0 && wildcard {
            if !name.contains('.') {
                return Err(
                    "a wildcard stands for the leftmost label of a name, not for all of it".into(),
                );
            }
            continue;
        }
        if label.is_empty() {
            return Err(format!("an empty label ({WHAT})"));
        }
        if label.len() > 63 {
            return Err(format!(
                "label {label:?} has {} characters, more than the 63 a label may have",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(if c == '*' && wildcard {
                "a wildcard `*` may only be the whole leftmost label (*.example.com)".into()
            } else if c == '*' {
                "a wildcard is not allowed here".into()
            } else {
                format!("label {label:?} has {c:?} in it ({WHAT})")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} begins or ends with a hyphen ({WHAT}, none at either end)"
            ));
        }
    }
    Ok(())
}

/// Why `address` is not a mailbox `local@domain`.
pub(crate) fn mailbox(address: &str) -> Result<(), String> {
    if !address.is_ascii() {
        return Err(
            "not an ASCII address (an internationalised mailbox is a different name \
             form, RFC 8398, which certconn does not write)"
                .into(),
        );
    }
    if address.contains('<') || address.contains('>') {
        return Err("give the address alone, without a display name or <>".into());
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("not an email address: no @".into());
    };
    if local.is_empty() || local.len() > 64 {
        return Err(format!(
            "the part before the @ has {} characters (1 to 64)",
            local.len()
        ));
    }
    if local.starts_with('"') {
        return Err("a quoted local part is not accepted".into());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(format!(
            "the part before the @, {local:?}, has a dot at its start, at its end, or two in a row"
        ));
    }
    const ATEXT: &str = "!#$%&'*+-/=?^_`{|}~.";
    if let Some(c) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ATEXT.contains(*c)))
    {
        return Err(format!("the part before the @ has {c:?} in it"));
    }
    dns_name(domain, false).map_err(|why| format!("the domain {domain:?}: {why}"))
}

/// Why `uri` is not an absolute URI.
pub(crate) fn uri(uri: &str) -> Result<(), String> {
    let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or_default();
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(
            "not an absolute URI: it must begin with a scheme and a colon (https:, urn:, \
             tag:, …)"
                .into(),
        );
    }
    let rest = &uri[scheme.len() + 1..];
    if rest.is_empty() {
        return Err("nothing after the scheme".into());
    }
    const ALLOWED: &str = "-._~:/?#[]@!$&'()*+,;=%";
    if let Some(c) = rest
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ALLOWED.contains(*c)))
    {
        return Err(format!(
            "{c:?} may not appear in a URI unescaped (RFC 3986; write it %-encoded)"
        ));
    }
    let bytes = rest.as_bytes();
    for (i, _) in rest.match_indices('%') {
        let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(i + 1) && hex(i + 2)) {
            return Err("a % not followed by two hexadecimal digits".into());
        }
    }
    Ok(())
}

/// Why `upn` is not a user principal name `user@suffix`.
pub(crate) fn user_principal_name(upn: &str) -> Result<(), String> {
    let Some((user, suffix)) = upn.rsplit_once('@') else {
        return Err("a user principal name is user@suffix: no @".into());
    };
    if user.is_empty() || suffix.is_empty() {
        return Err("a user principal name is user@suffix, both parts present".into());
    }
    if let Some(c) = upn.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{c:?} may not appear in a user principal name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in [
            "example.com",
            "dev-1.example.com",
            "a",
            "xn--bcher-kva.example",
            "1.2.3.4",
            "localhost",
            &format!("{}.example", "a".repeat(63)),
        ] {
            assert_eq!(dns_name(good, true), Ok(()), "{good}");
        }
        assert_eq!(dns_name("*.example.com", true), Ok(()));
        for (bad, wildcard, why) in [
            ("-bad-.example", true, "hyphen"),
            ("bad-.example", true, "hyphen"),
            ("a..example", true, "empty label"),
            (".example", true, "empty label"),
            ("example.com.", true, "trailing dot"),
            ("host name.example", true, "' '"),
            ("under_score.example", true, "'_'"),
            ("bücher.example", true, "A-labels"),
            ("*", true, "leftmost label"),
            ("a.*.example", true, "whole leftmost label"),
            ("*x.example", true, "whole leftmost label"),
            ("*.example.com", false, "not allowed here"),
        ] {
            let err = dns_name(bad, wildcard).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(dns_name(&long, true).unwrap_err().contains("63"));
        let longer = vec!["abcdefghi"; 26].join(".");
        assert!(dns_name(&longer, true).unwrap_err().contains("253"));
    }

    #[test]
    fn mailboxes() {
        for good in [
            "alice@example.com",
            "first.last+tag@mail.example",
            "o'brien@example.ie",
            "a@b",
        ] {
            assert_eq!(mailbox(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("not an email", "no @"),
            ("alice", "no @"),
            ("@example.com", "1 to 64"),
            ("alice@", "empty label"),
            ("al ice@example.com", "' '"),
            ("alice@exa mple.com", "' '"),
            (".alice@example.com", "dot"),
            ("al..ice@example.com", "dot"),
            ("\"al ice\"@example.com", "quoted"),
            ("Alice <alice@example.com>", "display name"),
            ("jörg@example.de", "RFC 8398"),
            ("alice@-example.com", "hyphen"),
        ] {
            let err = mailbox(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn uris() {
        for good in [
            "https://x.example/",
            "tag:microsoft.com,2022-09-14:sid:S-1-5-21-1004336348-1177238915-682003330-512",
            "urn:uuid:8c5d3f0e-5b7e-4a43-9d4e-2f3c0e6e1a11",
            "spiffe://corp.example/ns/prod/sa/web",
            "https://x.example/a%20b?q=1#f",
        ] {
            assert_eq!(uri(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("not a uri", "scheme"),
            ("/relative/path", "scheme"),
            ("1http://x", "scheme"),
            ("https:", "nothing after"),
            ("https://x.example/a b", "' '"),
            ("https://x.example/\u{e9}", "'é'"),
            ("https://x.example/%zz", "two hexadecimal"),
            ("https://x.example/%4", "two hexadecimal"),
        ] {
            let err = uri(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn user_principal_names() {
        for good in [
            "alice@corp",
            "mapped.user@corp.example",
            "jörg@corp.example",
        ] {
            assert_eq!(user_principal_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("alice", "no @"),
            ("@corp", "both parts"),
            ("alice@", "both parts"),
            ("al ice@corp", "' '"),
            ("alice@corp\n", "'\\n'"),
        ] {
            let err = user_principal_name(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
