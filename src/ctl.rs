//! `authz-sidecar ctl`: a client for a running sidecar over TCP or its Unix socket.
//!
//! Exit status: 0 on success (a denial included), 1 when the call failed (unreachable,
//! refused, an error status), 2 on a usage error (a malformed batch file included), 3 when
//! `check --fail-on-deny` was denied (or, for `batch --fail-on-deny`, any item was) and 4 when
//! `health` found the sidecar not serving.
//!
//! Every admin RPC of `authz.v1.Authz` has a call: `subject put|delete`, `update-permission`,
//! `approve`, `audit`, `who-can` (ListSubjects with an action). The API has no GetRole:
//! `role get` pages through ListRoles.

mod batch_file;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

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
    /// CA certificate (PEM) that signed the sidecar's certificate: connect with TLS (`--addr
    /// https://...`).
    #[arg(long, env = "AUTHZ_CTL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a sidecar that asks for one (`--tls-client-ca`).
    #[arg(long, env = "AUTHZ_CTL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) of `--tls-cert`.
    #[arg(long, env = "AUTHZ_CTL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the sidecar's certificate (default: the host of `--addr`).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "human", global = true)]
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
    /// One stored subject: read, create or replace, delete.
    Subject {
        /// The call.
        #[command(subcommand)]
        command: SubjectCommand,
    },
    /// One role.
    Role {
        /// The call.
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Many checks in CheckBatch calls: JSON lines from FILE (or standard input), one Check a
    /// line: {"subject": "s", "permission": "p"} (or "http": "METHOD /path", "event": "e"; with
    /// "scope", "resource", "roles", "subjectType"). Blank and `#` lines are skipped.
    Batch {
        /// The file; `-` or none reads standard input.
        file: Option<PathBuf>,
        /// Exit with status 3 when any item is denied.
        #[arg(long)]
        fail_on_deny: bool,
    },
    /// Who can do an action: the stored subjects a Check would allow (ListSubjects with an
    /// action; admin: authz.subjects.read).
    WhoCan {
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
        /// Only subjects holding this role.
        #[arg(long, default_value = "")]
        role: String,
        /// Only subjects of this type.
        #[arg(long = "type", default_value = "")]
        subject_type: String,
        /// Stop after this many subjects (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Enable or disable one permission of a role, or replace its path rules (admin:
    /// authz.roles.write). Widening an approval-bound role waits for `approve`.
    UpdatePermission {
        /// The role.
        role: String,
        /// The permission to switch (with --enable or --disable).
        #[arg(long, conflicts_with_all = ["paths", "clear_paths"])]
        permission: Option<String>,
        /// Enable the permission.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable the permission.
        #[arg(long)]
        disable: bool,
        /// Scope id of a scoped permission (repeatable).
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Replace the non-default path rules with these, `PATH=ACCESS` (repeatable).
        #[arg(long = "path", conflicts_with = "clear_paths")]
        paths: Vec<String>,
        /// Remove every non-default path rule.
        #[arg(long)]
        clear_paths: bool,
        /// Refuse unless the policy is still at this revision.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
    },
    /// Accept the pending widening of a role or of a subject (admin: authz.roles.approve).
    Approve {
        /// The role.
        #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
        role: Option<String>,
        /// The subject.
        #[arg(long)]
        subject: Option<String>,
        /// Refuse unless the policy is still at this revision.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
    },
    /// The audit trail of committed changes, oldest first (admin: authz.audit.read).
    Audit {
        /// Entries after this revision.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Stop after this many entries (default: all).
        #[arg(long)]
        limit: Option<usize>,
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
    /// Create or replace a subject (admin: authz.subjects.write).
    Put {
        /// Subject id.
        id: String,
        /// Subject type (ORGANIZATION, PARTNER, app...).
        #[arg(long = "type", default_value = "")]
        subject_type: String,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Override: narrow the roles' set to this permission (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Access role on a resource, `RESOURCE=ROLE` (repeatable).
        #[arg(long = "resource")]
        resources: Vec<String>,
        /// Refuse unless the policy is still at this revision.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
    },
    /// Delete a subject (admin: authz.subjects.write).
    Delete {
        /// Subject id.
        id: String,
        /// Refuse unless the policy is still at this revision.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
    },
}

/// `ctl role` calls.
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// One role with its grants, path rules and pending changes (ListRoles: the API has no
    /// GetRole).
    Get {
        /// Role name.
        name: String,
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
    /// A malformed batch file (nothing was sent).
    #[error(transparent)]
    BatchFile(#[from] batch_file::BatchFileError),
    /// A file named by a flag cannot be read.
    #[error("{flag} {path}: cannot read: {source}")]
    Read {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Something asked for does not exist (a role `role get` did not find).
    #[error("{0}")]
    NotFound(String),
}

impl CtlError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::BatchFile(_) => 2,
            CtlError::Read { .. } => 2,
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
    let mut endpoint = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| CtlError::Usage(format!("--addr `{}`: {e}", args.addr)))?;
    if let Some(tls) = tls_config(args)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CtlError::Usage(format!("TLS: {e}")))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|source| CtlError::Connect {
            target: args.addr.clone(),
            source,
        })
}

