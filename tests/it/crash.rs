//! Durability of acknowledged writes: the built binary is killed with SIGKILL at random points
//! while several clients stream admin changes, restarted on the same data dir, and checked to
//! serve every acknowledged change with a revision that counts exactly the committed ones. Also:
//! cold starts on the same data are deterministic, and a corrupted data dir is refused (non-zero
//! exit, clear message) and left byte-for-byte as it was.
//!
//! The kill points come from an xorshift generator seeded from the clock; the seed is printed
//! and `CRASH_SEED=<n>` replays a run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use authz_sidecar::api::pb::{self, authz_client::AuthzClient};
use common::{ADMIN_TOKEN, admin, audit_after, check, event, http, permission, set};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");
const FIXTURE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rules.yaml");
const FIXTURE: &str = include_str!("../fixtures/rules.yaml");

/// Rounds of kill -9 to attempt, and the wall-clock budget for them.
const ROUNDS: usize = 25;
const MIN_ROUNDS: usize = 6;
const BUDGET: Duration = Duration::from_secs(32);
const CLIENTS: usize = 4;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Roles a fresh subject may get (none of them is ever changed by the test), with a permission
/// the role grants and one it does not.
const SUBJECT_ROLES: [(&str, &str, &str); 3] = [
    ("installed", "organization_info", "devices:read"),
    ("device-reader", "devices:read", "global_read"),
    ("operator", "global_read", "organization_info"),
];

/// `(role, permission)` pairs the toggling clients own: client `k` owns keys `2k` and `2k+1`.
const KEYS: [(&str, &str); 8] = [
    ("extra-1", "devices:read"),
    ("extra-1", "devices:write"),
    ("extra-1", "global_read"),
    ("extra-1", "organization_info"),
    ("extra-2", "devices:read"),
    ("extra-2", "devices:write"),
    ("extra-2", "global_read"),
    ("extra-2", "organization_info"),
];

// ---------------------------------------------------------------------------------------------
// Randomness

/// xorshift64: small, seedable, good enough to pick kill points.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(text) => text.trim().parse().expect("CRASH_SEED is a number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64;
            // Mix so that close clocks give unrelated seeds.
            (nanos ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

/// A running sidecar process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Launch {
    Serving(Proc),
    Exited(ExitStatus, String),
}

fn command(data: &Path, sock: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--listen",
        "none",
        "--uds",
        sock.to_str().expect("utf8"),
        "--data-dir",
        data.to_str().expect("utf8"),
        "--policy",
        FIXTURE_PATH,
        "--log-format",
        "plain",
    ]);
    for (key, _) in std::env::vars() {
        if key.starts_with("AUTHZ_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("AUTHZ_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the binary and waits until it logs "serving" or exits.
fn launch(data: &Path, sock: &Path) -> Launch {
    let mut child = command(data, sock).spawn().expect("spawns the sidecar");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<bool>();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let serving = line.contains("serving") && line.contains("uds=");
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                if serving {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(true) => Launch::Serving(Proc { child, log }),
        Ok(false) => {
            let status = child.wait().expect("wait");
            let text = log.lock().unwrap().clone();
            Launch::Exited(status, text)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the sidecar neither served nor exited within 30 s:\n{}",
                log.lock().unwrap()
            );
        }
    }
}

fn serve(data: &Path, sock: &Path) -> Proc {
    match launch(data, sock) {
        Launch::Serving(proc) => proc,
        Launch::Exited(status, log) => {
            panic!("the sidecar exited ({status}) instead of serving:\n{log}")
        }
    }
}

/// Runs blocking work (process start-up) off the runtime, re-raising its panic as ours.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn uds_client(sock: &Path) -> AuthzClient<Channel> {
    let path: PathBuf = sock.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connects over the Unix socket");
    AuthzClient::new(channel)
}

// ---------------------------------------------------------------------------------------------
// The writers

#[derive(Debug, Clone)]
enum Op {
    /// PutSubject of a fresh subject holding `SUBJECT_ROLES[role]`.
    Put { id: String, role: usize },
    /// UpdatePermission of `KEYS[key]` to `enabled` (always a flip of the known state).
    Toggle { key: usize, enabled: bool },
}

