//! The crash campaign of issue 6: SPEC §4 guarantees 2, 3, 4, 5 and 7 under `kill -9`. Each
//! round kills the real server (and a running `callguard purge`) at a random instant while
//! uploads (whole and streamed), spool files, purges, hold placements and objections are in
//! flight, restarts it on the same data directory and checks what survived against what the
//! clients saw acknowledged. The plan of every round comes from one seed: `CRASH_SEED` replays
//! it, `CRASH_ROUNDS` sets the number of rounds (100). docs/crash-campaign.md explains each
//! check; every failure names the round, the seed, the guarantee and the object.
//!
//! No verdict depends on timing: the kill instant decides *which* outcomes happen, and every
//! outcome has one right answer. Causal order comes from a logical clock ticked before each
//! request is sent and after its answer arrives ("sent after the hold's 201"); holds and
//! objections whose answer was lost are looked up after the restart, so what exists is known
//! exactly before anything is judged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ingest_http::{
    CALLEE, CALLEE_FORMS, PATIENCE, plaintext_window, query_escape, secrets_on_disk, sha256_hex,
    started_at, temp_files, tone_wav,
};
use crate::support::client::{Client, Response};
use crate::support::{Instance, Setup, binary, files_under, recording_blob_files};

const DEFAULT_ROUNDS: u64 = 100;

/// The purge worker runs at every start and then every second.
const CONFIG: &str = "[retention]\npurge_interval = \"1s\"\n";

/// Callers who never object (national format).
const REGULAR_CALLERS: [&str; 4] = ["0611223344", "0622334455", "0633445566", "0644556677"];
const REGULAR_ACCOUNT: &str = "CGACC-regular";
/// Every call id starts with `CALL_MARK` and every account with `ACCOUNT_MARK`: one needle
/// each for the plaintext scan.
const CALL_MARK: &str = "CGCAMP";
const ACCOUNT_MARK: &str = "CGACC";
const CALLEE_NATIONAL: &str = "0145678900";

// ---------------------------------------------------------------------------------------------
// Seeded randomness.

/// SplitMix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.range(0, 99) < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// The generator of round `round`: independent of what earlier rounds drew.
fn round_rng(seed: u64, round: u64, stream: u64) -> Rng {
    let mut mix = Rng::new(seed ^ round.wrapping_mul(0xA24B_AED4_963E_E407) ^ stream);
    Rng::new(mix.next())
}

struct Settings {
    seed: u64,
    rounds: u64,
}

fn settings() -> Settings {
    let seed = match std::env::var("CRASH_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CRASH_SEED `{text}` is not a number"))
        }
        Err(_) => std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    };
    let rounds = match std::env::var("CRASH_ROUNDS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CRASH_ROUNDS `{text}` is not a number")),
        Err(_) => DEFAULT_ROUNDS,
    };
    Settings { seed, rounds }
}

// ---------------------------------------------------------------------------------------------
// Parties and calls.

/// The caller who may object in round `round` (national format): `0752718…`, whatever the
/// round (below 14 000 rounds), so that one needle per written form finds any of them.
fn objector(round: u64) -> String {
    format!("07{:08}", 52_718_000 + round % 14_000 * 7)
}

/// Plaintext needles that find any objector's number, in any written form.
const OBJECTOR_NEEDLES: [&str; 3] = ["0752718", "3375271", "07 52 71 8"];

fn e164(national: &str) -> String {
    format!("+33{}", &national[1..])
}

/// `0612345678` → `06 12 34 56 78`.
fn spaced(national: &str) -> String {
    let pairs: Vec<&str> = national
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect();
    pairs.join(" ")
}

/// The ways a recorder or the DPO may write a number.
fn written_forms(national: &str) -> [String; 3] {
    [national.to_owned(), e164(national), spaced(national)]
}

/// Plaintext needles for a number (`33…` also covers `+33…`).
fn number_needles(national: &str) -> Vec<(String, Vec<u8>)> {
    [
        national.to_owned(),
        format!("33{}", &national[1..]),
        spaced(national),
    ]
    .into_iter()
    .map(|form| (format!("number {form:?}"), form.into_bytes()))
    .collect()
}

/// What a call is, for the expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A regular caller, an hour ago: kept.
    Fresh,
    /// A regular caller, in 2025: expired on arrival, never served unless held.
    Expired,
    /// Expired, on the account the round's hold covers (with `include_future`).
    HeldAccount,
    /// The round's objector, an hour ago.
    Objector,
    /// The round's objector, expired, on the held account: the hold wins over both.
    ObjectorHeld,
}

/// One recording the campaign sends, by upload or through the spool.
#[derive(Debug, Clone)]
struct Call {
    call_id: String,
    kind: Kind,
    /// National format.
    caller: String,
    caller_as_written: String,
    account: String,
    started_at: String,
    audio: Arc<Vec<u8>>,
}

impl Call {
    fn expired(&self) -> bool {
        matches!(
            self.kind,
            Kind::Expired | Kind::HeldAccount | Kind::ObjectorHeld
        )
    }

    fn metadata(&self) -> Value {
        json!({
            "call_id": self.call_id,
            "started_at": self.started_at,
            "direction": "inbound",
            "caller": self.caller_as_written,
            "callee": CALLEE,
            "account": self.account,
            "operator": "op-7",
            "alarm_case": null,
        })
    }
}

fn held_account(round: u64) -> String {
    format!("{ACCOUNT_MARK}-held-{round}")
}

/// A distinct tone for the `n`th recording of the campaign, 0.25 to 0.75 s at 8 kHz.
fn tone(n: u64, rng: &mut Rng) -> Arc<Vec<u8>> {
    let freq = 110.0 + (n % 2000) as f64 * 1.7 + rng.range(0, 99) as f64 / 100.0;
    let seconds = rng.range(25, 75) as f64 / 100.0;
    Arc::new(tone_wav(freq, seconds))
}

fn draw_call(round: u64, call_id: String, kind: Kind, rng: &mut Rng, n_audio: &mut u64) -> Call {
    let caller = match kind {
        Kind::Objector | Kind::ObjectorHeld => objector(round),
        Kind::Fresh | Kind::Expired | Kind::HeldAccount => {
            REGULAR_CALLERS[rng.range(0, 3) as usize].to_owned()
        }
    };
    let forms = written_forms(&caller);
    let caller_as_written = forms[rng.range(0, 2) as usize].clone();
    let account = match kind {
        Kind::HeldAccount | Kind::ObjectorHeld => held_account(round),
        Kind::Fresh | Kind::Expired | Kind::Objector => REGULAR_ACCOUNT.to_owned(),
    };
    let started_at = match kind {
        Kind::Fresh | Kind::Objector => started_at(),
        // Expired at ingest, for ever (retention is six months).
        Kind::Expired | Kind::HeldAccount | Kind::ObjectorHeld => format!(
            "2025-{:02}-{:02}T{:02}:{:02}:00Z",
            rng.range(1, 12),
            rng.range(1, 28),
            rng.range(0, 23),
            rng.range(0, 59)
        ),
    };
    *n_audio += 1;
    Call {
        call_id,
        kind,
        caller,
        caller_as_written,
        account,
        started_at,
        audio: tone(*n_audio, rng),
    }
}

// ---------------------------------------------------------------------------------------------
// The plan of a round: everything random, drawn before anything runs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpoolKind {
    /// `NAME.wav` then its sidecar `NAME.json`.
    Sidecar,
    /// A FreePBX/Asterisk-named file.
    FreePbx,
    /// A FreePBX-named file that is not audio: quarantine.
    Garbage,
}

struct UploadPlan {
    call: Call,
    /// Pause before this upload (the recorder's pace).
    gap: Duration,
}

struct StreamPlan {
    call: Call,
    /// How long the second half of the audio takes to arrive.
    trickle: Duration,
}

struct SpoolPlan {
    call: Call,
    kind: SpoolKind,
    gap: Duration,
    /// Written under a `.part` name, then renamed.
    via_part: bool,
    garbage: Arc<Vec<u8>>,
}

struct ObjectionPlan {
    at: Duration,
    role: &'static str,
    caller_as_written: String,
    source: &'static str,
}

struct Plan {
    kill_after: Duration,
    uploads: Vec<UploadPlan>,
    streams: Vec<StreamPlan>,
    spool: Vec<SpoolPlan>,
    hold_account_at: Option<Duration>,
    hold_ids_at: Option<Duration>,
    objection: Option<ObjectionPlan>,
    /// Pause between `callguard purge` runs, if the round runs them.
    purge_gap: Option<Duration>,
}