fn read_file(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path).map_err(|source| CtlError::Read {
        flag,
        path: path.display().to_string(),
        source,
    })
}

/// The client TLS settings the flags ask for: `https://` needs `--tls-ca` and the reverse,
/// so a typo never silently falls back to plain text.
fn tls_config(args: &CtlArgs) -> Result<Option<ClientTlsConfig>, CtlError> {
    let https = args.addr.starts_with("https://");
    let Some(ca) = &args.tls_ca else {
        if https {
            return Err(CtlError::Usage(format!(
                "--addr `{}` is https: give the CA that signed the sidecar's certificate (--tls-ca)",
                args.addr
            )));
        }
        if args.tls_cert.is_some() {
            return Err(CtlError::Usage("--tls-cert needs --tls-ca".into()));
        }
        return Ok(None);
    };
    if args.uds.is_some() {
        return Err(CtlError::Usage(
            "--tls-ca applies to TCP; the Unix socket is not wrapped in TLS".into(),
        ));
    }
    if !https {
        return Err(CtlError::Usage(format!(
            "--tls-ca needs an https:// --addr (got `{}`)",
            args.addr
        )));
    }
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_file("--tls-ca", ca)?));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read_file("--tls-cert", cert)?,
            read_file("--tls-key", key)?,
        ));
    }
    if let Some(domain) = &args.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(Some(tls))
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
    let prepared = prepare(&args.command)?;
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
        _ => admin_call(&mut client, &token, json, &args.command, prepared).await,
    }
}

/// Requests built from flags or files before connecting, so that a usage error sends nothing.
enum Prepared {
    None,
    Batch(Vec<batch_file::BatchItem>),
    WhoCan(pb::ListSubjectsRequest),
    Update(pb::UpdatePermissionRequest),
    Put(pb::PutSubjectRequest),
}