#[derive(Debug, Clone)]
struct Outcome {
    op: Op,
    /// The acknowledged revision; `None` when the call did not return Ok (cut by the kill).
    acked: Option<u64>,
}

async fn send(client: &mut AuthzClient<Channel>, op: &Op) -> Result<u64, tonic::Status> {
    match op {
        Op::Put { id, role } => client
            .put_subject(admin(pb::PutSubjectRequest {
                subject: Some(pb::Subject {
                    id: id.clone(),
                    r#type: "app".into(),
                    roles: vec![SUBJECT_ROLES[*role].0.into()],
                    ..Default::default()
                }),
                expected_revision: 0,
            }))
            .await
            .map(|r| r.into_inner().revision),
        Op::Toggle { key, enabled } => {
            let (role, perm) = KEYS[*key];
            client
                .update_permission(admin(set(role, perm, *enabled, &[])))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    assert!(!r.pending_approval, "{role} needs no approval");
                    r.revision
                })
        }
    }
}

/// One client: alternates fresh subjects and flips of its own two keys until the server dies.
async fn writer(
    sock: PathBuf,
    k: usize,
    round: usize,
    mut rng: Rng,
    mut known: [bool; 2],
    killed: Arc<AtomicBool>,
) -> Vec<Outcome> {
    let mut client = uds_client(&sock).await;
    let mut outcomes = Vec::new();
    for i in 0.. {
        let op = if i % 2 == 0 {
            Op::Put {
                id: format!("c{k}-r{round}-n{i}"),
                role: rng.below(SUBJECT_ROLES.len() as u64) as usize,
            }
        } else {
            let which = rng.below(2) as usize;
            Op::Toggle {
                key: 2 * k + which,
                enabled: !known[which],
            }
        };
        match tokio::time::timeout(RPC_TIMEOUT, send(&mut client, &op)).await {
            Ok(Ok(revision)) => {
                if let Op::Toggle { key, enabled } = op {
                    known[key - 2 * k] = enabled;
                }
                outcomes.push(Outcome {
                    op,
                    acked: Some(revision),
                });
            }
            Ok(Err(status)) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "client {k}: {op:?} failed while the sidecar was alive: {status:?}"
                );
                outcomes.push(Outcome { op, acked: None });
                break;
            }
            Err(_) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "client {k}: {op:?} timed out while the sidecar was alive"
                );
                outcomes.push(Outcome { op, acked: None });
                break;
            }
        }
    }
    outcomes
}

// ---------------------------------------------------------------------------------------------
// What the test knows

/// Everything known to be committed.
#[derive(Default)]
struct Model {
    /// Subjects known to exist: id → index into `SUBJECT_ROLES`.
    subjects: BTreeMap<String, usize>,
    /// Known state of each key.
    keys: [bool; KEYS.len()],
    /// Changes known to be committed after the import.
    committed: u64,
    /// The revision served after the previous restart.
    revision: u64,
    acked_total: u64,
    inflight_committed: u64,
    inflight_lost: u64,
}

/// Checks whose answers never change in this test (nothing touches these roles or subjects).
fn fixed_probes() -> Vec<pb::CheckRequest> {
    vec![
        permission("app1", "devices:read"),
        permission("app1", "devices:write"),
        permission("op1", "global_read"),
        permission("op1", "gl_resource_update"),
        http("app1", "GET", "/v1/devices/d7"),
        http("user1", "GET", "/thngs/t1"),
        http("user1", "POST", "/thngs"),
        http("user1", "GET", "/roles/3"),
        event("app1", "device.online"),
        permission("ghost", "devices:read"),
    ]
}

/// `(allowed, reason, required)` of each probe.
type Answers = Vec<(bool, String, Vec<String>)>;

async fn answers(client: &mut AuthzClient<Channel>, probes: &[pb::CheckRequest]) -> Answers {
    let mut out = Vec::new();
    for p in probes {
        let r = check(client, p.clone()).await;
        out.push((r.allowed, r.reason, r.required));
    }
    out
}

