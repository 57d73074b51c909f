//! How HTTP decisions read request paths (the sidecar and `authz-sidecar test` alike).

use clap::{Args, ValueEnum};

use super::one_of;
use crate::model::{EncodedSlashes, PathOptions};

/// Default of `--http-encoded-slashes`.
pub const ENCODED_SLASHES_DEFAULT: &str = "refuse";

/// HTTP path flags.
#[derive(Debug, Args)]
pub struct HttpPathArgs {
    /// What `%2F`, `%5C` and a raw `\` in a request path mean to HTTP decisions: `refuse`
    /// (denied: upstreams disagree whether they separate segments) or `data` (one segment's
    /// data, matching only `{param}` and `*`; for upstreams that never split on them).
    #[arg(long, env = "AUTHZ_HTTP_ENCODED_SLASHES", default_value = ENCODED_SLASHES_DEFAULT)]
    pub http_encoded_slashes: String,
}

/// The values of `--http-encoded-slashes` (the model's type knows nothing of flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Slashes {
    Refuse,
    Data,
}

/// Reads an `--http-encoded-slashes` value; `label` names the flag in the error.
pub fn encoded_slashes(label: &str, text: &str, errors: &mut Vec<String>) -> EncodedSlashes {
    match one_of(label, text, errors) {
        Some(Slashes::Data) => EncodedSlashes::Data,
        Some(Slashes::Refuse) | None => EncodedSlashes::Refuse,
    }
}

/// Validates the HTTP path flags into `errors`.
pub fn parse(args: &HttpPathArgs, errors: &mut Vec<String>) -> PathOptions {
    PathOptions {
        encoded_slashes: encoded_slashes(
            "--http-encoded-slashes / AUTHZ_HTTP_ENCODED_SLASHES",
            &args.http_encoded_slashes,
            errors,
        ),
    }
}