fn draw_kind(rng: &mut Rng) -> Kind {
    match rng.range(0, 99) {
        0..=34 => Kind::Fresh,
        35..=54 => Kind::Expired,
        55..=74 => Kind::HeldAccount,
        75..=89 => Kind::Objector,
        _ => Kind::ObjectorHeld,
    }
}

fn draw_plan(round: u64, rng: &mut Rng, n_audio: &mut u64) -> Plan {
    // Mostly early kills, some late enough for the spool's leftovers (taken 2 s after a start)
    // and the purge worker (every second) to be caught as well.
    let kill_after = match rng.range(0, 99) {
        0..=64 => rng.millis(10, 400),
        65..=89 => rng.millis(400, 1200),
        _ => rng.millis(1200, 2600),
    };
    let uploads = (0..rng.range(3, 9))
        .map(|i| {
            let kind = draw_kind(rng);
            UploadPlan {
                call: draw_call(
                    round,
                    format!("{CALL_MARK}-{round}-u{i}"),
                    kind,
                    rng,
                    n_audio,
                ),
                gap: rng.millis(5, 90),
            }
        })
        .collect();
    let streams = (0..rng.range(0, 2))
        .map(|i| {
            let kind = match rng.percent(50) {
                true => Kind::Objector,
                false => Kind::Fresh,
            };
            StreamPlan {
                call: draw_call(
                    round,
                    format!("{CALL_MARK}-{round}-t{i}"),
                    kind,
                    rng,
                    n_audio,
                ),
                trickle: rng.millis(40, 900),
            }
        })
        .collect();
    let spool = (0..rng.range(0, 4))
        .map(|i| {
            let kind = match rng.range(0, 99) {
                0..=49 => SpoolKind::Sidecar,
                50..=79 => SpoolKind::FreePbx,
                _ => SpoolKind::Garbage,
            };
            let call_kind = match (kind, rng.percent(30)) {
                (SpoolKind::Sidecar | SpoolKind::FreePbx, true) => Kind::Objector,
                _ => Kind::Fresh,
            };
            let call = draw_call(
                round,
                format!("{CALL_MARK}-{round}-s{i}"),
                call_kind,
                rng,
                n_audio,
            );
            let garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
            SpoolPlan {
                call,
                kind,
                gap: rng.millis(0, 150),
                via_part: rng.percent(40),
                garbage: Arc::new(garbage),
            }
        })
        .collect();
    let hold_account_at = match rng.percent(80) {
        true => Some(rng.millis(0, 300)),
        false => None,
    };
    let hold_ids_at = match rng.percent(60) {
        true => Some(rng.millis(30, 600)),
        false => None,
    };
    let objection = match rng.percent(80) {
        true => {
            let forms = written_forms(&objector(round));
            Some(ObjectionPlan {
                at: rng.millis(0, 500),
                role: match rng.percent(50) {
                    true => "dpo",
                    false => "operator",
                },
                caller_as_written: forms[rng.range(0, 2) as usize].clone(),
                source: ["call", "letter", "email", "web"][rng.range(0, 3) as usize],
            })
        }
        false => None,
    };
    let purge_gap = match rng.percent(75) {
        true => Some(rng.millis(0, 120)),
        false => None,
    };
    Plan {
        kill_after,
        uploads,
        streams,
        spool,
        hold_account_at,
        hold_ids_at,
        objection,
        purge_gap,
    }
}

// ---------------------------------------------------------------------------------------------
// What the clients saw during a round.

#[derive(Debug, Clone)]
enum Answer {
    /// `201`, or `200` with `"status": "stored"` (an identical repeat).
    Stored {
        id: String,
        sha256: String,
    },
    Discarded(String),
    /// Any other answer.
    Refused(u16, String),
    /// No answer: the server died first (or never answered).
    Unanswered(String),
}

fn upload_answer(result: Result<Response, String>) -> Answer {
    let response = match result {
        Ok(response) => response,
        Err(error) => return Answer::Unanswered(error),
    };
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let text = || String::from_utf8_lossy(&response.body).into_owned();
    match (response.status, body["status"].as_str()) {
        (201, Some("stored")) | (200, Some("stored")) => Answer::Stored {
            id: body["id"].as_str().unwrap_or("").to_owned(),
            sha256: body["sha256"].as_str().unwrap_or("").to_owned(),
        },
        (200, Some("discarded")) => {
            Answer::Discarded(body["reason"].as_str().unwrap_or("").to_owned())
        }
        (status, _) => Answer::Refused(status, text()),
    }
}

#[derive(Debug, Clone)]
struct UploadRecord {
    call: Call,
    streamed: bool,
    /// Every audio byte was handed to the connection.
    fully_sent: bool,
    /// The logical clock just before the request left.
    sent_at: u64,
    answer: Answer,
}

/// How a hold placement or an objection ended, seen from the client.
#[derive(Debug, Clone)]
enum Reply<T> {
    /// `201`.
    Created(T),
    /// Any other answer.
    Refused(String),
    /// No answer: the server died first.
    Lost,
}

