//! Envoy: ext_authz on the API port and the RBAC filter config over xDS.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::one_of;

/// Default of `--envoy-mode`.
pub const DEFAULT_MODE: &str = "enforce";
/// Default of `--envoy-subject-source`.
pub const DEFAULT_SUBJECT_SOURCE: &str = "header";
/// Default of `--envoy-subject-header`.
pub const DEFAULT_SUBJECT_HEADER: &str = "x-subject";
/// Default of `--envoy-jwt-payload-key`.
pub const DEFAULT_JWT_PAYLOAD_KEY: &str = "jwt_payload";
/// Default of `--envoy-jwt-claim`.
pub const DEFAULT_JWT_CLAIM: &str = "sub";
/// Default of `--envoy-revision-header`.
pub const DEFAULT_REVISION_HEADER: &str = "x-authz-revision";
/// Default of `--envoy-subject-upstream-header`.
pub const DEFAULT_SUBJECT_UPSTREAM_HEADER: &str = "x-authz-subject";
/// Default of `--envoy-shadow-header`.
pub const DEFAULT_SHADOW_HEADER: &str = "x-authz-shadow-denied";
/// The default `--envoy-max-message-bytes`: 1 MiB, as for the API's own messages.
pub const DEFAULT_ENVOY_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Default of `--envoy-xds-max-subjects`.
pub const DEFAULT_ENVOY_XDS_MAX_SUBJECTS: usize = 2_000;

/// Bounds of `--envoy-max-message-bytes`: Envoy's smallest requests are a few hundred bytes;
/// its request headers are bounded at 8 MiB (`max_request_headers_kb` at most 8192).
const ENVOY_MAX_MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 4096..=(64 * 1024 * 1024);

/// Envoy flags.
#[derive(Debug, Args)]
pub struct EnvoyArgs {
    /// Envoy ext_authz on the same port: `enforce`, `shadow` (always allow; log, count and mark
    /// would-be denials) or `off`.
    #[arg(long, env = "AUTHZ_ENVOY_MODE", default_value = DEFAULT_MODE)]
    pub envoy_mode: String,
    /// Where ext_authz takes the subject from: `header`, `jwt` (a jwt_authn payload claim) or
    /// `spiffe` (the peer's SPIFFE id).
    #[arg(long, env = "AUTHZ_ENVOY_SUBJECT_SOURCE", default_value = DEFAULT_SUBJECT_SOURCE)]
    pub envoy_subject_source: String,
    /// Request header carrying the subject (with `--envoy-subject-source header`).
    #[arg(long, env = "AUTHZ_ENVOY_SUBJECT_HEADER", default_value = DEFAULT_SUBJECT_HEADER)]
    pub envoy_subject_header: String,
    /// `payload_in_metadata` name of the jwt_authn provider (with `--envoy-subject-source jwt`).
    #[arg(
        long,
        env = "AUTHZ_ENVOY_JWT_PAYLOAD_KEY",
        default_value = DEFAULT_JWT_PAYLOAD_KEY
    )]
    pub envoy_jwt_payload_key: String,
    /// JWT claim holding the subject id.
    #[arg(long, env = "AUTHZ_ENVOY_JWT_CLAIM", default_value = DEFAULT_JWT_CLAIM)]
    pub envoy_jwt_claim: String,
    /// Header added upstream (and to denials) with the policy revision of the decision.
    #[arg(
        long,
        env = "AUTHZ_ENVOY_REVISION_HEADER",
        default_value = DEFAULT_REVISION_HEADER
    )]
    pub envoy_revision_header: String,
    /// Header added upstream with the decided subject.
    #[arg(
        long,
        env = "AUTHZ_ENVOY_SUBJECT_UPSTREAM_HEADER",
        default_value = DEFAULT_SUBJECT_UPSTREAM_HEADER
    )]
    pub envoy_subject_upstream_header: String,
    /// Header marking a would-be denial in shadow mode.
    #[arg(
        long,
        env = "AUTHZ_ENVOY_SHADOW_HEADER",
        default_value = DEFAULT_SHADOW_HEADER
    )]
    pub envoy_shadow_header: String,
    /// Remove the subject header before the request goes upstream.
    #[arg(long, env = "AUTHZ_ENVOY_STRIP_SUBJECT_HEADER")]
    pub envoy_strip_subject_header: bool,
    /// Leave the denial reason out of 403 bodies.
    #[arg(long, env = "AUTHZ_ENVOY_HIDE_REASON")]
    pub envoy_hide_reason: bool,
    /// Largest ext_authz CheckRequest accepted, in bytes; a larger one is refused before it is
    /// read (gRPC OUT_OF_RANGE, which Envoy turns into a denial).
    #[arg(
        long,
        env = "AUTHZ_ENVOY_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_ENVOY_MAX_MESSAGE_BYTES
    )]
    pub envoy_max_message_bytes: usize,
    /// Also serve Envoy's RBAC filter config over xDS (ECDS) here: `HOST:PORT` or
    /// `unix:PATH`. Envoy then lets through what the policy allows on its own and asks
    /// ext_authz only about the rest (docs/xds-rbac.md). Off by default.
    #[arg(long, env = "AUTHZ_ENVOY_XDS_LISTEN")]
    pub envoy_xds_listen: Option<String>,
    /// Above this many subjects the xDS config compiles nothing and every request goes to
    /// ext_authz (Envoy memory and push time grow with subjects; see BENCHMARKS.md).
    #[arg(
        long,
        env = "AUTHZ_ENVOY_XDS_MAX_SUBJECTS",
        default_value_t = DEFAULT_ENVOY_XDS_MAX_SUBJECTS
    )]
    pub envoy_xds_max_subjects: usize,
}

