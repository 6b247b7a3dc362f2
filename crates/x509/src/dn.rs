//! Distinguished names as administrators write them: RFC 4514 strings, `CN=Alice,O=Example` —
//! comma-separated, the most significant part (the organisation, the country) *last*, as LDAP
//! and Windows write them; the certificate holds them in the opposite order, which is what
//! OpenSSL's `/O=Example/CN=Alice` shows. One parser for requests, the CLI and the config,
//! with errors that say how to write the name instead of "malformed OID".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{OnceLock, PoisonError, RwLock};

use const_oid::db::DB;
use const_oid::ObjectIdentifier;
use der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use der::{Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

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

/// One `TYPE=value` of a written name, and whether a `+` joins it to the next (a multi-valued
/// RDN).
struct Part<'a> {
    kind: &'a str,
    value: &'a str,
    joined: bool,
}

/// Splits `given` at unescaped `,` and `+` and checks each part before x509-cert's parser
/// sees it, whose own errors ("operation failed", "malformed OID") do not say which part is
/// wrong: a part without `=`, without a type, with a type that is neither a name const-oid
/// knows nor an OID whose arcs are below 2^28 (`1.2.840.113549.1.9.1=…` is fine: see
/// [`crate::dotted_oid`]). Spaces around each type are taken away, as RFC 2253 allowed and
/// people write (`CN=Alice, O=Example`); values are left as they are.
///
/// The split is this function's, not x509-cert's: `Name::from_str` takes a separator after
/// two or more backslashes for an unescaped one (`a\\\,b` — an escaped backslash and an
/// escaped comma — became two parts), so a part it made could hold what this check never saw
/// (a fuzzer found a type of 13 digits there, which const-oid's parser overflows on).
fn split_parts(given: &str) -> Result<Vec<Part<'_>>, DnError> {
    let malformed = |reason: String| DnError::Malformed {
        given: given.to_owned(),
        reason,
    };
    let mut pieces = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in given.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' | '+' => {
                pieces.push((&given[start..i], c == '+'));
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push((&given[start..], false));
    let mut parts = Vec::with_capacity(pieces.len());
    for (part, joined) in pieces {
        let Some((kind, value)) = part.split_once('=') else {
            return Err(malformed(format!(
                "part {:?} has no '=': each part is TYPE=value",
                part.trim()
            )));
        };
        let kind = kind.trim();
        if kind.is_empty() {
            return Err(malformed(format!(
                "part {:?} has no attribute type before its '='",
                part.trim()
            )));
        }
        let known = if kind.starts_with(|c: char| c.is_ascii_digit()) {
            crate::dotted_oid(kind).is_some()
        } else {
            DB.by_name(kind).is_some()
        };
        if !known {
            return Err(malformed(format!(
                "attribute type {kind:?} is neither a name (CN, O, OU, L, ST, C, DC, UID, …) \
                 nor an OID whose parts are below 2^28"
            )));
        }
        parts.push(Part {
            kind,
            value,
            joined,
        });
    }
    Ok(parts)
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
    let malformed = |e: der::Error| DnError::Malformed {
        given: given.to_owned(),
        reason: e.to_string(),
    };
    // Each part read by x509-cert (its value's escapes, `#` hex), grouped into RDNs here.
    let mut rdns = Vec::new();
    let mut rdn = Vec::new();
    for part in split_parts(given)? {
        let atv = AttributeTypeAndValue::from_str(&format!("{}={}", part.kind, part.value))
            .map_err(malformed)?;
        rdn.push(atv);
        if !part.joined {
            rdns.push(
                RelativeDistinguishedName::try_from(std::mem::take(&mut rdn)).map_err(malformed)?,
            );
        }
    }
    // RFC 4514 writes the most significant RDN last; the RDNSequence holds it first.
    rdns.reverse();
    let name: Name = RdnSequence(rdns);
    // `cn=x;o=y` parses as one part whose value is `x;o=y`: almost certainly not meant.
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let mut value = String::new();
            write_attribute(&mut value, atv);
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