fn reply<T>(result: Result<Response, String>, created: impl FnOnce(Value) -> T) -> Reply<T> {
    match result {
        Ok(response) if response.status == 201 => Reply::Created(created(response.json())),
        Ok(response) => Reply::Refused(format!(
            "{} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )),
        Err(_) => Reply::Lost,
    }
}

#[derive(Debug, Clone)]
enum HoldSelector {
    Account(String),
    Ids(Vec<String>),
}

#[derive(Debug, Clone)]
struct HoldRecord {
    case_ref: String,
    selector: HoldSelector,
    answered_at: u64,
    /// Created: (id, recordings covered).
    answer: Reply<(String, u64)>,
}

#[derive(Debug, Clone)]
struct ObjectionRecord {
    caller: String,
    reference: String,
    answered_at: u64,
    /// Created: the objection's id.
    answer: Reply<String>,
}

#[derive(Debug, Clone)]
struct SpoolRecord {
    call: Call,
    kind: SpoolKind,
    audio_name: String,
    garbage: Arc<Vec<u8>>,
}

impl SpoolRecord {
    fn content(&self) -> &Arc<Vec<u8>> {
        match self.kind {
            SpoolKind::Garbage => &self.garbage,
            SpoolKind::Sidecar | SpoolKind::FreePbx => &self.call.audio,
        }
    }
}

/// The round's journal, shared by the client tasks.
#[derive(Default)]
struct Journal {
    clock: AtomicU64,
    uploads: Mutex<Vec<UploadRecord>>,
    holds: Mutex<Vec<HoldRecord>>,
    objections: Mutex<Vec<ObjectionRecord>>,
    spool: Mutex<Vec<SpoolRecord>>,
    purges: Mutex<Vec<String>>,
    n_purges: AtomicU64,
}

impl Journal {
    /// The logical clock: ticked before a request leaves and after its answer arrives.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Ids stored by this round so far, expired ones first.
    fn stored_ids(&self) -> Vec<String> {
        let uploads = self.uploads.lock().unwrap();
        let mut ids: Vec<(bool, String)> = uploads
            .iter()
            .filter_map(|record| match &record.answer {
                Answer::Stored { id, .. } => Some((!record.call.expired(), id.clone())),
                _ => None,
            })
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }
}

/// Waits `pause`; true if the server was killed meanwhile (or before).
async fn pause_or_killed(killed: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    if *killed.borrow() {
        return true;
    }
    let slept = tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = killed.wait_for(|k| *k) => false,
    };
    !slept || *killed.borrow()
}

// ---------------------------------------------------------------------------------------------
// The load of a round, and the kill.

/// The running `callguard purge`, if any; `stopped` once the server is killed (no new run).
#[derive(Default)]
struct PurgeSlot {
    child: Option<Child>,
    stopped: bool,
}

fn spawn_purge(config: &Path, cwd: &Path) -> Child {
    Command::new(binary())
        .args(["purge", "--config"])
        .arg(config)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callguard purge")
}

struct Loaded {
    setup: Setup,
    journal: Journal,
    /// A file created just after the kill: anything written before it is older than its mtime.
    kill_marker: PathBuf,
}

/// Runs the round's load against `instance`, kills the server (and `callguard purge`) after
/// `plan.kill_after`, and waits for every client to notice.
async fn run_load(
    round: u64,
    plan: Plan,
    instance: &mut Instance,
    fallback_ids: Vec<String>,
) -> Loaded {
    let journal = Arc::new(Journal::default());
    let (killed_tx, killed_rx) = watch::channel(false);
    let recorder = instance.client("recorder");
    let legal = instance.client("legal");
    let spool_dir = instance.setup.spool.clone();
    let purge_slot = Arc::new(Mutex::new(PurgeSlot::default()));
    let mut tasks = Vec::new();
    let Plan {
        kill_after,
        uploads,
        streams,
        spool,
        hold_account_at,
        hold_ids_at,
        objection,
        purge_gap,
    } = plan;

    // Whole uploads, one after the other at the recorder's pace.
    {
        let (journal, recorder, mut killed) =
            (journal.clone(), recorder.clone(), killed_rx.clone());
        tasks.push(tokio::spawn(async move {
            for upload in uploads {
                if pause_or_killed(&mut killed, upload.gap).await {
                    break;
                }
                let sent_at = journal.tick();
                let result = recorder
                    .upload(&upload.call.metadata(), "call.wav", &upload.call.audio)
                    .await;
                journal.uploads.lock().unwrap().push(UploadRecord {
                    call: upload.call,
                    streamed: false,
                    fully_sent: true,
                    sent_at,
                    answer: upload_answer(result),
                });
            }
        }));
    }

    // Streamed uploads: metadata and half the audio at once, the rest trickling in.
    for stream in streams {
        let (journal, recorder, mut killed) =
            (journal.clone(), recorder.clone(), killed_rx.clone());
        tasks.push(tokio::spawn(async move {
            let call = stream.call;
            let sent_at = journal.tick();
            let started = recorder.start_upload(&call.metadata(), "call.wav").await;
            let (fully_sent, result) = match started {
                Err(error) => (false, Err(error)),
                Ok(upload) => {
                    let audio = call.audio.clone();
                    let half = audio.len() / 2;
                    let piece = (audio.len() - half).div_ceil(8);
                    let mut at = 0;
                    let mut broken = upload.send(&audio[..half]).await.is_err();
                    if !broken {
                        at = half;
                    }
                    while !broken && at < audio.len() {
                        if pause_or_killed(&mut killed, stream.trickle / 8).await {
                            break;
                        }
                        let end = (at + piece).min(audio.len());
                        match upload.send(&audio[at..end]).await {
                            Ok(()) => at = end,
                            Err(_) => broken = true,
                        }
                    }
                    let fully_sent = at == audio.len();
                    // A body cut short is never ended: the server must see it unfinished.
                    match fully_sent || upload.request.is_over() {
                        true => (fully_sent, upload.finish().await),
                        false => {
                            upload.abort().await;
                            (false, Err("abandoned mid-body at the kill".to_owned()))
                        }
                    }
                }
            };
            journal.uploads.lock().unwrap().push(UploadRecord {
                call,
                streamed: true,
                fully_sent,
                sent_at,
                answer: upload_answer(result),
            });
        }));
    }

    // The recorder's spool door.
    {
        let (journal, mut killed) = (journal.clone(), killed_rx.clone());
        tasks.push(tokio::spawn(async move {
            for drop in spool {
                if pause_or_killed(&mut killed, drop.gap).await {
                    break;
                }
                let record = write_spool(&spool_dir, &drop, round);
                journal.spool.lock().unwrap().push(record);
            }
        }));
    }

    // Legal: a hold on the round's account (include_future), and one on ids.
    if let Some(at) = hold_account_at {
        let (journal, legal, mut killed) = (journal.clone(), legal.clone(), killed_rx.clone());
        tasks.push(tokio::spawn(async move {
            if pause_or_killed(&mut killed, at).await {
                return;
            }
            let selector = HoldSelector::Account(held_account(round));
            place_hold(
                &journal,
                &legal,
                format!("CGCASE-{round}-account"),
                selector,
            )
            .await;
        }));
    }
    if let Some(at) = hold_ids_at {
        let (journal, legal, mut killed) = (journal.clone(), legal.clone(), killed_rx.clone());
        tasks.push(tokio::spawn(async move {
            if pause_or_killed(&mut killed, at).await {
                return;
            }
            let mut ids = journal.stored_ids();
            ids.truncate(3);
            if ids.is_empty() {
                ids = fallback_ids;
            }
            if ids.is_empty() {
                return;
            }
            let selector = HoldSelector::Ids(ids);
            place_hold(&journal, &legal, format!("CGCASE-{round}-ids"), selector).await;
        }));
    }

    // The DPO (or an operator) registers the round's objector's objection.
    if let Some(objection) = objection {
        let (journal, mut killed) = (journal.clone(), killed_rx.clone());
        let client = instance.client(objection.role);
        tasks.push(tokio::spawn(async move {
            if pause_or_killed(&mut killed, objection.at).await {
                return;
            }
            let reference = format!("CGOBJ-{round}");
            let body = json!({
                "caller": objection.caller_as_written,
                "source": objection.source,
                "reference": reference,
            });
            let result = client.post_json("/v1/objections", &body).await;
            let answered_at = journal.tick();
            let answer = reply(result, |body| body["id"].as_str().unwrap_or("").to_owned());
            journal.objections.lock().unwrap().push(ObjectionRecord {
                caller: objector(round),
                reference,
                answered_at,
                answer,
            });
        }));
    }

    // `callguard purge`, again and again, beside the purge worker.
    if let Some(gap) = purge_gap {
        let (config, cwd) = (
            instance.setup.config.clone(),
            instance.setup.root().to_owned(),
        );
        tasks.push(tokio::spawn(run_purges(
            journal.clone(),
            killed_rx.clone(),
            purge_slot.clone(),
            gap,
            (config, cwd),
        )));
    }

    // The crash: the server and a running `callguard purge`, at the same instant.
    tokio::time::sleep(kill_after).await;
    let purge = {
        let mut guard = purge_slot.lock().unwrap();
        guard.stopped = true;
        guard.child.take()
    };
    let purge = purge.map(|mut child| {
        let _ = child.kill();
        child
    });
    let setup = instance.kill9();
    if let Some(mut child) = purge {
        let _ = child.wait();
    }
    let kill_marker = setup.root().join("killed-at");
    std::fs::write(&kill_marker, round.to_string()).unwrap();
    killed_tx.send(true).unwrap();
    for task in tasks {
        match tokio::time::timeout(PATIENCE, task).await {
            Ok(joined) => joined.expect("client task"),
            Err(_) => panic!("round {round}: a client still hangs {PATIENCE:?} after the kill"),
        }
    }
    let journal = Arc::try_unwrap(journal)
        .unwrap_or_else(|_| panic!("round {round}: the journal is still shared"));
    Loaded {
        setup,
        journal,
        kill_marker,
    }
}

/// Runs `callguard purge` again and again, `gap` apart, until the server is killed; a run
/// still going then is killed with it (by `run_load`), a run that fails is a violation.
async fn run_purges(
    journal: Arc<Journal>,
    mut killed: watch::Receiver<bool>,
    slot: Arc<Mutex<PurgeSlot>>,
    gap: Duration,
    (config, cwd): (PathBuf, PathBuf),
) {
    loop {
        if pause_or_killed(&mut killed, gap).await {
            return;
        }
        {
            let mut guard = slot.lock().unwrap();
            if guard.stopped {
                return;
            }
            guard.child = Some(spawn_purge(&config, &cwd));
        }
        journal.n_purges.fetch_add(1, Ordering::SeqCst);
        let (status, mut child) = loop {
            let exited = {
                let mut guard = slot.lock().unwrap();
                let Some(child) = guard.child.as_mut() else {
                    // Taken: killed with the server.
                    return;
                };
                let status = child.try_wait().expect("try_wait");
                status.and_then(|status| guard.child.take().map(|child| (status, child)))
            };
            match exited {
                Some(exited) => break exited,
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            let failure = format!("callguard purge failed ({status}): {stderr}");
            journal.purges.lock().unwrap().push(failure);
        }
    }
}

async fn place_hold(journal: &Journal, legal: &Client, case_ref: String, selector: HoldSelector) {
    let selector_json = match &selector {
        HoldSelector::Account(account) => json!({ "account": account }),
        HoldSelector::Ids(ids) => json!({ "recording_ids": ids }),
    };
    let body = json!({
        "case_ref": case_ref,
        "reason": "crash campaign",
        "selector": selector_json,
        "include_future": matches!(selector, HoldSelector::Account(_)),
    });
    let result = legal.post_json("/v1/holds", &body).await;
    let answered_at = journal.tick();
    let answer = reply(result, |body| {
        (
            body["id"].as_str().unwrap_or("").to_owned(),
            body["recordings"].as_u64().unwrap_or(0),
        )
    });
    journal.holds.lock().unwrap().push(HoldRecord {
        case_ref,
        selector,
        answered_at,
        answer,
    });
}

/// Writes one spool recording the way recorders do (the sidecar last; or a `.part` renamed).
fn write_spool(spool: &Path, drop: &SpoolPlan, round: u64) -> SpoolRecord {
    let write = |name: &str, bytes: &[u8]| match drop.via_part {
        true => {
            let part = spool.join(format!("{name}.part"));
            std::fs::write(&part, bytes).unwrap();
            std::fs::rename(&part, spool.join(name)).unwrap();
        }
        false => std::fs::write(spool.join(name), bytes).unwrap(),
    };
    let call = &drop.call;
    let audio_name = match drop.kind {
        SpoolKind::Sidecar => {
            let stem = format!("rec-{round}-{}", &call.call_id[call.call_id.len() - 2..]);
            let sidecar = serde_json::to_vec(&call.metadata()).unwrap();
            write(&format!("{stem}.wav"), &call.audio);
            write(&format!("{stem}.json"), &sidecar);
            format!("{stem}.wav")
        }
        SpoolKind::FreePbx | SpoolKind::Garbage => {
            // Local time of the appliance (Europe/Paris), from the call's start.
            let start: jiff::Timestamp = call.started_at.parse().unwrap();
            let zone = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
            let local = start.to_zoned(zone).strftime("%Y%m%d-%H%M%S").to_string();
            let name = format!(
                "in-{CALLEE_NATIONAL}-{}-{local}-{}.wav",
                call.caller, call.call_id
            );
            match drop.kind {
                SpoolKind::Garbage => write(&name, &drop.garbage),
                SpoolKind::Sidecar | SpoolKind::FreePbx => write(&name, &call.audio),
            }
            name
        }
    };
    SpoolRecord {
        call: call.clone(),
        kind: drop.kind,
        audio_name,
        garbage: drop.garbage.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// What the campaign knows across rounds.

/// A recording acknowledged to the recorder (a `201`, a repeat's `200`, or its spool file gone).
#[derive(Debug, Clone)]
struct Known {
    call_id: String,
    sha256: String,
    /// National format.
    caller: String,
    expired: bool,
    round: u64,
}

/// What a recording must look like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Listed and readable whole (guarantee 7).
    Serve,
    /// Covered by a hold: listed with it and readable whole by legal (guarantee 4).
    ServeHeld,
    /// Expired or objected, and not held: never listed, `410` (guarantees 3 and 5).
    Hidden,
}

#[derive(Default)]
struct Model {
    recordings: BTreeMap<String, Known>,
    /// Every call ever sent, by call id: the audio anything visible must equal.
    calls: HashMap<String, Call>,
    /// Holds that exist: id → (case_ref, covered count last seen; coverage never shrinks).
    holds: BTreeMap<String, (String, u64)>,
    /// Recording id → the holds seen covering it (each stays: no hold is ever released).
    covered: HashMap<String, BTreeSet<String>>,
    /// Callers with an objection that exists (national format) → objection id.
    objected: BTreeMap<String, String>,
    /// Spool recordings whose audio file was still in the spool at the last check.
    spool: Vec<SpoolRecord>,
    /// Recordings seen `410 deleted`, with the round: their blob must be gone after a restart.
    deleted: BTreeMap<String, u64>,
    /// Vault files already scanned for plaintext, by path, length and modification time (a blob
    /// is written in place: one still being written is scanned again once it changed).
    scanned: HashSet<(PathBuf, u64, std::time::SystemTime)>,
    /// Audio windows of every file the campaign sent, for the final scan.
    windows: Vec<(String, Vec<u8>)>,
}

impl Model {
    fn expect(&self, id: &str, known: &Known) -> Expect {
        let held = self.covered.get(id).is_some_and(|holds| !holds.is_empty());
        let objected = self.objected.contains_key(&known.caller);
        match (held, known.expired || objected) {
            (true, _) => Expect::ServeHeld,
            (false, true) => Expect::Hidden,
            (false, false) => Expect::Serve,
        }
    }
}

fn windows_of(name: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        (format!("audio of {name}"), plaintext_window(bytes, 0.5)),
        (
            format!("audio (first quarter) of {name}"),
            plaintext_window(bytes, 0.25),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Collects the violations of a round; `finish` fails the test with all of them.
struct Verdict {
    round: String,
    seed: u64,
    rounds_to_replay: u64,
    violations: Vec<String>,
}

impl Verdict {
    fn violation(&mut self, guarantee: &str, object: &str, what: impl Into<String>) {
        self.violations
            .push(format!("guarantee {guarantee}: {object}: {}", what.into()));
    }

    /// A transport failure while checking: the restarted server must answer.
    fn answered(&self, what: &str, result: Result<Response, String>) -> Response {
        match result {
            Ok(response) => response,
            Err(error) => panic!(
                "crash campaign, {} (CRASH_SEED={}): {what}: no answer from the restarted server: {error}",
                self.round, self.seed
            ),
        }
    }

    /// Fails the test if anything was found; `log` is the server's log when no running
    /// `Instance` prints it on the way out.
    fn finish(&mut self, log: Option<&str>) {
        if self.violations.is_empty() {
            return;
        }
        let n = self.violations.len();
        let shown: Vec<String> = self
            .violations
            .iter()
            .take(30)
            .map(|v| format!("  - {v}"))
            .collect();
        panic!(
            "crash campaign: {n} violation(s) in {} (CRASH_SEED={}; replay with CRASH_SEED={} CRASH_ROUNDS={}):\n{}{}",
            self.round,
            self.seed,
            self.seed,
            self.rounds_to_replay,
            shown.join("\n"),
            match log {
                Some(log) => format!("\n---- callguard log ----\n{log}"),
                None => String::new(),
            }
        );
    }
}

/// Every item of a list endpoint, following cursors.
async fn list_all(verdict: &Verdict, client: &Client, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            None => format!("{path}?limit=1000"),
            Some(cursor) => format!("{path}?limit=1000&cursor={}", query_escape(cursor)),
        };
        let response = verdict.answered(&page_path, client.get(&page_path).await);
        if response.status != 200 {
            panic!(
                "crash campaign, {} (CRASH_SEED={}): {page_path} answered {} {}",
                verdict.round,
                verdict.seed,
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        let page = response.json();
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// The checks made while the server is down, on exactly what the crash left. The plaintext
/// scan is slow in a debug build: it runs on a snapshot (the catalog's files copied, the vault's
/// files hard-linked) in a thread, while the server restarts; join it for its findings.
fn check_dead(
    verdict: &mut Verdict,
    setup: &Setup,
    model: &mut Model,
    needles: Vec<(String, Vec<u8>)>,
) -> std::thread::JoinHandle<Vec<String>> {
    // Audit chain intact (every action and its audit entry commit together).
    let (code, out, err) = setup.cli(&["audit", "verify"]);
    if code != 0 {
        verdict.violation(
            "8",
            "audit chain",
            format!("`callguard audit verify` exit {code}: {out}{err}"),
        );
    }
    // No plaintext behind: the catalog, and every vault file not scanned yet as it is now
    // (finished blobs do not change).
    let scratch = setup.root().join(format!(
        "plaintext-scan-{}",
        verdict.round.replace(' ', "-")
    ));
    std::fs::create_dir(&scratch).unwrap();
    let vault = setup.data.join("vault");
    for path in files_under(&setup.data) {
        let in_vault = path.starts_with(&vault);
        let state = std::fs::metadata(&path)
            .and_then(|meta| Ok((meta.len(), meta.modified()?)))
            .ok();
        if let (true, Some((len, modified))) = (in_vault, state)
            && !model.scanned.insert((path.clone(), len, modified))
        {
            continue;
        }
        let relative = path
            .strip_prefix(&setup.data)
            .unwrap()
            .display()
            .to_string();
        let copy = scratch.join(relative.replace('/', "__"));
        let _ = match in_vault {
            true => std::fs::hard_link(&path, &copy),
            false => std::fs::copy(&path, &copy).map(|_| ()),
        };
    }
    std::thread::spawn(move || {
        let found = secrets_on_disk(&scratch, &needles);
        std::fs::remove_dir_all(&scratch).unwrap();
        found
    })
}

/// Names of the recording blobs in the vault (`ID.cgv`): no temporaries, no quarantine.
fn blob_names(data: &Path) -> HashSet<String> {
    recording_blob_files(data)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "cgv"))
        .filter_map(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .collect()
}

/// The vault files last written before the kill: the blobs (`ID.cgv`) and any temporary file.
fn pre_kill_vault_files(data: &Path, kill_marker: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let killed_at = std::fs::metadata(kill_marker).unwrap().modified().unwrap();
    let before_kill = |path: &PathBuf| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified <= killed_at)
    };
    let blobs = recording_blob_files(data)
        .into_iter()
        .filter(before_kill)
        .filter_map(|path| Some(path.file_name()?.to_str()?.strip_suffix(".cgv")?.to_owned()))
        .collect();
    let temporaries = temp_files(data).into_iter().filter(before_kill).collect();
    (blobs, temporaries)
}

/// Round statistics, printed one line per round.
#[derive(Default)]
struct Tally {
    acknowledged: usize,
    unanswered: usize,
    discarded: usize,
    spool_taken: usize,
    holds: usize,
    objections: usize,
    purges: u64,
}

/// Which check: after the restart of a round, or the final one (no kill, everything read).
struct Pass<'a> {
    round: u64,
    journal: &'a Journal,
    /// After a restart: the file created just after the kill.
    kill_marker: Option<&'a Path>,
}

/// The clients of the checks.
struct Clients {
    dpo: Client,
    legal: Client,
    recorder: Client,
}

/// What the DPO's listing showed.
#[derive(Default)]
struct Listing {
    by_id: HashMap<String, Value>,
    by_call: HashMap<String, Vec<Value>>,
}

/// Everything checked once the server is back (or, at the end, with an empty journal), in the
/// order of docs/crash-campaign.md.
async fn check_running(
    verdict: &mut Verdict,
    instance: &Instance,
    model: &mut Model,
    pass: Pass<'_>,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let Pass {
        round,
        journal,
        kill_marker,
    } = pass;
    let clients = Clients {
        dpo: instance.client("dpo"),
        legal: instance.client("legal"),
        recorder: instance.client("recorder"),
    };
    if let Some(marker) = kill_marker {
        check_recovery(
            verdict,
            &clients,
            &instance.setup.data,
            model,
            round,
            marker,
        )
        .await;
    }
    let uploads = journal.uploads.lock().unwrap().clone();
    let spool_records = journal.spool.lock().unwrap().clone();
    for call in uploads
        .iter()
        .map(|r| &r.call)
        .chain(spool_records.iter().map(|r| &r.call))
    {
        model.calls.insert(call.call_id.clone(), call.clone());
    }
    model.spool.extend(spool_records);
    for failure in journal.purges.lock().unwrap().iter() {
        verdict.violation("3", "callguard purge", failure.clone());
    }
    tally.purges = journal.n_purges.load(Ordering::SeqCst);

    let holds = journal.holds.lock().unwrap().clone();
    let round_holds = resolve_holds(verdict, &clients, model, &holds, tally).await;
    let objections = journal.objections.lock().unwrap().clone();
    resolve_objections(verdict, &clients, model, &objections, tally).await;
    judge_answers(verdict, model, round, &uploads, &objections, tally);

    // Which spool files are gone: before listing, so that each one gone is committed by then.
    let gone: Vec<bool> = model
        .spool
        .iter()
        .map(|record| !instance.setup.spool.join(&record.audio_name).exists())
        .collect();
    let listing = list_recordings(verdict, &clients, model, &uploads).await;
    let mut fresh = acknowledge_uploads(verdict, model, round, &uploads, &listing);
    fresh.extend(resolve_spool(verdict, &clients, model, round, gone, &listing, tally).await);
    let retried = retry_unanswered(verdict, &clients, model, round, &uploads).await;
    fresh.extend(retried.iter().map(|(id, _)| id.clone()));
    if kill_marker.is_some() {
        probe_objector(verdict, &clients, model, round).await;
    }
    let held = check_round_holds(verdict, &clients, model, &round_holds, &uploads, &retried).await;
    check_known(verdict, model, &listing, &retried);

    // Audio, byte for byte: this round's recordings, what this round's holds cover, a sample of
    // the older ones (all of them at the end).
    let mut to_read: BTreeSet<String> = fresh.into_iter().chain(held).collect();
    let older: Vec<&String> = model.recordings.keys().collect();
    match kill_marker {
        None => to_read.extend(older.into_iter().cloned()),
        Some(_) => {
            for _ in 0..3.min(older.len()) {
                to_read.insert(older[rng.range(0, older.len() as u64 - 1) as usize].clone());
            }
        }
    }
    read_back(verdict, &clients, model, round, &to_read).await;
}

/// Guarantee 7, no partial recording: start-up recovery removed the unfinished writes and every
/// catalogued recording has its blob. Guarantee 2: a recording seen deleted before this crash
/// has no blob left (a crash between shred and unlink leaves an orphan that recovery removes).
async fn check_recovery(
    verdict: &mut Verdict,
    clients: &Clients,
    data: &Path,
    model: &Model,
    round: u64,
    kill_marker: &Path,
) {
    // A write the kill interrupted left a blob without a catalog row (or, from an earlier
    // version, a temporary file): recovery must have removed it.
    let (blobs, temporaries) = pre_kill_vault_files(data, kill_marker);
    for path in temporaries {
        let object = path.display().to_string();
        verdict.violation(
            "7",
            &object,
            "temporary file still in the vault after the restart",
        );
    }
    let listed: HashSet<String> = list_all(verdict, &clients.dpo, "/v1/recordings")
        .await
        .iter()
        .filter_map(|item| item["id"].as_str().map(str::to_owned))
        .collect();
    for id in blobs.into_iter().filter(|id| !listed.contains(id)) {
        let response = verdict.answered(
            "recording metadata",
            clients.dpo.get(&format!("/v1/recordings/{id}")).await,
        );
        if response.status == 404 {
            let what = "blob without a catalog row (an unfinished write) after the restart";
            verdict.violation("7", &format!("recording {id}"), what);
        }
    }
    let status = verdict
        .answered("status", clients.dpo.get("/v1/status").await)
        .json();
    if status["counts"]["recordings_missing"] != 0 {
        let what = format!("recordings without their blob after recovery: {status}");
        verdict.violation("7", "catalog", what);
    }
    let blobs = blob_names(data);
    for (id, seen) in &model.deleted {
        if *seen < round && blobs.contains(&format!("{id}.cgv")) {
            let what = format!("deleted (seen in round {seen}) but its blob is still in the vault");
            verdict.violation("2", &format!("recording {id}"), what);
        }
    }
}

/// Guarantee 4: every hold acknowledged so far still exists, active, covering at least as much
/// as before. The round's holds whose answer was lost are looked up by case reference: each one
/// exists (then it counts from now on) or never did. Returns the round's holds that exist.
async fn resolve_holds(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &Model,
    records: &[HoldRecord],
    tally: &mut Tally,
) -> Vec<(String, HoldRecord)> {
    let listed = list_all(verdict, &clients.legal, "/v1/holds").await;
    let by_case: HashMap<String, Value> = listed
        .into_iter()
        .map(|hold| (hold["case_ref"].as_str().unwrap_or("").to_owned(), hold))
        .collect();
    for (id, (case_ref, count)) in &model.holds {
        let object = format!("hold {id} ({case_ref})");
        match by_case.get(case_ref) {
            None => verdict.violation("4", &object, "acknowledged hold is gone"),
            Some(hold) if hold["state"] != "active" => {
                verdict.violation("4", &object, format!("no longer active: {hold}"));
            }
            Some(hold) if hold["recordings"].as_u64().unwrap_or(0) < *count => {
                let what = format!("covered {count} recordings, now {}", hold["recordings"]);
                verdict.violation("4", &object, what);
            }
            Some(_) => {}
        }
    }
    let mut existing = Vec::new();
    for record in records {
        let object = format!("hold {}", record.case_ref);
        match (&record.answer, by_case.get(&record.case_ref)) {
            (Reply::Created((id, _)), None) => {
                let what = format!("acknowledged (201, {id}) but gone after the restart");
                verdict.violation("4", &object, what);
            }
            (Reply::Created((id, n)), Some(hold)) => {
                tally.holds += 1;
                if hold["id"] != id.as_str() || hold["recordings"].as_u64().unwrap_or(0) < *n {
                    let what = format!("acknowledged as {id} covering {n}, now {hold}");
                    verdict.violation("4", &object, what);
                }
                existing.push((id.clone(), record.clone()));
            }
            (Reply::Refused(answer), _) => {
                verdict.violation("4", &object, format!("refused: {answer}"));
            }
            (Reply::Lost, Some(hold)) => {
                let id = hold["id"].as_str().unwrap_or("").to_owned();
                existing.push((id, record.clone()));
            }
            (Reply::Lost, None) => {}
        }
    }
    existing
}

/// Guarantee 5: every objection acknowledged so far still exists, not withdrawn; the round's
/// objection whose answer was lost is looked up by reference (it exists or never did).
async fn resolve_objections(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &mut Model,
    records: &[ObjectionRecord],
    tally: &mut Tally,
) {
    let listed = list_all(verdict, &clients.dpo, "/v1/objections").await;
    for id in model.objected.values() {
        let object = format!("objection {id}");
        match listed
            .iter()
            .find(|objection| objection["id"] == id.as_str())
        {
            None => verdict.violation("5", &object, "acknowledged objection is gone"),
            Some(objection) if !objection["withdrawn_at"].is_null() => {
                verdict.violation("5", &object, format!("withdrawn by nobody: {objection}"));
            }
            Some(_) => {}
        }
    }
    for record in records {
        let object = format!("objection {}", record.reference);
        let found = listed
            .iter()
            .find(|objection| objection["reference"] == record.reference.as_str());
        match (&record.answer, found) {
            (Reply::Created(id), None) => {
                let what = format!("acknowledged (201, {id}) but gone after the restart");
                verdict.violation("5", &object, what);
            }
            (Reply::Created(id), Some(_)) => {
                tally.objections += 1;
                model.objected.insert(record.caller.clone(), id.clone());
            }
            (Reply::Refused(answer), _) => {
                verdict.violation("5", &object, format!("refused: {answer}"));
            }
            (Reply::Lost, Some(listed)) => {
                let id = listed["id"].as_str().unwrap_or("").to_owned();
                model.objected.insert(record.caller.clone(), id);
            }
            (Reply::Lost, None) => {}
        }
    }
}

/// What the recorder was told during the load, judged now that what exists is known: a `201`
/// carries the audio's SHA-256 and never comes for a call sent after its caller's objection was
/// acknowledged; a discard needs an objection.
fn judge_answers(
    verdict: &mut Verdict,
    model: &Model,
    round: u64,
    uploads: &[UploadRecord],
    objections: &[ObjectionRecord],
    tally: &mut Tally,
) {
    let objection_acknowledged = objections.iter().find_map(|record| match &record.answer {
        Reply::Created(_) => Some(record.answered_at),
        Reply::Refused(_) | Reply::Lost => None,
    });
    for record in uploads {
        let object = format!("call {}", record.call.call_id);
        match &record.answer {
            Answer::Stored { sha256, .. } => {
                tally.acknowledged += 1;
                if *sha256 != sha256_hex(&record.call.audio) {
                    let what = format!("acknowledged with sha256 {sha256}, not the audio's");
                    verdict.violation("7", &object, what);
                }
                let after_objection =
                    objection_acknowledged.is_some_and(|acked| record.sent_at > acked);
                if record.call.caller == objector(round) && after_objection {
                    let what = "stored although sent after its caller's objection was acknowledged";
                    verdict.violation("5", &object, what);
                }
            }
            Answer::Discarded(reason) => {
                tally.discarded += 1;
                let objected = model.objected.contains_key(&record.call.caller);
                if !objected || reason != "caller_objection" {
                    let what = format!("discarded ({reason}) without an objection for its caller");
                    verdict.violation("5", &object, what);
                }
            }
            Answer::Refused(status, body) => {
                verdict.violation("7", &object, format!("refused: {status} {body}"));
            }
            Answer::Unanswered(_) => tally.unanswered += 1,
        }
    }
}

/// The DPO's whole listing. Guarantee 7: whatever is listed is whole (the SHA-256 of audio the
/// campaign sent) and stored once. Recordings the campaign never saw acknowledged (an answer
/// lost) must not be served if their caller objected or they expired unheld (guarantees 3, 5);
/// the acknowledged ones are judged by `check_known`.
async fn list_recordings(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &Model,
    uploads: &[UploadRecord],
) -> Listing {
    let acknowledged: HashSet<&String> = uploads
        .iter()
        .filter_map(|record| match &record.answer {
            Answer::Stored { id, .. } => Some(id),
            _ => None,
        })
        .chain(model.recordings.keys())
        .collect();
    let mut listing = Listing::default();
    for item in list_all(verdict, &clients.dpo, "/v1/recordings").await {
        let id = item["id"].as_str().unwrap_or("").to_owned();
        let call_id = item["call_id"].as_str().unwrap_or("").to_owned();
        let object = format!("recording {id} (call {call_id})");
        match model.calls.get(&call_id) {
            None => verdict.violation("7", &object, "listed but never sent by the campaign"),
            Some(call) => {
                if item["sha256"] != sha256_hex(&call.audio) {
                    let what =
                        format!("listed with sha256 {} (not the audio sent)", item["sha256"]);
                    verdict.violation("7", &object, what);
                }
                let unheld = item["holds"]
                    .as_array()
                    .is_none_or(|holds| holds.is_empty());
                let unknown = !acknowledged.contains(&id);
                if unknown && unheld && model.objected.contains_key(&call.caller) {
                    let what =
                        "served although its caller's objection exists and no hold covers it";
                    verdict.violation("5", &object, what);
                }
                if unknown && unheld && call.expired() {
                    verdict.violation("3", &object, "listed although expired and not held");
                }
            }
        }
        listing
            .by_call
            .entry(call_id)
            .or_default()
            .push(item.clone());
        listing.by_id.insert(id, item);
    }
    for (call_id, items) in &listing.by_call {
        if items.len() > 1 {
            let what = format!("stored {} times", items.len());
            verdict.violation("7", &format!("call {call_id}"), what);
        }
    }
    listing
}

/// This round's acknowledged uploads join the model; a streamed body cut short by the kill is
/// invisible (guarantee 7). Returns the ids acknowledged.
fn acknowledge_uploads(
    verdict: &mut Verdict,
    model: &mut Model,
    round: u64,
    uploads: &[UploadRecord],
    listing: &Listing,
) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for record in uploads {
        match &record.answer {
            Answer::Stored { id, .. } => {
                model
                    .recordings
                    .insert(id.clone(), known_of(&record.call, round));
                acknowledged.push(id.clone());
            }
            Answer::Unanswered(error) if record.streamed && !record.fully_sent => {
                if let Some(items) = listing.by_call.get(&record.call.call_id) {
                    let what = format!("streamed body cut short ({error}) but visible: {items:?}");
                    verdict.violation("7", &format!("call {}", record.call.call_id), what);
                }
            }
            _ => {}
        }
    }
    acknowledged
}

/// A spool file gone from the spool is acknowledged (guarantee 7): its recording is listed, or
/// it is in quarantine (garbage), or its caller objected (discarded, or deleted since). Returns
/// the ids of the recordings acknowledged so.
async fn resolve_spool(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &mut Model,
    round: u64,
    gone: Vec<bool>,
    listing: &Listing,
    tally: &mut Tally,
) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let mut quarantine: Option<Vec<Value>> = None;
    let mut waiting = Vec::new();
    for (record, gone) in std::mem::take(&mut model.spool).into_iter().zip(gone) {
        if !gone {
            waiting.push(record);
            continue;
        }
        tally.spool_taken += 1;
        let object = format!(
            "spool file {} (call {})",
            record.audio_name, record.call.call_id
        );
        match record.kind {
            SpoolKind::Garbage => {
                if quarantine.is_none() {
                    quarantine = Some(list_all(verdict, &clients.dpo, "/v1/quarantine").await);
                }
                let sha = sha256_hex(&record.garbage);
                let found = quarantine.iter().flatten().any(|item| {
                    item["file_name"] == record.audio_name.as_str()
                        && item["sha256"] == sha.as_str()
                });
                if !found {
                    verdict.violation("7", &object, "removed from the spool, not in quarantine");
                }
            }
            SpoolKind::Sidecar | SpoolKind::FreePbx => {
                match listing.by_call.get(&record.call.call_id) {
                    Some(items) => {
                        let id = items[0]["id"].as_str().unwrap_or("").to_owned();
                        model
                            .recordings
                            .insert(id.clone(), known_of(&record.call, round));
                        acknowledged.push(id);
                    }
                    None if model.objected.contains_key(&record.call.caller) => {}
                    None => {
                        let what = "removed from the spool but its recording is not in the catalog";
                        verdict.violation("7", &object, what);
                    }
                }
            }
        }
    }
    model.spool = waiting;
    acknowledged
}