/// Enabled state of every key as ListRoles reports it.
async fn key_states(client: &mut AuthzClient<Channel>) -> [bool; KEYS.len()] {
    let roles = client
        .list_roles(pb::ListRolesRequest {
            kind: "misc".into(),
            ..Default::default()
        })
        .await
        .expect("list roles")
        .into_inner()
        .roles;
    fn find(perms: &[pb::RolePermission], name: &str) -> Option<bool> {
        perms.iter().find_map(|p| {
            if p.name == name {
                Some(p.enabled)
            } else {
                find(&p.children, name)
            }
        })
    }
    let mut out = [false; KEYS.len()];
    for (i, (role, perm)) in KEYS.iter().enumerate() {
        let r = roles
            .iter()
            .find(|r| r.name == *role)
            .unwrap_or_else(|| panic!("role {role} listed"));
        out[i] = find(&r.permissions, perm).unwrap_or(false);
    }
    out
}

async fn inline_allows(client: &mut AuthzClient<Channel>, key: usize) -> bool {
    let (role, perm) = KEYS[key];
    let mut req = permission("probe", perm);
    req.roles = vec![role.into()];
    check(client, req).await.allowed
}

/// Whether subject `id` exists; if it does, it must hold exactly `SUBJECT_ROLES[role]`, and if
/// not, Check must say it is unknown (never half there).
async fn subject_state(client: &mut AuthzClient<Channel>, id: &str, role: usize) -> bool {
    let (name, grants, lacks) = SUBJECT_ROLES[role];
    let yes = check(client, permission(id, grants)).await;
    let no = check(client, permission(id, lacks)).await;
    if yes.allowed {
        assert!(
            yes.reason.contains(name),
            "{id}: allowed through `{}`, expected role {name}",
            yes.reason
        );
        assert!(
            !no.allowed,
            "{id} holds {name} only, yet {lacks} is allowed"
        );
        true
    } else {
        assert!(
            yes.reason.contains("unknown subject"),
            "{id}: neither present with {name} nor absent: `{}`",
            yes.reason
        );
        assert!(!no.allowed);
        false
    }
}

