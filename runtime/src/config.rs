//! What every config section is made of. The whole file is composed in the composition root
//! (`app::Config`); each section lives with the module that owns it and checks itself, so a
//! module never reads another's settings and the config never reaches into a module.
//!
//! Three tools keep errors pointing at the right place:
//! - values that must lie in a range are checked while they are read ([`in_range`]), so the
//!   TOML parser reports them at their own line and column, with a caret;
//! - cross-references (a profile naming a backend) keep their span (`toml::Spanned`) and are
//!   reported through a [`Checker`] the same way;
//! - paths are a type, [`ConfigPath`], that resolves itself against the config file's directory
//!   as it is read: no hand-kept list of fields to resolve afterwards.

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading config {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax and type errors, with the parser's own rendering (line, column, caret).
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value that reads well but does not fit with the rest.
    #[error("config {path}, line {line}: {key}: {message}\n{excerpt}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
        excerpt: String,
    },
}

thread_local! {
    /// The directory relative [`ConfigPath`]s resolve against while a file is being read.
    static BASE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Parses `text` (read from `path`) as `T`, resolving every [`ConfigPath`] in it against the
/// directory of `path`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    struct Reset(Option<PathBuf>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            BASE.with(|b| *b.borrow_mut() = previous);
        }
    }
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    let _reset = Reset(BASE.with(|b| b.borrow_mut().replace(base)));
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: missing_at_the_top(&e).unwrap_or_else(|| e.to_string().trim_end().to_owned()),
    })
}

/// A required setting missing from the file's top level, said as such: the parser points its
/// caret at line 1, column 1 (the whole document is the table that lacks it), which reads as
/// if the first line were wrong.
fn missing_at_the_top(e: &toml::de::Error) -> Option<String> {
    let field = e
        .message()
        .strip_prefix("missing field `")?
        .strip_suffix('`')?;
    // The document's own table has no span of its own: toml reports 0..0 for it.
    (e.span()? == (0..0)).then(|| {
        format!(
            "`{field}` is required at the top level and the file does not set it \
             (docs/operations.md lists every setting)"
        )
    })
}

/// A path written in a config file. A relative one is relative to the file's directory, so a
/// config and its data can move together.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigPath(PathBuf);

impl ConfigPath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    pub fn to_path_buf(&self) -> PathBuf {
        self.0.clone()
    }
}

impl<'de> Deserialize<'de> for ConfigPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(d)?;
        if path.as_os_str().is_empty() {
            return Err(D::Error::custom("an empty path"));
        }
        let resolved = match BASE.with(|b| b.borrow().clone()) {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        };
        Ok(Self(resolved))
    }
}

impl std::ops::Deref for ConfigPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ConfigPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl From<PathBuf> for ConfigPath {
    fn from(p: PathBuf) -> Self {
        Self(p)
    }
}

impl From<&str> for ConfigPath {
    fn from(p: &str) -> Self {
        Self(PathBuf::from(p))
    }
}

impl From<&Path> for ConfigPath {
    fn from(p: &Path) -> Self {
        Self(p.to_owned())
    }
}

impl fmt::Debug for ConfigPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ConfigPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.display(), f)
    }
}

/// Reads a number and refuses it outside `MIN..=MAX`, at the value's own position in the file.
/// For `#[serde(deserialize_with = "crate::config::in_range::<_, T, MIN, MAX>")]`.
pub fn in_range<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Copy + TryInto<u64> + fmt::Display,
{
    let value = T::deserialize(d)?;
    match value.try_into() {
        Ok(v) if (MIN..=MAX).contains(&v) => Ok(value),
        _ if MAX == u64::MAX => Err(D::Error::custom(format!(
            "must be at least {MIN} (it is {value})"
        ))),
        _ => Err(D::Error::custom(format!(
            "must be between {MIN} and {MAX} (it is {value})"
        ))),
    }
}

/// [`in_range`] for an optional value.
pub fn in_range_opt<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Copy + TryInto<u64> + fmt::Display,
{
    in_range::<D, T, MIN, MAX>(d).map(Some)
}