/// The recorder retries what got no answer, as a real one would: stored (once, whole; a
/// repeat's `200` if it was committed before the kill), or discarded for an objector. Returns
/// the recordings so acknowledged.
async fn retry_unanswered(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &mut Model,
    round: u64,
    uploads: &[UploadRecord],
) -> Vec<(String, Call)> {
    let mut retried = Vec::new();
    for record in uploads {
        let Answer::Unanswered(_) = record.answer else {
            continue;
        };
        let object = format!("call {} (retried)", record.call.call_id);
        let result = clients
            .recorder
            .upload(&record.call.metadata(), "call.wav", &record.call.audio)
            .await;
        match upload_answer(Ok(verdict.answered(&object, result))) {
            Answer::Stored { id, sha256 } => {
                if sha256 != sha256_hex(&record.call.audio) {
                    verdict.violation("7", &object, format!("stored with sha256 {sha256}"));
                }
                model
                    .recordings
                    .insert(id.clone(), known_of(&record.call, round));
                retried.push((id, record.call.clone()));
            }
            // The unanswered attempt committed, and the recording was deleted since (an expired
            // call purged at the restart): a retry must not store it again.
            Answer::Discarded(reason) if reason == "deleted" => {
                if !record.call.expired() {
                    let what = "discarded as deleted, but nothing deletes a fresh call";
                    verdict.violation("5", &object, what);
                }
            }
            Answer::Discarded(reason) => {
                if !model.objected.contains_key(&record.call.caller) {
                    let what = format!("discarded ({reason}) without an objection");
                    verdict.violation("5", &object, what);
                }
            }
            other => verdict.violation("7", &object, format!("retry answered {other:?}")),
        }
    }
    retried
}

