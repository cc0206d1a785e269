//! The encrypted store: one blob file per recording under `data_dir/vault/`, each sealed with
//! its own data key in the chunked format of `format` (docs/vault-format.md). Owns key material
//! (`keys`), the sans-I/O format (`format`), blob files and their crash-safe write path
//! (`store`) with its direct I/O (`direct`), and the recovery scan. Knows nothing of SQLite,
//! HTTP or the config file format: the catalog keeps the wrapped keys, the vault keeps the
//! ciphertext.

pub mod direct;
pub mod durability;
pub mod format;
pub mod keys;
pub mod store;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::vault::format::FormatError;
use crate::vault::keys::KeyError;

/// Identifier of a blob (and of the recording it holds): a UUIDv7, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 16]);

impl BlobId {
    /// A new time-ordered identifier.
    pub fn generate() -> BlobId {
        BlobId(*uuid::Uuid::now_v7().as_bytes())
    }

    /// Parses exactly 32 lowercase hex digits; anything else (a path, a shorter string) is `None`.
    pub fn parse(text: &str) -> Option<BlobId> {
        if text.len() != 32
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(BlobId(bytes))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> BlobId {
        BlobId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// Why the vault refused to read or write.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {id} is missing")]
    Missing { id: BlobId },
    #[error("blob {id}: {source}")]
    Format {
        id: BlobId,
        #[source]
        source: FormatError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("recording is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

impl VaultError {
    /// True when the file system is full (the API answers 507).
    pub fn is_storage_full(&self) -> bool {
        match self {
            VaultError::Write { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
            }
            VaultError::Read { .. }
            | VaultError::Missing { .. }
            | VaultError::Format { .. }
            | VaultError::Key(_)
            | VaultError::TooLarge { .. } => false,
        }
    }
}

/// The blob directory.
#[derive(Debug, Clone)]
pub struct Vault {
    /// `data_dir/vault`.
    dir: PathBuf,
    /// Plaintext bytes per chunk for new blobs.
    chunk_size: u32,
    /// Write buffers of fast uploads, reused from one blob to the next.
    buffers: store::BufferPool,
    /// Direct or buffered blob writes, as the start-up probe found.
    write_mode: direct::WriteMode,
    /// Whether a new blob's fsync makes its name durable or its directory needs one too.
    new_names: durability::NewNames,
}

/// What the start-up scan found.
#[derive(Debug, Default)]
pub struct RecoveryScan {
    /// Temporary files of writes that never finished, now removed.
    pub temp_removed: usize,
    /// Every blob present.
    pub blobs: Vec<BlobId>,
}

impl Vault {
    /// Opens (and creates if needed) the vault under `dir`, with its quarantine and 256 shard
    /// directories. A directory created here is made durable (its parent fsynced) before the
    /// vault is used, so a blob's write needs nothing above its own directory.
    pub fn open(dir: &Path) -> Result<Vault, VaultError> {
        let mut created_in = std::collections::BTreeSet::new();
        let shards = (0..=u8::MAX).map(|shard| dir.join(format!("{shard:02x}")));
        let subs = [dir.to_owned(), dir.join("quarantine")];
        for sub in subs.into_iter().chain(shards) {
            if sub.is_dir() {
                continue;
            }
            private_dir_all(&sub).map_err(|source| VaultError::Write {
                path: sub.clone(),
                source,
            })?;
            created_in.insert(parent_of(&sub).to_owned());
        }
        for parent in &created_in {
            store::sync_dir(parent)?;
        }
        let (write_mode, refusal) = direct::WriteMode::probe(dir);
        match refusal {
            None => tracing::debug!(dir = %dir.display(), "vault writes blobs with direct I/O"),
            Some(error) => tracing::warn!(
                dir = %dir.display(),
                %error,
                "no direct I/O in the vault's directory (refused, or the probe could not write): blobs go through the page cache"
            ),
        }
        let (new_names, fs_type) = durability::NewNames::of(dir);
        tracing::debug!(
            dir = %dir.display(),
            fs_type = fs_type.as_deref().unwrap_or("unknown"),
            ?new_names,
            "how the vault makes a new blob's name durable"
        );
        Ok(Vault {
            dir: dir.to_owned(),
            chunk_size: format::DEFAULT_CHUNK_SIZE,
            buffers: store::BufferPool::default(),
            write_mode,
            new_names,
        })
    }

    /// Same, with a chosen rule for new names (tests exercise both on any file system).
    pub fn with_new_names(mut self, new_names: durability::NewNames) -> Vault {
        self.new_names = new_names;
        self
    }

    pub fn new_names(&self) -> durability::NewNames {
        self.new_names
    }

    /// Same, with a chosen write mode (tests exercise both on any file system).
    pub fn with_write_mode(mut self, write_mode: direct::WriteMode) -> Vault {
        self.write_mode = write_mode;
        self
    }

    pub fn write_mode(&self) -> direct::WriteMode {
        self.write_mode
    }

    /// Same, with a chosen chunk size (tests exercise small chunks).
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Vault {
        self.chunk_size = chunk_size.clamp(format::MIN_CHUNK_SIZE, format::MAX_CHUNK_SIZE);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Path of the blob of `id`: derived from the typed id only, never from input text. The
    /// shard is the id's last byte (random in a UUIDv7), so blobs spread over 256 directories,
    /// all created by `open`.
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        let name = id.to_string();
        self.dir.join(&name[30..]).join(format!("{name}.cgv"))
    }

    /// Removes many blobs, then fsyncs each directory touched once (not once per blob).
    pub fn remove_many(&self, ids: &[BlobId]) -> Result<(), VaultError> {
        let mut dirs = std::collections::BTreeSet::new();
        self.unlink_many(ids, &mut dirs)?;
        for dir in dirs {
            store::sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Unlinks blobs and adds their directories to `dirs`, which the caller fsyncs later (the
    /// purge does it once per run). Only for blobs whose key is already shredded: a crash
    /// before the fsync can bring back the file, never the audio, and recovery removes it.
    ///
    /// Unlinks run on up to `UNLINK_THREADS` threads, each on its own shard directories: an
    /// unlink waits for the device (a file system mounted with `discard` trims the freed blocks
    /// synchronously, milliseconds on some virtual disks), and the device takes many at once.
    pub fn unlink_many(
        &self,
        ids: &[BlobId],
        dirs: &mut std::collections::BTreeSet<PathBuf>,
    ) -> Result<(), VaultError> {
        let n_threads = ids
            .len()
            .div_ceil(UNLINK_PER_THREAD)
            .clamp(1, UNLINK_THREADS);
        let mut shares: Vec<Vec<PathBuf>> = vec![Vec::new(); n_threads];
        for id in ids {
            let path = self.blob_path(id);
            let shard = usize::from(id.as_bytes()[15]) % n_threads;
            shares[shard].push(path);
        }
        let results: Vec<Result<Vec<PathBuf>, VaultError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = shares
                .into_iter()
                .map(|paths| scope.spawn(move || unlink_all(paths)))
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    worker.join().unwrap_or_else(|_| {
                        Err(VaultError::Write {
                            path: self.dir.clone(),
                            source: std::io::Error::other("unlink thread panicked"),
                        })
                    })
                })
                .collect()
        });
        for result in results {
            for path in result? {
                if let Some(parent) = path.parent() {
                    dirs.insert(parent.to_owned());
                }
            }
        }
        Ok(())
    }

    /// fsyncs directories collected by `unlink_many`.
    pub fn sync_dirs(&self, dirs: &std::collections::BTreeSet<PathBuf>) -> Result<(), VaultError> {
        for dir in dirs {
            store::sync_dir(dir)?;
        }
        Ok(())
    }

    pub(crate) fn buffers(&self) -> &store::BufferPool {
        &self.buffers
    }

    /// Path of a quarantined file's encrypted blob (its id is validated by the caller).
    pub fn quarantine_path(&self, id: &str) -> PathBuf {
        self.dir.join("quarantine").join(format!("{id}.cgv"))
    }

    /// Removes a quarantined blob. Ids are generated hex strings; anything else is refused.
    pub fn remove_quarantine(&self, id: &str) -> Result<(), VaultError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        match remove_if_present(&self.quarantine_path(id))? {
            true => store::sync_dir(&self.dir.join("quarantine")),
            false => Ok(()),
        }
    }

    /// Removes a blob and makes the removal durable. A blob already gone is not an error.
    pub fn remove(&self, id: &BlobId) -> Result<(), VaultError> {
        let path = self.blob_path(id);
        if !remove_if_present(&path)? {
            return Ok(());
        }
        match path.parent() {
            Some(parent) => store::sync_dir(parent),
            None => Ok(()),
        }
    }

    /// The ids of the blobs in `vault/quarantine/` (`<id>.cgv`); other files are left alone.
    pub fn quarantine_blobs(&self) -> Result<Vec<String>, VaultError> {
        let mut ids: Vec<String> = blob_ids_in(&self.dir.join("quarantine"), "quarantine")?
            .iter()
            .map(BlobId::to_string)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Start-up scan: removes every temporary file (a direct-I/O probe cut short in the vault's
    /// own directory, and the writes earlier versions left unfinished: `*.tmp` beside the blobs
    /// and in the quarantine, anything in their shared `tmp/` directory, which is then removed)
    /// and lists the blobs, for the catalog to reconcile: a blob without a row (a write that
    /// never finished, or finished without its commit) is removed there. Runs before any write:
    /// a write in progress is a blob without a row too.
    pub fn recover(&self) -> Result<RecoveryScan, VaultError> {
        let mut scan = RecoveryScan::default();
        let legacy_temp = self.dir.join(LEGACY_TEMP_DIR);
        if legacy_temp.is_dir() {
            for entry in entries_of(&legacy_temp)? {
                remove_path(&entry.path())?;
                scan.temp_removed += 1;
            }
            std::fs::remove_dir(&legacy_temp).map_err(|source| VaultError::Write {
                path: legacy_temp.clone(),
                source,
            })?;
            store::sync_dir(&self.dir)?;
        }
        scan.temp_removed += remove_temporaries(&self.dir)?;
        scan.temp_removed += remove_temporaries(&self.dir.join("quarantine"))?;
        for shard in entries_of(&self.dir)? {
            let shard_path = shard.path();
            if shard.file_name() == "quarantine" || !shard_path.is_dir() {
                continue;
            }
            scan.temp_removed += remove_temporaries(&shard_path)?;
            scan.blobs.extend(blob_ids_in(&shard_path, "vault")?);
        }
        scan.blobs.sort();
        Ok(scan)
    }

    /// Bytes used by blobs (for the report).
    pub fn disk_usage(&self) -> u64 {
        fn walk(path: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(path) else {
                return 0;
            };
            let mut total = 0;
            for entry in entries.flatten() {
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() => total += walk(&entry.path()),
                    Ok(meta) => total += meta.len(),
                    Err(_) => {}
                }
            }
            total
        }
        walk(&self.dir)
    }
}

/// Creates `dir` and any missing parent with mode 0700 (the vault's directories are the
/// service's alone, whatever the umask).
pub(crate) fn private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The directory holding `path` (`.` for a bare relative name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The entries of `dir`; a read error names `dir`.
fn entries_of(dir: &Path) -> Result<Vec<std::fs::DirEntry>, VaultError> {
    let read_error = |source| VaultError::Read {
        path: dir.to_owned(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map_err(read_error))
        .collect()
}

/// Suffix of temporary files: the direct-I/O probe's, and the unfinished writes of versions
/// that wrote a blob under a temporary name beside its place and renamed it.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Where earlier versions wrote their temporary files (`vault/tmp/`); recovery empties and
/// removes it.
const LEGACY_TEMP_DIR: &str = "tmp";

/// Whether `name` is a temporary file (never a blob).
pub(crate) fn is_temporary(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().ends_with(TEMP_SUFFIX.as_bytes())
}

/// Removes the temporary files in `dir` (and fsyncs it if there were any); returns how many.
/// One gone meanwhile (a command probing direct I/O removes its own) is not an error.
fn remove_temporaries(dir: &Path) -> Result<usize, VaultError> {
    let mut removed = 0;
    for entry in entries_of(dir)? {
        if is_temporary(&entry.file_name()) && remove_if_present(&entry.path())? {
            removed += 1;
        }
    }
    if removed > 0 {
        store::sync_dir(dir)?;
    }
    Ok(removed)
}

/// Removes the file at `path`: `true` if it was there, `false` if it was already gone.
fn remove_if_present(path: &Path) -> Result<bool, VaultError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(VaultError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes one file; an error names it.
fn remove_path(path: &Path) -> Result<(), VaultError> {
    std::fs::remove_file(path).map_err(|source| VaultError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The ids of the `<id>.cgv` files in `dir`, finished or still being written (a blob without a
/// catalog row is for the caller to judge). Temporary files are skipped; anything else is left
/// alone with a warning naming `place`.
fn blob_ids_in(dir: &Path, place: &str) -> Result<Vec<BlobId>, VaultError> {
    let mut ids = Vec::new();
    for entry in entries_of(dir)? {
        let name = entry.file_name();
        if is_temporary(&name) {
            continue;
        }
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".cgv"))
            .and_then(BlobId::parse);
        match id {
            Some(id) => ids.push(id),
            None => {
                tracing::warn!(path = %entry.path().display(), place, "unexpected file in the vault, left alone")
            }
        }
    }
    Ok(ids)
}

/// Most threads `Vault::unlink_many` uses.
const UNLINK_THREADS: usize = 8;

/// Unlinks per thread below which `Vault::unlink_many` starts no more threads.
const UNLINK_PER_THREAD: usize = 32;

/// Unlinks `paths`; returns those that existed (absent ones are already gone).
fn unlink_all(paths: Vec<PathBuf>) -> Result<Vec<PathBuf>, VaultError> {
    let mut removed = Vec::with_capacity(paths.len());
    for path in paths {
        if remove_if_present(&path)? {
            removed.push(path);
        }
    }
    Ok(removed)
}
