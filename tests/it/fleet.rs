//! Fleet mode against a real etcd server started by the tests (`/usr/bin/etcd`, installed by
//! `.ci/run` from Debian's `etcd-server`): several sidecars on one etcd prefix, read-your-writes
//! across them, etcd killed and restarted mid-stream, a compaction during an outage, a restart
//! while etcd is down, and the measured write-to-visible latency.
//!
//! Without an `etcd` binary every test prints a loud SKIPPED line and returns.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use authz_sidecar::api::pb;
use authz_sidecar::fleet::{self, EtcdClient, EtcdConfig, FleetConfig, Layout};
use authz_sidecar::model::file::{EMBEDDED_DEFAULT, parse_policy};
use authz_sidecar::server::Sidecar;
use authz_sidecar::startup::Config;
use common::{TestSidecar, admin, permission};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PREFIX: &str = "/authz/";

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

macro_rules! require_etcd {
    () => {
        if etcd_binary().is_none() {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 SKIPPED: etcd not installed (apt-get install etcd-server); a fleet-mode test in {} did not run\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                file!()
            );
            return;
        }
    };
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An etcd server on loopback with a temp data dir; killed on drop.
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    async fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log");
        let child = Command::new(etcd_binary().expect("etcd"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if client.range_prefix(b"/ready-probe/").await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn config(&self, endpoint: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![endpoint.to_owned()],
            prefix: PREFIX.into(),
            credentials: None,
            ca_pem: None,
            client_identity: None,
        }
    }

    fn client(&self) -> EtcdClient {
        EtcdClient::new(&self.config(&self.url())).expect("client")
    }

    /// Imports the fleet tests' policy (see [`fleet_policy`]).
    async fn seed(&self) -> u64 {
        self.seed_with(&fleet_policy()).await
    }

    async fn seed_with(&self, text: &str) -> u64 {
        let policy = parse_policy("built-in", text).expect("valid");
        fleet::import_policy(&self.client(), &Layout::new(PREFIX), &policy, "test")
            .await
            .expect("import")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of etcd that a test can cut (one sidecar's network partition).
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (up, conns) = (Arc::clone(&up), Arc::clone(&conns));
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().expect("lock").push(task);
                }
            })
        };
        Proxy {
            addr,
            up,
            accept,
            conns,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.conns.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The embedded example without approval: these tests are about mirroring, and a new app made
/// through the API would otherwise wait for its set to be approved
/// (`approval_through_one_sidecar_reaches_the_others` covers that through etcd).
fn fleet_policy() -> String {
    let policy = EMBEDDED_DEFAULT.replace("    requires_approval: true\n", "");
    assert_ne!(
        policy, EMBEDDED_DEFAULT,
        "the example's app roles require approval"
    );
    policy
}

fn fleet_config(dir: &Path, endpoint: &str, tweak: impl FnOnce(&mut FleetConfig)) -> Config {
    let mut config = common::config(dir, &fleet_policy());
    let mut fleet = FleetConfig {
        etcd: EtcdConfig {
            endpoints: vec![endpoint.to_owned()],
            prefix: PREFIX.into(),
            credentials: None,
            ca_pem: None,
            client_identity: None,
        },
        max_staleness: None,
        min_revision_wait: Duration::from_millis(2000),
    };
    tweak(&mut fleet);
    config.fleet = Some(fleet);
    config
}

async fn start_fleet(endpoint: &str) -> TestSidecar {
    start_fleet_with(endpoint, |_| {}).await
}

async fn start_fleet_with(endpoint: &str, tweak: impl FnOnce(&mut FleetConfig)) -> TestSidecar {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fleet_config(dir.path(), endpoint, tweak);
    let sidecar = tokio::time::timeout(Duration::from_secs(20), Sidecar::launch(config))
        .await
        .expect("fleet sidecar starts in time")
        .expect("fleet sidecar starts");
    TestSidecar { sidecar, dir }
}

async fn restart_fleet(t: TestSidecar, endpoint: &str) -> TestSidecar {
    let TestSidecar { sidecar, dir } = t;
    sidecar.stop().await.expect("clean stop");
    let config = fleet_config(dir.path(), endpoint, |_| {});
    let sidecar = tokio::time::timeout(Duration::from_secs(20), Sidecar::launch(config))
        .await
        .expect("fleet sidecar restarts in time")
        .expect("fleet sidecar restarts");
    TestSidecar { sidecar, dir }
}

fn subject(id: &str, role: &str) -> pb::PutSubjectRequest {
    pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: id.into(),
            r#type: "app".into(),
            roles: vec![role.into()],
            ..Default::default()
        }),
        expected_revision: 0,
    }
}

