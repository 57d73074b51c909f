//! The integration tests, one crate: each module starts the real sidecar (TCP on an ephemeral
//! port and a Unix socket), its binary, a real Envoy, etcd or kubectl, and talks to it with real
//! clients. One crate links the library once instead of once per file.
//!
//! Two suites stay crates of their own because they need the process to themselves:
//! `tests/no_alloc.rs` installs a counting global allocator, and `tests/hostile_load.rs` measures
//! latency while it floods the sidecar (other tests running beside it would be what it measures).
//! The soak (`soak.rs`) is opt-in: `cargo test --test it soak -- --ignored` (`.ci/run` runs it
//! with `SOAK_SECS` and a time bound).

// Shared by the modules below.
mod admin_invariants;
mod admin_state_machine;
mod api;
mod batch;
mod cli;
mod common;
mod concurrency;
mod crash;
mod ctl;
mod docs;
mod envoy;
mod envoy_harness;
mod envoy_xds;
mod example_app;
mod explain;
mod fleet;
mod fuzz_inputs;
mod golden;
mod http_json;
mod http_paths;
mod k8s;
mod load_tool;
mod metrics;
mod oracle;
mod policy_schema;
mod policy_tests;
mod python_client;
mod real_envoy;
mod reference;
mod reload;
mod resilience;
mod security;
mod seed_000_monitoring_apps;
mod seed_001_iot_user_types;
mod seed_002_carbon_credit;
mod seed_003_sdk_accounts;
mod seed_004_iot_roles;
mod seeds;
mod soak;
mod subjects;
mod who_can;
