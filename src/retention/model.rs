//! Model-based test of the retention engine (SPEC §4 guarantees 2–5, §7). Random sequences of
//! ingests, holds, releases, objections, withdrawals, erasures, clock moves and purges run
//! against the real thing (catalog, vault, keyring, the ingest `Pipeline` with a tiny WAV, the
//! `Objections` registry, `purge::run_once`, all on disk in a temp dir, time from a
//! `ManualClock`) and against `Model`, a few plain structs that say what SPEC §7 asks. After
//! every step the guarantees are checked on the real catalog and blob files, and both sides
//! must agree on which recordings exist, which holds cover them and which wait for deletion.
//! Test-only.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::access::Role;
use crate::audit::chain::{AuditDraft, Outcome};
use crate::catalog::Catalog;
use crate::catalog::policy::{Deletion, HoldPlacement, HoldSelector};
use crate::catalog::recordings::Lookup;
use crate::clock::{Clock, ManualClock};
use crate::config::RetentionConfig;
use crate::config::units::Period;
use crate::ingest::metadata::{CallMetadata, Direction, PhoneNumber};
use crate::ingest::probe::FormatHint;
use crate::ingest::{Admission, Pipeline, Sender};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::objections::{CALL_ID_DOMAIN, CALLER_DOMAIN, Objections, Source};
use crate::retention::may_read;
use crate::retention::purge::{run_once, unlink_and_checkpoint};
use crate::vault::keys::MasterKey;
use crate::vault::{BlobId, Vault};

const CALLERS: [&str; 4] = [
    "+33612345601",
    "+33612345602",
    "+33698765403",
    "+4915112345604",
];
const ACCOUNTS: [&str; 3] = ["ACC-0001", "ACC-0002", "ACC-0003"];
const RETENTION: Period = Period::Months(6);
const DAY: i64 = 86_400;

/// Where the clock starts: month ends, a leap day, the last hour of a year, and a plain day.
const STARTS: [&str; 5] = [
    "2026-01-31T10:00:00Z",
    "2026-08-31T23:59:59Z",
    "2026-12-31T23:00:00Z",
    "2028-02-29T12:00:00Z",
    "2026-03-15T08:30:00Z",
];

/// One thing that happens to the system. Indices (`recording`, `hold`, `objection`) are taken
/// modulo the number of such things so far; with none, the step does nothing.
#[derive(Debug, Clone)]
enum Op {
    /// The clock moves forward by whole days.
    AdvanceDays(u32),
    /// The clock moves to a recording's `retain_until` plus `offset_secs` (never backwards).
    AdvanceToExpiry { recording: usize, offset_secs: i64 },
    /// The clock moves forward by calendar years.
    AdvanceYears(u8),
    /// The DPO erases one recording (any recording ever stored, deleted ones included).
    Erase { recording: usize },
    /// The recorder sends a call that started `started_days` days (plus seconds) from now.
    Ingest {
        caller_idx: usize,
        account_idx: usize,
        started_days: i64,
        started_secs: i64,
    },
    /// The DPO registers an objection for a caller.
    Object { caller_idx: usize },
    /// An operator reports that the caller objected during a stored call.
    ObjectToCall { recording: usize },
    /// Legal places a hold.
    PlaceHold { pick: Pick, include_future: bool },
    /// The purge runs.
    Purge,
    /// Legal releases a hold (already released ones included: a no-op).
    ReleaseHold { hold: usize },
    /// The DPO withdraws an objection (already withdrawn ones included: a no-op).
    Withdraw { objection: usize },
}

/// A hold selector as generated.
#[derive(Debug, Clone)]
enum Pick {
    Account(usize),
    Caller(usize),
    /// `[now + from_days, now + from_days + n_days)`.
    Range {
        from_days: i64,
        n_days: i64,
    },
    /// One existing recording (a deleted one if none exists).
    Recording(usize),
}

/// A hold selector resolved to what it matches.
#[derive(Debug, Clone)]
enum ModelSelector {
    Account(usize),
    Caller(usize),
    Range {
        from: jiff::Timestamp,
        to: jiff::Timestamp,
    },
    Recording(usize),
}

#[derive(Debug, Clone)]
struct ModelRecording {
    caller_idx: usize,
    account_idx: usize,
    started_at: jiff::Timestamp,
    retain_until: jiff::Timestamp,
    /// An erasure or a call objection was asked while held: it happens at the last release.
    deletion_asked: bool,
    exists: bool,
}

#[derive(Debug, Clone)]
struct ModelHold {
    selector: ModelSelector,
    include_future: bool,
    active: bool,
    covered: BTreeSet<usize>,
}

#[derive(Debug, Clone)]
struct ModelObjection {
    caller_idx: usize,
    active: bool,
}