/// After a restart: every acknowledged change of the last round is served, each cut-off change
/// is either wholly there or wholly absent, and the revision counts exactly the committed ones.
async fn verify_round(
    client: &mut AuthzClient<Channel>,
    model: &mut Model,
    outcomes: &[Outcome],
    round: usize,
) {
    let revision = check(client, permission("app1", "devices:read"))
        .await
        .revision;
    let mut acked_revs = HashSet::new();
    let mut committed_now = 0u64;
    let mut expected_keys = model.keys;
    let mut last_acked_rev = [0u64; KEYS.len()];
    for o in outcomes {
        if let Some(rev) = o.acked {
            assert!(
                acked_revs.insert(rev),
                "round {round}: revision {rev} acknowledged twice"
            );
            assert!(
                rev > model.revision && rev <= revision,
                "round {round}: acknowledged revision {rev} outside ({}, {revision}] served after restart",
                model.revision
            );
            model.acked_total += 1;
            committed_now += 1;
        }
    }
    for o in outcomes.iter().filter(|o| o.acked.is_some()) {
        match &o.op {
            Op::Put { id, role } => {
                assert!(
                    subject_state(client, id, *role).await,
                    "round {round}: acknowledged PutSubject `{id}` (revision {:?}) lost after kill -9",
                    o.acked
                );
                model.subjects.insert(id.clone(), *role);
            }
            Op::Toggle { key, enabled } => {
                let rev = o.acked.unwrap();
                if rev > last_acked_rev[*key] {
                    last_acked_rev[*key] = rev;
                    expected_keys[*key] = *enabled;
                }
            }
        }
    }
    let states = key_states(client).await;
    for o in outcomes.iter().filter(|o| o.acked.is_none()) {
        match &o.op {
            Op::Put { id, role } => {
                if subject_state(client, id, *role).await {
                    model.subjects.insert(id.clone(), *role);
                    committed_now += 1;
                    model.inflight_committed += 1;
                } else {
                    model.inflight_lost += 1;
                }
            }
            Op::Toggle { key, enabled } => {
                assert_ne!(
                    *enabled, expected_keys[*key],
                    "every toggle flips the known state"
                );
                if states[*key] == *enabled {
                    expected_keys[*key] = *enabled;
                    committed_now += 1;
                    model.inflight_committed += 1;
                } else {
                    model.inflight_lost += 1;
                }
            }
        }
    }
    for key in 0..KEYS.len() {
        assert_eq!(
            states[key], expected_keys[key],
            "round {round}: {:?} should be enabled={} after restart (last acknowledged revision {})",
            KEYS[key], expected_keys[key], last_acked_rev[key]
        );
        assert_eq!(
            inline_allows(client, key).await,
            expected_keys[key],
            "round {round}: Check disagrees with ListRoles on {:?}",
            KEYS[key]
        );
    }
    model.keys = expected_keys;
    model.committed += committed_now;
    assert_eq!(
        revision,
        1 + model.committed,
        "round {round}: the revision after restart must be 1 (import) + the {} committed changes",
        model.committed
    );

    // The audit trail holds exactly these revisions, and each acknowledged one is its change.
    let trail = audit_after(client, model.revision).await;
    let revs: Vec<u64> = trail.iter().map(|e| e.revision).collect();
    let want: Vec<u64> = (model.revision + 1..=revision).collect();
    assert_eq!(
        revs, want,
        "round {round}: audit revisions are contiguous up to the served one"
    );
    for o in outcomes {
        let Some(rev) = o.acked else { continue };
        let entry = &trail[(rev - model.revision - 1) as usize];
        let target = match &o.op {
            Op::Put { id, .. } => format!("subject/{id}"),
            Op::Toggle { key, .. } => format!("role/{}", KEYS[*key].0),
        };
        assert_eq!(
            entry.target, target,
            "round {round}: audit entry of revision {rev}"
        );
    }
    model.revision = revision;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_at_random_points() {
    let seed = seed();
    println!("kill -9 test: seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let sock = dir.path().join("authz.sock");
    let started = Instant::now();
    let mut model = Model::default();
    let mut baseline: Option<Answers> = None;
    let mut previous: Vec<Outcome> = Vec::new();
    let mut rounds = 0;
    let probes = fixed_probes();

    loop {
        let (d, s) = (data.clone(), sock.clone());
        let proc = blocking(move || serve(&d, &s)).await;
        let mut client = uds_client(&sock).await;
        if rounds == 0 {
            let r = check(&mut client, permission("app1", "devices:read")).await;
            assert_eq!(r.revision, 1, "a fresh data dir serves the imported policy");
            model.revision = 1;
        } else {
            verify_round(&mut client, &mut model, &previous, rounds).await;
        }
        let now = answers(&mut client, &probes).await;
        match &baseline {
            None => baseline = Some(now),
            Some(b) => assert_eq!(&now, b, "round {rounds}: fixed Checks answer as before"),
        }
        let done = rounds >= ROUNDS || (rounds >= MIN_ROUNDS && started.elapsed() > BUDGET);
        if done {
            // The final sweep: every subject ever acknowledged or confirmed, with its role.
            for (id, role) in &model.subjects {
                assert!(
                    subject_state(&mut client, id, *role).await,
                    "subject {id} lost by a later round"
                );
            }
            let r = check(&mut client, permission("app1", "devices:read")).await;
            assert_eq!(r.revision, 1 + model.committed);
            drop(proc);
            break;
        }

        // Stream writes from several clients and kill -9 at a random point.
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let known = [model.keys[2 * k], model.keys[2 * k + 1]];
            let client_rng = Rng::new(rng.next());
            tasks.push(tokio::spawn(writer(
                sock.clone(),
                k,
                rounds,
                client_rng,
                known,
                Arc::clone(&killed),
            )));
        }
        let delay = Duration::from_millis(20 + rng.below(330));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        let mut proc = proc;
        proc.child.kill().expect("SIGKILL");
        proc.child.wait().expect("reaped");
        let log = proc.log.lock().unwrap().clone();
        drop(proc);
        previous.clear();
        for t in tasks {
            previous.extend(t.await.expect("writer task"));
        }
        let acked = previous.iter().filter(|o| o.acked.is_some()).count();
        println!(
            "round {rounds}: killed after {delay:?}, {acked} acknowledged, {} cut off",
            previous.len() - acked
        );
        assert!(
            !log.contains("panicked"),
            "round {rounds}: the sidecar panicked:\n{log}"
        );
        rounds += 1;
    }
    println!(
        "kill -9 survived {rounds} times in {:?}: {} acknowledged writes verified, {} cut-off writes committed, {} cut-off writes absent, final revision {}",
        started.elapsed(),
        model.acked_total,
        model.inflight_committed,
        model.inflight_lost,
        model.revision
    );
    assert!(rounds >= MIN_ROUNDS);
    assert!(model.acked_total > 0, "some writes were acknowledged");
}

// ---------------------------------------------------------------------------------------------
// Cold starts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cold_starts_serve_the_same_decisions_and_revision() {
    let mut sc = common::start(FIXTURE).await;
    {
        let mut c = sc.client().await;
        for (id, role) in [
            ("s-a", "installed"),
            ("s-b", "operator"),
            ("s-c", "extra-1"),
        ] {
            c.put_subject(admin(pb::PutSubjectRequest {
                subject: Some(pb::Subject {
                    id: id.into(),
                    r#type: "app".into(),
                    roles: vec![role.into()],
                    ..Default::default()
                }),
                expected_revision: 0,
            }))
            .await
            .expect("put subject");
        }
        for req in [
            set("extra-1", "devices:write", true, &[]),
            set("operator", "gl_resource_update", true, &[]),
            set(
                "operator",
                "project_read",
                true,
                &["Uh5qRBqc4DcmbNbAANtMnrYm"],
            ),
            common::replace_paths("app_user", &[("/thngs/*", "r")]),
            set("app-one", "devices:write", true, &[]),
        ] {
            c.update_permission(admin(req)).await.expect("update");
        }
        c.approve_pending(admin(pb::ApprovePendingRequest {
            role: "app-one".into(),
            expected_revision: 0,
            ..Default::default()
        }))
        .await
        .expect("approve");
        c.delete_subject(admin(pb::DeleteSubjectRequest {
            id: "s-a".into(),
            expected_revision: 0,
        }))
        .await
        .expect("delete");
    }
    let mut probes = fixed_probes();
    probes.extend([
        permission("s-a", "organization_info"),
        permission("s-b", "gl_resource_update"),
        permission("s-c", "devices:write"),
        permission("app1", "devices:write"),
        http("user1", "GET", "/thngs/t9"),
        http("user1", "POST", "/thngs/t9"),
        {
            let mut p = permission("op1", "project_read");
            p.scope = "Uh5qRBqc4DcmbNbAANtMnrYm".into();
            p
        },
    ]);
    let started = Instant::now();
    let mut first: Option<(u64, Answers, String)> = None;
    for i in 0..20 {
        sc = sc.restart(FIXTURE).await;
        let mut c = sc.client().await;
        let revision = check(&mut c, permission("app1", "devices:read"))
            .await
            .revision;
        assert_eq!(revision, sc.sidecar.start_revision());
        let got = answers(&mut c, &probes).await;
        let roles = c
            .list_roles(pb::ListRolesRequest::default())
            .await
            .expect("list roles")
            .into_inner();
        let roles = format!("{:?}", roles.roles);
        match &first {
            None => {
                assert_eq!(revision, 1 + 3 + 5 + 1 + 1, "import + 10 changes");
                assert!(!got[10].0 && got[11].0 && got[12].0 && got[13].0, "{got:?}");
                first = Some((revision, got, roles));
            }
            Some((rev, answers, listed)) => {
                assert_eq!(revision, *rev, "cold start {i}: revision");
                assert_eq!(&got, answers, "cold start {i}: decisions");
                assert_eq!(&roles, listed, "cold start {i}: ListRoles");
            }
        }
    }
    sc.sidecar.stop().await.expect("stop");
    println!("20 cold starts in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Corruption

/// Every file under `dir`, with its bytes and modification time.
fn snapshot_files(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .expect("mtime");
                out.insert(
                    path.clone(),
                    (std::fs::read(&path).expect("read"), modified),
                );
            }
        }
    }
    out
}

