//! The decision engine: compiles a policy into an immutable [`Snapshot`] and answers Checks
//! from it. Pure: no I/O, no locks, and no allocation on the decision path.

mod compile;
pub use compile::{CompileError, SnapshotBuilder, subject_type_ids};
mod decide;
pub mod envoy_rbac;
mod explain;
mod snapshot;
mod subject;
mod subject_index;
mod who_can;

#[cfg(test)]
mod tests;

pub use decide::{Action, Decision, Inline, MAX_INLINE_ROLES, Reason, Request, Required};
pub use explain::{Explanation, Step, StepKind, SubjectTrace};
pub use snapshot::{CompactedSubjects, Snapshot};
pub use who_can::{WHO_CAN_SCAN_BUDGET, WhoCan, WhoCanPage};
