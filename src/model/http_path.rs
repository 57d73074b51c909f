//! The one reading of an HTTP request path that every HTTP decision uses, `authz.v1 Check{http}`
//! and Envoy's ext_authz alike.
//!
//! Upstreams disagree about paths: some decode before they split, some split first; Tomcat,
//! Jetty and Spring drop `;params` and then resolve `..`; Windows-minded servers read `\` as `/`;
//! some fold Unicode lookalikes into ASCII. A path that two of those readings route differently
//! is a bypass waiting for the right upstream, so the canonical form is deliberately narrow: a
//! path is accepted only when every such reading lands on the same segments, and refused (a
//! denial naming the rule) otherwise. The README's "HTTP paths" table states the same rules.
//!
//! The canonical form has no query, no trailing `/`, and each segment percent-decoded
//! once. Literal segments of endpoint templates and path rules are written in the
//! [literal alphabet](is_literal_char); an escape that decodes into that alphabet is refused as
//! needless, so a segment that held an escape can never equal a literal under any reading, and
//! a segment without one reads the same decoded or not.

use std::borrow::Cow;
use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// Longest request path accepted, query included.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most path segments accepted.
pub const MAX_PATH_SEGMENTS: usize = 64;

/// What an encoded slash (`%2F`), an encoded backslash (`%5C`) or a raw `\` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlashes {
    /// Refused: upstreams disagree whether they separate segments (the default).
    #[default]
    Refuse,
    /// Data inside one segment: they can match only a `{param}` or `*`, never a literal, and
    /// stay encoded (`%2F`, `%5C`) in the canonical form. Only for upstreams that never split on
    /// them, behind an Envoy that passes them through unchanged.
    Data,
}

/// How paths are read; decided once, at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    /// See [`EncodedSlashes`].
    pub encoded_slashes: EncodedSlashes,
}

/// Why a request path is refused. Every refusal is a denial that names its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejection {
    /// The path does not start with `/`.
    NotAbsolute,
    /// Longer than [`MAX_PATH_BYTES`].
    TooLong,
    /// More than [`MAX_PATH_SEGMENTS`] segments.
    TooManySegments,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// The decoded bytes are not UTF-8 (overlong forms included).
    InvalidUtf8,
    /// A NUL or other control character, raw or decoded.
    ControlCharacter,
    /// A segment made of dots (`.`, `..`, in any spelling, `;params` or trailing spaces aside).
    DotSegment,
    /// An empty segment (`//`) before the end of the path.
    EmptySegment,
    /// A `;` (matrix parameters), raw or encoded.
    Parameter,
    /// A raw `\`.
    Backslash,
    /// `%2F` or `%5C`.
    EncodedSlash,
    /// An encoded `?` or `#`: a decoding upstream would cut the path there.
    EncodedDelimiter,
    /// A `#` before the query: request targets never carry a fragment, and upstreams disagree
    /// whether it ends the path or is part of it.
    Fragment,
    /// An escape of a character that needs none (`%61` for `a`, `%2e` for `.`).
    NeedlessEscape(char),
    /// An escaped `%` followed by two hex digits (`%252e`): a second decoding changes the path.
    DoubleEncoding,
    /// A character that Unicode compatibility folding (NFKC) turns into ASCII (`．`, `ｓ`, `ﬁ`).
    Lookalike(char),
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused path: ")?;
        match self {
            PathRejection::NotAbsolute => f.write_str("it must start with `/`"),
            PathRejection::TooLong => write!(f, "longer than {MAX_PATH_BYTES} bytes"),
            PathRejection::TooManySegments => write!(f, "more than {MAX_PATH_SEGMENTS} segments"),
            PathRejection::InvalidEscape => f.write_str("`%` not followed by two hex digits"),
            PathRejection::InvalidUtf8 => f.write_str("it does not decode to UTF-8"),
            PathRejection::ControlCharacter => f.write_str("it holds a NUL or control character"),
            PathRejection::DotSegment => f.write_str("it holds a `.` or `..` segment"),
            PathRejection::EmptySegment => f.write_str("it holds an empty segment (`//`)"),
            PathRejection::Parameter => f.write_str("it holds a `;` parameter"),
            PathRejection::Backslash => f.write_str("it holds a `\\`"),
            PathRejection::EncodedSlash => f.write_str("it holds an encoded `/` or `\\`"),
            PathRejection::EncodedDelimiter => f.write_str("it holds an encoded `?` or `#`"),
            PathRejection::Fragment => f.write_str("it holds a `#` fragment"),
            PathRejection::NeedlessEscape(c) => write!(f, "`{c}` is percent-encoded needlessly"),
            PathRejection::DoubleEncoding => f.write_str("it is percent-encoded twice"),
            PathRejection::Lookalike(c) => {
                write!(f, "`{c}` (U+{:04X}) folds into ASCII", u32::from(*c))
            }
        }
    }
}