/// How the sidecar that wrote a data dir ended.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL: no clean close, the next start checks a copy first.
    Kill,
    /// SIGTERM: a clean close, noted in `authz-store.clean`.
    Clean,
}

/// A data dir with a few acknowledged changes, the sidecar stopped as `stop` says.
async fn populated_data_dir_stopped(stop: Stop) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let sock = dir.path().join("authz.sock");
    let (d, s) = (data.clone(), sock.clone());
    let mut proc = blocking(move || serve(&d, &s)).await;
    let mut c = uds_client(&sock).await;
    for i in 0..30 {
        c.put_subject(admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: format!("corrupt-{i}"),
                roles: vec!["installed".into()],
                ..Default::default()
            }),
            expected_revision: 0,
        }))
        .await
        .expect("put");
    }
    match stop {
        Stop::Kill => drop(proc), // everything acknowledged is on disk
        Stop::Clean => {
            let pid = proc.child.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status();
            assert!(sent.expect("kill runs").success());
            let status = blocking(move || proc.child.wait().expect("wait")).await;
            assert!(status.success(), "a clean stop exits 0: {status}");
            assert!(
                data.join("authz-store.clean").exists(),
                "a clean stop notes the clean close"
            );
        }
    }
    (dir, data, sock)
}

/// A data dir with a few acknowledged changes, the sidecar killed.
async fn populated_data_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    populated_data_dir_stopped(Stop::Kill).await
}

