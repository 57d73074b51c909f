//! `authz-sidecar ctl`: a client for a running sidecar over TCP or its Unix socket.
//!
//! Exit status: 0 on success (a denial included), 1 when the call failed (unreachable,
//! refused, an error status), 2 on a usage error, 3 when `check --fail-on-deny` was denied and
//! 4 when `health` found the sidecar not serving.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::pb;
use crate::api::pb::authz_client::AuthzClient;

/// Exit status of a denied `check --fail-on-deny`.
pub const EXIT_DENIED: u8 = 3;
/// Exit status of `health` when the sidecar is not serving.
pub const EXIT_NOT_SERVING: u8 = 4;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences.
    Human,
    /// One JSON document (protobuf JSON field names, camelCase).
    Json,
}

/// `ctl` flags.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Sidecar address (`http://host:port`).
    #[arg(long, env = "AUTHZ_CTL_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Connect over this Unix socket instead of `--addr`.
    #[arg(long, env = "AUTHZ_CTL_UDS")]
    pub uds: Option<PathBuf>,
    /// File holding the admin bearer token (default: `AUTHZ_ADMIN_TOKEN`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "human")]
    pub output: Output,
    /// The call.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ctl` calls.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Check one action for a subject (exactly one of --permission, --http, --event).
    Check {
        /// Subject id.
        subject: String,
        /// A catalog permission.
        #[arg(long)]
        permission: Option<String>,
        /// An HTTP request, `METHOD /path`.
        #[arg(long)]
        http: Option<String>,
        /// A webhook event type.
        #[arg(long)]
        event: Option<String>,
        /// Scope (project / organization id).
        #[arg(long, default_value = "")]
        scope: String,
        /// Resource, e.g. `collections/c1`.
        #[arg(long, default_value = "")]
        resource: String,
        /// Inline role (repeatable), used instead of the stored subject.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Subject type of the inline roles.
        #[arg(long, default_value = "")]
        subject_type: String,
        /// Print how the decision was reached.
        #[arg(long)]
        explain: bool,
        /// Exit with status 3 when denied.
        #[arg(long)]
        fail_on_deny: bool,
    },
    /// List every role (by name).
    Roles {
        /// Only roles of this kind.
        #[arg(long, default_value = "")]
        kind: String,
    },
    /// List stored subjects (admin: authz.subjects.read).
    Subjects {
        /// Only subjects holding this role.
        #[arg(long, default_value = "")]
        role: String,
        /// Only subjects of this type.
        #[arg(long = "type", default_value = "")]
        subject_type: String,
    },
    /// One stored subject.
    Subject {
        /// The call.
        #[command(subcommand)]
        command: SubjectCommand,
    },
    /// The sidecar's gRPC health (`grpc.health.v1`, overall service).
    Health,
}

/// `ctl subject` calls.
#[derive(Debug, Subcommand)]
pub enum SubjectCommand {
    /// Read one stored subject back (admin: authz.subjects.read).
    Get {
        /// Subject id.
        id: String,
    },
}

/// Why a ctl call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// Cannot reach the sidecar.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Address or socket.
        target: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The sidecar answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl CtlError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// What a successful call prints, and its exit status.
#[derive(Debug)]
pub struct Outcome {
    /// Text for standard output.
    pub text: String,
    /// Exit status (0, or [`EXIT_DENIED`] / [`EXIT_NOT_SERVING`]).
    pub code: u8,
}

fn token(args: &CtlArgs) -> Result<Option<String>, CtlError> {
    if let Some(file) = &args.token_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            CtlError::Usage(format!("--token-file {}: cannot read: {e}", file.display()))
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(std::env::var(crate::config::ENV_ADMIN_TOKEN)
        .ok()
        .filter(|t| !t.is_empty()))
}

async fn channel(args: &CtlArgs) -> Result<Channel, CtlError> {
    if let Some(path) = args.uds.clone() {
        let target = path.display().to_string();
        return Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| CtlError::Connect { target, source });
    }
    let endpoint = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| CtlError::Usage(format!("--addr `{}`: {e}", args.addr)))?;
    endpoint
        .connect()
        .await
        .map_err(|source| CtlError::Connect {
            target: args.addr.clone(),
            source,
        })
}

