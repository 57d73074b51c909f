//! Library errors → gRPC statuses, in one place.

use tonic::Status;

use crate::auth::AuthError;
use crate::live::WriteError;
use crate::model::RuleError;

/// INVALID_ARGUMENT naming the field.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

pub fn from_auth(e: AuthError) -> Status {
    match e {
        AuthError::Missing | AuthError::Unknown => Status::unauthenticated(e.to_string()),
        AuthError::Forbidden { .. } => Status::permission_denied(e.to_string()),
    }
}

pub fn from_write(e: WriteError) -> Status {
    match e {
        WriteError::Rule(RuleError::UnknownRole(_) | RuleError::UnknownSubject(_)) => {
            Status::not_found(e.to_string())
        }
        WriteError::Rule(RuleError::Invalid { .. }) | WriteError::Invalid { .. } => {
            Status::invalid_argument(e.to_string())
        }
        WriteError::Rule(_) | WriteError::Stale { .. } => {
            Status::failed_precondition(e.to_string())
        }
        WriteError::NotFound(_) => Status::not_found(e.to_string()),
        // Store failures are ours, not the caller's: nothing was written.
        WriteError::Store(_) | WriteError::Task(_) => Status::internal(e.to_string()),
        WriteError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}
