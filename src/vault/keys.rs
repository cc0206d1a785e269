//! Key material: the master key (file or systemd credential), the keys HKDF derives from it,
//! per-recording data keys and their wrapping, the HMAC lookup key. Every secret zeroizes on
//! drop and implements neither `Debug` nor `Clone`; nothing here logs or touches SQLite.
//!
//! Hierarchy:
//! ```text
//! master key (32 B, file / credential)
//!   └─ HKDF-SHA256(info "callguard/v1/wrap") ─ wrap key: AES-256-GCM over every data key
//!                                              and over the index secret
//! index secret (32 B random, stored wrapped in the catalog; survives master-key rotation)
//!   └─ HKDF-SHA256(info "callguard/v1/lookup") ─ lookup key: HMAC-SHA256 of normalised values
//! data key (32 B random per recording / contact list, stored wrapped)
//! ```

use std::path::Path;

use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every symmetric key here.
pub const KEY_LEN: usize = 32;
/// Length of a wrapped (or sealed) 32-byte key: nonce (12) + ciphertext (32) + tag (16).
pub const WRAPPED_KEY_LEN: usize = 12 + KEY_LEN + 16;

const HKDF_SALT: &[u8] = b"callguard key hierarchy v1";

/// Why a key could not be loaded, unwrapped or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the master key {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the master key {path} holds {len} bytes; expected 32 random bytes or 64 hexadecimal characters"
    )]
    BadLength { path: String, len: usize },
    #[error("the master key {path} is 64 characters long but not hexadecimal")]
    BadHex { path: String },
    #[error(
        "a wrapped key for {context} failed authentication (wrong master key or tampered catalog)"
    )]
    Unwrap { context: String },
    #[error("sealed data for {context} failed authentication")]
    Open { context: String },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

/// The master key: only ever used to derive the wrap key.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    /// Reads 32 raw bytes, or 64 hex characters (an optional trailing newline is allowed).
    pub fn load(path: &Path) -> Result<MasterKey, KeyError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?);
        MasterKey::from_file_bytes(&bytes).map_err(|error| match error {
            KeyError::BadLength { len, .. } => KeyError::BadLength {
                path: path.display().to_string(),
                len,
            },
            KeyError::BadHex { .. } => KeyError::BadHex {
                path: path.display().to_string(),
            },
            other => other,
        })
    }

    /// Parses the content of a key file.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<MasterKey, KeyError> {
        let mut key = [0u8; KEY_LEN];
        match bytes.len() {
            KEY_LEN => key.copy_from_slice(bytes),
            64 | 65 => {
                let text = match bytes.len() {
                    65 if bytes[64] == b'\n' => &bytes[..64],
                    65 => {
                        return Err(KeyError::BadLength {
                            path: String::new(),
                            len: 65,
                        });
                    }
                    _ => bytes,
                };
                hex::decode_to_slice(text, &mut key).map_err(|_| KeyError::BadHex {
                    path: String::new(),
                })?;
            }
            len => {
                return Err(KeyError::BadLength {
                    path: String::new(),
                    len,
                });
            }
        }
        Ok(MasterKey(key))
    }

    /// Whether two master keys are the same (constant time).
    pub fn same_as(&self, other: &MasterKey) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }

    /// A fresh random master key (for `init` and the dev instance).
    pub fn generate() -> Result<MasterKey, KeyError> {
        Ok(MasterKey(random_key()?))
    }

    /// The raw bytes, to write a new key file. Handle with care.
    pub fn danger_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives the key that wraps data keys.
    pub fn wrap_key(&self) -> WrapKey {
        WrapKey(derive(&self.0, b"callguard/v1/wrap"))
    }
}

/// Wraps and unwraps data keys and the index secret (AES-256-GCM, AAD = what the key is for).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct WrapKey([u8; KEY_LEN]);

impl WrapKey {
    /// Encrypts `key` bound to `context` (e.g. a recording id): nonce ‖ ciphertext ‖ tag.
    pub fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_with(&self.0, context, &key.0)
    }

    /// Reverses `wrap`; fails if the master key is wrong or anything was altered or swapped.
    pub fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<DataKey, KeyError> {
        let plain = open_with(&self.0, context, wrapped).map_err(|_| KeyError::Unwrap {
            context: String::from_utf8_lossy(context).into_owned(),
        })?;
        let mut key = [0u8; KEY_LEN];
        match plain.len() {
            KEY_LEN => key.copy_from_slice(&plain),
            _ => {
                return Err(KeyError::Unwrap {
                    context: String::from_utf8_lossy(context).into_owned(),
                });
            }
        }
        Ok(DataKey(key))
    }
}