/// Starts the binary on a corrupted data dir: it must exit non-zero with a message about the
/// data dir, never serve, and leave every file as it was (bytes and modification time).
fn assert_refused_untouched(data: &Path, sock: &Path, what: &str) -> String {
    match start_on_damaged(data, sock, what) {
        Ok(log) => log,
        Err(proc) => {
            let log = proc.log.lock().unwrap().clone();
            panic!(
                "{what}: the sidecar served a corrupted data dir instead of refusing it:\n{log}"
            );
        }
    }
}

/// Starts the binary on a damaged data dir. Refused: the dir must be exactly as it was and the
/// log is returned. Served: the serving process is returned for the caller to judge.
fn start_on_damaged(data: &Path, sock: &Path, what: &str) -> Result<String, Proc> {
    let before = snapshot_files(data);
    let log = match launch(data, sock) {
        Launch::Serving(proc) => return Err(proc),
        Launch::Exited(status, log) => {
            assert!(!status.success(), "{what}: exit status {status}\n{log}");
            let lower = log.to_lowercase();
            assert!(
                lower.contains("data dir") || lower.contains("data store"),
                "{what}: the refusal should name the data dir:\n{log}"
            );
            assert!(!lower.contains("imported the seed"), "{what}:\n{log}");
            log
        }
    };
    let after = snapshot_files(data);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: the set of files changed\n{log}"
    );
    for (path, (bytes, modified)) in &before {
        let (after_bytes, after_modified) = &after[path];
        assert!(
            after_bytes == bytes,
            "{what}: {} was rewritten by the refused start\n{log}",
            path.display()
        );
        assert_eq!(
            after_modified,
            modified,
            "{what}: {} was written to (mtime changed) by the refused start",
            path.display()
        );
    }
    Ok(log)
}

