//! authz-sidecar library.
pub mod engine;
pub mod model;
