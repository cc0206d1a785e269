//! Ingest: the one pipeline both doors use (HTTPS upload and spool), in this order: metadata
//! parsed (`metadata`, `spool_name`) → objection gate (nothing persisted for a discarded call) →
//! audio streamed once into the vault while probed (`probe`) and hashed → catalog row and audit
//! entry committed together → acknowledged. Also owns playback transcoding (`transcode`, `gsm`)
//! and the spool watcher (`spool`). Does not speak HTTP: the API hands it a byte stream.

pub mod gsm;
pub mod metadata;
pub mod probe;
pub mod spool;
pub mod spool_name;
pub mod transcode;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::recordings::{AudioFacts, Inserted, RecordingRow, RecordingState};
use crate::catalog::{Catalog, CatalogError};
use crate::clock::SharedClock;
use crate::config::units::Period;
use crate::ingest::metadata::CallMetadata;
use crate::ingest::probe::{AudioInfo, FormatHint, ProbeError, Prober};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::objections::{CALL_ID_DOMAIN, CALLER_DOMAIN, ObjectionError, Objections};
use crate::vault::keys::{DataKey, KeyError};
use crate::vault::store::BlobWriter;
use crate::vault::{BlobId, Vault, VaultError};

/// HMAC domains of the other lookup digests.
pub const CALLEE_DOMAIN: &str = "callee";
pub const ACCOUNT_DOMAIN: &str = "account";

/// The lookup digest of a client account, the same however it is written: receivers send
/// Contact ID accounts in capitals (`BEEF`), an alarm-management system or the contracts
/// system may not (`beef`, ` BEEF `). Recordings, holds, alarm cases and trusted contacts all
/// find an account through this.
pub fn account_digest(keyring: &Keyring, account: &str) -> [u8; 32] {
    keyring.digest(ACCOUNT_DOMAIN, &account.trim().to_ascii_uppercase())
}
pub const OPERATOR_DOMAIN: &str = "operator";