/// Every one of the 30 changes [`populated_data_dir_stopped`] acknowledged is served.
async fn assert_serves_all_acknowledged(sock: &Path, what: &str) {
    let mut c = uds_client(sock).await;
    for i in 0..30 {
        let id = format!("corrupt-{i}");
        let r = check(&mut c, permission(&id, "organization_info")).await;
        assert!(
            r.allowed,
            "{what}: the acknowledged subject {id} is lost: {r:?}"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// `db` cut to half its length.
    TruncatedToHalf,
    /// The second half of `db` overwritten with zeroes.
    ZeroedTail,
}

fn damage(data: &Path, how: Damage) {
    let log = data.join("db");
    let bytes = std::fs::read(&log).expect("db");
    let half = bytes.len() / 2;
    match how {
        Damage::TruncatedToHalf => std::fs::write(&log, &bytes[..half]),
        Damage::ZeroedTail => {
            let mut bytes = bytes;
            bytes[half..].fill(0);
            std::fs::write(&log, bytes)
        }
    }
    .expect("damage db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_refused_and_left_as_is_after_a_kill_or_a_clean_stop() {
    for stop in [Stop::Kill, Stop::Clean] {
        for how in [Damage::TruncatedToHalf, Damage::ZeroedTail] {
            let (_dir, data, sock) = populated_data_dir_stopped(stop).await;
            damage(&data, how);
            let what = format!("{how:?} after {stop:?}");
            blocking(move || assert_refused_untouched(&data, &sock, &what)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_without_the_marker_is_someone_elses_and_left_as_is() {
    let mut rng = Rng::new(seed());
    // Someone's files: a `db` like sled's, and a note.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("db"), garbage(&mut rng, 4096)).expect("write");
    std::fs::write(data.join("notes.txt"), b"keep me").expect("write");
    let sock = dir.path().join("authz.sock");
    let log = blocking(move || assert_refused_untouched(&data, &sock, "foreign files")).await;
    assert!(
        log.contains("no `authz-store` marker") && log.contains("db, notes.txt"),
        "the refusal names the marker and what is there:\n{log}"
    );
    // A sidecar's store whose marker was removed: not opened either.
    for stop in [Stop::Kill, Stop::Clean] {
        let (_dir, data, sock) = populated_data_dir_stopped(stop).await;
        std::fs::remove_file(data.join("authz-store")).expect("rm marker");
        let what = format!("no marker after {stop:?}");
        let log = blocking(move || assert_refused_untouched(&data, &sock, &what)).await;
        assert!(log.contains("no `authz-store` marker"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_missing_pieces_is_refused_as_is_or_serves_every_acknowledged_change() {
    for stop in [Stop::Kill, Stop::Clean] {
        for piece in ["conf", "db", "snap.", "blobs", "authz-store.revision"] {
            let (_dir, data, sock) = populated_data_dir_stopped(stop).await;
            let mut removed = 0;
            for entry in std::fs::read_dir(&data).expect("list") {
                let path = entry.expect("entry").path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name == piece || (piece.ends_with('.') && name.starts_with(piece)) {
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path).expect("rm");
                    } else {
                        std::fs::remove_file(&path).expect("rm");
                    }
                    removed += 1;
                }
            }
            if removed == 0 {
                println!("{piece} after {stop:?}: not present, nothing to remove");
                continue;
            }
            let what = format!("without {piece} after {stop:?}");
            let (d, s, w) = (data.clone(), sock.clone(), what.clone());
            match blocking(move || start_on_damaged(&d, &s, &w)).await {
                Ok(_) => println!("{what}: refused, left as is"),
                Err(proc) => {
                    // sled rebuilds what it can derive (a snapshot from the log): serving is
                    // right only if nothing acknowledged is lost.
                    assert_serves_all_acknowledged(&sock, &what).await;
                    println!("{what}: served every acknowledged change");
                    drop(proc);
                }
            }
        }
    }
}

fn garbage(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_with_garbage_in_its_log_is_refused_and_left_as_is() {
    let (_dir, data, sock) = populated_data_dir().await;
    let seed = seed();
    println!("garbage seed {seed}");
    let mut rng = Rng::new(seed);
    let mut overwritten = Vec::new();
    for path in snapshot_files(&data).into_keys() {
        if path.file_name().is_some_and(|n| n == "conf") {
            continue; // the log and snapshots, not sled's own settings file
        }
        let len = std::fs::metadata(&path).expect("meta").len().max(64) as usize;
        std::fs::write(&path, garbage(&mut rng, len)).expect("overwrite");
        overwritten.push(path);
    }
    assert!(
        overwritten.iter().any(|p| p.ends_with("db")),
        "the sled log `db` exists: {overwritten:?}"
    );
    let data2 = data.clone();
    blocking(move || assert_refused_untouched(&data2, &sock, "garbage db/snapshot files")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_with_a_garbage_config_is_refused_and_left_as_is() {
    let (_dir, data, sock) = populated_data_dir().await;
    let mut rng = Rng::new(seed());
    let conf = data.join("conf");
    let len = std::fs::metadata(&conf).expect("conf exists").len() as usize;
    std::fs::write(&conf, garbage(&mut rng, len)).expect("overwrite");
    blocking(move || assert_refused_untouched(&data, &sock, "garbage conf")).await;
}