fn prepare(command: &CtlCommand) -> Result<Prepared, CtlError> {
    Ok(match command {
        CtlCommand::Batch { file, .. } => {
            let (name, text) = match file.as_deref() {
                None => ("<stdin>".to_owned(), read_stdin()?),
                Some(p) if p.as_os_str() == "-" => ("<stdin>".to_owned(), read_stdin()?),
                Some(p) => {
                    let bytes = read_file("batch", p)?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| CtlError::Usage(format!("{}: not UTF-8 text", p.display())))?;
                    (p.display().to_string(), text)
                }
            };
            Prepared::Batch(batch_file::parse(&name, &text)?)
        }
        CtlCommand::WhoCan {
            permission,
            http,
            event,
            scope,
            resource,
            role,
            subject_type,
            ..
        } => {
            use pb::check_request::Action as C;
            use pb::list_subjects_request::Action as L;
            let action = match check_action(permission, http, event).map_err(|_| {
                CtlError::Usage("who-can needs exactly one of --permission, --http, --event".into())
            })? {
                C::Permission(p) => L::Permission(p),
                C::Http(h) => L::Http(h),
                C::Event(e) => L::Event(e),
            };
            Prepared::WhoCan(pb::ListSubjectsRequest {
                role: role.clone(),
                r#type: subject_type.clone(),
                action: Some(action),
                scope: scope.clone(),
                resource: resource.clone(),
                ..Default::default()
            })
        }
        CtlCommand::UpdatePermission {
            role,
            permission,
            enable,
            disable,
            projects,
            paths,
            clear_paths,
            expected_revision,
        } => {
            use pb::update_permission_request::Change;
            let change = match (permission, paths.is_empty() && !*clear_paths) {
                (Some(name), true) => {
                    if enable == disable {
                        return Err(CtlError::Usage(
                            "--permission needs --enable or --disable".into(),
                        ));
                    }
                    Change::Set(pb::RolePermission {
                        name: name.clone(),
                        enabled: *enable,
                        projects: projects.clone(),
                        ..Default::default()
                    })
                }
                (None, false) => {
                    let mut rules = Vec::new();
                    for rule in paths {
                        let Some((path, access)) = rule.rsplit_once('=') else {
                            return Err(CtlError::Usage(format!(
                                "--path `{rule}`: expected `PATH=ACCESS`, e.g. `/things/*=r`"
                            )));
                        };
                        rules.push(pb::PathPermission {
                            path: path.to_owned(),
                            access: access.to_owned(),
                            default: false,
                        });
                    }
                    Change::ReplacePaths(pb::PathPermissions { paths: rules })
                }
                _ => {
                    return Err(CtlError::Usage(
                        "update-permission needs --permission (with --enable/--disable) or \
                         --path/--clear-paths"
                            .into(),
                    ));
                }
            };
            if !projects.is_empty() && permission.is_none() {
                return Err(CtlError::Usage("--project goes with --permission".into()));
            }
            Prepared::Update(pb::UpdatePermissionRequest {
                role: role.clone(),
                change: Some(change),
                expected_revision: *expected_revision,
            })
        }
        CtlCommand::Subject {
            command:
                SubjectCommand::Put {
                    id,
                    subject_type,
                    roles,
                    only,
                    resources,
                    expected_revision,
                },
        } => {
            let mut access = Vec::new();
            for rr in resources {
                match rr.rsplit_once('=') {
                    Some((resource, role)) if !resource.is_empty() && !role.is_empty() => {
                        access.push(pb::ResourceRole {
                            resource: resource.to_owned(),
                            role: role.to_owned(),
                        });
                    }
                    _ => {
                        return Err(CtlError::Usage(format!(
                            "--resource `{rr}`: expected `RESOURCE=ROLE`, e.g. `collections/c1=reader`"
                        )));
                    }
                }
            }
            Prepared::Put(pb::PutSubjectRequest {
                subject: Some(pb::Subject {
                    id: id.clone(),
                    r#type: subject_type.clone(),
                    roles: roles.clone(),
                    only: only.clone(),
                    resources: access,
                    ..Default::default()
                }),
                expected_revision: *expected_revision,
            })
        }
        _ => Prepared::None,
    })
}

fn read_stdin() -> Result<String, CtlError> {
    std::io::read_to_string(std::io::stdin()).map_err(|source| CtlError::Read {
        flag: "batch",
        path: "<stdin>".into(),
        source,
    })
}

