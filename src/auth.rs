//! Admin authentication: bearer tokens checked against SHA-256 digests in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{Admin, AdminPermission};

/// Name the bootstrap admin (`AUTHZ_ADMIN_TOKEN`) carries in the audit trail.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap";

/// Who may call admin RPCs.
#[derive(Debug, Clone, Default)]
pub struct AdminSet {
    entries: Vec<AdminEntry>,
}

/// One authenticated admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEntry {
    /// Name for the audit trail.
    pub name: String,
    digest: [u8; 32],
    permissions: Vec<AdminPermission>,
}

impl AdminEntry {
    /// True when this admin holds `permission` (who may write subjects may read them).
    pub fn holds(&self, permission: AdminPermission) -> bool {
        self.permissions.contains(&permission)
            || (permission == AdminPermission::SubjectsRead
                && self.permissions.contains(&AdminPermission::SubjectsWrite))
    }
}

/// Why an admin call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable `authorization: Bearer <token>`.
    #[error("admin calls need `authorization: Bearer <token>` metadata")]
    Missing,
    /// The token matches no admin.
    #[error("the bearer token matches no admin")]
    Unknown,
    /// The admin lacks the permission.
    #[error("admin `{admin}` lacks `{}`", .permission.as_str())]
    Forbidden {
        /// Admin name.
        admin: String,
        /// Permission needed.
        permission: AdminPermission,
    },
}

/// The SHA-256 of a token, as stored in policies (`token_sha256`, lower-case hex).
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl AdminSet {
    /// Admins from the policy, plus the bootstrap admin holding every permission.
    pub fn new(admins: &[Admin], bootstrap_token: Option<&str>) -> AdminSet {
        let mut entries: Vec<AdminEntry> = admins
            .iter()
            .filter_map(|a| {
                let bytes = hex::decode(a.token_sha256.to_ascii_lowercase()).ok()?;
                Some(AdminEntry {
                    name: a.name.clone(),
                    digest: bytes.try_into().ok()?,
                    permissions: a.permissions.clone(),
                })
            })
            .collect();
        if let Some(token) = bootstrap_token.filter(|t| !t.is_empty()) {
            entries.push(AdminEntry {
                name: BOOTSTRAP_ADMIN.into(),
                digest: Sha256::digest(token.as_bytes()).into(),
                permissions: AdminPermission::ALL.to_vec(),
            });
        }
        AdminSet { entries }
    }

    /// The admin holding `permission` whose token this is. Every entry is compared, in
    /// constant time each, so timing reveals neither which admin matched nor how closely.
    pub fn authorize(
        &self,
        token: Option<&str>,
        permission: AdminPermission,
    ) -> Result<&AdminEntry, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthError::Unknown)?;
        if entry.holds(permission) {
            Ok(entry)
        } else {
            Err(AuthError::Forbidden {
                admin: entry.name.clone(),
                permission,
            })
        }
    }

    /// Parses `Bearer <token>` (scheme case-insensitive).
    pub fn bearer(header: &str) -> Option<&str> {
        let (scheme, token) = header.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_admins_and_permissions() {
        let admins = vec![Admin {
            name: "approver".into(),
            token_sha256: token_sha256_hex("s3cret"),
            permissions: vec![AdminPermission::RolesApprove],
        }];
        let set = AdminSet::new(&admins, Some("boot"));
        assert_eq!(
            set.authorize(Some("s3cret"), AdminPermission::RolesApprove)
                .map(|a| a.name.as_str()),
            Ok("approver")
        );
        assert!(matches!(
            set.authorize(Some("s3cret"), AdminPermission::RolesWrite),
            Err(AuthError::Forbidden { .. })
        ));
        assert_eq!(
            set.authorize(Some("boot"), AdminPermission::AuditRead)
                .map(|a| a.name.as_str()),
            Ok(BOOTSTRAP_ADMIN)
        );
        assert_eq!(
            set.authorize(Some("nope"), AdminPermission::AuditRead),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            set.authorize(None, AdminPermission::AuditRead),
            Err(AuthError::Missing)
        );
        assert_eq!(AdminSet::bearer("Bearer abc"), Some("abc"));
        assert_eq!(AdminSet::bearer("bearer  abc "), Some("abc"));
        assert_eq!(AdminSet::bearer("Basic abc"), None);
    }
}
