//! The request path as Envoy sends it is raw (`:path`, query included, nothing decoded).
//! Normalize it once, here, so that the engine sees the path the application will serve.

use std::fmt;

/// Why a raw path is refused outright (denied without consulting the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRejection {
    /// Not a valid percent-encoding of UTF-8.
    Malformed,
    /// A `..` segment after decoding: it could escape the route it claims.
    DotDot,
    /// A NUL or other control character after decoding.
    ControlCharacter,
    /// An encoded `?` or `#` would re-split the path after decoding.
    EncodedDelimiter,
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRejection::Malformed => "the path is not valid percent-encoded UTF-8",
            PathRejection::DotDot => "the path holds a `..` segment",
            PathRejection::ControlCharacter => "the path holds a NUL or control character",
            PathRejection::EncodedDelimiter => "the path holds an encoded `?` or `#`",
        })
    }
}

/// Strips the query and fragment, percent-decodes once, merges duplicate slashes and refuses
/// paths that hold `..` segments or control characters after decoding.
pub fn normalize(raw: &str) -> Result<String, PathRejection> {
    let path = match raw.find(['?', '#']) {
        Some(i) => &raw[..i],
        None => raw,
    };
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| PathRejection::Malformed)?;
    if decoded.chars().any(char::is_control) {
        return Err(PathRejection::ControlCharacter);
    }
    if decoded.contains(['?', '#']) {
        return Err(PathRejection::EncodedDelimiter);
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in decoded.split(['/', '\\']).filter(|s| !s.is_empty()) {
        if segment == ".." {
            return Err(PathRejection::DotDot);
        }
        if segment == "." {
            continue;
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_paths_are_normalized_or_refused() {
        let cases: &[(&str, Result<&str, PathRejection>)] = &[
            ("/v1/devices/d1", Ok("/v1/devices/d1")),
            ("/v1/devices/d1?page=2&x=%2F", Ok("/v1/devices/d1")),
            ("/v1/devices/d1#frag", Ok("/v1/devices/d1")),
            ("//v1///devices//d1/", Ok("/v1/devices/d1")),
            ("/v1/devices/%64%31", Ok("/v1/devices/d1")),
            ("/v1/./devices/d1", Ok("/v1/devices/d1")),
            ("/v1/devices/%2564", Ok("/v1/devices/%64")),
            ("/", Ok("/")),
            ("/v1/devices/../admin", Err(PathRejection::DotDot)),
            ("/v1/devices/%2e%2e/admin", Err(PathRejection::DotDot)),
            ("/v1/devices/%2E%2E%2Fadmin", Err(PathRejection::DotDot)),
            ("/v1/devices/..%5cadmin", Err(PathRejection::DotDot)),
            ("/v1/devices/d1%00", Err(PathRejection::ControlCharacter)),
            ("/v1/devices/%ff", Err(PathRejection::Malformed)),
            ("/v1/devices/d1%3Fx", Err(PathRejection::EncodedDelimiter)),
        ];
        for (raw, want) in cases {
            assert_eq!(
                normalize(raw).as_deref().map_err(Clone::clone),
                want.clone(),
                "{raw}"
            );
        }
    }
}