/// The calls beyond check, roles, subjects, subject get and health.
async fn admin_call(
    client: &mut AuthzClient<Channel>,
    token: &Option<String>,
    json: bool,
    command: &CtlCommand,
    prepared: Prepared,
) -> Result<Outcome, CtlError> {
    let ok = |text: String| Ok(Outcome { text, code: 0 });
    match (command, prepared) {
        (CtlCommand::Batch { fail_on_deny, .. }, Prepared::Batch(items)) => {
            batch(client, token, json, *fail_on_deny, items).await
        }
        (CtlCommand::WhoCan { limit, .. }, Prepared::WhoCan(mut message)) => {
            let limit = limit.unwrap_or(usize::MAX);
            let mut subjects = Vec::new();
            let mut revision = 0;
            while subjects.len() < limit {
                message.page_size = (limit - subjects.len()).min(1000) as i32;
                let page = client
                    .list_subjects(request(message.clone(), token)?)
                    .await?
                    .into_inner();
                revision = page.revision;
                subjects.extend(page.subjects);
                if page.next_page_token.is_empty() {
                    break;
                }
                message.page_token = page.next_page_token;
            }
            subjects.truncate(limit);
            if json {
                return ok(json!({
                    "subjects": subjects.iter().map(subject_json).collect::<Vec<_>>(),
                    "revision": revision.to_string(),
                })
                .to_string());
            }
            let rows: Vec<Vec<String>> = subjects
                .iter()
                .map(|s| vec![s.id.clone(), s.r#type.clone(), s.roles.join(",")])
                .collect();
            ok(table(&["ID", "TYPE", "ROLES"], &rows))
        }
        (CtlCommand::UpdatePermission { .. }, Prepared::Update(message)) => {
            let r = client
                .update_permission(request(message, token)?)
                .await?
                .into_inner();
            let role = r.role.unwrap_or_default();
            if json {
                return ok(json!({
                    "role": role_json(&role),
                    "revision": r.revision.to_string(),
                    "pendingApproval": r.pending_approval,
                })
                .to_string());
            }
            let state = if r.pending_approval {
                "updated; the widening waits for approval (ctl approve --role)"
            } else {
                "updated"
            };
            ok(format!(
                "role {}: {state} (revision {})",
                role.name, r.revision
            ))
        }
        (CtlCommand::Subject { .. }, Prepared::Put(message)) => {
            let r = client
                .put_subject(request(message, token)?)
                .await?
                .into_inner();
            let subject = r.subject.unwrap_or_default();
            if json {
                return ok(json!({
                    "subject": subject_json(&subject),
                    "revision": r.revision.to_string(),
                    "pendingApproval": r.pending_approval,
                })
                .to_string());
            }
            let state = if r.pending_approval {
                "stored; the widening waits for approval (ctl approve --subject)"
            } else {
                "stored"
            };
            ok(format!(
                "subject {}: {state} (revision {})",
                subject.id, r.revision
            ))
        }
        (
            CtlCommand::Subject {
                command:
                    SubjectCommand::Delete {
                        id,
                        expected_revision,
                    },
            },
            _,
        ) => {
            let message = pb::DeleteSubjectRequest {
                id: id.clone(),
                expected_revision: *expected_revision,
            };
            let r = client
                .delete_subject(request(message, token)?)
                .await?
                .into_inner();
            if json {
                return ok(json!({ "revision": r.revision.to_string() }).to_string());
            }
            ok(format!("subject {id}: deleted (revision {})", r.revision))
        }
        (
            CtlCommand::Approve {
                role,
                subject,
                expected_revision,
            },
            _,
        ) => {
            let message = pb::ApprovePendingRequest {
                role: role.clone().unwrap_or_default(),
                subject: subject.clone().unwrap_or_default(),
                expected_revision: *expected_revision,
            };
            let r = client
                .approve_pending(request(message, token)?)
                .await?
                .into_inner();
            if json {
                let mut v = json!({ "revision": r.revision.to_string() });
                if let Some(map) = v.as_object_mut() {
                    if let Some(role) = &r.role {
                        map.insert("role".into(), role_json(role));
                    }
                    if let Some(subject) = &r.subject {
                        map.insert("subject".into(), subject_json(subject));
                    }
                }
                return ok(v.to_string());
            }
            let what = match (&r.role, &r.subject) {
                (_, Some(s)) => format!("subject {}", s.id),
                (Some(role), None) => format!("role {}", role.name),
                (None, None) => "change".to_owned(),
            };
            ok(format!("{what}: approved (revision {})", r.revision))
        }
        (CtlCommand::Audit { after, limit }, _) => {
            let limit = limit.unwrap_or(usize::MAX);
            let mut entries = Vec::new();
            let mut cursor = *after;
            while entries.len() < limit {
                let page = client
                    .list_audit(request(
                        pb::ListAuditRequest {
                            after_revision: cursor,
                            page_size: (limit - entries.len()).min(1000) as i32,
                        },
                        token,
                    )?)
                    .await?
                    .into_inner();
                let n = page.entries.len();
                entries.extend(page.entries);
                if page.next_after_revision == 0 || n == 0 {
                    break;
                }
                cursor = page.next_after_revision;
            }
            entries.truncate(limit);
            if json {
                return ok(json!({
                    "entries": entries.iter().map(|e| json!({
                        "revision": e.revision.to_string(), "actor": e.actor,
                        "atUnixMs": e.at_unix_ms.to_string(), "action": e.action,
                        "target": e.target, "beforeJson": e.before_json,
                        "afterJson": e.after_json,
                    })).collect::<Vec<_>>(),
                })
                .to_string());
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.revision.to_string(),
                        e.at_unix_ms.to_string(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                    ]
                })
                .collect();
            ok(table(
                &["REVISION", "AT_UNIX_MS", "ACTOR", "ACTION", "TARGET"],
                &rows,
            ))
        }
        (
            CtlCommand::Role {
                command: RoleCommand::Get { name },
            },
            _,
        ) => {
            let mut page_token = String::new();
            let (role, revision) = loop {
                let page = client
                    .list_roles(request(
                        pb::ListRolesRequest {
                            page_size: 1000,
                            page_token: page_token.clone(),
                            kind: String::new(),
                        },
                        token,
                    )?)
                    .await?
                    .into_inner();
                if let Some(role) = page.roles.into_iter().find(|r| r.name == *name) {
                    break (role, page.revision);
                }
                if page.next_page_token.is_empty() {
                    return Err(CtlError::NotFound(format!("no role `{name}`")));
                }
                page_token = page.next_page_token;
            };
            if json {
                return ok(
                    json!({ "role": role_json(&role), "revision": revision.to_string() })
                        .to_string(),
                );
            }
            ok(role_human(&role))
        }
        _ => Err(CtlError::Usage("this call takes other flags".into())),
    }
}

/// `ctl batch`: the items in CheckBatch calls of at most 1000 (the API's bound), each later
/// call asking for at least the first one's revision so the answers never go back in time.
async fn batch(
    client: &mut AuthzClient<Channel>,
    token: &Option<String>,
    json: bool,
    fail_on_deny: bool,
    items: Vec<batch_file::BatchItem>,
) -> Result<Outcome, CtlError> {
    let mut results = Vec::with_capacity(items.len());
    let mut revision = 0;
    for chunk in items.chunks(crate::api::MAX_BATCH_ITEMS) {
        let message = pb::CheckBatchRequest {
            items: chunk.iter().map(|i| i.request.clone()).collect(),
            min_revision: revision,
        };
        let r = client
            .check_batch(request(message, token)?)
            .await
            .map_err(|status| renumber(status, chunk))?
            .into_inner();
        revision = revision.max(r.revision);
        results.extend(r.results);
    }
    let denied = results.iter().filter(|r| !r.allowed).count();
    let code = if fail_on_deny && denied > 0 {
        EXIT_DENIED
    } else {
        0
    };
    let text = if json {
        json!({
            "results": items.iter().zip(&results).map(|(item, r)| {
                let mut v = check_json(r);
                if let Some(map) = v.as_object_mut() {
                    map.insert("line".into(), json!(item.line));
                    map.insert("subject".into(), json!(item.request.subject));
                }
                v
            }).collect::<Vec<_>>(),
            "allowed": results.len() - denied,
            "denied": denied,
            "revision": revision.to_string(),
        })
        .to_string()
    } else {
        let rows: Vec<Vec<String>> = items
            .iter()
            .zip(&results)
            .map(|(item, r)| {
                vec![
                    item.line.to_string(),
                    item.request.subject.clone(),
                    action_text(&item.request.action),
                    if r.allowed { "ALLOWED" } else { "DENIED" }.to_owned(),
                    r.reason.clone(),
                ]
            })
            .collect();
        let mut out = table(&["LINE", "SUBJECT", "ACTION", "DECISION", "REASON"], &rows);
        out.push_str(&format!(
            "\n{} allowed, {denied} denied (revision {revision})",
            results.len() - denied
        ));
        out
    };
    Ok(Outcome { text, code })
}

/// An INVALID_ARGUMENT naming `items[i].field` of one chunk, renamed to the file's line.
fn renumber(status: tonic::Status, chunk: &[batch_file::BatchItem]) -> CtlError {
    let message = status.message();
    if let Some(rest) = message.strip_prefix("items[") {
        if let Some((index, tail)) = rest.split_once(']') {
            if let Some(item) = index.parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                return CtlError::Usage(format!(
                    "line {}: {}: {}",
                    item.line,
                    status.code(),
                    tail.trim_start_matches('.')
                ));
            }
        }
    }
    CtlError::Status(status)
}

