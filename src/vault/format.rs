//! The encrypted blob format, sans-I/O: header encoding, chunk layout, and sealing/opening of
//! one chunk. Bytes in, bytes out; no files, no clock. Specified in docs/vault-format.md.
//!
//! ```text
//! header (40 bytes)   magic "CGVAULT\0" | version u8 = 1 | 3 zero bytes | chunk_size u32 BE
//!                     | recording id (16 bytes) | nonce prefix (7 bytes) | 1 zero byte
//! chunk i             AES-256-GCM(data key, nonce = prefix ‖ i as u32 BE ‖ last flag,
//!                                 aad = the 40 header bytes) → ciphertext ‖ 16-byte tag
//! ```
//! Every chunk holds `chunk_size` plaintext bytes except the last, which holds 1..=chunk_size
//! (0 only when the whole recording is empty, as a single chunk). The last-chunk flag in the
//! nonce makes truncation at a chunk boundary fail authentication; the index in the nonce makes
//! reordering fail; the header in the AAD binds every chunk to this recording and chunk size;
//! the data key is unique to the recording, so a chunk or file from another recording fails.

use aes_gcm::{AeadInOut, Aes256Gcm};

pub const MAGIC: &[u8; 8] = b"CGVAULT\0";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;
pub const TAG_LEN: usize = 16;
pub const NONCE_PREFIX_LEN: usize = 7;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 32 * 1024;
/// Chunk sizes the reader accepts (a hostile header cannot make it allocate more).
pub const MIN_CHUNK_SIZE: u32 = 16;
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Why bytes are not a valid blob (or chunk).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("blob is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: u64 },
    #[error("not a callguard vault blob (bad magic)")]
    BadMagic,
    #[error("unsupported vault format version {0}")]
    Version(u8),
    #[error("header reserved bytes are not zero")]
    Reserved,
    #[error("chunk size {0} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("blob belongs to recording {found}, not {expected}")]
    WrongRecording { expected: String, found: String },
    #[error(
        "blob body of {body_len} bytes cannot be a sequence of chunks (last chunk of {last_len} bytes)"
    )]
    Truncated { body_len: u64, last_len: u64 },
    #[error("blob has {0} chunks, more than the format's 2^32")]
    TooManyChunks(u64),
    #[error("chunk {index} failed authentication")]
    Tampered { index: u64 },
}

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub recording_id: [u8; 16],
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = VERSION;
        out[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        out[16..32].copy_from_slice(&self.recording_id);
        out[32..39].copy_from_slice(&self.nonce_prefix);
        out
    }

    /// Parses exactly the 40 header bytes.
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::ShortHeader {
                len: bytes.len() as u64,
            });
        }
        if &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if bytes[8] != VERSION {
            return Err(FormatError::Version(bytes[8]));
        }
        if bytes[9..12] != [0, 0, 0] || bytes[39] != 0 {
            return Err(FormatError::Reserved);
        }
        let chunk_size = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(FormatError::ChunkSize(chunk_size));
        }
        let mut recording_id = [0u8; 16];
        recording_id.copy_from_slice(&bytes[16..32]);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[32..39]);
        Ok(Header {
            chunk_size,
            recording_id,
            nonce_prefix,
        })
    }

    /// Bytes of one full ciphertext chunk.
    pub fn sealed_chunk_len(&self) -> u64 {
        u64::from(self.chunk_size) + TAG_LEN as u64
    }

    fn nonce(&self, index: u64, last: bool) -> Result<[u8; 12], FormatError> {
        let index32 = u32::try_from(index).map_err(|_| FormatError::TooManyChunks(index))?;
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(&self.nonce_prefix);
        nonce[7..11].copy_from_slice(&index32.to_be_bytes());
        nonce[11] = u8::from(last);
        Ok(nonce)
    }

    /// Encrypts one chunk in place; returns its tag (to append).
    pub fn seal_chunk(
        &self,
        cipher: &Aes256Gcm,
        index: u64,
        last: bool,
        chunk: &mut [u8],
    ) -> Result<[u8; TAG_LEN], FormatError> {
        let nonce = self.nonce(index, last)?;
        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &self.encode(), chunk.into())
            .map_err(|_| FormatError::TooManyChunks(index))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts one sealed chunk (ciphertext ‖ tag) in place; returns the plaintext length.
    pub fn open_chunk(
        &self,
        cipher: &Aes256Gcm,
        index: u64,
        last: bool,
        sealed: &mut [u8],
    ) -> Result<usize, FormatError> {
        if sealed.len() < TAG_LEN {
            return Err(FormatError::Tampered { index });
        }
        let plain_len = sealed.len() - TAG_LEN;
        let (body, tag) = sealed.split_at_mut(plain_len);
        let tag: [u8; TAG_LEN] = (&*tag)
            .try_into()
            .map_err(|_| FormatError::Tampered { index })?;
        let nonce = self.nonce(index, last)?;
        cipher
            .decrypt_inout_detached(&nonce.into(), &self.encode(), body.into(), &tag.into())
            .map_err(|_| FormatError::Tampered { index })?;
        Ok(plain_len)
    }
}