fn request<T>(message: T, token: &Option<String>) -> Result<tonic::Request<T>, CtlError> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| CtlError::Usage("the admin token is not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Runs one ctl call.
pub async fn run(args: &CtlArgs) -> Result<Outcome, CtlError> {
    let json = args.output == Output::Json;
    let token = token(args)?;
    // Validate flags before connecting.
    let check = match &args.command {
        CtlCommand::Check {
            subject,
            permission,
            http,
            event,
            scope,
            resource,
            roles,
            subject_type,
            explain,
            ..
        } => Some(pb::CheckRequest {
            subject: subject.clone(),
            action: Some(check_action(permission, http, event)?),
            scope: scope.clone(),
            resource: resource.clone(),
            roles: roles.clone(),
            subject_type: subject_type.clone(),
            explain: *explain,
            ..Default::default()
        }),
        _ => None,
    };
    let channel = channel(args).await?;
    if let CtlCommand::Health = args.command {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?
            .into_inner()
            .status();
        let name = status.as_str_name();
        let serving = status == tonic_health::pb::health_check_response::ServingStatus::Serving;
        let text = if json {
            json!({ "status": name }).to_string()
        } else {
            name.to_owned()
        };
        let code = if serving { 0 } else { EXIT_NOT_SERVING };
        return Ok(Outcome { text, code });
    }
    let mut client = AuthzClient::new(channel);
    match &args.command {
        CtlCommand::Check { fail_on_deny, .. } => {
            let message = check.ok_or_else(|| CtlError::Usage("no check".into()))?;
            let r = client.check(request(message, &token)?).await?.into_inner();
            let code = if !r.allowed && *fail_on_deny {
                EXIT_DENIED
            } else {
                0
            };
            let text = if json {
                check_json(&r).to_string()
            } else {
                check_human(&r)
            };
            Ok(Outcome { text, code })
        }
        CtlCommand::Roles { kind } => {
            let mut roles = Vec::new();
            let mut page_token = String::new();
            let revision = loop {
                let page = client
                    .list_roles(request(
                        pb::ListRolesRequest {
                            page_size: 1000,
                            page_token: page_token.clone(),
                            kind: kind.clone(),
                        },
                        &token,
                    )?)
                    .await?
                    .into_inner();
                roles.extend(page.roles);
                if page.next_page_token.is_empty() {
                    break page.revision;
                }
                page_token = page.next_page_token;
            };
            let text = if json {
                json!({
                    "roles": roles.iter().map(role_json).collect::<Vec<_>>(),
                    "revision": revision.to_string(),
                })
                .to_string()
            } else {
                let rows: Vec<Vec<String>> = roles
                    .iter()
                    .map(|r| {
                        let enabled = r.permissions.iter().filter(|p| p.enabled).count();
                        vec![
                            r.name.clone(),
                            r.kind.clone(),
                            if r.all {
                                "all".to_owned()
                            } else {
                                enabled.to_string()
                            },
                            r.paths.len().to_string(),
                            r.pending.join(","),
                        ]
                    })
                    .collect();
                table(&["NAME", "KIND", "GRANTS", "PATHS", "PENDING"], &rows)
            };
            Ok(Outcome { text, code: 0 })
        }
        CtlCommand::Subjects { role, subject_type } => {
            let mut subjects = Vec::new();
            let mut page_token = String::new();
            let revision = loop {
                let page = client
                    .list_subjects(request(
                        pb::ListSubjectsRequest {
                            page_size: 1000,
                            page_token: page_token.clone(),
                            role: role.clone(),
                            r#type: subject_type.clone(),
                            ..Default::default()
                        },
                        &token,
                    )?)
                    .await?
                    .into_inner();
                subjects.extend(page.subjects);
                if page.next_page_token.is_empty() {
                    break page.revision;
                }
                page_token = page.next_page_token;
            };
            let text = if json {
                json!({
                    "subjects": subjects.iter().map(subject_json).collect::<Vec<_>>(),
                    "revision": revision.to_string(),
                })
                .to_string()
            } else {
                let rows: Vec<Vec<String>> = subjects
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.clone(),
                            s.r#type.clone(),
                            s.roles.join(","),
                            s.changed_revision.to_string(),
                        ]
                    })
                    .collect();
                table(&["ID", "TYPE", "ROLES", "CHANGED"], &rows)
            };
            Ok(Outcome { text, code: 0 })
        }
        CtlCommand::Subject {
            command: SubjectCommand::Get { id },
        } => {
            let r = client
                .get_subject(request(pb::GetSubjectRequest { id: id.clone() }, &token)?)
                .await?
                .into_inner();
            let subject = r.subject.unwrap_or_default();
            let text = if json {
                json!({ "subject": subject_json(&subject), "revision": r.revision.to_string() })
                    .to_string()
            } else {
                let mut out = format!(
                    "id:       {}\ntype:     {}\nroles:    {}\nchanged:  revision {}\n",
                    subject.id,
                    subject.r#type,
                    subject.roles.join(", "),
                    subject.changed_revision
                );
                if !subject.only.is_empty() {
                    out.push_str(&format!("only:     {}\n", subject.only.join(", ")));
                }
                for rr in &subject.resources {
                    out.push_str(&format!("resource: {} = {}\n", rr.resource, rr.role));
                }
                if let Some(p) = &subject.pending {
                    out.push_str(&format!("pending:  roles {}\n", p.roles.join(", ")));
                }
                out.trim_end().to_owned()
            };
            Ok(Outcome { text, code: 0 })
        }
        CtlCommand::Health => Err(CtlError::Usage("health is answered above".into())),
    }
}