/// What SPEC §7 says the state is. Indices are those of the real side's vectors.
#[derive(Debug, Clone)]
struct Model {
    now: jiff::Timestamp,
    recordings: Vec<ModelRecording>,
    holds: Vec<ModelHold>,
    objections: Vec<ModelObjection>,
}

impl Model {
    fn existing(&self) -> BTreeSet<usize> {
        (0..self.recordings.len())
            .filter(|r| self.recordings[*r].exists)
            .collect()
    }

    fn holds_of(&self, recording_idx: usize) -> BTreeSet<usize> {
        (0..self.holds.len())
            .filter(|h| self.holds[*h].active && self.holds[*h].covered.contains(&recording_idx))
            .collect()
    }

    fn is_held(&self, recording_idx: usize) -> bool {
        !self.holds_of(recording_idx).is_empty()
    }

    fn is_objected(&self, caller_idx: usize) -> bool {
        self.objections
            .iter()
            .any(|o| o.active && o.caller_idx == caller_idx)
    }

    /// A deletion waits for the last release: asked explicitly, or the caller objects.
    fn is_pending(&self, recording_idx: usize) -> bool {
        let recording = &self.recordings[recording_idx];
        recording.deletion_asked || self.is_objected(recording.caller_idx)
    }

    fn is_expired(&self, recording_idx: usize) -> bool {
        self.recordings[recording_idx].retain_until <= self.now
    }

    fn matches(selector: &ModelSelector, recording_idx: usize, recording: &ModelRecording) -> bool {
        match selector {
            ModelSelector::Account(a) => recording.account_idx == *a,
            ModelSelector::Caller(c) => recording.caller_idx == *c,
            ModelSelector::Range { from, to } => {
                *from <= recording.started_at && recording.started_at <= *to
            }
            ModelSelector::Recording(r) => *r == recording_idx,
        }
    }

    /// `None` when the call must be discarded (its caller objects).
    fn ingest(
        &mut self,
        caller_idx: usize,
        account_idx: usize,
        started_at: jiff::Timestamp,
    ) -> Option<usize> {
        if self.is_objected(caller_idx) {
            return None;
        }
        let recording = ModelRecording {
            caller_idx,
            account_idx,
            started_at,
            retain_until: RETENTION.after(started_at),
            deletion_asked: false,
            exists: true,
        };
        let recording_idx = self.recordings.len();
        for hold in &mut self.holds {
            let by_selector = !matches!(hold.selector, ModelSelector::Recording(_));
            if hold.active
                && hold.include_future
                && by_selector
                && Model::matches(&hold.selector, recording_idx, &recording)
            {
                hold.covered.insert(recording_idx);
            }
        }
        self.recordings.push(recording);
        Some(recording_idx)
    }

    /// Returns the number of recordings covered now.
    fn place_hold(&mut self, selector: ModelSelector, include_future: bool) -> u64 {
        let covered: BTreeSet<usize> = self
            .existing()
            .into_iter()
            .filter(|r| Model::matches(&selector, *r, &self.recordings[*r]))
            .collect();
        let n_covered = covered.len() as u64;
        self.holds.push(ModelHold {
            selector,
            include_future,
            active: true,
            covered,
        });
        n_covered
    }

    /// Returns the recordings deleted at once, or `None` if the hold was not active.
    fn release_hold(&mut self, hold_idx: usize) -> Option<BTreeSet<usize>> {
        if !self.holds[hold_idx].active {
            return None;
        }
        self.holds[hold_idx].active = false;
        let covered = std::mem::take(&mut self.holds[hold_idx].covered);
        let mut deleted = BTreeSet::new();
        for r in covered {
            if self.recordings[r].exists && !self.is_held(r) && self.is_pending(r) {
                self.recordings[r].exists = false;
                deleted.insert(r);
            }
        }
        Some(deleted)
    }

    /// Returns (deleted, deferred).
    fn object(&mut self, caller_idx: usize) -> (u64, u64) {
        self.objections.push(ModelObjection {
            caller_idx,
            active: true,
        });
        let (mut n_deleted, mut n_deferred) = (0, 0);
        for r in self.existing() {
            if self.recordings[r].caller_idx != caller_idx {
                continue;
            }
            match self.is_held(r) {
                true => n_deferred += 1,
                false => {
                    self.recordings[r].exists = false;
                    n_deleted += 1;
                }
            }
        }
        (n_deleted, n_deferred)
    }

    fn withdraw(&mut self, objection_idx: usize) -> bool {
        let objection = &mut self.objections[objection_idx];
        let was_active = objection.active;
        objection.active = false;
        was_active
    }