/// Where the chunks of a blob of a given length are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub n_chunks: u64,
    pub plaintext_len: u64,
    /// Sealed length of the last chunk (tag included).
    pub last_sealed_len: u64,
}

impl Layout {
    /// Computes the layout of a blob of `file_len` bytes; refuses lengths no writer produces.
    pub fn of(header: &Header, file_len: u64) -> Result<Layout, FormatError> {
        let body_len = file_len
            .checked_sub(HEADER_LEN as u64)
            .ok_or(FormatError::ShortHeader { len: file_len })?;
        let full = header.sealed_chunk_len();
        if body_len < TAG_LEN as u64 {
            return Err(FormatError::Truncated {
                body_len,
                last_len: body_len,
            });
        }
        let n_chunks = body_len.div_ceil(full);
        let last_sealed_len = body_len - (n_chunks - 1) * full;
        // Only the single chunk of an empty recording may be empty.
        if last_sealed_len < TAG_LEN as u64 || (n_chunks > 1 && last_sealed_len == TAG_LEN as u64) {
            return Err(FormatError::Truncated {
                body_len,
                last_len: last_sealed_len,
            });
        }
        if n_chunks > u64::from(u32::MAX) + 1 {
            return Err(FormatError::TooManyChunks(n_chunks));
        }
        Ok(Layout {
            n_chunks,
            plaintext_len: body_len - n_chunks * TAG_LEN as u64,
            last_sealed_len,
        })
    }

    /// Byte offset of chunk `index` in the file.
    pub fn chunk_offset(header: &Header, index: u64) -> u64 {
        HEADER_LEN as u64 + index * header.sealed_chunk_len()
    }

    /// Sealed length of chunk `index`.
    pub fn sealed_len(&self, header: &Header, index: u64) -> u64 {
        match index + 1 == self.n_chunks {
            true => self.last_sealed_len,
            false => header.sealed_chunk_len(),
        }
    }

    /// Length of a blob holding `plaintext_len` bytes.
    pub fn blob_len(chunk_size: u32, plaintext_len: u64) -> u64 {
        let n_chunks = plaintext_len.div_ceil(u64::from(chunk_size)).max(1);
        HEADER_LEN as u64 + plaintext_len + n_chunks * TAG_LEN as u64
    }
}

/// Decrypts a whole blob held in memory. For fuzzing and tests; the store streams.
pub fn open_all(
    cipher: &Aes256Gcm,
    expected_id: Option<&[u8; 16]>,
    blob: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let header = Header::parse(blob)?;
    if let Some(expected) = expected_id
        && expected != &header.recording_id
    {
        return Err(FormatError::WrongRecording {
            expected: hex::encode(expected),
            found: hex::encode(header.recording_id),
        });
    }
    let layout = Layout::of(&header, blob.len() as u64)?;
    let mut out = Vec::with_capacity(
        usize::try_from(layout.plaintext_len)
            .unwrap_or(0)
            .min(1 << 26),
    );
    for index in 0..layout.n_chunks {
        let start = usize::try_from(Layout::chunk_offset(&header, index))
            .map_err(|_| FormatError::TooManyChunks(index))?;
        let len = usize::try_from(layout.sealed_len(&header, index))
            .map_err(|_| FormatError::TooManyChunks(index))?;
        let mut sealed = blob[start..start + len].to_vec();
        let plain_len =
            header.open_chunk(cipher, index, index + 1 == layout.n_chunks, &mut sealed)?;
        out.extend_from_slice(&sealed[..plain_len]);
    }
    Ok(out)
}