fn check_action(
    permission: &Option<String>,
    http: &Option<String>,
    event: &Option<String>,
) -> Result<pb::check_request::Action, CtlError> {
    use pb::check_request::Action;
    match (permission, http, event) {
        (Some(p), None, None) => Ok(Action::Permission(p.clone())),
        (None, None, Some(e)) => Ok(Action::Event(e.clone())),
        (None, Some(h), None) => match h.trim().split_once(' ') {
            Some((method, path)) if !method.is_empty() => Ok(Action::Http(pb::HttpRequest {
                method: method.to_owned(),
                path: path.trim().to_owned(),
            })),
            _ => Err(CtlError::Usage(format!(
                "--http `{h}`: expected `METHOD /path`"
            ))),
        },
        _ => Err(CtlError::Usage(
            "check needs exactly one of --permission, --http, --event".into(),
        )),
    }
}

fn check_human(r: &pb::CheckResponse) -> String {
    let mut out = format!(
        "{}: {} (revision {})",
        if r.allowed { "ALLOWED" } else { "DENIED" },
        r.reason,
        r.revision
    );
    if !r.required.is_empty() {
        out.push_str(&format!("\nrequired (any of): {}", r.required.join(", ")));
    }
    if let Some(e) = &r.explanation {
        out.push_str(&format!(
            "\nsubject `{}` ({}, type `{}`), roles [{}]",
            e.subject,
            e.subject_source,
            e.subject_type,
            e.roles.join(", ")
        ));
        if !e.canonical_path.is_empty() {
            out.push_str(&format!("\ncanonical path: {}", e.canonical_path));
        }
        for s in &e.steps {
            let mark = if s.matched { "+" } else { "-" };
            out.push_str(&format!("\n  {mark} {}", s.kind));
            if !s.role.is_empty() {
                out.push_str(&format!(" [{}]", s.role));
            }
            if !s.rule.is_empty() {
                out.push_str(&format!(" {}", s.rule));
            }
            out.push_str(&format!(": {}", s.detail));
        }
    }
    out
}

fn check_json(r: &pb::CheckResponse) -> Value {
    let mut v = json!({
        "allowed": r.allowed,
        "reason": r.reason,
        "required": r.required,
        "revision": r.revision.to_string(),
    });
    if let (Some(e), Some(map)) = (&r.explanation, v.as_object_mut()) {
        map.insert(
            "explanation".into(),
            json!({
                "subject": e.subject,
                "subjectSource": e.subject_source,
                "subjectType": e.subject_type,
                "roles": e.roles,
                "only": e.only,
                "resources": e.resources,
                "canonicalPath": e.canonical_path,
                "steps": e.steps.iter().map(|s| json!({
                    "kind": s.kind, "role": s.role, "rule": s.rule,
                    "matched": s.matched, "detail": s.detail,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    v
}

fn role_json(r: &pb::Role) -> Value {
    fn perm(p: &pb::RolePermission) -> Value {
        json!({
            "name": p.name, "enabled": p.enabled, "projectScoped": p.project_scoped,
            "projects": p.projects, "children": p.children.iter().map(perm).collect::<Vec<_>>(),
        })
    }
    json!({
        "name": r.name, "kind": r.kind, "description": r.description, "base": r.base,
        "permissions": r.permissions.iter().map(perm).collect::<Vec<_>>(),
        "paths": r.paths.iter().map(|p| json!({"path": p.path, "access": p.access, "default": p.default})).collect::<Vec<_>>(),
        "pending": r.pending, "all": r.all, "except": r.except,
        "requiresApproval": r.requires_approval, "installedIn": r.installed_in,
    })
}

fn subject_json(s: &pb::Subject) -> Value {
    json!({
        "id": s.id, "type": s.r#type, "roles": s.roles, "only": s.only,
        "resources": s.resources.iter().map(|r| json!({"resource": r.resource, "role": r.role})).collect::<Vec<_>>(),
        "pending": s.pending.as_ref().map(|p| json!({"roles": p.roles, "only": p.only})),
        "changedRevision": s.changed_revision.to_string(),
    })
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}