impl std::error::Error for PathRejection {}

/// True for the characters a literal segment of an endpoint template or a path rule may hold,
/// and that a request must therefore send unescaped: RFC 3986 `pchar` without `%` and `;`
/// (unreserved, the sub-delimiters but `;`, `:` and `@`).
pub fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | '='
                | ':'
                | '@'
        )
}

/// Checks a literal segment of a template or path rule: only [literal characters](is_literal_char),
/// and not made of dots. A literal outside that alphabet could never match a canonical path.
pub fn check_literal(segment: &str) -> Result<(), String> {
    if let Some(c) = segment.chars().find(|c| !is_literal_char(*c)) {
        return Err(format!(
            "segment `{segment}` holds `{}`; literal segments use letters, digits and -._~!$&'()*+,=:@ only",
            c.escape_default()
        ));
    }
    if segment.bytes().all(|b| b == b'.') {
        return Err(format!("segment `{segment}` is a dot segment"));
    }
    Ok(())
}

/// A request path in its canonical form. Only [`CanonicalPath::parse`] makes one, so every HTTP
/// decision has gone through the same rules. Borrows the request when it needs no decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a>(Cow<'a, str>);

impl<'a> CanonicalPath<'a> {
    /// Reads a raw request target (`:path`, query included) under `options`.
    pub fn parse(raw: &'a str, options: PathOptions) -> Result<CanonicalPath<'a>, PathRejection> {
        if !raw.starts_with('/') {
            return Err(PathRejection::NotAbsolute);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathRejection::TooLong);
        }
        let path = match raw.find('?') {
            Some(i) => &raw[..i],
            None => raw,
        };
        if path.contains('#') {
            return Err(PathRejection::Fragment);
        }
        // `/` alone is the root; otherwise one trailing `/` is dropped and inner ones separate.
        let body = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
        // First pass: every rule, copying nothing, so that a refusal never allocates.
        let mut count = 0;
        for segment in body.split('/') {
            if segment.is_empty() {
                if body.is_empty() {
                    break;
                }
                return Err(PathRejection::EmptySegment);
            }
            count += 1;
            if count > MAX_PATH_SEGMENTS {
                return Err(PathRejection::TooManySegments);
            }
            read_segment(segment, options, &mut NoCopy)?;
        }
        // Second pass, only for a path with escapes: the decoded copy.
        let decoded = body.contains('%').then(|| {
            let mut buf = Vec::with_capacity(path.len());
            for segment in body.split('/') {
                buf.push(b'/');
                // The first pass accepted every segment; this one only copies.
                let _ = read_segment(segment, options, &mut buf);
            }
            buf
        });
        let canonical = match decoded {
            None if body.is_empty() => Cow::Borrowed("/"),
            None => Cow::Borrowed(&path[..1 + body.len()]),
            Some(buf) => {
                Cow::Owned(String::from_utf8(buf).map_err(|_| PathRejection::InvalidUtf8)?)
            }
        };
        if !canonical.is_ascii() {
            check_non_ascii(&canonical)?;
        }
        Ok(CanonicalPath(canonical))
    }

    /// The same path, owning its text.
    pub fn into_owned(self) -> CanonicalPath<'static> {
        CanonicalPath(Cow::Owned(self.0.into_owned()))
    }

    /// The canonical text: `/`-separated decoded segments, no query, no trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, in order (none for `/`).
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        self.0.split('/').filter(|s| !s.is_empty())
    }
}