/// Guarantee 5: once the round's objection exists, a new call from that caller is discarded,
/// after the restart too.
async fn probe_objector(verdict: &mut Verdict, clients: &Clients, model: &mut Model, round: u64) {
    if !model.objected.contains_key(&objector(round)) {
        return;
    }
    let probe = Call {
        call_id: format!("{CALL_MARK}-{round}-probe"),
        kind: Kind::Objector,
        caller: objector(round),
        caller_as_written: e164(&objector(round)),
        account: REGULAR_ACCOUNT.to_owned(),
        started_at: started_at(),
        audio: tone(5000 + round, &mut Rng::new(round)),
    };
    model.calls.insert(probe.call_id.clone(), probe.clone());
    let object = format!("call {}", probe.call_id);
    let result = clients
        .recorder
        .upload(&probe.metadata(), "call.wav", &probe.audio)
        .await;
    match upload_answer(Ok(verdict.answered(&object, result))) {
        Answer::Discarded(reason) if reason == "caller_objection" => {}
        other => {
            let what = format!("new call from an objector answered {other:?}");
            verdict.violation("5", &object, what);
        }
    }
}

/// Guarantee 4: each hold of this round covers what it must: what was sent on its account
/// after its `201` (`include_future`), every id when its `201` counted them all. What it covers
/// now is covered for good (no hold is ever released). Returns the ids covered.
async fn check_round_holds(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &mut Model,
    holds: &[(String, HoldRecord)],
    uploads: &[UploadRecord],
    retried: &[(String, Call)],
) -> BTreeSet<String> {
    let mut covered_now = BTreeSet::new();
    for (hold_id, record) in holds {
        let object = format!("hold {hold_id} ({})", record.case_ref);
        let path = format!("/v1/holds/{hold_id}");
        let response = verdict.answered(&path, clients.legal.get(&path).await);
        if response.status != 200 {
            verdict.violation("4", &object, format!("GET answered {}", response.status));
            continue;
        }
        let ids = string_set(&response.json()["recording_ids"]);
        let mut certain: BTreeSet<String> = BTreeSet::new();
        match (&record.selector, &record.answer) {
            (HoldSelector::Account(account), answer) => {
                if let Reply::Created(_) = answer {
                    for upload in uploads {
                        if let Answer::Stored { id, .. } = &upload.answer
                            && upload.call.account == *account
                            && upload.sent_at > record.answered_at
                        {
                            certain.insert(id.clone());
                        }
                    }
                }
                // Retried after the restart: the hold existed already.
                for (id, call) in retried {
                    if call.account == *account {
                        certain.insert(id.clone());
                    }
                }
            }
            (HoldSelector::Ids(requested), Reply::Created((_, n))) => {
                if *n == requested.len() as u64 {
                    certain.extend(requested.iter().cloned());
                }
            }
            (HoldSelector::Ids(_), Reply::Refused(_) | Reply::Lost) => {}
        }
        for id in certain.difference(&ids) {
            let what = format!("does not cover recording {id}, which it must");
            verdict.violation("4", &object, what);
        }
        for id in &ids {
            let holds = model.covered.entry(id.clone()).or_default();
            holds.insert(hold_id.clone());
        }
        let entry = (record.case_ref.clone(), ids.len() as u64);
        model.holds.insert(hold_id.clone(), entry);
        covered_now.extend(ids);
    }
    covered_now
}