/// Writes `name` as RFC 4514 text (`CN=Alice,O=Example`), character for character what
/// x509-cert's `Display` writes, so names already stored in the journal keep their spelling.
///
/// Why not `Display`: for every attribute it looks up the type's shortest name by scanning
/// all ~1,100 entries of const-oid's database, which made naming a certificate's subject and
/// issuer a visible part of each issue job's CPU (the signature trail, the ledger and the
/// PFX's friendly name each name them). Here each type is looked up once per process.
pub fn format(name: &Name) -> String {
    let mut text = String::new();
    // RFC 4514 §2.1: the last RDN of the sequence is written first.
    for (i, rdn) in name.0.iter().rev().enumerate() {
        if i > 0 {
            text.push(',');
        }
        for (j, atv) in rdn.0.iter().enumerate() {
            if j > 0 {
                text.push('+');
            }
            write_attribute(&mut text, atv);
        }
    }
    text
}

/// One `TYPE=value` of [`format`], escaped as RFC 4514 §2.4 asks.
fn write_attribute(out: &mut String, atv: &AttributeTypeAndValue) {
    let value = match atv.value.tag() {
        Tag::PrintableString => PrintableStringRef::try_from(&atv.value)
            .ok()
            .map(|s| s.as_str()),
        Tag::Utf8String => Utf8StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
        Tag::Ia5String => Ia5StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
        Tag::TeletexString => TeletexStringRef::try_from(&atv.value)
            .ok()
            .map(|s| s.as_str()),
        _ => None,
    };
    let (Some(value), Some(key)) = (value, shortest_name(&atv.oid)) else {
        // A type without a name, or a value that is no string: `1.2.3=#04…`, which x509-cert
        // writes (and this rare path does not need to be fast).
        let _ = write!(out, "{atv}");
        return;
    };
    out.extend(key.chars().map(|c| c.to_ascii_uppercase()));
    out.push('=');
    let mut chars = value.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || chars.peek().is_none() => out.push_str("\\ "),
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\x00'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\{:02x}", c as u8);
            }
            _ => out.push(c),
        }
    }
}

