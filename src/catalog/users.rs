//! SQL of the users table: client-certificate CN → role. Every change is audited in the same
//! transaction.

use rusqlite::{OptionalExtension, params};

use crate::access::Role;
use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::{Catalog, CatalogError, audit_log, from_secs, secs, sql};

/// A registered client identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub cn: String,
    pub role: Role,
    pub created_at: jiff::Timestamp,
}

/// Result of `user add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    Added,
    RoleChanged { from: Role },
    Unchanged,
}

impl Catalog {
    /// Registers `cn` with `role` (or changes its role), audited as `actor`.
    pub fn user_add(
        &self,
        cn: &str,
        role: Role,
        actor: &str,
        now: jiff::Timestamp,
    ) -> Result<UserChange, CatalogError> {
        self.write(|tx| {
            let existing: Option<String> = tx
                .query_row("SELECT role FROM users WHERE cn = ?1", [cn], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sql("user lookup"))?;
            let change = match existing.as_deref().map(Role::parse) {
                None => UserChange::Added,
                Some(Some(from)) if from == role => UserChange::Unchanged,
                Some(Some(from)) => UserChange::RoleChanged { from },
                Some(None) => UserChange::Added,
            };
            if change == UserChange::Unchanged {
                return Ok(change);
            }
            tx.execute(
                "INSERT INTO users (cn, role, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cn) DO UPDATE SET role = excluded.role",
                params![cn, role.as_str(), secs(now)],
            )
            .map_err(sql("user add"))?;
            let detail = match change {
                UserChange::RoleChanged { from } => format!("role {from} -> {role}"),
                UserChange::Added | UserChange::Unchanged => format!("role {role}"),
            };
            audit_log::append(
                tx,
                AuditDraft::new(actor, "", "user.add", cn, Outcome::Allowed).detail(detail),
                now,
            )?;
            Ok(change)
        })
    }

    /// Removes `cn`; returns whether it existed.
    pub fn user_remove(
        &self,
        cn: &str,
        actor: &str,
        now: jiff::Timestamp,
    ) -> Result<bool, CatalogError> {
        self.write(|tx| {
            let n = tx
                .execute("DELETE FROM users WHERE cn = ?1", [cn])
                .map_err(sql("user remove"))?;
            if n > 0 {
                audit_log::append(
                    tx,
                    AuditDraft::new(actor, "", "user.remove", cn, Outcome::Allowed),
                    now,
                )?;
            }
            Ok(n > 0)
        })
    }

    pub fn user_list(&self) -> Result<Vec<User>, CatalogError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT cn, role, created_at FROM users ORDER BY cn")
                .map_err(sql("user list"))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql("user list"))?;
            let mut out = Vec::new();
            for row in rows {
                let (cn, role, created_at) = row.map_err(sql("user list"))?;
                let role = Role::parse(&role).ok_or_else(|| CatalogError::Corrupt {
                    what: format!("role `{role}`"),
                })?;
                out.push(User {
                    cn,
                    role,
                    created_at: from_secs(created_at)?,
                });
            }
            Ok(out)
        })
    }

    /// The role of `cn`, if registered. An unknown stored role counts as none (deny).
    pub fn role_of(&self, cn: &str) -> Result<Option<Role>, CatalogError> {
        self.read(|conn| {
            let role: Option<String> = conn
                .query_row("SELECT role FROM users WHERE cn = ?1", [cn], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sql("role lookup"))?;
            Ok(role.as_deref().and_then(Role::parse))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::tests::{at, open_temp};

    use super::*;

    #[test]
    fn users_are_added_changed_removed_and_audited() {
        let (_dir, catalog) = open_temp();
        assert_eq!(
            catalog
                .user_add("alice", Role::Supervisor, "local:root", at(10))
                .unwrap(),
            UserChange::Added
        );
        assert_eq!(
            catalog
                .user_add("alice", Role::Supervisor, "local:root", at(11))
                .unwrap(),
            UserChange::Unchanged
        );
        assert_eq!(
            catalog
                .user_add("alice", Role::Legal, "local:root", at(12))
                .unwrap(),
            UserChange::RoleChanged {
                from: Role::Supervisor
            }
        );
        assert_eq!(catalog.role_of("alice").unwrap(), Some(Role::Legal));
        assert_eq!(catalog.role_of("mallory").unwrap(), None);
        assert_eq!(catalog.user_list().unwrap().len(), 1);
        assert!(catalog.user_remove("alice", "local:root", at(13)).unwrap());
        assert!(!catalog.user_remove("alice", "local:root", at(14)).unwrap());
        let actions: Vec<String> = catalog
            .audit_batch(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["user.add", "user.add", "user.remove"]);
    }
}