/// Where the xDS server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsListen {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// Whether and how the ext_authz service decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvoyMode {
    /// Denials deny.
    Enforce,
    /// Everything is allowed; would-be denials are logged, counted and marked in a header.
    Shadow,
    /// Not served.
    Off,
}

/// Where the ext_authz subject comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubjectSource {
    /// A request header (set by a trusted filter in front; strip client-sent copies).
    Header,
    /// A claim of the payload Envoy's jwt_authn filter verified and forwarded.
    Jwt,
    /// The peer's SPIFFE id (mTLS in the mesh).
    Spiffe,
}

/// ext_authz settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// Mode.
    pub mode: EnvoyMode,
    /// Subject source.
    pub subject_source: SubjectSource,
    /// Subject header name, lower-case.
    pub subject_header: String,
    /// jwt_authn `payload_in_metadata` key.
    pub jwt_payload_key: String,
    /// JWT claim with the subject.
    pub jwt_claim: String,
    /// Revision header name.
    pub revision_header: String,
    /// Upstream subject header name.
    pub subject_upstream_header: String,
    /// Shadow-mode marker header name.
    pub shadow_header: String,
    /// Remove the subject header upstream.
    pub strip_subject_header: bool,
    /// Omit reasons from denial bodies.
    pub hide_reason: bool,
    /// Largest ext_authz request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Where the xDS (ECDS) server for Envoy's RBAC filter listens; `None`: not served.
    pub xds_listen: Option<XdsListen>,
    /// Most subjects compiled into the RBAC config.
    pub xds_max_subjects: usize,
}

impl Default for EnvoyConfig {
    fn default() -> Self {
        EnvoyConfig {
            mode: EnvoyMode::Enforce,
            subject_source: SubjectSource::Header,
            subject_header: DEFAULT_SUBJECT_HEADER.into(),
            jwt_payload_key: DEFAULT_JWT_PAYLOAD_KEY.into(),
            jwt_claim: DEFAULT_JWT_CLAIM.into(),
            revision_header: DEFAULT_REVISION_HEADER.into(),
            subject_upstream_header: DEFAULT_SUBJECT_UPSTREAM_HEADER.into(),
            shadow_header: DEFAULT_SHADOW_HEADER.into(),
            strip_subject_header: false,
            hide_reason: false,
            max_message_bytes: DEFAULT_ENVOY_MAX_MESSAGE_BYTES,
            xds_listen: None,
            xds_max_subjects: DEFAULT_ENVOY_XDS_MAX_SUBJECTS,
        }
    }
}