/// One recording's (or one contact list's) key. Destroying its wrapped copy shreds the data.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    pub fn generate() -> Result<DataKey, KeyError> {
        Ok(DataKey(random_key()?))
    }

    /// The AES-256-GCM cipher under this key.
    pub fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// Seals a small value (personal metadata) under this key, bound to `context`.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_with(&self.0, context, plaintext)
    }

    /// Opens what `seal` produced.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        open_with(&self.0, context, sealed).map_err(|_| KeyError::Open {
            context: String::from_utf8_lossy(context).into_owned(),
        })
    }

    /// Treats the index secret as a data key for wrapping purposes.
    pub fn from_secret(secret: [u8; KEY_LEN]) -> DataKey {
        DataKey(secret)
    }

    /// Derives the HMAC lookup key when this key is the index secret.
    pub fn lookup_key(&self) -> LookupKey {
        LookupKey(derive(&self.0, b"callguard/v1/lookup"))
    }
}

/// Keyed hash of normalised personal values, for lookups without storing the values.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct LookupKey([u8; KEY_LEN]);

impl LookupKey {
    /// HMAC-SHA256(domain ‖ 0x00 ‖ value). `domain` separates kinds ("caller", "call_id", …)
    /// so that equal strings of different kinds do not collide.
    pub fn digest(&self, domain: &str, value: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("invariant: HMAC accepts any key length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// 32 bytes from the operating system's generator.
pub fn random_key() -> Result<[u8; KEY_LEN], KeyError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(key)
}

/// Random bytes for nonces and identifiers.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes)
}

fn derive(ikm: &[u8; KEY_LEN], info: &[u8]) -> [u8; KEY_LEN] {
    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm);
    let mut out = [0u8; KEY_LEN];
    hkdf.expand(info, &mut out)
        .expect("invariant: 32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn seal_with(key: &[u8; KEY_LEN], context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let nonce: [u8; 12] = random_bytes()?;
    let cipher = Aes256Gcm::new(&(*key).into());
    let mut out = Vec::with_capacity(12 + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&nonce.into(), context, (&mut out[12..]).into())
        .map_err(|_| KeyError::Random("AES-GCM refused the message length".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open_with(key: &[u8; KEY_LEN], context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ()> {
    if sealed.len() < 12 + 16 {
        return Err(());
    }
    let (nonce, rest) = sealed.split_at(12);
    let (ciphertext, tag) = rest.split_at(rest.len() - 16);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| ())?;
    let tag: [u8; 16] = tag.try_into().map_err(|_| ())?;
    let cipher = Aes256Gcm::new(&(*key).into());
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            &nonce.into(),
            context,
            plain.as_mut_slice().into(),
            &tag.into(),
        )
        .map_err(|_| ())?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_file_forms() {
        assert!(MasterKey::from_file_bytes(&[7u8; 32]).is_ok());
        let hex_key = "ab".repeat(32);
        assert_eq!(
            MasterKey::from_file_bytes(hex_key.as_bytes()).unwrap().0,
            [0xab; 32]
        );
        assert!(MasterKey::from_file_bytes(format!("{hex_key}\n").as_bytes()).is_ok());
        assert!(matches!(
            MasterKey::from_file_bytes(&[1u8; 31]),
            Err(KeyError::BadLength { len: 31, .. })
        ));
        assert!(matches!(
            MasterKey::from_file_bytes("zz".repeat(32).as_bytes()),
            Err(KeyError::BadHex { .. })
        ));
    }

    #[test]
    fn wrap_binds_the_context_and_the_master_key() {
        let master = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let key = DataKey::generate().unwrap();
        let wrapped = master.wrap_key().wrap(&key, b"rec-1").unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert_eq!(
            master.wrap_key().unwrap(&wrapped, b"rec-1").unwrap().0,
            key.0
        );
        assert!(master.wrap_key().unwrap(&wrapped, b"rec-2").is_err());
        assert!(other.wrap_key().unwrap(&wrapped, b"rec-1").is_err());
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(master.wrap_key().unwrap(&flipped, b"rec-1").is_err());
    }

    #[test]
    fn lookup_digests_separate_domains() {
        let secret = DataKey::generate().unwrap();
        let lookup = secret.lookup_key();
        assert_eq!(
            lookup.digest("caller", "+33612345678"),
            lookup.digest("caller", "+33612345678")
        );
        assert_ne!(
            lookup.digest("caller", "+33612345678"),
            lookup.digest("callee", "+33612345678")
        );
    }
}