/// How far ahead of the server's clock a call may say it started.
pub const FUTURE_TOLERANCE: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Why a recording was not stored. Nothing of it remains on disk in any case.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    #[error("unsupported audio: {0}")]
    UnsupportedAudio(#[from] ProbeError),
    #[error("recording larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("storage full")]
    StorageFull(#[source] VaultError),
    #[error("call id already stored with different audio (recording {existing})")]
    DuplicateCallId { existing: BlobId },
    /// An objection registered while the audio was arriving: discarded (and audited) after
    /// all; the reason is `caller_objection`, `call_objection` or `deleted`.
    #[error("discarded: {0}")]
    Discarded(&'static str),
    #[error("cannot read the recording from its source: {0}")]
    Source(String),
    #[error(transparent)]
    Vault(VaultError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Objection(#[from] ObjectionError),
}

impl From<VaultError> for IngestError {
    fn from(error: VaultError) -> IngestError {
        match error {
            VaultError::TooLarge { limit } => IngestError::TooLarge { limit },
            error if error.is_storage_full() => IngestError::StorageFull(error),
            error => IngestError::Vault(error),
        }
    }
}

/// The gate's answer for a call.
#[derive(Debug)]
pub enum Admission {
    /// Stream the audio into `Pipeline::ingest` with this ticket.
    Admit(Admitted),
    /// Do not persist anything; the reason is `caller_objection`, `call_objection`, or
    /// `deleted` (this call's recording was deleted: a retry does not bring it back).
    Discard(&'static str),
}

/// What the gate prepared for an admitted call, right after its checks:
/// the encrypted blob writer of a new call, or the row of a call id already stored (whose
/// audio is then only hashed and compared). It carries the metadata it was admitted for, so
/// that the ingest cannot pair it with another call's. Dropping it removes the writer's
/// temporary file.
pub struct Admitted {
    meta: CallMetadata,
    call_hmac: [u8; 32],
    next: Next,
}

enum Next {
    New(Box<NewBlob>),
    Repeat(Box<RecordingRow>),
}

/// A new recording's writer and its data key (plain, and wrapped for the catalog row).
struct NewBlob {
    writer: BlobWriter,
    key: DataKey,
    wrapped_key: Vec<u8>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.next {
            Next::New(new) => write!(f, "Admitted(new recording {})", new.writer.id()),
            Next::Repeat(row) => write!(f, "Admitted(repeat of recording {})", row.id),
        }
    }
}

/// The gate's verdict, before a discard is audited.
enum Gate {
    Admit(Admitted),
    Discard(&'static str),
}

/// A stored recording, as the upload answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: BlobId,
    pub audio: AudioFacts,
    pub sha256: [u8; 32],
    pub size: u64,
    pub retain_until: jiff::Timestamp,
    /// True when the call id was already stored with identical audio (idempotent repeat).
    pub repeated: bool,
}

/// Who is sending the recording, for the audit trail.
#[derive(Debug, Clone)]
pub struct Sender {
    pub actor: String,
    pub role: String,
}

/// The ingest pipeline.
#[derive(Clone)]
pub struct Pipeline {
    pub catalog: Catalog,
    pub vault: Vault,
    pub keyring: Arc<Keyring>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub retention: Period,
    pub max_bytes: u64,
}

impl Pipeline {
    /// The objection gate, run on the metadata before any audio byte is persisted. A discard
    /// is counted and audited (without any number). An admitted call gets its idempotency lookup
    /// and, if new, its data key and encrypted blob writer. The gate runs in place, on the
    /// runtime thread: two indexed reads on a reader connection (which never waits for the
    /// writer), a key and a file creation cost less than a hand-off to a blocking thread.
    pub async fn admit(
        &self,
        meta: &CallMetadata,
        sender: &Sender,
    ) -> Result<Admission, IngestError> {
        let now = self.clock.now();
        let gate = self.gate(meta.clone(), now)?;
        match gate {
            Gate::Admit(admitted) => Ok(Admission::Admit(admitted)),
            Gate::Discard(reason) => {
                self.discarded(reason, sender, now).await?;
                Ok(Admission::Discard(reason))
            }
        }
    }

    /// The synchronous half of `admit`: objection check, idempotency lookup, writer.
    fn gate(&self, meta: CallMetadata, now: jiff::Timestamp) -> Result<Gate, IngestError> {
        // A start far ahead of the clock would keep the recording past its six months (its
        // `retain_until` counts from it): a recorder's clock or time-zone error, refused.
        if meta.started_at > now.saturating_add(FUTURE_TOLERANCE).unwrap_or(now) {
            return Err(IngestError::InvalidMetadata(format!(
                "`started_at` {} is more than {} hours ahead of this server's clock ({}); \
                 check the recorder's clock",
                meta.started_at,
                FUTURE_TOLERANCE.as_hours(),
                now.round(jiff::Unit::Second).unwrap_or(now),
            )));
        }
        // Nor can a call predate the Unix epoch: such a start is a recorder's unset clock (and
        // before year 0 has no RFC 3339 form to show).
        if meta.started_at < jiff::Timestamp::UNIX_EPOCH {
            return Err(IngestError::InvalidMetadata(format!(
                "`started_at` {} is before 1970; check the recorder's clock",
                meta.started_at
            )));
        }
        let registry = Objections {
            catalog: &self.catalog,
            vault: &self.vault,
            keyring: &self.keyring,
        };
        let verdict = registry
            .check(meta.caller.as_ref(), &meta.call_id, now)
            .map_err(|error| match error {
                ObjectionError::Catalog(catalog) => IngestError::Catalog(catalog),
                other => IngestError::Objection(other),
            })?;
        if let Some(reason) = verdict {
            return Ok(Gate::Discard(reason));
        }
        let call_hmac = self.keyring.digest(CALL_ID_DOMAIN, &meta.call_id);
        // A call whose recording was deleted (retention, erasure, objection) is not stored
        // again when it is sent again: a retry must not undo a deletion.
        if self.catalog.deleted_call(&call_hmac)?.is_some() {
            return Ok(Gate::Discard("deleted"));
        }
        let next = match self.catalog.recording_by_call(&call_hmac)? {
            Some(existing) => Next::Repeat(Box::new(existing)),
            None => {
                let id = BlobId::generate();
                let (key, wrapped_key) = self.keyring.new_recording_key(&id)?;
                let writer = BlobWriter::create_blocking(&self.vault, id, &key, self.max_bytes)?;
                Next::New(Box::new(NewBlob {
                    writer,
                    key,
                    wrapped_key,
                }))
            }
        };
        Ok(Gate::Admit(Admitted {
            meta,
            call_hmac,
            next,
        }))
    }

    /// Counts and audits (without any number) a discarded call.
    async fn discarded(
        &self,
        reason: &'static str,
        sender: &Sender,
        now: jiff::Timestamp,
    ) -> Result<(), IngestError> {
        self.metrics
            .discarded
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
        let draft = AuditDraft::new(
            &sender.actor,
            &sender.role,
            "recording.discard",
            "",
            Outcome::Allowed,
        )
        .detail(reason);
        self.catalog
            .call(move |catalog| catalog.audit(draft, now))
            .await?;
        Ok(())
    }

    /// Streams `source` into the vault while probing and hashing it, then commits the catalog
    /// row. `admitted` comes from `admit`; an objection registered since is still honoured
    /// (`IngestError::Discarded`). On any error nothing remains (the blob is removed).
    pub async fn ingest<S, E>(
        &self,
        admitted: Admitted,
        hint: FormatHint,
        source: S,
        sender: &Sender,
    ) -> Result<Stored, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Admitted {
            meta,
            call_hmac,
            next,
        } = admitted;
        let NewBlob {
            mut writer,
            key,
            wrapped_key,
        } = match next {
            Next::Repeat(existing) => return self.repeat(*existing, source).await,
            Next::New(new) => *new,
        };
        let id = writer.id();
        let mut prober = Prober::start(hint);
        let mut hasher = Sha256::new();
        let mut source = source;
        while let Some(chunk) = source.next().await {
            let chunk = chunk.map_err(|error| IngestError::Source(error.to_string()))?;
            if chunk.is_empty() {
                continue;
            }
            hasher.update(&chunk);
            writer.write(&chunk).await?;
            prober.feed(chunk).await?;
        }
        let info = prober.finish().await?;
        let size = writer.len();

        let now = self.clock.now();
        let retain_until = self.retention.after(meta.started_at);
        let personal = serde_json::json!({
            "call_id": meta.call_id,
            "caller": meta.caller.as_ref().map(|n| n.as_str()),
            "callee": meta.callee.as_ref().map(|n| n.as_str()),
            "account": meta.account,
            "operator": meta.operator,
        });
        let sealed_meta = key.seal(
            format!("{id}/meta").as_bytes(),
            personal.to_string().as_bytes(),
        )?;
        let sha256: [u8; 32] = hasher.finalize().into();
        let audio = facts(&info);
        let row = RecordingRow {
            id,
            call_id_hmac: call_hmac,
            caller_hmac: meta
                .caller
                .as_ref()
                .map(|n| self.keyring.digest(CALLER_DOMAIN, n.as_str())),
            callee_hmac: meta
                .callee
                .as_ref()
                .map(|n| self.keyring.digest(CALLEE_DOMAIN, n.as_str())),
            account_hmac: meta
                .account
                .as_deref()
                .map(|a| account_digest(&self.keyring, a)),
            operator_hmac: meta
                .operator
                .as_deref()
                .map(|o| self.keyring.digest(OPERATOR_DOMAIN, o)),
            alarm_case: meta.alarm_case.clone(),
            direction: meta.direction.as_str().to_owned(),
            started_at: meta.started_at,
            retain_until,
            ingested_at: now,
            state: RecordingState::Stored,
            audio: audio.clone(),
            size,
            sha256,
            wrapped_key,
            sealed_meta,
            pending_deletion: None,
        };
        let draft = AuditDraft::new(
            &sender.actor,
            &sender.role,
            "recording.ingest",
            &id.to_string(),
            Outcome::Allowed,
        )
        .detail(format!("{} {} ms", audio.codec, audio.duration_ms));
        // The row commits on the thread that made the blob durable, right after it.
        let catalog = self.catalog.clone();
        let (_, inserted) = writer
            .finish_then(move |_| catalog.insert_recording(&row, draft, now))
            .await?;
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(error) => {
                // Not committed: the blob must not outlive the failed commit.
                let _ = self.vault.remove(&id);
                return Err(error.into());
            }
        };
        match inserted {
            Inserted::New(_) => {
                self.metrics.ingested.inc();
                Ok(Stored {
                    id,
                    audio,
                    sha256,
                    size,
                    retain_until,
                    repeated: false,
                })
            }
            Inserted::Discarded(reason) => {
                // Objected to (guarantee 5), or the call deleted, while the audio arrived:
                // nothing is kept.
                self.vault.remove(&id)?;
                self.discarded(reason, sender, now).await?;
                Err(IngestError::Discarded(reason))
            }
            Inserted::Duplicate(existing) => {
                // A concurrent upload of the same call won the race.
                self.vault.remove(&id)?;
                match existing.sha256 == sha256 {
                    true => Ok(stored_of(&existing, true)),
                    false => Err(IngestError::DuplicateCallId {
                        existing: existing.id,
                    }),
                }
            }
        }
    }

    /// A call id already stored: identical audio is an idempotent repeat, anything else a
    /// conflict. The body is hashed, never stored.
    async fn repeat<S, E>(
        &self,
        existing: RecordingRow,
        mut source: S,
    ) -> Result<Stored, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = source.next().await {
            let chunk = chunk.map_err(|error| IngestError::Source(error.to_string()))?;
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(IngestError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        match sha256 == existing.sha256 {
            true => Ok(stored_of(&existing, true)),
            false => Err(IngestError::DuplicateCallId {
                existing: existing.id,
            }),
        }
    }
}

fn stored_of(row: &RecordingRow, repeated: bool) -> Stored {
    Stored {
        id: row.id,
        audio: row.audio.clone(),
        sha256: row.sha256,
        size: row.size,
        retain_until: row.retain_until,
        repeated,
    }
}

/// The catalog's view of a probe result.
pub fn facts(info: &AudioInfo) -> AudioFacts {
    AudioFacts {
        container: info.container.to_owned(),
        codec: info.codec.to_owned(),
        sample_rate: info.sample_rate,
        channels: info.channels,
        n_frames: info.n_frames,
        duration_ms: info.duration_ms,
    }
}

/// Back from the catalog to a probe result, for transcoding. `None` for names this build does
/// not know (then playback answers 415).
pub fn info_of(facts: &AudioFacts) -> Option<AudioInfo> {
    const CONTAINERS: [&str; 5] = ["wav", "flac", "mp3", "ogg", "raw"];
    const CODECS: [&str; 15] = [
        "pcm_u8",
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_f32le",
        "pcm_f64le",
        "pcm_alaw",
        "pcm_mulaw",
        "adpcm_ima",
        "adpcm_ms",
        "gsm",
        "flac",
        "mp3",
        "vorbis",
        "opus",
    ];
    let container = CONTAINERS.iter().find(|c| **c == facts.container)?;
    let codec = CODECS.iter().find(|c| **c == facts.codec)?;
    Some(AudioInfo {
        container,
        codec,
        sample_rate: facts.sample_rate,
        channels: facts.channels,
        n_frames: facts.n_frames,
        duration_ms: facts.duration_ms,
    })
}

/// The sealed personal metadata of a recording, opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Personal {
    pub call_id: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub account: Option<String>,
    pub operator: Option<String>,
}

/// Opens a recording's sealed metadata with its data key.
pub fn open_personal(keyring: &Keyring, row: &RecordingRow) -> Result<Personal, KeyError> {
    let key = keyring.recording_key(&row.id, &row.wrapped_key)?;
    let plain = key.open(format!("{}/meta", row.id).as_bytes(), &row.sealed_meta)?;
    let value: serde_json::Value = serde_json::from_slice(&plain).map_err(|_| KeyError::Open {
        context: format!("{}/meta", row.id),
    })?;
    let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Personal {
        call_id: text("call_id").unwrap_or_default(),
        caller: text("caller"),
        callee: text("callee"),
        account: text("account"),
        operator: text("operator"),
    })
}