/// Reads an address to listen on, `IP:PORT`, at the value's own position, with an error that
/// says what is wrong and how to write one (serde's own says only "invalid socket address
/// syntax"). For `#[serde(deserialize_with = "crate::config::listen_address")]` on a
/// `toml::Spanned<SocketAddr>`.
pub fn listen_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<toml::Spanned<SocketAddr>, D::Error> {
    let text = toml::Spanned::<String>::deserialize(d)?;
    let span = text.span();
    parse_listen_address(text.get_ref())
        .map(|addr| toml::Spanned::new(span, addr))
        .map_err(D::Error::custom)
}

/// [`listen_address`] for an optional one (with `#[serde(default)]`).
pub fn listen_address_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen_address(&text)
        .map(Some)
        .map_err(D::Error::custom)
}

/// `IP:PORT`; an address without a port, a host name (a listener binds an address, and which
/// one a name resolves to can change) or a port above 65535 is refused with the reason.
fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let bare_ip = text.parse::<IpAddr>().ok();
    let bracketed_ip = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
    let why = match text.rsplit_once(':') {
        // `::1:7443` is an IPv6 address of its own, not `::1` and a port.
        _ if bare_ip.is_some_and(|ip| ip.is_ipv6()) => {
            "it has no port: an IPv6 address goes in brackets before its port, [ADDRESS]:PORT"
                .to_owned()
        }
        _ if bare_ip.is_some() || bracketed_ip => "it has no port".to_owned(),
        None => "it has no port".to_owned(),
        Some((host, port)) => match port.parse::<u64>() {
            Err(_) => format!("{port:?} is not a port number"),
            Ok(p) if p > u64::from(u16::MAX) => format!("port {p} is above 65535"),
            Ok(_) if host.parse::<Ipv6Addr>().is_ok() => {
                format!("an IPv6 address goes in brackets: [{host}]:{port}")
            }
            Ok(_) => format!("{host:?} is not an IP address, and a host name is not looked up"),
        },
    };
    Err(format!(
        "{text:?} is not an address to listen on ({why}); write IP:PORT, such as \
         127.0.0.1:7443, 0.0.0.0:7443 or [::]:7443"
    ))
}