fn string_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every recording ever acknowledged, against the listing: served if fresh and not objected
/// (guarantee 7), listed with its holds if held (4), never listed if expired or objected and
/// not held (3, 5). Recordings retried after the listing are read back instead.
fn check_known(
    verdict: &mut Verdict,
    model: &Model,
    listing: &Listing,
    retried: &[(String, Call)],
) {
    for (id, known) in &model.recordings {
        let object = format!(
            "recording {id} (call {}, round {})",
            known.call_id, known.round
        );
        let after_listing = retried.iter().any(|(retried_id, _)| retried_id == id);
        match (model.expect(id, known), listing.by_id.get(id)) {
            (Expect::Serve | Expect::ServeHeld, None) if after_listing => {}
            (Expect::Serve, None) => {
                let what = "acknowledged, fresh, not objected, yet not listed";
                verdict.violation("7", &object, what);
            }
            (Expect::Serve, Some(item)) => {
                if item["sha256"] != known.sha256.as_str() {
                    let what = format!("listed with sha256 {}", item["sha256"]);
                    verdict.violation("7", &object, what);
                }
            }
            (Expect::ServeHeld, None) => verdict.violation("4", &object, "held, yet not listed"),
            (Expect::ServeHeld, Some(item)) => {
                let listed_holds = string_set(&item["holds"]);
                let expected = &model.covered[id];
                if !expected.is_subset(&listed_holds) {
                    let what = format!("covered by {expected:?}, listed with {listed_holds:?}");
                    verdict.violation("4", &object, what);
                }
            }
            (Expect::Hidden, None) => {}
            (Expect::Hidden, Some(_)) => match known.expired {
                true => verdict.violation("3", &object, "expired and not held, yet listed"),
                false => {
                    let what = "its caller objected and no hold covers it, yet listed";
                    verdict.violation("5", &object, what);
                }
            },
        }
    }
}

