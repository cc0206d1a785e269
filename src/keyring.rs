//! The loaded key set of an instance: the master key's wrap key and the lookup (HMAC) key
//! derived from the index secret that the catalog stores wrapped. Owns master-key rotation
//! (re-wrapping every stored key without touching audio). Glue between `vault::keys` (crypto)
//! and `catalog` (storage); holds no plaintext key longer than the process needs it, and keeps
//! the process's memory (keys, plaintext audio) out of core dumps (`forbid_core_dumps`).

use std::path::Path;

use crate::catalog::{Catalog, CatalogError};
use crate::vault::BlobId;
use crate::vault::keys::{DataKey, KeyError, LookupKey, MasterKey, WrapKey};

/// Makes this process non-dumpable and sets its core-file limit to zero: a crash, a watchdog's
/// `SIGABRT` or a `SIGQUIT` then writes no core file holding the master key, data keys or
/// plaintext audio, and users other than root can no longer read its memory through
/// `/proc/<pid>/mem` or attach a debugger. systemd's `LimitCORE=0` does the same for the packaged
/// service; this covers every other way of starting the binary (a shell, a container). Called
/// before anything is read.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Keyring entry holding the wrapped index secret.
const INDEX_SECRET: &str = "index-secret";
const INDEX_CONTEXT: &[u8] = b"callguard index secret";

/// Why keys could not be loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the master key does not open this catalog's keys (wrong key file?)")]
    WrongMasterKey,
}

/// Keys in use by a running instance.
pub struct Keyring {
    wrap: WrapKey,
    lookup: LookupKey,
}

impl Keyring {
    /// Loads the master key at `path` and the index secret (created on first use).
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Keyring, KeyringError> {
        let master = MasterKey::load(path)?;
        Keyring::open(&master, catalog)
    }

    pub fn open(master: &MasterKey, catalog: &Catalog) -> Result<Keyring, KeyringError> {
        let wrap = master.wrap_key();
        let stored = match catalog.keyring_get(INDEX_SECRET)? {
            Some(stored) => stored,
            None => {
                let secret = DataKey::generate()?;
                catalog.keyring_init(INDEX_SECRET, &wrap.wrap(&secret, INDEX_CONTEXT)?)?
            }
        };
        let secret = wrap
            .unwrap(&stored, INDEX_CONTEXT)
            .map_err(|_| KeyringError::WrongMasterKey)?;
        Ok(Keyring {
            lookup: secret.lookup_key(),
            wrap,
        })
    }

    /// A new data key and its wrapped form for recording `id`.
    pub fn new_recording_key(&self, id: &BlobId) -> Result<(DataKey, Vec<u8>), KeyError> {
        let key = DataKey::generate()?;
        let wrapped = self.wrap.wrap(&key, id.to_string().as_bytes())?;
        Ok((key, wrapped))
    }

    /// Unwraps recording `id`'s data key.
    pub fn recording_key(&self, id: &BlobId, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        self.wrap.unwrap(wrapped, id.to_string().as_bytes())
    }

    /// A new data key for another kind of sealed object (`context` names it).
    pub fn new_key(&self, context: &str) -> Result<(DataKey, Vec<u8>), KeyError> {
        let key = DataKey::generate()?;
        let wrapped = self.wrap.wrap(&key, context.as_bytes())?;
        Ok((key, wrapped))
    }

    pub fn key(&self, context: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        self.wrap.unwrap(wrapped, context.as_bytes())
    }

    /// HMAC digest of a normalised value, for lookups.
    pub fn digest(&self, domain: &str, value: &str) -> [u8; 32] {
        self.lookup.digest(domain, value)
    }

    /// Re-wraps every stored key from `old` to `new` in one transaction. Audio blobs are not
    /// touched and lookups keep working (the index secret is re-wrapped, not replaced).
    /// Returns the number of keys re-wrapped.
    pub fn rotate(
        catalog: &Catalog,
        old: &MasterKey,
        new: &MasterKey,
        actor: &str,
        now: jiff::Timestamp,
    ) -> Result<u64, KeyringError> {
        // Fail before writing anything if the old key is not this catalog's.
        Keyring::open(old, catalog)?;
        let old_wrap = old.wrap_key();
        let new_wrap = new.wrap_key();
        let rewrap = |context: &[u8], wrapped: &[u8]| -> Result<Vec<u8>, KeyError> {
            let key = old_wrap.unwrap(wrapped, context)?;
            new_wrap.wrap(&key, context)
        };
        let n = catalog.rewrap_all_keys(&rewrap, actor, now)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{at, open_temp};

    #[test]
    fn the_index_secret_is_stable_and_bound_to_the_master_key() {
        let (_dir, catalog) = open_temp();
        let master = MasterKey::generate().unwrap();
        let first = Keyring::open(&master, &catalog).unwrap();
        let second = Keyring::open(&master, &catalog).unwrap();
        assert_eq!(
            first.digest("caller", "+33612345678"),
            second.digest("caller", "+33612345678")
        );
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            Keyring::open(&other, &catalog),
            Err(KeyringError::WrongMasterKey)
        ));
    }

    #[test]
    fn rotation_rewraps_keys_and_keeps_lookups() {
        let (_dir, catalog) = open_temp();
        let old = MasterKey::generate().unwrap();
        let new = MasterKey::generate().unwrap();
        let ring = Keyring::open(&old, &catalog).unwrap();
        let before = ring.digest("caller", "+33612345678");
        let mut row = crate::catalog::recordings::tests::row(1, 100);
        let (key, wrapped) = ring.new_recording_key(&row.id).unwrap();
        row.wrapped_key = wrapped;
        catalog
            .insert_recording(
                &row,
                crate::audit::chain::AuditDraft::system("recording.ingest", ""),
                at(1),
            )
            .unwrap();
        let n = Keyring::rotate(&catalog, &old, &new, "local:root", at(2)).unwrap();
        assert_eq!(n, 2);
        assert!(matches!(
            Keyring::open(&old, &catalog),
            Err(KeyringError::WrongMasterKey)
        ));
        let ring = Keyring::open(&new, &catalog).unwrap();
        assert_eq!(ring.digest("caller", "+33612345678"), before);
        let crate::catalog::recordings::Lookup::Found(stored) = catalog.recording(&row.id).unwrap()
        else {
            panic!()
        };
        let unwrapped = ring.recording_key(&row.id, &stored.wrapped_key).unwrap();
        assert_eq!(
            unwrapped.seal(b"x", b"probe").unwrap().len(),
            key.seal(b"x", b"probe").unwrap().len()
        );
        assert!(Keyring::rotate(&catalog, &old, &new, "local:root", at(3)).is_err());
    }
}
