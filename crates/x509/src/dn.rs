//! Distinguished names as administrators write them: RFC 4514 strings, `CN=Alice,O=Example` —
//! comma-separated, the most significant part (the organisation, the country) *last*, as LDAP
//! and Windows write them; the certificate holds them in the opposite order, which is what
//! OpenSSL's `/O=Example/CN=Alice` shows. One parser for requests, the CLI and the config,
//! with errors that say how to write the name instead of "malformed OID".

use std::str::FromStr;

use x509_cert::name::Name;

/// Why text is not a distinguished name, and how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnError {
    #[error(
        "{given:?} is written the way OpenSSL prints names (/CN=…/O=…); write it as RFC 4514, \
         comma-separated with the most significant part last: {suggestion:?}"
    )]
    SlashForm { given: String, suggestion: String },
    #[error(
        "{given:?} would make {value:?} one name part: separate parts with ',' (RFC 4514), \
         not ';' — for example {suggestion:?}"
    )]
    Semicolon {
        given: String,
        value: String,
        suggestion: String,
    },
    #[error(
        "{given:?} is not a distinguished name ({reason}); write it like \"CN=Alice,O=Example\" \
         (RFC 4514: comma-separated, the most significant part last)"
    )]
    Malformed { given: String, reason: String },
    #[error("the distinguished name is empty")]
    Empty,
}

/// Refuses an attribute type written as a number that is not an OID whose arcs fit in 32 bits
/// (`1.2.840.113549.1.9.1=…` is fine): see [`crate::dotted_oid`].
fn check_numeric_types(given: &str) -> Result<(), DnError> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in given.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' | '+' => {
                parts.push(&given[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&given[start..]);
    for part in parts {
        let Some((kind, _)) = part.split_once('=') else {
            continue;
        };
        let kind = kind.trim();
        if !kind.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        if crate::dotted_oid(kind).is_none() {
            return Err(DnError::Malformed {
                given: given.to_owned(),
                reason: format!(
                    "attribute type {kind:?} is neither a name (CN, O, …) nor an OID whose parts fit in 32 bits"
                ),
            });
        }
    }
    Ok(())
}

/// Parses an RFC 4514 distinguished name.
pub fn parse(text: &str) -> Result<Name, DnError> {
    let given = text.trim();
    if given.is_empty() {
        return Err(DnError::Empty);
    }
    if let Some(rest) = given.strip_prefix('/') {
        // OpenSSL's form lists the most significant part first; RFC 4514 last.
        let mut parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        parts.reverse();
        return Err(DnError::SlashForm {
            given: given.to_owned(),
            suggestion: parts.join(","),
        });
    }
    check_numeric_types(given)?;
    let name = Name::from_str(given).map_err(|e| DnError::Malformed {
        given: given.to_owned(),
        reason: e.to_string(),
    })?;
    // `cn=x;o=y` parses as one part whose value is `x;o=y`: almost certainly not meant.
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let value = atv.to_string();
            let value = value.split_once('=').map_or(value.as_str(), |(_, v)| v);
            if let Some((_, after)) = value.split_once(';') {
                let looks_like_a_part = after.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric())
                });
                if looks_like_a_part {
                    return Err(DnError::Semicolon {
                        given: given.to_owned(),
                        value: value.to_owned(),
                        suggestion: given.replace(';', ","),
                    });
                }
            }
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `api_json` fuzz target: a numeric attribute type too large for the OID
    /// parser's arithmetic. It is refused with the type named, and a real OID still parses.
    #[test]
    fn a_numeric_type_that_is_no_oid_is_refused_not_overflowed() {
        for bad in [
            "55555555555555555555=x",
            "CN=Alice,1.2.4294967296=x",
            "1=x",
            "1..2=x",
            "CN=a+99999999999.5=x",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("is neither a name"), "{bad}: {e}");
        }
        let name = parse("CN=Alice,1.2.840.113549.1.9.1=alice@example.com").unwrap();
        assert_eq!(name.0.len(), 2);
        // An escaped comma or plus is part of a value, not a new type.
        parse(r"CN=a\,99999999999999999999=x,O=b").unwrap();
    }

    #[test]
    fn rfc4514_names_parse_with_the_most_significant_part_last() {
        let name = parse("CN=Alice,O=Example").unwrap();
        // In the certificate the organisation comes first.
        assert_eq!(name.0[0].to_string(), "O=Example");
        assert_eq!(name.to_string(), "CN=Alice,O=Example");
    }

    #[test]
    fn openssl_slash_form_gets_the_rfc4514_spelling() {
        let e = parse("/O=Example/CN=Alice").unwrap_err();
        assert_eq!(
            e,
            DnError::SlashForm {
                given: "/O=Example/CN=Alice".into(),
                suggestion: "CN=Alice,O=Example".into()
            }
        );
        assert!(e.to_string().contains("CN=Alice,O=Example"), "{e}");
    }

    #[test]
    fn a_semicolon_separated_name_is_refused_with_the_comma_spelling() {
        let e = parse("cn=x;o=y").unwrap_err();
        assert!(matches!(e, DnError::Semicolon { .. }), "{e}");
        assert!(e.to_string().contains("\"cn=x,o=y\""), "{e}");
        // A semicolon inside a value, not followed by a part, is a value.
        parse("CN=Smith\\; John").unwrap();
    }

    #[test]
    fn garbage_says_how_to_write_a_name() {
        let e = parse("not a dn").unwrap_err().to_string();
        assert!(e.contains("CN=Alice,O=Example"), "{e}");
        assert_eq!(parse("  "), Err(DnError::Empty));
    }
}