/// Reads back the audio of `ids`: whole as acknowledged when it must be served (by legal when
/// held: guarantees 4, 7), `410` when it must not (3, 5). A `410 deleted` is remembered for
/// guarantee 2.
async fn read_back(
    verdict: &mut Verdict,
    clients: &Clients,
    model: &mut Model,
    round: u64,
    ids: &BTreeSet<String>,
) {
    for id in ids {
        let Some(known) = model.recordings.get(id).cloned() else {
            // Covered by a hold, never acknowledged: its answer was lost and its retry
            // discarded (an objector); the listing showed it whole.
            continue;
        };
        let object = format!(
            "recording {id} (call {}, round {})",
            known.call_id, known.round
        );
        let audio = model.calls[&known.call_id].audio.clone();
        let expect = model.expect(id, &known);
        let (client, purpose) = match expect {
            Expect::ServeHeld => (&clients.legal, "litigation"),
            Expect::Serve | Expect::Hidden => (&clients.dpo, "data_subject_request"),
        };
        let path = format!("/v1/recordings/{id}/audio?purpose={purpose}");
        let response = verdict.answered(&path, client.get(&path).await);
        let body = || String::from_utf8_lossy(&response.body).into_owned();
        match (expect, response.status) {
            (Expect::Serve | Expect::ServeHeld, 200) => {
                if response.body[..] != audio[..] {
                    let what = format!(
                        "served {} bytes that differ from the {} acknowledged",
                        response.body.len(),
                        audio.len()
                    );
                    verdict.violation("7", &object, what);
                }
            }
            (Expect::Serve, status) => {
                let what = format!(
                    "fresh, not objected, but audio answered {status} {}",
                    body()
                );
                verdict.violation("7", &object, what);
            }
            (Expect::ServeHeld, status) => {
                let what = format!("held, but legal's audio read answered {status} {}", body());
                verdict.violation("4", &object, what);
            }
            (Expect::Hidden, 410) => {
                if response.code() == "deleted" {
                    model.deleted.entry(id.clone()).or_insert(round);
                }
            }
            (Expect::Hidden, status) => {
                let guarantee = match known.expired {
                    true => "3",
                    false => "5",
                };
                let what = format!("expired or objected, not held, but audio answered {status}");
                verdict.violation(guarantee, &object, what);
            }
        }
    }
}