/// A Check that waits (bounded by the sidecar's --min-revision-wait-ms) for `min_revision`.
fn at_least(mut request: pb::CheckRequest, min_revision: u64) -> pb::CheckRequest {
    request.min_revision = min_revision;
    request
}

async fn health(t: &TestSidecar) -> i32 {
    health_of(t, "").await
}

/// The status of one health service (`""` is readiness).
async fn health_of(t: &TestSidecar, service: &str) -> i32 {
    let addr = t.sidecar.health_addr().expect("health listener");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("health connects");
    let mut client = HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Polls `probe` until it holds, at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_through_one_sidecar_reaches_the_others() {
    require_etcd!();
    let etcd = Etcd::start().await;
    etcd.seed_with(EMBEDDED_DEFAULT).await;
    let a = start_fleet(&etcd.url()).await;
    let b = start_fleet(&etcd.url()).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // A new app made through A holds nothing until its set is approved...
    let put = ca
        .put_subject(admin(subject("new-app", "app-dashboard")))
        .await
        .expect("put through A")
        .into_inner();
    assert!(put.pending_approval);
    let r = common::check(
        &mut cb,
        at_least(permission("new-app", "devices:read"), put.revision),
    )
    .await;
    assert!(!r.allowed, "{r:?}");
    // ...approved through B, it is effective on both at the approval's revision.
    let approved = cb
        .approve_pending(admin(pb::ApprovePendingRequest {
            role: String::new(),
            expected_revision: 0,
            subject: "new-app".into(),
        }))
        .await
        .expect("approved through B")
        .into_inner();
    for client in [&mut ca, &mut cb] {
        let r = common::check(
            client,
            at_least(permission("new-app", "devices:read"), approved.revision),
        )
        .await;
        assert!(r.allowed && r.revision >= approved.revision, "{r:?}");
    }
    // A widening of an app role through B waits on A too.
    let widened = cb
        .update_permission(admin(common::set(
            "app-dashboard",
            "alarms:write",
            true,
            &[],
        )))
        .await
        .expect("update through B")
        .into_inner();
    assert!(widened.pending_approval);
    let r = common::check(
        &mut ca,
        at_least(permission("new-app", "alarms:write"), widened.revision),
    )
    .await;
    assert!(!r.allowed, "{r:?}");
    // Approved through A, effective on B at the approval's revision.
    let approved = ca
        .approve_pending(admin(pb::ApprovePendingRequest {
            role: "app-dashboard".into(),
            expected_revision: 0,
            ..Default::default()
        }))
        .await
        .expect("approve through A")
        .into_inner();
    let r = common::check(
        &mut cb,
        at_least(permission("new-app", "alarms:write"), approved.revision),
    )
    .await;
    assert!(r.allowed && r.revision == approved.revision, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_sidecar_is_visible_on_the_others_at_the_same_revision() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let seeded = etcd.seed().await;
    let a = start_fleet(&etcd.url()).await;
    let b = start_fleet(&etcd.url()).await;
    let c = start_fleet(&etcd.url()).await;
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);
    for client in [&mut ca, &mut cb, &mut cc] {
        let r = common::check(client, permission("dashboard", "devices:read")).await;
        assert!(r.allowed, "{r:?}");
        assert_eq!(
            r.revision, seeded,
            "every sidecar reports the etcd revision it applied"
        );
    }

    // A subject written through A.
    let put = ca
        .put_subject(admin(subject("fleet-app", "app-dashboard")))
        .await
        .expect("put through A")
        .into_inner();
    assert!(put.revision > seeded);
    // A answers only once its own mirror applied the write: read-your-writes locally.
    let r = common::check(&mut ca, permission("fleet-app", "devices:read")).await;
    assert!(r.allowed && r.revision == put.revision, "{r:?}");
    for client in [&mut cb, &mut cc] {
        let r = common::check(
            client,
            at_least(permission("fleet-app", "devices:read"), put.revision),
        )
        .await;
        assert!(r.allowed, "{r:?}");
        assert_eq!(r.revision, put.revision, "same revision on every sidecar");
    }

    // A role narrowed through B (narrowing applies at once), visible on A and C.
    let updated = cb
        .update_permission(admin(common::set(
            "app-dashboard",
            "devices:read",
            false,
            &[],
        )))
        .await
        .expect("update through B")
        .into_inner();
    assert!(updated.revision > put.revision && !updated.pending_approval);
    for client in [&mut ca, &mut cc, &mut cb] {
        let r = common::check(
            client,
            at_least(permission("fleet-app", "devices:read"), updated.revision),
        )
        .await;
        assert!(!r.allowed, "{r:?}");
        assert_eq!(r.revision, updated.revision);
    }

    // A delete through C; the audit trail on A names the actor and the action.
    let deleted = cc
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "fleet-app".into(),
            expected_revision: 0,
        }))
        .await
        .expect("delete through C")
        .into_inner();
    let r = common::check(
        &mut ca,
        at_least(permission("fleet-app", "devices:read"), deleted.revision),
    )
    .await;
    assert_eq!(r.revision, deleted.revision);
    assert!(r.reason.contains("unknown subject") || !r.allowed, "{r:?}");
    let missing = cb
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "fleet-app".into(),
            expected_revision: 0,
        }))
        .await
        .expect_err("deleting nothing");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let audit = ca
        .list_audit(admin(pb::ListAuditRequest {
            after_revision: put.revision - 1,
            page_size: 10,
        }))
        .await
        .expect("audit")
        .into_inner();
    let actions: Vec<_> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["put_subject", "update_permission", "delete_subject"],
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_revision_waits_for_the_mirror_then_refuses_and_expected_revision_guards_keys() {
    require_etcd!();
    let etcd = Etcd::start().await;
    etcd.seed().await;
    let a = start_fleet(&etcd.url()).await;
    let b = start_fleet_with(&etcd.url(), |f| {
        f.min_revision_wait = Duration::from_millis(300)
    })
    .await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let now = common::check(&mut cb, permission("dashboard", "devices:read"))
        .await
        .revision;

    // B waits for a revision that a write through A produces while it waits.
    let waiter = tokio::spawn({
        let mut cb = cb.clone();
        async move {
            let started = Instant::now();
            let r = cb
                .check(at_least(permission("late-app", "devices:read"), now + 1))
                .await;
            (r, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let put = ca
        .put_subject(admin(subject("late-app", "app-dashboard")))
        .await
        .expect("put")
        .into_inner();
    let (r, waited) = waiter.await.expect("join");
    let r = r
        .expect("the Check waited instead of refusing")
        .into_inner();
    assert!(r.allowed && r.revision == put.revision, "{r:?}");
    assert!(waited < Duration::from_millis(300), "{waited:?}");

    // A revision nobody writes: B waits its bound, then refuses with UNAVAILABLE.
    let started = Instant::now();
    let refused = cb
        .check(at_least(
            permission("late-app", "devices:read"),
            put.revision + 1000,
        ))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // expected_revision compares the key's mod revision in etcd: a write decided before another
    // sidecar changed the same subject is stale; one that only other keys changed since is not.
    let mut stale = subject("late-app", "app-readonly");
    stale.expected_revision = put.revision - 1;
    let err = cb.put_subject(admin(stale)).await.expect_err("stale");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let other = ca
        .put_subject(admin(subject("other-app", "app-dashboard")))
        .await
        .expect("put other")
        .into_inner();
    let mut fresh = subject("late-app", "app-readonly");
    fresh.expected_revision = put.revision;
    let ok = cb
        .put_subject(admin(fresh))
        .await
        .expect("not stale")
        .into_inner();
    assert!(ok.revision > other.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_killed_and_restarted_mid_stream_loses_and_reorders_nothing() {
    require_etcd!();
    let mut etcd = Etcd::start().await;
    etcd.seed().await;
    let a = start_fleet(&etcd.url()).await;
    let b = start_fleet(&etcd.url()).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        if i == 20 {
            etcd.kill();
        }
        if i == 40 {
            etcd.restart().await;
        }
        // Each write flips the subject between two roles; order matters.
        let role = if i % 2 == 0 {
            "app-dashboard"
        } else {
            "app-dispatcher"
        };
        match ca.put_subject(admin(subject("flip", role))).await {
            Ok(r) => acknowledged.push((r.into_inner().revision, role)),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                refused += 1;
                // B keeps serving its last mirrored state meanwhile.
                let r = common::check(&mut cb, permission("dashboard", "devices:read")).await;
                assert!(r.allowed);
            }
        }
        if (20..40).contains(&i) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        refused >= 15,
        "writes while etcd was down are refused ({refused})"
    );
    assert!(acknowledged.len() >= 40);
    assert!(
        acknowledged.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions increase"
    );
    let (last, role) = *acknowledged.last().expect("writes");
    let want_read = role == "app-dashboard";
    for client in [&mut ca, &mut cb] {
        let r = common::check(client, at_least(permission("flip", "devices:write"), last)).await;
        assert_eq!(r.revision, last);
        assert!(!r.allowed, "{r:?}");
        let r = common::check(client, permission("flip", "devices:read")).await;
        assert_eq!(r.allowed, want_read, "{r:?}");
        let r = common::check(client, permission("flip", "alarms:write")).await;
        assert_eq!(r.allowed, !want_read, "{r:?}");
    }
    // B's audit trail has every acknowledged revision, in order.
    let audit = cb
        .list_audit(admin(pb::ListAuditRequest {
            after_revision: acknowledged[0].0 - 1,
            page_size: 1000,
        }))
        .await
        .expect("audit")
        .into_inner();
    let seen: Vec<u64> = audit.entries.iter().map(|e| e.revision).collect();
    let wanted: Vec<u64> = acknowledged.iter().map(|(r, _)| *r).collect();
    assert!(
        wanted.iter().all(|r| seen.contains(r)),
        "every acknowledged revision was mirrored on B: {wanted:?} vs {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let (_, _, errors) = b.sidecar.metrics().fleet_counts();
    assert!(errors >= 1, "the interruption was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compaction_during_an_outage_makes_the_sidecar_reload_the_prefix() {
    require_etcd!();
    let etcd = Etcd::start().await;
    etcd.seed().await;
    let proxy = Proxy::start(etcd.client_port).await;
    let a = start_fleet(&etcd.url()).await;
    let b = start_fleet_with(&proxy.url(), |f| {
        f.max_staleness = Some(Duration::from_secs(1))
    })
    .await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let put = ca
        .put_subject(admin(subject("before-outage", "app-dashboard")))
        .await
        .expect("put")
        .into_inner();
    let r = common::check(
        &mut cb,
        at_least(permission("before-outage", "devices:read"), put.revision),
    )
    .await;
    assert!(r.allowed);

    proxy.cut();
    for i in 0..5 {
        ca.put_subject(admin(subject(&format!("during-{i}"), "app-dashboard")))
            .await
            .expect("put during the outage");
    }
    let deleted = ca
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "before-outage".into(),
            expected_revision: 0,
        }))
        .await
        .expect("delete during the outage")
        .into_inner();
    etcd.client()
        .compact(deleted.revision)
        .await
        .expect("compact");
    // B still serves its last state, reports the lag, and past --max-staleness NOT_SERVING.
    let r = common::check(&mut cb, permission("before-outage", "devices:read")).await;
    assert!(r.allowed && r.revision == put.revision, "{r:?}");
    eventually(
        Duration::from_secs(5),
        "B reports NOT_SERVING when stale",
        || async { health(&b).await == ServingStatus::NotServing as i32 },
    )
    .await;
    assert!(b.sidecar.metrics().fleet_staleness_seconds() > 0.5);
    // Staleness takes B out of the Service (readiness), never restarts it (liveness).
    assert_eq!(
        health_of(&b, authz_sidecar::server::LIVENESS_SERVICE).await,
        ServingStatus::Serving as i32,
        "liveness stays SERVING while the mirror is stale"
    );

    proxy.heal();
    let r = common::check(
        &mut cb,
        at_least(permission("during-4", "devices:read"), deleted.revision),
    )
    .await;
    assert!(r.allowed, "{r:?}");
    assert!(r.revision >= deleted.revision);
    let r = common::check(&mut cb, permission("before-outage", "devices:read")).await;
    assert!(
        !r.allowed,
        "the delete made during the outage arrived through the reload: {r:?}"
    );
    // The reload publishes its snapshot before the mirror counts it: wait for the count.
    eventually(
        Duration::from_secs(5),
        "B reloaded the prefix after the compaction",
        || async { b.sidecar.metrics().fleet_counts().1 >= 1 },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "B reports SERVING again",
        || async { health(&b).await == ServingStatus::Serving as i32 },
    )
    .await;
    // And B follows the watch again afterwards.
    let after = ca
        .put_subject(admin(subject("after-outage", "app-dashboard")))
        .await
        .expect("put")
        .into_inner();
    let r = common::check(
        &mut cb,
        at_least(permission("after-outage", "devices:read"), after.revision),
    )
    .await;
    assert!(r.allowed && r.revision == after.revision, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_restarted_while_etcd_is_down_serves_its_mirror_then_catches_up() {
    require_etcd!();
    let mut etcd = Etcd::start().await;
    etcd.seed().await;
    let a = start_fleet(&etcd.url()).await;
    let mut ca = a.client().await;
    let put = ca
        .put_subject(admin(subject("mirrored", "app-dashboard")))
        .await
        .expect("put")
        .into_inner();

    etcd.kill();
    let a = restart_fleet(a, &etcd.url()).await;
    let mut ca = a.client().await;
    let r = common::check(&mut ca, permission("mirrored", "devices:read")).await;
    assert!(r.allowed && r.revision == put.revision, "{r:?}");
    assert_eq!(
        health(&a).await,
        ServingStatus::Serving as i32,
        "SERVING on stale data by default"
    );
    let err = ca
        .put_subject(admin(subject("refused", "app-dashboard")))
        .await
        .expect_err("no etcd, no admin writes");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually(Duration::from_secs(3), "the lag is reported", || async {
        a.sidecar.metrics().fleet_staleness_seconds() > 0.0
    })
    .await;

    etcd.restart().await;
    let put2 = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ca
                .put_subject(admin(subject("after-restart", "app-dashboard")))
                .await
            {
                Ok(r) => break r.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("writes resume once etcd is back");
    assert!(put2.revision > put.revision);
    let r = common::check(&mut ca, permission("after-restart", "devices:read")).await;
    assert!(r.allowed && r.revision == put2.revision, "{r:?}");
}

/// The measured figure: time from an admin write on one sidecar to the change being visible on
/// another (a Check there with `min_revision` = the write's revision), over many writes, and
/// the mirror's cost per applied revision. Printed; see BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_to_visible_latency_across_sidecars() {
    require_etcd!();
    let writes: usize = std::env::var("AUTHZ_FLEET_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let etcd = Etcd::start().await;
    etcd.seed().await;
    let a = start_fleet(&etcd.url()).await;
    let b = start_fleet(&etcd.url()).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut visible = Vec::with_capacity(writes);
    let mut acked = Vec::with_capacity(writes);
    for i in 0..writes {
        let role = if i % 2 == 0 {
            "app-dashboard"
        } else {
            "app-readonly"
        };
        let started = Instant::now();
        let put = ca
            .put_subject(admin(subject(&format!("lat-{}", i % 50), role)))
            .await
            .expect("put")
            .into_inner();
        acked.push(started.elapsed());
        let r = common::check(
            &mut cb,
            at_least(
                permission(&format!("lat-{}", i % 50), "devices:read"),
                put.revision,
            ),
        )
        .await;
        visible.push(started.elapsed());
        assert!(r.revision >= put.revision);
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    // The apply-time sample is recorded just after the revision is published.
    eventually(
        Duration::from_secs(2),
        "every write mirrored as one revision on B",
        || async { b.sidecar.metrics().fleet_apply_time().0 as usize == writes },
    )
    .await;
    let (count, sum) = b.sidecar.metrics().fleet_apply_time();
    println!(
        "FLEET write→visible on another sidecar over {writes} writes: p50 {:?}, p99 {:?}, max {:?}; \
         write acknowledged on the writer: p50 {:?}, p99 {:?}; \
         mirror apply on the reader: {count} revisions, mean {:.3} ms",
        pct(&mut visible, 0.5),
        pct(&mut visible, 0.99),
        visible.last().copied().unwrap_or_default(),
        pct(&mut acked, 0.5),
        pct(&mut acked, 0.99),
        if count > 0 {
            sum * 1000.0 / count as f64
        } else {
            0.0
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_through_the_cli_seeds_and_replaces_a_fleets_policy() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let import = |file: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_authz-sidecar"))
            .args([
                "import",
                "--source",
                "etcd",
                "--etcd-endpoints",
                &etcd.url(),
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = import("examples/monitoring-apps.yaml");
    assert!(printed.contains("at revision"), "{printed}");
    let a = start_fleet(&etcd.url()).await;
    let mut ca = a.client().await;
    let r = common::check(&mut ca, permission("dashboard", "devices:read")).await;
    assert!(r.allowed, "{r:?}");

    // A whole new policy (other catalog, roles and subjects) replaces the fleet's in one
    // etcd transaction; the running sidecar recompiles it as one revision.
    import("examples/sdk-accounts.yaml");
    eventually(Duration::from_secs(5), "the new policy is served", || {
        let mut ca = ca.clone();
        async move {
            let r = common::check(&mut ca, permission("dashboard", "devices:read")).await;
            r.reason.contains("unknown")
        }
    })
    .await;
    let r = common::check(&mut ca, permission("alice", "collections.read")).await;
    assert!(!r.reason.contains("unknown subject"), "{r:?}");
}

/// `k8s/overlays/fleet` renders, and the sidecar and seed Job arguments parse as fleet mode
/// with this build's flags (needs `kubectl`; skipped loudly without it).
#[test]
fn the_fleet_overlay_runs_the_sidecar_and_the_seed_job_on_etcd() {
    use authz_sidecar::config::{Cli, Command as Sub};
    use clap::Parser;
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let Ok(output) = Command::new(&kubectl)
        .arg("kustomize")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/overlays/fleet"))
        .output()
    else {
        eprintln!("SKIPPED: kubectl not installed; k8s/overlays/fleet was not rendered");
        return;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let args_of = |kind: &str| -> Vec<String> {
        let doc = text
            .split("\n---\n")
            .find(|d| d.contains(&format!("kind: {kind}\n")))
            .unwrap_or_else(|| panic!("no {kind} rendered"));
        let start = doc.find("- args:").expect("args");
        doc[start + "- args:".len()..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim_start().starts_with("- "))
            .map(|l| l.trim_start()[2..].trim().to_owned())
            .collect()
    };
    let sidecar = args_of("Deployment");
    let cli =
        Cli::try_parse_from(std::iter::once("authz-sidecar".to_owned()).chain(sidecar.clone()))
            .unwrap_or_else(|e| panic!("sidecar args {sidecar:?}: {e}"));
    assert_eq!(cli.serve.fleet.source, "etcd");
    assert!(cli.serve.fleet.etcd.etcd_endpoints.is_some() && cli.serve.store.policy.is_none());
    assert!(text.contains("replicas: 3"));
    let job = args_of("Job");
    let cli = Cli::try_parse_from(std::iter::once("authz-sidecar".to_owned()).chain(job.clone()))
        .unwrap_or_else(|e| panic!("job args {job:?}: {e}"));
    match cli.command {
        Some(Sub::Import { source, etcd, .. }) => {
            assert_eq!(source, "etcd");
            assert_eq!(etcd.etcd_prefix, PREFIX);
        }
        other => panic!("the seed Job runs import, not {other:?}"),
    }
}