fn action_text(action: &Option<pb::check_request::Action>) -> String {
    use pb::check_request::Action;
    match action {
        Some(Action::Permission(p)) => p.clone(),
        Some(Action::Http(h)) => format!("{} {}", h.method, h.path),
        Some(Action::Event(e)) => format!("event {e}"),
        None => String::new(),
    }
}

fn role_human(r: &pb::Role) -> String {
    let mut out = format!("name:     {}\nkind:     {}\n", r.name, r.kind);
    if !r.description.is_empty() {
        out.push_str(&format!("about:    {}\n", r.description));
    }
    if !r.base.is_empty() {
        out.push_str(&format!("base:     {}\n", r.base));
    }
    if r.all {
        out.push_str(&format!("grants:   all except [{}]\n", r.except.join(", ")));
    } else {
        fn enabled(p: &pb::RolePermission, out: &mut Vec<String>) {
            if p.enabled {
                if p.projects.is_empty() {
                    out.push(p.name.clone());
                } else {
                    out.push(format!("{} [{}]", p.name, p.projects.join(", ")));
                }
            }
            for c in &p.children {
                enabled(c, out);
            }
        }
        let mut grants = Vec::new();
        for p in &r.permissions {
            enabled(p, &mut grants);
        }
        out.push_str(&format!("grants:   {}\n", grants.join(", ")));
    }
    for p in &r.paths {
        let default = if p.default { " (default)" } else { "" };
        out.push_str(&format!("path:     {} {}{default}\n", p.path, p.access));
    }
    if !r.pending.is_empty() {
        out.push_str(&format!("pending:  {}\n", r.pending.join(", ")));
    }
    if r.has_pending_paths {
        let paths: Vec<String> = r
            .pending_paths
            .iter()
            .map(|p| format!("{} {}", p.path, p.access))
            .collect();
        out.push_str(&format!("pending paths: [{}]\n", paths.join(", ")));
    }
    if r.requires_approval {
        out.push_str("widening waits for approval\n");
    }
    out.trim_end().to_owned()
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
