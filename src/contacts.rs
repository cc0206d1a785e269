//! Trusted contacts ("personnes de confiance", SPEC §4 guarantee 6): validated, sealed as one
//! list per account under a fresh key on every change (a removed contact is shredded with the
//! old key), and readable only with an `OpenAlarmCase` token and an `AuditReceipt`: there is no
//! other read path. The contracts role writes lists and can never read them back.

use crate::alarms::cases::OpenAlarmCase;
use crate::audit::AuditReceipt;
use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::alarms::SealedContacts;
use crate::catalog::{Catalog, CatalogError};
use crate::ingest::metadata::PhoneNumber;
use crate::keyring::Keyring;
use crate::vault::keys::KeyError;

/// Most contacts per account.
pub const MAX_CONTACTS: usize = 20;

/// One trusted contact.
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
    pub name: String,
    pub phone: PhoneNumber,
    pub relation: String,
    pub order: u32,
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contact")
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

/// Why a list was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error("contact {index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("the body must be a JSON array of at most {MAX_CONTACTS} contacts")]
    Shape,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn text(
    value: &serde_json::Value,
    name: &str,
    max: usize,
    index: usize,
) -> Result<String, ContactError> {
    let text = value
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .unwrap_or("");
    if text.is_empty() || text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(ContactError::Invalid {
            index,
            reason: format!("`{name}` must be 1–{max} printable characters"),
        });
    }
    Ok(text.to_owned())
}

/// The fields of a contact (SPEC §6).
const CONTACT_FIELDS: [&str; 4] = ["name", "phone", "relation", "order"];

/// Validates a `PUT` body: `[{"name", "phone", "relation", "order"}]`, orders distinct.
pub fn parse_list(body: &serde_json::Value) -> Result<Vec<Contact>, ContactError> {
    let items = body
        .as_array()
        .filter(|items| items.len() <= MAX_CONTACTS)
        .ok_or(ContactError::Shape)?;
    let mut out: Vec<Contact> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        // A field this list does not keep is refused rather than dropped unseen.
        if let Some(key) = item.as_object().and_then(|fields| {
            fields
                .keys()
                .find(|key| !CONTACT_FIELDS.contains(&key.as_str()))
        }) {
            return Err(ContactError::Invalid {
                index,
                reason: format!(
                    "unknown field `{}` (known: {})",
                    key.chars().take(40).collect::<String>(),
                    CONTACT_FIELDS.join(", ")
                ),
            });
        }
        let phone_text = text(item, "phone", 64, index)?;
        let phone = PhoneNumber::parse(&phone_text).map_err(|e| ContactError::Invalid {
            index,
            reason: format!("`phone`: {e}"),
        })?;
        let order = item
            .get("order")
            .and_then(|v| v.as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ContactError::Invalid {
                index,
                reason: "`order` must be a whole number".into(),
            })?;
        if out.iter().any(|c| c.order == order) {
            return Err(ContactError::Invalid {
                index,
                reason: format!("`order` {order} is used twice"),
            });
        }
        out.push(Contact {
            name: text(item, "name", 100, index)?,
            phone,
            relation: text(item, "relation", 50, index)?,
            order,
        });
    }
    out.sort_by_key(|c| c.order);
    Ok(out)
}

fn context(account_hmac: &[u8; 32]) -> String {
    format!("contacts/{}", hex::encode(account_hmac))
}

/// Replaces `account`'s list (empty or `None`: all designations ended). Returns the number of
/// contacts removed or replaced.
pub fn replace(
    catalog: &Catalog,
    keyring: &Keyring,
    account: &str,
    list: Option<&[Contact]>,
    actor: &str,
    role: &str,
    now: jiff::Timestamp,
) -> Result<u64, ContactError> {
    let account_hmac = crate::ingest::account_digest(keyring, account);
    let list = list.filter(|l| !l.is_empty());
    let sealed = match list {
        Some(contacts) => {
            let json: Vec<serde_json::Value> = contacts
                .iter()
                .map(|c| serde_json::json!({"name": c.name, "phone": c.phone.as_str(), "relation": c.relation, "order": c.order}))
                .collect();
            let ctx = context(&account_hmac);
            let (key, wrapped_key) = keyring.new_key(&ctx)?;
            let plain =
                zeroize::Zeroizing::new(serde_json::Value::from(json).to_string().into_bytes());
            Some((
                SealedContacts {
                    wrapped_key,
                    sealed_list: key.seal(format!("{ctx}/list").as_bytes(), &plain)?,
                },
                contacts.len() as u64,
            ))
        }
        None => None,
    };
    let (action, detail) = match &sealed {
        Some((_, n)) => ("contacts.replace", format!("{n} contacts")),
        None => ("contacts.delete", "all designations ended".to_owned()),
    };
    let audit = AuditDraft::new(actor, role, action, "", Outcome::Allowed).detail(detail);
    let previous = catalog.replace_contacts(
        &account_hmac,
        sealed.as_ref().map(|(s, n)| (s, *n)),
        audit,
        now,
    )?;
    catalog.checkpoint()?;
    Ok(previous)
}

/// The contacts of an open case's account, in call order. The only read path.
pub fn read(
    catalog: &Catalog,
    keyring: &Keyring,
    case: &OpenAlarmCase,
    receipt: &AuditReceipt,
) -> Result<Vec<serde_json::Value>, ContactError> {
    let Some(sealed) = catalog.sealed_contacts(case, receipt)? else {
        return Ok(Vec::new());
    };
    let ctx = context(case.account_hmac());
    let key = keyring.key(&ctx, &sealed.wrapped_key)?;
    let plain = key.open(format!("{ctx}/list").as_bytes(), &sealed.sealed_list)?;
    let value: serde_json::Value = serde_json::from_slice(&plain).map_err(|_| KeyError::Open {
        context: ctx.clone(),
    })?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_validated_and_ordered() {
        let list = parse_list(&serde_json::json!([
            {"name": "B", "phone": "06 12 34 56 78", "relation": "fils", "order": 2},
            {"name": "A", "phone": "+33145678900", "relation": "voisine", "order": 1},
        ]))
        .unwrap();
        assert_eq!(
            list.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert!(matches!(
            parse_list(&serde_json::json!({})),
            Err(ContactError::Shape)
        ));
        let bad = parse_list(
            &serde_json::json!([{"name": "A", "phone": "abc", "relation": "x", "order": 1}]),
        );
        assert!(matches!(bad, Err(ContactError::Invalid { index: 0, .. })));
        let twice = parse_list(&serde_json::json!([
            {"name": "A", "phone": "0612345678", "relation": "x", "order": 1},
            {"name": "B", "phone": "0612345679", "relation": "x", "order": 1},
        ]));
        assert!(matches!(twice, Err(ContactError::Invalid { index: 1, .. })));
        let extra = parse_list(&serde_json::json!([
            {"name": "A", "phone": "0612345678", "relation": "x", "order": 1, "email": "a@b"},
        ]));
        assert!(
            matches!(&extra, Err(ContactError::Invalid { index: 0, reason }) if reason.contains("unknown field `email`")),
            "{extra:?}"
        );
    }
}