    /// An erasure or a call objection on one recording.
    fn delete_or_defer(&mut self, recording_idx: usize) -> Deletion {
        if !self.recordings[recording_idx].exists {
            return Deletion::Absent;
        }
        if self.is_held(recording_idx) {
            self.recordings[recording_idx].deletion_asked = true;
            return Deletion::Deferred;
        }
        self.recordings[recording_idx].exists = false;
        Deletion::Deleted
    }

    fn purge(&mut self) -> BTreeSet<usize> {
        let mut deleted = BTreeSet::new();
        for r in self.existing() {
            if !self.is_held(r) && (self.is_expired(r) || self.is_pending(r)) {
                self.recordings[r].exists = false;
                deleted.insert(r);
            }
        }
        deleted
    }
}

/// A stored recording, as the real side knows it.
#[derive(Debug, Clone)]
struct RealRecording {
    id: BlobId,
    call_id: String,
    wrapped_key: Vec<u8>,
    sealed_meta: Vec<u8>,
}

/// The real engine in a temp dir.
struct Real {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    clock: Arc<ManualClock>,
    catalog: Catalog,
    vault: Vault,
    keyring: Arc<Keyring>,
    pipeline: Pipeline,
    retention: RetentionConfig,
    recordings: Vec<RealRecording>,
    hold_ids: Vec<String>,
    objection_ids: Vec<String>,
    n_calls: u64,
}

impl Real {
    fn start(now: jiff::Timestamp) -> Real {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let vault = Vault::open(&dir.path().join("vault")).unwrap();
        let master = MasterKey::generate().unwrap();
        let keyring = Arc::new(Keyring::open(&master, &catalog).unwrap());
        let clock = Arc::new(ManualClock::new(now));
        let pipeline = Pipeline {
            catalog: catalog.clone(),
            vault: vault.clone(),
            keyring: keyring.clone(),
            clock: clock.clone(),
            metrics: Metrics::new(),
            retention: RETENTION,
            max_bytes: 1 << 20,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Real {
            dir,
            runtime,
            clock,
            catalog,
            vault,
            keyring,
            pipeline,
            retention: RetentionConfig {
                recordings: RETENTION,
                quarantine: Period::Fixed(Duration::from_secs(30 * DAY as u64)),
                purge_interval: Duration::from_secs(300),
                audit: Period::Months(120),
            },
            recordings: Vec::new(),
            hold_ids: Vec::new(),
            objection_ids: Vec::new(),
            n_calls: 0,
        }
    }

    fn objections(&self) -> Objections<'_> {
        Objections {
            catalog: &self.catalog,
            vault: &self.vault,
            keyring: &self.keyring,
        }
    }

    /// Runs the objection gate and, if admitted, the ingest of a tiny WAV. `None` if discarded.
    fn ingest(
        &mut self,
        caller_idx: usize,
        account_idx: usize,
        started_at: jiff::Timestamp,
    ) -> Option<usize> {
        self.n_calls += 1;
        let call_id = format!("call-{}", self.n_calls);
        let meta = CallMetadata {
            call_id: call_id.clone(),
            started_at,
            direction: Direction::Inbound,
            caller: Some(PhoneNumber::parse(CALLERS[caller_idx]).unwrap()),
            callee: None,
            account: Some(ACCOUNTS[account_idx].to_owned()),
            operator: None,
            alarm_case: None,
        };
        let sender = Sender {
            actor: "recorder-1".into(),
            role: "recorder".into(),
        };
        let pipeline = self.pipeline.clone();
        let admission = self
            .runtime
            .block_on(pipeline.admit(&meta, &sender))
            .unwrap();
        let admitted = match admission {
            Admission::Admit(admitted) => admitted,
            Admission::Discard(_) => return None,
        };
        let audio = [Ok::<Bytes, Infallible>(Bytes::from(tiny_wav(self.n_calls)))];
        let stored = self
            .runtime
            .block_on(pipeline.ingest(
                admitted,
                FormatHint::from_file_name("call.wav"),
                futures_util::stream::iter(audio),
                &sender,
            ))
            .unwrap();
        let Lookup::Found(row) = self.catalog.recording(&stored.id).unwrap() else {
            panic!("recording {} acknowledged but not found", stored.id);
        };
        self.recordings.push(RealRecording {
            id: stored.id,
            call_id,
            wrapped_key: row.wrapped_key,
            sealed_meta: row.sealed_meta,
        });
        Some(self.recordings.len() - 1)
    }

    fn place_hold(&mut self, selector: &HoldSelector, include_future: bool) -> u64 {
        let hold_id = format!("hold_{:04}", self.hold_ids.len());
        let audit = |n: u64, _: usize| {
            AuditDraft::new("legal-1", "legal", "hold.place", &hold_id, Outcome::Allowed)
                .detail(format!("{n} recordings"))
        };
        let now = self.clock.now();
        let placement = self
            .catalog
            .hold_place(
                &hold_id,
                "case-1",
                "litigation",
                selector,
                include_future,
                "legal-1",
                &audit,
                now,
            )
            .unwrap();
        self.hold_ids.push(hold_id);
        match placement {
            HoldPlacement::Placed { covered, .. } => covered,
            HoldPlacement::UnknownRecording(id) => panic!("the model held an unknown id {id}"),
        }
    }

