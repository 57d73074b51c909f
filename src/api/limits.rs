//! The bounds every RPC holds its fields to, and the checks that refuse a field over them.
//! Shared by the services (`authz.rs`, `admin.rs`) and the wire conversion (`convert.rs`), so
//! that none of them imports another for a constant.

use tonic::Status;

use super::status::invalid;

/// Largest request message accepted (the default 4 MiB is far above any real call).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest id, name, scope or resource accepted.
pub const MAX_NAME_BYTES: usize = 256;
pub use crate::model::http_path::{MAX_PATH_BYTES, MAX_PATH_SEGMENTS};
/// Most items one CheckBatch may carry; more is INVALID_ARGUMENT (`items`).
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Default ListRoles / ListSubjects / ListAudit page size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Refuses a field longer than `max` bytes.
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

/// Refuses a list entry longer than `max` bytes, naming it `field[i]`. The name is built only
/// for the error: a Check with inline roles allocates nothing for this.
pub fn bounded_each(field: &str, values: &[String], max: usize) -> Result<(), Status> {
    match values.iter().position(|v| v.len() > max) {
        Some(i) => bounded(&format!("{field}[{i}]"), &values[i], max),
        None => Ok(()),
    }
}

/// The page size a request asks for: 0 is the default, more than the largest is the largest,
/// a negative one is INVALID_ARGUMENT naming `field`.
pub fn page_size(requested: i32, field: &str) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(invalid(field, "must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0, "p").expect("default"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5000, "p").expect("clamped"), MAX_PAGE_SIZE);
        assert_eq!(page_size(7, "p").expect("asked"), 7);
        let refused = page_size(-1, "page_size").expect_err("negative");
        assert!(refused.message().contains("page_size"), "{refused:?}");
    }

    #[test]
    fn bounded_names_the_entry_over_the_bound() {
        assert!(bounded("id", &"x".repeat(MAX_NAME_BYTES), MAX_NAME_BYTES).is_ok());
        let long = vec!["a".to_owned(), "x".repeat(MAX_NAME_BYTES + 1)];
        let refused = bounded_each("roles", &long, MAX_NAME_BYTES).expect_err("too long");
        assert!(refused.message().contains("roles[1]"), "{refused:?}");
    }
}