/// Reports problems found after parsing at the place in the text they come from.
pub struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> Checker<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    /// An error about the value at `span` (from `toml::Spanned::span`), for the dotted `key`.
    pub fn at(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.excerpt(span, key.into(), message.into(), false)
    }

    /// [`Checker::at`] for a value that may hold a secret: the excerpt shows the line with the
    /// value replaced by `"…"`.
    pub fn at_hiding_value(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.excerpt(span, key.into(), message.into(), true)
    }

    fn excerpt(&self, span: Range<usize>, key: String, message: String, hide: bool) -> ConfigError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[..line_start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let mut content = self.text[line_start..]
            .split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('\r')
            .to_owned();
        let mut width = self.text[start..span.end.clamp(start, self.text.len())]
            .split('\n')
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        if hide {
            let end = span.end.clamp(start, line_start + content.len());
            content = format!(
                "{}\"…\"{}",
                &self.text[line_start..start],
                &self.text[end..line_start + content.len()]
            );
            width = 3;
        }
        let gutter = " ".repeat(line.to_string().len());
        let excerpt = format!(
            "{gutter} |\n{line} | {content}\n{gutter} | {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message,
            excerpt,
        }
    }

    /// An error about a whole section that has no span of its own: points at its header
    /// (`[scep]`), or at the first line when the file has none.
    pub fn section(
        &self,
        header: &str,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let wanted = format!("[{header}]");
        let start = self
            .text
            .lines()
            .scan(0usize, |offset, l| {
                let here = *offset;
                *offset += l.len() + 1;
                Some((here, l))
            })
            .find(|(_, l)| l.trim() == wanted)
            .map_or(0, |(o, _)| o);
        let end = start + wanted.len();
        self.at(start..end, key, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        dir: ConfigPath,
        #[serde(default)]
        absolute: Option<ConfigPath>,
        #[serde(deserialize_with = "in_range::<_, usize, 1, 4096>")]
        memory_mb: usize,
    }

    #[test]
    fn paths_resolve_against_the_config_directory() {
        let s: Sample = parse(
            Path::new("/etc/certconn/certconn.toml"),
            "dir = \"plugins\"\nabsolute = \"/srv/x\"\nmemory_mb = 64\n",
        )
        .unwrap();
        assert_eq!(s.memory_mb, 64);
        assert_eq!(s.dir.as_path(), Path::new("/etc/certconn/plugins"));
        assert_eq!(s.absolute.unwrap().as_path(), Path::new("/srv/x"));
        // Outside a parse, nothing is resolved.
        let outside: ConfigPath = toml::Value::String("rel".into()).try_into().unwrap();
        assert_eq!(outside.as_path(), Path::new("rel"));
    }

    #[test]
    fn a_listen_address_that_cannot_be_bound_says_why_at_its_own_line() {
        #[derive(Debug, Deserialize)]
        struct Listen {
            #[serde(deserialize_with = "listen_address")]
            listen: toml::Spanned<SocketAddr>,
            #[serde(default, deserialize_with = "listen_address_opt")]
            plain: Option<SocketAddr>,
        }
        let fine: Listen = parse(
            Path::new("c.toml"),
            "listen = \"[::1]:7443\"\nplain = \"0.0.0.0:0\"\n",
        )
        .unwrap();
        assert_eq!(fine.listen.get_ref().to_string(), "[::1]:7443");
        assert_eq!(fine.listen.span(), 9..21);
        assert_eq!(fine.plain, Some(SocketAddr::from(([0, 0, 0, 0], 0))));
        let none: Listen = parse(Path::new("c.toml"), "listen = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(none.plain, None);
        for (value, why) in [
            ("localhost", "it has no port"),
            ("127.0.0.1", "it has no port"),
            ("[::1]", "it has no port"),
            (
                "localhost:7443",
                "\"localhost\" is not an IP address, and a host name is not looked up",
            ),
            ("127.0.0.1:99999", "port 99999 is above 65535"),
            ("127.0.0.1:https", "\"https\" is not a port number"),
            (
                "::1:7443",
                "an IPv6 address goes in brackets before its port",
            ),
            (
                "::ffff:10.0.0.1:80",
                "an IPv6 address goes in brackets: [::ffff:10.0.0.1]:80",
            ),
        ] {
            let text = format!("listen = \"127.0.0.1:1\"\nplain = \"{value}\"\n");
            let e = parse::<Listen>(Path::new("c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{value}: {e}");
            assert!(
                e.contains("write IP:PORT, such as 127.0.0.1:7443"),
                "{value}: {e}"
            );
            assert!(e.contains("line 2"), "{value}: {e}");
        }
    }

    /// A required top-level setting that is missing is named as such, not pointed at line 1; one
    /// missing inside a table keeps the parser's caret on that table.
    #[test]
    fn a_missing_top_level_setting_is_named_not_pointed_at_line_one() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Nested {
            dir: ConfigPath,
            inner: Sample,
        }
        for text in ["memory_mb = 1\n", ""] {
            let e = parse::<Sample>(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                "config c.toml: `dir` is required at the top level and the file does not set it \
                 (docs/operations.md lists every setting)"
            );
        }
        let e = parse::<Nested>(
            Path::new("c.toml"),
            "dir = \"d\"\n\n[inner]\nmemory_mb = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3") && e.contains("missing field `dir`"),
            "{e}"
        );
    }

    #[test]
    fn a_value_out_of_range_is_reported_at_its_own_line() {
        let text = "dir = \"d\"\n\nmemory_mb = 0\n";
        let e = parse::<Sample>(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("between 1 and 4096 (it is 0)"), "{e}");
    }

    #[test]
    fn checker_points_at_the_span() {
        let text = "a = 1\n[profiles.x]\nbackend = \"nope\"\n";
        let start = text.find("\"nope\"").unwrap();
        let e = Checker::new(Path::new("c.toml"), text)
            .at(
                start..start + 6,
                "profiles.x.backend",
                "no backend named \"nope\"",
            )
            .to_string();
        assert!(
            e.starts_with("config c.toml, line 3: profiles.x.backend: no backend"),
            "{e}"
        );
        assert!(
            e.contains("3 | backend = \"nope\"\n  |           ^^^^^^"),
            "{e}"
        );
        let e = Checker::new(Path::new("c.toml"), text)
            .section("profiles.x", "profiles.x", "bad")
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
