//! The decision engine: compiles a policy into an immutable [`Snapshot`] and answers Checks
//! from it. Pure: no I/O, no locks, and no allocation on the decision path.

mod bitset;
mod compile;
pub use compile::{SnapshotBuilder, compile_routes};
mod decide;
pub mod envoy_rbac;
mod explain;
mod routes;
mod snapshot;
mod subject_index;
mod who_can;

#[cfg(test)]
mod tests;

pub use bitset::BitSet;
pub use decide::{Action, Decision, Inline, MAX_INLINE_ROLES, Reason, Request, Required};
pub use explain::{Explanation, Step, StepKind, SubjectTrace};
pub use routes::{MAX_ROUTE_STATES, RouteError};
pub use snapshot::{CompactedSubjects, Snapshot};
pub use who_can::{WHO_CAN_SCAN_BUDGET, WhoCan, WhoCanPage};