    /// As `POST /v1/holds/{id}/release` does: release, then unlink what it deleted.
    fn release_hold(&self, hold_idx: usize) -> Option<BTreeSet<BlobId>> {
        let hold_id = &self.hold_ids[hold_idx];
        let now = self.clock.now();
        let audit = AuditDraft::new(
            "legal-1",
            "legal",
            "hold.release",
            hold_id,
            Outcome::Allowed,
        );
        let deletion = |recording: &BlobId, why: &str| {
            AuditDraft::new(
                "legal-1",
                "legal",
                "recording.delete",
                &recording.to_string(),
                Outcome::Allowed,
            )
            .detail(why.to_owned())
        };
        let deleted = self
            .catalog
            .hold_release(
                hold_id,
                "appeals exhausted",
                "legal-1",
                audit,
                &deletion,
                now,
            )
            .unwrap()?;
        let deleted: Vec<BlobId> = deleted.into_iter().map(|(id, _)| id).collect();
        unlink_and_checkpoint(&self.catalog, &self.vault, &deleted).unwrap();
        Some(deleted.into_iter().collect())
    }

    /// As `DELETE /v1/recordings/{id}` does.
    fn erase(&self, recording_idx: usize) -> Deletion {
        let id = self.recordings[recording_idx].id;
        let draft = AuditDraft::new(
            "dpo-1",
            "dpo",
            "recording.delete",
            &id.to_string(),
            Outcome::Allowed,
        )
        .detail("erasure: subject request");
        let outcome = self
            .catalog
            .delete_recording(&id, "erasure", draft, self.clock.now())
            .unwrap();
        if outcome == Deletion::Deleted {
            unlink_and_checkpoint(&self.catalog, &self.vault, &[id]).unwrap();
        }
        outcome
    }

    fn index_of(&self, id: &BlobId) -> usize {
        self.recordings
            .iter()
            .position(|r| r.id == *id)
            .unwrap_or(usize::MAX)
    }

    fn indices_of(&self, ids: impl IntoIterator<Item = BlobId>) -> BTreeSet<usize> {
        ids.into_iter().map(|id| self.index_of(&id)).collect()
    }

    /// Blob files in the vault, and temporary files left beside them.
    fn files(&self) -> (BTreeSet<BlobId>, Vec<String>) {
        let mut blobs = BTreeSet::new();
        let mut temp = Vec::new();
        for shard in std::fs::read_dir(self.vault.dir()).unwrap() {
            let shard = shard.unwrap();
            let name = shard.file_name().to_string_lossy().into_owned();
            if name == "quarantine" {
                continue;
            }
            for file in std::fs::read_dir(shard.path()).unwrap() {
                let file = file.unwrap().file_name();
                if crate::vault::is_temporary(&file) {
                    temp.push(format!("{name}/{}", file.to_string_lossy()));
                    continue;
                }
                let file = file.to_string_lossy().into_owned();
                match file.strip_suffix(".cgv").and_then(BlobId::parse) {
                    Some(id) => blobs.insert(id),
                    None => panic!("unexpected file {name}/{file} in the vault"),
                };
            }
        }
        (blobs, temp)
    }

    /// The catalog's files as they are on disk (database, WAL).
    fn catalog_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for name in ["catalog.sqlite", "catalog.sqlite-wal"] {
            if let Ok(content) = std::fs::read(self.dir.path().join(name)) {
                bytes.extend(content);
            }
        }
        bytes
    }
}

