//! authz-sidecar library.

#![forbid(unsafe_code)]
pub mod api;
pub mod auth;
pub mod commands;
pub mod config;
pub mod ctl;
pub mod decision_log;
pub mod engine;
pub mod fleet;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod policytest;
pub mod reload;
pub mod server;
pub mod startup;
pub mod store;