fn known_of(call: &Call, round: u64) -> Known {
    Known {
        call_id: call.call_id.clone(),
        sha256: sha256_hex(&call.audio),
        caller: call.caller.clone(),
        expired: call.expired(),
        round,
    }
}

/// Plaintext needles for round `round`: every number and mark, and the audio of what is in
/// flight (this round's calls and the spool files not taken yet).
fn round_needles(model: &Model, journal: &Journal) -> Vec<(String, Vec<u8>)> {
    let mut needles = base_needles();
    for record in journal.uploads.lock().unwrap().iter() {
        needles.extend(windows_of(&record.call.call_id, &record.call.audio));
    }
    let spool = journal.spool.lock().unwrap();
    for record in model.spool.iter().chain(spool.iter()) {
        needles.extend(windows_of(&record.audio_name, record.content()));
    }
    needles
}

fn base_needles() -> Vec<(String, Vec<u8>)> {
    let mut needles = vec![
        ("a call id".to_owned(), CALL_MARK.as_bytes().to_vec()),
        ("an account".to_owned(), ACCOUNT_MARK.as_bytes().to_vec()),
    ];
    for form in CALLEE_FORMS {
        needles.push((format!("number {form:?}"), form.as_bytes().to_vec()));
    }
    for caller in REGULAR_CALLERS {
        needles.extend(number_needles(caller));
    }
    for form in OBJECTOR_NEEDLES {
        needles.push((
            format!("an objector's number ({form:?}…)"),
            form.as_bytes().to_vec(),
        ));
    }
    needles
}

// ---------------------------------------------------------------------------------------------
// The campaign.

#[test]
fn kill_9_at_random_instants_keeps_guarantees_2_3_4_5_and_7() {
    let Settings { seed, rounds } = settings();
    eprintln!(
        "crash campaign: CRASH_SEED={seed} CRASH_ROUNDS={rounds} (set both to replay these rounds)"
    );
    let begun = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut instance = Setup::new(CONFIG).start();
    let mut model = Model::default();
    let mut n_audio = 0u64;
    let mut totals = Tally::default();

    for round in 0..rounds {
        let mut plan_rng = round_rng(seed, round, 1);
        let mut check_rng = round_rng(seed, round, 2);
        let plan = draw_plan(round, &mut plan_rng, &mut n_audio);
        let kill_after = plan.kill_after;
        let fallback_ids: Vec<String> = model
            .recordings
            .iter()
            .filter(|(id, known)| model.expect(id, known) == Expect::Serve)
            .map(|(id, _)| id.clone())
            .rev()
            .take(2)
            .collect();
        let mut verdict = Verdict {
            round: format!("round {round}"),
            seed,
            rounds_to_replay: round + 1,
            violations: Vec::new(),
        };

        let loaded = runtime.block_on(run_load(round, plan, &mut instance, fallback_ids));
        let Loaded {
            setup,
            journal,
            kill_marker,
        } = loaded;
        for record in journal.uploads.lock().unwrap().iter() {
            model
                .windows
                .extend(windows_of(&record.call.call_id, &record.call.audio));
        }
        for record in journal.spool.lock().unwrap().iter() {
            model
                .windows
                .extend(windows_of(&record.audio_name, record.content()));
        }
        let needles = round_needles(&model, &journal);
        let scan = check_dead(&mut verdict, &setup, &mut model, needles);
        drop(instance);
        instance = setup.start();
        let mut tally = Tally::default();
        let pass = Pass {
            round,
            journal: &journal,
            kill_marker: Some(&kill_marker),
        };
        runtime.block_on(check_running(
            &mut verdict,
            &instance,
            &mut model,
            pass,
            &mut check_rng,
            &mut tally,
        ));
        for found in scan.join().expect("plaintext scan") {
            verdict.violation(
                "1",
                "data directory",
                format!("plaintext at rest after the crash: {found}"),
            );
        }
        verdict.finish(None);
        eprintln!(
            "round {round:>3}: killed after {:>4} ms; uploads {} acknowledged, {} unanswered, {} discarded; spool {} taken; holds {}; objections {}; purges {}",
            kill_after.as_millis(),
            tally.acknowledged,
            tally.unanswered,
            tally.discarded,
            tally.spool_taken,
            tally.holds,
            tally.objections,
            tally.purges,
        );
        totals.acknowledged += tally.acknowledged;
        totals.unanswered += tally.unanswered;
        totals.spool_taken += tally.spool_taken;
        totals.holds += tally.holds;
        totals.objections += tally.objections;
        totals.purges += tally.purges;
    }

    // The end: the spool drains, everything is read back whole, then a clean stop and the
    // checks of the files themselves.
    let mut verdict = Verdict {
        round: "the final check".to_owned(),
        seed,
        rounds_to_replay: rounds,
        violations: Vec::new(),
    };
    let spool = instance.setup.spool.clone();
    let waiting: Vec<PathBuf> = model
        .spool
        .iter()
        .map(|record| spool.join(&record.audio_name))
        .collect();
    // Files that came in before the last restart are taken once 10 s past their last write and
    // 2 s unchanged after it, the others at once.
    let deadline = Instant::now() + PATIENCE;
    while waiting.iter().any(|path| path.exists()) {
        if Instant::now() > deadline {
            let left: Vec<&PathBuf> = waiting.iter().filter(|path| path.exists()).collect();
            let what = format!("never taken from the spool in {PATIENCE:?}: {left:?}");
            verdict.violation("7", "spool", what);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tally = Tally::default();
    let empty = Journal::default();
    let pass = Pass {
        round: rounds,
        journal: &empty,
        kill_marker: None,
    };
    runtime.block_on(check_running(
        &mut verdict,
        &instance,
        &mut model,
        pass,
        &mut round_rng(seed, rounds, 3),
        &mut tally,
    ));
    verdict.finish(None);
    let log = instance.log();
    let setup = instance.stop();
    let (code, out, err) = setup.cli(&["audit", "verify"]);
    if code != 0 {
        verdict.violation("8", "audit chain", format!("exit {code}: {out}{err}"));
    }
    // Guarantee 2: exactly one blob per catalogued recording; none for the deleted ones.
    let (code, report, err) = setup.cli(&["report"]);
    assert_eq!(code, 0, "callguard report: {err}");
    let blobs = blob_names(&setup.data);
    let catalogued = report
        .lines()
        .find_map(|line| line.strip_prefix("recordings: "))
        .and_then(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            Some(words.first()?.parse::<usize>().ok()? + words.get(2)?.parse::<usize>().ok()?)
        })
        .unwrap_or_else(|| panic!("no recording counts in the report: {report}"));
    if blobs.len() != catalogued {
        verdict.violation(
            "2",
            "vault",
            format!(
                "{} blobs for {catalogued} catalogued recordings ({report})",
                blobs.len()
            ),
        );
    }
    for id in model.deleted.keys() {
        if blobs.contains(&format!("{id}.cgv")) {
            verdict.violation(
                "2",
                &format!("recording {id}"),
                "deleted, but its blob is in the vault",
            );
        }
    }
    let mut needles = base_needles();
    needles.extend(std::mem::take(&mut model.windows));
    for found in secrets_on_disk(&setup.data, &needles) {
        verdict.violation("1", "data directory", format!("plaintext at rest: {found}"));
    }
    verdict.finish(Some(&log));
    eprintln!(
        "crash campaign: {rounds} rounds in {:.1} s (CRASH_SEED={seed}): {} uploads acknowledged, {} unanswered at a kill, {} spool files taken, {} holds, {} objections, {} `callguard purge` runs; {} recordings known at the end, {} seen deleted",
        begun.elapsed().as_secs_f64(),
        totals.acknowledged,
        totals.unanswered,
        totals.spool_taken,
        totals.holds,
        totals.objections,
        totals.purges,
        model.recordings.len(),
        model.deleted.len(),
    );
}