impl fmt::Display for CanonicalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the decoded bytes of a segment go: a buffer, or nowhere while the path needs no copy.
trait Sink {
    fn push_bytes(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn push_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct NoCopy;

impl Sink for NoCopy {
    fn push_bytes(&mut self, _: &[u8]) {}
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads one raw segment into `out`, decoded. Hard errors return at once; a softer rule
/// (a needless escape, a `;`) is reported after the dot-segment check, which names the attack
/// better (`%2e%2e`, `..;x=1` are dot segments first).
fn read_segment(
    segment: &str,
    options: PathOptions,
    out: &mut impl Sink,
) -> Result<(), PathRejection> {
    let bytes = segment.as_bytes();
    let keep_slashes = options.encoded_slashes == EncodedSlashes::Data;
    let mut soft: Option<PathRejection> = None;
    // Whether the segment, up to a `;` and ignoring trailing spaces, is made of dots only.
    let mut dots = 0usize;
    let mut other = false;
    let mut spaces_after_dots = false;
    let mut in_params = false;
    let mut i = 0;
    while i < bytes.len() {
        let (byte, escaped) = if bytes[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathRejection::InvalidEscape);
            };
            i += 3;
            (hi << 4 | lo, true)
        } else {
            i += 1;
            (bytes[i - 1], false)
        };
        let separator = byte == b'/' || byte == b'\\';
        if byte == b';' {
            in_params = true;
        } else if separator {
            // Kept as data, a separator still ends a piece that a splitting reader would see.
            if dots > 0 && !other {
                return Err(PathRejection::DotSegment);
            }
            (dots, other, spaces_after_dots) = (0, false, false);
        } else if !in_params {
            match byte {
                b'.' if !spaces_after_dots => dots += 1,
                b' ' if dots > 0 => spaces_after_dots = true,
                _ => other = true,
            }
        }
        let c = char::from(byte);
        if c.is_ascii_control() {
            return Err(PathRejection::ControlCharacter);
        }
        match byte {
            b'/' | b'\\' if escaped && !keep_slashes => return Err(PathRejection::EncodedSlash),
            b'\\' if !escaped && !keep_slashes => return Err(PathRejection::Backslash),
            b'/' => out.push_bytes(b"%2F"),
            b'\\' if escaped => out.push_bytes(b"%5C"),
            b'?' | b'#' => return Err(PathRejection::EncodedDelimiter),
            b';' => {
                in_params = true;
                soft.get_or_insert(PathRejection::Parameter);
            }
            b'%' if escaped => {
                let next = (
                    bytes.get(i).copied().and_then(hex),
                    bytes.get(i + 1).copied().and_then(hex),
                );
                if matches!(next, (Some(_), Some(_))) {
                    return Err(PathRejection::DoubleEncoding);
                }
                out.push_bytes(b"%");
            }
            _ if escaped && byte < 0x80 && is_literal_char(c) => {
                soft.get_or_insert(PathRejection::NeedlessEscape(c));
                out.push_bytes(&[byte]);
            }
            _ => out.push_bytes(&[byte]),
        }
    }
    if dots > 0 && !other {
        return Err(PathRejection::DotSegment);
    }
    match soft {
        Some(rejection) => Err(rejection),
        None => Ok(()),
    }
}

/// Refuses non-ASCII characters that NFKC folds into ASCII (fullwidth `．`, `／`, `ｓ`...): an
/// upstream that normalizes Unicode would read another path. C1 controls are refused too.
fn check_non_ascii(text: &str) -> Result<(), PathRejection> {
    for c in text.chars().filter(|c| !c.is_ascii()) {
        if c.is_control() {
            return Err(PathRejection::ControlCharacter);
        }
        if std::iter::once(c).nfkc().any(|n| n.is_ascii()) {
            return Err(PathRejection::Lookalike(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str) -> Result<String, PathRejection> {
        CanonicalPath::parse(raw, PathOptions::default()).map(|p| p.as_str().to_owned())
    }

    fn read_data(raw: &str) -> Result<String, PathRejection> {
        let options = PathOptions {
            encoded_slashes: EncodedSlashes::Data,
        };
        CanonicalPath::parse(raw, options).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn canonical_forms() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("/?x=1", "/"),
            ("/v1/devices/d1", "/v1/devices/d1"),
            ("/v1/devices/d1/", "/v1/devices/d1"),
            ("/v1/devices/d1?page=2&x=%2F", "/v1/devices/d1"),
            ("/v1/devices/d1?x#frag", "/v1/devices/d1"),
            ("/v1/devices/a%20b", "/v1/devices/a b"),
            ("/v1/devices/%C3%A9t%C3%A9", "/v1/devices/été"),
            ("/v1/devices/été", "/v1/devices/été"),
            ("/v1/devices/a%25b", "/v1/devices/a%b"),
            ("/v1/devices/...x", "/v1/devices/...x"),
            ("/v1/devices/a.b", "/v1/devices/a.b"),
            ("/v1/devices/%7Bx%7D", "/v1/devices/{x}"),
        ];
        for (raw, want) in cases {
            assert_eq!(read(raw).as_deref(), Ok(*want), "{raw}");
        }
    }

    #[test]
    fn paths_that_need_no_decoding_are_borrowed() {
        for raw in ["/", "/v1/devices/d1", "/v1/devices/d1/", "/v1?x=%41"] {
            let path = CanonicalPath::parse(raw, PathOptions::default()).expect("valid");
            assert!(matches!(path.0, Cow::Borrowed(_)), "{raw}");
        }
    }

    #[test]
    fn refusals_name_their_rule() {
        use PathRejection::*;
        let cases: &[(&str, PathRejection)] = &[
            ("", NotAbsolute),
            ("v1/devices", NotAbsolute),
            ("*", NotAbsolute),
            ("/users/alice/../bob", DotSegment),
            ("/users/alice/..;/bob", DotSegment),
            ("/users/alice/..;x=1/bob", DotSegment),
            ("/users/alice/%2e%2e/bob", DotSegment),
            ("/users/alice/.%2E/bob", DotSegment),
            ("/users/alice/%2e./bob", DotSegment),
            ("/v1/./devices/d1", DotSegment),
            ("/v1/%2e/devices/d1", DotSegment),
            ("/v1/devices/..", DotSegment),
            ("/v1/devices/...", DotSegment),
            ("/v1/devices/.. /x", DotSegment),
            ("/v1/devices/..%20/x", DotSegment),
            ("/v1//devices", EmptySegment),
            ("//v1/devices", EmptySegment),
            ("/v1/devices//", EmptySegment),
            ("/v1/devices/d1;x=1", Parameter),
            ("/v1/devices;/d1", Parameter),
            ("/v1/devices/d1%3bx", Parameter),
            ("/v1/devices/..%5csnapshots", DotSegment),
            ("/v1/devices/..\\snapshots", DotSegment),
            ("/v1/devices/d1%5csnapshots", EncodedSlash),
            ("/v1/devices/d1%2Fsnapshots", EncodedSlash),
            ("/v1/devices/d1%2fsnapshots", EncodedSlash),
            ("/v1/devices/d1\\snapshots", Backslash),
            ("/v1/devices/d1%00", ControlCharacter),
            ("/v1/devices/d1%0a", ControlCharacter),
            ("/v1/devices/d1\n", ControlCharacter),
            ("/v1/devices/d1%7f", ControlCharacter),
            ("/v1/devices/d1%c2%85", ControlCharacter),
            ("/v1/devices/%ff", InvalidUtf8),
            ("/v1/devices/%c0%ae%c0%ae", InvalidUtf8),
            ("/v1/devices/%e0%80%ae", InvalidUtf8),
            ("/v1/devices/%ed%a0%80", InvalidUtf8),
            ("/v1/devices/%", InvalidEscape),
            ("/v1/devices/%4", InvalidEscape),
            ("/v1/devices/%zz", InvalidEscape),
            ("/v1/devices/d1%3Fx", EncodedDelimiter),
            ("/v1/devices/d1%23x", EncodedDelimiter),
            ("/v1/devices/d1#frag", Fragment),
            ("/users/alice#/../bob", Fragment),
            ("/v1/devices/%64%31", NeedlessEscape('d')),
            ("/users/%61lice", NeedlessEscape('a')),
            ("/v1/devices/d%2D1", NeedlessEscape('-')),
            ("/v1/devices/%252e%252e", DoubleEncoding),
            ("/v1/devices/%252F", DoubleEncoding),
            ("/v1/devices/．．", Lookalike('．')),
            ("/v1/devices/%EF%BC%8E%EF%BC%8E", Lookalike('．')),
            ("/v1/devices/ｓpecial", Lookalike('ｓ')),
            ("/v1/devices/d1／x", Lookalike('／')),
            ("/v1/ﬁles", Lookalike('ﬁ')),
        ];
        for (raw, want) in cases {
            assert_eq!(read(raw), Err(*want), "{raw}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(read(&long), Err(TooLong));
        let deep = "/a".repeat(MAX_PATH_SEGMENTS + 1);
        assert_eq!(read(&deep), Err(TooManySegments));
        assert!(read(&"/a".repeat(MAX_PATH_SEGMENTS)).is_ok());
    }

    #[test]
    fn encoded_slashes_as_data_stay_encoded_in_one_segment() {
        assert_eq!(
            read_data("/projects/group%2fproject/issues").as_deref(),
            Ok("/projects/group%2Fproject/issues")
        );
        assert_eq!(read_data("/a/b%5Cc").as_deref(), Ok("/a/b%5Cc"));
        assert_eq!(read_data("/a/b\\c").as_deref(), Ok("/a/b\\c"));
        assert_eq!(
            CanonicalPath::parse(
                "/projects/g%2Fp/x",
                PathOptions {
                    encoded_slashes: EncodedSlashes::Data
                }
            )
            .expect("valid")
            .segments()
            .count(),
            3
        );
        // Everything else keeps its rule.
        assert_eq!(read_data("/a/..%2f"), Err(PathRejection::DotSegment));
        assert_eq!(read_data("/a/%252F"), Err(PathRejection::DoubleEncoding));
    }

    #[test]
    fn literals_use_the_literal_alphabet() {
        for ok in ["v1", "devices", "a.b", "x-y_z~", "me@home", "a:b", "(x)"] {
            assert!(check_literal(ok).is_ok(), "{ok}");
        }
        for bad in [".", "..", "a;b", "a%20", "a b", "é", "a\\b", "a?b"] {
            assert!(check_literal(bad).is_err(), "{bad}");
        }
    }
}