/// A 20 ms 8 kHz 16-bit mono WAV whose samples depend on `seed`.
fn tiny_wav(seed: u64) -> Vec<u8> {
    let n_samples: u32 = 160;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + n_samples * 2).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(n_samples * 2).to_le_bytes());
    for i in 0..u64::from(n_samples) {
        let value = ((i.wrapping_mul(seed * 37 + 11)) % 20_000) as i16 - 10_000;
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

fn plus_secs(at: jiff::Timestamp, secs: i64) -> jiff::Timestamp {
    at.checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap()
}

/// Applies `op` to both sides; checks that their answers agree. Returns whether it was a purge.
fn apply(model: &mut Model, real: &mut Real, op: &Op) -> Result<bool, TestCaseError> {
    let now = model.now;
    match op {
        Op::AdvanceDays(days) => {
            real.clock
                .advance(Duration::from_secs(u64::from(*days) * DAY as u64));
        }
        Op::AdvanceToExpiry {
            recording,
            offset_secs,
        } => {
            if !model.recordings.is_empty() {
                let r = recording % model.recordings.len();
                let target = plus_secs(model.recordings[r].retain_until, *offset_secs);
                if target > now {
                    real.clock.set(target);
                }
            }
        }
        Op::AdvanceYears(years) => {
            let later = now
                .to_zoned(jiff::tz::TimeZone::UTC)
                .checked_add(jiff::Span::new().years(i64::from(*years)))
                .unwrap();
            real.clock.set(later.timestamp());
        }
        Op::Erase { recording } => {
            if !model.recordings.is_empty() {
                let r = recording % model.recordings.len();
                let expected = model.delete_or_defer(r);
                prop_assert_eq!(real.erase(r), expected, "erasure of recording {}", r);
            }
        }
        Op::Ingest {
            caller_idx,
            account_idx,
            started_days,
            started_secs,
        } => {
            let started_at = plus_secs(now, started_days * DAY + started_secs);
            let expected = model.ingest(*caller_idx, *account_idx, started_at);
            let n_rows_before = real.catalog.recording_states().unwrap().len();
            let got = real.ingest(*caller_idx, *account_idx, started_at);
            prop_assert_eq!(got, expected, "ingest admitted or discarded");
            if let Some(r) = got {
                // The guarantee 2 probe below must see a live key, or its silence means nothing.
                prop_assert!(
                    contains(&real.catalog_bytes(), &real.recordings[r].wrapped_key),
                    "the wrapped key of a stored recording is not found in the catalog files"
                );
            }
            if got.is_none() {
                // Guarantee 5: a discarded call leaves nothing, not even a row or a temp file.
                let call_id = format!("call-{}", real.n_calls);
                let call_hmac = real.keyring.digest(CALL_ID_DOMAIN, &call_id);
                prop_assert!(
                    real.catalog
                        .recording_by_call(&call_hmac)
                        .unwrap()
                        .is_none(),
                    "guarantee 5: a discarded call has a row"
                );
                prop_assert_eq!(
                    real.catalog.recording_states().unwrap().len(),
                    n_rows_before,
                    "guarantee 5: a discarded call added a row"
                );
            }
        }
        Op::Object { caller_idx } => {
            let expected = model.object(*caller_idx);
            let number = PhoneNumber::parse(CALLERS[*caller_idx]).unwrap();
            let registered = real
                .objections()
                .register(&number, Source::Letter, "ref-1", "dpo-1", "dpo", now)
                .unwrap();
            real.objection_ids.push(registered.id);
            prop_assert_eq!(
                (
                    registered.recordings_deleted,
                    registered.recordings_deferred
                ),
                expected,
                "objection for caller {}: (deleted, deferred)",
                caller_idx
            );
        }
        Op::ObjectToCall { recording } => {
            if !model.recordings.is_empty() {
                let r = recording % model.recordings.len();
                // A call whose recording was deleted before is reported deleted (its
                // tombstone keeps the call id's digest).
                let expected = match model.recordings[r].exists {
                    true => model.delete_or_defer(r),
                    false => Deletion::Deleted,
                };
                let call_id = real.recordings[r].call_id.clone();
                let got = real
                    .objections()
                    .register_call(&call_id, "operator-1", "operator", now)
                    .unwrap();
                prop_assert_eq!(got, expected, "call objection on recording {}", r);
            }
        }
        Op::PlaceHold {
            pick,
            include_future,
        } => {
            let (model_selector, selector) = match pick {
                Pick::Account(a) => (
                    ModelSelector::Account(*a),
                    HoldSelector::Account(crate::ingest::account_digest(
                        &real.keyring,
                        ACCOUNTS[*a],
                    )),
                ),
                Pick::Caller(c) => (
                    ModelSelector::Caller(*c),
                    HoldSelector::Caller(real.keyring.digest(CALLER_DOMAIN, CALLERS[*c])),
                ),
                Pick::Range { from_days, n_days } => {
                    let from = plus_secs(now, from_days * DAY);
                    let to = plus_secs(from, n_days * DAY);
                    (
                        ModelSelector::Range { from, to },
                        HoldSelector::Range { from, to },
                    )
                }
                Pick::Recording(index) => {
                    let existing: Vec<usize> = model.existing().into_iter().collect();
                    let r = match (existing.is_empty(), model.recordings.is_empty()) {
                        (false, _) => existing[index % existing.len()],
                        (true, false) => index % model.recordings.len(),
                        (true, true) => return Ok(false),
                    };
                    (
                        ModelSelector::Recording(r),
                        HoldSelector::Ids(vec![real.recordings[r].id]),
                    )
                }
            };
            let expected = model.place_hold(model_selector, *include_future);
            let got = real.place_hold(&selector, *include_future);
            prop_assert_eq!(got, expected, "recordings covered by the new hold");
        }
        Op::Purge => {
            let expected = model.purge();
            let report = run_once(
                &real.catalog,
                &real.vault,
                &real.retention,
                "system",
                now,
                false,
            )
            .unwrap();
            let got = real.indices_of(report.deleted.iter().map(|(id, _)| *id));
            prop_assert_eq!(got, expected, "recordings deleted by the purge");
            return Ok(true);
        }
        Op::ReleaseHold { hold } => {
            if !model.holds.is_empty() {
                let h = hold % model.holds.len();
                let expected = model.release_hold(h);
                let got = real.release_hold(h).map(|ids| real.indices_of(ids));
                prop_assert_eq!(
                    got,
                    expected,
                    "recordings deleted by the release of hold {}",
                    h
                );
            }
        }
        Op::Withdraw { objection } => {
            if !model.objections.is_empty() {
                let o = objection % model.objections.len();
                let expected = model.withdraw(o);
                let got = real
                    .objections()
                    .withdraw(&real.objection_ids[o], "dpo-1", "dpo", now)
                    .unwrap();
                prop_assert_eq!(got, expected, "withdrawal of objection {}", o);
            }
        }
    }
    model.now = real.clock.now();
    Ok(false)
}

/// The guarantees, on the real files, and the agreement with the model.
fn check_guarantees(
    model: &Model,
    real: &Real,
    deleted_now: &BTreeSet<usize>,
    after_purge: bool,
) -> Result<(), TestCaseError> {
    let now = model.now;
    let expected: BTreeSet<BlobId> = model
        .existing()
        .into_iter()
        .map(|r| real.recordings[r].id)
        .collect();
    let rows: BTreeSet<BlobId> = real
        .catalog
        .recording_states()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let (blobs, temp_files) = real.files();
    prop_assert_eq!(&rows, &expected, "rows in the catalog versus the model");
    prop_assert_eq!(&blobs, &expected, "blob files versus the model");
    prop_assert!(
        temp_files.is_empty(),
        "temporary files left in the vault: {:?}",
        temp_files
    );
    let n_active = model.holds.iter().filter(|h| h.active).count() as u64;
    prop_assert_eq!(
        real.catalog.holds_active().unwrap(),
        n_active,
        "active holds"
    );

    for r in model.existing() {
        let id = real.recordings[r].id;
        let Lookup::Found(row) = real.catalog.recording(&id).unwrap() else {
            return Err(TestCaseError::fail(format!("recording {r} has no row")));
        };
        let holds: BTreeSet<usize> = real
            .catalog
            .holds_of(&id)
            .unwrap()
            .iter()
            .map(|hold_id| real.hold_ids.iter().position(|h| h == hold_id).unwrap())
            .collect();
        let recording = &model.recordings[r];
        let (expired, held) = (model.is_expired(r), !holds.is_empty());
        let pending = row.pending_deletion.is_some();
        prop_assert_eq!(
            row.retain_until,
            recording.retain_until,
            "retain_until of {}",
            r
        );
        prop_assert_eq!(&holds, &model.holds_of(r), "holds covering recording {}", r);
        prop_assert_eq!(
            pending,
            model.is_pending(r),
            "deletion pending on recording {}",
            r
        );

        // Guarantee 3: never served after retain_until unless held, and gone after a purge.
        let supervisor = may_read(
            row.retain_until,
            pending,
            holds.len(),
            Role::Supervisor,
            now,
        );
        let legal = may_read(row.retain_until, pending, holds.len(), Role::Legal, now);
        if expired && !held {
            prop_assert!(
                supervisor.is_err() && legal.is_err(),
                "guarantee 3: recording {} expired, not held, yet readable",
                r
            );
            prop_assert!(
                !after_purge,
                "guarantee 3: recording {} expired, not held, survived the purge",
                r
            );
        }
        prop_assert_eq!(
            supervisor.is_ok(),
            !expired && !pending,
            "supervisor read of {}",
            r
        );
        prop_assert_eq!(
            legal.is_ok(),
            (!expired && !pending) || held,
            "legal read of {}",
            r
        );

        // Guarantee 5: an objected caller's recordings exist only held, awaiting deletion.
        if model.is_objected(recording.caller_idx) {
            prop_assert!(
                held && pending,
                "guarantee 5: recording {} of an objecting caller exists (held {}, pending {})",
                r,
                held,
                pending
            );
        }
    }

    // Guarantee 4: whatever happened, everything an active hold covers is still there.
    for (h, hold) in model.holds.iter().enumerate().filter(|(_, h)| h.active) {
        for r in &hold.covered {
            let id = real.recordings[*r].id;
            prop_assert!(
                rows.contains(&id) && blobs.contains(&id),
                "guarantee 4: recording {} covered by hold {} is gone",
                r,
                h
            );
        }
        let (_, covered) = real.catalog.hold_get(&real.hold_ids[h]).unwrap().unwrap();
        for id in covered {
            prop_assert!(
                rows.contains(&id) && real.vault.blob_path(&id).exists(),
                "guarantee 4: recording {} covered by hold {} (catalog side) is gone",
                id,
                h
            );
        }
    }

    // Guarantee 2: a deleted recording leaves a tombstone, no row, no key, no blob.
    let on_disk = match deleted_now.is_empty() {
        true => Vec::new(),
        false => real.catalog_bytes(),
    };
    for (r, recording) in real.recordings.iter().enumerate() {
        if model.recordings[r].exists {
            continue;
        }
        let lookup = real.catalog.recording(&recording.id).unwrap();
        prop_assert!(
            matches!(lookup, Lookup::Deleted(_)),
            "guarantee 2: deleted recording {} is {:?}",
            r,
            lookup
        );
        prop_assert!(
            !real.vault.blob_path(&recording.id).exists(),
            "guarantee 2: deleted recording {} left its blob",
            r
        );
        if deleted_now.contains(&r) {
            prop_assert!(
                !contains(&on_disk, &recording.wrapped_key),
                "guarantee 2: the wrapped key of deleted recording {} is still in the catalog files",
                r
            );
            prop_assert!(
                !contains(&on_disk, &recording.sealed_meta),
                "guarantee 2: the sealed metadata of deleted recording {} is still in the catalog files",
                r
            );
        }
    }
    Ok(())
}

/// The message of a failed check. In every comparison `left` is the engine, `right` the model.
fn reason(error: TestCaseError) -> String {
    match error {
        TestCaseError::Fail(reason) | TestCaseError::Reject(reason) => reason.message().to_owned(),
    }
}

/// Runs `ops` from `start` on both sides, checking everything after every step.
fn run(start: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let start: jiff::Timestamp = start.parse().unwrap();
    let mut real = Real::start(start);
    let mut model = Model {
        now: start,
        recordings: Vec::new(),
        holds: Vec::new(),
        objections: Vec::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        let before = model.existing();
        let after_purge = apply(&mut model, &mut real, op)
            .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {}", reason(e))))?;
        let deleted_now = before.difference(&model.existing()).copied().collect();
        check_guarantees(&model, &real, &deleted_now, after_purge)
            .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {}", reason(e))))?;
    }
    Ok(())
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        (0..ACCOUNTS.len()).prop_map(Pick::Account),
        (0..CALLERS.len()).prop_map(Pick::Caller),
        (-400i64..=5, 1i64..=200).prop_map(|(from_days, n_days)| Pick::Range { from_days, n_days }),
        (0usize..64).prop_map(Pick::Recording),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u32..40).prop_map(Op::AdvanceDays),
        1 => (0u32..800).prop_map(Op::AdvanceDays),
        1 => (0usize..64, -1i64..=1)
            .prop_map(|(recording, offset_secs)| Op::AdvanceToExpiry { recording, offset_secs }),
        1 => (1u8..=2).prop_map(Op::AdvanceYears),
        2 => (0usize..64).prop_map(|recording| Op::Erase { recording }),
        // Up to a day ahead of the clock at most: the gate refuses calls further in the future.
        7 => (0..CALLERS.len(), 0..ACCOUNTS.len(), -400i64..=0, 0..DAY).prop_map(
            |(caller_idx, account_idx, started_days, started_secs)| Op::Ingest {
                caller_idx,
                account_idx,
                started_days,
                started_secs,
            }
        ),
        2 => (0..CALLERS.len()).prop_map(|caller_idx| Op::Object { caller_idx }),
        1 => (0usize..64).prop_map(|recording| Op::ObjectToCall { recording }),
        3 => (pick(), any::<bool>())
            .prop_map(|(pick, include_future)| Op::PlaceHold { pick, include_future }),
        3 => Just(Op::Purge),
        2 => (0usize..64).prop_map(|hold| Op::ReleaseHold { hold }),
        2 => (0usize..64).prop_map(|objection| Op::Withdraw { objection }),
    ]
}