/// A header name the sidecar sets or reads, lower-case; the check is `http::HeaderName`'s (an
/// RFC 9110 token).
fn header_name(flag: &str, value: &str, errors: &mut Vec<String>) -> String {
    match http::HeaderName::from_bytes(value.as_bytes()) {
        Ok(name) => name.as_str().to_owned(),
        Err(_) => {
            errors.push(format!(
                "--{flag}: `{value}` is not a valid HTTP header name"
            ));
            value.to_ascii_lowercase()
        }
    }
}

fn xds_listen(text: Option<&str>, errors: &mut Vec<String>) -> Option<XdsListen> {
    match text {
        None | Some("") | Some("none") => None,
        Some(text) => match text.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Some(XdsListen::Unix(path.into())),
            _ => match text.parse::<SocketAddr>() {
                Ok(addr) => Some(XdsListen::Tcp(addr)),
                Err(_) => {
                    errors.push(format!(
                        "--envoy-xds-listen / AUTHZ_ENVOY_XDS_LISTEN: `{text}` is not HOST:PORT or unix:PATH"
                    ));
                    None
                }
            },
        },
    }
}

/// Validates the Envoy flags into `errors`.
pub fn parse(args: &EnvoyArgs, errors: &mut Vec<String>) -> EnvoyConfig {
    let envoy = EnvoyConfig {
        mode: one_of("--envoy-mode / AUTHZ_ENVOY_MODE", &args.envoy_mode, errors)
            .unwrap_or(EnvoyMode::Enforce),
        subject_source: one_of(
            "--envoy-subject-source / AUTHZ_ENVOY_SUBJECT_SOURCE",
            &args.envoy_subject_source,
            errors,
        )
        .unwrap_or(SubjectSource::Header),
        subject_header: header_name("envoy-subject-header", &args.envoy_subject_header, errors),
        jwt_payload_key: args.envoy_jwt_payload_key.clone(),
        jwt_claim: args.envoy_jwt_claim.clone(),
        revision_header: header_name("envoy-revision-header", &args.envoy_revision_header, errors),
        subject_upstream_header: header_name(
            "envoy-subject-upstream-header",
            &args.envoy_subject_upstream_header,
            errors,
        ),
        shadow_header: header_name("envoy-shadow-header", &args.envoy_shadow_header, errors),
        strip_subject_header: args.envoy_strip_subject_header,
        hide_reason: args.envoy_hide_reason,
        max_message_bytes: args.envoy_max_message_bytes,
        xds_listen: xds_listen(args.envoy_xds_listen.as_deref(), errors),
        xds_max_subjects: args.envoy_xds_max_subjects,
    };
    if !ENVOY_MAX_MESSAGE_BYTES_RANGE.contains(&envoy.max_message_bytes) {
        errors.push(format!(
            "--envoy-max-message-bytes / AUTHZ_ENVOY_MAX_MESSAGE_BYTES: {} is not between {} and {}",
            envoy.max_message_bytes,
            ENVOY_MAX_MESSAGE_BYTES_RANGE.start(),
            ENVOY_MAX_MESSAGE_BYTES_RANGE.end()
        ));
    }
    // Every answer sets or removes each header the sidecar owns; two of them under one
    // name would leave the result to the order in which Envoy applies the changes.
    let owned = [
        ("envoy-subject-header", &envoy.subject_header),
        ("envoy-revision-header", &envoy.revision_header),
        (
            "envoy-subject-upstream-header",
            &envoy.subject_upstream_header,
        ),
        ("envoy-shadow-header", &envoy.shadow_header),
    ];
    for (i, (flag, name)) in owned.iter().enumerate() {
        if let Some((other, _)) = owned[..i].iter().find(|(_, n)| n == name) {
            errors.push(format!(
                "--{flag} and --{other} both name `{name}`: each header the sidecar sets or removes needs a name of its own"
            ));
        }
    }
    envoy
}