/// The shortest of const-oid's names for `oid` (the first, of equally short ones), as
/// x509-cert chooses it. Only types the database knows are remembered, so the memo holds at
/// most the database's ~1,100 entries whatever names a peer sends.
fn shortest_name(oid: &ObjectIdentifier) -> Option<&'static str> {
    static KNOWN: OnceLock<RwLock<HashMap<ObjectIdentifier, &'static str>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(name) = known
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(oid)
    {
        return Some(name);
    }
    let mut shortest: Option<&'static str> = None;
    for name in DB.find_names_for_oid(*oid) {
        if shortest.is_none_or(|s| name.len() < s.len()) {
            shortest = Some(name);
        }
    }
    if let Some(name) = shortest {
        known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*oid, name);
    }
    shortest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `format` must spell every name as x509-cert's `Display` does: the journal already holds
    /// names written that way, and the API and the trail compare them as text.
    #[test]
    fn format_spells_names_as_x509_cert_display_does() {
        use der::asn1::{BmpString, OctetString};
        use der::{Any, Encode};
        use x509_cert::name::RelativeDistinguishedName;

        let mut names: Vec<Name> = [
            "CN=Alice,O=Example",
            "CN=device-0042,OU=Devices,O=Example Corp,L=Zürich,ST=ZH,C=CH",
            r"CN=Smith\, John+UID=jsmith,DC=example,DC=com",
            r#"CN=\#hash\ ,O=a\+b\;c\<d\>e\\f\"g"#,
            "CN=Alice,1.2.840.113549.1.9.1=alice@example.com",
            "CN=x,2.5.4.5=1234,2.5.4.97=VATDE-123,1.3.6.1.4.1.311.60.2.1.3=DE",
            "1.2.3.4=unknown,CN=y",
        ]
        .iter()
        .map(|t| Name::from_str(t).unwrap())
        .collect();
        names.push(Name::default());
        // Values that are no string, and a control character.
        let odd = |value: Any| {
            let atv = AttributeTypeAndValue {
                oid: const_oid::db::rfc4519::CN,
                value,
            };
            Name::from(vec![RelativeDistinguishedName::try_from(vec![atv]).unwrap()])
        };
        names.push(odd(Any::encode_from(
            &OctetString::new(vec![1, 2, 3]).unwrap(),
        )
        .unwrap()));
        names.push(odd(
            Any::encode_from(&BmpString::from_utf8("bmp").unwrap()).unwrap()
        ));
        names.push(odd(
            Any::new(Tag::Utf8String, "tab\there\x7f".as_bytes()).unwrap()
        ));
        for name in &names {
            assert_eq!(format(name), name.to_string(), "{:?}", name.to_der());
        }
    }

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
            // Below 2^32 but not 2^28: const-oid could not print it (api_json, 2026-12-07).
            "C=NA,0.4.709551615.55=x",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("is neither a name"), "{bad}: {e}");
        }
        let name = parse("CN=Alice,1.2.840.113549.1.9.1=alice@example.com").unwrap();
        assert_eq!(name.0.len(), 2);
        // An escaped comma or plus is part of a value, not a new type.
        parse(r"CN=a\,99999999999999999999=x,O=b").unwrap();
    }

    /// Found by the `config` fuzz target, in a CA's `self_signed.subject`: after an escaped
    /// backslash, an escaped comma is still part of the value. x509-cert's own split took it
    /// for a separator, so the part after it (here a 13-digit "type") was parsed unchecked, and
    /// const-oid's arithmetic overflowed on it.
    #[test]
    fn an_escaped_separator_after_an_escaped_backslash_stays_in_the_value() {
        let name = parse(r"CN=a\\\,4463069400815=x").unwrap();
        assert_eq!(name.0.len(), 1);
        assert_eq!(format(&name), r"CN=a\\\,4463069400815=x");
        let name = parse(r"CN=a\\\,O=injected,O=Example").unwrap();
        assert_eq!(name.0.len(), 2, "{name}");
        assert_eq!(format(&name), r"CN=a\\\,O=injected,O=Example");
        // Two backslashes, then a comma: an escaped backslash, then a separator.
        let name = parse(r"CN=a\\,O=Example").unwrap();
        assert_eq!(name.0.len(), 2);
        assert_eq!(format(&name), r"CN=a\\,O=Example");
        // `+` still joins the parts of one RDN.
        let name = parse("CN=Smith+UID=jsmith,DC=example").unwrap();
        assert_eq!(name.0.len(), 2);
        assert_eq!(name.0[1].0.len(), 2);
        assert_eq!(format(&name), "CN=Smith+UID=jsmith,DC=example");
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

    /// Each malformed part is named with what is wrong with it, not x509-cert's "operation
    /// failed" or "malformed OID".
    #[test]
    fn the_wrong_part_is_named() {
        for (bad, why) in [
            ("garbage", "part \"garbage\" has no '='"),
            ("CN=Alice,Example", "part \"Example\" has no '='"),
            (
                "CN=Alice,=Example",
                "part \"=Example\" has no attribute type",
            ),
            (
                "CN=Alice,Org=Example",
                "attribute type \"Org\" is neither a name",
            ),
            ("CN=a+X Y=b", "attribute type \"X Y\" is neither a name"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(why) && !e.contains("operation failed"),
                "{bad}: {e}"
            );
        }
    }

    /// Spaces around a type, as people write names (and RFC 2253 allowed), are not part of it;
    /// the same name comes out as without them. Spaces in values are kept.
    #[test]
    fn spaces_around_types_are_not_part_of_them() {
        let spaced = parse(" CN=Alice Smith, O=Example Corp,  C =CH").unwrap();
        assert_eq!(spaced, parse("CN=Alice Smith,O=Example Corp,C=CH").unwrap());
        assert_eq!(format(&spaced), "CN=Alice Smith,O=Example Corp,C=CH");
        // An escaped separator is part of a value.
        let escaped = parse(r"CN=Smith\, John, O=Example").unwrap();
        assert_eq!(format(&escaped), r"CN=Smith\, John,O=Example");
    }
}