/// Encrypts a whole plaintext in memory. For fuzzing and tests; the store streams.
pub fn seal_all(
    cipher: &Aes256Gcm,
    header: &Header,
    plaintext: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut out = header.encode().to_vec();
    let chunk = header.chunk_size as usize;
    let n_chunks = plaintext.len().div_ceil(chunk).max(1);
    for index in 0..n_chunks {
        let start = index * chunk;
        let end = (start + chunk).min(plaintext.len());
        let mut buf = plaintext[start..end].to_vec();
        let tag = header.seal_chunk(cipher, index as u64, index + 1 == n_chunks, &mut buf)?;
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use aes_gcm::KeyInit;

    use super::*;

    fn header(chunk_size: u32) -> Header {
        Header {
            chunk_size,
            recording_id: [9; 16],
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
        }
    }

    fn cipher(byte: u8) -> Aes256Gcm {
        Aes256Gcm::new(&[byte; 32].into())
    }

    #[test]
    fn header_round_trip_and_refusals() {
        let h = header(4096);
        assert_eq!(Header::parse(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert_eq!(Header::parse(&bad), Err(FormatError::BadMagic));
        let mut bad = h.encode();
        bad[8] = 2;
        assert_eq!(Header::parse(&bad), Err(FormatError::Version(2)));
        let mut bad = h.encode();
        bad[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Header::parse(&bad), Err(FormatError::ChunkSize(u32::MAX)));
        assert_eq!(
            Header::parse(&h.encode()[..39]),
            Err(FormatError::ShortHeader { len: 39 })
        );
    }

    #[test]
    fn round_trip_at_chunk_boundaries() {
        let h = header(64);
        for len in [0usize, 1, 63, 64, 65, 128, 129, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let blob = seal_all(&cipher(1), &h, &plain).unwrap();
            assert_eq!(
                blob.len() as u64,
                Layout::blob_len(64, len as u64),
                "len {len}"
            );
            assert_eq!(
                Layout::of(&h, blob.len() as u64).unwrap().plaintext_len,
                len as u64
            );
            assert_eq!(
                open_all(&cipher(1), Some(&[9; 16]), &blob).unwrap(),
                plain,
                "len {len}"
            );
        }
    }

    #[test]
    fn every_tamper_is_refused() {
        let h = header(64);
        let plain = vec![42u8; 200];
        let blob = seal_all(&cipher(1), &h, &plain).unwrap();
        // A flipped bit anywhere.
        for pos in [0, 20, 40, 41, 100, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[pos] ^= 0x10;
            assert!(
                open_all(&cipher(1), Some(&[9; 16]), &bad).is_err(),
                "bit flip at {pos}"
            );
        }
        // Truncation at a chunk boundary (drop the last chunk) and mid-chunk.
        let boundary = HEADER_LEN + 3 * 80;
        assert!(open_all(&cipher(1), None, &blob[..boundary]).is_err());
        assert!(open_all(&cipher(1), None, &blob[..blob.len() - 5]).is_err());
        // Reordering two chunks.
        let mut swapped = blob.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + 80);
        let first: Vec<u8> = swapped[a..a + 80].to_vec();
        let second: Vec<u8> = swapped[b..b + 80].to_vec();
        swapped[a..a + 80].copy_from_slice(&second);
        swapped[b..b + 80].copy_from_slice(&first);
        assert_eq!(
            open_all(&cipher(1), None, &swapped),
            Err(FormatError::Tampered { index: 0 })
        );
        // A chunk from another recording (other key), and a whole other file.
        let other_header = Header {
            recording_id: [8; 16],
            ..h
        };
        let other = seal_all(&cipher(2), &other_header, &plain).unwrap();
        let mut spliced = blob.clone();
        spliced[a..a + 80].copy_from_slice(&other[a..a + 80]);
        assert!(open_all(&cipher(1), None, &spliced).is_err());
        assert!(matches!(
            open_all(&cipher(1), Some(&[9; 16]), &other),
            Err(FormatError::WrongRecording { .. })
        ));
        // Same key but a header rewritten to claim the other id still fails (AAD binds it).
        let mut relabelled = blob.clone();
        relabelled[16..32].copy_from_slice(&[8; 16]);
        assert!(open_all(&cipher(1), Some(&[8; 16]), &relabelled).is_err());
        // Appending an empty final chunk is not a valid layout.
        let mut extended = blob.clone();
        extended.extend_from_slice(&[0u8; TAG_LEN]);
        assert!(open_all(&cipher(1), None, &extended).is_err());
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = open_all(&cipher(1), None, &bytes);
        }

        #[test]
        fn round_trips(plain in proptest::collection::vec(proptest::num::u8::ANY, 0..600), chunk in 16u32..100) {
            let h = header(chunk);
            let blob = seal_all(&cipher(3), &h, &plain).unwrap();
            proptest::prop_assert_eq!(open_all(&cipher(3), None, &blob).unwrap(), plain);
        }
    }
}