/// 48 cases keep `cargo test` fast on two cores; `PROPTEST_CASES` asks for more.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        // Failures are pinned as named tests below, not in a file next to the sources.
        failure_persistence: None,
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_engine_keeps_guarantees_2_to_5_and_agrees_with_the_model(
        start_idx in 0..STARTS.len(),
        ops in prop::collection::vec(op(), 1..=40),
    ) {
        run(STARTS[start_idx], &ops)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(start: &str, ops: &[Op]) {
        if let Err(error) = run(start, ops) {
            panic!("{}", reason(error));
        }
    }

    fn ingest(caller_idx: usize, started_days: i64) -> Op {
        Op::Ingest {
            caller_idx,
            account_idx: 0,
            started_days,
            started_secs: 0,
        }
    }

    #[test]
    fn a_recording_expires_at_the_clamped_month_end_to_the_second() {
        // 31 Aug 23:59:59 + 6 months = 28 Feb 23:59:59: served one second before, purged at it.
        let at_expiry = |offset_secs| Op::AdvanceToExpiry {
            recording: 0,
            offset_secs,
        };
        check(
            "2026-08-31T23:59:59Z",
            &[
                ingest(0, 0),
                at_expiry(-1),
                Op::Purge,
                at_expiry(0),
                Op::Purge,
            ],
        );
    }

    #[test]
    fn a_hold_outlives_retention_and_the_release_hands_it_back_to_the_purge() {
        check(
            "2026-01-31T10:00:00Z",
            &[
                ingest(0, -10),
                Op::PlaceHold {
                    pick: Pick::Caller(0),
                    include_future: true,
                },
                ingest(0, 0),
                Op::AdvanceYears(2),
                Op::Purge,
                Op::ReleaseHold { hold: 0 },
                Op::Purge,
            ],
        );
    }

    #[test]
    fn an_objection_defers_on_held_recordings_and_discards_new_calls() {
        check(
            "2028-02-29T12:00:00Z",
            &[
                ingest(1, -3),
                ingest(1, -2),
                Op::PlaceHold {
                    pick: Pick::Recording(0),
                    include_future: false,
                },
                Op::Object { caller_idx: 1 },
                ingest(1, 0),
                Op::ReleaseHold { hold: 0 },
            ],
        );
    }

    /// Engine bug, found by the property above; these assert SPEC §7 and fail until it is
    /// fixed. `recordings.pending_deletion` holds one reason: `delete_or_defer_in` keeps the
    /// first, and `objection_withdraw` clears it when that reason is `objection`, so a deferred
    /// erasure (or call objection) asked after the objection is silently dropped and the
    /// recording survives the release of its last hold.
    // See: the report of `retention::model` (no issue number yet).
    #[test]
    fn a_deferred_erasure_survives_the_withdrawal_of_an_earlier_objection() {
        check(
            "2026-01-31T10:00:00Z",
            &[
                ingest(1, 0),
                Op::PlaceHold {
                    pick: Pick::Recording(0),
                    include_future: false,
                },
                Op::Object { caller_idx: 1 },
                Op::Erase { recording: 0 },
                Op::Withdraw { objection: 0 },
                Op::ReleaseHold { hold: 0 },
            ],
        );
    }

    // See: the report of `retention::model` (no issue number yet).
    #[test]
    fn a_deferred_call_objection_survives_the_withdrawal_of_an_earlier_objection() {
        check(
            "2026-01-31T10:00:00Z",
            &[
                ingest(1, 0),
                Op::PlaceHold {
                    pick: Pick::Recording(0),
                    include_future: false,
                },
                Op::Object { caller_idx: 1 },
                Op::ObjectToCall { recording: 0 },
                Op::Withdraw { objection: 0 },
                Op::ReleaseHold { hold: 0 },
            ],
        );
    }

    fn check_after(start: &str, months: u32, expected: &str) {
        let start: jiff::Timestamp = start.parse().unwrap();
        let expected: jiff::Timestamp = expected.parse().unwrap();
        assert_eq!(
            Period::Months(months).after(start),
            expected,
            "{start} + {months} months"
        );
    }

    /// The cases of `config::units` (31 Jan + 1, 29 Feb + 12, 31 Aug + 6, 31 Dec + 6) plus
    /// those it does not pin: a 31st kept across the year end, a clamp onto a leap day, and
    /// the last second of a year.
    #[test]
    fn calendar_months_at_the_edges() {
        check_after("2026-01-31T10:00:00Z", 1, "2026-02-28T10:00:00Z");
        check_after("2028-02-29T12:00:00Z", 12, "2029-02-28T12:00:00Z");
        check_after("2026-08-31T23:59:59Z", 6, "2027-02-28T23:59:59Z");
        check_after("2026-07-31T08:00:00Z", 6, "2027-01-31T08:00:00Z");
        check_after("2027-08-31T08:00:00Z", 6, "2028-02-29T08:00:00Z");
        check_after("2028-02-29T00:00:00Z", 6, "2028-08-29T00:00:00Z");
        check_after("2026-12-31T23:59:59Z", 6, "2027-06-30T23:59:59Z");
        check_after("2026-12-31T23:59:59Z", 1, "2027-01-31T23:59:59Z");
        check_after("2027-06-30T00:00:00Z", 6, "2027-12-30T00:00:00Z");
    }
}
